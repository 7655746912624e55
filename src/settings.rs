//! runner-medic's own settings: the settings file, environment and flags merged into one typed,
//! validated value. Library code reads nothing from the environment; `main` gathers it once into
//! [`Environment`] and everything below gets [`Settings`].

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::cli::{GlobalArgs, OutputFormat, Strategy};
pub use crate::fleet::EtcdSettings;
use crate::gitlab::{AdminCredential, CreateRunner, RetryPolicy};
use crate::secret::AdminToken;
pub use crate::service::ServiceSettings;
use crate::service::{ManagerKind, RestartPolicy};

/// What `main` read from the process environment, once.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    pub admin_token: Option<String>,
    /// `$CREDENTIALS_DIRECTORY`: where systemd puts a unit's credentials (`LoadCredential=`).
    pub credentials_dir: Option<PathBuf>,
    pub home: Option<PathBuf>,
    pub is_root: bool,
    /// `RUNNER_MEDIC_TEST_FAST_RETRY`: shrink retry delays and allow agent intervals down to 1 s
    /// (tests only).
    pub fast_retry: bool,
    pub is_tty_stdout: bool,
    pub is_tty_stderr: bool,
    pub user: String,
}

/// The settings file (`config/settings.example.toml` documents every key).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsFile {
    pub gitlab_url: Option<String>,
    pub admin_token_file: Option<PathBuf>,
    pub runner_config: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub metrics_file: Option<PathBuf>,
    pub renew_before: Option<String>,
    pub strategy: Option<Strategy>,
    pub request_timeout: Option<String>,
    pub retry_attempts: Option<u32>,
    pub retry_budget: Option<String>,
    pub concurrency: Option<usize>,
    pub delete_replaced: Option<bool>,
    pub keep_backups: Option<usize>,
    pub clock_skew_warning: Option<String>,
    pub run_timeout: Option<String>,
    pub record_refresh: Option<String>,
    #[serde(default)]
    pub service: ServiceFile,
    #[serde(default)]
    pub hooks: HooksFile,
    #[serde(default)]
    pub agent: AgentFile,
    #[serde(default)]
    pub fleet: FleetFile,
    /// Per-runner creation parameters for recreating a runner whose record is gone.
    #[serde(default)]
    pub templates: BTreeMap<String, CreateRunner>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceFile {
    pub manager: Option<String>,
    pub name: Option<String>,
    pub stop_timeout: Option<String>,
    pub restart: Option<RestartPolicy>,
    /// Stop hard (SIGTERM, aborting running jobs) when jobs have not finished within
    /// `stop_timeout`; by default a stop waits for them.
    pub hard_stop: Option<bool>,
    /// With `restart = reload`: how long to wait for GitLab to see the runner use its new token.
    pub reload_timeout: Option<String>,
    /// Where SysV/OpenRC init scripts live (default `/etc/init.d`).
    pub init_dir: Option<PathBuf>,
    /// The `gitlab-runner` binary for the `gitlab-runner` manager (default: from PATH).
    pub gitlab_runner_bin: Option<PathBuf>,
    /// `docker` or `podman` for the container manager.
    pub container_cli: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksFile {
    pub pre: Option<String>,
    pub post: Option<String>,
    pub deploy: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub interval: Option<String>,
    pub jitter: Option<String>,
    pub listen: Option<String>,
}

/// `[fleet]`: runners whose token several hosts share.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetFile {
    /// `none` (default) or `etcd`.
    pub store: Option<String>,
    pub endpoints: Option<Vec<String>>,
    pub prefix: Option<String>,
    pub encryption_key_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub lock_ttl: Option<String>,
    /// A runner manager that contacted GitLab within this window shares the token.
    pub manager_window: Option<String>,
}

