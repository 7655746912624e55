//! Operating runner-medic as a daemon: metrics that never hide a broken runner, the per-runner
//! `status`, the offline `list`, journald priorities, the agent's `/metrics` server, the lock
//! message and the packaged units. Each test drives the real binary against the simulator.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Stdio};
use std::time::Duration;

use gitlab_sim::FaultKind;

use crate::harness::{Entry, TestEnv};

/// Every sample of a Prometheus text exposition as (name, labels, value), read by a strict
/// independent parser (openmetrics-parser); a rejected text fails the test.
fn samples(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let exposition = openmetrics_parser::prometheus::parse_prometheus(text)
        .unwrap_or_else(|e| panic!("the Prometheus parser rejected the metrics ({e:?}):\n{text}"));
    let mut out = Vec::new();
    for (name, family) in &exposition.families {
        for sample in family.iter_samples() {
            let labels: BTreeMap<String, String> = sample
                .get_labelset()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let value = match sample.value {
                openmetrics_parser::PrometheusValue::Gauge(g) => g.as_f64(),
                openmetrics_parser::PrometheusValue::Counter(ref c) => c.value.as_f64(),
                openmetrics_parser::PrometheusValue::Unknown(u) => u.as_f64(),
                ref other => panic!("unexpected sample type {other:?}"),
            };
            out.push((name.clone(), labels, value));
        }
    }
    out
}

/// The value of the one sample of `name` whose labels include all of `labels`.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let all = samples(text);
    let found: Vec<f64> = all
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    assert!(found.len() <= 1, "{name} {labels:?} is not unique:\n{text}");
    found.first().copied()
}

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

