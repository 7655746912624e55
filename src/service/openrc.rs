//! OpenRC: `rc-service NAME stop|start|status`, and signals through the service's own
//! supervisor.
//!
//! The init script gitlab-runner's service library writes for OpenRC runs it under
//! `supervise-daemon`, with no `reload` and no stop signal of its own: `rc-service stop` sends
//! SIGTERM, which aborts running jobs, and SIGQUIT to the process makes `supervise-daemon` start
//! it again at once (seen against the real OpenRC 0.45, tests/it/supervisors). So:
//! - reload: `supervise-daemon NAME --signal HUP` (or SIGHUP to the pid in the script's pid file);
//! - stop: SIGQUIT the same way, wait up to the stop timeout for that process to finish its jobs
//!   and exit, then `rc-service stop` (it stops the supervisor, and the process it has just
//!   started again, which has no job yet). Jobs that do not finish in time are never aborted,
//!   unless `hard_stop`.
//!
//! Which process runs is read from OpenRC's own record of the service,
//! `/run/openrc/options/NAME/` (`child_pid` for `supervise-daemon`, `pidfile` otherwise), the
//! one `rc-service status` reads.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::command::{argv, run_ok, run_with_env};
use super::{Error, ManagerKind, ServiceManager, ServiceState};

pub struct OpenRc {
    name: String,
    timeout: Duration,
    hard_stop: bool,
    state_dir: PathBuf,
}

/// How OpenRC runs the service's process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Process {
    /// Under `supervise-daemon`, with this pid.
    Supervised(u32),
    /// Started in the background with a pid file (`start-stop-daemon`), holding this pid.
    PidFile(u32),
    /// Not known (stopped, or a script that keeps no pid).
    Unknown,
}

impl OpenRc {
    pub fn new(name: String, timeout: Duration) -> Self {
        Self {
            name,
            timeout,
            hard_stop: false,
            state_dir: PathBuf::from("/run/openrc/options"),
        }
    }

    /// Stop hard after `timeout` when jobs have not finished (`[service] hard_stop`).
    #[must_use]
    pub fn with_hard_stop(mut self, hard_stop: bool) -> Self {
        self.hard_stop = hard_stop;
        self
    }

    pub fn argv(&self, action: &str) -> Vec<String> {
        argv(&["rc-service", &self.name, action])
    }

    /// The service's process, from OpenRC's record of it.
    pub fn process(&self) -> Process {
        process_in(&self.state_dir.join(&self.name))
    }

    /// Send `signal` (`HUP`, `QUIT`) to the service's process. `Ok(false)`: no process known.
    fn signal(&self, process: &Process, signal: &str) -> Result<bool, Error> {
        match process {
            Process::Supervised(_) => {
                // supervise-daemon finds its service through RC_SVCNAME, as in an init script.
                let argv = argv(&["supervise-daemon", &self.name, "--signal", signal]);
                let env = [("RC_SVCNAME".to_string(), self.name.clone())];
                let out = run_with_env(&argv, &env, Duration::from_secs(10))?;
                if out.success() {
                    Ok(true)
                } else {
                    Err(Error::Failed {
                        argv: argv.join(" "),
                        code: out.code,
                        stderr: format!("{}{}", out.stdout, out.stderr).trim().to_string(),
                    })
                }
            }
            Process::PidFile(pid) => {
                let argv = argv(&["kill", &format!("-{signal}"), &pid.to_string()]);
                run_ok(&argv, Duration::from_secs(10)).map(|_| true)
            }
            Process::Unknown => Ok(false),
        }
    }

