//! How long a healthy runner on the same host takes no jobs while another runner of its
//! config.toml is rotated: `restart = "reload"` (the default) against `restart = "always"`.
//!
//! The stand-in gitlab-runner (the binary's `demo --stand-in-runner`) polls GitLab every 100 ms
//! for each runner of config.toml, re-reads the file when it changes, and is stopped gracefully
//! (SIGQUIT) and started again by its launcher under `always`. The figure is the longest gap
//! between two successful polls of the healthy runner from just before the rotation to a few
//! seconds after it: with no rotation at all it is one poll interval. A build of the host is
//! running when the rotation starts; a graceful stop waits for it, as gitlab-runner's does.
//!
//! `cargo bench --bench reload` (three rounds each); `-- --quick` runs one round each, as CI does.
//! Figures: docs/performance.md.

#![allow(clippy::print_stdout, clippy::print_stderr)]
#![allow(clippy::pedantic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gitlab_sim::{NewRunner, Options, RunnerType, Simulator};

const BIN: &str = env!("CARGO_BIN_EXE_runner-medic");
const POLL_MS: u64 = 100;

/// The `ts=` of every line of `log` that contains `needle`.
fn stamps(log: &str, needle: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| l.strip_prefix("ts=")?.split(' ').next()?.parse().ok())
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One rotation under `policy`: the longest gap (ms) in the healthy runner's successful polls,
/// and whether the service was stopped.
fn round(policy: &str) -> (u64, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let sim = Simulator::start(Options::default()).unwrap();
    let admin = sim.state().add_pat(&["api"], true, None);
    let add = |name: &str| {
        sim.state().add_runner(NewRunner {
            runner_type: RunnerType::InstanceType,
            description: name.into(),
            ..NewRunner::default()
        })
    };
    let (healthy_id, healthy) = add("healthy");
    let (dead_id, dead) = add("rotated");
    sim.state().reset_token(dead_id);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "concurrent = 2\n\n[[runners]]\n  name = \"healthy\"\n  url = \"{url}\"\n  id = {healthy_id}\n  token = \"{healthy}\"\n  executor = \"shell\"\n\n[[runners]]\n  name = \"rotated\"\n  url = \"{url}\"\n  id = {dead_id}\n  token = \"{dead}\"\n  executor = \"shell\"\n",
            url = sim.url()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let pid_file = dir.join("runner.pid");
    let log = dir.join("runner.log");
    let launcher = dir.join("gitlab-runner");
    std::fs::write(
        &launcher,
        runner_medic::commands::demo::launcher_script(
            Path::new(BIN),
            &config,
            &pid_file,
            &log,
            POLL_MS,
        ),
    )
    .unwrap();
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    let token_file = dir.join("admin-token");
    std::fs::write(&token_file, &admin).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let settings = dir.join("settings.toml");
    std::fs::write(
        &settings,
        format!(
            "state_dir = \"{}\"\ngitlab_url = \"{}\"\nadmin_token_file = \"{}\"\n\n[service]\nmanager = \"gitlab-runner\"\ngitlab_runner_bin = \"{}\"\nstop_timeout = \"20s\"\nrestart = \"{policy}\"\n",
            dir.join("state").display(),
            sim.url(),
            token_file.display(),
            launcher.display()
        ),
    )
    .unwrap();
    // A build is running when the rotation starts (it has 3 s left): a graceful stop waits for
    // it, and meanwhile the service takes no new job for any of its runners.
    assert!(Command::new(&launcher)
        .arg("start")
        .env("STAND_IN_JOB_MS", "4000")
        .status()
        .unwrap()
        .success());
    // Let it settle into its polling rhythm.
    std::thread::sleep(Duration::from_millis(1000));
    let from = now_ms();
    let out = Command::new(BIN)
        .args(["rotate", "--output", "json", "--runner-config"])
        .arg(&config)
        .arg("--settings")
        .arg(&settings)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let stopped = report["service"]["stopped"] == true;
    std::thread::sleep(Duration::from_millis(3000));
    let to = now_ms();
    let _ = Command::new(&launcher).arg("stop").status();
    let text = std::fs::read_to_string(&log).unwrap();
    let mut polls: Vec<u64> = stamps(&text, "poll name=healthy status=204")
        .into_iter()
        .filter(|t| *t >= from.saturating_sub(500) && *t <= to)
        .collect();
    polls.sort_unstable();
    assert!(polls.len() > 2, "the healthy runner polled:\n{text}");
    let gap = polls.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    (gap, stopped)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let rounds = if quick { 1 } else { 3 };
    println!("| restart policy | service stopped | longest gap in the healthy runner's polls, ms (rounds) |");
    println!("|---|---|---|");
    for policy in ["reload", "always"] {
        let results: Vec<(u64, bool)> = (0..rounds).map(|_| round(policy)).collect();
        let stopped = results.iter().any(|r| r.1);
        let gaps: Vec<String> = results.iter().map(|r| r.0.to_string()).collect();
        println!(
            "| `{policy}` | {} | {} |",
            if stopped { "yes" } else { "no" },
            gaps.join(", ")
        );
        // The invariant this benchmark stands on, so it cannot rot: reload never stops.
        assert_eq!(stopped, policy == "always", "{policy}");
    }
    println!("\n(poll interval {POLL_MS} ms: a gap of about one interval means no pause)");
}
