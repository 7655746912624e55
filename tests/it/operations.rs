//! Operating runner-medic as a daemon: metrics that never hide a broken runner, the per-runner
//! `status`, the offline `list`, journald priorities, the agent's `/metrics` server, the lock
//! message and the packaged units. Each test drives the real binary against the simulator.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::TestEnv;

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn is_rfc3339_seconds_z(v: &serde_json::Value) -> bool {
    let Some(s) = v.as_str() else { return false };
    s.len() == 20
        && s.ends_with('Z')
        && chrono::DateTime::parse_from_rfc3339(s).is_ok()
        && s.as_bytes()[10] == b'T'
}

fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn every_runner_has_a_status_consistent_with_the_exit_status_and_timestamps_are_rfc3339() {
    let mut env = TestEnv::new();
    env.admin_token = env.sim.state().add_pat(
        &["api"],
        true,
        Some(chrono::Utc::now().date_naive() + chrono::Duration::days(200)),
    );
    env.sim.state().settings.runner_token_expiration_interval = Some(90 * 86400);
    let fine = env.healthy("fine");
    let soon = env.expiring("soon", 2);
    let old = env.expired("old");
    let gone = env.deleted("gone");
    env.write_config(&[fine, soon, old, gone]);

    let run = env.run(&["diagnose", "--output", "json", "--renew-before", "1d"]);
    let json = run.json();
    let status = |run: &crate::harness::Run, name: &str| run.runner(name)["status"].clone();
    assert_eq!(status(&run, "fine"), "healthy", "{}", run.stdout);
    assert_eq!(status(&run, "old"), "broken");
    assert_eq!(status(&run, "gone"), "broken");
    assert_eq!(run.code, 1);
    assert!(
        is_rfc3339_seconds_z(&json["server_time"]),
        "{}",
        json["server_time"]
    );
    assert!(
        is_rfc3339_seconds_z(&json["admin_token_expires_at"]),
        "{}",
        json["admin_token_expires_at"]
    );
    assert!(json["admin_token_expires_at"]
        .as_str()
        .unwrap()
        .ends_with("T00:00:00Z"));
    for r in json["runners"].as_array().unwrap() {
        let at = &r["token_expires_at"];
        assert!(at.is_null() || is_rfc3339_seconds_z(at), "{at}");
    }
    assert!(is_rfc3339_seconds_z(
        &run.runner("soon")["token_expires_at"]
    ));

    let plan = env.run(&["rotate", "--dry-run", "--output", "json"]);
    assert_eq!(status(&plan, "old"), "planned", "{}", plan.stdout);
    assert_eq!(status(&plan, "gone"), "needs_person");
    assert_eq!(plan.code, 1, "a runner needs a person: exit 1");

    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(status(&run, "old"), "fixed", "{}", run.stdout);
    assert_eq!(status(&run, "fine"), "healthy");
    assert_eq!(status(&run, "gone"), "needs_person");
    assert_eq!(run.code, 1);
    let broken = run.json()["runners"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["status"] == "broken" || r["status"] == "needs_person");
    assert_eq!(broken, run.code == 1);
}

#[test]
fn the_lock_message_appears_only_when_a_lock_is_held() {
    let env = TestEnv::new();
    env.write_config(&[env.healthy("fine")]);
    let run = env.run(&["rotate", "--wait"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        !run.stderr.contains("waiting for another runner-medic run"),
        "{}",
        run.stderr
    );

    // Held by another run: said, and the run goes on once the lock is released.
    let held = nix::fcntl::Flock::lock(
        std::fs::File::open(&env.config).unwrap(),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .unwrap();
    let log = env.path("wait.log");
    let mut cmd = env.command(&["rotate", "--wait"]);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let mut child = cmd.spawn().unwrap();
    assert!(
        eventually(|| read(&log).contains("waiting for another runner-medic run to finish")),
        "{}",
        read(&log)
    );
    assert!(child.try_wait().unwrap().is_none(), "it waits for the lock");
    drop(held);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", read(&log));
    env.assert_no_secrets(&read(&log), "stderr");
}
