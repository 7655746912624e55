//! The runner's own service commands: `gitlab-runner stop|start|status --service NAME`, as the
//! common fix instructions use. `status` prints `NAME: Service is running` and exits 0, or exits
//! 1 (reference §7.4).

use std::path::PathBuf;
use std::time::Duration;

use super::{Error, ManagerKind, ServiceManager, ServiceState};

pub struct GitlabRunnerCli {
    name: String,
    bin: PathBuf,
    timeout: Duration,
}

impl GitlabRunnerCli {
    pub fn new(name: String, bin: PathBuf, timeout: Duration) -> Self {
        Self { name, bin, timeout }
    }
    pub fn argv(&self, action: &str) -> Vec<String> {
        vec![
            self.bin.to_string_lossy().into_owned(),
            action.into(),
            "--service".into(),
            self.name.clone(),
        ]
    }
}

pub fn parse_status(code: Option<i32>, stdout: &str) -> ServiceState {
    if code == Some(0) && stdout.contains("Service is running") {
        ServiceState::Running { pid: None }
    } else if code == Some(1) || stdout.contains("not running") {
        ServiceState::Stopped
    } else {
        ServiceState::Unknown(format!("exit {code:?}: {}", stdout.trim()))
    }
}

impl ServiceManager for GitlabRunnerCli {
    fn kind(&self) -> ManagerKind {
        ManagerKind::GitlabRunner
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn stop(&self) -> Result<(), Error> {
        super::verb_stop(&self.argv("stop"), self.timeout)
    }
    fn start(&self) -> Result<(), Error> {
        super::verb_start(&self.argv("start"), self.timeout)
    }
    fn status(&self) -> Result<ServiceState, Error> {
        let out = super::query_status(&self.argv("status"))?;
        Ok(parse_status(out.code, &out.stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_and_status() {
        let g = GitlabRunnerCli::new(
            "gitlab-runner".into(),
            "gitlab-runner".into(),
            Duration::from_secs(1),
        );
        assert_eq!(
            g.argv("stop").join(" "),
            "gitlab-runner stop --service gitlab-runner"
        );
        assert_eq!(
            parse_status(
                Some(0),
                include_str!("../../tests/fixtures/gitlab-runner-status-running.txt")
            ),
            ServiceState::Running { pid: None }
        );
        assert_eq!(parse_status(Some(1), ""), ServiceState::Stopped);
    }
}
