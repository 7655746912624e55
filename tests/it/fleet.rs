//! Shared runner tokens: one runner, several hosts ("runner managers", reference §3.7). The
//! simulator keeps managers as GitLab does; runner-medic learns when a token is shared and never
//! knocks the other hosts offline.

use serde_json::{json, Value};

use crate::harness::TestEnv;

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

/// `POST /api/v4/jobs/request` as gitlab-runner sends it; returns the status.
fn poll(env: &TestEnv, token: &str, system_id: Option<&str>) -> u16 {
    let mut body = json!({ "token": token, "last_update": "0" });
    if let Some(id) = system_id {
        body["system_id"] = json!(id);
    }
    client()
        .post(format!("{}/api/v4/jobs/request", env.url()))
        .json(&body)
        .send()
        .unwrap()
        .status()
        .as_u16()
}

/// `GET /api/v4/runners/:id/managers` with `private_token`: (status, body).
fn managers(env: &TestEnv, id: u64, private_token: Option<&str>) -> (u16, Value) {
    let mut req = client().get(format!("{}/api/v4/runners/{id}/managers", env.url()));
    if let Some(t) = private_token {
        req = req.header("PRIVATE-TOKEN", t);
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn system_ids(list: &Value) -> Vec<String> {
    let mut ids: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["system_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn write_system_id(env: &TestEnv, id: &str) {
    std::fs::write(
        env.config.with_file_name(".runner_system_id"),
        format!("{id}\n"),
    )
    .unwrap();
}

#[test]
fn verify_and_job_requests_make_runner_managers_as_gitlab_does() {
    let env = TestEnv::new();
    let e = env.healthy("build");
    let id = e.id.unwrap();
    env.write_config(std::slice::from_ref(&e));

    // runner-medic's own verify sends this host's system id: the manager is this host's.
    write_system_id(&env, "s_0123456789ab");
    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(env.sim.state().manager_ids(id), vec!["s_0123456789ab"]);

    // Without `.runner_system_id` the verify carries none: GitLab keys the row `<legacy>`.
    std::fs::remove_file(env.config.with_file_name(".runner_system_id")).unwrap();
    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        env.sim.state().manager_ids(id),
        vec!["s_0123456789ab", "<legacy>"]
    );

    // Job polls from two other hosts, and a poll without a system id.
    assert_eq!(poll(&env, &e.token, Some("s_bbbbbbbbbbbb")), 204);
    assert_eq!(poll(&env, &e.token, Some("s_bbbbbbbbbbbb")), 204);
    assert_eq!(poll(&env, &e.token, Some("r_cccccccccccc")), 204);
    assert_eq!(poll(&env, &e.token, None), 204);

    let (status, list) = managers(&env, id, Some(&env.admin_token));
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        system_ids(&list),
        vec![
            "<legacy>",
            "r_cccccccccccc",
            "s_0123456789ab",
            "s_bbbbbbbbbbbb"
        ],
        "one row per system id, polls update rather than add: {list}"
    );
    for m in list.as_array().unwrap() {
        assert!(m["contacted_at"].is_string(), "{m}");
        assert_eq!(m["status"], "online", "{m}");
        assert!(m["id"].is_u64(), "{m}");
    }

    // A manager that last called three hours ago is offline.
    let old = chrono::Utc::now() - chrono::Duration::hours(3);
    env.sim.state().add_manager(id, "s_dddddddddddd", Some(old));
    let (_, list) = managers(&env, id, Some(&env.admin_token));
    let d = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["system_id"] == "s_dddddddddddd")
        .unwrap();
    assert_eq!(d["status"], "offline");

    // A refused token makes no manager.
    assert_eq!(poll(&env, "glrt-not-a-token", Some("s_eeeeeeeeeeee")), 403);
    assert!(!env
        .sim
        .state()
        .manager_ids(id)
        .contains(&"s_eeeeeeeeeeee".to_string()));

    // Authentication and the errors of the endpoint.
    assert_eq!(managers(&env, id, None).0, 401);
    let (status, body) = managers(&env, 999_999, Some(&env.admin_token));
    assert_eq!(
        (status, body["message"].as_str()),
        (404, Some("404 Runner Not Found"))
    );
    env.sim.state().managers_endpoint = false;
    let (status, body) = managers(&env, id, Some(&env.admin_token));
    assert_eq!(
        (status, body["message"].as_str()),
        (404, Some("404 Not Found"))
    );
}

