//! Proof that rotate is safe: a fault matrix over every API call it makes, every crash point,
//! a catalogue of bad input, secret confinement, file safety and concurrency. Each test prints a
//! `figures:` line that docs/reliability.md quotes.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use gitlab_sim::FaultKind;

use crate::harness::{mode, Entry, Run, StandIn, TestEnv};

/// After anything: config.toml parses, no runner-medic-created record is unreferenced, no
/// description is duplicated.
fn assert_consistent(env: &TestEnv, what: &str) {
    let config = runner_medic::runner_config::ConfigFile::load(&env.config)
        .unwrap_or_else(|e| panic!("{what}: config.toml broken: {e}"));
    let ids: BTreeSet<u64> = config.runners().iter().filter_map(|r| r.id).collect();
    let journal_entries: Vec<serde_json::Value> = std::fs::read_dir(env.state.join("journal"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .flat_map(|j| j["entries"].as_array().cloned().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    let journal_ids: BTreeSet<u64> = journal_entries
        .iter()
        .filter_map(|e| e["new_id"].as_u64())
        .collect();
    // A replaced record whose deletion the journal still owes may stand beside its successor.
    let pending_delete: BTreeSet<u64> = journal_entries
        .iter()
        .filter(|e| e["delete_old"] == true && e["step"] == "verified")
        .filter_map(|e| e["old_id"].as_u64())
        .collect();
    let s = env.sim.state();
    for r in s.runners.values() {
        if r.maintenance_note
            .as_deref()
            .is_some_and(|n| n.contains("runner-medic"))
        {
            assert!(
                ids.contains(&r.id) || journal_ids.contains(&r.id),
                "{what}: orphan runner {} ({})",
                r.id,
                r.description
            );
        }
    }
    let mut seen = BTreeSet::new();
    for r in s
        .runners
        .values()
        .filter(|r| !pending_delete.contains(&r.id))
    {
        assert!(
            seen.insert(r.description.clone()),
            "{what}: duplicate runner {:?}",
            r.description
        );
    }
}

/// Every runner of config.toml works.
fn assert_healthy(env: &TestEnv, names: &[&str], what: &str) {
    for name in names {
        assert!(
            env.token_works(&env.config_token(name)),
            "{what}: {name} is not healthy"
        );
    }
}

struct Scenario {
    endpoint: &'static str,
    names: &'static [&'static str],
    build: fn(&mut TestEnv) -> Vec<Entry>,
    args: &'static [&'static str],
    /// A persistent fault here leaves a runner broken (exit 1); otherwise the run still succeeds.
    critical: bool,
}

fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            endpoint: "POST /api/v4/runners/verify",
            names: &["exp"],
            build: |e| vec![e.expired("exp")],
            args: &[],
            critical: true,
        },
        Scenario {
            endpoint: "GET /api/v4/personal_access_tokens/self",
            names: &["exp"],
            build: |e| vec![e.expired("exp")],
            args: &[],
            critical: true,
        },
        Scenario {
            endpoint: "GET /api/v4/runners/:id",
            names: &["exp"],
            build: |e| vec![e.expired("exp")],
            args: &[],
            critical: true,
        },
        Scenario {
            endpoint: "POST /api/v4/runners/:id/reset_authentication_token",
            names: &["exp"],
            build: |e| vec![e.expired("exp")],
            args: &[],
            critical: true,
        },
        Scenario {
            endpoint: "POST /api/v4/runners/reset_authentication_token",
            names: &["soon"],
            build: |e| vec![e.expiring("soon", 1)],
            args: &[],
            critical: true,
        },
        Scenario {
            endpoint: "POST /api/v4/user/runners",
            names: &["del"],
            build: |e| {
                e.extra_settings.push_str(
                    "[templates.del]\nrunner_type = \"instance_type\"\ndescription = \"del\"\n",
                );
                vec![e.deleted("del")]
            },
            args: &[],
            critical: true,
        },
        Scenario {
            endpoint: "DELETE /api/v4/runners/:id",
            names: &["rev"],
            build: |e| vec![e.revoked("rev")],
            args: &["--strategy", "recreate"],
            critical: false,
        },
        Scenario {
            endpoint: "GET /api/v4/application/settings",
            names: &["exp"],
            build: |e| vec![e.expired("exp")],
            args: &[],
            critical: false,
        },
    ]
}

