//! Fleet benchmarks: how fast runner-medic gets a config.toml's runners healthy again, how many
//! requests and restarts that takes, how long the service is down, and how light it is; side by
//! side with the sequential curl script operators write by hand (benches/baseline.sh).
//!
//! `cargo bench --bench fleet` runs everything (a few minutes on 2 cores);
//! `cargo bench --bench fleet -- --quick` runs small sizes only, as CI does, and checks the
//! invariants (one stop and one start, or one reload, per config.toml, every runner healthy, at
//! most one request per healthy runner in steady state);
//! `cargo bench --bench fleet -- --cost` runs only the cost and critical-path section, at 48 and
//! 500 runners and 100 ms per request.
//! The table goes to stdout and to target/bench/report.md.

#![allow(clippy::print_stdout, clippy::print_stderr)]
// Pedantic lints guard the shipped code; tests favour directness.
#![allow(clippy::pedantic)]

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use gitlab_sim::{NewRunner, Options, RunnerType, Simulator};

const BIN: &str = env!("CARGO_BIN_EXE_runner-medic");
const CONCURRENCY: usize = 16;

#[derive(Clone, Copy, PartialEq)]
enum Mix {
    /// Every token expired: every runner needs a privileged reset.
    AllExpired,
    /// Every token valid, far from expiry.
    AllHealthy,
    /// 70 % healthy, 10 % expired, 5 % revoked, 5 % deleted, 10 % near expiry.
    Realistic,
}

#[derive(Clone, Copy, PartialEq)]
enum Manager {
    None,
    SysV,
}

struct World {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    sim: Simulator,
    config: PathBuf,
    settings: PathBuf,
    admin_file: PathBuf,
    init: Option<PathBuf>,
    log: PathBuf,
    names: Vec<String>,
}

impl World {
    fn new(n: usize, latency_ms: u64, mix: Mix, manager: Manager) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let sim = Simulator::start(Options {
            latency: Duration::ZERO,
            ..Options::default()
        })
        .unwrap();
        let url = sim.url();
        let admin = sim.state().add_pat(&["api"], true, None);
        let admin_file = dir.join("admin-token");
        std::fs::write(&admin_file, &admin).unwrap();
        std::fs::set_permissions(&admin_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut text = String::from("concurrent = 10\ncheck_interval = 0\n");
        let mut templates = String::new();
        let mut names = Vec::new();
        for i in 0..n {
            let name = format!("runner-{i:04}");
            let bucket = i % 20;
            let kind = match mix {
                Mix::AllExpired => "expired",
                Mix::AllHealthy => "healthy",
                Mix::Realistic => match bucket {
                    0..=13 => "healthy",
                    14 | 15 => "expired",
                    16 => "revoked",
                    17 => "deleted",
                    _ => "expiring",
                },
            };
            let (id, token) = sim.state().add_runner(NewRunner {
                runner_type: RunnerType::ProjectType,
                description: name.clone(),
                ..NewRunner::default()
            });
            let now = Utc::now();
            let mut expires = now + chrono::Duration::days(300);
            let obtained = now - chrono::Duration::days(60);
            {
                let mut s = sim.state();
                match kind {
                    "expired" => {
                        s.expire_token(id);
                        expires = now - chrono::Duration::days(1);
                    }
                    "revoked" => {
                        s.reset_token(id);
                    }
                    "deleted" => {
                        s.runners.remove(&id);
                        templates.push_str(&format!("[templates.\"{name}\"]\nrunner_type = \"project_type\"\nproject_id = 42\ndescription = \"{name}\"\n"));
                    }
                    "expiring" => expires = now + chrono::Duration::days(1),
                    _ => {}
                }
                if let Some(r) = s.runners.get_mut(&id) {
                    if kind != "expired" {
                        r.token_expires_at = Some(expires);
                    }
                }
            }
            let _ = write!(
                text,
                "\n[[runners]]\n  name = \"{name}\"\n  url = \"{url}\"\n  id = {id}\n  token = \"{token}\"\n  token_obtained_at = {}\n  token_expires_at = {}\n  executor = \"shell\"\n",
                obtained.format("%Y-%m-%dT%H:%M:%SZ"),
                expires.format("%Y-%m-%dT%H:%M:%SZ")
            );
            names.push(name);
        }
        let config = dir.join("config.toml");
        std::fs::write(&config, text).unwrap();
        let log = dir.join("runner.log");
        let init = (manager == Manager::SysV).then(|| install_init_script(&dir, &config, &log));
        let service = match &init {
            Some(script) => format!(
                // The stop → write → start cycle, whose service timings this scenario reports.
                "[service]\nmanager = \"sysv\"\ninit_dir = \"{}\"\nstop_timeout = \"20s\"\nrestart = \"always\"\n",
                script.parent().unwrap().display()
            ),
            None => "[service]\nmanager = \"none\"\n".into(),
        };
        let settings = dir.join("settings.toml");
        std::fs::write(
            &settings,
            format!(
                "gitlab_url = \"{url}\"\nadmin_token_file = \"{}\"\nstate_dir = \"{}\"\nconcurrency = {CONCURRENCY}\n{service}{templates}",
                admin_file.display(),
                dir.join("state").display()
            ),
        )
        .unwrap();
        // Latency from here on, so set-up is not slowed down.
        sim.state().latency = Duration::from_millis(latency_ms);
        if let Some(script) = &init {
            assert!(Command::new(script)
                .arg("start")
                .status()
                .unwrap()
                .success());
            wait_for(|| {
                std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains("poll name=")
            });
        }
        Self {
            _dir: tmp,
            dir,
            sim,
            config,
            settings,
            admin_file,
            init,
            log,
            names,
        }
    }