/// Everything a command needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub runner_config: PathBuf,
    pub settings_file: Option<PathBuf>,
    /// The operator's GitLab, normalised.
    pub gitlab_url: Option<Url>,
    pub admin: Option<AdminCredential>,
    pub state_dir: PathBuf,
    pub output: OutputFormat,
    pub metrics_file: Option<PathBuf>,
    pub renew_before: Option<Duration>,
    pub strategy: Strategy,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// Where `<host>.crt` and `<host>.auth.{crt,key}` are looked for, first to last:
    /// gitlab-runner's certificate directory, then `certs/` beside the config.toml in use.
    pub certs_dirs: Vec<PathBuf>,
    pub concurrency: usize,
    pub delete_replaced: bool,
    pub keep_backups: usize,
    pub clock_skew_warning: Duration,
    /// One deadline for a whole run (each agent cycle is a run): see [`Settings::deadline`].
    pub run_timeout: Duration,
    /// When the current run started; [`Settings::start_run`] resets it.
    pub run_started: std::time::Instant,
    /// A remembered runner record (and privileged token check) older than this is read again;
    /// younger, a healthy runner costs one request (its verify). See `diagnose::known`.
    pub record_refresh: Duration,
    pub service: ServiceSettings,
    pub hooks: HooksFile,
    pub agent: AgentSettings,
    pub fleet: FleetSettings,
    pub templates: BTreeMap<String, CreateRunner>,
    pub color: bool,
    /// Show a progress bar on stderr (a terminal).
    pub progress: bool,
    pub user: String,
}

#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Other runner managers that contacted GitLab within this window share the token.
    pub manager_window: Duration,
    /// The store that coordinates the hosts sharing a token; `None`: no coordination.
    pub store: Option<EtcdSettings>,
}

impl FleetSettings {
    /// A store coordinates the hosts that share a token.
    pub fn coordinated(&self) -> bool {
        self.store.is_some()
    }
}

/// The `[fleet]` settings, with `--fleet-*` flags (and their environment variables) first.
fn fleet_settings(global: &GlobalArgs, file: &FleetFile) -> Result<FleetSettings, SettingsError> {
    let manager_window = file
        .manager_window
        .as_deref()
        .map_or(Ok(Duration::from_secs(2 * 3600)), |t| {
            parse_duration("fleet.manager_window", t)
        })?;
    let store = global
        .fleet_store
        .clone()
        .or(file.store.clone())
        .unwrap_or_else(|| "none".into());
    let store = match store.trim() {
        "none" | "" => None,
        "etcd" => {
            let etcd = etcd_settings(global, file)?;
            // The etcd client compiles etcd's API definitions with protoc when it is built, so it
            // is a cargo feature: `cargo run -- demo` needs nothing but the Rust toolchain, and
            // the Debian package is built with it.
            if !cfg!(feature = "fleet-etcd") {
                return Err(bad(
                    "`[fleet] store = \"etcd\"`: this build of runner-medic has no etcd client",
                    "use the Debian package, or build with `cargo build --release --features fleet-etcd` (needs protoc: `apt-get install protobuf-compiler libprotobuf-dev`)",
                ));
            }
            Some(etcd)
        }
        other => {
            return Err(bad(
                format!("unknown fleet store `{other}`"),
                "use `none` (the default) or `etcd` for `[fleet] store` / `--fleet-store`",
            ))
        }
    };
    Ok(FleetSettings {
        manager_window,
        store,
    })
}

