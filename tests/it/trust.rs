//! Trust and permissions the way gitlab-runner and GitLab have them: TLS files and the
//! certificate directory, access-token scopes per action, owners who are not administrators,
//! recreated runners that keep their projects and note, rate limits, TOML 1.1. Each test drives
//! the real binary against the simulator.

use gitlab_sim::{Options, TrustSetup};

use crate::harness::{token_in, Entry, TestEnv};

fn tls_env(trust: TrustSetup, client_cert: bool) -> TestEnv {
    TestEnv::with_options(Options {
        tls: true,
        client_cert,
        trust,
        ..Options::default()
    })
}

/// `<dir of config.toml>/certs/<name>`, created.
fn certs_file(env: &TestEnv, name: &str, from: &std::path::Path) {
    let dir = env.path("certs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(from, dir.join(name)).unwrap();
}

/// `openssl req -x509` makes a self-signed certificate with `CA:TRUE`; Go accepts it as
/// `tls-ca-file` because the server's certificate is in the pool itself. rustls alone refuses
/// it (`CaUsedAsEndEntity`); runner-medic accepts it as gitlab-runner does.
#[test]
fn a_self_signed_ca_certificate_as_tls_ca_file_is_trusted_as_gitlab_runner_trusts_it() {
    let mut env = tls_env(TrustSetup::SelfSignedCa, false);
    let pem = env.sim.ca_pem_path().unwrap().display().to_string();
    // Without it: not trusted.
    env.write_config(&[env.healthy("plain")]);
    let run = env.run(&["diagnose", "--output", "json"]);
    assert!(
        run.codes("plain").contains(&"tls_failure".to_string()),
        "{}",
        run.stdout
    );
    let expired = Entry {
        extra: format!("  tls-ca-file = \"{pem}\"\n"),
        ..env.expired("self-signed")
    };
    env.write_config(std::slice::from_ref(&expired));
    env.extra_settings = String::new();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.runner("self-signed")["action"], "reset");
    assert_eq!(run.runner("self-signed")["outcome"], "done");
    assert!(env.token_works(&env.config_token("self-signed")));
    assert_ne!(env.config_token("self-signed"), expired.token);
}

/// The leaf alone (what `openssl s_client -showcerts` prints first) as `<host>.crt` in the
/// `certs/` directory beside config.toml, with no `tls-ca-file`: trusted by exact match.
#[test]
fn a_leaf_alone_as_host_crt_in_the_certs_dir_is_trusted() {
    let env = tls_env(TrustSetup::LeafOnly, false);
    certs_file(&env, "localhost.crt", env.sim.ca_pem_path().unwrap());
    let healthy = env.healthy("leaf-ok");
    let expired = env.expired("leaf-exp");
    env.write_config(&[healthy, expired.clone()]);
    let run = env.run(&["diagnose", "--output", "json"]);
    assert!(run.codes("leaf-ok").is_empty(), "{}", run.stdout);
    assert_eq!(
        run.codes("leaf-exp"),
        vec!["token_expired"],
        "{}",
        run.stdout
    );
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(env.token_works(&env.config_token("leaf-exp")));
    assert_ne!(env.config_token("leaf-exp"), expired.token);
}

/// Go's exact match still checks the host name (`Certificate.Verify` calls `VerifyHostname`
/// before it looks the certificate up in the pool): the self-signed certificate names
/// `localhost` only, so `https://127.0.0.1` is refused even though it is in the trust file.
#[test]
fn the_exact_match_still_checks_the_host_name() {
    let mut env = tls_env(TrustSetup::SelfSignedCa, false);
    env.use_admin = false;
    let pem = env.sim.ca_pem_path().unwrap().display().to_string();
    let by_ip = Entry {
        url: format!("https://127.0.0.1:{}", env.sim.addr().port()),
        extra: format!("  tls-ca-file = \"{pem}\"\n"),
        ..env.healthy("by-ip")
    };
    let by_name = Entry {
        extra: format!("  tls-ca-file = \"{pem}\"\n"),
        ..env.healthy("by-name")
    };
    env.write_config(&[by_ip, by_name]);
    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(run.codes("by-ip"), vec!["tls_failure"], "{}", run.stdout);
    assert!(run.codes("by-name").is_empty(), "{}", run.stdout);
}

