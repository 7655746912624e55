//! A container (docker or podman) that runs gitlab-runner, under the engine's restart policy.
//!
//! - reload: SIGHUP (gitlab-runner in the container re-reads config.toml): `podman kill
//!   --signal HUP`, `docker exec NAME sh -c 'kill -HUP 1'` (see [`Container::reload_argv`]);
//! - stop: `kill --signal QUIT` so gitlab-runner finishes its jobs, a wait (up to the stop
//!   timeout) for that process to exit, then `stop`. The `stop` matters: podman restarts a
//!   container whose process exits after a `kill` when its policy is `always` or
//!   `unless-stopped` (docker does too when the signal is not the container's stop signal);
//!   `stop` marks the container stopped by the user, so the engine does not start it again, and
//!   stops a process the policy already started (it has just started, with no job yet);
//! - start: `start`; status: `inspect`.
//!
//! The engine's CLI is `docker`/`podman` from PATH, or `[service] container_cli`. It finds its
//! engine through `DOCKER_HOST` and friends and, for podman, `CONTAINERS_CONF` /
//! `CONTAINERS_STORAGE_CONF`: taken from runner-medic's own environment and set on the engine's
//! commands only ([`CONTAINER_VARS`]), never on a hook or another service command.

use std::time::{Duration, Instant};

use super::command::{argv, run_with_env, Output, CONTAINER_VARS};
use super::{Error, ManagerKind, ServiceManager, ServiceState};

/// How long a `stop` after the drained exit may take (the process it stops has no job).
const STOP_SECS: u64 = 10;
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Container {
    kind: ManagerKind,
    cli: String,
    name: String,
    timeout: Duration,
    hard_stop: bool,
    env: Vec<(String, String)>,
}

/// What `inspect` says about the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspected {
    /// `.State.Status`: `running`, `exited`, `created`, `restarting`, `paused`, `stopping`, …
    pub status: String,
    pub pid: Option<u32>,
    /// `.State.StartedAt`: changes when the engine starts the process again.
    pub started_at: String,
}

impl Inspected {
    /// Running, or about to run again (`restarting`: docker's policy will start it).
    pub fn running(&self) -> bool {
        matches!(
            self.status.as_str(),
            "running" | "restarting" | "paused" | "stopping"
        )
    }
}

impl Container {
    /// `kind` is [`ManagerKind::Docker`] or [`ManagerKind::Podman`]; `cli` its command (a name
    /// on PATH or a path).
    pub fn new(kind: ManagerKind, cli: String, name: String, timeout: Duration) -> Self {
        let env = CONTAINER_VARS
            .iter()
            .filter_map(|k| Some(((*k).to_string(), std::env::var(k).ok()?)))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        Self {
            kind,
            cli,
            name,
            timeout,
            hard_stop: false,
            env,
        }
    }

    /// Stop hard after `timeout` when jobs have not finished (`[service] hard_stop`).
    #[must_use]
    pub fn with_hard_stop(mut self, hard_stop: bool) -> Self {
        self.hard_stop = hard_stop;
        self
    }

    pub fn kill_argv(&self, signal: &str) -> Vec<String> {
        argv(&[&self.cli, "kill", "--signal", signal, &self.name])
    }
    /// The command that sends gitlab-runner SIGHUP (why it differs per engine: see `reload`).
    pub fn reload_argv(&self) -> Vec<String> {
        if self.kind == ManagerKind::Docker {
            argv(&[&self.cli, "exec", &self.name, "sh", "-c", "kill -HUP 1"])
        } else {
            self.kill_argv("HUP")
        }
    }
    pub fn stop_argv(&self) -> Vec<String> {
        argv(&[
            &self.cli,
            "stop",
            "--time",
            &STOP_SECS.to_string(),
            &self.name,
        ])
    }
    pub fn start_argv(&self) -> Vec<String> {
        argv(&[&self.cli, "start", &self.name])
    }
    pub fn status_argv(&self) -> Vec<String> {
        argv(&[
            &self.cli,
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.Pid}} {{.State.StartedAt}}",
            &self.name,
        ])
    }

    fn run(&self, argv: &[String], timeout: Duration) -> Result<Output, Error> {
        run_with_env(argv, &self.env, timeout)
    }

    fn run_ok(&self, argv: &[String], timeout: Duration) -> Result<Output, Error> {
        let output = self.run(argv, timeout)?;
        if output.success() {
            return Ok(output);
        }
        Err(Error::Failed {
            argv: argv.join(" "),
            code: output.code,
            stderr: if output.stderr.trim().is_empty() {
                output.stdout.trim().to_string()
            } else {
                output.stderr.trim().to_string()
            },
        })
    }

    pub fn inspect(&self) -> Result<Inspected, Error> {
        let out = self.run_ok(&self.status_argv(), STATUS_TIMEOUT)?;
        parse_inspect(&out.stdout).ok_or_else(|| Error::Failed {
            argv: self.status_argv().join(" "),
            code: out.code,
            stderr: format!("unexpected output: {}", out.stdout.trim()),
        })
    }

    /// `stop`, then check that the container is stopped. podman's `stop` fails (exit 125) when
    /// the restart its policy attempted after the drained exit failed; the container is stopped
    /// all the same, and what counts is that it is. A restart the policy had under way when
    /// `stop` ran can still bring the container up right after it: `stop` is then run again
    /// (a few times at most; the process it stops was started a moment ago and has no job).
    fn stop_now(&self) -> Result<(), Error> {
        const ATTEMPTS: usize = 3;
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            let stopped = self.run_ok(
                &self.stop_argv(),
                Duration::from_secs(STOP_SECS) + STATUS_TIMEOUT,
            );
            let now = self.inspect()?;
            if !now.running() {
                if let Err(e) = stopped {
                    tracing::debug!(service = %self.name, error = %e, "stopped, though `stop` failed");
                }
                return Ok(());
            }
            tracing::debug!(service = %self.name, attempt, status = %now.status, "running again after `stop` (its restart policy); stopping it again");
            last = stopped.err();
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(last.unwrap_or(Error::StateNotReached {
            name: self.name.clone(),
            state: "running",
            secs: STOP_SECS,
        }))
    }
}

