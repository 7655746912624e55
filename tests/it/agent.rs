//! The agent: runs diagnose + rotate every interval, survives GitLab being down, stops cleanly
//! on SIGTERM; and the metrics it writes parse as Prometheus text.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gitlab_sim::FaultKind;

use crate::harness::TestEnv;

struct Agent(Child);

impl Agent {
    fn start(env: &TestEnv, extra: &[&str]) -> Self {
        let mut cmd = env.command(&["agent", "--interval", "1s", "--jitter", "0s"]);
        cmd.args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Self(cmd.spawn().unwrap())
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }

    fn term(mut self) -> (i32, String) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let child = std::mem::replace(&mut self.0, Command::new("true").spawn().unwrap());
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait (bounded) for a condition; returns whether it came true.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The sample names of a Prometheus text exposition, as a strict independent parser reads it
/// (openmetrics-parser, which shares no code with runner-medic); a rejected text fails the test.
fn parse_metrics(text: &str) -> Vec<String> {
    let exposition = openmetrics_parser::prometheus::parse_prometheus(text)
        .unwrap_or_else(|e| panic!("the Prometheus parser rejected the metrics ({e:?}):\n{text}"));
    let mut names = Vec::new();
    for (name, family) in &exposition.families {
        for _ in family.iter_samples() {
            names.push(name.clone());
        }
    }
    names
}

#[test]
fn the_agent_rotates_a_token_that_dies_while_it_runs_and_stops_on_sigterm() {
    let env = TestEnv::new();
    let e = env.healthy("worker");
    env.write_config(std::slice::from_ref(&e));
    let metrics = env.path("metrics.prom");
    let mut agent = Agent::start(&env, &["--metrics-file", metrics.to_str().unwrap()]);
    assert!(
        eventually(|| metrics.exists()),
        "the first cycle runs at start"
    );
    assert_eq!(env.config_token("worker"), e.token, "healthy: left alone");
    // Time passes on GitLab's side: the token expires (the host clock is still right).
    {
        let mut s = env.sim.state();
        s.clock_offset = chrono::Duration::days(400);
        s.date_skew = chrono::Duration::days(-400);
        let now = s.now();
        s.runners.get_mut(&e.id.unwrap()).unwrap().token_expires_at =
            Some(now - chrono::Duration::hours(1));
    }
    assert!(
        eventually(|| env.config_token("worker") != e.token),
        "the agent rotated the dead token"
    );
    assert!(env.token_works(&env.config_token("worker")));
    assert!(agent.alive());
    let (code, stderr) = agent.term();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("agent stopping") || stderr.contains("shutdown requested"),
        "{stderr}"
    );
}

#[test]
fn the_agent_keeps_running_while_gitlab_is_down() {
    let env = TestEnv::new();
    let e = env.expired("x");
    env.write_config(std::slice::from_ref(&e));
    {
        let mut s = env.sim.state();
        for endpoint in [
            "POST /api/v4/runners/verify",
            "GET /api/v4/personal_access_tokens/self",
            "GET /api/v4/runners/:id",
            "GET /api/v4/application/settings",
        ] {
            s.inject(endpoint, FaultKind::Status(503), None);
        }
    }
    let mut agent = Agent::start(&env, &[]);
    assert!(
        eventually(|| env
            .sim
            .state()
            .requests_to("POST", "/api/v4/runners/verify")
            >= 4),
        "it kept trying"
    );
    assert!(agent.alive(), "GitLab being down does not stop the agent");
    assert_eq!(env.config_token("x"), e.token);
    env.sim.state().faults.clear();
    assert!(
        eventually(|| env.config_token("x") != e.token),
        "rotated once GitLab came back"
    );
    assert!(agent.alive());
    let (code, _) = agent.term();
    assert_eq!(code, 0);
}

#[test]
fn sigterm_in_the_middle_of_a_cycle_leaves_things_consistent() {
    let env = TestEnv::new();
    env.sim.state().latency = Duration::from_millis(150);
    let entries: Vec<_> = (0..6).map(|i| env.expired(&format!("r{i}"))).collect();
    env.write_config(&entries);
    let agent = Agent::start(&env, &[]);
    // Wait until the cycle has started changing things, then stop the agent.
    assert!(eventually(|| env
        .sim
        .state()
        .log
        .iter()
        .any(|l| l.route.contains("reset_authentication_token"))));
    let (code, stderr) = agent.term();
    assert_eq!(code, 0, "{stderr}");
    // config.toml parses; a following rotate completes whatever was left and all runners work.
    assert!(runner_medic::runner_config::ConfigFile::load(&env.config).is_ok());
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for i in 0..6 {
        assert!(env.token_works(&env.config_token(&format!("r{i}"))), "r{i}");
    }
    assert_eq!(
        env.sim.state().runners.len(),
        6,
        "no runner created or lost"
    );
}