#[test]
fn a_reset_cuts_off_every_manager_of_the_runner_at_once() {
    let env = TestEnv::new();
    let e = env.healthy("build");
    let id = e.id.unwrap();
    for host in ["s_aaaaaaaaaaaa", "s_bbbbbbbbbbbb", "s_cccccccccccc"] {
        assert_eq!(poll(&env, &e.token, Some(host)), 204);
    }
    let resp = client()
        .post(format!(
            "{}/api/v4/runners/{id}/reset_authentication_token",
            env.url()
        ))
        .header("PRIVATE-TOKEN", &env.admin_token)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let new = resp.json::<Value>().unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    for host in ["s_aaaaaaaaaaaa", "s_bbbbbbbbbbbb", "s_cccccccccccc"] {
        assert_eq!(poll(&env, &e.token, Some(host)), 403, "{host} is cut off");
    }
    // The runner keeps its managers; whoever gets the new token is back at once.
    assert_eq!(env.sim.state().manager_ids(id).len(), 3);
    assert_eq!(poll(&env, &new, Some("s_bbbbbbbbbbbb")), 204);
    assert_eq!(env.sim.state().token_issuing_requests(), 1);

    // Deleting the runner deletes its managers.
    let resp = client()
        .delete(format!("{}/api/v4/runners/{id}", env.url()))
        .header("PRIVATE-TOKEN", &env.admin_token)
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert!(env.sim.state().manager_ids(id).is_empty());
}

/// Another host that used `id`'s token `ago` before now.
pub fn other_host(env: &TestEnv, id: u64, system_id: &str, ago: chrono::Duration) {
    env.sim
        .state()
        .add_manager(id, system_id, Some(chrono::Utc::now() - ago));
}

fn manager_reads(env: &TestEnv) -> usize {
    env.sim
        .state()
        .requests_to("GET", "/api/v4/runners/:id/managers")
}

fn finding<'a>(runner: &'a Value, code: &str) -> Option<&'a Value> {
    runner["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == code)
}

#[test]
fn an_expiring_token_used_by_another_host_is_reported_shared() {
    let env = TestEnv::new();
    let e = env.expiring("build", 2);
    let id = e.id.unwrap();
    env.write_config(&[e.clone(), env.healthy("alone")]);
    write_system_id(&env, "s_aaaaaaaaaaaa");
    other_host(&env, id, "s_bbbbbbbbbbbb", chrono::Duration::minutes(10));
    other_host(&env, id, "s_cccccccccccc", chrono::Duration::hours(5));
    // This host's own row is never another host.
    other_host(&env, id, "s_aaaaaaaaaaaa", chrono::Duration::minutes(1));

    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(
        run.code, 0,
        "warnings only:\n{}\n{}",
        run.stdout, run.stderr
    );
    let r = run.runner("build");
    assert_eq!(
        r["managers"], 2,
        "this host and s_bbb; s_ccc is outside the 2h window: {r}"
    );
    assert_eq!(r["shared"], true);
    let f = finding(&r, "shared_token").expect("a shared_token finding");
    assert_eq!(f["severity"], "warning");
    let message = f["message"].as_str().unwrap();
    assert!(message.contains("s_bbbbbbbbbbbb"), "{message}");
    assert!(!message.contains("s_cccccccccccc"), "{message}");
    let fix = f["fix"].as_str().unwrap();
    assert!(fix.contains("store = \"etcd\""), "{fix}");
    assert!(fix.contains("--runner build"), "{fix}");

    // A healthy runner is not asked about: one managers request, for `build` only.
    let alone = run.runner("alone");
    assert_eq!(alone["managers"], Value::Null);
    assert_eq!(alone["shared"], false);
    assert_eq!(manager_reads(&env), 1);

    // A wider window counts the host that called five hours ago.
    let mut env = env;
    env.extra_settings
        .push_str("\n[fleet]\nmanager_window = \"6h\"\n");
    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(run.runner("build")["managers"], 3);
}

