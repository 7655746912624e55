//! systemd: `systemctl` on the unit. The stop is graceful first: gitlab-runner's unit has no
//! `KillSignal`, so a plain `systemctl stop` sends SIGTERM, which aborts running jobs (reference
//! §7.6). We send SIGQUIT, wait up to the stop timeout for the jobs to drain, then stop.
//!
//! Seen against a real PID-1 systemd (tests/it/supervisors): the unit's `Restart=always` turns
//! the drained exit into `activating (auto-restart)`, with no process, and systemd would start
//! it again by itself after `RestartSec` (120 s); so that state counts as stopped, and
//! `systemctl stop` follows the drain to cancel the pending restart. A start that fails does not
//! fail `systemctl start` (`Type=simple`: the exec fails after the job is done; a failed
//! `ConditionFileIsExecutable` skips the unit quietly), so the start watches the unit for a
//! moment and reports systemd's own words; and a unit left waiting to restart after such a
//! failure has a queued restart job that `systemctl start` would wait for, so it is cancelled
//! (no process runs) before the start.

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
            "--property=ActiveState,SubState,MainPID,Result,ConditionResult,ExecMainStatus",
        ])
    }

    /// systemd's own words on the unit: its journal lines and the `Main PID:`/`Condition:`
    /// lines of `systemctl status` (no lines of the service's own output).
    fn own_words(&self) -> String {
        let argv = argv(&[
            "systemctl",
            "status",
            "--no-pager",
            "--full",
            "--lines=10",
            &self.unit,
        ]);
        super::command::run(&argv, Duration::from_secs(10))
            .map(|out| own_words(&out.stdout))
            .unwrap_or_default()
    }
}

/// The lines of `systemctl status` that systemd wrote (see [`Systemd::own_words`]).
pub fn own_words(status: &str) -> String {
    let mut words: Vec<String> = Vec::new();
    for line in status.lines() {
        let line = line.trim();
        if let Some((_, said)) = line.split_once("systemd[1]: ") {
            words.push(said.trim().to_string());
        } else if line.starts_with("Main PID:") || line.starts_with("Condition:") {
            words.push(line.to_string());
        }
    }
    words.join("; ")
}

/// Why a unit that was just started is not running, from `systemctl show`; `None` when it runs
/// (or is still starting).
pub fn start_failure(text: &str) -> Option<String> {
    let prop = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map_or("", str::trim)
    };
    if prop("ConditionResult") == "no" {
        return Some("systemd skipped the start: a condition of the unit is not met".into());
    }
    let exited = prop("ActiveState") == "failed"
        || prop("SubState") == "auto-restart"
        || (prop("ActiveState") == "inactive" && prop("Result") != "success");
    exited.then(|| {
        format!(
            "the service exited at once (Result={}, status={})",
            prop("Result"),
            prop("ExecMainStatus")
        )
    })
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
    if prop("SubState") == Some("auto-restart") {
        // The process has exited; systemd waits `RestartSec` before starting it again.
        return ServiceState::Stopped;
    }
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
        super::graceful_stop(self, &cmds[0], &cmds[1], self.timeout, self.hard_stop)?;
        // Drained: the process is gone, and `stop` cancels a restart `Restart=` has scheduled.
        run_ok(&cmds[1], self.timeout).map(|_| ())
    }
    fn start(&self) -> Result<(), Error> {
        // A unit waiting out `RestartSec` after its process exited has a restart job queued;
        // `systemctl start` would wait for it (120 s). No process runs: cancel it, then start.
        // A status that cannot be read does not keep the service from being started.
        let queued = run_ok(&self.status_argv(), Duration::from_secs(10)).is_ok_and(|before| {
            before
                .stdout
                .lines()
                .any(|l| l.trim() == "SubState=auto-restart")
        });
        if queued {
            run_ok(&self.stop_argv()[1], self.timeout)?;
        }
        run_ok(&self.start_argv(), self.timeout)?;
        // Watch the unit for a moment: an exec that fails, or a process that exits at once,
        // shows only after `systemctl start` has returned.
        for _ in 0..10 {
            // Started: a status that cannot be read now is no start failure.
            let Ok(out) = run_ok(&self.status_argv(), Duration::from_secs(10)) else {
                break;
            };
            if let Some(why) = start_failure(&out.stdout) {
                let words = self.own_words();
                return Err(Error::Failed {
                    argv: self.start_argv().join(" "),
                    code: None,
                    stderr: if words.is_empty() {
                        why
                    } else {
                        format!("{why}; systemd: {words}")
                    },
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
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
            "systemctl show gitlab-runner --property=ActiveState,SubState,MainPID,Result,ConditionResult,ExecMainStatus"
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
        // Drained under `Restart=always`: no process, a restart pending.
        assert_eq!(
            parse_show("ActiveState=activating\nSubState=auto-restart\nMainPID=0\n"),
            ServiceState::Stopped
        );
    }

    #[test]
    fn start_failures_and_systemds_words() {
        assert_eq!(
            start_failure(
                "ActiveState=active\nSubState=running\nResult=success\nConditionResult=yes\n"
            ),
            None
        );
        let exec = start_failure("ActiveState=activating\nSubState=auto-restart\nResult=exit-code\nConditionResult=yes\nExecMainStatus=203\n").unwrap();
        assert!(exec.contains("Result=exit-code, status=203"), "{exec}");
        assert!(start_failure(
            "ActiveState=inactive\nSubState=dead\nResult=success\nConditionResult=no\n"
        )
        .unwrap()
        .contains("condition"));
        let status = "x gitlab-runner.service - GitLab Runner\n     Main PID: 81 (code=exited, status=203/EXEC)\n\nNov 25 16:02:35 host systemd[1]: gitlab-runner.service: Failed to locate executable /x: No such file or directory\nNov 25 16:02:35 host gitlab-runner[81]: output of the service\n";
        assert_eq!(
            own_words(status),
            "Main PID: 81 (code=exited, status=203/EXEC); gitlab-runner.service: Failed to locate executable /x: No such file or directory"
        );
    }
}