#[test]
fn three_runners_with_one_name_are_three_series_and_the_broken_one_shows() {
    let mut env = TestEnv::new();
    let mut a = env.healthy("ci-host-01");
    let mut b = env.revoked("ci-host-01");
    let mut c = env.healthy("ci-host-01");
    for e in [&mut a, &mut b, &mut c] {
        e.name = "ci-host-01".into();
    }
    env.write_config(&[a.clone(), b.clone(), c.clone()]);
    let metrics = env.path("m.prom");
    let m = metrics.to_str().unwrap();

    let run = env.run(&["diagnose", "--metrics-file", m]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let text = read(&metrics);
    env.assert_no_secrets(&text, "metrics");
    let healthy = |text: &str, e: &Entry| {
        value(
            text,
            "runner_medic_runner_healthy",
            &[
                ("runner_id", &e.id.unwrap().to_string()),
                ("name", "ci-host-01"),
            ],
        )
    };
    assert_eq!(healthy(&text, &a), Some(1.0), "{text}");
    assert_eq!(healthy(&text, &b), Some(0.0), "{text}");
    assert_eq!(healthy(&text, &c), Some(1.0), "{text}");
    let b_id = b.id.unwrap().to_string();
    assert_eq!(
        value(
            &text,
            "runner_medic_runner_status",
            &[("runner_id", &b_id), ("status", "broken")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "runner_medic_last_run_exit_code", &[]),
        Some(1.0)
    );
    assert!(value(&text, "runner_medic_last_run_timestamp_seconds", &[]).is_some());
    assert!(value(&text, "runner_medic_run_duration_seconds", &[]).is_some());
    assert_eq!(
        value(&text, "runner_medic_last_success_timestamp_seconds", &[]),
        None,
        "no run has succeeded yet"
    );
    // Alerting series carry no label whose value comes and goes.
    for (name, labels, _) in samples(&text) {
        if name == "runner_medic_findings" || name == "runner_medic_runner_healthy" {
            assert!(!labels.contains_key("severity"), "{name} {labels:?}");
        }
    }

    // A run that cannot even read its settings (exit 2) still writes the run-level series,
    // and the broken runner stays visible.
    env.extra_settings = "not_a_key = 1\n".into();
    let run = env.run(&["diagnose", "--metrics-file", m]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    let text = read(&metrics);
    assert_eq!(
        value(&text, "runner_medic_last_run_exit_code", &[]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(healthy(&text, &b), Some(0.0), "{text}");

    // Repaired: exit 0 records a success ...
    env.extra_settings.clear();
    let run = env.run(&["rotate", "--metrics-file", m]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = read(&metrics);
    let success = value(&text, "runner_medic_last_success_timestamp_seconds", &[])
        .expect("a success after exit 0");
    assert_eq!(
        value(&text, "runner_medic_last_run_exit_code", &[]),
        Some(0.0)
    );
    assert_eq!(healthy(&text, &b), Some(1.0), "{text}");
    // ... which a failed run keeps.
    env.extra_settings = "not_a_key = 1\n".into();
    let run = env.run(&["diagnose", "--metrics-file", m]);
    assert_eq!(run.code, 2);
    let text = read(&metrics);
    assert_eq!(
        value(&text, "runner_medic_last_success_timestamp_seconds", &[]),
        Some(success),
        "{text}"
    );
    assert_eq!(
        value(&text, "runner_medic_last_run_exit_code", &[]),
        Some(2.0)
    );
}

#[test]
fn a_failed_rotation_stays_visible_until_that_runners_next_rotation() {
    let env = TestEnv::new();
    let ok = env.healthy("ok");
    let bad = env.revoked("bad");
    env.write_config(&[ok, bad.clone()]);
    env.sim.state().inject(
        "POST /api/v4/runners/:id/reset_authentication_token",
        FaultKind::Status(500),
        None,
    );
    let metrics = env.path("m.prom");
    let m = metrics.to_str().unwrap();
    let id = bad.id.unwrap().to_string();
    let labels = [("runner_id", id.as_str()), ("name", "bad")];

    let run = env.run(&["rotate", "--metrics-file", m, "--output", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.runner("bad")["outcome"], "failed", "{}", run.stdout);
    let text = read(&metrics);
    assert_eq!(
        value(&text, "runner_medic_last_rotation_success", &labels),
        Some(0.0),
        "{text}"
    );
    let failed_at = value(
        &text,
        "runner_medic_last_rotation_timestamp_seconds",
        &labels,
    );
    assert!(failed_at.is_some());

    // A run that rotates nothing keeps the failure on record.
    let run = env.run(&["diagnose", "--metrics-file", m]);
    assert_eq!(run.code, 1);
    let text = read(&metrics);
    assert_eq!(
        value(&text, "runner_medic_last_rotation_success", &labels),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "runner_medic_last_rotation_timestamp_seconds",
            &labels
        ),
        failed_at
    );

    // The next rotation of that runner replaces it.
    env.sim.state().faults.clear();
    let run = env.run(&["rotate", "--metrics-file", m]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = read(&metrics);
    assert_eq!(
        value(&text, "runner_medic_last_rotation_success", &labels),
        Some(1.0),
        "{text}"
    );
    // The healthy runner was never rotated: no rotation series for it.
    assert_eq!(
        value(
            &text,
            "runner_medic_last_rotation_success",
            &[("name", "ok")]
        ),
        None,
        "{text}"
    );
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
fn list_is_offline_and_shows_the_last_recorded_state() {
    let env = TestEnv::new();
    let fine = env.healthy("fine");
    let old = env.expired("old");
    let gone = env.deleted("gone");
    // An entry without `id` (older gitlab-runner): GitLab tells its id, the record keeps it.
    let mut noid = env.healthy("noid");
    noid.id = None;
    let mut text = env.write_config(&[fine.clone(), old.clone(), gone.clone(), noid]);
    text.push_str(&format!(
        "\n[[runners]]\n  name = \"tokenless\"\n  url = \"{}\"\n  executor = \"shell\"\n",
        env.url()
    ));
    env.write_config_text(&text);

    let list = |env: &TestEnv| {
        let before = env.sim.state().log.len();
        let config_before = env.config_text();
        let human = env.run(&["list"]);
        let json = env.run(&["list", "--output", "json"]);
        assert_eq!(env.sim.state().log.len(), before, "list sent a request");
        assert_eq!(env.config_text(), config_before, "list changed config.toml");
        assert_eq!(human.code, 0, "{}", human.stderr);
        assert_eq!(json.code, 0, "{}", json.stderr);
        (human, json)
    };
    let (human, json) = list(&env);
    let doc = json.json();
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["command"], "list");
    assert_eq!(doc["runner_config"], env.config.display().to_string());
    let runners = doc["runners"].as_array().unwrap();
    assert_eq!(runners.len(), 5);
    for r in runners {
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        for key in [
            "name",
            "id",
            "url",
            "token",
            "token_expires_at",
            "last_checked_at",
            "last_status",
        ] {
            assert!(keys.contains(&key), "{key} missing from {r}");
        }
        assert!(r["last_checked_at"].is_null() && r["last_status"].is_null());
    }
    let by_name = |doc: &serde_json::Value, name: &str| {
        doc["runners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_name(&doc, "fine")["id"], fine.id.unwrap());
    let masked = by_name(&doc, "fine")["token"].as_str().unwrap().to_string();
    assert!(
        masked.contains('…') && masked.starts_with("glrt-"),
        "{masked}"
    );
    assert!(by_name(&doc, "tokenless")["token"].is_null());
    assert!(is_rfc3339_seconds_z(
        &by_name(&doc, "old")["token_expires_at"]
    ));
    let host = url::Url::parse(&env.url()).unwrap();
    let host = format!("{}:{}", host.host_str().unwrap(), host.port().unwrap());
    let lines: Vec<&str> = human.stdout.lines().collect();
    for name in ["fine", "old", "gone", "noid", "tokenless"] {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no line for {name}:\n{}", human.stdout));
        assert!(line.contains("never checked"), "{line}");
        if name != "tokenless" {
            assert!(line.contains(&host), "{line}");
        }
    }
    assert!(human.stdout.contains(&masked));

    let diagnose = env.run(&["diagnose"]);
    assert_eq!(diagnose.code, 1);
    let (human, json) = list(&env);
    let doc = json.json();
    assert_eq!(by_name(&doc, "fine")["last_status"], "healthy");
    assert_eq!(by_name(&doc, "old")["last_status"], "broken");
    assert_eq!(by_name(&doc, "gone")["last_status"], "broken");
    assert_eq!(by_name(&doc, "tokenless")["last_status"], "broken");
    assert_eq!(by_name(&doc, "noid")["last_status"], "healthy");
    assert!(by_name(&doc, "noid")["id"].is_null());
    for name in ["fine", "old", "gone", "noid", "tokenless"] {
        assert!(
            is_rfc3339_seconds_z(&by_name(&doc, name)["last_checked_at"]),
            "{name}: {}",
            json.stdout
        );
    }
    let fine_line = human
        .stdout
        .lines()
        .find(|l| l.starts_with("fine "))
        .unwrap();
    assert!(fine_line.ends_with("healthy"), "{fine_line}");
}

/// Run with stderr going to a file; `journal` sets JOURNAL_STREAM to that file's dev:ino (or a
/// wrong one). Returns (exit code, stderr text).
fn run_with_stderr_file(env: &TestEnv, args: &[&str], journal: Option<bool>) -> (i32, String) {
    let log = env.path(&format!("stderr-{}.log", rand_suffix()));
    let file = std::fs::File::create(&log).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = env.command(args);
    cmd.env_remove("JOURNAL_STREAM")
        .env_remove("RUNNER_MEDIC_LOG_FORMAT");
    match journal {
        Some(true) => {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        Some(false) => {
            cmd.env(
                "JOURNAL_STREAM",
                format!("{}:{}", meta.dev(), meta.ino() + 1),
            );
        }
        None => {}
    }
    let out = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::from(file))
        .status()
        .unwrap();
    let text = read(&log);
    env.assert_no_secrets(&text, "stderr");
    (out.code().unwrap_or(-1), text)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

fn looks_timestamped(line: &str) -> bool {
    // `2026-11-25T13:37:24.123456Z  INFO …`: a date at the start of the line.
    let b = line.as_bytes();
    b.len() > 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[7] == b'-'
}

#[test]
fn under_journald_every_log_line_has_its_priority_and_no_timestamp() {
    let env = TestEnv::new();
    env.write_config(&[env.healthy("fine"), env.revoked("dead")]);
    let (code, text) =
        run_with_stderr_file(&env, &["diagnose", "--log-format", "plain"], Some(true));
    assert_eq!(code, 1);
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let ok = ["<3>", "<4>", "<6>", "<7>"]
            .iter()
            .any(|p| line.starts_with(p));
        assert!(ok, "no priority prefix: {line}\n{text}");
        assert!(!looks_timestamped(&line[3..]), "timestamped: {line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<4>") && l.contains("run finished")),
        "exit 1 is logged as a warning:\n{text}"
    );
    // A rotation logs at info (the audit line among them).
    let (code, text) = run_with_stderr_file(&env, &["rotate", "--log-format", "plain"], Some(true));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("<6>") && l.contains("token rotated")),
        "{text}"
    );
    assert!(
        text.lines()
            .all(|l| l.starts_with('<') && !looks_timestamped(&l[3..])),
        "{text}"
    );

    // An error that stops the run (exit 2) is `<3>`, its fix too.
    let (code, text) = run_with_stderr_file(
        &env,
        &["diagnose", "--admin-token-file", "/nonexistent/token"],
        Some(true),
    );
    assert_eq!(code, 2);
    assert!(
        text.lines().any(|l| l.starts_with("<3>error: "))
            && text.lines().any(|l| l.starts_with("<3>fix: ")),
        "{text}"
    );

    // JOURNAL_STREAM that names another stream (a redirected child): unchanged plain lines.
    let (_, text) = run_with_stderr_file(&env, &["diagnose", "--log-format", "plain"], Some(false));
    assert!(!text.lines().any(|l| l.starts_with('<')), "{text}");
    assert!(text.lines().any(looks_timestamped), "{text}");
    let (_, text) = run_with_stderr_file(&env, &["diagnose", "--log-format", "plain"], None);
    assert!(!text.lines().any(|l| l.starts_with('<')), "{text}");

    // The cron path: `--log-format syslog` into `logger --prio-prefix`, which keeps the levels;
    // the exit status is logged with its level, since the pipe drops it.
    let (code, text) = run_with_stderr_file(&env, &["diagnose", "--log-format", "syslog"], None);
    assert_eq!(code, 0, "rotated above");
    assert!(text.lines().all(|l| l.starts_with("<6>")), "{text}");
    assert!(text.contains("exit_status=0"), "{text}");
    let cron = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/cron.d/runner-medic"),
    )
    .unwrap();
    // The job line (shipped commented out, so that installing enables nothing), not the
    // comment that explains how to enable it.
    let job = cron
        .lines()
        .find(|l| l.contains(" root ") && l.contains("runner-medic rotate"))
        .unwrap();
    assert!(
        job.contains("--log-format syslog") && job.contains("logger --prio-prefix"),
        "{job}"
    );
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
fn the_agent_serves_get_and_head_of_metrics_only_and_503_before_the_first_cycle() {
    let env = TestEnv::new();
    env.write_config(&[env.healthy("fine")]);
    // Hold config.toml's lock, as a rotation in progress would: the agent's first cycle waits.
    let held = nix::fcntl::Flock::lock(
        std::fs::File::open(&env.config).unwrap(),
        nix::fcntl::FlockArg::LockExclusive,
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let log = env.path("agent.log");
    let mut cmd = env.command(&[
        "agent",
        "--interval",
        "1s",
        "--jitter",
        "0s",
        "--listen",
        &addr,
    ]);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let _agent = Agent(cmd.spawn().unwrap());
    let client = reqwest::blocking::Client::new();
    let url = format!("http://{addr}/metrics");

    let mut first = None;
    assert!(
        eventually(|| {
            first = client.get(&url).send().ok();
            first.is_some()
        }),
        "the listener comes up"
    );
    let first = first.unwrap();
    assert_eq!(first.status(), 503);
    assert!(first
        .text()
        .unwrap()
        .contains("first check has not finished"));
    assert!(
        eventually(|| read(&log).contains("waiting for another runner-medic run to finish")),
        "the held lock is reported:\n{}",
        read(&log)
    );

    drop(held);
    let mut body = String::new();
    assert!(eventually(|| {
        client
            .get(&url)
            .send()
            .ok()
            .filter(|r| r.status() == 200)
            .and_then(|r| r.text().ok())
            .is_some_and(|t| {
                body = t;
                true
            })
    }));
    assert!(body.contains("runner_medic_runner_healthy"), "{body}");
    samples(&body);
    promtool_check_metrics(&body, "the agent's /metrics");
    env.assert_no_secrets(&body, "/metrics");

    let head = client.head(&url).send().unwrap();
    assert_eq!(head.status(), 200);
    assert!(head
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    assert!(head.text().unwrap().is_empty());
    assert_eq!(
        client
            .get(format!("http://{addr}/metrics?x=1"))
            .send()
            .unwrap()
            .status(),
        200
    );
    for path in ["/", "/metrics/", "/metricsx", "/other"] {
        let r = client.get(format!("http://{addr}{path}")).send().unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    let post = client.post(&url).send().unwrap();
    assert_eq!(post.status(), 405);
    assert_eq!(post.headers().get("allow").unwrap(), "GET, HEAD");
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

/// Flags that a settings key also sets: the packaged units and cron job leave them to
/// settings.toml, so an operator's setting is never overridden by a unit file.
const SETTING_FLAGS: [&str; 13] = [
    "--metrics-file",
    "--listen",
    "--interval",
    "--jitter",
    "--runner-config",
    "--state-dir",
    "--gitlab-url",
    "--admin-token-file",
    "--renew-before",
    "--strategy",
    "--service-manager",
    "--service-name",
    "--no-restart",
];

#[test]
fn packaged_units_pass_no_flag_a_setting_sets_and_the_packaged_settings_parse() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut commands = Vec::new();
    for unit in ["runner-medic.service", "runner-medic-agent.service"] {
        let text = std::fs::read_to_string(root.join("packaging/systemd").join(unit)).unwrap();
        commands.extend(
            text.lines()
                .filter(|l| l.starts_with("ExecStart="))
                .map(str::to_string),
        );
    }
    let cron = std::fs::read_to_string(root.join("packaging/cron.d/runner-medic")).unwrap();
    commands.extend(
        cron.lines()
            .filter(|l| l.contains(" root ") && l.contains("runner-medic rotate"))
            .map(str::to_string),
    );
    assert_eq!(commands.len(), 3, "{commands:?}");
    for command in &commands {
        for flag in SETTING_FLAGS {
            assert!(
                !command
                    .split_whitespace()
                    .any(|w| w == flag || w.starts_with(&format!("{flag}="))),
                "{command} passes {flag}"
            );
        }
    }
    let text = std::fs::read_to_string(root.join("packaging/settings.toml")).unwrap();
    let settings: runner_medic::settings::SettingsFile = toml::from_str(&text).unwrap();
    assert_eq!(
        settings.metrics_file.as_deref(),
        Some(std::path::Path::new(
            "/var/lib/prometheus/node-exporter/runner-medic.prom"
        ))
    );
    assert_eq!(settings.agent.listen.as_deref(), Some("127.0.0.1:9852"));
}

#[test]
fn the_alerting_rules_pass_promtool_and_use_only_series_runner_medic_writes() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/prometheus");
    let promtool = |args: &[&str]| {
        std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "promtool is missing ({e}): `apt-get install prometheus` (the test command `.ci/test` installs it)"
                )
            })
    };
    for args in [
        ["check", "rules", "runner-medic.rules.yml"],
        ["test", "rules", "runner-medic.rules.test.yml"],
    ] {
        let out = promtool(&args);
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The rules name only series that runner-medic really writes.
    let mut env = TestEnv::new();
    env.admin_token = env.sim.state().add_pat(
        &["api"],
        true,
        Some(chrono::Utc::now().date_naive() + chrono::Duration::days(10)),
    );
    {
        let mut s = env.sim.state();
        s.settings.runner_token_expiration_interval = Some(90 * 86400);
        s.settings.project_runner_token_expiration_interval = Some(90 * 86400);
    }
    env.write_config(&[env.healthy("fine"), env.expired("old")]);
    let metrics = env.path("m.prom");
    let run = env.run(&["rotate", "--metrics-file", metrics.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let written: Vec<String> = samples(&read(&metrics))
        .into_iter()
        .map(|(name, _, _)| name)
        .collect();
    let rules = read(&dir.join("runner-medic.rules.yml"));
    let mut named = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("runner_medic_") {
            named += 1;
            assert!(
                written.iter().any(|w| w == word),
                "the rules use `{word}`, which runner-medic does not write"
            );
        }
    }
    assert!(named >= 6);
}

#[test]
fn the_json_schema_is_current_and_real_reports_validate() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.schema.json");
    let generated = format!(
        "{}\n",
        serde_json::to_string_pretty(&runner_medic::report::Report::json_schema()).unwrap()
    );
    if std::env::var_os("RUNNER_MEDIC_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/report.schema.json is not the schema of the report types; regenerate it with \
         `RUNNER_MEDIC_UPDATE_SCHEMA=1 cargo test --test it json_schema` and commit it"
    );
    let schema: serde_json::Value = serde_json::from_str(&committed).unwrap();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("docs/report.schema.json is no valid schema: {e}"));
    let check = |run: &crate::harness::Run, what: &str| {
        let report = run.json();
        let errors: Vec<String> = validator
            .iter_errors(&report)
            .map(|e| format!("{e} at {}", e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what}: the report does not match the schema:\n{}\n{}",
            errors.join("\n"),
            run.stdout
        );
    };

    let mut env = TestEnv::new();
    env.admin_token = env.sim.state().add_pat(
        &["api"],
        true,
        Some(chrono::Utc::now().date_naive() + chrono::Duration::days(100)),
    );
    env.sim.state().settings.runner_token_expiration_interval = Some(90 * 86400);
    env.write_config(&[
        env.healthy("fine"),
        env.expiring("soon", 2),
        env.expired("old"),
        env.revoked("dead"),
        env.deleted("gone"),
    ]);
    env.sim.state().inject(
        "POST /api/v4/runners/:id/reset_authentication_token",
        FaultKind::Status(500),
        Some(1_000),
    );
    let diagnose = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(diagnose.code, 1);
    check(&diagnose, "diagnose");
    assert!(diagnose.json()["admin_token_expires_at"].is_string());
    let plan = env.run(&["rotate", "--dry-run", "--output", "json"]);
    assert!(plan.json()["diff"].is_string());
    check(&plan, "rotate --dry-run");
    let failed = env.run(&["rotate", "--output", "json"]);
    assert!(
        failed.json()["runners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["error"].is_string()),
        "{}",
        failed.stdout
    );
    check(&failed, "rotate with failures");
    env.sim.state().faults.clear();
    let fixed = env.run(&["rotate", "--output", "json"]);
    assert!(fixed.json()["backup"].is_string(), "{}", fixed.stdout);
    check(&fixed, "rotate");

    // The schema can fail: a report with an unknown field or a bad status does not match.
    let mut bad = fixed.json();
    bad["runners"][0]["status"] = "fine".into();
    assert!(!validator.is_valid(&bad));
    let mut bad = fixed.json();
    bad["server_time"] = "2026-11-25T13:37:24.5+00:00".into();
    assert!(!validator.is_valid(&bad));
    let mut bad = fixed.json();
    bad["surprise"] = 1.into();
    assert!(!validator.is_valid(&bad));
}

/// node_exporter (Debian's `prometheus-node-exporter`) with only its textfile collector, on a
/// loopback port, reading `dir`: what Prometheus would scrape from the host.
struct NodeExporter {
    _child: Agent,
    url: String,
}

impl NodeExporter {
    fn start(dir: &std::path::Path, log: &std::path::Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("/usr/bin/prometheus-node-exporter")
            .args([
                "--collector.disable-defaults",
                "--collector.textfile",
                &format!("--collector.textfile.directory={}", dir.display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "node_exporter is missing ({e}): `apt-get install prometheus-node-exporter` (the test command `.ci/test` installs it)"
                )
            });
        let exporter = Self {
            _child: Agent(child),
            url: format!("http://127.0.0.1:{port}/metrics"),
        };
        let client = reqwest::blocking::Client::new();
        assert!(
            eventually(|| client.get(&exporter.url).send().is_ok()),
            "node_exporter listens:\n{}",
            read(log)
        );
        exporter
    }

    /// One scrape: the body of a 200 answer, checked by promtool, with the families of
    /// runner-medic and of the textfile collector kept (node_exporter's own go_* and process_*
    /// summaries are of no interest here).
    fn scrape(&self) -> String {
        let r = reqwest::blocking::get(&self.url).unwrap();
        assert_eq!(r.status(), 200);
        let body = r.text().unwrap();
        let kept: String = body
            .lines()
            .filter(|l| {
                let rest = l
                    .strip_prefix("# HELP ")
                    .or_else(|| l.strip_prefix("# TYPE "))
                    .unwrap_or(l);
                rest.starts_with("runner_medic_") || rest.starts_with("node_textfile_")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(kept.contains("node_textfile_scrape_error"), "{body}");
        kept
    }
}

/// `promtool check metrics` on a metrics text (its stdin): the format and Prometheus' lint rules.
fn promtool_check_metrics(text: &str, what: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is missing ({e}): `apt-get install prometheus` (the test command `.ci/test` installs it)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics of {what}:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn node_exporter_scrapes_three_same_named_runners_as_three_series_and_shows_the_broken_one() {
    let env = TestEnv::new();
    let mut entries = [
        env.healthy("ci-host-01"),
        env.revoked("ci-host-01"),
        env.healthy("ci-host-01"),
    ];
    for e in &mut entries {
        e.name = "ci-host-01".into();
    }
    env.write_config(&entries);
    let textfiles = env.path("textfile");
    std::fs::create_dir_all(&textfiles).unwrap();
    let metrics = textfiles.join("runner-medic.prom");
    let run = env.run(&["diagnose", "--metrics-file", metrics.to_str().unwrap()]);
    assert_eq!(run.code, 1, "the revoked runner is broken: {}", run.stderr);
    let file = read(&metrics);
    promtool_check_metrics(&file, "the metrics file");

    let log = env.path("node-exporter.log");
    let exporter = NodeExporter::start(&textfiles, &log);
    let scraped = exporter.scrape();
    assert_eq!(
        value(&scraped, "node_textfile_scrape_error", &[]),
        Some(0.0),
        "{scraped}\n{}",
        read(&log)
    );
    assert!(
        !read(&log).contains("collected before"),
        "no series collides:\n{}",
        read(&log)
    );
    let healthy: Vec<(BTreeMap<String, String>, f64)> = samples(&scraped)
        .into_iter()
        .filter(|(n, _, _)| n == "runner_medic_runner_healthy")
        .map(|(_, l, v)| (l, v))
        .collect();
    assert_eq!(healthy.len(), 3, "three series:\n{scraped}");
    let ids: std::collections::BTreeSet<&str> = healthy
        .iter()
        .map(|(l, _)| l["runner_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3, "three distinct runner ids: {healthy:?}");
    for (e, want) in entries.iter().zip([1.0, 0.0, 1.0]) {
        let id = e.id.unwrap().to_string();
        assert_eq!(
            value(
                &scraped,
                "runner_medic_runner_healthy",
                &[("runner_id", &id), ("name", "ci-host-01")]
            ),
            Some(want),
            "runner {id}:\n{scraped}"
        );
    }
    let broken = entries[1].id.unwrap().to_string();
    assert_eq!(
        value(
            &scraped,
            "runner_medic_runner_status",
            &[("runner_id", &broken), ("status", "broken")]
        ),
        Some(1.0),
        "{scraped}"
    );
    assert_eq!(
        value(&scraped, "runner_medic_last_run_exit_code", &[]),
        Some(1.0)
    );
    // One config.toml watched: no `config` label.
    assert!(
        samples(&scraped)
            .iter()
            .all(|(_, l, _)| !l.contains_key("config")),
        "{scraped}"
    );
}

#[test]
fn with_two_config_files_every_series_carries_its_config_and_node_exporter_reads_both() {
    let mut env = TestEnv::new();
    let textfiles = env.path("textfile");
    std::fs::create_dir_all(&textfiles).unwrap();
    // Two config.toml files of one host, each with a runner named after the host, one of them
    // broken; each run writes its own metrics file into the textfile directory.
    let first = env.config.clone();
    let mut a = env.healthy("ci-host-01");
    a.name = "ci-host-01".into();
    env.write_config(&[a.clone()]);
    let second = env.path("second.toml");
    env.config = second.clone();
    let mut b = env.revoked("ci-host-01");
    b.name = "ci-host-01".into();
    env.write_config(&[b.clone()]);

    env.config = first.clone();
    let a_file = textfiles.join("runner-medic-first.prom");
    let run = env.run(&["diagnose", "--metrics-file", a_file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        !read(&a_file).contains("config=\""),
        "only one config.toml watched so far:\n{}",
        read(&a_file)
    );
    env.config = second.clone();
    let b_file = textfiles.join("runner-medic-second.prom");
    let run = env.run(&["diagnose", "--metrics-file", b_file.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    env.config = first.clone();
    let run = env.run(&["diagnose", "--metrics-file", a_file.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);

    for (file, config) in [(&a_file, &first), (&b_file, &second)] {
        let text = read(file);
        promtool_check_metrics(&text, &file.display().to_string());
        for (name, labels, _) in samples(&text) {
            assert_eq!(
                labels.get("config").map(String::as_str),
                config.to_str(),
                "{name} {labels:?} in {}",
                file.display()
            );
        }
    }

    let log = env.path("node-exporter.log");
    let exporter = NodeExporter::start(&textfiles, &log);
    let scraped = exporter.scrape();
    assert_eq!(
        value(&scraped, "node_textfile_scrape_error", &[]),
        Some(0.0),
        "{scraped}\n{}",
        read(&log)
    );
    let healthy = |config: &std::path::Path, e: &Entry| {
        value(
            &scraped,
            "runner_medic_runner_healthy",
            &[
                ("config", config.to_str().unwrap()),
                ("runner_id", &e.id.unwrap().to_string()),
                ("name", "ci-host-01"),
            ],
        )
    };
    assert_eq!(healthy(&first, &a), Some(1.0), "{scraped}");
    assert_eq!(healthy(&second, &b), Some(0.0), "{scraped}");
    for (config, code) in [(&first, 0.0), (&second, 1.0)] {
        assert_eq!(
            value(
                &scraped,
                "runner_medic_last_run_exit_code",
                &[("config", config.to_str().unwrap())]
            ),
            Some(code),
            "{scraped}"
        );
    }
}