    fn run(&self, args: &[&str]) -> (Duration, i32, String, String) {
        let started = Instant::now();
        let out = Command::new(BIN)
            .args(args)
            .arg("--runner-config")
            .arg(&self.config)
            .arg("--settings")
            .arg(&self.settings)
            .env("RUST_LOG", "warn")
            .env_remove("RUNNER_MEDIC_ADMIN_TOKEN")
            .output()
            .unwrap();
        (
            started.elapsed(),
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// API requests runner-medic made (the stand-in runner's job polls left out).
    fn api_requests(&self) -> usize {
        self.sim
            .state()
            .log
            .iter()
            .filter(|e| e.route != "/api/v4/jobs/request")
            .count()
    }

    /// API requests runner-medic made, by `METHOD route`, from the `from`-th log entry on.
    fn routes_since(&self, from: usize) -> std::collections::BTreeMap<String, usize> {
        let mut by = std::collections::BTreeMap::new();
        for e in self.sim.state().log[from..]
            .iter()
            .filter(|e| e.route != "/api/v4/jobs/request")
        {
            *by.entry(format!("{} {}", e.method, e.route)).or_insert(0) += 1;
        }
        by
    }

    /// Each runner's id and token in config.toml now.
    fn credentials(&self) -> Vec<(String, (u64, String))> {
        let doc: toml::Table =
            toml::from_str(&std::fs::read_to_string(&self.config).unwrap()).unwrap();
        doc["runners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_string(),
                    (
                        r["id"].as_integer().unwrap_or_default() as u64,
                        r["token"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    }

    fn log_len(&self) -> usize {
        self.sim.state().log.len()
    }

    fn healthy(&self) -> bool {
        let doc: toml::Table =
            toml::from_str(&std::fs::read_to_string(&self.config).unwrap()).unwrap();
        doc["runners"].as_array().unwrap().iter().all(|r| {
            self.sim
                .state()
                .runner_by_token(r["token"].as_str().unwrap())
                .is_some()
        })
    }

    fn log_ts(&self, needle: &str) -> Vec<u128> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .filter_map(|l| {
                l.strip_prefix("ts=")?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(script) = &self.init {
            let _ = Command::new(script).arg("stop").status();
        }
    }
}

fn install_init_script(dir: &Path, config: &Path, log: &Path) -> PathBuf {
    let initd = dir.join("etc/init.d");
    std::fs::create_dir_all(&initd).unwrap();
    let script = initd.join("gitlab-runner");
    let pid = dir.join("gitlab-runner.pid");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
case "$1" in
  start) start-stop-daemon --start --quiet --background --make-pidfile --pidfile "{pid}" --startas /bin/sh -- -c "exec \"{bin}\" demo --stand-in-runner --config \"{config}\" --interval-ms 1000 >>\"{log}\" 2>&1" ;;
  stop) start-stop-daemon --stop --quiet --pidfile "{pid}" --retry QUIT/10/KILL/5 --remove-pidfile; rc=$?; [ $rc -eq 1 ] && rc=0; exit $rc ;;
  status) start-stop-daemon --status --pidfile "{pid}" ;;
esac
"#,
            pid = pid.display(),
            bin = BIN,
            config = config.display(),
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..400 {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

struct Row {
    cells: Vec<String>,
}

/// A config.toml of `n` runners that needs no network: each entry's token is a placeholder
/// (`<…>`-style, unusable), so diagnose judges it offline, as it does any entry it cannot send.
/// Entries are minimal (name, url, token, executor: about 130 bytes) so that 100 000 of them stay
/// under the 16 MiB a config.toml may have.
fn offline_config(dir: &Path, n: usize) -> PathBuf {
    let mut text = String::with_capacity(n * 140);
    text.push_str("concurrent = 4\ncheck_interval = 0\n");
    for i in 0..n {
        let _ = write!(
            text,
            "\n[[runners]]\n  name = \"r{i}\"\n  url = \"https://gitlab.example.com\"\n  token = \"glrt-t1_{i:020}>\"\n  executor = \"shell\"\n"
        );
    }
    assert!(text.len() < 16 << 20, "under the config.toml size cap");
    let path = dir.join(format!("config-{n}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Run the binary on `config` offline; (seconds, peak RSS KiB, stdout bytes).
fn timed_offline(config: &Path, settings: &Path, args: &[&str]) -> (f64, u64, usize) {
    let started = Instant::now();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(BIN)
        .args(args)
        .arg("--runner-config")
        .arg(config)
        .arg("--settings")
        .arg(settings)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    let rss = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    // Exit 1: every entry has a finding (its placeholder token).
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (secs, rss, out.stdout.len())
}

/// Part 4: one config.toml with very many runners, offline. Parse, checks, judgement, plan and
/// report must grow linearly with the runners.
fn scale(report: &mut String, quick: bool) {
    let sizes: &[usize] = if quick {
        &[1_000]
    } else {
        &[10_000, 30_000, 100_000]
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = dir.path().join("settings.toml");
    std::fs::write(
        &settings,
        format!(
            "state_dir = \"{}\"\n[service]\nmanager = \"none\"\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let _ = writeln!(
        report,
        "\n## one config.toml with very many runners (offline)\n"
    );
    let _ = writeln!(report, "| runners | file MiB | `diagnose --output json` s | µs/runner | peak RSS MiB | `rotate --dry-run --output json` s | parse + rewrite of every runner (with self-check) s |");
    let _ = writeln!(report, "|---|---|---|---|---|---|---|");
    for &n in sizes {
        let config = offline_config(dir.path(), n);
        let size = std::fs::metadata(&config).unwrap().len() as f64 / 1024.0 / 1024.0;
        let (diag, rss, out) = timed_offline(&config, &settings, &["diagnose", "--output", "json"]);
        assert!(out > n * 100, "a report of every runner ({out} bytes)");
        let (dry, _, _) = timed_offline(
            &config,
            &settings,
            &["rotate", "--dry-run", "--output", "json"],
        );
        let started = Instant::now();
        let file = runner_medic::runner_config::ConfigFile::load(&config).unwrap();
        let changes: Vec<_> = (0..n)
            .map(|i| {
                (
                    i,
                    runner_medic::runner_config::Credentials {
                        token: runner_medic::secret::RunnerToken::new(format!(
                            "glrt-t3_scale{i:015}"
                        )),
                        id: Some(1 + i as u64),
                        obtained_at: Utc::now(),
                        expires_at: None,
                    },
                )
            })
            .collect();
        let text = file.with_credentials(&changes).unwrap();
        std::hint::black_box(text);
        let rewrite = started.elapsed().as_secs_f64();
        let _ = writeln!(
            report,
            "| {n} | {size:.1} | {diag:.2} | {:.0} | {:.1} | {dry:.2} | {rewrite:.2} |",
            diag * 1e6 / n as f64,
            rss as f64 / 1024.0
        );
        eprintln!("scale: {n} runners done");
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // `--scale`: only the many-runners section (docs/performance.md quotes it).
    if std::env::args().any(|a| a == "--scale") {
        let mut report = format!(
            "machine: {} cores, {}\n",
            std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            uname()
        );
        scale(&mut report, quick);
        print!("{report}");
        return;
    }
    // `--cost`: the cost and critical-path section alone, at full size (48 and 500 runners).
    if std::env::args().any(|a| a == "--cost") {
        let mut report = String::from("# runner-medic benchmarks (cost)\n");
        cost(&mut report, quick);
        print!("{report}");
        return;
    }
    let sizes: &[usize] = if quick { &[1, 10] } else { &[1, 10, 100, 500] };
    let latencies: &[u64] = if quick { &[20] } else { &[20, 100] };
    let mut report = String::new();
    let _ = writeln!(
        report,
        "# runner-medic benchmarks{}\n",
        if quick { " (quick)" } else { "" }
    );
    let _ = writeln!(
        report,
        "machine: {} cores, {}; concurrency {CONCURRENCY}\n",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        uname()
    );

    // 1. rotate and diagnose at fleet sizes.
    let _ = writeln!(report, "## rotate and diagnose\n");
    let _ = writeln!(report, "| runners | mix | latency | manager | diagnose s | rotate s | requests/runner (API minimum) | min rounds s | rotate / min | restarts | stop s | held by runner-medic s | start s |");
    let _ = writeln!(
        report,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut rotate_sysv_20 = std::collections::BTreeMap::new();
    for &latency in latencies {
        for &n in sizes {
            for (mix, manager) in [
                (Mix::AllExpired, Manager::None),
                (Mix::AllExpired, Manager::SysV),
                (Mix::Realistic, Manager::None),
            ] {
                if manager == Manager::SysV && latency != 20 {
                    continue;
                }
                let world = World::new(n, latency, mix, manager);
                let (diag, _, _, _) = world.run(&["diagnose", "--output", "json"]);
                let before = world.api_requests();
                let (rot, code, stdout, stderr) = world.run(&["rotate", "--output", "json"]);
                let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                assert_eq!(code, 0, "rotate failed for {n} runners:\n{stderr}");
                assert!(world.healthy(), "every runner healthy after rotate ({n})");
                let requests = world.api_requests() - before;
                let changed = json["runners"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["outcome"] == "done")
                    .count();
                // The API minimum: verify every token, and for each changed runner one request for
                // the new token and one to verify it.
                let minimum = n + 2 * changed;
                // Minimum rounds: verify the old token, reset it, verify the new one; `ceil(n / c)`
                // rounds each, plus the two checks of the privileged token.
                let rounds = 3 * n.div_ceil(CONCURRENCY) + 2;
                let min = Duration::from_millis(rounds as u64 * latency);
                // One stop and one start per config.toml, or (the default `restart = "reload"`,
                // when gitlab-runner re-reads the file by itself) one reload and no restart.
                let restarts = if manager == Manager::SysV {
                    let quits = world.log_ts("SIGQUIT");
                    let starts = world.log_ts("started pid=");
                    let reloads = world.log_ts("reloaded config");
                    if json["service"]["reloaded"] == true {
                        assert_eq!(quits.len(), 0, "no stop when reloaded");
                        assert_eq!(starts.len(), 1, "no start when reloaded");
                        assert!(!reloads.is_empty(), "the runner re-read config.toml");
                        "0 (reloaded)".to_string()
                    } else {
                        assert_eq!(quits.len(), 1, "one stop per config.toml");
                        assert_eq!(
                            starts.len(),
                            2,
                            "one start per config.toml (plus the initial one)"
                        );
                        "1".to_string()
                    }
                } else {
                    "0".to_string()
                };
                let service = &json["service"];
                let seconds = |k: &str| {
                    service[k]
                        .as_f64()
                        .map_or("-".to_string(), |v| format!("{v:.3}"))
                };
                if manager == Manager::SysV {
                    rotate_sysv_20.insert(n, rot);
                }
                rows.push(Row {
                    cells: vec![
                        n.to_string(),
                        if mix == Mix::AllExpired {
                            "all expired".into()
                        } else {
                            "realistic".into()
                        },
                        format!("{latency} ms"),
                        if manager == Manager::SysV {
                            "sysv".into()
                        } else {
                            "none".into()
                        },
                        secs(diag),
                        secs(rot),
                        format!(
                            "{:.2} ({:.2})",
                            requests as f64 / n as f64,
                            minimum as f64 / n as f64
                        ),
                        if mix == Mix::AllExpired {
                            secs(min)
                        } else {
                            "-".into()
                        },
                        if mix == Mix::AllExpired {
                            format!("{:.2}", rot.as_secs_f64() / min.as_secs_f64())
                        } else {
                            "-".into()
                        },
                        restarts,
                        seconds("stop_seconds"),
                        seconds("held_seconds"),
                        seconds("start_seconds"),
                    ],
                });
                let _ = &world.dir;
                let _ = &world.admin_file;
                let _ = &world.names;
            }
        }
    }
    for r in &rows {
        let _ = writeln!(report, "| {} |", r.cells.join(" | "));
    }

    // 2. What a run costs GitLab, and how close a rotation gets to its round-trip minimum.
    cost(&mut report, quick);

    // 2. The sequential curl script, same simulator, same init script, same runners.
    let _ = writeln!(
        report,
        "\n## against the hand-written sequential script (all expired, 20 ms, SysV)\n"
    );
    let _ = writeln!(
        report,
        "| runners | baseline s | runner-medic s | speed-up | baseline restarts |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|");
    let baseline = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("benches/baseline.sh");
    // The baseline restarts the service once per runner (about 1.6 s each with start-stop-daemon):
    // measured up to 100 runners, extrapolated beyond so the harness stays within minutes.
    let mut per_runner = 0.0;
    for &n in sizes.iter().filter(|n| **n <= 100) {
        let world = World::new(n, 20, Mix::AllExpired, Manager::SysV);
        let started = Instant::now();
        let out = Command::new(&baseline)
            .arg(&world.config)
            .arg(world.sim.url())
            .arg(&world.admin_file)
            .arg(world.init.as_ref().unwrap())
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let took = started.elapsed();
        assert!(
            out.status.success(),
            "baseline failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(world.healthy(), "the baseline fixed every runner too");
        let restarts = world.log_ts("SIGQUIT").len();
        let ours = rotate_sysv_20[&n];
        per_runner = took.as_secs_f64() / n as f64;
        let _ = writeln!(
            report,
            "| {n} | {} | {} | {:.1}x | {restarts} |",
            secs(took),
            secs(ours),
            took.as_secs_f64() / ours.as_secs_f64()
        );
    }
    for &n in sizes.iter().filter(|n| **n > 100) {
        let ours = rotate_sysv_20[&n];
        let estimate = per_runner * n as f64;
        let _ = writeln!(
            report,
            "| {n} | {estimate:.0} (extrapolated) | {} | {:.1}x | {n} |",
            secs(ours),
            estimate / ours.as_secs_f64()
        );
    }

    // 3. Micro-benchmarks and footprint.
    let _ = writeln!(report, "\n## footprint\n");
    let _ = writeln!(report, "| what | value |");
    let _ = writeln!(report, "|---|---|");
    let big = World::new(
        if quick { 50 } else { 500 },
        0,
        Mix::AllExpired,
        Manager::None,
    );
    let n_big = big.names.len();
    let config = runner_medic::runner_config::ConfigFile::load(&big.config).unwrap();
    let changes: Vec<_> = (0..n_big)
        .map(|i| {
            (
                i,
                runner_medic::runner_config::Credentials {
                    token: runner_medic::secret::RunnerToken::new(format!("glrt-t3_bench{i:015}")),
                    id: Some(100_000 + i as u64),
                    obtained_at: Utc::now(),
                    expires_at: None,
                },
            )
        })
        .collect();
    let mut times = Vec::new();
    for _ in 0..15 {
        let started = Instant::now();
        let config = runner_medic::runner_config::ConfigFile::load(&big.config).unwrap();
        let text = config.with_credentials(&changes).unwrap();
        std::hint::black_box(text);
        times.push(started.elapsed());
    }
    times.sort();
    let _ = writeln!(report, "| parse + rewrite (with self-check) of a {n_big}-runner config.toml, median of 15 | {:.1} ms |", times[7].as_secs_f64() * 1000.0);
    drop(config);
    assert!(
        std::path::Path::new("/usr/bin/time").exists(),
        "/usr/bin/time is missing (it measures the peak memory of a run): `apt-get install time`"
    );
    let rss = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(BIN)
        .args(["rotate", "--output", "json", "--runner-config"])
        .arg(&big.config)
        .arg("--settings")
        .arg(&big.settings)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let peak_kb: u64 = String::from_utf8_lossy(&rss.stderr)
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    assert!(rss.status.success() && big.healthy());
    let _ = writeln!(
        report,
        "| peak RSS of `rotate` on {n_big} expired runners | {:.1} MiB |",
        peak_kb as f64 / 1024.0
    );
    let idle = idle_agent_rss(&World::new(1, 0, Mix::Realistic, Manager::None));
    let _ = writeln!(
        report,
        "| RSS of an idle `agent` (after its first cycle) | {:.1} MiB |",
        idle as f64 / 1024.0
    );
    let mut help = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let ok = Command::new(BIN)
            .arg("--help")
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok);
        help.push(started.elapsed());
    }
    help.sort();
    let _ = writeln!(
        report,
        "| `--help` start-up, median of 30 | {:.1} ms |",
        help[15].as_secs_f64() * 1000.0
    );
    let size = std::fs::metadata(BIN).unwrap().len();
    let _ = writeln!(
        report,
        "| binary size ({} profile) | {:.1} MiB |",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "bench/release"
        },
        size as f64 / 1024.0 / 1024.0
    );

    scale(&mut report, quick);

    print!("{report}");
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join(if quick {
            "report-quick.md"
        } else {
            "report.md"
        }),
        &report,
    )
    .unwrap();
}

/// Requests and time of cold and steady-state runs: all expired (a rotation against its round-trip
/// minimum), all healthy, and the realistic mix, each run three times on the same state directory.
fn cost(report: &mut String, quick: bool) {
    let sizes: &[usize] = if quick { &[20] } else { &[48, 500] };
    // `--latency MS` measures the same table at another latency (docs/performance.md: 20 ms).
    let latency: u64 = arg_value("--latency")
        .map(|v| v.parse().expect("--latency takes milliseconds"))
        .unwrap_or(if quick { 20 } else { 100 });
    // `--expired`: the all-expired mix alone (the critical path of a rotation).
    let mixes: &[Mix] = if std::env::args().any(|a| a == "--expired") {
        &[Mix::AllExpired]
    } else {
        &[Mix::AllExpired, Mix::AllHealthy, Mix::Realistic]
    };
    let _ = writeln!(
        report,
        "\n## cost on GitLab and critical path ({latency} ms per request, concurrency {CONCURRENCY})\n"
    );
    let _ = writeln!(report, "| runners | mix | run | s | min rounds s | s / min | its requests / concurrency s | s / that | requests | per runner | per changed runner (minimum 3) | per unchanged runner, privileged check included |");
    let _ = writeln!(report, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut routes = String::new();
    let mut timelines = String::new();
    for &n in sizes {
        for &mix in mixes {
            let world = World::new(n, latency, mix, Manager::None);
            // `diagnose` with nothing remembered (it reads every record); `rotate`; the run after
            // (a recreated runner's new record is read once); steady state.
            for run in [
                "diagnose (cold)",
                "rotate",
                "rotate (next)",
                "rotate (steady)",
            ] {
                let from = world.log_len();
                let before = world.credentials();
                let command = run.split(' ').next().unwrap();
                let started = Utc::now();
                let (took, code, stdout, stderr) = world.run(&[command, "--output", "json"]);
                if command == "rotate" {
                    assert_eq!(code, 0, "rotate failed for {n} runners:\n{stderr}");
                    assert!(world.healthy(), "every runner healthy after rotate ({n})");
                }
                let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                let after = world.credentials();
                let changed: Vec<String> = json["runners"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["outcome"] == "done")
                    .map(|r| r["name"].as_str().unwrap().to_string())
                    .collect();
                let by = world.routes_since(from);
                let requests: usize = by.values().sum();
                // Each request to the runner it concerns (its token, or its id in the path);
                // creations to the changed runners; the privileged check to nobody.
                let (mut dead, mut healthy, mut overhead) = (0usize, 0usize, 0usize);
                for e in world.sim.state().log[from..]
                    .iter()
                    .filter(|e| e.route != "/api/v4/jobs/request")
                {
                    let id_in_path = e
                        .path
                        .split('/')
                        .skip_while(|p| *p != "runners")
                        .nth(1)
                        .and_then(|p| p.parse::<u64>().ok());
                    let owner = before.iter().chain(after.iter()).find(|(_, (id, token))| {
                        (e.credential_kind == "runner_token"
                            && e.credential.as_deref() == Some(token))
                            || (id_in_path.is_some() && id_in_path == Some(*id))
                    });
                    match owner {
                        Some((name, _)) if changed.contains(name) => dead += 1,
                        Some(_) => healthy += 1,
                        None if e.route.contains("/runners") => dead += 1,
                        None => overhead += 1,
                    }
                }
                let n_dead = changed.len();
                let n_healthy = n - n_dead;
                // The round-trip minimum: verify every runner, then a new token and its verify for
                // each changed one, `CONCURRENCY` at a time, plus the privileged token's check.
                let rounds = n.div_ceil(CONCURRENCY) + 2 * n_dead.div_ceil(CONCURRENCY) + 2;
                let min = Duration::from_millis(rounds as u64 * latency);
                // What this run's own requests take at best, `CONCURRENCY` at a time: how close
                // its critical path is to the limit its requests set.
                let own = Duration::from_millis(requests.div_ceil(CONCURRENCY) as u64 * latency);
                // Every request of a diagnosis to the runner it concerns, broken or not.
                if command == "diagnose" {
                    healthy += dead;
                    dead = 0;
                }
                if run.contains("steady") || (mix == Mix::AllHealthy && command == "rotate") {
                    assert!(
                        healthy + overhead <= n_healthy,
                        "steady state costs at most one request per healthy runner ({} for {n_healthy})",
                        healthy + overhead
                    );
                }
                let _ = writeln!(
                    report,
                    "| {n} | {} | {run} | {} | {} | {} | {} | {:.2} | {requests} ({overhead} privileged check) | {:.2} | {} | {} |",
                    match mix {
                        Mix::AllExpired => "all expired",
                        Mix::AllHealthy => "all healthy",
                        Mix::Realistic => "realistic",
                    },
                    secs(took),
                    if n_dead > 0 { secs(min) } else { "-".into() },
                    if n_dead > 0 {
                        format!("{:.2}", took.as_secs_f64() / min.as_secs_f64())
                    } else {
                        "-".into()
                    },
                    secs(own),
                    took.as_secs_f64() / own.as_secs_f64(),
                    requests as f64 / n as f64,
                    if n_dead > 0 {
                        format!("{:.2} ({n_dead})", dead as f64 / n_dead as f64)
                    } else {
                        "-".into()
                    },
                    if n_healthy > 0 && command == "rotate" {
                        format!(
                            "{:.2} ({n_healthy})",
                            (healthy + overhead) as f64 / n_healthy as f64
                        )
                    } else {
                        "-".into()
                    },
                );
                if mix == Mix::AllExpired && run == "rotate" {
                    timeline(&mut timelines, &world, from, started, &before, &after, took);
                }
                if mix == Mix::AllExpired && run == "rotate" && n == sizes[0] {
                    let _ = writeln!(
                        routes,
                        "\nrequests of the rotation of {n} expired runners:\n"
                    );
                    for (k, v) in &by {
                        let _ = writeln!(routes, "- `{k}`: {v}");
                    }
                }
            }
        }
    }
    report.push_str(&routes);
    report.push_str(&timelines);
}

/// The value after `name` on the command line (`--latency 20`).
fn arg_value(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// When each step of a rotation of expired runners was answered, from the simulator's log
/// (seconds from the start of the process): where its time goes.
fn timeline(
    out: &mut String,
    world: &World,
    from: usize,
    started: chrono::DateTime<Utc>,
    before: &[(String, (u64, String))],
    after: &[(String, (u64, String))],
    took: Duration,
) {
    let state = world.sim.state();
    let mut steps: std::collections::BTreeMap<&str, (f64, f64, usize)> = Default::default();
    for e in state.log[from..]
        .iter()
        .filter(|e| e.route != "/api/v4/jobs/request")
    {
        let token = |set: &[(String, (u64, String))]| {
            set.iter()
                .any(|(_, (_, t))| e.credential.as_deref() == Some(t.as_str()))
        };
        let step = match (e.method.as_str(), e.route.as_str()) {
            ("POST", "/api/v4/runners/verify") if token(before) => "1 verify (old token)",
            ("POST", "/api/v4/runners/verify") if token(after) => "4 verify (new token)",
            ("POST", r) if r.contains("reset_authentication_token") => "3 new token",
            ("GET", r) if r.starts_with("/api/v4/runners/") => "2 record and managers",
            _ => "0 privileged check",
        };
        let at = (e.at - started).num_milliseconds() as f64 / 1000.0;
        let s = steps.entry(step).or_insert((f64::MAX, 0.0, 0));
        s.0 = s.0.min(at);
        s.1 = s.1.max(at);
        s.2 += 1;
    }
    let _ = writeln!(
        out,
        "\ntimeline of the rotation of {} expired runners (answers, seconds from the start; exit at {}):\n",
        before.len(),
        secs(took)
    );
    for (step, (first, last, count)) in steps {
        let _ = writeln!(
            out,
            "- {}: {count} answers, first at {first:.2}, last at {last:.2}",
            &step[2..]
        );
    }
}

fn idle_agent_rss(world: &World) -> u64 {
    let metrics = world.dir.join("m.prom");
    let mut child = Command::new(BIN)
        .args(["agent", "--interval", "1h", "--metrics-file"])
        .arg(&metrics)
        .arg("--runner-config")
        .arg(&world.config)
        .arg("--settings")
        .arg(&world.settings)
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(|| metrics.exists());
    std::thread::sleep(Duration::from_millis(300));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    kb
}

fn uname() -> String {
    let out = Command::new("uname")
        .args(["-srm"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    format!("{out}, {cpu}")
}
