//! The one place that runs service-manager commands: a bounded wait, and stderr kept for the
//! error. Output goes to temp files, not pipes: an init script that starts a daemon hands it our
//! pipes, and reading a pipe the daemon keeps open would hang until the daemon exits.

use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Error;

#[derive(Debug, Clone)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Run `argv`, waiting at most `timeout`. A non-zero exit is not an error here; callers decide.
pub fn run(argv: &[String], timeout: Duration) -> Result<Output, Error> {
    let (program, args) = argv.split_first().ok_or_else(|| Error::Spawn {
        argv: String::new(),
        reason: "empty command".into(),
    })?;
    let shown = argv.join(" ");
    let mut out = tempfile::tempfile().map_err(|e| Error::Spawn {
        argv: shown.clone(),
        reason: e.to_string(),
    })?;
    let mut err = tempfile::tempfile().map_err(|e| Error::Spawn {
        argv: shown.clone(),
        reason: e.to_string(),
    })?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| Error::Spawn {
            argv: shown.clone(),
            reason: e.to_string(),
        })?)
        .stderr(err.try_clone().map_err(|e| Error::Spawn {
            argv: shown.clone(),
            reason: e.to_string(),
        })?)
        .spawn()
        .map_err(|e| Error::Spawn {
            argv: shown.clone(),
            reason: e.to_string(),
        })?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Timeout {
                    argv: shown,
                    secs: timeout.as_secs(),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                return Err(Error::Spawn {
                    argv: shown,
                    reason: e.to_string(),
                })
            }
        }
    };
    let read = |f: &mut std::fs::File| {
        let mut s = String::new();
        let _ = f.rewind();
        let _ = f.read_to_string(&mut s);
        s
    };
    Ok(Output {
        code: status.code(),
        stdout: read(&mut out),
        stderr: read(&mut err),
    })
}

/// Run and require exit 0; otherwise an error with the argv, exit code and stderr.
pub fn run_ok(argv: &[String], timeout: Duration) -> Result<Output, Error> {
    let output = run(argv, timeout)?;
    if output.success() {
        Ok(output)
    } else {
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
}

pub fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_string()).collect()
}
