//! Stopping and starting gitlab-runner under whatever supervises it.
//!
//! One small trait, [`ServiceManager`], with a backend per supervisor. Each backend builds its
//! argv and parses output with pure functions (unit-tested against recorded real outputs) and
//! runs commands only through `command.rs`.

mod command;
mod container;
mod gitlab_runner;
mod launchd;
mod openrc;
mod systemd;
mod sysv;

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use command::{
    run as run_command, run_with_env as run_command_with_env, Output, DEFAULT_PATH, HOOK_VARS,
    PASSED_ON,
};
pub use container::Container;
pub use gitlab_runner::GitlabRunnerCli;
pub use launchd::Launchd;
pub use openrc::OpenRc;
pub use systemd::Systemd;
pub use sysv::SysV;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("cannot run `{argv}`: {reason}")]
    Spawn { argv: String, reason: String },
    #[error("`{argv}` did not finish within {secs} s")]
    Timeout { argv: String, secs: u64 },
    #[error("`{argv}` failed (exit {code:?}): {stderr}")]
    Failed {
        argv: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("service `{name}` is still {state} after {secs} s")]
    StateNotReached {
        name: String,
        state: &'static str,
        secs: u64,
    },
}

/// Which supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ManagerKind {
    Auto,
    Systemd,
    #[value(alias = "service")]
    Sysv,
    Openrc,
    Launchd,
    GitlabRunner,
    Docker,
    Podman,
    None,
}

impl ManagerKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auto" => Self::Auto,
            "systemd" => Self::Systemd,
            "sysv" | "service" => Self::Sysv,
            "openrc" => Self::Openrc,
            "launchd" => Self::Launchd,
            "gitlab-runner" => Self::GitlabRunner,
            "docker" => Self::Docker,
            "podman" => Self::Podman,
            "none" => Self::None,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Systemd => "systemd",
            Self::Sysv => "sysv",
            Self::Openrc => "openrc",
            Self::Launchd => "launchd",
            Self::GitlabRunner => "gitlab-runner",
            Self::Docker => "docker",
            Self::Podman => "podman",
            Self::None => "none",
        }
    }
}

/// The service layer's own configuration (`[service]` of the settings, with the command line
/// flags applied), so this layer does not depend on the settings module.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub manager: ManagerKind,
    pub name: String,
    pub stop_timeout: std::time::Duration,
    pub restart: RestartPolicy,
    pub hard_stop: bool,
    pub reload_timeout: std::time::Duration,
    pub init_dir: std::path::PathBuf,
    pub gitlab_runner_bin: std::path::PathBuf,
    /// The docker or podman command for those managers (a name on PATH or a path); `None`:
    /// `docker` or `podman`.
    pub container_cli: Option<String>,
}

/// `restart = reload | always | when-needed | never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// The default: write config.toml, let gitlab-runner reload it (SIGHUP through the supervisor
    /// where it has a way; gitlab-runner also re-reads the file within 3 s of a change, reference
    /// §7.2), confirm that the new token is in use, and restart only when it is not. No job is
    /// interrupted: a reload keeps running builds.
    Reload,
    /// Stop, write, start: the whole service goes down once (a graceful stop waits for jobs).
    Always,
    /// Restart only when a token was dead; a renewed valid token relies on gitlab-runner's own
    /// reload of config.toml (it re-reads the file within 3 s of a change, reference §7.2).
    WhenNeeded,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    Running {
        pid: Option<u32>,
    },
    Stopped,
    /// The manager could not tell (or there is none).
    Unknown(String),
}

pub trait ServiceManager: Send + Sync {
    fn kind(&self) -> ManagerKind;
    fn name(&self) -> &str;
    /// Ask the service to stop (gracefully where the supervisor allows).
    fn stop(&self) -> Result<(), Error>;
    fn start(&self) -> Result<(), Error>;
    fn status(&self) -> Result<ServiceState, Error>;
    /// Ask the running gitlab-runner to re-read config.toml (SIGHUP, through the supervisor).
    /// `Ok(false)`: this supervisor has no way to signal it, and gitlab-runner's own re-read of
    /// the changed file (every 3 s, `commands/multi.go` `checkConfig`) is relied on.
    fn reload(&self) -> Result<bool, Error> {
        Ok(false)
    }
}

