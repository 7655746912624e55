//! diagnose: one test per cause, each against the simulator through the real binary, each
//! checking the finding code, its severity and fix, the exit status, and that config.toml is
//! byte-identical afterwards.

use chrono::{Duration, Utc};
use gitlab_sim::FaultKind;

use crate::harness::{Entry, Run, TestEnv};

/// Run diagnose --output json and prove it changed nothing.
fn diagnose(env: &TestEnv) -> Run {
    let before = std::fs::read(&env.config).ok();
    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(
        std::fs::read(&env.config).ok(),
        before,
        "diagnose changed config.toml"
    );
    assert!(
        !env.sim.state().log.iter().any(|e| e.is_changing()),
        "diagnose sent a changing request: {:?}",
        env.changing_requests()
    );
    run
}

fn finding(run: &Run, name: &str, code: &str) -> serde_json::Value {
    run.finding(name, code)
}

#[test]
fn healthy_runner_exits_zero_with_no_findings() {
    let env = TestEnv::new();
    let e = env.healthy("ok");
    env.write_config(&[e]);
    let run = diagnose(&env);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(run.codes("ok").is_empty(), "{:?}", run.codes("ok"));
    let r = run.runner("ok");
    assert!(r["token"].as_str().unwrap().contains('…'));
    assert!(r["outcome"].is_null());
}

#[test]
fn expired_token() {
    let env = TestEnv::new();
    env.write_config(&[env.expired("old")]);
    let run = diagnose(&env);
    assert_eq!(run.code, 1);
    let f = finding(&run, "old", "token_expired");
    assert_eq!(f["severity"], "error");
    assert_eq!(f["fix"], "runner-medic rotate --runner old");
    assert!(
        f["message"].as_str().unwrap().contains("config.toml:"),
        "names file and line: {f}"
    );
}

#[test]
fn expired_token_without_privileged_access_says_what_is_needed() {
    let mut env = TestEnv::new();
    env.use_admin = false;
    env.write_config(&[env.expired("old")]);
    let run = diagnose(&env);
    assert_eq!(run.code, 1);
    let f = finding(&run, "old", "token_expired");
    assert!(
        f["fix"].as_str().unwrap().contains("--admin-token-file"),
        "{f}"
    );
}

#[test]
fn revoked_token() {
    let env = TestEnv::new();
    env.write_config(&[env.revoked("gone")]);
    let run = diagnose(&env);
    assert_eq!(run.code, 1);
    let f = finding(&run, "gone", "token_revoked");
    assert_eq!(f["severity"], "error");
    assert!(f["message"]
        .as_str()
        .unwrap()
        .contains("record still exists"));
}

#[test]
fn deleted_runner() {
    let env = TestEnv::new();
    env.write_config(&[env.deleted("lost")]);
    let run = diagnose(&env);
    assert_eq!(run.code, 1);
    let f = finding(&run, "lost", "runner_deleted");
    assert_eq!(f["severity"], "error");
    assert!(f["fix"]
        .as_str()
        .unwrap()
        .starts_with("runner-medic rotate --runner lost"));
}

#[test]
fn paused_runner_is_a_warning() {
    let env = TestEnv::new();
    let e = env.healthy("sleepy");
    env.sim
        .state()
        .runners
        .get_mut(&e.id.unwrap())
        .unwrap()
        .paused = true;
    env.write_config(&[e]);
    let run = diagnose(&env);
    assert_eq!(run.code, 0, "a warning is not a failure");
    let f = finding(&run, "sleepy", "runner_paused");
    assert_eq!(f["severity"], "warning");
    assert!(f["fix"].as_str().unwrap().contains("paused=false"));
}

#[test]
fn token_near_expiry() {
    let env = TestEnv::new();
    env.write_config(&[env.expiring("soon", 3)]);
    let run = diagnose(&env);
    assert_eq!(run.code, 0);
    let f = finding(&run, "soon", "token_expiring");
    assert_eq!(f["severity"], "warning");
    assert!(
        f["message"].as_str().unwrap().contains("in 2 days")
            || f["message"].as_str().unwrap().contains("in 3 days"),
        "{f}"
    );
}

#[test]
fn renew_before_widens_the_window() {
    let env = TestEnv::new();
    env.write_config(&[env.expiring("later", 40)]);
    let run = diagnose(&env);
    assert!(
        run.codes("later").is_empty(),
        "40 days with an 80-day-old token is outside the default window"
    );
    let mut env2 = env;
    env2.extra_settings = "renew_before = \"60d\"\n".into();
    let run = diagnose(&env2);
    assert!(run.codes("later").contains(&"token_expiring".to_string()));
    // The flag wins over the settings file.
    let run = env2.run(&["diagnose", "--renew-before", "10d", "--output", "json"]);
    assert!(run.codes("later").is_empty());
}