#[test]
fn a_token_only_this_host_uses_is_not_shared() {
    let env = TestEnv::new();
    let e = env.expiring("build", 2);
    let id = e.id.unwrap();
    env.write_config(std::slice::from_ref(&e));
    write_system_id(&env, "s_aaaaaaaaaaaa");
    other_host(&env, id, "s_bbbbbbbbbbbb", chrono::Duration::hours(3));
    let run = env.run(&["diagnose", "--output", "json"]);
    let r = run.runner("build");
    assert_eq!(r["managers"], 1, "{r}");
    assert_eq!(r["shared"], false);
    assert!(finding(&r, "shared_token").is_none());
    assert_eq!(run.code, 0);
}

#[test]
fn a_dead_shared_token_is_an_error_without_coordination() {
    let env = TestEnv::new();
    let e = env.expired("build");
    let id = e.id.unwrap();
    env.write_config(std::slice::from_ref(&e));
    write_system_id(&env, "s_aaaaaaaaaaaa");
    // The other host polled until the token died, a day ago; that still counts, as the window is
    // measured back from the token's death.
    other_host(&env, id, "s_bbbbbbbbbbbb", chrono::Duration::hours(25));
    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(run.code, 1);
    let r = run.runner("build");
    assert_eq!(r["shared"], true, "{r}");
    assert_eq!(r["managers"], 2);
    assert_eq!(finding(&r, "shared_token").unwrap()["severity"], "error");
}

#[test]
fn sharing_is_unknown_without_the_privileged_token_or_the_endpoint() {
    // No privileged token: the managers cannot be read.
    let mut env = TestEnv::new();
    env.use_admin = false;
    let e = env.expiring("build", 2);
    let id = e.id.unwrap();
    env.write_config(std::slice::from_ref(&e));
    other_host(&env, id, "s_bbbbbbbbbbbb", chrono::Duration::minutes(5));
    let run = env.run(&["diagnose", "--output", "json"]);
    let r = run.runner("build");
    assert_eq!(r["managers"], Value::Null, "{r}");
    assert_eq!(r["shared"], false);
    assert!(finding(&r, "shared_token").is_none());
    assert_eq!(manager_reads(&env), 0);

    // An instance without `GET /runners/:id/managers` (older than ~17.1) answers 404.
    let env = TestEnv::new();
    let e = env.expired("build");
    let id = e.id.unwrap();
    env.write_config(std::slice::from_ref(&e));
    other_host(&env, id, "s_bbbbbbbbbbbb", chrono::Duration::minutes(5));
    env.sim.state().managers_endpoint = false;
    let run = env.run(&["diagnose", "--output", "json"]);
    let r = run.runner("build");
    assert_eq!(r["managers"], Value::Null, "{r}");
    assert_eq!(r["shared"], false);
    assert!(finding(&r, "shared_token").is_none());
    assert_eq!(manager_reads(&env), 1, "asked once, answered 404");
}

/// One host of a fleet: its own config.toml (with `.runner_system_id` beside it), settings and
/// state directory, against the shared simulator of `env`.
pub struct Host {
    pub dir: tempfile::TempDir,
    pub system_id: String,
    pub config: std::path::PathBuf,
    pub extra_settings: String,
}

impl Host {
    pub fn new(env: &TestEnv, n: usize, entries: &[crate::harness::Entry]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let system_id = format!("s_host{n:08}");
        let config = dir.path().join("config.toml");
        // The same entries as `env` would write, in this host's file.
        env.write_config(entries);
        std::fs::copy(&env.config, &config).unwrap();
        std::fs::write(dir.path().join(".runner_system_id"), &system_id).unwrap();
        Self {
            dir,
            system_id,
            config,
            extra_settings: String::new(),
        }
    }

