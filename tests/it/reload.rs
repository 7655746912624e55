//! Restarts that interrupt no job: with the default `restart = reload`, a rotation writes
//! config.toml and lets gitlab-runner re-read it (as it does every 3 s, and on SIGHUP), confirms
//! through GitLab that the runner uses its new token, and never stops the service. The stand-in
//! gitlab-runner re-reads its config like the real one and runs a job across the rotation.

use std::process::Command;
use std::time::Duration;

use crate::harness::{wait_polling_with, StandIn, TestEnv};

/// Wait (bounded) until the stand-in's log has a line containing `needle`.
fn wait_for_log(standin: &StandIn, needle: &str) -> bool {
    for _ in 0..200 {
        if standin.log().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn start_with_a_job(standin: &StandIn, job_ms: u64) {
    assert!(Command::new(&standin.launcher)
        .arg("start")
        .env("STAND_IN_JOB_MS", job_ms.to_string())
        .status()
        .unwrap()
        .success());
    assert!(wait_for_log(standin, "job started"));
}

#[test]
fn a_rotation_reloads_without_stopping_the_service_or_its_job() {
    let mut env = TestEnv::new();
    let standin = StandIn::install(&env);
    // No `restart` key: the default.
    env.extra_settings = standin.settings();
    let build = env.revoked("build");
    let docker = env.expired("docker");
    env.write_config(&[build.clone(), docker.clone()]);
    start_with_a_job(&standin, 6000);
    let pid = standin.pid().expect("the stand-in runs");

    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let service = &run.json()["service"];
    assert_eq!(service["stopped"], false, "{service}");
    assert_eq!(service["started"], false, "{service}");
    assert_eq!(service["reloaded"], true, "{service}");

    // Never stopped: the same process, no stop signal, the job not aborted.
    assert_eq!(standin.pid(), Some(pid));
    let log = standin.log();
    for never in ["SIGQUIT", "SIGTERM", "job aborted"] {
        assert!(!log.contains(never), "{never} in:\n{log}");
    }
    // The new tokens are in use, and the job runs to its end.
    for name in ["build", "docker"] {
        let token = env.config_token(name);
        assert!(
            wait_polling_with(&env, &token),
            "{name} polls with its new token"
        );
    }
    assert!(wait_for_log(&standin, "job finished"), "{}", standin.log());
    assert!(!standin.log().contains("job aborted"));
}

#[test]
fn a_runner_that_does_not_pick_up_its_token_is_restarted_gracefully() {
    use std::os::unix::fs::PermissionsExt;
    let mut env = TestEnv::new();
    let standin = StandIn::install(&env);
    // The stand-in is frozen (SIGSTOP) so it makes no contact with its new token; the service
    // command thaws it when asked to stop, so the graceful stop can proceed.
    let wrapper = env.path("frozen-runner");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n[ \"$1\" = stop ] && kill -CONT \"$(cat {pid})\" 2>/dev/null\nexec {launcher} \"$@\"\n",
            pid = standin.pid_file.display(),
            launcher = standin.launcher.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.extra_settings = format!(
        "{}reload_timeout = \"2s\"\n",
        standin.settings().replace(
            &standin.launcher.display().to_string(),
            &wrapper.display().to_string()
        )
    );
    let build = env.revoked("build");
    env.write_config(std::slice::from_ref(&build));
    assert!(standin.ctl("start"));
    let pid = standin.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let run = env.run(&["rotate", "--output", "json"]);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGCONT,
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let service = &run.json()["service"];
    assert_eq!(service["reloaded"], false, "{service}");
    assert_eq!(service["stopped"], true, "{service}");
    assert_eq!(service["started"], true, "{service}");
    assert_ne!(standin.pid(), Some(pid), "restarted");
    // The stop was graceful (SIGQUIT), never SIGTERM.
    assert!(!standin.log().contains("SIGTERM"), "{}", standin.log());
    assert!(wait_polling_with(&env, &env.config_token("build")));
}

#[test]
fn restart_always_stops_gracefully_and_waits_for_the_job() {
    let mut env = TestEnv::new();
    let standin = StandIn::install(&env);
    env.extra_settings = standin
        .settings()
        .replace("[service]\n", "[service]\nrestart = \"always\"\n");
    let build = env.revoked("build");
    env.write_config(std::slice::from_ref(&build));
    start_with_a_job(&standin, 2000);
    let pid = standin.pid().unwrap();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let service = &run.json()["service"];
    assert_eq!(service["stopped"], true, "{service}");
    assert_eq!(service["reloaded"], serde_json::Value::Null);
    assert_ne!(standin.pid(), Some(pid), "a new process");
    let log = standin.log();
    assert!(
        log.contains("waiting for the running job") && log.contains("job finished"),
        "{log}"
    );
    assert!(!log.contains("job aborted"), "{log}");
    assert!(wait_polling_with(&env, &env.config_token("build")));
}
