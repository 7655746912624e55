//! The one place that runs child processes (service-manager commands and hooks): a bounded wait,
//! stderr kept for the error, and an environment without secrets. Output goes to temp files, not
//! pipes: an init script that starts a daemon hands it our pipes, and reading a pipe the daemon
//! keeps open would hang until the daemon exits.
//!
//! A child gets a cleared environment plus an allowlist ([`scrub_environment`]): runner-medic's
//! own environment may hold the privileged token (`RUNNER_MEDIC_ADMIN_TOKEN`) or runner tokens
//! (gitlab-runner expands `$VAR` tokens from its environment, so hosts keep them there), under any
//! name. Hooks and init scripts are third-party code, and a daemon an init script starts keeps
//! its environment for life, readable in `/proc/PID/environ`; so nothing is passed on but what a
//! command needs to run.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::Error;
use crate::secret::is_secret_value;

/// Inherited variables passed on to every child: where programs are, language and time zone,
/// the home directory; and where a user's service manager listens (`systemctl --user`; none
/// carries a credential). Where a container engine listens goes to the engine's commands only
/// ([`CONTAINER_VARS`]): a gitlab-runner an init script starts must not inherit another engine
/// for its docker executor.
pub const PASSED_ON: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "HOME",
    "XDG_RUNTIME_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
];

/// Every `LC_*` variable is passed on too.
const PASSED_ON_PREFIX: &str = "LC_";

/// The variables runner-medic sets for hooks (docs/reference.md, "Hooks"); only these may be set
/// on a command besides [`PASSED_ON`].
pub const HOOK_VARS: &[&str] = &[
    "RUNNER_MEDIC_HOOK",
    "RUNNER_MEDIC_RUNNERS",
    "RUNNER_MEDIC_ACTIONS",
    "RUNNER_MEDIC_RUNNER",
    "RUNNER_MEDIC_ACTION",
    "RUNNER_MEDIC_RUNNER_ID",
    "RUNNER_MEDIC_RUNNER_CONFIG",
];

/// Variables a service backend sets on a supervisor's own command (OpenRC's `supervise-daemon
/// --signal` finds its service through `RC_SVCNAME`); like [`HOOK_VARS`], only when set on the
/// command, never inherited.
pub const SUPERVISOR_VARS: &[&str] = &["RC_SVCNAME"];

/// Variables of runner-medic's own environment that the docker/podman backend sets on the
/// engine's commands, and on no other child: where the engine listens (`DOCKER_HOST` and
/// friends, podman's `CONTAINER_HOST`) and where podman keeps its configuration and storage (an
/// operator who runs podman with its own `containers.conf` sets them for runner-medic too). Like
/// [`SUPERVISOR_VARS`], they pass only when set on the command.
pub const CONTAINER_VARS: &[&str] = &[
    "DOCKER_HOST",
    "DOCKER_CONTEXT",
    "DOCKER_CONFIG",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
    "CONTAINER_HOST",
    "CONTAINER_CONNECTION",
    "CONTAINERS_CONF",
    "CONTAINERS_STORAGE_CONF",
];

/// PATH for a child when runner-medic's own environment has none (init scripts need one).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn passed_on(key: &OsStr) -> bool {
    key.to_str()
        .is_some_and(|k| PASSED_ON.contains(&k) || k.starts_with(PASSED_ON_PREFIX))
}

/// A value that is not UTF-8 is no token GitLab issued; one that is may still be a secret (a
/// token this process holds, or any value shaped like a GitLab token) and is left out whatever
/// its name.
fn secret(value: &OsStr) -> bool {
    value.to_str().is_some_and(is_secret_value)
}

/// Give `cmd` a cleared environment plus the allowlist: the inherited [`PASSED_ON`] and `LC_*`
/// variables, the [`HOOK_VARS`] (and [`PASSED_ON`]) set on `cmd`, and nothing else, so no token
/// of any kind can pass; a value that is a secret is left out even under an allowed name. PATH is
/// [`DEFAULT_PATH`] when none passes. Returns the names left out, for the log.
pub fn scrub_environment(cmd: &mut Command) -> Vec<String> {
    let explicit: Vec<(OsString, OsString)> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_os_string(), v?.to_os_string())))
        .collect();
    cmd.env_clear();
    let mut removed = Vec::new();
    let mut kept = |key: &OsStr, value: &OsStr, allowed: bool, cmd: &mut Command| {
        if allowed && !secret(value) {
            cmd.env(key, value);
        } else {
            removed.push(key.to_string_lossy().into_owned());
        }
    };
    for (key, value) in std::env::vars_os() {
        kept(&key, &value, passed_on(&key), cmd);
    }
    for (key, value) in explicit {
        let hook_var = key.to_str().is_some_and(|k| {
            HOOK_VARS.contains(&k) || SUPERVISOR_VARS.contains(&k) || CONTAINER_VARS.contains(&k)
        });
        kept(&key, &value, hook_var || passed_on(&key), cmd);
    }
    if !cmd.get_envs().any(|(k, v)| k == "PATH" && v.is_some()) {
        cmd.env("PATH", DEFAULT_PATH);
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
        tracing::trace!(command = %shown, variables = ?removed, "variables left out of the child's environment");
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
