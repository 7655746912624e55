//! Every service backend against its real supervisor: OpenRC's `rc-service` with
//! `supervise-daemon`, systemd as PID 1 of a `systemd-nspawn` container, podman and a private
//! dockerd. Each supervisor is started confined (a private mount namespace, its own cgroups, no
//! network of its own), runs a stand-in gitlab-runner installed the way gitlab-runner installs
//! itself, and is torn down afterwards; [`HostCheck`] proves that no process of the host changed
//! cgroup, no sysctl changed, and no mount or cgroup directory was left behind.
//!
//! The tests need root and the supervisors' packages; a missing one fails the test with the
//! package to install (`.ci/test` installs them all).

mod container;
mod docker;
mod host;
mod openrc;
mod podman;
mod systemd;

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::harness::{wait_polling_with, Entry, Run, TestEnv, BIN};

/// One supervisor at a time: each test checks the whole host before and after.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Fail (never skip) when not root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the supervisor tests start real supervisors and need root (run .ci/test as root)"
    );
}

/// Fail (never skip) when `tool` is not installed, naming the Debian package that has it.
pub fn require(tool: &str, package: &str) {
    let found = ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
        .iter()
        .any(|d| Path::new(d).join(tool).exists());
    assert!(
        found,
        "`{tool}` is missing: install Debian's `{package}` (apt-get install {package}; .ci/test does)"
    );
}

/// Run `argv` and return its output; panics with the output when `ok` and it fails.
pub fn sh(argv: &[&str], ok: bool) -> std::process::Output {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    if ok {
        assert!(
            out.status.success(),
            "{argv:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// `cmd` (a runner-medic command line from [`TestEnv::command`]) run inside namespaces through
/// `prefix` (e.g. `nsenter -t PID -m --`), with the same arguments and environment.
pub fn wrapped(cmd: Command, prefix: &[&str]) -> Command {
    let mut out = Command::new(prefix[0]);
    out.args(&prefix[1..])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => out.env(k, v),
            None => out.env_remove(k),
        };
    }
    out
}

/// A stand-in gitlab-runner installed under a real supervisor.
pub trait Supervised {
    /// The manager `auto` must pick.
    fn kind(&self) -> &'static str;
    /// runner-medic, run where it runs on such a host.
    fn medic(&self, env: &TestEnv, args: &[&str]) -> Run;
    /// The supervisor's own command, as an operator would run it (`start`, `stop`, `restart`).
    fn ctl(&self, action: &str);
    /// What the stand-in has logged so far.
    fn log(&self) -> String;
    /// The next start of the stand-in runs a job of `ms` (or none).
    fn job_at_next_start(&self, ms: Option<u64>);
    /// Make the next start fail (the executable is gone), or repair it.
    fn break_start(&self, broken: bool);
    /// What the supervisor says about a failed start (one of them must be in the report).
    fn failed_start_words(&self) -> &'static [&'static str];
    /// Whether `auto` detects this supervisor (containers are named in the settings).
    fn auto_detected(&self) -> bool {
        true
    }
}

/// `settings.toml`'s `[service]` for these tests: detection left to runner-medic.
pub fn service_settings(name: &str) -> String {
    format!("\n[service]\nmanager = \"auto\"\nname = \"{name}\"\nstop_timeout = \"20s\"\nreload_timeout = \"10s\"\n")
}

