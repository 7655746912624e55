//! Operating runner-medic as a daemon: metrics that never hide a broken runner, the per-runner
//! `status`, the offline `list`, journald priorities, the agent's `/metrics` server, the lock
//! message and the packaged units. Each test drives the real binary against the simulator.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::TestEnv;

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap()
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