fn kinds() -> Vec<(&'static str, FaultKind)> {
    vec![
        ("500", FaultKind::Status(500)),
        ("502", FaultKind::Status(502)),
        ("503", FaultKind::Status(503)),
        (
            "429",
            FaultKind::RateLimited {
                retry_after_secs: 1,
            },
        ),
        ("reset", FaultKind::Reset),
        ("hang", FaultKind::Hang(Duration::from_secs(3))),
    ]
}

fn rotate(env: &TestEnv, args: &[&str]) -> Run {
    let mut all = vec!["rotate", "--output", "json"];
    all.extend_from_slice(args);
    env.run(&all)
}

#[test]
fn fault_matrix() {
    let mut cases = 0;
    for scenario in scenarios() {
        for (label, kind) in kinds() {
            for persistent in [false, true] {
                let what = format!(
                    "{} {label} {}",
                    scenario.endpoint,
                    if persistent { "persistent" } else { "once" }
                );
                let mut env = TestEnv::new();
                // A persistent 429 is retried for as long as the run's retry budget lasts: a
                // small one keeps the matrix short.
                env.extra_settings =
                    "retry_attempts = 3\nrequest_timeout = \"1s\"\nretry_budget = \"4s\"\n".into();
                let entries = (scenario.build)(&mut env);
                env.write_config(&entries);
                env.sim.state().inject(
                    scenario.endpoint,
                    kind.clone(),
                    if persistent { None } else { Some(1) },
                );
                let run = rotate(&env, scenario.args);
                assert_consistent(&env, &what);
                if persistent && scenario.critical {
                    assert_eq!(run.code, 1, "{what}: {}\n{}", run.stdout, run.stderr);
                    // The report says what went wrong: in the runners' `error` and in the
                    // findings' messages, not merely somewhere in the JSON (an action is
                    // called `reset` too).
                    let json = run.json();
                    let mut said: Vec<String> = Vec::new();
                    for f in json["findings"].as_array().into_iter().flatten() {
                        said.push(f["message"].as_str().unwrap_or_default().to_lowercase());
                    }
                    for r in json["runners"].as_array().into_iter().flatten() {
                        said.push(r["error"].as_str().unwrap_or_default().to_lowercase());
                        for f in r["findings"].as_array().into_iter().flatten() {
                            said.push(f["message"].as_str().unwrap_or_default().to_lowercase());
                        }
                    }
                    let words: &[&str] = match label {
                        "reset" => &[
                            "connection reset",
                            "reset by peer",
                            "did not answer",
                            "request failed",
                            "connect",
                        ],
                        "hang" => &["did not answer", "timed out", "timeout", "504"],
                        "429" => &["429", "rate"],
                        status => &[status],
                    };
                    assert!(
                        said.iter().any(|t| words.iter().any(|w| t.contains(w))),
                        "{what}: no error or finding says what failed ({words:?}):\n{}",
                        run.stdout
                    );
                } else {
                    assert_eq!(run.code, 0, "{what}: {}\n{}", run.stdout, run.stderr);
                    assert_healthy(&env, scenario.names, &what);
                }
                // Once the fault is gone, the next run heals everything, creating nothing twice.
                env.sim.state().faults.clear();
                let again = rotate(&env, scenario.args);
                assert_eq!(
                    again.code, 0,
                    "{what} (after): {}\n{}",
                    again.stdout, again.stderr
                );
                assert_healthy(&env, scenario.names, &what);
                assert_consistent(&env, &format!("{what} (after)"));
                let journal_left = std::fs::read_dir(env.state.join("journal"))
                    .map(|d| d.count())
                    .unwrap_or(0);
                assert_eq!(journal_left, 0, "{what}: the journal was completed");
                cases += 1;
            }
        }
    }
    println!("figures: fault matrix: {cases} cases ({} endpoints x {} faults x once/persistent), 0 corrupt configs, 0 orphan or duplicate runners", scenarios().len(), kinds().len());
    assert_eq!(cases, 8 * 6 * 2);
}

