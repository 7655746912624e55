//! The GitLab client against the simulator: every call, every failure class, retries, TLS; and
//! the simulator itself against the reference document's tables.

use std::time::Duration;

use chrono::Utc;
use gitlab_sim::{FaultKind, NewRunner, Options, RunnerType, Simulator};
use runner_medic::gitlab::{
    AdminApi, AdminCredential, ClientOptions, CreateRunner, Error, RetryPolicy, RunnerApi, TlsFiles,
};
use runner_medic::secret::{AdminToken, RunnerToken};
use url::Url;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn fast() -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            max_total: Duration::from_secs(10),
            ..RetryPolicy::default()
        },
        ..ClientOptions::default()
    }
}

fn admin(sim: &Simulator, scopes: &[&str]) -> AdminApi {
    let token = sim.state().add_pat(scopes, true, None);
    AdminApi::new(
        &AdminCredential {
            url: Url::parse(&sim.url()).unwrap(),
            token: AdminToken::new(token),
        },
        fast(),
    )
    .unwrap()
}

fn runner_api(sim: &Simulator) -> RunnerApi {
    RunnerApi::new(&Url::parse(&sim.url()).unwrap(), fast()).unwrap()
}

#[test]
fn runner_token_calls() {
    let sim = Simulator::start(Options::default()).unwrap();
    sim.state().settings.runner_token_expiration_interval = Some(30 * 86400);
    let (id, token) = sim.state().add_runner(NewRunner::default());
    let api = runner_api(&sim);
    rt().block_on(async {
        let token = RunnerToken::new(token);
        let v = api.verify(&token).await.unwrap();
        assert_eq!(v.value.id, Some(id));
        assert!(v.value.token_expires_at.is_some());
        let date = v.server_date.expect("Date header");
        assert!((date - Utc::now()).num_seconds().abs() < 5);
        assert_eq!(api.request_job(&token).await.unwrap(), 204);
        let grant = api.reset_own_token(&token).await.unwrap().value;
        assert!(grant.token.masked().as_str().starts_with("glrt-t1_"));
        assert!(grant.token_expires_at.is_some());
        // The old token died at once (no grace period).
        assert_eq!(api.verify(&token).await.unwrap_err().status(), Some(403));
        assert_eq!(
            api.reset_own_token(&token).await.unwrap_err().status(),
            Some(403)
        );
        api.unregister(&grant.token).await.unwrap();
        assert!(!sim.state().runners.contains_key(&id));
    });
}

#[test]
fn privileged_calls() {
    let sim = Simulator::start(Options::default()).unwrap();
    let api = admin(&sim, &["api"]);
    rt().block_on(async {
        assert!(api.version().await.unwrap().value["version"].is_string());
        let pat = api.pat_self().await.unwrap().value;
        assert_eq!(pat.scopes, vec!["api"]);
        let settings = api.application_settings().await.unwrap().value;
        assert!(settings.runner_token_expiration_interval.is_none());
        let params = CreateRunner {
            runner_type: "project_type".into(),
            group_id: None,
            project_id: Some(42),
            description: Some("made".into()),
            tag_list: vec!["a".into(), "b".into()],
            run_untagged: false,
            locked: true,
            access_level: Some("ref_protected".into()),
            maximum_timeout: Some(3600),
            paused: false,
            maintenance_note: Some("note".into()),
            more_project_ids: vec![],
        };
        let created = api.create_runner(&params).await.unwrap().value;
        let id = created.id.unwrap();
        let details = api.runner(id).await.unwrap().value;
        assert_eq!(details.tag_list, vec!["a", "b"]);
        assert!(!details.run_untagged);
        assert!(details.locked);
        assert_eq!(details.access_level.as_deref(), Some("ref_protected"));
        assert_eq!(CreateRunner::like(&details).project_id, Some(42));
        let updated = api
            .update_runner(id, serde_json::json!({"paused": true}))
            .await
            .unwrap()
            .value;
        assert!(updated.paused);
        let reset = api.reset_token(id).await.unwrap().value;
        assert!(!reset.token.same_as(&created.token));
        let all = api.all_runners(Some("project_type")).await.unwrap();
        assert!(all.iter().any(|r| r.id == id));
        api.delete_runner(id).await.unwrap();
        assert_eq!(api.runner(id).await.unwrap_err().status(), Some(404));
        assert_eq!(api.reset_token(id).await.unwrap_err().status(), Some(404));
    });
}

