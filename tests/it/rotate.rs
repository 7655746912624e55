//! rotate: new tokens, config.toml rewritten, service restarted, runner verified, through the
//! real binary against the simulator and a stand-in gitlab-runner process.

use gitlab_sim::{RunnerType, Simulator};

use crate::harness::{mode, wait_polling_with, Entry, StandIn, TestEnv};

/// Lines of config.toml that changed, as (removed, added).
fn changed(before: &str, after: &str) -> Vec<String> {
    similar::TextDiff::from_lines(before, after)
        .iter_all_changes()
        .filter(|c| c.tag() != similar::ChangeTag::Equal)
        .map(|c| c.value().trim().to_string())
        .collect()
}

fn only_credentials_changed(before: &str, after: &str) {
    for line in changed(before, after) {
        let key = line.split(['=', ' ']).next().unwrap_or("");
        assert!(
            ["id", "token", "token_obtained_at", "token_expires_at"].contains(&key),
            "unexpected changed line: {line}"
        );
    }
}

fn with_stand_in(env: &mut TestEnv) -> StandIn {
    let s = StandIn::install(env);
    env.extra_settings.push_str(&s.settings());
    assert!(s.ctl("start"), "stand-in starts");
    s
}

#[test]
fn expired_token_is_reset_and_the_runner_polls_again() {
    let mut env = TestEnv::new();
    let old = env.expired("build");
    let before = env.write_config(&[old.clone(), env.healthy("other")]);
    let runner = with_stand_in(&mut env);
    let first_pid = runner.pid().unwrap();
    let run = env.run(&["rotate", "--restart", "always", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = run.runner("build");
    assert_eq!(r["action"], "reset");
    assert_eq!(r["outcome"], "done");
    let new = env.config_token("build");
    assert_ne!(new, old.token);
    assert!(env.token_works(&new));
    assert_eq!(
        env.config_id("build"),
        Some(old.id.unwrap() as i64),
        "reset keeps the id"
    );
    only_credentials_changed(&before, &env.config_text());
    assert_eq!(mode(&env.config), 0o600);
    assert_eq!(
        env.sim
            .state()
            .requests_to("POST", "/api/v4/runners/:id/reset_authentication_token"),
        1
    );
    // The service was restarted once and the new process polls with the new token.
    assert_ne!(runner.pid().unwrap(), first_pid);
    assert!(
        wait_polling_with(&env, &new),
        "the runner polls with its new token"
    );
    assert_eq!(run.json()["service"]["stopped"], true);
    assert_eq!(run.json()["service"]["started"], true);
    // A backup, private.
    let backup = run.json()["backup"].as_str().unwrap().to_string();
    assert_eq!(mode(std::path::Path::new(&backup)), 0o600);
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), before);
    // The journal is gone once the rotation completed.
    assert!(std::fs::read_dir(env.state.join("journal"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn deleted_runner_is_recreated_with_a_new_id() {
    let mut env = TestEnv::new();
    let old = env.deleted("lost");
    env.extra_settings = "[templates.lost]\nrunner_type = \"group_type\"\ngroup_id = 7\ndescription = \"lost\"\ntag_list = [\"linux\", \"arm\"]\nmaximum_timeout = 3600\n".into();
    env.write_config(std::slice::from_ref(&old));
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.runner("lost")["action"], "recreate");
    let new_id = env.config_id("lost").unwrap() as u64;
    assert_ne!(Some(new_id), old.id);
    let s = env.sim.state();
    let created = &s.runners[&new_id];
    assert_eq!(created.tag_list, vec!["linux", "arm"]);
    assert_eq!(created.group_id, Some(7));
    assert_eq!(created.maximum_timeout, Some(3600));
    assert!(created
        .maintenance_note
        .as_deref()
        .unwrap()
        .contains("runner-medic"));
    assert_eq!(created.token, env.config_token("lost"));
}

#[test]
fn deleted_runner_without_a_template_needs_a_person() {
    let env = TestEnv::new();
    env.write_config(&[env.deleted("lost")]);
    let before = env.config_text();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 1);
    let r = run.runner("lost");
    assert_eq!(r["action"], "manual");
    assert!(r["error"]
        .as_str()
        .unwrap()
        .contains("[templates.\"lost\"]"));
    assert_eq!(env.config_text(), before);
    assert!(env.changing_requests().is_empty());
}

#[test]
fn strategy_recreate_replaces_and_deletes_the_old_record() {
    let env = TestEnv::new();
    let old = env.revoked("swap");
    env.write_config(std::slice::from_ref(&old));
    let run = env.run(&["rotate", "--strategy", "recreate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let new_id = env.config_id("swap").unwrap() as u64;
    let s = env.sim.state();
    assert!(
        !s.runners.contains_key(&old.id.unwrap()),
        "the replaced record is deleted"
    );
    let created = &s.runners[&new_id];
    assert_eq!(
        created.description, "swap",
        "settings copied from the old record"
    );
    assert_eq!(created.tag_list, vec!["linux"]);
    assert_eq!(created.runner_type, RunnerType::ProjectType);
    assert_eq!(created.project_id, Some(42));
}

#[test]
fn revoked_token_is_reset() {
    let env = TestEnv::new();
    let old = env.revoked("rev");
    env.write_config(std::slice::from_ref(&old));
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.runner("rev")["action"], "reset");
    assert!(env.token_works(&env.config_token("rev")));
}

#[test]
fn token_near_expiry_is_renewed_without_a_privileged_token() {
    let mut env = TestEnv::new();
    env.use_admin = false;
    let old = env.expiring("soon", 2);
    let before = env.write_config(std::slice::from_ref(&old));
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.runner("soon")["action"], "renew");
    let new = env.config_token("soon");
    assert!(env.token_works(&new));
    assert!(!env.token_works(&old.token));
    let s = env.sim.state();
    assert_eq!(
        s.requests_to("POST", "/api/v4/runners/reset_authentication_token"),
        1
    );
    assert!(
        s.log.iter().all(|e| e.credential_kind != "private_token"),
        "no privileged call"
    );
    drop(s);
    only_credentials_changed(&before, &env.config_text());
    // The new expiry from GitLab's answer is in the file (the simulator has no policy: no expiry).
    assert!(env
        .config_text()
        .contains("token_expires_at = 0001-01-01T00:00:00Z"));
}

#[test]
fn healthy_runner_is_left_alone() {
    let env = TestEnv::new();
    env.write_config(&[env.healthy("fine")]);
    let before = std::fs::read(&env.config).unwrap();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0);
    assert_eq!(run.runner("fine")["action"], "none");
    assert_eq!(std::fs::read(&env.config).unwrap(), before);
    assert!(
        env.changing_requests().is_empty(),
        "{:?}",
        env.changing_requests()
    );
    assert!(
        !env.state.join("backups").exists(),
        "no backup when nothing is written"
    );
}

#[test]
fn force_rotates_healthy_tokens() {
    let env = TestEnv::new();
    let old = env.healthy("fine");
    env.write_config(std::slice::from_ref(&old));
    let run = env.run(&["rotate", "--force", "--output", "json"]);
    assert_eq!(run.code, 0);
    assert_eq!(run.runner("fine")["action"], "renew");
    assert_ne!(env.config_token("fine"), old.token);
}

#[test]
fn five_runners_in_mixed_states_one_stop_one_start() {
    let mut env = TestEnv::new();
    env.extra_settings =
        "[templates.del]\nrunner_type = \"instance_type\"\ndescription = \"del\"\n".into();
    let entries = [
        env.healthy("fine"),
        env.expired("exp"),
        env.revoked("rev"),
        env.deleted("del"),
        env.expiring("soon", 1),
    ];
    env.write_config(&entries);
    let runner = with_stand_in(&mut env);
    let run = env.run(&["rotate", "--restart", "always", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for (name, action) in [
        ("fine", "none"),
        ("exp", "reset"),
        ("rev", "reset"),
        ("del", "recreate"),
        ("soon", "renew"),
    ] {
        assert_eq!(run.runner(name)["action"], action, "{name}");
    }
    // One stop (SIGQUIT) and one start after the initial one.
    assert_eq!(runner.count("SIGQUIT"), 1, "{}", runner.log());
    assert_eq!(runner.count("started pid="), 2, "{}", runner.log());
    for name in ["exp", "rev", "del", "soon", "fine"] {
        let token = env.config_token(name);
        assert!(wait_polling_with(&env, &token), "{name} polls again");
    }
}

#[test]
fn dry_run_changes_nothing_and_prints_a_masked_diff() {
    let mut env = TestEnv::new();
    let old = env.expired("exp");
    env.write_config(&[old.clone(), env.healthy("fine")]);
    let runner = with_stand_in(&mut env);
    let before = std::fs::read(&env.config).unwrap();
    let run = env.run(&["rotate", "--dry-run"]);
    assert_eq!(run.code, 0, "the plan fixes everything: {}", run.stdout);
    assert_eq!(std::fs::read(&env.config).unwrap(), before);
    assert!(
        env.changing_requests().is_empty(),
        "{:?}",
        env.changing_requests()
    );
    assert_eq!(runner.count("SIGQUIT"), 0, "the service was not touched");
    assert!(
        run.stdout.contains("POST "),
        "lists the calls: {}",
        run.stdout
    );
    assert!(run.stdout.contains("/reset_authentication_token"));
    assert!(
        run.stdout.contains("-  token = \"glrt-t3_"),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains("+  token = \"<new token from GitLab>\""));
    assert!(!run.stdout.contains(&old.token));
    assert!(
        !env.state.exists() || !env.state.join("journal").exists(),
        "no journal for a dry run"
    );
    let json = env.run(&["rotate", "--dry-run", "--output", "json"]);
    assert_eq!(json.runner("exp")["outcome"], "planned");
    assert_eq!(json.json()["dry_run"], true);
}

#[test]
fn wrong_instance_runner_never_gets_the_privileged_token() {
    let env = TestEnv::new();
    let other = Simulator::start(gitlab_sim::Options::default()).unwrap();
    let (id, token) = other.state().add_runner(gitlab_sim::NewRunner::default());
    other.state().expire_token(id);
    let foreign = Entry {
        name: "foreign".into(),
        url: other.url(),
        id: Some(id),
        token,
        obtained_at: None,
        expires_at: Some(chrono::Utc::now() - chrono::Duration::days(1)),
        extra: String::new(),
    };
    env.write_config(&[foreign, env.expired("home")]);
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 1, "the foreign runner needs a person");
    assert_eq!(run.runner("foreign")["action"], "manual");
    assert!(run.codes("foreign").contains(&"url_mismatch".into()));
    assert_eq!(run.runner("home")["outcome"], "done");
    let s = other.state();
    assert!(
        s.log.iter().all(|e| e.credential_kind != "private_token"),
        "privileged token reached the other instance"
    );
    assert!(!s
        .log
        .iter()
        .any(|e| e.credential.as_deref() == Some(env.admin_token.as_str())));
}

#[test]
fn crash_after_the_token_is_obtained_then_a_second_run_finishes() {
    let mut env = TestEnv::new();
    env.extra_settings =
        "[templates.lost]\nrunner_type = \"instance_type\"\ndescription = \"lost\"\n".into();
    env.write_config(&[env.deleted("lost")]);
    let before = env.config_text();
    let mut cmd = env.command(&["rotate"]);
    cmd.env("RUNNER_MEDIC_CRASH_AT", "after-journal-obtained");
    let crashed = env.run_cmd(cmd);
    assert_ne!(crashed.code, 0);
    assert_eq!(env.config_text(), before, "nothing written yet");
    let created = env
        .sim
        .state()
        .runners
        .values()
        .filter(|r| r.description == "lost")
        .count();
    assert_eq!(created, 1);
    // The journal holds the new token (mode 0600).
    let journal = std::fs::read_dir(env.state.join("journal"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(mode(&journal), 0o600);
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let s = env.sim.state();
    let lost: Vec<_> = s
        .runners
        .values()
        .filter(|r| r.description == "lost")
        .collect();
    assert_eq!(lost.len(), 1, "no second runner was created");
    assert_eq!(
        env.config_token("lost"),
        lost[0].token,
        "the journalled token was written"
    );
    assert_eq!(env.config_id("lost"), Some(lost[0].id as i64));
    assert_eq!(s.requests_to("POST", "/api/v4/user/runners"), 1);
}

#[test]
fn crash_with_an_uncertain_creation_finds_it_by_its_tag() {
    let mut env = TestEnv::new();
    env.extra_settings =
        "[templates.lost]\nrunner_type = \"instance_type\"\ndescription = \"lost\"\n".into();
    env.write_config(&[env.deleted("lost")]);
    let mut cmd = env.command(&["rotate"]);
    cmd.env("RUNNER_MEDIC_CRASH_AT", "after-token-obtained");
    let crashed = env.run_cmd(cmd);
    assert_ne!(crashed.code, 0);
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let s = env.sim.state();
    assert_eq!(
        s.requests_to("POST", "/api/v4/user/runners"),
        1,
        "created once"
    );
    let lost: Vec<_> = s
        .runners
        .values()
        .filter(|r| r.description == "lost")
        .collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(env.config_token("lost"), lost[0].token);
}

#[test]
fn a_second_run_is_refused_while_the_lock_is_held() {
    let env = TestEnv::new();
    env.write_config(&[env.expired("x")]);
    // The lock of the file itself (this test runs as root: the host's lock directory).
    let lock = runner_medic::fs::lock_file(
        &env.config,
        std::path::Path::new("/run/runner-medic"),
        false,
    )
    .unwrap();
    let before = env.config_text();
    let run = env.run(&["rotate"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .contains("another runner-medic run holds the lock"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("--wait"));
    assert_eq!(env.config_text(), before);
    drop(lock);
    let run = env.run(&["rotate", "--wait"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn runner_filter_limits_the_run() {
    let env = TestEnv::new();
    let a = env.expired("a");
    let b = env.expired("b");
    env.write_config(&[a.clone(), b.clone()]);
    let run = env.run(&["rotate", "--runner", "a", "--output", "json"]);
    assert_eq!(run.runner("a")["outcome"], "done");
    assert_eq!(run.runner("b")["outcome"], "skipped");
    assert_eq!(env.config_token("b"), b.token);
    assert_eq!(run.code, 1, "b is still broken");
}

#[test]
fn hooks_get_names_and_actions_never_tokens() {
    let mut env = TestEnv::new();
    let log = env.path("hooks.log");
    let l = log.display();
    env.extra_settings = format!(
        "[hooks]\npre = \"echo pre $RUNNER_MEDIC_RUNNERS $RUNNER_MEDIC_ACTIONS >> {l}\"\ndeploy = \"echo deploy $RUNNER_MEDIC_RUNNER $RUNNER_MEDIC_ACTION $RUNNER_MEDIC_RUNNER_ID >> {l}; env >> {l}\"\npost = \"echo post >> {l}\"\n"
    );
    let old = env.expired("exp");
    env.write_config(&[old.clone(), env.expiring("soon", 1)]);
    let run = env.run(&["rotate"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("pre ")
            && l.contains("exp")
            && l.contains("exp:reset")
            && l.contains("soon:renew")),
        "{text}"
    );
    assert!(
        text.contains(&format!("deploy exp reset {}", old.id.unwrap())),
        "{text}"
    );
    assert!(text.contains("deploy soon renew"));
    assert!(text.trim_end().ends_with("post") || text.contains("\npost\n"));
    env.assert_no_secrets(&text, "hook environment");
}

#[test]
fn a_failing_pre_hook_stops_the_rotation() {
    let mut env = TestEnv::new();
    env.extra_settings = "[hooks]\npre = \"echo maintenance window closed >&2; exit 3\"\n".into();
    env.write_config(&[env.expired("exp")]);
    let before = env.config_text();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 1);
    assert!(run.runner("exp")["error"]
        .as_str()
        .unwrap()
        .contains("maintenance window closed"));
    assert_eq!(env.config_text(), before);
    assert!(env.changing_requests().is_empty());
}

#[test]
fn restart_when_needed_leaves_a_renewal_to_the_runners_own_reload() {
    let mut env = TestEnv::new();
    let soon = env.expiring("soon", 1);
    env.write_config(std::slice::from_ref(&soon));
    let runner = StandIn::install(&env);
    env.extra_settings = runner
        .settings()
        .replace("[service]\n", "[service]\nrestart = \"when-needed\"\n");
    assert!(runner.ctl("start"));
    let pid = runner.pid().unwrap();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json()["service"]["stopped"], false);
    assert_eq!(runner.pid().unwrap(), pid, "not restarted");
    // The stand-in re-reads config.toml when it changes, as gitlab-runner does.
    assert!(wait_polling_with(&env, &env.config_token("soon")));
    assert!(runner.count("reloaded config") >= 1);
}

#[test]
fn no_restart_flag_writes_without_touching_the_service() {
    let mut env = TestEnv::new();
    env.write_config(&[env.expired("exp")]);
    let runner = with_stand_in(&mut env);
    let pid = runner.pid().unwrap();
    let run = env.run(&["rotate", "--no-restart", "--output", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(runner.pid().unwrap(), pid);
    assert!(wait_polling_with(&env, &env.config_token("exp")));
}

#[test]
fn the_demo_runs_the_whole_cycle() {
    let out = std::process::Command::new(crate::harness::BIN)
        .arg("demo")
        .arg("--keep")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in [
        "==== 1. diagnose",
        "==== 2. rotate --dry-run",
        "==== 3. rotate",
        "==== 4. diagnose again",
    ] {
        assert!(stdout.contains(step), "{step}");
    }
    assert!(stdout.contains("token_expired") && stdout.contains("runner_deleted"));
    assert!(
        stdout.contains("action: reset -> done") && stdout.contains("action: recreate -> done")
    );
    // The default `restart = reload`: the stand-in re-reads config.toml, nothing is stopped.
    assert!(
        stdout.contains("stopped no, started no, reloaded yes"),
        "{stdout}"
    );
    assert!(stdout.contains("summary: 3 runner(s): 3 healthy"));
    assert!(stdout.contains("demo: every runner is healthy again"));
    // No full token anywhere: every token the demo's config.toml held, before and after, is
    // looked for in its output (the demo keeps its directory for this check).
    let dir = stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("runner-medic demo in "))
        .map(std::path::PathBuf::from)
        .expect("the demo names its directory");
    // config.toml holds the new tokens, its backups the old ones.
    let mut tokens = token_values(&std::fs::read_to_string(dir.join("config.toml")).unwrap());
    let backups = walk_files(&dir.join("state/backups"));
    assert!(!backups.is_empty(), "the rotation made a backup");
    for backup in backups {
        tokens.extend(token_values(&std::fs::read_to_string(backup).unwrap()));
    }
    assert!(
        tokens.len() >= 6,
        "old and new tokens found: {}",
        tokens.len()
    );
    for t in &tokens {
        assert!(
            !stdout.contains(t.as_str()) && !stderr.contains(t.as_str()),
            "a token leaked"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The values of `token = "…"` lines.
fn token_values(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("token = \""))
        .filter_map(|rest| rest.split('"').next())
        .filter(|t| t.len() > 8)
        .map(str::to_string)
        .collect()
}

#[test]
fn a_misspelt_runner_name_gets_a_suggestion_and_nothing_happens() {
    let env = TestEnv::new();
    env.write_config(&[env.expired("build-01"), env.expired("deploy")]);
    let before = env.config_text();
    let run = env.run(&["rotate", "--runner", "biuld-01"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("no runner `biuld-01`"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("did you mean `build-01`?"),
        "{}",
        run.stderr
    );
    assert_eq!(env.config_text(), before);
    assert!(env.changing_requests().is_empty());
}

#[test]
fn an_https_gitlab_with_a_private_ca_is_rotated_through_the_runners_tls_ca_file() {
    let env = TestEnv::with_options(gitlab_sim::Options {
        tls: true,
        ..Default::default()
    });
    let ca = env.sim.ca_pem_path().unwrap().display().to_string();
    let expired = Entry {
        extra: format!("  tls-ca-file = \"{ca}\"\n"),
        ..env.expired("tls-exp")
    };
    let deleted = Entry {
        extra: format!("  tls-ca-file = \"{ca}\"\n"),
        ..env.deleted("tls-del")
    };
    let mut env = env;
    env.extra_settings =
        "[templates.tls-del]\nrunner_type = \"instance_type\"\ndescription = \"tls-del\"\n".into();
    env.write_config(&[expired, deleted]);
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(env.token_works(&env.config_token("tls-exp")));
    assert!(env.token_works(&env.config_token("tls-del")));
}

#[test]
fn a_runner_deleted_after_it_was_seen_is_recreated_with_its_own_settings() {
    let env = TestEnv::new();
    let e = env.runner("seen", RunnerType::GroupType);
    env.sim
        .state()
        .runners
        .get_mut(&e.id.unwrap())
        .unwrap()
        .tag_list = vec!["gpu".into(), "linux".into()];
    env.write_config(std::slice::from_ref(&e));
    // A routine run while it is healthy: runner-medic reads (and remembers) the record.
    assert_eq!(env.run(&["rotate"]).code, 0);
    // Someone deletes the runner in the UI.
    env.sim.state().runners.remove(&e.id.unwrap());
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.runner("seen")["action"], "recreate");
    let new_id = env.config_id("seen").unwrap() as u64;
    let s = env.sim.state();
    let created = &s.runners[&new_id];
    assert_eq!(created.runner_type, RunnerType::GroupType);
    assert_eq!(created.group_id, Some(7));
    assert_eq!(created.tag_list, vec!["gpu", "linux"]);
    assert_eq!(created.description, "seen");
}