#[test]
fn short_instance_token_lifetime() {
    let mut env = TestEnv::new();
    env.sim.state().settings.runner_token_expiration_interval = Some(3 * 86400);
    env.extra_settings = "renew_before = \"7d\"\n".into();
    env.write_config(&[env.healthy("a")]);
    let run = diagnose(&env);
    let f = run.json()["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "short_token_lifetime")
        .cloned()
        .expect("short_token_lifetime");
    assert_eq!(f["severity"], "warning");
    assert!(f["fix"].as_str().unwrap().contains("application/settings"));
}

#[test]
fn invalid_toml_names_line_and_column() {
    let env = TestEnv::new();
    env.write_config_text("concurrent = 1\n\n[[runners]]\n  name = \"x\n  url = \"http://x\"\n");
    let run = diagnose(&env);
    assert_eq!(run.code, 1);
    let f = &run.json()["findings"][0];
    assert_eq!(f["code"], "config_invalid");
    assert_eq!(f["line"], 4);
    assert!(f["column"].as_u64().is_some());
    assert!(
        f["message"].as_str().unwrap().contains("config.toml:4:"),
        "{f}"
    );
}

#[test]
fn unreadable_config() {
    let env = TestEnv::new();
    let run = diagnose(&env);
    assert_eq!(run.code, 1);
    assert_eq!(run.top_codes(), vec!["config_unreadable"]);
}

#[test]
fn registration_token_missing_token_and_duplicates() {
    let env = TestEnv::new();
    let good = env.healthy("good");
    let mut dup = good.clone();
    dup.name = "copy".into();
    let reg = Entry {
        name: "reg".into(),
        token: "GR1348941Z196cJVywzZpx_Ki_Cn2".into(),
        ..good.clone()
    };
    let empty = Entry {
        name: "empty".into(),
        token: String::new(),
        ..good.clone()
    };
    env.write_config(&[good, dup, reg, empty]);
    let text = env.config_text().replace("[[runners]]\n  name = \"empty\"", "[[runners]]\n  name = \"notoken\"\n  url = \"http://x.invalid\"\n\n[[runners]]\n  name = \"empty\"");
    env.write_config_text(&text);
    let run = diagnose(&env);
    assert_eq!(run.code, 1);
    assert!(run.codes("copy").contains(&"duplicate_token".into()));
    let f = finding(&run, "reg", "registration_token_in_config");
    assert!(f["fix"].as_str().unwrap().contains("--strategy recreate"));
    assert!(
        !f["message"].as_str().unwrap().contains("Z196cJVywzZpx"),
        "the registration token is masked"
    );
    assert!(run.codes("notoken").contains(&"token_missing".into()));
    assert!(run.codes("empty").contains(&"token_malformed".into()));
}

#[test]
fn wrong_type_token_is_malformed_with_its_line() {
    let env = TestEnv::new();
    env.write_config_text(&format!(
        "[[runners]]\n  name = \"num\"\n  url = \"{}\"\n  token = 5\n  executor = \"shell\"\n",
        env.url()
    ));
    let run = diagnose(&env);
    let f = finding(&run, "num", "token_malformed");
    assert_eq!(f["line"], 4);
}

#[test]
fn invalid_and_mismatched_urls() {
    let env = TestEnv::new();
    let a = Entry {
        url: "gitlab.example.com".into(),
        name: "nourl".into(),
        ..env.healthy("nourl")
    };
    let b = Entry {
        url: "http://127.0.0.1:1/".into(),
        name: "elsewhere".into(),
        ..env.healthy("elsewhere")
    };
    let c = Entry {
        url: format!(
            "{}/",
            env.url().to_uppercase().replace("HTTP://", "http://")
        ),
        name: "samehost".into(),
        ..env.healthy("samehost")
    };
    env.write_config(&[a, b, c]);
    let run = diagnose(&env);
    assert!(run.codes("nourl").contains(&"url_invalid".into()));
    assert!(run.codes("elsewhere").contains(&"url_mismatch".into()));
    assert!(
        run.codes("samehost").is_empty(),
        "trailing slash and host case are the same instance: {:?}",
        run.codes("samehost")
    );
    // The privileged token never went to the other instance (nothing listens there anyway) and
    // every privileged request went to the configured URL.
    let s = env.sim.state();
    assert!(s
        .log
        .iter()
        .filter(|e| e.credential_kind == "private_token")
        .all(|e| e.credential.as_deref() == Some(env.admin_token.as_str())));
}

#[test]
fn dns_failure() {
    let mut env = TestEnv::new();
    env.use_admin = false;
    env.write_config(&[Entry {
        url: "http://no-such-host.invalid".into(),
        ..env.healthy("dns")
    }]);
    let run = diagnose(&env);
    assert_eq!(run.code, 1);
    let f = finding(&run, "dns", "dns_failure");
    assert!(f["message"]
        .as_str()
        .unwrap()
        .contains("no-such-host.invalid"));
}

#[test]
fn connect_failure_names_the_address() {
    let mut env = TestEnv::new();
    env.use_admin = false;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.write_config(&[Entry {
        url: format!("http://127.0.0.1:{port}"),
        ..env.healthy("down")
    }]);
    let run = diagnose(&env);
    let f = finding(&run, "down", "connect_failure");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{port}")),
        "{f}"
    );
}

