//! Service managers end to end: a real SysV init script driving `start-stop-daemon`, and a
//! `gitlab-runner`-compatible launcher, each supervising a stand-in gitlab-runner process while
//! `rotate` stops it, rewrites config.toml and starts it again.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{wait_polling_with, StandIn, TestEnv, BIN};

/// `ts=<ms>` of the first log line containing `needle` after `from_line`.
fn ts_of(log: &str, needle: &str, nth: usize) -> u128 {
    log.lines()
        .filter(|l| l.contains(needle))
        .nth(nth)
        .and_then(|l| l.strip_prefix("ts="))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no {needle:?} #{nth} in log:\n{log}"))
}

fn mtime_ms(path: &Path) -> u128 {
    std::fs::metadata(path)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

struct InitScript {
    root: PathBuf,
    script: PathBuf,
    pid_file: PathBuf,
    log: PathBuf,
}

impl InitScript {
    fn install(env: &TestEnv) -> Self {
        let root = env.dir.path().join("root");
        for d in ["etc/init.d", "run", "var/log"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let script = root.join("etc/init.d/gitlab-runner");
        let pid_file = root.join("run/gitlab-runner.pid");
        let log = root.join("var/log/gitlab-runner.log");
        let text = format!(
            r#"#!/bin/sh
### BEGIN INIT INFO
# Provides:          gitlab-runner
# Required-Start:    $network
# Required-Stop:     $network
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: stand-in gitlab-runner (runner-medic tests)
### END INIT INFO
DAEMON="{bin}"
PIDFILE="{pid}"
LOG="{log}"
CONFIG="{config}"
case "$1" in
  start)
    start-stop-daemon --start --quiet --background --make-pidfile --pidfile "$PIDFILE" \
      --startas /bin/sh -- -c "exec \"$DAEMON\" demo --stand-in-runner --config \"$CONFIG\" --interval-ms 100 >>\"$LOG\" 2>&1"
    ;;
  stop)
    # SIGQUIT first: gitlab-runner drains running jobs on it.
    start-stop-daemon --stop --quiet --pidfile "$PIDFILE" --retry QUIT/10/KILL/5 --remove-pidfile
    rc=$?
    [ $rc -eq 1 ] && rc=0
    exit $rc
    ;;
  status)
    start-stop-daemon --status --pidfile "$PIDFILE"
    rc=$?
    [ $rc -eq 0 ] && echo "gitlab-runner is running (pid $(cat "$PIDFILE"))"
    exit $rc
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
"#,
            bin = BIN,
            pid = pid_file.display(),
            log = log.display(),
            config = env.config.display()
        );
        std::fs::write(&script, text).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            root,
            script,
            pid_file,
            log,
        }
    }

    fn ctl(&self, action: &str) -> bool {
        Command::new(&self.script)
            .arg(action)
            .status()
            .unwrap()
            .success()
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for InitScript {
    fn drop(&mut self) {
        let _ = Command::new(&self.script).arg("stop").status();
    }
}

fn require_start_stop_daemon() {
    let found = [
        "/usr/sbin/start-stop-daemon",
        "/sbin/start-stop-daemon",
        "/usr/bin/start-stop-daemon",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    assert!(
        found,
        "start-stop-daemon is missing: install Debian's dpkg (.ci/run does)"
    );
}

#[test]
fn sysv_init_script_stop_write_start_with_pids_and_log() {
    require_start_stop_daemon();
    let mut env = TestEnv::new();
    let old = env.expired("build");
    env.write_config(std::slice::from_ref(&old));
    let init = InitScript::install(&env);
    env.extra_settings = format!(
        "\n[service]\nmanager = \"auto\"\ninit_dir = \"{}\"\nstop_timeout = \"15s\"\n",
        init.root.join("etc/init.d").display()
    );
    assert!(init.ctl("start"));
    // Wait for the first process to be up and polling (it gets 403s: the token is dead).
    for _ in 0..100 {
        if init.pid().is_some_and(alive)
            && std::fs::read_to_string(&init.log)
                .unwrap_or_default()
                .contains("poll name=build")
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let first = init.pid().expect("started");
    let run = env.run(&[
        "rotate",
        "--restart",
        "always",
        "--service-manager",
        "sysv",
        "--output",
        "json",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let service = &run.json()["service"];
    assert_eq!(service["manager"], "sysv");
    assert_eq!(service["stopped"], true);
    assert_eq!(service["started"], true);

    let second = init.pid().expect("running again");
    assert_ne!(first, second, "a new process");
    assert!(!alive(first), "the old process is gone");
    assert!(alive(second));
    // Order of events: the old process stopped, then config.toml was written, then the new
    // process started.
    let log = std::fs::read_to_string(&init.log).unwrap();
    let stopped = ts_of(&log, "SIGQUIT: stopping gracefully", 0);
    let written = mtime_ms(&env.config);
    let restarted = ts_of(&log, "started pid=", 1);
    assert!(
        stopped <= written,
        "stopped at {stopped}, written at {written}"
    );
    assert!(
        written <= restarted,
        "written at {written}, restarted at {restarted}"
    );
    // The old process only ever polled with the old token; the new one polls with the new token.
    let new = env.config_token("build");
    assert!(wait_polling_with(&env, &new));
    let s = env.sim.state();
    let old_polls_after_write = s.log.iter().filter(|e| {
        e.route == "/api/v4/jobs/request"
            && e.credential.as_deref() == Some(old.token.as_str())
            && e.at.timestamp_millis() as u128 > written + 1000
    });
    assert_eq!(
        old_polls_after_write.count(),
        0,
        "nobody polls with the old token after the rewrite"
    );
    assert!(
        s.runners[&old.id.unwrap()].contacted_at.is_some(),
        "the runner is contacting GitLab again"
    );
}

#[test]
fn sysv_manager_from_the_settings_file() {
    let mut env = TestEnv::new();
    env.write_config(&[env.expired("x")]);
    let init = InitScript::install(&env);
    env.extra_settings = format!(
        "\n[service]\nmanager = \"sysv\"\ninit_dir = \"{}\"\n",
        init.root.join("etc/init.d").display()
    );
    assert!(init.ctl("start"));
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["service"]["manager"], "sysv");
}

#[test]
fn gitlab_runner_cli_manager_restarts_the_stand_in() {
    let mut env = TestEnv::new();
    let old = env.expired("build");
    env.write_config(&[old]);
    let runner = StandIn::install(&env);
    env.extra_settings = format!(
        "\n[service]\nmanager = \"none\"\ngitlab_runner_bin = \"{}\"\n",
        runner.launcher.display()
    );
    assert!(runner.ctl("start"));
    let first = runner.pid().unwrap();
    let run = env.run(&[
        "rotate",
        "--restart",
        "always",
        "--service-manager",
        "gitlab-runner",
        "--output",
        "json",
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["service"]["manager"], "gitlab-runner");
    let second = runner.pid().unwrap();
    assert_ne!(first, second);
    let log = runner.log();
    let stopped = ts_of(&log, "SIGQUIT", 0);
    let written = mtime_ms(&env.config);
    let restarted = ts_of(&log, "started pid=", 1);
    assert!(
        stopped <= written && written <= restarted,
        "{stopped} {written} {restarted}"
    );
    assert!(wait_polling_with(&env, &env.config_token("build")));
}

#[test]
fn failed_start_keeps_the_new_tokens_and_reports_it() {
    let mut env = TestEnv::new();
    let build = env.expired("build");
    env.write_config(std::slice::from_ref(&build));
    // A launcher whose start always fails.
    let launcher = env.path("broken-runner");
    std::fs::write(&launcher, "#!/bin/sh\ncase \"$1\" in\n  status) exit 1 ;;\n  stop) exit 0 ;;\n  start) echo 'cannot start: config error' >&2; exit 1 ;;\nesac\n").unwrap();
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.extra_settings = format!("\n[service]\nmanager = \"gitlab-runner\"\ngitlab_runner_bin = \"{}\"\nstop_timeout = \"2s\"\n", launcher.display());
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 1);
    let service = &run.json()["service"];
    let error = service["error"].as_str().unwrap();
    assert!(error.contains("cannot start: config error"), "{service}");
    // GitLab already revoked the old token: restoring the backup would only bring it back dead.
    assert!(
        error.contains("new tokens stay in config.toml"),
        "{service}"
    );
    let now = env.config_token("build");
    assert_ne!(now, build.token);
    assert!(env.token_works(&now));
}