/// `STATUS PID STARTED_AT` (podman's StartedAt has spaces: the rest of the line).
pub fn parse_inspect(text: &str) -> Option<Inspected> {
    let line = text.lines().next()?.trim();
    let mut parts = line.splitn(3, ' ');
    let status = parts.next()?.to_string();
    let pid = parts.next()?.parse::<u32>().ok()?;
    let started_at = parts.next().unwrap_or_default().to_string();
    if status.is_empty() || !status.chars().all(|c| c.is_ascii_lowercase()) {
        return None;
    }
    Some(Inspected {
        status,
        pid: Some(pid).filter(|p| *p > 0),
        started_at,
    })
}

impl ServiceManager for Container {
    fn kind(&self) -> ManagerKind {
        self.kind
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn stop(&self) -> Result<(), Error> {
        let before = self.inspect()?;
        if !before.running() {
            return Ok(());
        }
        // SIGQUIT: gitlab-runner finishes its running jobs, then exits. A failed kill (the
        // process exited meanwhile) is seen by the wait below.
        let _ = self.run(&self.kill_argv("QUIT"), STATUS_TIMEOUT);
        let waited = Instant::now();
        loop {
            let now = self.inspect()?;
            // The process that got SIGQUIT is gone: stopped, or started again by the policy.
            if !now.running() || now.started_at != before.started_at || now.pid != before.pid {
                break;
            }
            if waited.elapsed() >= self.timeout {
                if self.hard_stop {
                    tracing::warn!(
                        service = %self.name,
                        "jobs did not drain in time, stopping hard (hard_stop = true)"
                    );
                    return self.stop_now();
                }
                tracing::warn!(
                    service = %self.name,
                    "jobs are still running after the stop timeout; not stopping hard (hard_stop = false)"
                );
                return Err(Error::StateNotReached {
                    name: self.name.clone(),
                    state: "running",
                    secs: self.timeout.as_secs(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Drained. `stop` keeps the restart policy from starting it again (or stops what it
        // started a moment ago).
        self.stop_now()
    }
    fn start(&self) -> Result<(), Error> {
        self.run_ok(&self.start_argv(), self.timeout).map(|_| ())
    }
    fn status(&self) -> Result<ServiceState, Error> {
        let now = self.inspect()?;
        Ok(if now.running() {
            ServiceState::Running { pid: now.pid }
        } else {
            ServiceState::Stopped
        })
    }
    /// SIGHUP to gitlab-runner in the container: it reloads config.toml. podman: `kill --signal
    /// HUP`. docker: from inside the container (`exec NAME sh -c 'kill -HUP 1'`), because
    /// `docker kill` with any signal docker counts as fatal (SIGHUP is one) disables the
    /// container's restart policy until its next start (docker-kill(1)): a gitlab-runner that
    /// crashed later would stay down. A failure (an image without `sh`) is reported; the file is
    /// then picked up by gitlab-runner's own re-read, confirmed, or the service restarted.
    fn reload(&self) -> Result<bool, Error> {
        self.run_ok(&self.reload_argv(), STATUS_TIMEOUT)
            .map(|_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_and_inspect() {
        let c = Container::new(
            ManagerKind::Docker,
            "docker".into(),
            "gitlab-runner".into(),
            Duration::from_secs(1),
        );
        assert_eq!(
            c.kill_argv("QUIT").join(" "),
            "docker kill --signal QUIT gitlab-runner"
        );
        assert_eq!(
            c.reload_argv().join(" "),
            "docker exec gitlab-runner sh -c kill -HUP 1"
        );
        let p = Container::new(
            ManagerKind::Podman,
            "podman".into(),
            "gitlab-runner".into(),
            Duration::from_secs(1),
        );
        assert_eq!(
            p.reload_argv().join(" "),
            "podman kill --signal HUP gitlab-runner"
        );
        assert_eq!(
            c.stop_argv().join(" "),
            "docker stop --time 10 gitlab-runner"
        );
        assert_eq!(c.start_argv().join(" "), "docker start gitlab-runner");
        // docker 20.10
        let docker = parse_inspect("running 4321 2026-11-25T16:17:39.219871407Z\n").unwrap();
        assert!(docker.running());
        assert_eq!(docker.pid, Some(4321));
        // podman 4.3 (StartedAt with spaces)
        let podman = parse_inspect("exited 0 2026-11-25 16:18:03.188352686 +0000 UTC\n").unwrap();
        assert!(!podman.running());
        assert_eq!(podman.pid, None);
        assert_eq!(podman.started_at, "2026-11-25 16:18:03.188352686 +0000 UTC");
        assert!(parse_inspect("restarting 0 x").unwrap().running());
        assert_eq!(parse_inspect("Error: no such object"), None);
    }
}