#[test]
fn list_pages_through_many_runners() {
    let sim = Simulator::start(Options::default()).unwrap();
    for i in 0..230 {
        sim.state().add_runner(NewRunner {
            description: format!("r{i}"),
            ..NewRunner::default()
        });
    }
    let api = admin(&sim, &["api"]);
    let all = rt().block_on(api.all_runners(None)).unwrap();
    assert_eq!(all.len(), 230);
}

#[test]
fn status_classes_401_403_404() {
    let sim = Simulator::start(Options::default()).unwrap();
    let bad = AdminApi::new(
        &AdminCredential {
            url: Url::parse(&sim.url()).unwrap(),
            token: AdminToken::new("glpat-nope"),
        },
        fast(),
    )
    .unwrap();
    let scoped = admin(&sim, &["create_runner"]);
    let api = admin(&sim, &["api"]);
    rt().block_on(async {
        let e = bad.pat_self().await.unwrap_err();
        assert_eq!(e.status(), Some(401));
        assert!(e.to_string().contains("401 Unauthorized"));
        let e = scoped.runner(1).await.unwrap_err();
        assert_eq!(e.status(), Some(403));
        assert!(e.to_string().contains("insufficient_scope"), "{e}");
        let e = api.runner(999_999).await.unwrap_err();
        assert_eq!(e.status(), Some(404));
        assert!(e.to_string().contains("404 Runner Not Found"));
    });
}

#[test]
fn retries_429_with_retry_after_and_5xx() {
    let sim = Simulator::start(Options::default()).unwrap();
    let (_, token) = sim.state().add_runner(NewRunner::default());
    sim.state().inject(
        "POST /api/v4/runners/verify",
        FaultKind::RateLimited {
            retry_after_secs: 1,
        },
        Some(1),
    );
    sim.state().inject(
        "POST /api/v4/runners/verify",
        FaultKind::Status(502),
        Some(1),
    );
    let api = runner_api(&sim);
    // The wait itself (Retry-After honoured) is `RetryPolicy::next_delay`'s, unit-tested in
    // gitlab/retry.rs; here: the real client retries through both faults and succeeds.
    let v = rt().block_on(api.verify(&RunnerToken::new(token.clone())));
    assert!(v.is_ok(), "{v:?}");
    assert_eq!(sim.state().requests_to("POST", "/api/v4/runners/verify"), 3);
    // A persistent fault gives up after the attempts, with the class kept.
    sim.state()
        .inject("POST /api/v4/runners/verify", FaultKind::Status(503), None);
    let e = rt()
        .block_on(api.verify(&RunnerToken::new(token)))
        .unwrap_err();
    assert_eq!(e.status(), Some(503));
}

#[test]
fn a_creation_is_never_blindly_retried() {
    let sim = Simulator::start(Options::default()).unwrap();
    let api = admin(&sim, &["api"]);
    sim.state()
        .inject("POST /api/v4/user/runners", FaultKind::Status(502), Some(1));
    let params = CreateRunner {
        ..CreateRunner::instance(None)
    };
    let e = rt().block_on(api.create_runner(&params)).unwrap_err();
    assert_eq!(e.status(), Some(502));
    assert_eq!(
        sim.state().requests_to("POST", "/api/v4/user/runners"),
        1,
        "sent once"
    );
    // 429 proves the request was not acted on: that one is retried.
    sim.state().inject(
        "POST /api/v4/user/runners",
        FaultKind::RateLimited {
            retry_after_secs: 0,
        },
        Some(1),
    );
    assert!(rt().block_on(api.create_runner(&params)).is_ok());
}