#[test]
fn tls_failure_then_success_with_tls_ca_file() {
    let mut env = TestEnv::with_options(gitlab_sim::Options {
        tls: true,
        ..Default::default()
    });
    env.use_admin = false;
    let e = env.healthy("tls");
    env.write_config(std::slice::from_ref(&e));
    let run = diagnose(&env);
    let f = finding(&run, "tls", "tls_failure");
    assert!(f["fix"].as_str().unwrap().contains("tls-ca-file"));
    let ca = env.sim.ca_pem_path().unwrap().display().to_string();
    env.write_config(&[Entry {
        extra: format!("  tls-ca-file = \"{ca}\"\n"),
        ..e
    }]);
    let run = diagnose(&env);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(run.codes("tls").is_empty());
}

#[test]
fn server_error_is_reported_not_mistaken_for_a_dead_token() {
    let env = TestEnv::new();
    env.write_config(&[env.healthy("busy")]);
    env.sim
        .state()
        .inject("POST /api/v4/runners/verify", FaultKind::Status(500), None);
    let run = diagnose(&env);
    assert_eq!(run.code, 1);
    let codes = run.codes("busy");
    assert!(codes.contains(&"server_error".into()), "{codes:?}");
    assert!(!codes.iter().any(|c| c.starts_with("token_")), "{codes:?}");
}