fn etcd_settings(global: &GlobalArgs, file: &FleetFile) -> Result<EtcdSettings, SettingsError> {
    let endpoints: Vec<String> = global
        .fleet_endpoints
        .clone()
        .or(file.endpoints.clone())
        .unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()])
        .into_iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(bad(
            "`[fleet] store = \"etcd\"` has no endpoints",
            "set `[fleet] endpoints = [\"https://etcd-1.example.com:2379\", …]` or `--fleet-endpoints`",
        ));
    }
    for e in &endpoints {
        let ok = Url::parse(e)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if !ok {
            return Err(bad(
                format!("fleet endpoint `{e}` is not an http(s) URL"),
                "write endpoints like `https://etcd-1.example.com:2379`",
            ));
        }
    }
    let prefix = global
        .fleet_prefix
        .clone()
        .or(file.prefix.clone())
        .unwrap_or_else(|| "/runner-medic".into());
    let prefix = prefix.trim_end_matches('/').to_string();
    let Some(key_file) = &file.encryption_key_file else {
        return Err(bad(
            "`[fleet] store = \"etcd\"` needs `encryption_key_file`: tokens are stored encrypted",
            "create one key for the whole fleet (`openssl rand -hex 32 > /etc/runner-medic/fleet.key; chmod 600 /etc/runner-medic/fleet.key`), copy it to every host and set `[fleet] encryption_key_file`",
        ));
    };
    let key = crate::fleet::FleetKey::read(key_file).map_err(|e| bad(e.message, e.fix))?;
    let identity = match (&file.cert_file, &file.key_file) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            return Err(bad(
                "`[fleet]` has only one of `cert_file` and `key_file`",
                "give both (the client certificate and its key) or neither",
            ))
        }
    };
    let user = match (&file.username, &file.password_file) {
        (Some(u), Some(p)) => Some((u.clone(), read_secret_file("fleet password file", p)?)),
        (None, None) => None,
        _ => {
            return Err(bad(
                "`[fleet]` has only one of `username` and `password_file`",
                "give both (etcd's user and a file, mode 0600, with its password) or neither",
            ))
        }
    };
    let lock_ttl = file
        .lock_ttl
        .as_deref()
        .map_or(Ok(Duration::from_secs(60)), |t| {
            parse_duration("fleet.lock_ttl", t)
        })?;
    if lock_ttl < Duration::from_secs(5) {
        return Err(bad(
            "`[fleet] lock_ttl` is shorter than 5s",
            "use `lock_ttl = \"60s\"` (the default) or longer",
        ));
    }
    Ok(EtcdSettings {
        endpoints,
        prefix,
        key,
        ca_file: file.ca_file.clone(),
        identity,
        user,
        lock_ttl,
    })
}

#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub interval: Duration,
    pub jitter: Duration,
    pub listen: Option<String>,
}

/// Settings that cannot be used: exit 2, like every other "could not run".
pub type SettingsError = crate::error::CouldNotRun;

fn bad(message: impl Into<String>, fix: impl Into<String>) -> SettingsError {
    SettingsError::new(message, fix)
}

/// Parse `90s`, `30m`, `6h`, `7d`.
pub fn parse_duration(what: &str, text: &str) -> Result<Duration, SettingsError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        bad(
            format!("`{what}` is not a duration: `{text}` ({e})"),
            "write durations like `90s`, `30m`, `6h` or `7d`",
        )
    })
}

/// The shortest `agent` interval: each cycle asks GitLab about every runner, so a shorter one only
/// loads the instance (and trips its rate limits) without finding anything sooner that matters.
pub const MIN_AGENT_INTERVAL: Duration = Duration::from_secs(60);

/// The longest `agent` interval: runner tokens can expire within days, so a longer gap lets one
/// die unnoticed; it also keeps `interval + jitter` far from overflowing a deadline.
pub const MAX_AGENT_INTERVAL: Duration = Duration::from_secs(30 * 86400);

/// The default deadline of one run: far beyond what a healthy run takes (seconds to minutes, even
/// for thousands of runners), short enough that a run stuck on a hanging GitLab ends well before
/// the next one is due.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The shortest `run_timeout`: below it a run could not even diagnose a host with a few runners
/// over a slow link, so every run would stop before doing anything.
pub const MIN_RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The shortest `run_timeout` the tests may ask for (`RUNNER_MEDIC_TEST_FAST_RETRY`).
const TEST_MIN_RUN_TIMEOUT: Duration = Duration::from_secs(1);

/// `--run-timeout` or `run_timeout`, within bounds; a refusal names where the value came from.
fn run_timeout(
    flag: Option<&str>,
    file: Option<&str>,
    test_mode: bool,
) -> Result<Duration, SettingsError> {
    let (what, text) = match (flag, file) {
        (Some(v), _) => (format!("`--run-timeout {v}`"), v),
        (None, Some(v)) => (format!("`run_timeout = \"{v}\"`"), v),
        (None, None) => return Ok(DEFAULT_RUN_TIMEOUT),
    };
    let value = parse_duration("run_timeout", text)?;
    let min = if test_mode {
        TEST_MIN_RUN_TIMEOUT
    } else {
        MIN_RUN_TIMEOUT
    };
    if value < min {
        return Err(bad(
            format!(
                "{what} is shorter than the minimum of {}s: a run could not finish even a diagnosis",
                min.as_secs()
            ),
            "use `--run-timeout 30m` (the default) or at least `1m`",
        ));
    }
    Ok(value)
}

