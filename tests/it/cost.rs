//! What runner-medic costs GitLab: requests per run, counted in the simulator's log.

use gitlab_sim::RunnerType;

use crate::harness::{Entry, TestEnv};

fn healthy_fleet(env: &TestEnv, n: usize) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            let e = env.runner(&format!("steady-{i}"), RunnerType::ProjectType);
            let mut s = env.sim.state();
            let r = s.runners.get_mut(&e.id.unwrap()).unwrap();
            r.tag_list = vec!["linux".into(), format!("slot-{i}")];
            r.maximum_timeout = Some(3600 + i as u64);
            r.more_projects = vec![43];
            e
        })
        .collect()
}

/// Requests since `from`, as `METHOD route`.
fn requests_since(env: &TestEnv, from: usize) -> Vec<String> {
    env.sim.state().log[from..]
        .iter()
        .map(|e| format!("{} {}", e.method, e.route))
        .collect()
}

#[test]
fn a_steady_state_run_sends_one_verify_per_healthy_runner_and_still_recreates_with_the_remembered_settings(
) {
    const N: usize = 6;
    let env = TestEnv::new();
    let entries = healthy_fleet(&env, N);
    env.write_config(&entries);

    // The first run reads every record (nothing is remembered yet) and checks the privileged token.
    let first = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(first.code, 0, "{}\n{}", first.stdout, first.stderr);
    let from = env.sim.state().log.len();
    assert!(from > N, "the first run read the records too");

    // The second: one verify per runner, nothing else.
    let second = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(second.code, 0, "{}\n{}", second.stdout, second.stderr);
    let sent = requests_since(&env, from);
    assert_eq!(sent.len(), N, "{sent:#?}");
    assert!(
        sent.iter().all(|r| r == "POST /api/v4/runners/verify"),
        "{sent:#?}"
    );
    // The privileged token's check is reported as remembered.
    assert_eq!(second.json()["findings"], first.json()["findings"]);
    assert_eq!(
        second.json()["admin_token_expires_at"],
        first.json()["admin_token_expires_at"]
    );

    // rotate in steady state: the same.
    let from = env.sim.state().log.len();
    let rotate = env.run(&["rotate", "--output", "json"]);
    assert_eq!(rotate.code, 0, "{}\n{}", rotate.stdout, rotate.stderr);
    assert_eq!(requests_since(&env, from).len(), N);

    // A runner deleted afterwards is recreated from the record remembered by the first run.
    let gone = entries[2].id.unwrap();
    let was = env.sim.state().runners.remove(&gone).unwrap();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = run.runner("steady-2");
    assert_eq!(r["action"], "recreate", "{r:#}");
    assert_eq!(r["outcome"], "done", "{r:#}");
    let new_id = env.config_id("steady-2").unwrap() as u64;
    assert_ne!(new_id, gone);
    let s = env.sim.state();
    let created = &s.runners[&new_id];
    assert_eq!(created.runner_type, RunnerType::ProjectType);
    assert_eq!(created.project_id, was.project_id);
    assert_eq!(created.more_projects, was.more_projects);
    assert_eq!(created.tag_list, was.tag_list);
    assert_eq!(created.maximum_timeout, was.maximum_timeout);
    assert_eq!(created.token, env.config_token("steady-2"));
}

#[test]
fn a_paused_runner_is_looked_at_on_every_run_and_a_stale_record_is_read_again() {
    let mut env = TestEnv::new();
    let a = env.healthy("calm");
    let b = env.healthy("napping");
    env.write_config(&[a.clone(), b.clone()]);
    env.sim
        .state()
        .runners
        .get_mut(&b.id.unwrap())
        .unwrap()
        .paused = true;
    let first = env.run(&["diagnose", "--output", "json"]);
    assert!(first
        .codes("napping")
        .contains(&"runner_paused".to_string()));

    // Paused: its record is read again, and the warning stays while it is paused.
    let from = env.sim.state().log.len();
    let second = env.run(&["diagnose", "--output", "json"]);
    assert!(second
        .codes("napping")
        .contains(&"runner_paused".to_string()));
    let sent = requests_since(&env, from);
    assert_eq!(
        sent.iter()
            .filter(|r| *r == "GET /api/v4/runners/:id")
            .count(),
        1,
        "{sent:#?}"
    );
    assert_eq!(
        sent.len(),
        2 + 1 + 2,
        "two verifies, one record, the privileged check: {sent:#?}"
    );

    // Resumed: the next run sees it, and the one after that sends verifies only.
    env.sim
        .state()
        .runners
        .get_mut(&b.id.unwrap())
        .unwrap()
        .paused = false;
    let third = env.run(&["diagnose", "--output", "json"]);
    assert!(!third
        .codes("napping")
        .contains(&"runner_paused".to_string()));
    let from = env.sim.state().log.len();
    env.run(&["diagnose", "--output", "json"]);
    assert_eq!(requests_since(&env, from).len(), 2);

    // Records older than `record_refresh` are read again.
    env.extra_settings.push_str("record_refresh = \"1s\"\n");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let from = env.sim.state().log.len();
    env.run(&["diagnose", "--output", "json"]);
    let sent = requests_since(&env, from);
    assert_eq!(
        sent.iter()
            .filter(|r| *r == "GET /api/v4/runners/:id")
            .count(),
        2,
        "{sent:#?}"
    );
}

#[test]
fn a_dead_token_still_has_its_record_read_when_the_remembered_one_is_fresh() {
    let env = TestEnv::new();
    let a = env.healthy("was-fine");
    env.write_config(std::slice::from_ref(&a));
    env.run(&["diagnose", "--output", "json"]);
    // Revoked since: the record (still there, unexpired token) makes it `token_revoked`.
    env.sim.state().reset_token(a.id.unwrap());
    let from = env.sim.state().log.len();
    let run = env.run(&["diagnose", "--output", "json"]);
    assert!(
        run.codes("was-fine").contains(&"token_revoked".to_string()),
        "{}",
        run.stdout
    );
    let sent = requests_since(&env, from);
    assert!(
        sent.contains(&"GET /api/v4/runners/:id".to_string()),
        "{sent:#?}"
    );
    assert!(
        sent.contains(&"GET /api/v4/personal_access_tokens/self".to_string()),
        "the privileged token is checked again before it is used: {sent:#?}"
    );
}

/// A throttle that would be overrun: its `RateLimit-Remaining` slows runner-medic down before
/// GitLab has to refuse anything, across concurrent requests and both kinds of token.
#[test]
fn a_low_ratelimit_remaining_slows_the_pace_before_any_429() {
    let env = TestEnv::new();
    let entries = healthy_fleet(&env, 8);
    env.write_config(&entries);
    // 8 verifies, 8 record reads and the privileged check: 18 requests, 12 allowed per 2 s.
    env.sim.state().throttle = Some(gitlab_sim::Throttle::new(12, 2, true));
    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let s = env.sim.state();
    assert_eq!(s.throttle.as_ref().unwrap().refused, 0);
    assert_eq!(s.requests_to("GET", "/api/v4/runners/:id"), 8);
    assert!(s.log.iter().all(|e| e.status != 429));
}