/// gitlab-runner skips a `tls-ca-file` that does not exist and uses the system's CAs
/// (`addTLSCA`); runner-medic does the same with a warning, where it used to give up.
#[test]
fn a_missing_tls_ca_file_is_a_warning_and_the_system_cas_are_used() {
    let env = TestEnv::new();
    let missing = env.path("no-such-ca.pem").display().to_string();
    let expired = Entry {
        extra: format!("  tls-ca-file = \"{missing}\"\n"),
        ..env.expired("no-ca")
    };
    env.write_config(std::slice::from_ref(&expired));
    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(
        run.codes("no-ca"),
        vec!["tls_file_unusable", "token_expired"],
        "{}",
        run.stdout
    );
    let f = &run.runner("no-ca")["findings"][0];
    assert_eq!(f["severity"], "warning");
    assert!(
        f["message"].as_str().unwrap().contains("does not exist"),
        "{f}"
    );
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(env.token_works(&env.config_token("no-ca")));
}

/// Mutual TLS with `<host>.crt`, `<host>.auth.crt` and `<host>.auth.key` from the certificate
/// directory (gitlab-runner `newClient`, `findCertificate`), for runner and privileged calls.
#[test]
fn the_client_certificate_comes_from_the_certs_dir() {
    let env = tls_env(TrustSetup::PrivateCa, true);
    let (cert, key) = env.sim.client_cert_paths().unwrap();
    let (cert, key) = (cert.to_path_buf(), key.to_path_buf());
    // Without the client certificate the handshake fails.
    certs_file(&env, "localhost.crt", env.sim.ca_pem_path().unwrap());
    env.write_config(&[env.healthy("mtls-probe")]);
    let run = env.run(&["diagnose", "--output", "json"]);
    assert!(
        run.codes("mtls-probe").contains(&"tls_failure".to_string()),
        "{}",
        run.stdout
    );
    certs_file(&env, "localhost.auth.crt", &cert);
    certs_file(&env, "localhost.auth.key", &key);
    let expired = env.expired("mtls");
    env.write_config(std::slice::from_ref(&expired));
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.runner("mtls")["outcome"], "done");
    assert!(env.token_works(&env.config_token("mtls")));
}

/// A Rack::Attack throttle that sends `RateLimit-*` but no `Retry-After`: runner-medic waits
/// for `RateLimit-Reset` (and paces itself on `RateLimit-Remaining: 0`) instead of burning its
/// few quick retries, and the rotation completes.
#[test]
fn a_throttle_with_ratelimit_headers_and_no_retry_after_is_waited_out() {
    let env = TestEnv::new();
    let a = env.expired("thr-a");
    let b = env.revoked("thr-b");
    env.write_config(&[a, b]);
    env.sim.state().throttle = Some(gitlab_sim::Throttle::new(4, 2, false));
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(env.token_works(&env.config_token("thr-a")));
    assert!(env.token_works(&env.config_token("thr-b")));
    let s = env.sim.state();
    // The run needed more than one window's quota: it crossed a reset.
    let answered = s.log.iter().filter(|e| e.status != 429).count();
    assert!(answered > 4, "{answered} requests answered");
    // It waited for the reset instead of hammering: a client that only backs off (5–50 ms in
    // these tests) is refused dozens of times per window.
    let refused = s.throttle.as_ref().unwrap().refused;
    assert!(refused <= 6, "{refused} requests refused");
}

/// 429 with no header at all (GitLab.com has sent those, gitlab-org/gitlab#365728): backoff,
/// and more tries than `retry_attempts`, as long as the retry budget lasts.
#[test]
fn a_bare_429_is_backed_off_past_the_attempt_limit() {
    let mut env = TestEnv::new();
    env.extra_settings = "retry_attempts = 3\n".into();
    let e = env.expired("bare");
    env.write_config(std::slice::from_ref(&e));
    env.sim.state().inject(
        "POST /api/v4/runners/:id/reset_authentication_token",
        gitlab_sim::FaultKind::RateLimitedBare,
        Some(6),
    );
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.runner("bare")["outcome"], "done");
    assert!(env.token_works(&env.config_token("bare")));
    assert_eq!(
        env.sim
            .state()
            .requests_to("POST", "/api/v4/runners/:id/reset_authentication_token"),
        7
    );
}