/// The shortest interval the tests may ask for (`RUNNER_MEDIC_TEST_FAST_RETRY`).
const TEST_MIN_AGENT_INTERVAL: Duration = Duration::from_secs(1);

/// The agent's interval and jitter, from the flags or the `[agent]` table, within bounds:
/// `60s ≤ interval ≤ 30d` and `jitter ≤ interval`. A refusal names where the value came from.
fn agent_timing(
    overrides: &Overrides,
    file: &AgentFile,
    test_mode: bool,
) -> Result<(Duration, Duration), SettingsError> {
    // (what the operator wrote, as they would write it; the value)
    let source = |flag: &Option<String>, key: &str, from_file: &Option<String>| match (
        flag.as_deref(),
        from_file.as_deref(),
    ) {
        (Some(v), _) => Some((format!("`--{key} {v}`"), v.to_string())),
        (None, Some(v)) => Some((format!("`{key} = \"{v}\"` in [agent]"), v.to_string())),
        (None, None) => None,
    };
    let interval_src = source(&overrides.interval, "interval", &file.interval);
    let interval = match &interval_src {
        Some((_, v)) => parse_duration("agent.interval", v)?,
        None => Duration::from_secs(6 * 3600),
    };
    let min = if test_mode {
        TEST_MIN_AGENT_INTERVAL
    } else {
        MIN_AGENT_INTERVAL
    };
    let shown = |d: Duration| humantime::format_duration(d).to_string();
    if let Some((what, _)) = &interval_src {
        if interval < min {
            return Err(bad(
                format!(
                    "{what} is shorter than the minimum interval of {}s: every cycle asks GitLab \
                     about every runner",
                    min.as_secs()
                ),
                format!(
                    "use `--interval {}s` or longer (the default is `6h`; `1h` suits most hosts)",
                    min.as_secs()
                ),
            ));
        }
        if interval > MAX_AGENT_INTERVAL {
            return Err(bad(
                format!(
                    "{what} is longer than the maximum interval of {}: a token could expire \
                     unnoticed in between",
                    shown(MAX_AGENT_INTERVAL)
                ),
                "use `--interval 6h` (the default) or anything up to `30days`",
            ));
        }
    }
    let jitter = match source(&overrides.jitter, "jitter", &file.jitter) {
        Some((what, v)) => {
            let jitter = parse_duration("agent.jitter", &v)?;
            if jitter > interval {
                return Err(bad(
                    format!(
                        "{what} is longer than the interval ({}): a cycle could wait more than \
                         twice the interval",
                        shown(interval)
                    ),
                    format!(
                        "use a jitter of at most the interval, e.g. `--jitter {}` (a tenth, the \
                         default)",
                        shown(interval / 10)
                    ),
                ));
            }
            jitter
        }
        None => interval / 10,
    };
    Ok((interval, jitter))
}

