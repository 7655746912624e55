//! macOS launchd: `launchctl kill SIGQUIT` (graceful), `launchctl stop` and `launchctl kickstart` on the job, and
//! `launchctl print DOMAIN/LABEL` for the state. Root manages the `system` domain; a user its
//! own `gui/UID` domain, where gitlab-runner's documented install puts its LaunchAgent.

use std::time::Duration;

use super::command::{argv, run, run_ok};
use super::{Error, ManagerKind, ServiceManager, ServiceState};

pub struct Launchd {
    label: String,
    domain: String,
    timeout: Duration,
    hard_stop: bool,
}

impl Launchd {
    pub fn new(label: String, system: bool, timeout: Duration) -> Self {
        let domain = if system {
            "system".to_string()
        } else {
            format!("gui/{}", nix::unistd::getuid())
        };
        Self {
            label,
            domain,
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

    fn target(&self) -> String {
        format!("{}/{}", self.domain, self.label)
    }

    pub fn stop_argv(&self) -> Vec<Vec<String>> {
        vec![
            argv(&["launchctl", "kill", "SIGQUIT", &self.target()]),
            argv(&["launchctl", "stop", &self.label]),
        ]
    }
    pub fn start_argv(&self) -> Vec<String> {
        argv(&["launchctl", "kickstart", &self.target()])
    }
    pub fn status_argv(&self) -> Vec<String> {
        argv(&["launchctl", "print", &self.target()])
    }
}

/// Parse `launchctl print`: `state = running` and `pid = N`.
pub fn parse_print(text: &str) -> ServiceState {
    let field = |key: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|r| r.trim_start().strip_prefix('='))
            })
            .map(str::trim)
    };
    match field("state") {
        Some("running") => ServiceState::Running {
            pid: field("pid").and_then(|p| p.parse().ok()),
        },
        Some(_) => ServiceState::Stopped,
        None => ServiceState::Unknown("no state in launchctl print".into()),
    }
}

impl ServiceManager for Launchd {
    fn kind(&self) -> ManagerKind {
        ManagerKind::Launchd
    }
    fn name(&self) -> &str {
        &self.label
    }
    fn stop(&self) -> Result<(), Error> {
        let cmds = self.stop_argv();
        super::graceful_stop(self, &cmds[0], &cmds[1], self.timeout, self.hard_stop)
    }
    fn start(&self) -> Result<(), Error> {
        run_ok(&self.start_argv(), self.timeout).map(|_| ())
    }
    fn status(&self) -> Result<ServiceState, Error> {
        let out = run(&self.status_argv(), Duration::from_secs(10))?;
        if out.code == Some(113) {
            // "Could not find service": not loaded, so not running.
            return Ok(ServiceState::Stopped);
        }
        Ok(parse_print(&out.stdout))
    }
    fn reload(&self) -> Result<bool, Error> {
        let argv = argv(&["launchctl", "kill", "SIGHUP", &self.target()]);
        run_ok(&argv, self.timeout).map(|_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recorded_print() {
        assert_eq!(
            parse_print(include_str!(
                "../../tests/fixtures/launchctl-print-running.txt"
            )),
            ServiceState::Running { pid: Some(812) }
        );
        assert_eq!(
            parse_print(include_str!(
                "../../tests/fixtures/launchctl-print-stopped.txt"
            )),
            ServiceState::Stopped
        );
        let l = Launchd::new("gitlab-runner".into(), true, Duration::from_secs(1));
        assert_eq!(
            l.status_argv().join(" "),
            "launchctl print system/gitlab-runner"
        );
        assert_eq!(
            l.stop_argv()[0].join(" "),
            "launchctl kill SIGQUIT system/gitlab-runner"
        );
    }
}