#[test]
fn connection_reset_and_timeout_classes() {
    let sim = Simulator::start(Options::default()).unwrap();
    let (_, token) = sim.state().add_runner(NewRunner::default());
    let api = runner_api(&sim);
    let token = RunnerToken::new(token);
    // A single reset is retried transparently.
    sim.state()
        .inject("POST /api/v4/runners/verify", FaultKind::Reset, Some(1));
    assert!(rt().block_on(api.verify(&token)).is_ok());
    // A persistent hang past the client timeout is a timeout.
    sim.state().inject(
        "POST /api/v4/runners/verify",
        FaultKind::Hang(Duration::from_secs(30)),
        None,
    );
    let quick = RunnerApi::new(
        &Url::parse(&sim.url()).unwrap(),
        ClientOptions {
            timeout: Duration::from_millis(300),
            retry: RetryPolicy {
                max_attempts: 1,
                ..RetryPolicy::default()
            },
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let e = rt().block_on(quick.verify(&token)).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
}

#[test]
fn dns_and_connect_classes() {
    let api = RunnerApi::new(&Url::parse("http://no-such-host.invalid").unwrap(), fast()).unwrap();
    let e = rt()
        .block_on(api.verify(&RunnerToken::new("glrt-x")))
        .unwrap_err();
    assert!(matches!(e, Error::Dns { .. }), "{e:?}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let api = RunnerApi::new(
        &Url::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
        fast(),
    )
    .unwrap();
    let e = rt()
        .block_on(api.verify(&RunnerToken::new("glrt-x")))
        .unwrap_err();
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
}

#[test]
fn malformed_body_class() {
    let sim = Simulator::start(Options::default()).unwrap();
    let api = admin(&sim, &["api"]);
    sim.state().inject(
        "GET /api/v4/personal_access_tokens/self",
        FaultKind::Body(200, "{not json".into()),
        None,
    );
    let e = rt().block_on(api.pat_self()).unwrap_err();
    assert!(matches!(e, Error::Body { .. }), "{e:?}");
}

#[test]
fn tls_untrusted_then_trusted_with_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(Options {
        tls: true,
        tls_dir: Some(dir.path().into()),
        ..Options::default()
    })
    .unwrap();
    let (_, token) = sim.state().add_runner(NewRunner {
        runner_type: RunnerType::GroupType,
        ..NewRunner::default()
    });
    let token = RunnerToken::new(token);
    let url = Url::parse(&sim.url()).unwrap();
    let e = rt()
        .block_on(RunnerApi::new(&url, fast()).unwrap().verify(&token))
        .unwrap_err();
    match &e {
        Error::Tls { reason, .. } => assert!(
            reason.to_lowercase().contains("certificate")
                || reason.to_lowercase().contains("issuer"),
            "{reason}"
        ),
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    let trusted = ClientOptions {
        tls: TlsFiles {
            ca_file: Some(sim.ca_pem_path().unwrap().into()),
            ..TlsFiles::default()
        },
        ..fast()
    };
    assert!(rt()
        .block_on(RunnerApi::new(&url, trusted).unwrap().verify(&token))
        .is_ok());
}

#[test]
fn errors_and_debug_never_show_tokens() {
    let sim = Simulator::start(Options::default()).unwrap();
    let (_, token) = sim.state().add_runner(NewRunner::default());
    sim.state()
        .inject("POST /api/v4/runners/verify", FaultKind::Status(500), None);
    let t = RunnerToken::new(token.clone());
    let e = rt().block_on(runner_api(&sim).verify(&t)).unwrap_err();
    assert!(!format!("{e} {e:?} {t:?}").contains(&token));
}

/// The reference's error-body table (§4.1) against what the simulator answers for each case.
#[test]
fn simulator_matches_the_reference_tables() {
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/reference/gitlab-runner-api.md"
    ))
    .unwrap();
    let row = |needle: &str| -> (u16, serde_json::Value) {
        let line = reference
            .lines()
            .find(|l| l.starts_with('|') && l.contains(needle))
            .unwrap_or_else(|| panic!("no row {needle:?} in the reference"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let status: u16 = cells[2].parse().unwrap();
        let body = cells[3].trim_matches('`');
        (
            status,
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}")),
        )
    };
    let sim = Simulator::start(Options::default()).unwrap();
    let base = sim.url();
    let expired_pat = sim.state().add_pat(
        &["api"],
        true,
        Some((Utc::now() - chrono::Duration::days(1)).date_naive()),
    );
    let revoked_pat = sim.state().add_pat(&["api"], true, None);
    sim.state().pats.last_mut().unwrap().revoked = true;
    let read_only = sim.state().add_pat(&["read_api"], true, None);
    let good = sim.state().add_pat(&["api"], true, None);
    let client = reqwest::blocking::Client::new();
    let check = |needle: &str, resp: reqwest::blocking::Response| {
        let (status, body) = row(needle);
        let got_status = resp.status().as_u16();
        let got: serde_json::Value = resp.json().unwrap();
        assert_eq!(
            (got_status, &got),
            (status, &body),
            "drift from the reference for {needle:?}"
        );
    };
    check(
        "runner token bad, expired, reset or deleted",
        client
            .post(format!("{base}/api/v4/runners/verify"))
            .json(&serde_json::json!({"token": "glrt-nope"}))
            .send()
            .unwrap(),
    );
    check(
        "`not_found!('Runner')`",
        client
            .get(format!("{base}/api/v4/runners/424242"))
            .header("PRIVATE-TOKEN", &good)
            .send()
            .unwrap(),
    );
    check(
        "PAT unknown, or user may not access",
        client
            .get(format!("{base}/api/v4/version"))
            .header("PRIVATE-TOKEN", "glpat-unknown")
            .send()
            .unwrap(),
    );
    check(
        "PAT **expired**",
        client
            .get(format!("{base}/api/v4/version"))
            .header("PRIVATE-TOKEN", &expired_pat)
            .send()
            .unwrap(),
    );
    check(
        "PAT **revoked**",
        client
            .get(format!("{base}/api/v4/version"))
            .header("PRIVATE-TOKEN", &revoked_pat)
            .send()
            .unwrap(),
    );
    // The scope row carries `scope` values that depend on the route; compare the stable fields.
    let (status, body) = row("PAT lacks the scope");
    let resp = client
        .delete(format!("{base}/api/v4/runners/1"))
        .header("PRIVATE-TOKEN", &read_only)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), status);
    let got: serde_json::Value = resp.json().unwrap();
    assert_eq!(got["error"], body["error"]);
    assert_eq!(got["error_description"], body["error_description"]);
    // §2.1 verify: `{id, token, token_expires_at}` with the same token sent.
    let (_, token) = sim.state().add_runner(NewRunner::default());
    let v: serde_json::Value = client
        .post(format!("{base}/api/v4/runners/verify"))
        .json(&serde_json::json!({"token": token}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, vec!["id", "token", "token_expires_at"]);
    assert_eq!(v["token"], token);
    // §2.2: `token_expires_at` is left out when the runner has no expiry.
    let r: serde_json::Value = client
        .post(format!("{base}/api/v4/runners/reset_authentication_token"))
        .json(&serde_json::json!({"token": token}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(r.get("token_expires_at").is_none(), "{r}");
    // §3.2: no `token` in runner details.
    let d: serde_json::Value = client
        .get(format!("{base}/api/v4/runners/{}", v["id"]))
        .header("PRIVATE-TOKEN", &good)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(d.get("token").is_none());
    assert_eq!(d["active"], !d["paused"].as_bool().unwrap());
    // §2.3: jobs/request answers 204 for a valid token, 403 otherwise.
    let ok = client
        .post(format!("{base}/api/v4/jobs/request"))
        .json(&serde_json::json!({"token": r["token"]}))
        .send()
        .unwrap();
    assert_eq!(ok.status().as_u16(), 204);
    let no = client
        .post(format!("{base}/api/v4/jobs/request"))
        .json(&serde_json::json!({"token": token}))
        .send()
        .unwrap();
    assert_eq!(no.status().as_u16(), 403);
    // §1: token formats.
    assert!(token.starts_with("glrt-t1_") && token.len() == "glrt-t1_".len() + 20);
    assert!(good.starts_with("glpat-"));
}

#[test]
fn client_certificates_from_tls_cert_file_and_tls_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let sim = Simulator::start(Options {
        tls: true,
        client_cert: true,
        tls_dir: Some(dir.path().into()),
        ..Options::default()
    })
    .unwrap();
    let (_, token) = sim.state().add_runner(NewRunner::default());
    let token = RunnerToken::new(token);
    let url = Url::parse(&sim.url()).unwrap();
    let ca = Some(sim.ca_pem_path().unwrap().to_path_buf());
    let without = ClientOptions {
        tls: TlsFiles {
            ca_file: ca.clone(),
            ..TlsFiles::default()
        },
        ..fast()
    };
    let e = rt()
        .block_on(RunnerApi::new(&url, without).unwrap().verify(&token))
        .unwrap_err();
    assert!(
        matches!(e, Error::Tls { .. }),
        "without a client certificate: {e:?}"
    );
    let (cert, key) = sim.client_cert_paths().unwrap();
    let with = ClientOptions {
        tls: TlsFiles {
            ca_file: ca,
            cert_file: Some(cert.into()),
            key_file: Some(key.into()),
        },
        ..fast()
    };
    assert!(rt()
        .block_on(RunnerApi::new(&url, with).unwrap().verify(&token))
        .is_ok());
}