#[test]
fn answer_lost_after_the_change_happened() {
    // GitLab did the reset or the creation, but the answer never arrived.
    let mut env = TestEnv::new();
    env.extra_settings = "retry_attempts = 3\nrequest_timeout = \"1s\"\n[templates.del]\nrunner_type = \"instance_type\"\ndescription = \"del\"\n".into();
    let entries = vec![env.deleted("del"), env.expired("exp")];
    env.write_config(&entries);
    env.sim
        .state()
        .inject_after("POST /api/v4/user/runners", FaultKind::Reset, Some(1));
    env.sim.state().inject_after(
        "POST /api/v4/runners/:id/reset_authentication_token",
        FaultKind::Reset,
        Some(1),
    );
    let run = rotate(&env, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_healthy(&env, &["del", "exp"], "lost answers");
    assert_consistent(&env, "lost answers");
    assert_eq!(
        env.sim
            .state()
            .runners
            .values()
            .filter(|r| r.description == "del")
            .count(),
        1,
        "created once"
    );
}

#[test]
fn every_crash_point_recovers() {
    let mut covered = Vec::new();
    for point in runner_medic::crash::CHECKPOINTS {
        let mut env = TestEnv::new();
        env.extra_settings =
            "[templates.del]\nrunner_type = \"instance_type\"\ndescription = \"del\"\n".into();
        let entries = vec![
            env.expired("exp"),
            env.deleted("del"),
            env.expiring("soon", 1),
            env.revoked("rev"),
            env.healthy("ok"),
        ];
        env.write_config(&entries);
        let runner = StandIn::install(&env);
        // The stop → write → start cycle, whose crash points this test covers.
        env.extra_settings.push_str(
            &runner
                .settings()
                .replace("[service]\n", "[service]\nrestart = \"always\"\n"),
        );
        assert!(runner.ctl("start"));
        let mut cmd = env.command(&["rotate", "--strategy", "auto"]);
        cmd.env("RUNNER_MEDIC_CRASH_AT", point);
        // `rev` is recreated so `after-delete-replaced` is reached too.
        let mut cmd2 = cmd;
        cmd2.args([
            "--runner", "exp", "--runner", "del", "--runner", "soon", "--runner", "rev",
        ]);
        let crashed = env.run_cmd(cmd2);
        let reached = crashed.stderr.contains("crash point reached");
        if reached {
            assert_ne!(crashed.code, 0, "{point}: aborted");
            covered.push(*point);
        }
        assert!(
            runner_medic::runner_config::ConfigFile::load(&env.config).is_ok(),
            "{point}: config.toml valid after the crash"
        );
        let run = env.run(&["rotate", "--output", "json"]);
        assert_eq!(
            run.code, 0,
            "{point}: second run: {}\n{}",
            run.stdout, run.stderr
        );
        assert_healthy(&env, &["exp", "del", "soon", "rev", "ok"], point);
        assert_consistent(&env, point);
        assert_eq!(
            env.sim.state().runners.len(),
            5,
            "{point}: exactly one record per runner"
        );
        // The service runs again.
        assert!(runner.ctl("status"), "{point}: the service is running");
    }
    println!(
        "figures: crash points: {} of {} covered: {covered:?}",
        covered.len(),
        runner_medic::crash::CHECKPOINTS.len()
    );
    let missing: Vec<_> = runner_medic::crash::CHECKPOINTS
        .iter()
        .filter(|p| !covered.contains(p))
        .collect();
    assert!(
        missing.is_empty(),
        "crash points never reached: {missing:?}"
    );
}

/// A bad input: what to write, what to run, and what must come out.
struct Bad {
    name: &'static str,
    setup: Box<dyn Fn(&mut TestEnv)>,
    args: Vec<&'static str>,
    expect_code: i32,
    expect_text: &'static str,
}

#[test]
fn bad_input_catalogue() {
    let good = |env: &mut TestEnv| {
        let e = env.expired("r");
        env.write_config(&[e]);
    };
    let catalogue: Vec<Bad> = vec![
        Bad {
            name: "truncated",
            setup: Box::new(|env| {
                let e = env.expired("r");
                let t = env.write_config(&[e]);
                env.write_config_text(&t[..t.len() / 2 + 7]);
            }),
            args: vec!["rotate"],
            expect_code: 1,
            expect_text: "config_",
        },
        Bad {
            name: "binary",
            setup: Box::new(|env| {
                std::fs::write(&env.config, b"\x00\x01\xff\xfe[[runners]]\x00").unwrap()
            }),
            args: vec!["rotate"],
            expect_code: 1,
            expect_text: "config_invalid",
        },
        Bad {
            name: "huge (100 MB)",
            setup: Box::new(|env| {
                let f = std::fs::File::create(&env.config).unwrap();
                f.set_len(100 * 1024 * 1024).unwrap();
            }),
            args: vec!["rotate"],
            expect_code: 1,
            expect_text: "config_unreadable",
        },
        Bad {
            name: "duplicate keys",
            setup: Box::new(|env| {
                env.write_config_text(&format!("[[runners]]\n  name = \"r\"\n  url = \"{}\"\n  token = \"a\"\n  token = \"b\"\n", env.url()))
            }),
            args: vec!["rotate"],
            expect_code: 1,
            expect_text: "config_invalid",
        },
        Bad {
            name: "token = 5",
            setup: Box::new(|env| {
                env.write_config_text(&format!(
                    "[[runners]]\n  name = \"r\"\n  url = \"{}\"\n  token = 5\n",
                    env.url()
                ))
            }),
            args: vec!["rotate"],
            expect_code: 1,
            expect_text: "token_malformed",
        },
        Bad {
            name: "no [[runners]]",
            setup: Box::new(|env| env.write_config_text("concurrent = 1\n")),
            args: vec!["rotate"],
            expect_code: 1,
            expect_text: "no [[runners]] entries",
        },
        Bad {
            name: "unicode names",
            setup: Box::new(|env| {
                let mut e = env.expired("r");
                e.name = "ビルド-🚀\\u0007".into();
                env.write_config(&[e]);
            }),
            args: vec!["diagnose"],
            expect_code: 1,
            expect_text: "token_expired",
        },
        Bad {
            name: "symlink loop",
            setup: Box::new(|env| {
                std::os::unix::fs::symlink(env.path("loop2"), env.path("loop1")).unwrap();
                std::os::unix::fs::symlink(env.path("loop1"), env.path("loop2")).unwrap();
                std::fs::remove_file(&env.config).ok();
                std::os::unix::fs::symlink(env.path("loop1"), &env.config).unwrap();
            }),
            args: vec!["rotate"],
            expect_code: 1,
            expect_text: "config_unreadable",
        },
        Bad {
            name: "config is a directory",
            setup: Box::new(|env| std::fs::create_dir(&env.config).unwrap()),
            args: vec!["rotate"],
            expect_code: 1,
            expect_text: "not a regular file",
        },
        Bad {
            name: "group-readable admin token file",
            setup: Box::new(move |env| {
                good(env);
                let f = env.path("admin-token-loose");
                std::fs::write(&f, &env.admin_token).unwrap();
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
            }),
            args: vec!["rotate", "--admin-token-file", "ADMIN_LOOSE"],
            expect_code: 2,
            expect_text: "chmod 600",
        },
        Bad {
            name: "whitespace admin token file",
            setup: Box::new(move |env| {
                good(env);
                let f = env.path("admin-token-blank");
                std::fs::write(&f, "  \n\t\n").unwrap();
                std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
            }),
            args: vec!["rotate", "--admin-token-file", "ADMIN_BLANK"],
            expect_code: 2,
            expect_text: "is empty",
        },
        Bad {
            name: "unknown settings key",
            setup: Box::new(move |env| {
                good(env);
                env.extra_settings = "gitlab_ulr = \"x\"\n".into();
            }),
            args: vec!["rotate"],
            expect_code: 2,
            expect_text: "unknown field `gitlab_ulr`",
        },
        Bad {
            name: "malformed --gitlab-url",
            setup: Box::new(good),
            args: vec!["rotate", "--gitlab-url", "gitlab example com"],
            expect_code: 2,
            expect_text: "is not a URL",
        },
        Bad {
            name: "malformed duration",
            setup: Box::new(good),
            args: vec!["rotate", "--renew-before", "soonish"],
            expect_code: 2,
            expect_text: "is not a duration",
        },
        Bad {
            name: "unknown service manager",
            setup: Box::new(good),
            args: vec!["rotate", "--service-manager", "upstartz"],
            expect_code: 2,
            expect_text: "invalid value 'upstartz' for '--service-manager <MANAGER>'",
        },
        Bad {
            name: "unknown service manager in the settings file",
            setup: Box::new(move |env| {
                good(env);
                env.extra_settings
                    .push_str("[service]\nmanager = \"upstartz\"\n");
            }),
            args: vec!["rotate"],
            expect_code: 2,
            expect_text: "unknown service manager `upstartz` (`[service] manager`)",
        },
        Bad {
            name: "unknown flag",
            setup: Box::new(good),
            args: vec!["rotate", "--frobnicate"],
            expect_code: 2,
            expect_text: "unexpected argument",
        },
    ];
    let mut tried = 0;
    for mut bad in catalogue {
        let mut env = TestEnv::new();
        (bad.setup)(&mut env);
        let snapshot = |env: &TestEnv| std::fs::read(&env.config).ok();
        let before = snapshot(&env);
        let loose = env.path("admin-token-loose").display().to_string();
        let blank = env.path("admin-token-blank").display().to_string();
        for a in &mut bad.args {
            if *a == "ADMIN_LOOSE" {
                *a = Box::leak(loose.clone().into_boxed_str());
            } else if *a == "ADMIN_BLANK" {
                *a = Box::leak(blank.clone().into_boxed_str());
            }
        }
        let mut args = bad.args.clone();
        if args[0] != "--frobnicate" && bad.expect_code != 2 {
            args.extend(["--output", "json"]);
        }
        let run = env.run(&args);
        assert_eq!(
            run.code, bad.expect_code,
            "{}: {}\n{}",
            bad.name, run.stdout, run.stderr
        );
        let all = format!("{}{}", run.stdout, run.stderr);
        assert!(
            all.contains(bad.expect_text),
            "{}: expected {:?} in:\n{all}",
            bad.name,
            bad.expect_text
        );
        if bad.expect_code == 2 {
            assert!(
                run.stderr.contains("error:"),
                "{}: {}",
                bad.name,
                run.stderr
            );
        }
        assert_eq!(snapshot(&env), before, "{}: config.toml changed", bad.name);
        assert!(
            env.changing_requests().is_empty(),
            "{}: changing requests {:?}",
            bad.name,
            env.changing_requests()
        );
        assert!(
            !env.state.join("backups").exists(),
            "{}: a backup was written",
            bad.name
        );
        tried += 1;
    }
    println!("figures: bad input: {tried} cases, each a clear error, nothing written");
}

#[test]
fn no_secret_escapes_and_the_privileged_token_stays_home() {
    let mut env = TestEnv::new();
    env.extra_settings =
        "[templates.del]\nrunner_type = \"instance_type\"\ndescription = \"del\"\n".into();
    let other = gitlab_sim::Simulator::start(gitlab_sim::Options::default()).unwrap();
    let (fid, ftoken) = other.state().add_runner(gitlab_sim::NewRunner::default());
    other.state().expire_token(fid);
    let foreign = Entry {
        name: "foreign".into(),
        url: other.url(),
        id: Some(fid),
        token: ftoken.clone(),
        obtained_at: None,
        expires_at: None,
        extra: String::new(),
    };
    let entries = vec![
        env.expired("exp"),
        env.deleted("del"),
        env.expiring("soon", 1),
        env.healthy("ok"),
        foreign,
    ];
    env.write_config(&entries);
    let metrics = env.path("metrics.prom");
    let metrics_arg = metrics.display().to_string();
    let mut outputs = String::new();
    let mut commands = 0;
    for args in [
        vec!["diagnose"],
        vec!["diagnose", "--output", "json"],
        vec!["rotate", "--dry-run"],
        vec!["rotate", "--dry-run", "--output", "json"],
        vec!["rotate", "--output", "json", "--metrics-file", &metrics_arg],
        vec!["rotate", "--force"],
        vec!["diagnose", "--log-format", "json"],
    ] {
        let mut cmd = env.command(&args);
        cmd.env("RUST_LOG", "trace");
        let run = env.run_cmd(cmd);
        outputs.push_str(&run.stdout);
        outputs.push_str(&run.stderr);
        commands += 1;
    }
    let mut secrets = env.all_secrets();
    secrets.push(ftoken);
    secrets.extend(other.state().issued_tokens.clone());
    // Everything outside config.toml, its backups and the journal.
    let mut places: Vec<(String, String)> = vec![("stdout+stderr".into(), outputs)];
    places.push(("metrics".into(), std::fs::read_to_string(&metrics).unwrap()));
    for entry in walk(&env.state) {
        let rel = entry
            .strip_prefix(&env.state)
            .unwrap()
            .display()
            .to_string();
        places.push((format!("name of {rel}"), rel.clone()));
        if !rel.starts_with("backups") && !rel.starts_with("journal") {
            places.push((
                rel.clone(),
                std::fs::read_to_string(&entry).unwrap_or_default(),
            ));
        }
        assert_eq!(mode(&entry) & 0o077, 0, "{rel} is private");
    }
    let mut found = 0;
    for (place, text) in &places {
        for secret in &secrets {
            if text.contains(secret.as_str()) {
                found += 1;
                eprintln!("token found in {place}");
            }
        }
    }
    assert_eq!(found, 0);
    assert_eq!(mode(&env.state) & 0o777, 0o700, "state dir is 0700");
    // The privileged token went only to the configured GitLab.
    let admin_requests = env
        .sim
        .state()
        .log
        .iter()
        .filter(|e| e.credential_kind == "private_token")
        .count();
    assert!(admin_requests > 0);
    assert!(other
        .state()
        .log
        .iter()
        .all(|e| e.credential_kind != "private_token"
            && e.credential.as_deref() != Some(env.admin_token.as_str())));
    println!(
        "figures: secret confinement: {commands} commands at RUST_LOG=trace, {} secrets, {} places scanned, {found} found; privileged requests: {admin_requests} to --gitlab-url, 0 elsewhere",
        secrets.len(),
        places.len()
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}

#[test]
fn file_safety_mode_backups_and_no_write_through_a_planted_symlink() {
    let env = TestEnv::new();
    env.write_config(&[env.expired("x")]);
    std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o640)).unwrap();
    // Someone plants a symlink where the temp file goes, pointing at a file they want clobbered.
    let victim = env.path("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, env.path(".config.toml.runner-medic-tmp")).unwrap();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(mode(&env.config), 0o640);
    assert!(!std::fs::symlink_metadata(&env.config)
        .unwrap()
        .file_type()
        .is_symlink());
    let backup = run.json()["backup"].as_str().unwrap().to_string();
    assert_eq!(mode(std::path::Path::new(&backup)), 0o600);
    assert_eq!(mode(&env.state) & 0o777, 0o700);
}

#[test]
fn two_rotations_started_together_never_rotate_a_runner_twice() {
    let env = TestEnv::new();
    env.sim.state().latency = Duration::from_millis(200);
    let entries: Vec<_> = (0..3).map(|i| env.expired(&format!("r{i}"))).collect();
    env.write_config(&entries);
    let a = env
        .command(&["rotate"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let b = env
        .command(&["rotate"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    // One works; the other is refused while the first holds the lock, or, started after the
    // first finished (a loaded machine), finds nothing left to do. Never a second reset.
    let mut codes = [a.status.code().unwrap(), b.status.code().unwrap()];
    codes.sort_unstable();
    assert!(codes == [0, 2] || codes == [0, 0], "{codes:?}");
    if codes == [0, 2] {
        let refused = if a.status.code() == Some(2) { &a } else { &b };
        assert!(String::from_utf8_lossy(&refused.stderr).contains("holds the lock"));
    }
    assert_eq!(
        env.sim
            .state()
            .requests_to("POST", "/api/v4/runners/:id/reset_authentication_token"),
        3,
        "each runner reset once"
    );
    // With --wait both succeed, still one rotation per runner (the second finds nothing to do).
    let entries: Vec<_> = (3..5).map(|i| env.expired(&format!("r{i}"))).collect();
    env.write_config(&entries);
    let a = env
        .command(&["rotate", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let b = env
        .command(&["rotate", "--wait"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(
        (a.status.code(), b.status.code()),
        (Some(0), Some(0)),
        "{}\n{}\n{}\n{}",
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stdout),
        String::from_utf8_lossy(&b.stderr)
    );
    assert_eq!(
        env.sim
            .state()
            .requests_to("POST", "/api/v4/runners/:id/reset_authentication_token"),
        5
    );
}
