//! runner-medic's own settings: the settings file, environment and flags merged into one typed,
//! validated value. Library code reads nothing from the environment; `main` gathers it once into
//! [`Environment`] and everything below gets [`Settings`].
//!
//! - `file`: the settings file as written, and `[service]` resolved;
//! - `secrets`: the privileged token and the rules for a file that holds a secret;
//! - `timing`: durations, the run deadline, the agent's interval and jitter;
//! - `fleet`: `[fleet]` and its etcd store.

mod file;
mod fleet;
mod secrets;
mod timing;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::cli::{Command, GlobalArgs, OutputFormat, Strategy};
use crate::gitlab::{AdminCredential, CreateRunner, RetryPolicy};
use crate::service::RestartPolicy;

pub use crate::service::ServiceSettings;
pub use file::{AgentFile, FleetFile, HooksFile, ServiceFile, SettingsFile, DEFAULT_SETTINGS_FILE};
pub use fleet::{EtcdSettings, FleetSettings};
pub use secrets::{read_admin_token_file, ADMIN_TOKEN_CREDENTIAL};
pub use timing::{
    parse_duration, DEFAULT_RUN_TIMEOUT, MAX_AGENT_INTERVAL, MIN_AGENT_INTERVAL, MIN_RUN_TIMEOUT,
};

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

/// Everything a command needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub runner_config: PathBuf,
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

impl Settings {
    /// Merge flags (highest), the settings file and defaults.
    pub fn resolve(
        global: &GlobalArgs,
        env: &Environment,
        overrides: &Overrides,
    ) -> Result<Self, SettingsError> {
        let settings_path = file::settings_path(global);
        let file = file::load(settings_path.as_deref())?;
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
        let token_file = global
            .admin_token_file
            .as_deref()
            .or(file.admin_token_file.as_deref());
        let admin = secrets::admin_credential(env, token_file, gitlab_url.as_ref())?;
        let duration = |what: &str, v: Option<&str>, default: Duration| {
            v.map_or(Ok(default), |t| parse_duration(what, t))
        };
        let (interval, jitter) = timing::agent_timing(overrides, &file.agent, env.fast_retry)?;
        Ok(Self {
            certs_dirs: certs_dirs(env, &runner_config),
            runner_config,
            gitlab_url,
            admin,
            state_dir,
            output: global.output,
            metrics_file: global.metrics_file.clone().or(file.metrics_file.clone()),
            renew_before: overrides
                .renew_before
                .as_deref()
                .or(file.renew_before.as_deref())
                .map(|d| parse_duration("renew_before", d))
                .transpose()?,
            strategy: overrides
                .strategy
                .or(file.strategy)
                .unwrap_or(Strategy::Auto),
            request_timeout: duration(
                "request_timeout",
                file.request_timeout.as_deref(),
                Duration::from_secs(30),
            )?,
            retry: retry_policy(&file, env.fast_retry)?,
            concurrency: file.concurrency.unwrap_or(16).clamp(1, 256),
            delete_replaced: file.delete_replaced.unwrap_or(true),
            keep_backups: file.keep_backups.unwrap_or(10).max(1),
            clock_skew_warning: duration(
                "clock_skew_warning",
                file.clock_skew_warning.as_deref(),
                Duration::from_secs(60),
            )?,
            run_timeout: timing::run_timeout(
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
            service: file.service.resolve(overrides)?,
            hooks: file.hooks.clone(),
            agent: AgentSettings {
                interval,
                jitter,
                listen: overrides.listen.clone().or(file.agent.listen.clone()),
            },
            fleet: fleet::fleet_settings(global, &file.fleet)?,
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

/// The retry policy: the settings file's attempts and budget over the defaults.
fn retry_policy(file: &SettingsFile, fast_retry: bool) -> Result<RetryPolicy, SettingsError> {
    let mut retry = RetryPolicy::default();
    if let Some(n) = file.retry_attempts {
        retry.max_attempts = n.max(1);
    }
    if let Some(b) = &file.retry_budget {
        retry.budget = crate::gitlab::RetryBudget::new(parse_duration("retry_budget", b)?);
    }
    if fast_retry {
        retry.base_delay = Duration::from_millis(5);
        retry.max_delay = Duration::from_millis(50);
    }
    Ok(retry)
}

/// Where `<host>.crt` and `<host>.auth.{crt,key}` are looked for. gitlab-runner's own directory
/// (`getDefaultCertificateDirectory`, gitlab-org/gitlab-runner `commands/config.go`) first: what
/// it uses wins. `certs/` beside a config.toml given with `--config` elsewhere is not read by
/// gitlab-runner; runner-medic also looks there.
fn certs_dirs(env: &Environment, runner_config: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        crate::gitlab::tls::gitlab_runner_certs_dir(env.is_root, env.home.as_deref())
            .into_iter()
            .collect();
    if let Some(dir) = runner_config.parent() {
        let beside = dir.join("certs");
        if !dirs.contains(&beside) {
            dirs.push(beside);
        }
    }
    dirs
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
        let table: toml::Table = file::settings_path(global)
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
    pub service_manager: Option<crate::service::ManagerKind>,
    pub service_name: Option<String>,
    pub no_restart: bool,
    pub restart: Option<RestartPolicy>,
    pub interval: Option<String>,
    pub jitter: Option<String>,
    pub listen: Option<String>,
}

impl Overrides {
    /// The flags of `command` that override settings.
    pub fn of(command: &Command) -> Self {
        match command {
            Command::Rotate(a) => Overrides {
                renew_before: a.renew_before.clone(),
                strategy: a.strategy,
                service_manager: a.service.service_manager,
                service_name: a.service.service_name.clone(),
                no_restart: a.no_restart,
                restart: a.service.restart,
                ..Overrides::default()
            },
            Command::Diagnose(a) => Overrides {
                renew_before: a.renew_before.clone(),
                ..Overrides::default()
            },
            Command::Agent(a) => Overrides {
                renew_before: a.rotate.renew_before.clone(),
                service_manager: a.rotate.service.service_manager,
                service_name: a.rotate.service.service_name.clone(),
                restart: a.rotate.service.restart,
                interval: a.interval.clone(),
                jitter: a.jitter.clone(),
                listen: a.listen.clone(),
                ..Overrides::default()
            },
            _ => Overrides::default(),
        }
    }
}
