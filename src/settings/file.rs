//! The settings file as written (`config/settings.example.toml` documents every key), read and
//! parsed with the place of any error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{bad, parse_duration, Overrides, SettingsError};
use crate::cli::{GlobalArgs, Strategy};
use crate::gitlab::CreateRunner;
use crate::service::{ManagerKind, RestartPolicy, ServiceSettings};

/// Where the settings file is looked for when `--settings` is not given.
pub const DEFAULT_SETTINGS_FILE: &str = "/etc/runner-medic/settings.toml";

/// The settings file in use: `--settings`, else the default path when it exists.
pub(super) fn settings_path(global: &GlobalArgs) -> Option<PathBuf> {
    let default_settings = PathBuf::from(DEFAULT_SETTINGS_FILE);
    global
        .settings
        .clone()
        .or_else(|| default_settings.exists().then_some(default_settings))
}

/// Read and parse the settings file; no file is the defaults.
pub(super) fn load(path: Option<&Path>) -> Result<SettingsFile, SettingsError> {
    let Some(path) = path else {
        return Ok(SettingsFile::default());
    };
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
    })
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
    /// The command of the `docker`/`podman` manager: a name on PATH or a path (default
    /// `docker` or `podman`, after the manager).
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

impl ServiceFile {
    /// `[service]` with the command's flags first.
    pub(super) fn resolve(&self, overrides: &Overrides) -> Result<ServiceSettings, SettingsError> {
        let duration = |what: &str, v: Option<&str>, default: Duration| {
            v.map_or(Ok(default), |t| parse_duration(what, t))
        };
        let manager = match (overrides.service_manager, &self.manager) {
            (Some(kind), _) => kind,
            (None, None) => ManagerKind::Auto,
            (None, Some(text)) => ManagerKind::parse(text).ok_or_else(|| {
                bad(
                    format!("unknown service manager `{text}` (`[service] manager`)"),
                    "use one of auto, systemd, sysv, openrc, launchd, gitlab-runner, docker, podman, none",
                )
            })?,
        };
        Ok(ServiceSettings {
            manager,
            name: overrides
                .service_name
                .clone()
                .or(self.name.clone())
                .unwrap_or_else(|| "gitlab-runner".into()),
            stop_timeout: duration(
                "service.stop_timeout",
                self.stop_timeout.as_deref(),
                Duration::from_secs(60),
            )?,
            restart: if overrides.no_restart {
                RestartPolicy::Never
            } else {
                overrides
                    .restart
                    .or(self.restart)
                    .unwrap_or(RestartPolicy::Reload)
            },
            hard_stop: self.hard_stop.unwrap_or(false),
            reload_timeout: duration(
                "service.reload_timeout",
                self.reload_timeout.as_deref(),
                Duration::from_secs(30),
            )?,
            init_dir: self
                .init_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("/etc/init.d")),
            gitlab_runner_bin: self
                .gitlab_runner_bin
                .clone()
                .unwrap_or_else(|| PathBuf::from("gitlab-runner")),
            container_cli: self.container_cli.clone(),
        })
    }
}