/// Parse and normalise a GitLab base URL.
pub fn parse_gitlab_url(text: &str) -> Result<Url, SettingsError> {
    let url = Url::parse(text.trim()).map_err(|e| {
        bad(
            format!("`--gitlab-url` is not a URL: `{text}` ({e})"),
            "give the instance's base URL, e.g. `https://gitlab.example.com`",
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(bad(
            format!("`--gitlab-url` must be an http(s) URL with a host: `{text}`"),
            "give the instance's base URL, e.g. `https://gitlab.example.com`",
        ));
    }
    Ok(crate::gitlab::normalize_url(&url))
}

/// The name of the privileged token among systemd's credentials: with `LoadCredential=` (or
/// `SetCredentialEncrypted=`) under this name, the token is read from
/// `$CREDENTIALS_DIRECTORY/runner-medic-admin-token` when no other source is given.
pub const ADMIN_TOKEN_CREDENTIAL: &str = "runner-medic-admin-token";

/// Whether a token file of this owner and mode may be used, and if not, why and the fix. The rule
/// of ssh for a private key, widened for mounted secrets: the owner (root or this user) alone may
/// read it (`0600`, `0400`); or, for a read-only file owned by root, its group may too (`0440`, as
/// Docker and Kubernetes mount secrets). Never writable by group or others, never readable by
/// others, never owned by another user.
fn token_file_refusal(path: &Path, uid: u32, mode: u32) -> Option<(String, String)> {
    let shown = path.display();
    let euid = nix::unistd::geteuid().as_raw();
    if uid != 0 && uid != euid {
        return Some((
            format!(
                "the admin token file `{shown}` is owned by uid {uid}, not by root or this user; refusing to use it"
            ),
            format!("chown root {shown} (or this user)"),
        ));
    }
    if mode & 0o022 != 0 {
        return Some((
            format!(
                "the admin token file `{shown}` is writable by others (mode {mode:04o}); refusing to use it"
            ),
            format!("chmod 600 {shown}"),
        ));
    }
    if mode & 0o007 != 0 {
        return Some((
            format!(
                "the admin token file `{shown}` is readable by others (mode {mode:04o}); refusing to use it"
            ),
            format!("chmod 600 {shown}"),
        ));
    }
    let read_only_secret = uid == 0 && mode & 0o222 == 0;
    if mode & 0o070 != 0 && !read_only_secret {
        return Some((
            format!(
                "the admin token file `{shown}` is readable by others (its group; mode {mode:04o}); refusing to use it"
            ),
            format!("chmod 600 {shown} (a read-only secret owned by root may be 0440)"),
        ));
    }
    None
}

/// Read the privileged token from a file the way ssh treats a private key (see
/// [`token_file_refusal`] for the modes accepted).
pub fn read_admin_token_file(path: &Path) -> Result<AdminToken, SettingsError> {
    read_secret_file("admin token file", path)
}

/// A one-line secret from a file that neither the group nor others may read.
fn read_secret_file(what: &str, path: &Path) -> Result<AdminToken, SettingsError> {
    let meta = fs_err::metadata(path).map_err(|e| {
        bad(
            format!("cannot read the {what} `{}`: {}", path.display(), e.kind()),
            format!(
                "create it with `install -m 0600 /dev/null {}` and write the token into it",
                path.display()
            ),
        )
    })?;
    if !meta.is_file() {
        return Err(bad(
            format!("the {what} `{}` is not a regular file", path.display()),
            "point `--admin-token-file` at the file that holds the token",
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if let Some((message, fix)) =
        token_file_refusal(path, std::os::unix::fs::MetadataExt::uid(&meta), mode)
    {
        return Err(bad(message, fix));
    }
    let text = fs_err::read_to_string(path).map_err(|e| {
        bad(
            format!("cannot read the {what} `{}`: {}", path.display(), e.kind()),
            "check its permissions",
        )
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(bad(
            format!("the {what} `{}` is empty", path.display()),
            "write the access token (scopes `create_runner` and `manage_runner`, or `api`) into it",
        ));
    }
    Ok(AdminToken::new(token))
}

impl Settings {
    /// Merge flags (highest), the settings file and defaults.
    pub fn resolve(
        global: &GlobalArgs,
        env: &Environment,
        overrides: &Overrides,
    ) -> Result<Self, SettingsError> {
        let default_settings = PathBuf::from("/etc/runner-medic/settings.toml");
        let settings_path = global
            .settings
            .clone()
            .or_else(|| default_settings.exists().then_some(default_settings));
        let file: SettingsFile = match &settings_path {
            Some(path) => {
                let text = fs_err::read_to_string(path).map_err(|e| {
                    bad(
                        format!(
                            "cannot read the settings file `{}`: {}",
                            path.display(),
                            e.kind()
                        ),
                        "check the path given to `--settings`",
                    )
                })?;
                toml::from_str(&text).map_err(|e| {
                    let (line, col) = e
                        .span()
                        .map_or((1, 1), |s| crate::runner_config::line_col(&text, s.start));
                    bad(
                        format!(
                            "the settings file `{}:{line}:{col}` is invalid: {}",
                            path.display(),
                            e.message()
                        ),
                        "see `config/settings.example.toml` for every key",
                    )
                })?
            }
            None => SettingsFile::default(),
        };

        let runner_config = global
            .runner_config
            .clone()
            .or(file.runner_config.clone())
            .unwrap_or_else(|| default_runner_config(env));
        let state_dir = global
            .state_dir
            .clone()
            .or(file.state_dir.clone())
            .unwrap_or_else(|| default_state_dir(env));
        let gitlab_url = global
            .gitlab_url
            .clone()
            .or(file.gitlab_url.clone())
            .map(|u| parse_gitlab_url(&u))
            .transpose()?;
        let token = match (
            &env.admin_token,
            global
                .admin_token_file
                .as_ref()
                .or(file.admin_token_file.as_ref()),
        ) {
            (Some(t), _) if !t.trim().is_empty() => Some(AdminToken::new(t.trim())),
            (Some(_), _) => {
                return Err(bad(
                    "RUNNER_MEDIC_ADMIN_TOKEN is set but empty",
                    "unset it or put the access token in it",
                ))
            }
            (None, Some(path)) => Some(read_admin_token_file(path)?),
            (None, None) => match &env.credentials_dir {
                // systemd's credentials: used when present, and only when nothing else is set.
                Some(dir) if dir.join(ADMIN_TOKEN_CREDENTIAL).exists() => {
                    Some(read_admin_token_file(&dir.join(ADMIN_TOKEN_CREDENTIAL))?)
                }
                _ => None,
            },
        };
        let admin = match (token, &gitlab_url) {
            (Some(token), Some(url)) => {
                let loopback = url.host_str().is_some_and(|h| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()) || h == "[::1]");
                if url.scheme() == "http" && !loopback {
                    // Allowed (internal instances exist), but never silently.
                    tracing::warn!(url = %url, "the privileged token will travel over plain HTTP; use https");
                }
                Some(AdminCredential {
                url: url.clone(),
                token,
            })
            }
            (Some(_), None) => {
                return Err(bad(
                    "a privileged token was given but no `--gitlab-url`; runner-medic sends it only to a URL you name",
                    "add `--gitlab-url https://your.gitlab` (or `gitlab_url` in the settings file)",
                ))
            }
            (None, _) => None,
        };
        let renew_before = overrides
            .renew_before
            .as_deref()
            .or(file.renew_before.as_deref())
            .map(|d| parse_duration("renew_before", d))
            .transpose()?;
        let duration = |what: &str, v: Option<&str>, default: Duration| {
            v.map_or(Ok(default), |t| parse_duration(what, t))
        };
        let mut retry = RetryPolicy::default();
        if let Some(n) = file.retry_attempts {
            retry.max_attempts = n.max(1);
        }
        if let Some(b) = &file.retry_budget {
            retry.budget = crate::gitlab::RetryBudget::new(parse_duration("retry_budget", b)?);
        }
        if env.fast_retry {
            retry.base_delay = Duration::from_millis(5);
            retry.max_delay = Duration::from_millis(50);
        }
        let manager_text = overrides
            .service_manager
            .clone()
            .or(file.service.manager.clone())
            .unwrap_or_else(|| "auto".into());
        let manager = ManagerKind::parse(&manager_text).ok_or_else(|| {
            bad(
                format!("unknown service manager `{manager_text}`"),
                "use one of auto, systemd, sysv, openrc, launchd, gitlab-runner, docker, podman, none",
            )
        })?;
        let (interval, jitter) = agent_timing(overrides, &file.agent, env.fast_retry)?;
        // gitlab-runner's own directory (`getDefaultCertificateDirectory`, gitlab-org/gitlab-runner
        // `commands/config.go`) first: what it uses wins. `certs/` beside a config.toml given with
        // `--config` elsewhere is not read by gitlab-runner; runner-medic also looks there.
        let mut certs_dirs: Vec<PathBuf> =
            crate::gitlab::tls::gitlab_runner_certs_dir(env.is_root, env.home.as_deref())
                .into_iter()
                .collect();
        if let Some(dir) = runner_config.parent() {
            let beside = dir.join("certs");
            if !certs_dirs.contains(&beside) {
                certs_dirs.push(beside);
            }
        }
        Ok(Self {
            runner_config,
            settings_file: settings_path,
            gitlab_url,
            admin,
            state_dir,
            output: global.output,
            metrics_file: global.metrics_file.clone().or(file.metrics_file.clone()),
            renew_before,
            strategy: overrides
                .strategy
                .or(file.strategy)
                .unwrap_or(Strategy::Auto),
            request_timeout: duration(
                "request_timeout",
                file.request_timeout.as_deref(),
                Duration::from_secs(30),
            )?,
            retry,
            certs_dirs,
            concurrency: file.concurrency.unwrap_or(16).clamp(1, 256),
            delete_replaced: file.delete_replaced.unwrap_or(true),
            keep_backups: file.keep_backups.unwrap_or(10).max(1),
            clock_skew_warning: duration(
                "clock_skew_warning",
                file.clock_skew_warning.as_deref(),
                Duration::from_secs(60),
            )?,
            run_timeout: run_timeout(
                global.run_timeout.as_deref(),
                file.run_timeout.as_deref(),
                env.fast_retry,
            )?,
            run_started: std::time::Instant::now(),
            record_refresh: duration(
                "record_refresh",
                file.record_refresh.as_deref(),
                Duration::from_secs(86_400),
            )?,
            service: ServiceSettings {
                manager,
                name: overrides
                    .service_name
                    .clone()
                    .or(file.service.name.clone())
                    .unwrap_or_else(|| "gitlab-runner".into()),
                stop_timeout: duration(
                    "service.stop_timeout",
                    file.service.stop_timeout.as_deref(),
                    Duration::from_secs(60),
                )?,
                restart: if overrides.no_restart {
                    RestartPolicy::Never
                } else {
                    overrides
                        .restart
                        .or(file.service.restart)
                        .unwrap_or(RestartPolicy::Reload)
                },
                hard_stop: file.service.hard_stop.unwrap_or(false),
                reload_timeout: duration(
                    "service.reload_timeout",
                    file.service.reload_timeout.as_deref(),
                    Duration::from_secs(30),
                )?,
                init_dir: file
                    .service
                    .init_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("/etc/init.d")),
                gitlab_runner_bin: file
                    .service
                    .gitlab_runner_bin
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("gitlab-runner")),
                container_cli: file
                    .service
                    .container_cli
                    .clone()
                    .unwrap_or_else(|| "docker".into()),
            },
            hooks: file.hooks.clone(),
            agent: AgentSettings {
                interval,
                jitter,
                listen: overrides.listen.clone().or(file.agent.listen.clone()),
            },
            fleet: fleet_settings(global, &file.fleet)?,
            templates: file.templates,
            color: env.is_tty_stdout,
            progress: env.is_tty_stderr,
            user: env.user.clone(),
        })
    }

    /// Start the clock of a new run (a command after its `--random-delay`, an agent cycle).
    pub fn start_run(&mut self) {
        self.run_started = std::time::Instant::now();
    }

    /// When the current run must stop: no token is requested after it.
    pub fn deadline(&self) -> std::time::Instant {
        self.run_started + self.run_timeout
    }

    /// Time left before the deadline (zero once it passed).
    pub fn time_left(&self) -> Duration {
        self.deadline()
            .saturating_duration_since(std::time::Instant::now())
    }

    pub fn deadline_passed(&self) -> bool {
        self.time_left().is_zero()
    }

    /// The finding of a run stopped by its deadline, `when` saying what it was doing.
    pub fn run_timeout_finding(&self, when: &str) -> crate::diagnose::Finding {
        crate::diagnose::Finding::error(
            crate::diagnose::FindingCode::RunTimeout,
            format!(
                "the run's deadline of {} (`run_timeout`) passed {when}",
                humantime::format_duration(self.run_timeout)
            ),
            "find what is slow (GitLab answering slowly or hanging, a service that takes long to stop), or give runs more time with `--run-timeout` / `run_timeout`; the next run carries on from the journal",
        )
    }

    /// The lock, journal and backups of one config.toml live under a key derived from its path,
    /// so several config.toml files on one host never share them.
    pub fn config_key(&self) -> String {
        config_key_of(&self.runner_config)
    }

    /// The recorded state of runs on this config.toml (`list`, metrics).
    pub fn status_store(&self) -> crate::report::history::Store {
        crate::report::history::Store::new(&self.state_dir, &self.config_key())
            .with_runner_config(&self.runner_config)
    }

    /// Where the locks of config.toml files live: one place for every run on this host, whatever
    /// its `--state-dir`, so that no two runs rotate one file at once.
    pub fn lock_dir(&self) -> PathBuf {
        let uid = nix::unistd::geteuid();
        if uid.is_root() {
            return PathBuf::from("/run/runner-medic");
        }
        match std::env::var_os("XDG_RUNTIME_DIR") {
            Some(dir) => PathBuf::from(dir).join("runner-medic"),
            None => std::env::temp_dir().join(format!("runner-medic-{uid}")),
        }
    }

    pub fn journal_path(&self) -> PathBuf {
        self.state_dir
            .join("journal")
            .join(format!("{}.json", self.config_key()))
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.state_dir.join("backups").join(self.config_key())
    }

    /// Refuse, before anything runs, a directory runner-medic would write in that someone else
    /// can change (see [`crate::fs::check_dir`]): the state directory with its journal, backups
    /// and records when `writes_state`, and the metrics file's directory.
    pub fn check_dirs(&self, writes_state: bool) -> Result<(), SettingsError> {
        use crate::fs::{check_dir, DirUse};
        let refuse = |e: crate::fs::UnsafeDir| bad(e.message, e.fix);
        if writes_state {
            check_dir(&self.state_dir, "the state directory", DirUse::Private).map_err(refuse)?;
            for (what, dir) in [
                ("the journal directory", self.state_dir.join("journal")),
                ("the backup directory", self.backup_dir()),
                (
                    "the known-runners directory",
                    self.state_dir.join("known-runners"),
                ),
            ] {
                check_dir(&dir, what, DirUse::Private).map_err(refuse)?;
            }
        }
        if let Some(dir) = self.metrics_file.as_deref().and_then(Path::parent) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            check_dir(dir, "the directory of the metrics file", DirUse::Shared).map_err(refuse)?;
        }
        Ok(())
    }
}

fn home(env: &Environment) -> PathBuf {
    env.home.clone().unwrap_or_else(|| PathBuf::from("."))
}

fn default_runner_config(env: &Environment) -> PathBuf {
    if env.is_root {
        PathBuf::from("/etc/gitlab-runner/config.toml")
    } else {
        home(env).join(".gitlab-runner/config.toml")
    }
}

fn default_state_dir(env: &Environment) -> PathBuf {
    if env.is_root {
        PathBuf::from("/var/lib/runner-medic")
    } else {
        home(env).join(".local/state/runner-medic")
    }
}

/// The key of a config.toml path (see [`Settings::config_key`]).
pub fn config_key_of(runner_config: &Path) -> String {
    let real = fs_err::canonicalize(runner_config).unwrap_or_else(|_| runner_config.to_path_buf());
    crate::fs::sha256_hex(real.to_string_lossy().as_bytes())[..16].to_string()
}

/// Where a run whose settings could not be resolved still records its end: the metrics file
/// and the state store, read from the flags and, leniently, from whatever of the settings file
/// parses. A run that exits 2 on a bad setting thus still shows in the metrics.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub metrics_file: Option<PathBuf>,
    pub store: crate::report::history::Store,
}

impl Fallback {
    pub fn resolve(global: &GlobalArgs, env: &Environment) -> Self {
        let default_settings = PathBuf::from("/etc/runner-medic/settings.toml");
        let table: toml::Table = global
            .settings
            .clone()
            .or_else(|| default_settings.exists().then_some(default_settings))
            .and_then(|p| fs_err::read_to_string(p).ok())
            .and_then(|t| t.parse().ok())
            .unwrap_or_default();
        let path = |key: &str| {
            table
                .get(key)
                .and_then(toml::Value::as_str)
                .map(PathBuf::from)
        };
        let runner_config = global
            .runner_config
            .clone()
            .or_else(|| path("runner_config"))
            .unwrap_or_else(|| default_runner_config(env));
        let state_dir = global
            .state_dir
            .clone()
            .or_else(|| path("state_dir"))
            .unwrap_or_else(|| default_state_dir(env));
        Self {
            metrics_file: global.metrics_file.clone().or_else(|| path("metrics_file")),
            store: crate::report::history::Store::new(&state_dir, &config_key_of(&runner_config))
                .with_runner_config(&runner_config),
        }
    }
}

/// Command-specific flags that override settings.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub renew_before: Option<String>,
    pub strategy: Option<Strategy>,
    pub service_manager: Option<String>,
    pub service_name: Option<String>,
    pub no_restart: bool,
    pub restart: Option<RestartPolicy>,
    pub interval: Option<String>,
    pub jitter: Option<String>,
    pub listen: Option<String>,
}
