//! OpenRC: `rc-service NAME stop|start|status`.

use std::time::Duration;

use super::command::argv;
use super::{Error, ManagerKind, ServiceManager, ServiceState};

pub struct OpenRc {
    name: String,
    timeout: Duration,
}

impl OpenRc {
    pub fn new(name: String, timeout: Duration) -> Self {
        Self { name, timeout }
    }
    pub fn argv(&self, action: &str) -> Vec<String> {
        argv(&["rc-service", &self.name, action])
    }
}

/// Parse ` * status: started|stopped|crashed|starting|stopping`.
pub fn parse_status(text: &str) -> ServiceState {
    let state = text
        .lines()
        .find_map(|l| l.split_once("status:").map(|(_, s)| s.trim().to_string()));
    match state.as_deref() {
        Some("started" | "starting" | "stopping") => ServiceState::Running { pid: None },
        Some("stopped" | "crashed") => ServiceState::Stopped,
        other => ServiceState::Unknown(format!("status: {}", other.unwrap_or("?"))),
    }
}

impl ServiceManager for OpenRc {
    fn kind(&self) -> ManagerKind {
        ManagerKind::Openrc
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
        Ok(parse_status(&format!("{}{}", out.stdout, out.stderr)))
    }
    /// SIGHUP to the pid `status` reports (the init script has no reload verb gitlab-runner
    /// defines); no pid, no signal, and gitlab-runner's own re-read of the file is relied on.
    fn reload(&self) -> Result<bool, Error> {
        super::hup_status_pid(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_recorded_status() {
        assert_eq!(
            parse_status(include_str!(
                "../../tests/fixtures/rc-service-status-started.txt"
            )),
            ServiceState::Running { pid: None }
        );
        assert_eq!(
            parse_status(include_str!(
                "../../tests/fixtures/rc-service-status-stopped.txt"
            )),
            ServiceState::Stopped
        );
        assert_eq!(
            parse_status(include_str!(
                "../../tests/fixtures/rc-service-status-crashed.txt"
            )),
            ServiceState::Stopped
        );
        assert_eq!(
            OpenRc::new("gitlab-runner".into(), Duration::from_secs(1))
                .argv("stop")
                .join(" "),
            "rc-service gitlab-runner stop"
        );
    }
}