    pub fn command(&self, env: &TestEnv, args: &[&str]) -> std::process::Command {
        use std::os::unix::fs::PermissionsExt;
        let token_file = self.dir.path().join("admin-token");
        std::fs::write(&token_file, &env.admin_token).unwrap();
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let settings = self.dir.path().join("settings.toml");
        std::fs::write(
            &settings,
            format!(
                "state_dir = \"{}\"\nrequest_timeout = \"5s\"\ngitlab_url = \"{}\"\nadmin_token_file = \"{}\"\n{}\n[service]\nmanager = \"none\"\n",
                self.dir.path().join("state").display(),
                env.url(),
                token_file.display(),
                self.extra_settings,
            ),
        )
        .unwrap();
        let mut cmd = std::process::Command::new(crate::harness::BIN);
        cmd.args(args)
            .arg("--runner-config")
            .arg(&self.config)
            .arg("--settings")
            .arg(&settings);
        for var in [
            "RUNNER_MEDIC_ADMIN_TOKEN",
            "RUNNER_MEDIC_GITLAB_URL",
            "RUNNER_MEDIC_ADMIN_TOKEN_FILE",
            "RUNNER_MEDIC_STATE_DIR",
            "RUNNER_MEDIC_RUNNER_CONFIG",
            "RUNNER_MEDIC_SETTINGS",
            "RUNNER_MEDIC_METRICS_FILE",
            "RUNNER_MEDIC_CRASH_AT",
            "RUNNER_MEDIC_PAUSE_AT",
            "RUNNER_MEDIC_FLEET_STORE",
            "RUNNER_MEDIC_FLEET_ENDPOINTS",
            "RUNNER_MEDIC_FLEET_PREFIX",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("RUNNER_MEDIC_TEST_FAST_RETRY", "1")
            .env("RUST_LOG", "runner_medic=debug");
        cmd
    }

    pub fn run(&self, env: &TestEnv, args: &[&str]) -> crate::harness::Run {
        env.run_cmd(self.command(env, args))
    }

    pub fn token(&self, name: &str) -> String {
        crate::harness::token_in(&self.config, name)
    }
}

/// `count` hosts sharing `entry`'s token, each with `settings` and a contact with GitLab a day
/// and five minutes ago (every host polled with the token until it expired, a day ago), so each
/// sees the others as runner managers.
pub fn hosts_sharing(
    env: &TestEnv,
    entry: &crate::harness::Entry,
    count: usize,
    settings: &str,
) -> Vec<Host> {
    let id = entry.id.unwrap();
    (0..count)
        .map(|n| {
            let mut h = Host::new(env, n, std::slice::from_ref(entry));
            h.extra_settings = settings.to_string();
            other_host(
                env,
                id,
                &h.system_id,
                chrono::Duration::hours(24) + chrono::Duration::minutes(5),
            );
            h
        })
        .collect()
}

#[test]
fn without_coordination_no_host_changes_a_shared_token() {
    let env = TestEnv::new();
    let e = env.expired("build");
    let hosts = hosts_sharing(&env, &e, 3, "");
    for h in &hosts {
        for args in [
            &["rotate", "--output", "json"][..],
            &["rotate", "--dry-run", "--output", "json"][..],
        ] {
            let run = h.run(&env, args);
            assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
            let r = run.runner("build");
            assert_eq!(r["action"], "manual", "{r}");
            assert_eq!(r["shared"], true);
            assert_eq!(r["managers"], 3);
            assert_eq!(finding(&r, "shared_token").unwrap()["severity"], "error");
            let why = r["error"].as_str().unwrap();
            assert!(
                why.contains("store = \"etcd\"") && why.contains("--runner build"),
                "{why}"
            );
            assert!(r["calls"].as_array().is_none_or(|c| c.is_empty()), "{r}");
        }
        assert_eq!(h.token("build"), e.token, "config.toml untouched");
    }
    assert_eq!(env.sim.state().token_issuing_requests(), 0);
    assert!(
        env.changing_requests().is_empty(),
        "{:?}",
        env.changing_requests()
    );

    // A valid shared token is not renewed either, expiring or forced.
    let live = env.expiring("live", 1);
    let live_id = live.id.unwrap();
    let hosts: Vec<Host> = (3..6)
        .map(|n| Host::new(&env, n, std::slice::from_ref(&live)))
        .collect();
    for h in &hosts {
        other_host(&env, live_id, &h.system_id, chrono::Duration::minutes(3));
    }
    for h in &hosts {
        for args in [
            &["rotate", "--output", "json"][..],
            &["rotate", "--force", "--output", "json"][..],
        ] {
            let run = h.run(&env, args);
            assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
            let r = run.runner("live");
            assert_eq!(r["action"], "manual", "{r}");
            assert_eq!(finding(&r, "shared_token").unwrap()["severity"], "warning");
        }
    }
    assert_eq!(env.sim.state().token_issuing_requests(), 0);
    assert!(env.token_works(&live.token));
}

#[test]
fn naming_the_runner_rotates_a_shared_token_on_that_host_only() {
    let env = TestEnv::new();
    let e = env.expired("build");
    let hosts = hosts_sharing(&env, &e, 2, "");
    let run = hosts[0].run(&env, &["rotate", "--runner", "build", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let r = run.runner("build");
    assert_eq!(r["action"], "reset", "{r}");
    assert_eq!(r["outcome"], "done");
    assert_eq!(env.sim.state().token_issuing_requests(), 1);
    let new = hosts[0].token("build");
    assert!(env.token_works(&new));
    // The other host is left for the operator to hand the token to.
    assert_eq!(hosts[1].token("build"), e.token);
}

#[cfg(feature = "fleet-etcd")]
pub use crate::fleet_etcd::{free_port, Etcd};

/// A fleet key file (64 hex characters, mode 0600) in `dir`.
pub fn key_file(dir: &std::path::Path, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("fleet.key");
    let key: String = (0..32)
        .map(|i| format!("{:02x}", (i * 37 + 11) % 256))
        .collect();
    std::fs::write(&path, format!("{key}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

pub fn fleet_settings(endpoint: &str, key: &std::path::Path) -> String {
    format!(
        "\n[fleet]\nstore = \"etcd\"\nendpoints = [\"{endpoint}\"]\nprefix = \"/medic-test\"\nencryption_key_file = \"{}\"\nlock_ttl = \"10s\"\n",
        key.display()
    )
}

#[cfg(feature = "fleet-etcd")]
/// Run `args` on every host at once; the runs in host order.
pub fn run_all(env: &TestEnv, hosts: &[Host], args: &[&str]) -> Vec<crate::harness::Run> {
    let children: Vec<std::process::Child> = hosts
        .iter()
        .map(|h| {
            h.command(env, args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let run = crate::harness::Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            };
            env.assert_no_secrets(&run.stdout, "stdout");
            env.assert_no_secrets(&run.stderr, "stderr");
            run
        })
        .collect()
}

#[cfg(feature = "fleet-etcd")]
#[test]
fn six_hosts_share_one_new_token_through_etcd() {
    let etcd = Etcd::start();
    let env = TestEnv::new();
    let e = env.expired("build");
    let key = key_file(env.dir.path(), 0o600);
    let hosts = hosts_sharing(&env, &e, 6, &fleet_settings(&etcd.url, &key));

    let runs = run_all(&env, &hosts, &["rotate", "--output", "json"]);
    for run in &runs {
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    }
    assert_eq!(
        env.sim.state().token_issuing_requests(),
        1,
        "exactly one host asked GitLab for a token: {:?}",
        env.changing_requests()
    );
    let actions: Vec<String> = runs
        .iter()
        .map(|r| r.runner("build")["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "reset").count(),
        1,
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| *a == "adopt").count(),
        5,
        "{actions:?}"
    );
    for run in &runs {
        assert_eq!(run.runner("build")["outcome"], "done");
        assert_eq!(run.runner("build")["shared"], true);
    }
    let new = hosts[0].token("build");
    assert_ne!(new, e.token);
    assert!(env.token_works(&new));
    for h in &hosts {
        assert_eq!(h.token("build"), new, "every host holds the live token");
    }
    // The store keeps the token encrypted only.
    let disk = etcd.disk_bytes();
    assert!(!disk.is_empty());
    assert!(
        !disk.windows(new.len()).any(|w| w == new.as_bytes()),
        "the token is on etcd's disk in clear"
    );

    for _ in 0..5 {
        let runs = run_all(&env, &hosts, &["rotate", "--output", "json"]);
        for run in &runs {
            assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
            assert_eq!(run.runner("build")["action"], "none");
        }
    }
    assert_eq!(
        env.sim.state().token_issuing_requests(),
        1,
        "later rounds ask for nothing"
    );
    for h in &hosts {
        assert_eq!(h.token("build"), new);
    }
}

#[cfg(feature = "fleet-etcd")]
#[test]
fn with_etcd_unreachable_shared_tokens_are_left_alone_and_others_handled() {
    let env = TestEnv::new();
    let shared = env.expired("shared");
    let alone = env.expired("alone");
    let key = key_file(env.dir.path(), 0o600);
    let mut host = Host::new(&env, 0, &[shared.clone(), alone.clone()]);
    // Nothing listens there.
    host.extra_settings = fleet_settings(&format!("http://127.0.0.1:{}", free_port()), &key);
    other_host(
        &env,
        shared.id.unwrap(),
        &host.system_id,
        chrono::Duration::hours(24) + chrono::Duration::minutes(5),
    );
    other_host(
        &env,
        shared.id.unwrap(),
        "s_elsewhere001",
        chrono::Duration::hours(24) + chrono::Duration::minutes(5),
    );

    let run = host.run(&env, &["rotate", "--output", "json"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.top_codes()
            .contains(&"fleet_store_unavailable".to_string()),
        "{}",
        run.stdout
    );
    let s = run.runner("shared");
    assert_eq!(s["action"], "manual", "{s}");
    assert_eq!(host.token("shared"), shared.token);
    let a = run.runner("alone");
    assert_eq!(a["action"], "reset", "{a}");
    assert_eq!(a["outcome"], "done");
    assert_eq!(
        env.sim.state().token_issuing_requests(),
        1,
        "only the unshared runner"
    );
    assert!(env.token_works(&host.token("alone")));
}

#[test]
fn an_etcd_store_needs_a_private_key_file() {
    let env = TestEnv::new();
    let e = env.healthy("build");
    let mut host = Host::new(&env, 0, std::slice::from_ref(&e));
    // No key file at all.
    host.extra_settings = "\n[fleet]\nstore = \"etcd\"\n".into();
    let run = host.run(&env, &["diagnose"]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("encryption_key_file"), "{}", run.stderr);
    // A key file others may read.
    let key = key_file(host.dir.path(), 0o644);
    host.extra_settings = fleet_settings("http://127.0.0.1:2379", &key);
    let run = host.run(&env, &["diagnose"]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
    // A key that is not 64 hex characters.
    std::fs::write(&key, "not a key\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let run = host.run(&env, &["diagnose"]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    // The flag overrides the file: `--fleet-store none` needs no key.
    let run = host.run(&env, &["diagnose", "--fleet-store", "none"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
}

#[cfg(feature = "fleet-etcd")]
#[test]
fn an_expiring_shared_token_is_renewed_once_and_adopted_by_the_others() {
    let etcd = Etcd::start();
    let env = TestEnv::new();
    let e = env.expiring("build", 1);
    let id = e.id.unwrap();
    let key = key_file(env.dir.path(), 0o600);
    let mut hosts: Vec<Host> = (0..3)
        .map(|n| Host::new(&env, n, std::slice::from_ref(&e)))
        .collect();
    for h in &mut hosts {
        h.extra_settings = fleet_settings(&etcd.url, &key);
        other_host(&env, id, &h.system_id, chrono::Duration::minutes(3));
    }
    let runs = run_all(&env, &hosts, &["rotate", "--output", "json"]);
    for run in &runs {
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    }
    let actions: Vec<String> = runs
        .iter()
        .map(|r| r.runner("build")["action"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| *a == "renew").count(),
        1,
        "{actions:?}"
    );
    assert_eq!(
        actions.iter().filter(|a| *a == "adopt").count(),
        2,
        "{actions:?}"
    );
    assert_eq!(env.sim.state().token_issuing_requests(), 1);
    let new = hosts[0].token("build");
    assert!(env.token_works(&new));
    for h in &hosts {
        assert_eq!(h.token("build"), new);
    }
}