    /// Wait up to the stop timeout for `pid` to exit.
    fn drained(&self, pid: u32) -> bool {
        let started = Instant::now();
        while alive(pid) {
            if started.elapsed() >= self.timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// Read OpenRC's record of one service (`/run/openrc/options/NAME`). A pid whose process
/// started after the file naming it was written is not that service's: the service died and its
/// pid went to another program (a stale pid file after a crash). Such a record is ignored, so
/// runner-medic, running as root, never signals an unrelated process.
pub fn process_in(dir: &Path) -> Process {
    let read = |f: &Path| {
        std::fs::read_to_string(f)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let recorded = |file: &Path| {
        let pid: u32 = read(file)?.parse().ok()?;
        let written = std::fs::metadata(file).and_then(|m| m.modified()).ok()?;
        match started_at(pid) {
            Some(started) if started > written + STALE_SLACK => {
                tracing::warn!(pid, file = %file.display(), "ignoring a stale pid: its process started after the file was written");
                None
            }
            _ => Some(pid),
        }
    };
    let child_pid = dir.join("child_pid");
    if let Some(pid) = recorded(&child_pid) {
        return Process::Supervised(pid);
    }
    if let Some(pid) = read(&dir.join("pidfile"))
        .filter(|f| !f.is_empty())
        .and_then(|f| recorded(Path::new(&f)))
    {
        return Process::PidFile(pid);
    }
    Process::Unknown
}

/// How much later than its pid file a process may have started and still be the one that wrote
/// it (start-stop-daemon writes the file just after the fork).
const STALE_SLACK: Duration = Duration::from_secs(2);

/// When `pid` started, from `/proc/PID/stat` (field 22, clock ticks since boot) and the boot time
/// in `/proc/stat`; `None` when the process does not exist or cannot be read.
fn started_at(pid: u32) -> Option<std::time::SystemTime> {
    // USER_HZ: the unit of /proc's times, 100 on every Linux architecture (proc(5)).
    const TICKS_PER_SECOND: u64 = 100;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let boot: u64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    Some(
        std::time::UNIX_EPOCH
            + Duration::from_secs(boot)
            + Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND),
    )
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
    /// SIGQUIT to the process, a wait for its jobs, then `rc-service stop` (see the module).
    fn stop(&self) -> Result<(), Error> {
        let process = self.process();
        let pid = match process {
            Process::Supervised(pid) | Process::PidFile(pid) => pid,
            Process::Unknown => return super::verb_stop(&self.argv("stop"), self.timeout),
        };
        // A failed signal (the process just exited) is no reason not to stop.
        if let Err(e) = self.signal(&process, "QUIT") {
            tracing::warn!(service = %self.name, error = %e, "could not send SIGQUIT");
        }
        if !self.drained(pid) {
            if !self.hard_stop {
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
            tracing::warn!(service = %self.name, "jobs did not drain in time, stopping hard (hard_stop = true)");
        }
        match super::verb_stop(&self.argv("stop"), self.timeout) {
            // A pid-file script's own stop may fail on a process that has already gone.
            Err(e) if matches!(process, Process::PidFile(_)) => match self.status() {
                Ok(ServiceState::Stopped) => Ok(()),
                _ => Err(e),
            },
            other => other,
        }
    }
    fn start(&self) -> Result<(), Error> {
        super::verb_start(&self.argv("start"), self.timeout)
    }
    fn status(&self) -> Result<ServiceState, Error> {
        let out = super::query_status(&self.argv("status"))?;
        Ok(
            match parse_status(&format!("{}{}", out.stdout, out.stderr)) {
                ServiceState::Running { .. } => ServiceState::Running {
                    pid: match self.process() {
                        Process::Supervised(pid) | Process::PidFile(pid) => Some(pid),
                        Process::Unknown => None,
                    },
                },
                other => other,
            },
        )
    }
    /// SIGHUP through `supervise-daemon` (or to the pid file's process): the init script has no
    /// `reload`. No process known, no signal, and gitlab-runner's own re-read of the file is
    /// relied on.
    fn reload(&self) -> Result<bool, Error> {
        self.signal(&self.process(), "HUP")
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

    #[test]
    fn reads_openrc_record_of_the_process() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(process_in(dir.path()), Process::Unknown);
        let pid_file = dir.path().join("daemon.pid");
        std::fs::write(&pid_file, "4321\n").unwrap();
        std::fs::write(dir.path().join("pidfile"), pid_file.to_str().unwrap()).unwrap();
        assert_eq!(process_in(dir.path()), Process::PidFile(4321));
        std::fs::write(dir.path().join("child_pid"), "1234\n").unwrap();
        assert_eq!(process_in(dir.path()), Process::Supervised(1234));
    }

    /// A pid file older than the process now holding its pid is stale: never signalled.
    #[test]
    fn a_pid_that_went_to_another_process_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid_file = dir.path().join("daemon.pid");
        std::fs::write(&pid_file, format!("{}\n", other.id())).unwrap();
        std::fs::write(dir.path().join("pidfile"), pid_file.to_str().unwrap()).unwrap();
        // Written now, after the process started: it is that process's.
        assert_eq!(process_in(dir.path()), Process::PidFile(other.id()));
        // Written an hour before the process started: the pid was reused.
        let touched = std::process::Command::new("touch")
            .args(["-d", "1 hour ago"])
            .arg(&pid_file)
            .status()
            .unwrap();
        assert!(touched.success());
        assert_eq!(process_in(dir.path()), Process::Unknown);
        let _ = other.kill();
        let _ = other.wait();
    }
}