/// SIGHUP to the pid a supervisor's `status` reported: a reload for supervisors without a
/// reload verb of their own (SysV, OpenRC). `Ok(false)` when no pid is known.
pub(crate) fn hup_status_pid(manager: &dyn ServiceManager) -> Result<bool, Error> {
    let ServiceState::Running { pid: Some(pid) } = manager.status()? else {
        return Ok(false);
    };
    let pid = i32::try_from(pid).map_err(|_| Error::Spawn {
        argv: "kill -HUP".into(),
        reason: format!("pid {pid} out of range"),
    })?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|e| Error::Spawn {
        argv: format!("kill -HUP {pid}"),
        reason: e.desc().to_string(),
    })?;
    Ok(true)
}

/// No supervision: gitlab-runner reloads config.toml by itself.
pub struct NoManager;

impl ServiceManager for NoManager {
    fn kind(&self) -> ManagerKind {
        ManagerKind::None
    }
    fn name(&self) -> &'static str {
        "-"
    }
    fn stop(&self) -> Result<(), Error> {
        Ok(())
    }
    fn start(&self) -> Result<(), Error> {
        Ok(())
    }
    fn status(&self) -> Result<ServiceState, Error> {
        Ok(ServiceState::Unknown("no service manager".into()))
    }
}

/// The chosen manager and why it was chosen.
pub struct Chosen {
    pub manager: Box<dyn ServiceManager>,
    pub reason: String,
}

/// Build the manager the settings ask for; `auto` detects from the host under `root` ("/").
pub fn choose(settings: &ServiceSettings, root: &Path) -> Chosen {
    let (kind, reason) = match settings.manager {
        ManagerKind::Auto => detect(root, &settings.name),
        other => (
            other,
            "chosen in the settings or on the command line".to_string(),
        ),
    };
    let timeout = settings.stop_timeout;
    let name = settings.name.clone();
    let manager: Box<dyn ServiceManager> = match kind {
        ManagerKind::Systemd => {
            Box::new(Systemd::new(name, timeout).with_hard_stop(settings.hard_stop))
        }
        ManagerKind::Sysv => Box::new(SysV::new(name, settings.init_dir.clone(), timeout)),
        ManagerKind::Openrc => {
            Box::new(OpenRc::new(name, timeout).with_hard_stop(settings.hard_stop))
        }
        ManagerKind::Launchd => Box::new(
            Launchd::new(name, nix::unistd::geteuid().is_root(), timeout)
                .with_hard_stop(settings.hard_stop),
        ),
        ManagerKind::GitlabRunner => Box::new(GitlabRunnerCli::new(
            name,
            settings.gitlab_runner_bin.clone(),
            timeout,
        )),
        ManagerKind::Docker | ManagerKind::Podman => {
            let cli = settings
                .container_cli
                .clone()
                .unwrap_or_else(|| kind.as_str().to_string());
            Box::new(Container::new(kind, cli, name, timeout).with_hard_stop(settings.hard_stop))
        }
        ManagerKind::None | ManagerKind::Auto => Box::new(NoManager),
    };
    Chosen { manager, reason }
}

/// Detect the supervisor of `name` from the files of the host rooted at `root`.
pub fn detect(root: &Path, name: &str) -> (ManagerKind, String) {
    let at = |p: &str| root.join(p.trim_start_matches('/'));
    if at("/run/systemd/system").is_dir() {
        for dir in [
            "/etc/systemd/system",
            "/lib/systemd/system",
            "/usr/lib/systemd/system",
        ] {
            let unit = at(dir).join(format!("{name}.service"));
            if unit.exists() {
                return (
                    ManagerKind::Systemd,
                    format!("systemd is running and `{}` exists", unit.display()),
                );
            }
        }
    }
    let script = at("/etc/init.d").join(name);
    if script.exists() {
        if at("/run/openrc").is_dir() || at("/sbin/openrc-run").exists() {
            return (
                ManagerKind::Openrc,
                format!("OpenRC is present and `{}` exists", script.display()),
            );
        }
        return (
            ManagerKind::Sysv,
            format!("the init script `{}` exists", script.display()),
        );
    }
    for plist in [
        format!("/Library/LaunchDaemons/{name}.plist"),
        format!("/Library/LaunchAgents/{name}.plist"),
    ] {
        if at(&plist).exists() {
            return (ManagerKind::Launchd, format!("`{plist}` exists"));
        }
    }
    (
        ManagerKind::None,
        format!(
            "no systemd unit, init script or launchd job named `{name}` was found; gitlab-runner \
             re-reads config.toml by itself within 3 s"
        ),
    )
}