#[test]
fn clock_skew_warning_and_error() {
    let env = TestEnv::new();
    env.write_config(&[env.healthy("a")]);
    env.sim.state().date_skew = Duration::seconds(120);
    let run = diagnose(&env);
    let f = run.json()["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "clock_skew")
        .cloned()
        .expect("clock_skew");
    assert_eq!(f["severity"], "warning");
    assert!(f["fix"]
        .as_str()
        .unwrap()
        .contains("timedatectl set-ntp true"));
    assert!(run.json()["clock_skew_seconds"].as_f64().unwrap() > 100.0);
    env.sim.state().date_skew = Duration::seconds(-600);
    let run = diagnose(&env);
    let f = run.json()["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "clock_skew")
        .cloned()
        .expect("clock_skew");
    assert_eq!(f["severity"], "error");
    assert_eq!(run.code, 1);
}

#[test]
fn expiry_is_judged_by_the_server_clock() {
    // config.toml says the token expires in 1 hour by the host clock, but GitLab's clock is two
    // hours ahead: by GitLab's time it expired, so verify refuses it and diagnose says expired.
    let env = TestEnv::new();
    let mut e = env.runner("late", gitlab_sim::RunnerType::InstanceType);
    e.expires_at = Some(Utc::now() + Duration::hours(1));
    env.sim
        .state()
        .runners
        .get_mut(&e.id.unwrap())
        .unwrap()
        .token_expires_at = e.expires_at;
    {
        let mut s = env.sim.state();
        s.clock_offset = Duration::hours(2);
        s.date_skew = Duration::zero();
    }
    env.write_config(&[e]);
    let run = diagnose(&env);
    assert!(
        run.codes("late").contains(&"token_expired".into()),
        "{:?}",
        run.codes("late")
    );
}

#[test]
fn invalid_admin_token() {
    let mut env = TestEnv::new();
    env.admin_token = "glpat-notavalidtokenatall1".into();
    env.write_config(&[env.healthy("a")]);
    let run = diagnose(&env);
    assert_eq!(run.code, 1);
    assert!(run.top_codes().contains(&"admin_token_invalid".into()));
}

#[test]
fn admin_token_expiring_and_missing_scopes() {
    let mut env = TestEnv::new();
    let soon = (Utc::now() + Duration::days(5)).date_naive();
    env.admin_token = env.sim.state().add_pat(&["read_api"], true, Some(soon));
    env.write_config(&[env.healthy("a")]);
    let run = diagnose(&env);
    let codes = run.top_codes();
    assert!(codes.contains(&"admin_token_expiring".into()), "{codes:?}");
    assert!(
        codes.contains(&"admin_token_scope_missing".into()),
        "{codes:?}"
    );
    assert_eq!(run.code, 1);
}

#[test]
fn several_faults_each_runner_its_own_finding() {
    let env = TestEnv::new();
    let entries = [
        env.healthy("fine"),
        env.expired("exp"),
        env.revoked("rev"),
        env.deleted("del"),
        env.expiring("soon", 2),
    ];
    env.write_config(&entries);
    let run = diagnose(&env);
    assert_eq!(run.code, 1);
    assert!(run.codes("fine").is_empty());
    assert_eq!(run.codes("exp"), vec!["token_expired"]);
    assert_eq!(run.codes("rev"), vec!["token_revoked"]);
    assert_eq!(run.codes("del"), vec!["runner_deleted"]);
    assert_eq!(run.codes("soon"), vec!["token_expiring"]);
}

#[test]
fn human_output_is_readable_and_masked() {
    let env = TestEnv::new();
    let entries = [env.healthy("fine"), env.expired("exp")];
    env.write_config(&entries);
    let out = env.run(&["diagnose"]);
    assert_eq!(out.code, 1);
    // Stable parts of the human report (ports, paths and dates vary).
    let normalized: Vec<String> = out
        .stdout
        .lines()
        .map(|l| {
            let l = l
                .replace(&env.config.display().to_string(), "[CONFIG]")
                .replace(&env.url(), "[URL]");
            l.split(" token ").next().unwrap().to_string()
        })
        .collect();
    assert!(
        normalized
            .iter()
            .any(|l| l.starts_with("runner `fine` (id ")),
        "{normalized:?}"
    );
    assert!(out.stdout.contains("[ok]"));
    assert!(out.stdout.contains("[broken]"));
    assert!(out.stdout.contains("error   token_expired: runner `exp`"));
    assert!(out
        .stdout
        .contains("        fix: runner-medic rotate --runner exp"));
    assert!(out
        .stdout
        .contains("summary: 2 runner(s): 1 healthy, 0 with warnings, 1 broken"));
    assert!(
        !out.stdout.contains("\x1b["),
        "no colour when not a terminal"
    );
    assert!(out.stdout.contains('…'), "tokens are shown masked");
}

#[test]
fn human_report_snapshot() {
    let mut env = TestEnv::new();
    env.extra_settings = "renew_before = \"7d\"\n".into();
    let entries = [
        env.healthy("docker-prod"),
        env.expired("shell-build"),
        env.deleted("k8s-deploy"),
        env.expiring("arm64", 2),
        env.revoked("windows"),
    ];
    env.write_config(&entries);
    let run = env.run(&["diagnose"]);
    assert_eq!(run.code, 1);
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(&regex_escape(&env.config.display().to_string()), "[CONFIG]");
    settings.add_filter(&regex_escape(&env.url()), "[GITLAB]");
    settings.add_filter(r"glrt-t\d_[A-Za-z0-9_-]{2}…[A-Za-z0-9_-]{2}", "[TOKEN]");
    settings.add_filter(
        r"\b\d{4}-\d{2}-\d{2}( \d{2}:\d{2}(:\d{2})?( UTC)?)?",
        "[DATE]",
    );
    settings.add_filter(r"clock skew [+-]\d+\.\d s", "clock skew [SKEW]");
    settings.add_filter(r"(id|runner with id|runner) \d{4}\b", "$1 [ID]");
    settings.add_filter(r"\d+ (seconds?|minutes?|hours?|days?)", "[SPAN]");
    settings.bind(|| insta::assert_snapshot!(run.stdout));
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if "\\.+*?()|[]{}^$".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

#[test]
fn mutual_tls_with_the_entrys_client_certificate() {
    let mut env = TestEnv::with_options(gitlab_sim::Options {
        tls: true,
        client_cert: true,
        ..Default::default()
    });
    env.use_admin = false;
    let e = env.healthy("mtls");
    let ca = env.sim.ca_pem_path().unwrap().display().to_string();
    let (cert, key) = env
        .sim
        .client_cert_paths()
        .map(|(c, k)| (c.display().to_string(), k.display().to_string()))
        .unwrap();
    env.write_config(&[Entry {
        extra: format!("  tls-ca-file = \"{ca}\"\n"),
        ..e.clone()
    }]);
    let run = diagnose(&env);
    assert!(
        run.codes("mtls").contains(&"tls_failure".into()),
        "{:?}",
        run.codes("mtls")
    );
    env.write_config(&[Entry {
        extra: format!(
            "  tls-ca-file = \"{ca}\"\n  tls-cert-file = \"{cert}\"\n  tls-key-file = \"{key}\"\n"
        ),
        ..e
    }]);
    let run = diagnose(&env);
    assert_eq!(run.code, 0, "{}", run.stdout);
}