/// A wait longer than what is left of the run's retry budget is not slept: the request gives up
/// at once and the report says GitLab rate-limited it.
#[test]
fn a_wait_past_the_retry_budget_gives_up_at_once() {
    let mut env = TestEnv::new();
    env.extra_settings = "retry_budget = \"2s\"\n".into();
    let e = env.expired("long-wait");
    env.write_config(std::slice::from_ref(&e));
    env.sim.state().inject(
        "POST /api/v4/runners/:id/reset_authentication_token",
        gitlab_sim::FaultKind::RateLimited {
            retry_after_secs: 3600,
        },
        None,
    );
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.runner("long-wait")["outcome"], "failed");
    assert!(run.stdout.contains("429"), "{}", run.stdout);
    assert!(
        run.stderr.contains("retry budget"),
        "the log says why it gave up: {}",
        run.stderr
    );
    assert_eq!(
        env.sim
            .state()
            .requests_to("POST", "/api/v4/runners/:id/reset_authentication_token"),
        1
    );
}

fn reason(run: &crate::harness::Run, name: &str) -> String {
    run.runner(name)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// GitLab takes `manage_runner` for a reset by id and `create_runner` for a creation
/// (`lib/api/ci/runners.rb`, `lib/api/user_runners.rb`): a token with one of them still does
/// that half, and only the other runner is `manual`, naming the missing scope.
#[test]
fn scopes_are_checked_per_action() {
    for (scopes, works, manual, missing) in [
        (
            &["create_runner", "read_api"][..],
            "del",
            "rev",
            "manage_runner",
        ),
        (&["manage_runner"][..], "rev", "del", "create_runner"),
    ] {
        let mut env = TestEnv::new();
        env.admin_token = env.sim.state().add_pat(scopes, true, None);
        env.extra_settings =
            "[templates.del]\nrunner_type = \"instance_type\"\ndescription = \"del\"\n".into();
        let rev = env.revoked("rev");
        let del = env.deleted("del");
        env.write_config(&[rev.clone(), del.clone()]);
        let run = env.run(&["rotate", "--output", "json"]);
        let what = format!("{scopes:?}: {}\n{}", run.stdout, run.stderr);
        assert_eq!(run.runner(works)["outcome"], "done", "{what}");
        assert!(env.token_works(&env.config_token(works)), "{what}");
        assert_eq!(run.runner(manual)["action"], "manual", "{what}");
        let why = reason(&run, manual);
        assert!(why.contains(missing), "{what}");
        let token = if manual == "rev" {
            &rev.token
        } else {
            &del.token
        };
        assert_eq!(&env.config_token(manual), token, "{what}");
        let top = run.json()["findings"].clone();
        let f = top
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["code"] == "admin_token_scope_missing")
            .unwrap_or_else(|| panic!("{what}"));
        assert_eq!(f["severity"], "warning", "{what}");
    }
}

/// With Admin Mode on, an administrator's token acts as one only with the `admin_mode` scope:
/// resetting an instance runner is `manual` until the token has it.
#[test]
fn admin_mode_needs_the_admin_mode_scope_for_instance_runners() {
    let mut env = TestEnv::new();
    env.sim.state().admin_mode = true;
    let e = env.runner("inst", gitlab_sim::RunnerType::InstanceType);
    env.sim.state().reset_token(e.id.unwrap());
    env.write_config(std::slice::from_ref(&e));
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.runner("inst")["action"], "manual", "{}", run.stdout);
    assert!(
        reason(&run, "inst").contains("admin_mode"),
        "{}",
        run.stdout
    );
    assert_eq!(env.config_token("inst"), e.token);
    assert_eq!(
        env.sim
            .state()
            .requests_to("POST", "/api/v4/runners/:id/reset_authentication_token"),
        0
    );
    env.admin_token = env.sim.state().add_pat(&["api", "admin_mode"], true, None);
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.runner("inst")["outcome"], "done");
    assert!(env.token_works(&env.config_token("inst")));
}