#[test]
fn metrics_file_parses_and_has_the_documented_series() {
    let env = TestEnv::new();
    env.sim.state().settings.runner_token_expiration_interval = Some(90 * 86400);
    env.sim
        .state()
        .settings
        .project_runner_token_expiration_interval = Some(90 * 86400);
    let soon = env.expiring("soon", 2);
    let old = env.expired("old");
    let old_id = old.id.unwrap();
    env.write_config(&[env.healthy("fine"), old, soon]);
    let metrics = env.path("m.prom");
    let run = env.run(&["rotate", "--metrics-file", metrics.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = std::fs::read_to_string(&metrics).unwrap();
    env.assert_no_secrets(&text, "metrics");
    let names = parse_metrics(&text);
    for series in [
        "runner_medic_last_check_timestamp_seconds",
        "runner_medic_runner_healthy",
        "runner_medic_token_expiry_timestamp_seconds",
        "runner_medic_findings",
        "runner_medic_last_rotation_timestamp_seconds",
        "runner_medic_last_run_timestamp_seconds",
        "runner_medic_last_success_timestamp_seconds",
        "runner_medic_last_run_exit_code",
        "runner_medic_run_duration_seconds",
    ] {
        assert!(
            names.iter().any(|n| n == series),
            "{series} missing from:\n{text}"
        );
    }
    let old = format!("runner_id=\"{}\",name=\"old\"", old_id);
    assert!(
        text.contains(&format!("runner_medic_runner_healthy{{{old}}} 1")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "runner_medic_runner_status{{{old},status=\"fixed\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("runner_medic_last_rotation_success{{{old}}} 1")),
        "{text}"
    );
    assert!(text.contains("runner_medic_findings{code=\"token_expired\"} 1"));
    assert!(text.contains("runner_medic_last_run_exit_code 0"), "{text}");
    // The rotated runner's expiry is the new token's (about 90 days out).
    let line = text
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "runner_medic_token_expiry_timestamp_seconds{{{old}}}"
            ))
        })
        .unwrap();
    let at: i64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(at > chrono::Utc::now().timestamp() + 80 * 86400, "{line}");
}

#[test]
fn the_agent_serves_metrics_over_http() {
    let env = TestEnv::new();
    env.write_config(&[env.healthy("fine")]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let agent = Agent::start(&env, &["--listen", &addr]);
    let mut body = String::new();
    assert!(eventually(|| {
        reqwest::blocking::get(format!("http://{addr}/metrics"))
            .ok()
            .and_then(|r| r.text().ok())
            .is_some_and(|t| {
                body = t;
                body.contains("runner_medic_runner_healthy")
            })
    }));
    parse_metrics(&body);
    agent.term();
}

#[test]
fn sighup_reloads_the_settings_and_a_bad_file_keeps_the_old_ones() {
    let env = TestEnv::new();
    env.write_config(&[env.healthy("a")]);
    let mut agent = Agent::start(&env, &[]);
    assert!(eventually(|| env
        .sim
        .state()
        .requests_to("POST", "/api/v4/runners/verify")
        >= 1));
    let pid = nix::unistd::Pid::from_raw(agent.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A broken settings file: the reload fails and the agent keeps going with what it had.
    let good = std::fs::read_to_string(&env.settings).unwrap();
    std::fs::write(&env.settings, format!("{good}\nnot_a_key = 1\n")).unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.alive());
    let before = env
        .sim
        .state()
        .requests_to("POST", "/api/v4/runners/verify");
    assert!(
        eventually(|| env
            .sim
            .state()
            .requests_to("POST", "/api/v4/runners/verify")
            > before),
        "cycles go on"
    );
    let (code, stderr) = agent.term();
    assert_eq!(code, 0);
    assert!(stderr.contains("settings reloaded"), "{stderr}");
    assert!(
        stderr.contains("reload failed; keeping the previous settings"),
        "{stderr}"
    );
}

#[test]
fn random_delay_from_cron() {
    let env = TestEnv::new();
    env.write_config(&[env.healthy("a")]);
    let run = env.run(&["rotate", "--random-delay", "1s"]);
    assert_eq!(run.code, 0);
    assert!(
        run.stderr.contains("sleeping a random delay first"),
        "{}",
        run.stderr
    );
    let bad = env.run(&["rotate", "--random-delay", "later"]);
    assert_eq!(bad.code, 2);
    assert!(bad.stderr.contains("is not a duration"));
}
