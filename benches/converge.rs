//! Fleet convergence: N hosts share one runner's token through one etcd (Debian's
//! `etcd-server`, started here on loopback) against the GitLab simulator. One more host rotates
//! the token; the benchmark measures the time until every one of the N hosts has the new token
//! in its config.toml, and what GitLab saw meanwhile:
//! - `watch`: each of the N hosts runs `runner-medic agent` with a timer of an hour; only its
//!   watch on the store can bring the token in time;
//! - `timer`: each of the N hosts runs `runner-medic rotate` at once, as timers that all fire
//!   in the same second would (the best case of a timer: spread over `RandomizedDelaySec`, a
//!   host waits for its own).
//!
//! `cargo bench --features fleet-etcd --bench converge` runs 50 hosts;
//! `cargo bench --features fleet-etcd --bench converge -- --quick` runs 5.

#![allow(clippy::print_stdout, clippy::print_stderr)]
#![allow(clippy::pedantic)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use gitlab_sim::{NewRunner, Options, RunnerType, Simulator};

const BIN: &str = env!("CARGO_BIN_EXE_runner-medic");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Etcd {
    _dir: tempfile::TempDir,
    url: String,
    child: Child,
}

impl Etcd {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (apt-get install etcd-server)");
        let health = format!("{url}/health");
        wait_for("etcd", Duration::from_secs(30), || {
            reqwest::blocking::get(&health).is_ok_and(|r| r.status().is_success())
        });
        Self {
            _dir: dir,
            url,
            child,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Host {
    dir: PathBuf,
    config: PathBuf,
    settings: PathBuf,
}

impl Host {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--runner-config")
            .arg(&self.config)
            .arg("--settings")
            .arg(&self.settings)
            .env("RUST_LOG", "runner_medic=info")
            .env_remove("RUNNER_MEDIC_ADMIN_TOKEN")
            .stdin(Stdio::null());
        cmd
    }

    fn has(&self, token: &str) -> bool {
        std::fs::read_to_string(&self.config).is_ok_and(|t| t.contains(token))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

struct Round {
    converge: Duration,
    issuing: usize,
    changing: usize,
    requests: usize,
}

fn round(n: usize, watch: bool) -> Round {
    let tmp = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    let sim = Simulator::start(Options {
        latency: Duration::ZERO,
        ..Options::default()
    })
    .unwrap();
    let admin = sim.state().add_pat(&["api"], true, None);
    let (id, token) = sim.state().add_runner(NewRunner {
        runner_type: RunnerType::InstanceType,
        description: "shared".into(),
        ..NewRunner::default()
    });
    let expires = sim.state().runners[&id].token_expires_at;
    let key = tmp.path().join("fleet.key");
    std::fs::write(&key, "11".repeat(32)).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let admin_file = tmp.path().join("admin-token");
    std::fs::write(&admin_file, &admin).unwrap();
    std::fs::set_permissions(&admin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hosts: Vec<Host> = (0..=n)
        .map(|i| {
            let dir = tmp.path().join(format!("host-{i:03}"));
            std::fs::create_dir_all(&dir).unwrap();
            let config = dir.join("config.toml");
            let fmt = |d: chrono::DateTime<Utc>| d.format("%Y-%m-%dT%H:%M:%SZ").to_string();
            std::fs::write(
                &config,
                format!(
                    "concurrent = 1\n\n[[runners]]\n  name = \"shared\"\n  url = \"{}\"\n  id = {id}\n  token = \"{token}\"\n  token_obtained_at = {}\n  token_expires_at = {}\n  executor = \"shell\"\n",
                    sim.url(),
                    fmt(Utc::now() - chrono::Duration::days(1)),
                    expires.map_or_else(|| "0001-01-01T00:00:00Z".into(), fmt),
                ),
            )
            .unwrap();
            let system_id = format!("s_bench{i:07}");
            std::fs::write(dir.join(".runner_system_id"), &system_id).unwrap();
            sim.state().add_manager(id, &system_id, Some(Utc::now()));
            let settings = dir.join("settings.toml");
            std::fs::write(
                &settings,
                format!(
                    "state_dir = \"{}\"\ngitlab_url = \"{}\"\nadmin_token_file = \"{}\"\n\n[service]\nmanager = \"none\"\n\n[fleet]\nstore = \"etcd\"\nendpoints = [\"{}\"]\nencryption_key_file = \"{}\"\n",
                    dir.join("state").display(),
                    sim.url(),
                    admin_file.display(),
                    etcd.url,
                    key.display()
                ),
            )
            .unwrap();
            Host {
                dir,
                config,
                settings,
            }
        })
        .collect();
    let (rotating, others) = hosts.split_last().unwrap();

    let mut agents: Vec<Child> = Vec::new();
    if watch {
        for h in others {
            let log = std::fs::File::create(h.dir.join("agent.log")).unwrap();
            agents.push(
                h.command(&["agent", "--interval", "1h", "--jitter", "0s"])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            );
        }
        wait_for(
            "every agent's first cycle",
            Duration::from_secs(300),
            || {
                others.iter().all(|h| {
                    let log = h.log();
                    log.contains("waiting for the next cycle")
                        && log.contains("watching the fleet store")
                })
            },
        );
    }

    let (issuing0, requests0) = {
        let s = sim.state();
        (s.token_issuing_requests(), s.log.len())
    };
    let changing0 = changing(&sim);
    let started = Instant::now();
    let out = rotating
        .command(&["rotate", "--force", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = {
        let text = std::fs::read_to_string(&rotating.config).unwrap();
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("token ="))
            .unwrap();
        line.split('"').nth(1).unwrap().to_string()
    };
    assert_ne!(new, token);
    if !watch {
        let children: Vec<Child> = others
            .iter()
            .map(|h| {
                h.command(&["rotate", "--output", "json"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            c.wait().unwrap();
        }
    }
    wait_for(
        "every host to hold the new token",
        Duration::from_secs(300),
        || others.iter().all(|h| h.has(&new)),
    );
    let converge = started.elapsed();
    for mut a in agents {
        let _ = a.kill();
        let _ = a.wait();
    }
    let changing = changing(&sim) - changing0;
    let s = sim.state();
    Round {
        converge,
        issuing: s.token_issuing_requests() - issuing0,
        changing,
        requests: s.log.len() - requests0,
    }
}

/// Requests that change something at GitLab.
fn changing(sim: &Simulator) -> usize {
    sim.state()
        .log
        .iter()
        .filter(|e| {
            e.method != "GET"
                && !e.route.ends_with("/runners/verify")
                && !e.route.ends_with("/jobs/request")
        })
        .count()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 5 } else { 50 };
    println!("| hosts | how the others learn | until all hold the new token, ms | token-issuing requests | requests that change GitLab | requests at GitLab |");
    println!("|---|---|---|---|---|---|");
    for watch in [true, false] {
        let r = round(n, watch);
        println!(
            "| {n} | {} | {} | {} | {} | {} |",
            if watch {
                "agent, watch on etcd (timer 1h)"
            } else {
                "`rotate` on every host at once"
            },
            r.converge.as_millis(),
            r.issuing,
            r.changing,
            r.requests
        );
        // What the benchmark stands on, so it cannot rot: one token for the whole fleet.
        assert_eq!(r.issuing, 1, "one token-issuing request");
        assert_eq!(r.changing, 1, "one request that changes GitLab");
    }
}
