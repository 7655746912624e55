//! systemd: `systemctl` on the unit. The stop is graceful first: gitlab-runner's unit has no
//! `KillSignal`, so a plain `systemctl stop` sends SIGTERM, which aborts running jobs (reference
//! §7.6). We send SIGQUIT, wait up to the stop timeout for the jobs to drain, then stop.

use std::time::Duration;

use super::command::{argv, run_ok};
use super::{Error, ManagerKind, ServiceManager, ServiceState};

pub struct Systemd {
    unit: String,
    timeout: Duration,
    hard_stop: bool,
}

impl Systemd {
    pub fn new(unit: String, timeout: Duration) -> Self {
        Self {
            unit,
            timeout,
            hard_stop: false,
        }
    }

    /// Stop hard after `timeout` when jobs have not finished (`[service] hard_stop`).
    #[must_use]
    pub fn with_hard_stop(mut self, hard_stop: bool) -> Self {
        self.hard_stop = hard_stop;
        self
    }

    pub fn stop_argv(&self) -> Vec<Vec<String>> {
        vec![
            argv(&[
                "systemctl",
                "kill",
                "--signal=SIGQUIT",
                "--kill-whom=main",
                &self.unit,
            ]),
            argv(&["systemctl", "stop", &self.unit]),
        ]
    }

    pub fn start_argv(&self) -> Vec<String> {
        argv(&["systemctl", "start", &self.unit])
    }

    pub fn status_argv(&self) -> Vec<String> {
        argv(&[
            "systemctl",
            "show",
            &self.unit,
            "--property=ActiveState,SubState,MainPID",
        ])
    }
}

/// Parse `systemctl show --property=ActiveState,SubState,MainPID`.
pub fn parse_show(text: &str) -> ServiceState {
    let prop = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map(str::trim)
    };
    let pid = prop("MainPID")
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|p| *p > 0);
    match prop("ActiveState") {
        Some("active" | "reloading" | "activating" | "deactivating") => {
            ServiceState::Running { pid }
        }
        Some("inactive" | "failed") => ServiceState::Stopped,
        other => ServiceState::Unknown(format!("ActiveState={}", other.unwrap_or("?"))),
    }
}

impl ServiceManager for Systemd {
    fn kind(&self) -> ManagerKind {
        ManagerKind::Systemd
    }
    fn name(&self) -> &str {
        &self.unit
    }
    fn stop(&self) -> Result<(), Error> {
        let cmds = self.stop_argv();
        super::graceful_stop(self, &cmds[0], &cmds[1], self.timeout, self.hard_stop)
    }
    fn start(&self) -> Result<(), Error> {
        run_ok(&self.start_argv(), self.timeout).map(|_| ())
    }
    /// SIGHUP to the main process: gitlab-runner's unit has no `ExecReload`, so `systemctl
    /// reload` would fail where the signal works.
    fn reload(&self) -> Result<bool, Error> {
        let argv = argv(&[
            "systemctl",
            "kill",
            "--signal=SIGHUP",
            "--kill-whom=main",
            &self.unit,
        ]);
        run_ok(&argv, self.timeout).map(|_| true)
    }
    fn status(&self) -> Result<ServiceState, Error> {
        let out = run_ok(&self.status_argv(), Duration::from_secs(10))?;
        Ok(parse_show(&out.stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines() {
        let s = Systemd::new("gitlab-runner".into(), Duration::from_secs(5));
        assert_eq!(s.start_argv().join(" "), "systemctl start gitlab-runner");
        assert_eq!(
            s.status_argv().join(" "),
            "systemctl show gitlab-runner --property=ActiveState,SubState,MainPID"
        );
        assert_eq!(
            s.stop_argv()[0].join(" "),
            "systemctl kill --signal=SIGQUIT --kill-whom=main gitlab-runner"
        );
        assert_eq!(s.stop_argv()[1].join(" "), "systemctl stop gitlab-runner");
    }

    #[test]
    fn parses_recorded_show_output() {
        assert_eq!(
            parse_show(include_str!(
                "../../tests/fixtures/systemctl-show-active.txt"
            )),
            ServiceState::Running { pid: Some(1234) }
        );
        assert_eq!(
            parse_show(include_str!(
                "../../tests/fixtures/systemctl-show-inactive.txt"
            )),
            ServiceState::Stopped
        );
        assert_eq!(
            parse_show(include_str!(
                "../../tests/fixtures/systemctl-show-deactivating.txt"
            )),
            ServiceState::Running { pid: Some(1234) }
        );
    }
}
