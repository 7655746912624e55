//! The one place that runs child processes (service-manager commands and hooks): a bounded wait,
//! stderr kept for the error, and an environment without secrets. Output goes to temp files, not
//! pipes: an init script that starts a daemon hands it our pipes, and reading a pipe the daemon
//! keeps open would hang until the daemon exits.
//!
//! A child inherits runner-medic's environment, which may hold the privileged token
//! (`RUNNER_MEDIC_ADMIN_TOKEN`) or runner tokens (gitlab-runner expands `$VAR` tokens from its
//! environment, so hosts keep them there). Hooks and init scripts are third-party code, and a
//! daemon an init script starts keeps its environment for life, readable in
//! `/proc/PID/environ`. So every child gets the environment minus those variables: see
//! [`scrub_environment`].

use std::ffi::OsStr;
use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Error;
use crate::secret::is_secret_value;

/// The variable runner-medic reads the privileged token from; never passed on, whatever it holds.
const ADMIN_TOKEN_VAR: &str = "RUNNER_MEDIC_ADMIN_TOKEN";

/// Remove from `cmd`'s environment `RUNNER_MEDIC_ADMIN_TOKEN` and every variable whose value is a
/// secret (a token this process holds, or any value shaped like a GitLab token), whether it was
/// inherited or set on `cmd`. Returns the names removed, for the log.
pub fn scrub_environment(cmd: &mut Command) -> Vec<String> {
    let inherited = std::env::vars_os();
    let explicit: Vec<_> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_os_string(), v?.to_os_string())))
        .collect();
    let mut removed = Vec::new();
    for (key, value) in inherited.chain(explicit) {
        // A value that is not UTF-8 is no token GitLab issued.
        if key == OsStr::new(ADMIN_TOKEN_VAR) || value.to_str().is_some_and(is_secret_value) {
            removed.push(key.to_string_lossy().into_owned());
            cmd.env_remove(&key);
        }
    }
    removed.sort();
    removed.dedup();
    removed
}

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
    run_with_env(argv, &[], timeout)
}

/// [`run`] with extra environment variables (which are scrubbed like the inherited ones).
pub fn run_with_env(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<Output, Error> {
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
    let mut cmd = Command::new(program);
    cmd.args(args).envs(env.iter().map(|(k, v)| (k, v)));
    let removed = scrub_environment(&mut cmd);
    if !removed.is_empty() {
        tracing::debug!(command = %shown, variables = ?removed, "secrets left out of the child's environment");
    }
    let mut child = cmd
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
