//! A container (docker or podman): SIGQUIT so gitlab-runner drains its jobs, a bounded wait,
//! then `stop`; `start`; `inspect` for the state.

use std::time::Duration;

use super::command::{argv, run_ok};
use super::{Error, ManagerKind, ServiceManager, ServiceState};

pub struct Container {
    cli: String,
    name: String,
    timeout: Duration,
    hard_stop: bool,
}

impl Container {
    pub fn new(cli: String, name: String, timeout: Duration) -> Self {
        Self {
            cli,
            name,
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
            argv(&[&self.cli, "kill", "--signal", "QUIT", &self.name]),
            argv(&[&self.cli, "stop", "--time", "10", &self.name]),
        ]
    }
    pub fn start_argv(&self) -> Vec<String> {
        argv(&[&self.cli, "start", &self.name])
    }
    pub fn status_argv(&self) -> Vec<String> {
        argv(&[
            &self.cli,
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.Pid}}",
            &self.name,
        ])
    }
}

pub fn parse_inspect(text: &str) -> ServiceState {
    let mut words = text.split_whitespace();
    match words.next() {
        Some("true") => ServiceState::Running {
            pid: words.next().and_then(|p| p.parse().ok()).filter(|p| *p > 0),
        },
        Some("false") => ServiceState::Stopped,
        _ => ServiceState::Unknown(text.trim().to_string()),
    }
}

impl ServiceManager for Container {
    fn kind(&self) -> ManagerKind {
        if self.cli == "podman" {
            ManagerKind::Podman
        } else {
            ManagerKind::Docker
        }
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn stop(&self) -> Result<(), Error> {
        let cmds = self.stop_argv();
        super::graceful_stop(self, &cmds[0], &cmds[1], self.timeout, self.hard_stop)
    }
    fn start(&self) -> Result<(), Error> {
        run_ok(&self.start_argv(), self.timeout).map(|_| ())
    }
    fn status(&self) -> Result<ServiceState, Error> {
        let out = run_ok(&self.status_argv(), Duration::from_secs(10))?;
        Ok(parse_inspect(&out.stdout))
    }
    /// `docker kill --signal HUP`: gitlab-runner in the container reloads config.toml.
    fn reload(&self) -> Result<bool, Error> {
        let argv = vec![
            self.cli.clone(),
            "kill".into(),
            "--signal".into(),
            "HUP".into(),
            self.name.clone(),
        ];
        run_ok(&argv, self.timeout).map(|_| true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_and_inspect() {
        let c = Container::new(
            "docker".into(),
            "gitlab-runner".into(),
            Duration::from_secs(1),
        );
        assert_eq!(
            c.stop_argv()[0].join(" "),
            "docker kill --signal QUIT gitlab-runner"
        );
        assert_eq!(c.start_argv().join(" "), "docker start gitlab-runner");
        assert_eq!(
            parse_inspect("true 4321\n"),
            ServiceState::Running { pid: Some(4321) }
        );
        assert_eq!(parse_inspect("false 0\n"), ServiceState::Stopped);
    }
}