/// The graceful stop every backend that can signal the process shares: ask for SIGQUIT (running
/// jobs finish) and wait up to `timeout` for the service to stop. Only with `hard_stop` is it then
/// stopped hard (SIGTERM aborts running jobs); otherwise the stop fails and says so, and no job
/// is interrupted.
pub(crate) fn graceful_stop(
    manager: &dyn ServiceManager,
    graceful: &[String],
    hard: &[String],
    timeout: Duration,
    hard_stop: bool,
) -> Result<(), Error> {
    // The service may already be stopped; a failed SIGQUIT is not an error then.
    let _ = command::run(graceful, Duration::from_secs(10));
    let drained = wait_for(manager, false, timeout);
    if drained.is_ok() {
        return Ok(());
    }
    if !hard_stop {
        tracing::warn!(
            service = manager.name(),
            "jobs are still running after the stop timeout; not stopping hard (hard_stop = false)"
        );
        return drained.map(|_| ());
    }
    tracing::warn!(
        service = manager.name(),
        "jobs did not drain in time, stopping hard (hard_stop = true)"
    );
    command::run_ok(hard, Duration::from_secs(30) + timeout).map(|_| ())
}

/// How long any `status` query may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// `stop` for supervisors whose own stop command drains the service (an init script, `rc-service`,
/// `gitlab-runner stop`): the stop timeout, plus a grace for the command's own bookkeeping.
pub(crate) fn verb_stop(argv: &[String], timeout: Duration) -> Result<(), Error> {
    command::run_ok(argv, timeout + Duration::from_secs(10)).map(|_| ())
}

/// `start` for the same supervisors.
pub(crate) fn verb_start(argv: &[String], timeout: Duration) -> Result<(), Error> {
    command::run_ok(argv, timeout).map(|_| ())
}

/// Run a status query; its exit code and output are for the backend to read.
pub(crate) fn query_status(argv: &[String]) -> Result<Output, Error> {
    command::run(argv, STATUS_TIMEOUT)
}

/// Poll `status` until the service runs (`want_running`) or has stopped, or `timeout` passes.
pub fn wait_for(
    manager: &dyn ServiceManager,
    want_running: bool,
    timeout: Duration,
) -> Result<ServiceState, Error> {
    let started = Instant::now();
    loop {
        let state = manager.status()?;
        let reached = match &state {
            ServiceState::Running { .. } => want_running,
            ServiceState::Stopped => !want_running,
            ServiceState::Unknown(_) => manager.kind() == ManagerKind::None,
        };
        if reached {
            return Ok(state);
        }
        if started.elapsed() >= timeout {
            return Err(Error::StateNotReached {
                name: manager.name().to_string(),
                state: if want_running {
                    "not running"
                } else {
                    "running"
                },
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, p: &str) {
        let path = root.join(p.trim_start_matches('/'));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "").unwrap();
    }

    #[test]
    fn detects_systemd_only_when_running_and_unit_present() {
        let root = tempfile::tempdir().unwrap();
        touch(root.path(), "/etc/systemd/system/gitlab-runner.service");
        assert_eq!(detect(root.path(), "gitlab-runner").0, ManagerKind::None);
        std::fs::create_dir_all(root.path().join("run/systemd/system")).unwrap();
        let (kind, reason) = detect(root.path(), "gitlab-runner");
        assert_eq!(kind, ManagerKind::Systemd);
        assert!(reason.contains("gitlab-runner.service"));
    }

    #[test]
    fn detects_sysv_openrc_launchd_and_none() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(detect(root.path(), "gitlab-runner").0, ManagerKind::None);
        touch(root.path(), "/etc/init.d/gitlab-runner");
        assert_eq!(detect(root.path(), "gitlab-runner").0, ManagerKind::Sysv);
        touch(root.path(), "/sbin/openrc-run");
        assert_eq!(detect(root.path(), "gitlab-runner").0, ManagerKind::Openrc);
        let mac = tempfile::tempdir().unwrap();
        touch(mac.path(), "/Library/LaunchDaemons/gitlab-runner.plist");
        assert_eq!(detect(mac.path(), "gitlab-runner").0, ManagerKind::Launchd);
        // A unit of another name does not count.
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(other.path().join("run/systemd/system")).unwrap();
        touch(other.path(), "/lib/systemd/system/other.service");
        assert_eq!(detect(other.path(), "gitlab-runner").0, ManagerKind::None);
    }
}