/// Wait (bounded) until the log, from byte `from`, has a line containing `needle`.
pub fn wait_log(sup: &dyn Supervised, from: usize, needle: &str) -> bool {
    for _ in 0..300 {
        if sup.log().get(from..).is_some_and(|l| l.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The log from byte `from` on.
fn since(sup: &dyn Supervised, from: usize) -> String {
    sup.log().get(from..).unwrap_or_default().to_string()
}

/// Position of the first line containing `needle` in `log`.
fn at(log: &str, needle: &str) -> usize {
    log.find(needle)
        .unwrap_or_else(|| panic!("no {needle:?} in:\n{log}"))
}

/// What each step of [`scenario`] showed, for docs/reliability.md.
#[derive(Debug, Default)]
pub struct Passed {
    pub detect: bool,
    pub reload: bool,
    pub graceful_stop: bool,
    pub start: bool,
    pub failed_start: bool,
    pub rotate: bool,
}

/// The scenario every backend goes through, with the stand-in running `runner` (its token in
/// config.toml revoked, so each `rotate` has work to do):
/// 1. `rotate` (default `restart = reload`, manager `auto`): detected, SIGHUP delivered through
///    the supervisor and seen by the stand-in while its job runs on, new token in use, never stopped;
/// 2. `rotate --restart always` while a job runs: the stop waits for the job (SIGQUIT, `job
///    finished`, never `job aborted`), the status shows it stopped, the start brings up a new
///    process that polls with the new token;
/// 3. a start that fails: the report has the supervisor's own words, the new token stays in
///    config.toml; once repaired, the next `rotate` starts the service and the token is used.
pub fn scenario(sup: &dyn Supervised, env: &TestEnv, runner: &Entry) -> Passed {
    let mut passed = Passed::default();
    let id = runner.id.unwrap();
    let name = runner.name.as_str();
    // The stand-in the supervisor started is up (it polls, with its dead token).
    assert!(wait_log(sup, 0, "poll name="), "{}", sup.log());
    // 1. Reload.
    let mark = sup.log().len();
    sup.job_at_next_start(Some(6000));
    sup.ctl("restart");
    assert!(wait_log(sup, mark, "job started"), "{}", sup.log());
    sup.job_at_next_start(None);
    let mark = sup.log().len();
    let run = sup.medic(env, &["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let service = &run.json()["service"];
    assert_eq!(service["manager"], sup.kind(), "{service}");
    passed.detect = sup.auto_detected();
    assert_eq!(service["reloaded"], true, "{service}");
    assert_eq!(service["stopped"], false, "{service}");
    assert!(
        service["reason"]
            .as_str()
            .unwrap()
            .contains("SIGHUP sent through the supervisor"),
        "{service}"
    );
    let log = since(sup, mark);
    assert!(log.contains("SIGHUP: reloading"), "{log}");
    for never in ["SIGQUIT", "SIGTERM", "job aborted", "started pid="] {
        assert!(
            !log.contains(never),
            "{never} after a reload:\n{log}\nwhole log:\n{}",
            sup.log()
        );
    }
    let token = env.config_token(name);
    assert_ne!(token, runner.token);
    assert!(
        wait_polling_with(env, &token),
        "the stand-in uses the new token"
    );
    passed.reload = true;
    passed.rotate = true;

    // 2. Stop (graceful, waits for the job) and start.
    env.sim.state().reset_token(id);
    let mark = sup.log().len();
    sup.job_at_next_start(Some(2500));
    sup.ctl("restart");
    assert!(wait_log(sup, mark, "job started"), "{}", sup.log());
    sup.job_at_next_start(None);
    let mark = sup.log().len();
    let run = sup.medic(env, &["rotate", "--restart", "always", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let service = &run.json()["service"];
    assert_eq!(service["stopped"], true, "{service}");
    assert_eq!(service["started"], true, "{service}");
    let log = since(sup, mark);
    let quit = at(&log, "SIGQUIT: stopping gracefully");
    let waited = at(&log, "waiting for the running job");
    let finished = at(&log, "job finished");
    let restarted = at(&log, "started pid=");
    assert!(
        quit < waited && waited < finished && finished < restarted,
        "{log}"
    );
    assert!(!log.contains("job aborted"), "{log}");
    passed.graceful_stop = true;
    let token = env.config_token(name);
    assert!(
        wait_polling_with(env, &token),
        "the new process uses the new token"
    );
    passed.start = true;

    // 3. A start that fails, then the next run starts it.
    env.sim.state().reset_token(id);
    sup.break_start(true);
    let run = sup.medic(env, &["rotate", "--restart", "always", "--output", "json"]);
    sup.break_start(false);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let service = &run.json()["service"];
    assert_eq!(service["started"], false, "{service}");
    let error = service["error"].as_str().unwrap_or_default();
    assert!(
        sup.failed_start_words().iter().any(|w| error.contains(w)),
        "the supervisor's own words {:?} are not in: {error}",
        sup.failed_start_words()
    );
    println!("{}: a failed start is reported as: {error}", sup.kind());
    let token = env.config_token(name);
    assert!(
        env.token_works(&token),
        "the new token stays in config.toml"
    );
    let mark = sup.log().len();
    let run = sup.medic(env, &["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["service"]["started"], true, "{}", run.stdout);
    assert!(wait_log(sup, mark, "started pid="), "{}", sup.log());
    assert!(
        wait_polling_with(env, &token),
        "started again, with the new token"
    );
    passed.failed_start = true;
    println!("supervisor {}: {passed:?}", sup.kind());
    passed
}

/// Leave a job of `ms` for the next stand-in process that starts (or none).
pub fn job_file(path: &Path, ms: Option<u64>) {
    match ms {
        Some(ms) => std::fs::write(path, ms.to_string()).unwrap(),
        None => {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The stand-in's command line: this binary's `demo --stand-in-runner`.
pub fn stand_in_argv(config: &Path) -> String {
    format!(
        "{BIN} demo --stand-in-runner --config {} --interval-ms 100",
        config.display()
    )
}
