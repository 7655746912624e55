//! Fidelity: runner-medic reads config.toml and GitLab's answers the way gitlab-runner and GitLab
//! do. Each test drives the real binary against the simulator, whose behaviour here cites the
//! GitLab or gitlab-runner source it follows.

use gitlab_sim::RunnerType;

use crate::harness::{Entry, Run, TestEnv};

fn finding(run: &Run, name: &str, code: &str) -> serde_json::Value {
    run.finding(name, code)
}

fn text(f: &serde_json::Value, key: &str) -> String {
    f[key].as_str().unwrap_or_default().to_string()
}

/// gitlab-runner's `fixCIURL` drops a trailing `/ci` (or `/ci/`): runner-medic calls
/// `/api/v4/...` like gitlab-runner, says so in a warning, and never rewrites the url.
#[test]
fn legacy_ci_suffix_is_dropped_like_gitlab_runner_does() {
    let env = TestEnv::new();
    // The simulator answers the `/ci`-prefixed API with 404, as GitLab does.
    let probe = reqwest::blocking::Client::new()
        .post(format!("{}/ci/api/v4/runners/verify", env.url()))
        .json(&serde_json::json!({"token": "glrt-x"}))
        .send()
        .unwrap();
    assert_eq!(probe.status().as_u16(), 404);
    env.sim.state().log.clear();

    let ok = Entry {
        url: format!("{}/ci", env.url()),
        ..env.healthy("legacy")
    };
    let rev = Entry {
        url: format!("{}/ci/", env.url()),
        ..env.revoked("legacy-rev")
    };
    env.write_config(&[ok.clone(), rev]);
    let run = env.run(&["diagnose", "--output", "json"]);
    assert!(
        run.codes("legacy").is_empty(),
        "a /ci url is healthy: {}",
        run.stdout
    );
    assert_eq!(run.codes("legacy-rev"), vec!["token_revoked"]);
    assert!(
        run.stderr.contains("legacy `/ci`"),
        "the suffix is noted: {}",
        run.stderr
    );
    {
        let s = env.sim.state();
        assert!(
            s.log.iter().all(|e| !e.path.starts_with("/ci/")),
            "no request to /ci/api/v4: {:?}",
            s.log.iter().map(|e| &e.path).collect::<Vec<_>>()
        );
        assert!(s.requests_to("POST", "/api/v4/runners/verify") >= 2);
    }

    // It rotates: a renewal with the runner's own token, a reset with the privileged one (the
    // url without `/ci` is `--gitlab-url`, so no url_mismatch).
    let run = env.run(&["rotate", "--force", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.runner("legacy")["action"], "renew");
    assert_eq!(run.runner("legacy")["outcome"], "done");
    assert_eq!(run.runner("legacy-rev")["action"], "reset");
    assert!(env.token_works(&env.config_token("legacy")));
    assert!(env.token_works(&env.config_token("legacy-rev")));
    assert_ne!(env.config_token("legacy"), ok.token);
    assert!(
        env.config_text()
            .contains(&format!("url = \"{}/ci\"", env.url())),
        "the url is left as written"
    );
    assert!(env
        .sim
        .state()
        .log
        .iter()
        .all(|e| !e.path.starts_with("/ci/")));
}

/// `.runner_system_id` is read from the directory of the config path as given, not of the
/// symlink's target, as gitlab-runner does (`filepath.Dir(pathname)`).
#[test]
fn system_id_is_read_beside_the_config_path_as_given() {
    let env = TestEnv::new();
    let real_dir = env.path("real");
    std::fs::create_dir(&real_dir).unwrap();
    std::fs::write(real_dir.join("config.toml"), "").unwrap();
    std::os::unix::fs::symlink(real_dir.join("config.toml"), &env.config).unwrap();
    std::fs::write(real_dir.join(".runner_system_id"), "s_targetdir001\n").unwrap();
    std::fs::write(env.path(".runner_system_id"), "s_linkdir00001\n").unwrap();
    env.write_config(&[env.healthy("linked")]);
    assert!(std::fs::symlink_metadata(&env.config)
        .unwrap()
        .file_type()
        .is_symlink());

    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let s = env.sim.state();
    let verifies: Vec<_> = s
        .log
        .iter()
        .filter(|e| e.route == "/api/v4/runners/verify")
        .collect();
    assert!(!verifies.is_empty());
    for v in verifies {
        assert_eq!(v.system_id.as_deref(), Some("s_linkdir00001"));
    }
}

/// gitlab-runner 18.10+ expands `$VAR`/`${VAR}` in `token` and `url`: the value lives where the
/// variable is set, so runner-medic names the variable and never rewrites the entry.
#[test]
fn token_and_url_from_environment_are_left_where_they_are_set() {
    let env = TestEnv::new();
    let tok = Entry {
        token: "${RUNNER_TOKEN_1}".into(),
        ..env.expired("envtok")
    };
    let url = Entry {
        url: "$GITLAB_URL".into(),
        ..env.healthy("envurl")
    };
    let before = env.write_config(&[tok, url]);
    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(run.code, 0, "warnings only: {}", run.stdout);
    assert_eq!(run.codes("envtok"), vec!["token_from_environment"]);
    assert_eq!(run.codes("envurl"), vec!["token_from_environment"]);
    let f = finding(&run, "envtok", "token_from_environment");
    assert_eq!(f["severity"], "warning");
    assert!(text(&f, "message").contains("`RUNNER_TOKEN_1`"), "{f}");
    assert!(text(&f, "fix").contains("where it is set"), "{f}");
    let f = finding(&run, "envurl", "token_from_environment");
    assert!(text(&f, "message").contains("`url`"), "{f}");
    assert!(text(&f, "message").contains("`GITLAB_URL`"), "{f}");
    assert!(
        env.sim.state().log.iter().all(|e| !e
            .credential
            .as_deref()
            .unwrap_or_default()
            .contains('$')),
        "a variable reference is never sent as a token"
    );

    let run = env.run(&["rotate", "--output", "json"]);
    for name in ["envtok", "envurl"] {
        let r = run.runner(name);
        assert_eq!(r["action"], "manual", "{r}");
        assert!(text(&r, "error").contains("where it is set"), "{r}");
    }
    assert_eq!(run.code, 1, "a person must act");
    assert_eq!(env.config_text(), before, "config.toml untouched");
    assert!(env.changing_requests().is_empty());
}

/// A refused token with no `token_expires_at` in config.toml: the runner record's
/// `token_expires_at` (newer GitLab) tells expired from revoked; without it the finding says it
/// cannot tell.
#[test]
fn expired_and_revoked_are_told_apart_by_the_runner_record() {
    let env = TestEnv::new();
    env.sim.state().record_has_token_expiry = true;
    let mut exp = env.runner("exp", RunnerType::ProjectType);
    env.sim.state().expire_token(exp.id.unwrap());
    exp.expires_at = None;
    let rev = env.revoked("rev");
    assert!(rev.expires_at.is_none());
    env.write_config(&[exp, rev.clone()]);
    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(run.code, 1);
    assert_eq!(run.codes("exp"), vec!["token_expired"], "{}", run.stdout);
    let f = finding(&run, "exp", "token_expired");
    assert!(
        text(&f, "message").contains("GitLab's runner record"),
        "{f}"
    );
    assert!(run.runner("exp")["token_expires_at"].is_string());
    assert_eq!(run.codes("rev"), vec!["token_revoked"]);
    let f = finding(&run, "rev", "token_revoked");
    assert!(text(&f, "message").contains("never expires"), "{f}");

    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(run.runner("exp")["action"], "reset");
    assert!(env.token_works(&env.config_token("exp")));

    // GitLab up to 18.x: no `token_expires_at` on the record, none in config.toml.
    let old = TestEnv::new();
    let rev = old.revoked("rev");
    old.write_config(&[rev]);
    let run = old.run(&["diagnose", "--output", "json"]);
    let f = finding(&run, "rev", "token_revoked");
    let message = text(&f, "message");
    assert!(message.contains("expired or was revoked"), "{f}");
    assert!(!message.contains("had not expired"), "no guess: {f}");
}

/// `FF_DISABLE_AUTOMATIC_TOKEN_ROTATION`: the token is managed elsewhere. runner-medic still
/// diagnoses the runner but neither renews nor resets it.
#[test]
fn disabled_automatic_token_rotation_is_respected() {
    let env = TestEnv::new();
    let mut ff = env.expiring("ff", 2);
    ff.extra = "  [runners.feature_flags]\n    FF_DISABLE_AUTOMATIC_TOKEN_ROTATION = true\n".into();
    let mut ffenv = env.revoked("ffenv");
    ffenv.extra = "  environment = [\"FF_DISABLE_AUTOMATIC_TOKEN_ROTATION=true\"]\n".into();
    let mut off = env.expiring("off", 2);
    off.extra =
        "  [runners.feature_flags]\n    FF_DISABLE_AUTOMATIC_TOKEN_ROTATION = false\n".into();
    env.write_config(&[ff.clone(), ffenv.clone(), off.clone()]);

    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(
        run.codes("ff"),
        vec!["token_rotation_disabled", "token_expiring"],
        "still diagnosed"
    );
    assert_eq!(
        run.codes("ffenv"),
        vec!["token_rotation_disabled", "token_revoked"]
    );
    assert_eq!(run.codes("off"), vec!["token_expiring"]);
    let f = finding(&run, "ff", "token_rotation_disabled");
    assert!(
        text(&f, "message").contains("[runners.feature_flags]"),
        "{f}"
    );

    let run = env.run(&["rotate", "--output", "json"]);
    for name in ["ff", "ffenv"] {
        let r = run.runner(name);
        assert_eq!(r["action"], "manual", "{r}");
        assert!(
            text(&r, "error").contains("FF_DISABLE_AUTOMATIC_TOKEN_ROTATION"),
            "{r}"
        );
    }
    assert_eq!(run.runner("off")["action"], "renew");
    assert_eq!(env.config_token("ff"), ff.token);
    assert_eq!(env.config_token("ffenv"), ffenv.token);
    assert_ne!(env.config_token("off"), off.token);
    assert!(env.token_works(&ff.token), "ff's token was not reset");
    let s = env.sim.state();
    assert_eq!(
        s.requests_to("POST", "/api/v4/runners/reset_authentication_token"),
        1,
        "only `off` renewed"
    );
    assert_eq!(
        s.requests_to("POST", "/api/v4/runners/:id/reset_authentication_token"),
        0
    );
}

/// GitLab refuses a runner whose group or project is gone with 422 `Runner is orphaned` (or 403
/// `403 Forbidden - Runner is orphaned` behind `reject_orphaned_runners`): it is named as such,
/// not as a server error or a revoked token, and no new token is sought.
#[test]
fn an_orphaned_runner_is_named_for_what_it_is() {
    for reject_flag in [false, true] {
        let env = TestEnv::new();
        let e = env.runner("orphan", RunnerType::ProjectType);
        {
            let mut s = env.sim.state();
            s.orphaned.insert(e.id.unwrap());
            s.reject_orphaned_runners = reject_flag;
        }
        env.write_config(&[e]);
        let run = env.run(&["diagnose", "--output", "json"]);
        assert_eq!(run.code, 1);
        assert_eq!(
            run.codes("orphan"),
            vec!["runner_orphaned"],
            "flag {reject_flag}: {}",
            run.stdout
        );
        let f = finding(&run, "orphan", "runner_orphaned");
        assert_eq!(f["severity"], "error");
        assert!(text(&f, "message").contains("orphaned"), "{f}");
        let status = if reject_flag { 403 } else { 422 };
        assert!(env
            .sim
            .state()
            .log
            .iter()
            .any(|l| l.route == "/api/v4/runners/verify" && l.status == status));

        let run = env.run(&["rotate", "--output", "json"]);
        assert_eq!(run.runner("orphan")["action"], "manual");
        assert!(env.changing_requests().is_empty());
    }
}