/// A group's Owner (no administrator) settles a creation whose answer was lost: the runner is
/// looked up in `GET /groups/:id/runners`, not in the administrators' `GET /runners/all`.
#[test]
fn a_group_owner_settles_an_interrupted_creation() {
    let mut env = TestEnv::new();
    env.admin_token = env.sim.state().add_owner_pat(&["api"], &[7], &[]);
    env.extra_settings =
        "[templates.grp]\nrunner_type = \"group_type\"\ngroup_id = 7\ndescription = \"grp\"\n"
            .into();
    env.write_config(&[env.deleted("grp")]);
    // The creation happens; its answer is lost.
    env.sim.state().inject_after(
        "POST /api/v4/user/runners",
        gitlab_sim::FaultKind::Status(502),
        Some(1),
    );
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.runner("grp")["outcome"], "done");
    let s = env.sim.state();
    assert_eq!(
        s.requests_to("POST", "/api/v4/user/runners"),
        1,
        "created once"
    );
    assert!(s.requests_to("GET", "/api/v4/groups/:id/runners") >= 1);
    assert_eq!(s.requests_to("GET", "/api/v4/runners/all"), 0);
    let grp: Vec<_> = s
        .runners
        .values()
        .filter(|r| r.description == "grp")
        .collect();
    assert_eq!(grp.len(), 1);
    drop(s);
    assert!(env.token_works(&env.config_token("grp")));
}

/// A recreated project runner is assigned to every project the old one had, and keeps its
/// maintenance note with runner-medic's line after it.
#[test]
fn a_recreated_project_runner_keeps_its_projects_and_note() {
    let env = TestEnv::new();
    let old = env.revoked("multi");
    {
        let mut s = env.sim.state();
        let r = s.runners.get_mut(&old.id.unwrap()).unwrap();
        r.more_projects = vec![43, 44];
        r.maintenance_note = Some("owned by the build team; call #ci".into());
    }
    env.write_config(std::slice::from_ref(&old));
    let run = env.run(&["rotate", "--strategy", "recreate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let new_id = env.config_id("multi").unwrap() as u64;
    let s = env.sim.state();
    assert!(!s.runners.contains_key(&old.id.unwrap()));
    let created = &s.runners[&new_id];
    assert_eq!(s.runner_projects(new_id), vec![42, 43, 44]);
    let note = created.maintenance_note.as_deref().unwrap();
    assert!(
        note.starts_with("owned by the build team; call #ci\n"),
        "{note}"
    );
    assert!(note.contains("created by runner-medic"), "{note}");
    assert_eq!(s.requests_to("POST", "/api/v4/projects/:id/runners"), 2);
}

/// gitlab-runner 18.9+ (BurntSushi/toml) reads TOML 1.1, and so does runner-medic: a config.toml
/// that uses every TOML 1.1 addition (a newline and a trailing comma in an inline table, `\e` and
/// `\xHH` escapes, a time without seconds) is rotated like any other, and every byte outside the
/// credential keys stays as it was.
#[test]
fn a_toml_1_1_config_is_rotated_and_kept_byte_for_byte() {
    let env = TestEnv::new();
    let e = env.expired("t11");
    env.write_config(std::slice::from_ref(&e));
    let mut text = env.config_text();
    text.push_str(
        "  pre_build_script = \"printf '\\e[0m\\x41'\"\n  [runners.custom_build_dir]\n    enabled = true\n  [runners.cache]\n    Type = \"s3\"\n    [runners.cache.s3]\n      ServerAddress = \"s3.example.com\"\n  [runners.docker]\n    image = \"alpine\"\n    sysctls = { \"net.ipv4.ip_forward\" = \"1\",\n               \"net.core.somaxconn\" = \"1024\", }\n  [[runners.autoscaler.policy]]\n    periods = [\"* 7-19 * * mon-fri\"]\n    idle_time = 00:20\n",
    );
    env.write_config_text(&text);
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let new_token = token_in(&env.config, "t11");
    assert_ne!(new_token, e.token);
    assert_eq!(env.sim.state().runner_by_token(&new_token), e.id);
    let after = env.config_text();
    let credential = |l: &&str| {
        let key = l.trim_start();
        key.starts_with("token =")
            || key.starts_with("token_obtained_at =")
            || key.starts_with("token_expires_at =")
    };
    let kept = |t: &str| {
        t.lines()
            .filter(|l| !credential(l))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(kept(&after), kept(&text));
    assert!(
        after.contains("sysctls = { \"net.ipv4.ip_forward\" = \"1\",\n"),
        "{after}"
    );
    assert!(after.contains("idle_time = 00:20\n"), "{after}");
}
