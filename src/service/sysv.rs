//! System V init: `service NAME stop|start|status`, or the init script itself when it lives
//! outside `/etc/init.d` (a test root) or `service` is missing. LSB `status` exits 0 when
//! running and 3 when stopped.

use std::path::PathBuf;
use std::time::Duration;

use super::{Error, ManagerKind, ServiceManager, ServiceState};

pub struct SysV {
    name: String,
    init_dir: PathBuf,
    timeout: Duration,
}

impl SysV {
    pub fn new(name: String, init_dir: PathBuf, timeout: Duration) -> Self {
        Self {
            name,
            init_dir,
            timeout,
        }
    }

    pub fn argv(&self, action: &str, service_available: bool) -> Vec<String> {
        let script = self.init_dir.join(&self.name);
        if self.init_dir == std::path::Path::new("/etc/init.d") && service_available {
            vec!["service".into(), self.name.clone(), action.into()]
        } else {
            vec![script.to_string_lossy().into_owned(), action.into()]
        }
    }

    fn cmd(&self, action: &str) -> Vec<String> {
        let service_available = ["/usr/sbin/service", "/sbin/service", "/usr/bin/service"]
            .iter()
            .any(|p| std::path::Path::new(p).exists());
        self.argv(action, service_available)
    }
}

/// LSB exit codes of `status` (0 running, 1–3 not running, 4 unknown), plus a pid if printed.
pub fn parse_status(code: Option<i32>, stdout: &str) -> ServiceState {
    match code {
        Some(0) => ServiceState::Running {
            pid: stdout
                .split(|c: char| !c.is_ascii_digit())
                .find(|w| !w.is_empty())
                .and_then(|w| w.parse().ok()),
        },
        Some(1..=3) => ServiceState::Stopped,
        other => ServiceState::Unknown(format!("status exit {other:?}: {}", stdout.trim())),
    }
}

impl ServiceManager for SysV {
    fn kind(&self) -> ManagerKind {
        ManagerKind::Sysv
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn stop(&self) -> Result<(), Error> {
        super::verb_stop(&self.cmd("stop"), self.timeout)
    }
    fn start(&self) -> Result<(), Error> {
        super::verb_start(&self.cmd("start"), self.timeout)
    }
    fn status(&self) -> Result<ServiceState, Error> {
        let out = super::query_status(&self.cmd("status"))?;
        Ok(parse_status(out.code, &out.stdout))
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
    fn command_lines() {
        let s = SysV::new(
            "gitlab-runner".into(),
            "/etc/init.d".into(),
            Duration::from_secs(5),
        );
        assert_eq!(s.argv("stop", true).join(" "), "service gitlab-runner stop");
        assert_eq!(
            s.argv("stop", false).join(" "),
            "/etc/init.d/gitlab-runner stop"
        );
        let t = SysV::new(
            "gitlab-runner".into(),
            "/tmp/root/etc/init.d".into(),
            Duration::from_secs(5),
        );
        assert_eq!(
            t.argv("start", true).join(" "),
            "/tmp/root/etc/init.d/gitlab-runner start"
        );
    }

    #[test]
    fn parses_lsb_status() {
        assert_eq!(
            parse_status(Some(0), "gitlab-runner is running (pid 4242)\n"),
            ServiceState::Running { pid: Some(4242) }
        );
        assert_eq!(
            parse_status(Some(3), "gitlab-runner is not running\n"),
            ServiceState::Stopped
        );
        assert!(matches!(
            parse_status(Some(4), ""),
            ServiceState::Unknown(_)
        ));
    }
}
