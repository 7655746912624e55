//! Shared tokens coordinated through a real etcd (Debian's `etcd-server`) on loopback: faults
//! (a run that fails, a lock holder killed after GitLab answered, a member of a three-member
//! cluster killed, etcd down), the agent that adopts a token another host published, and etcd
//! with TLS and with authentication.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::{json, Value};

use crate::fleet::{fleet_settings, hosts_sharing as fleet, key_file, other_host, Host};
use crate::harness::{wait_for, Background, Run, TestEnv};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Files of a CA, a server certificate for 127.0.0.1 signed by it, and a client certificate.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    pub fn generate(dir: &Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "etcd test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
        server.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let server_cert = server.signed_by(&server_key, &ca_cert, &ca_key).unwrap();
        let client_key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(vec!["runner-medic".to_string()]).unwrap();
        client
            .distinguished_name
            .push(rcgen::DnType::CommonName, "runner-medic");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &ca_cert, &ca_key).unwrap();
        let files = Self {
            ca: dir.join("etcd-ca.pem"),
            server_cert: dir.join("etcd-server.pem"),
            server_key: dir.join("etcd-server-key.pem"),
            client_cert: dir.join("etcd-client.pem"),
            client_key: dir.join("etcd-client-key.pem"),
        };
        std::fs::write(&files.ca, ca_cert.pem()).unwrap();
        std::fs::write(&files.server_cert, server_cert.pem()).unwrap();
        std::fs::write(&files.server_key, server_key.serialize_pem()).unwrap();
        std::fs::write(&files.client_cert, client_cert.pem()).unwrap();
        std::fs::write(&files.client_key, client_key.serialize_pem()).unwrap();
        for key in [&files.server_key, &files.client_key] {
            std::fs::set_permissions(key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        files
    }
}

struct Member {
    dir: tempfile::TempDir,
    client_url: String,
    child: Option<Child>,
}

/// A real etcd (Debian's `etcd-server`, `/usr/bin/etcd`): one member or a cluster, each member a
/// process on loopback ports with a temp data dir, all stopped when dropped.
pub struct Etcd {
    members: Vec<Member>,
    /// The first member's client URL.
    pub url: String,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    /// The gateway's auth token, once authentication is on.
    auth: Option<String>,
}

fn etcd_bin() -> &'static str {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("etcd is needed for the fleet tests: `apt-get install etcd-server` (.ci/test installs it)")
}

impl Etcd {
    pub fn start() -> Self {
        Self::launch(1, None)
    }

    /// A cluster of `n` members.
    pub fn cluster(n: usize) -> Self {
        Self::launch(n, None)
    }

    /// One member that serves clients over TLS only, and wants a client certificate signed by
    /// the CA when `client_certs`.
    pub fn start_tls(files: &TlsFiles, client_certs: bool) -> Self {
        Self::launch(1, Some((files, client_certs)))
    }

    /// Start `n` members and wait until each is healthy. Ports are picked free and then let go,
    /// so another test can take one in between: a cluster that does not come up is started again
    /// on fresh ports (three tries), and the last failure shows each member's log.
    fn launch(n: usize, tls: Option<(&TlsFiles, bool)>) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_launch(n, tls) {
                Ok(etcd) => return etcd,
                Err(log) => last = log,
            }
        }
        panic!("etcd did not become healthy three times: {last}");
    }

    fn try_launch(n: usize, tls: Option<(&TlsFiles, bool)>) -> Result<Self, String> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let cluster = cluster.join(",");
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let client_url = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
            let mut cmd = Command::new(etcd_bin());
            cmd.args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &cluster])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "medic-test"]);
            if let Some((files, client_certs)) = tls {
                cmd.arg("--cert-file")
                    .arg(&files.server_cert)
                    .arg("--key-file")
                    .arg(&files.server_key)
                    .arg("--trusted-ca-file")
                    .arg(&files.ca);
                if client_certs {
                    cmd.arg("--client-cert-auth");
                }
            }
            let child = cmd
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("etcd starts");
            members.push(Member {
                dir,
                client_url,
                child: Some(child),
            });
        }
        let etcd = Self {
            url: members[0].client_url.clone(),
            members,
            tls: tls.map(|(f, _)| (f.ca.clone(), f.client_cert.clone(), f.client_key.clone())),
            auth: None,
        };
        for m in &etcd.members {
            let health = format!("{}/health", m.client_url);
            let ready = (0..300).any(|_| {
                let ok = etcd
                    .http()
                    .get(&health)
                    .send()
                    .ok()
                    .is_some_and(|r| r.status().is_success());
                if !ok {
                    std::thread::sleep(Duration::from_millis(100));
                }
                ok
            });
            if !ready {
                // Dropping `etcd` stops every member.
                return Err(
                    std::fs::read_to_string(m.dir.path().join("etcd.log")).unwrap_or_default()
                );
            }
        }
        Ok(etcd)
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    fn http(&self) -> reqwest::blocking::Client {
        let mut b = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10));
        if let Some((ca, cert, key)) = &self.tls {
            let ca = std::fs::read(ca).unwrap();
            let mut identity = std::fs::read(cert).unwrap();
            identity.extend(std::fs::read(key).unwrap());
            b = b
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
                .identity(reqwest::Identity::from_pem(&identity).unwrap());
        }
        b.build().unwrap()
    }

    /// A call to etcd's JSON gateway (`/v3/...`) on the first member that is still running.
    pub fn gateway(&self, path: &str, body: &Value) -> Value {
        let m = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a running member");
        let mut req = self
            .http()
            .post(format!("{}{path}", m.client_url))
            .json(body);
        if let Some(token) = &self.auth {
            req = req.header("Authorization", token);
        }
        let resp = req.send().unwrap();
        let status = resp.status();
        let value: Value = resp.json().unwrap_or(Value::Null);
        assert!(status.is_success(), "etcd {path}: {status} {value}");
        value
    }

    /// The keys under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let reply = self.gateway(
            "/v3/kv/range",
            &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&end), "keys_only": true}),
        );
        reply["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| String::from_utf8(unb64(kv["key"].as_str().unwrap())).unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The locks held or waited for under `prefix`: one key per host.
    pub fn lock_keys(&self, prefix: &str) -> Vec<String> {
        self.keys(prefix)
            .into_iter()
            .filter(|k| k.contains("/lock/"))
            .collect()
    }

    /// The leases etcd keeps.
    pub fn leases(&self) -> usize {
        self.gateway("/v3/lease/leases", &json!({}))["leases"]
            .as_array()
            .map_or(0, Vec::len)
    }

    /// Enable authentication: `root` (password `root-secret`) and `user` with read and write on
    /// `prefix`.
    pub fn enable_auth(&mut self, user: &str, password: &str, prefix: &str) {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        self.gateway(
            "/v3/auth/user/add",
            &json!({"name": "root", "password": "root-secret"}),
        );
        self.gateway(
            "/v3/auth/user/grant",
            &json!({"user": "root", "role": "root"}),
        );
        self.gateway("/v3/auth/role/add", &json!({"name": "medic"}));
        self.gateway(
            "/v3/auth/role/grant",
            &json!({"name": "medic", "perm": {"permType": "READWRITE", "key": b64(prefix.as_bytes()), "range_end": b64(&end)}}),
        );
        self.gateway(
            "/v3/auth/user/add",
            &json!({"name": user, "password": password}),
        );
        self.gateway(
            "/v3/auth/user/grant",
            &json!({"user": user, "role": "medic"}),
        );
        self.gateway("/v3/auth/enable", &json!({}));
        let token = self.gateway(
            "/v3/auth/authenticate",
            &json!({"name": "root", "password": "root-secret"}),
        )["token"]
            .as_str()
            .unwrap()
            .to_string();
        self.auth = Some(token);
    }

    /// SIGKILL member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Wait until the members still running have a leader again (a linearizable read on one of
    /// them answers): the election that follows a killed leader takes its own time, and a run
    /// that meets it mid-election would test etcd's election timeout, not runner-medic.
    pub fn wait_for_leader(&self) {
        let m = self
            .members
            .iter()
            .find(|m| m.child.is_some())
            .expect("a running member");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self
                .http()
                .post(format!("{}/v3/kv/range", m.client_url))
                .json(&serde_json::json!({"key": "AA=="}))
                .send()
                .ok()
                .is_some_and(|r| r.status().is_success());
            if ok {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster found no leader again"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Freeze (SIGSTOP) or thaw (SIGCONT) every member: connections are accepted by the kernel
    /// but nothing answers, as with a hung etcd.
    pub fn freeze(&self, frozen: bool) {
        for m in &self.members {
            if let Some(child) = &m.child {
                signal(
                    child.id(),
                    if frozen {
                        nix::sys::signal::Signal::SIGSTOP
                    } else {
                        nix::sys::signal::Signal::SIGCONT
                    },
                );
            }
        }
    }

    /// Every byte etcd keeps on disk (its WAL and database).
    pub fn disk_bytes(&self) -> Vec<u8> {
        fn walk(dir: &Path, out: &mut Vec<u8>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if let Ok(b) = std::fs::read(&p) {
                    out.extend(b);
                }
            }
        }
        let mut out = Vec::new();
        for m in &self.members {
            walk(&m.dir.path().join("data"), &mut out);
        }
        out
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                signal(child.id(), nix::sys::signal::Signal::SIGCONT);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unb64(text: &str) -> Vec<u8> {
    let vals: Vec<u32> = text
        .bytes()
        .filter(|b| *b != b'=')
        .map(|b| B64.iter().position(|c| *c == b).unwrap() as u32)
        .collect();
    let mut out = Vec::new();
    for chunk in vals.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, v)| n | v << (18 - 6 * i));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

const PREFIX: &str = "/medic-test";

/// The end every fleet scenario must reach: each host holds `new`, the one token GitLab issued,
/// it works, and no lock is left in the store.
fn every_host_holds_the_one_token_issued(env: &TestEnv, etcd: &Etcd, hosts: &[Host], new: &str) {
    for h in hosts {
        assert_eq!(h.token("build"), new);
    }
    assert_eq!(
        env.sim.state().token_issuing_requests(),
        1,
        "{:?}",
        env.changing_requests()
    );
    assert!(env.token_works(new));
    assert!(etcd.lock_keys(PREFIX).is_empty());
}

fn action(run: &Run, name: &str) -> String {
    run.runner(name)["action"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn a_run_that_fails_lets_go_of_the_fleet_lock_at_once() {
    let etcd = Etcd::start();
    let env = TestEnv::new();
    let e = env.expired("build");
    let key = key_file(env.dir.path(), 0o600);
    // A lease of an hour: had the failed run left its lock, the next host would wait for it.
    let settings = format!(
        "strategy = \"recreate\"\n{}",
        fleet_settings(&etcd.url, &key).replace("lock_ttl = \"10s\"", "lock_ttl = \"1h\"")
    );
    let hosts = fleet(&env, &e, 2, &settings);

    // Host 0 takes the lock and journals its plan; then its state directory breaks (the journal
    // directory is replaced by a file), so the journal cannot record the creation it is about
    // to request: the creation is not asked for, and the run ends with exit 1.
    let mut cmd = hosts[0].command(&env, &["rotate", "--output", "json"]);
    cmd.env("RUNNER_MEDIC_PAUSE_AT", "after-journal-planned");
    let mut a = Background::spawn(cmd, env.dir.path(), "a");
    a.wait_stopped();
    assert_eq!(etcd.lock_keys(PREFIX).len(), 1, "host 0 holds the lock");
    let journal_dir = hosts[0].dir.path().join("state").join("journal");
    std::fs::rename(&journal_dir, hosts[0].dir.path().join("journal.moved")).unwrap();
    std::fs::write(&journal_dir, "not a directory\n").unwrap();
    a.signal(nix::sys::signal::Signal::SIGCONT);
    let run = a.finish();
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.runner("build")["error"]
            .as_str()
            .unwrap_or_default()
            .contains("journal could not be written"),
        "{}",
        run.stdout
    );
    assert_eq!(env.sim.state().token_issuing_requests(), 0);

    // It let go of its lock and revoked its lease on the way out.
    assert!(
        etcd.lock_keys(PREFIX).is_empty(),
        "the lock outlived the run: {:?}",
        etcd.lock_keys(PREFIX)
    );
    assert_eq!(etcd.leases(), 0, "the lease outlived the run");

    // So the other host goes on at once.
    let b = Background::spawn(
        hosts[1].command(&env, &["rotate", "--output", "json"]),
        env.dir.path(),
        "b",
    )
    .finish();
    assert_eq!(b.code, 0, "{}\n{}", b.stdout, b.stderr);
    assert_eq!(action(&b, "build"), "recreate");
    assert_eq!(env.sim.state().token_issuing_requests(), 1);
    assert!(env.token_works(&hosts[1].token("build")));
}

#[test]
fn with_etcd_hung_shared_tokens_are_left_alone_and_the_next_round_heals() {
    let etcd = Etcd::start();
    let env = TestEnv::new();
    let shared = env.expired("shared");
    let alone = env.expired("alone");
    let key = key_file(env.dir.path(), 0o600);
    let settings = fleet_settings(&etcd.url, &key);
    let mut hosts = fleet(&env, &shared, 2, &settings);
    // Host 0 also has a runner of its own.
    hosts[0] = Host::new(&env, 0, &[shared.clone(), alone.clone()]);
    hosts[0].extra_settings = settings.clone();

    // etcd answers nothing (its processes are frozen): connections open, no reply comes.
    etcd.freeze(true);
    let run = hosts[0].run(&env, &["rotate", "--output", "json"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.top_codes()
            .contains(&"fleet_store_unavailable".to_string()),
        "{}",
        run.stdout
    );
    assert_eq!(action(&run, "shared"), "manual");
    assert_eq!(run.runner("shared")["outcome"], "skipped");
    assert_eq!(hosts[0].token("shared"), shared.token);
    assert_eq!(action(&run, "alone"), "reset");
    assert_eq!(run.runner("alone")["outcome"], "done");
    assert!(env.token_works(&hosts[0].token("alone")));
    let run = hosts[1].run(&env, &["rotate", "--output", "json"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(action(&run, "shared"), "manual");
    assert_eq!(hosts[1].token("shared"), shared.token);
    assert_eq!(
        env.sim.state().token_issuing_requests(),
        1,
        "only the runner that is host 0's alone: {:?}",
        env.changing_requests()
    );

    // etcd is back: the next round gives the shared runner one new token, on both hosts.
    etcd.freeze(false);
    let runs = crate::fleet::run_all(&env, &hosts, &["rotate", "--output", "json"]);
    for run in &runs {
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    }
    let mut actions: Vec<String> = runs.iter().map(|r| action(r, "shared")).collect();
    actions.sort();
    assert_eq!(actions, vec!["adopt", "reset"]);
    assert_eq!(env.sim.state().token_issuing_requests(), 2);
    let new = hosts[0].token("shared");
    assert!(env.token_works(&new));
    assert_eq!(hosts[1].token("shared"), new);
}

#[test]
fn the_agent_adopts_a_token_another_host_published_within_seconds() {
    let etcd = Etcd::start();
    let env = TestEnv::new();
    let e = env.healthy("build");
    let key = key_file(env.dir.path(), 0o600);
    let hosts = fleet(&env, &e, 2, &fleet_settings(&etcd.url, &key));
    for h in &hosts {
        other_host(
            &env,
            e.id.unwrap(),
            &h.system_id,
            chrono::Duration::minutes(2),
        );
    }

    // Host 1 runs the agent with a timer of an hour: only the watch can bring it the new token.
    let agent = Background::spawn(
        hosts[1].command(&env, &["agent", "--interval", "1h", "--jitter", "0s"]),
        env.dir.path(),
        "agent",
    );
    wait_for("the agent's first cycle and its watch", || {
        let log = agent.stderr();
        log.contains("waiting for the next cycle") && log.contains("watching the fleet store")
    });

    // Host 0 rotates the shared token (forced: it still works) through the store.
    let run = hosts[0].run(&env, &["rotate", "--force", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(action(&run, "build"), "renew");
    let new = hosts[0].token("build");
    assert_ne!(new, e.token);
    assert!(!env.token_works(&e.token), "host 1's token is dead now");

    wait_for("host 1's agent to adopt the new token", || {
        hosts[1].token("build") == new
    });
    let log = agent.stderr();
    assert!(
        log.contains("another host published a new token; adopting it now"),
        "{log}"
    );
    assert!(
        log.contains("adopting the token another host published"),
        "{log}"
    );
    env.assert_no_secrets(&log, "agent log");
    assert_eq!(
        env.sim.state().token_issuing_requests(),
        1,
        "the agent asked GitLab for no token: {:?}",
        env.changing_requests()
    );
    assert_eq!(
        env.changing_requests().len(),
        1,
        "{:?}",
        env.changing_requests()
    );
    drop(agent);
}

/// The new token in a host's journal.
fn journalled_token(host: &Host) -> String {
    let dir = host.dir.path().join("state").join("journal");
    let path = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a journal");
    let journal: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    journal["entries"][0]["new_token"]
        .as_str()
        .expect("a token in the journal")
        .to_string()
}

/// Host 0 of `hosts` takes the lock, gets a new token from GitLab, journals it and is killed
/// (SIGKILL) before publishing it. Returns the token.
fn kill_after_gitlab_answered(env: &TestEnv, hosts: &[Host], etcd: &Etcd) -> String {
    let mut cmd = hosts[0].command(env, &["rotate", "--output", "json"]);
    cmd.env("RUNNER_MEDIC_PAUSE_AT", "after-journal-obtained");
    let mut a = Background::spawn(cmd, env.dir.path(), "killed");
    a.wait_stopped();
    a.signal(nix::sys::signal::Signal::SIGKILL);
    let killed = a.finish();
    assert_eq!(killed.code, -1, "killed by a signal");
    assert_eq!(env.sim.state().token_issuing_requests(), 1);
    let token = journalled_token(&hosts[0]);
    assert!(env.token_works(&token));
    assert_eq!(
        hosts[0].token("build"),
        hosts[1].token("build"),
        "not written yet"
    );
    assert_eq!(
        etcd.lock_keys(PREFIX).len(),
        1,
        "the dead run's lock is still there"
    );
    assert!(
        etcd.keys(PREFIX).iter().all(|k| !k.ends_with("/token")),
        "nothing published"
    );
    token
}

#[test]
fn a_lock_holder_killed_after_gitlab_answered_publishes_its_token_on_restart() {
    let etcd = Etcd::start();
    let env = TestEnv::new();
    let e = env.expired("build");
    let key = key_file(env.dir.path(), 0o600);
    let settings = fleet_settings(&etcd.url, &key).replace("10s", "30s");
    let hosts = fleet(&env, &e, 3, &settings);
    let new = kill_after_gitlab_answered(&env, &hosts, &etcd);

    // Host 1 waits for the dead run's lock.
    let waiting = Background::spawn(
        hosts[1].command(&env, &["rotate", "--output", "json"]),
        env.dir.path(),
        "waiting",
    );
    wait_for("host 1 to wait for the lock", || {
        etcd.lock_keys(PREFIX).len() == 2
    });

    // Host 0 comes back: it publishes the token from its journal, lets go of the dead run's
    // lock and writes the token.
    let run = hosts[0].run(&env, &["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("published the token obtained before the interruption"),
        "{}",
        run.stderr
    );
    assert_eq!(hosts[0].token("build"), new);

    // Host 1 takes that token, and so does host 2: GitLab issued one token in all.
    let run = waiting.finish();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(action(&run, "build"), "adopt");
    let run = hosts[2].run(&env, &["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(action(&run, "build"), "adopt");
    every_host_holds_the_one_token_issued(&env, &etcd, &hosts, &new);
}

#[test]
fn when_a_killed_holders_lease_lapses_first_another_host_rotates_and_the_restart_adopts() {
    let etcd = Etcd::start();
    let env = TestEnv::new();
    let e = env.expired("build");
    let key = key_file(env.dir.path(), 0o600);
    let settings = fleet_settings(&etcd.url, &key).replace("10s", "5s");
    let hosts = fleet(&env, &e, 3, &settings);
    let lost = kill_after_gitlab_answered(&env, &hosts, &etcd);

    // Host 1 waits until the dead run's lease lapses, then, finding nothing published and its
    // token dead, obtains one: the one extra token request the crash costs.
    let run = hosts[1].run(&env, &["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(action(&run, "build"), "reset");
    let new = hosts[1].token("build");
    assert_ne!(new, lost);
    assert!(!env.token_works(&lost));
    assert_eq!(env.sim.state().token_issuing_requests(), 2);

    // Host 0 comes back: its journalled token is dead, so it is not published over the newer
    // one; host 0 adopts that instead.
    let run = hosts[0].run(&env, &["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(action(&run, "build"), "adopt", "{}", run.stdout);
    let run = hosts[2].run(&env, &["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(action(&run, "build"), "adopt");
    for h in &hosts {
        assert_eq!(h.token("build"), new);
    }
    assert_eq!(
        env.sim.state().token_issuing_requests(),
        2,
        "{:?}",
        env.changing_requests()
    );
    // The next round asks for nothing.
    for h in &hosts {
        let run = h.run(&env, &["rotate", "--output", "json"]);
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        assert_eq!(action(&run, "build"), "none");
    }
    assert_eq!(env.sim.state().token_issuing_requests(), 2);
}

#[test]
fn a_three_member_cluster_keeps_coordinating_with_a_member_killed_mid_run() {
    let mut etcd = Etcd::cluster(3);
    let env = TestEnv::new();
    let e = env.expired("build");
    let key = key_file(env.dir.path(), 0o600);
    let endpoints: Vec<String> = etcd
        .endpoints()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect();
    let settings = fleet_settings(&etcd.url, &key).replace(
        &format!("[\"{}\"]", etcd.url),
        &format!("[{}]", endpoints.join(", ")),
    );
    let hosts = fleet(&env, &e, 4, &settings);

    // Host 0 holds the lock and has its new token; then the first member of the cluster dies.
    let mut cmd = hosts[0].command(&env, &["rotate", "--output", "json"]);
    cmd.env("RUNNER_MEDIC_PAUSE_AT", "after-journal-obtained");
    let mut a = Background::spawn(cmd, env.dir.path(), "holder");
    a.wait_stopped();
    etcd.kill(0);
    // The first endpoint host 0 knows is gone; the two left are a majority once they elect.
    etcd.wait_for_leader();
    a.signal(nix::sys::signal::Signal::SIGCONT);
    let run = a.finish();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(action(&run, "build"), "reset");
    let new = hosts[0].token("build");

    // The two members left are a majority: the other hosts adopt the published token.
    let runs = crate::fleet::run_all(&env, &hosts[1..], &["rotate", "--output", "json"]);
    for run in &runs {
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        assert_eq!(action(run, "build"), "adopt");
    }
    every_host_holds_the_one_token_issued(&env, &etcd, &hosts, &new);
}

#[test]
fn etcd_over_tls_with_a_client_certificate() {
    let env = TestEnv::new();
    let tls = TlsFiles::generate(env.dir.path());
    let etcd = Etcd::start_tls(&tls, true);
    assert!(etcd.url.starts_with("https://"));
    let e = env.expired("build");
    let key = key_file(env.dir.path(), 0o600);
    let settings = format!(
        "{}ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        fleet_settings(&etcd.url, &key),
        tls.ca.display(),
        tls.client_cert.display(),
        tls.client_key.display()
    );
    let hosts = fleet(&env, &e, 3, &settings);
    let runs = crate::fleet::run_all(&env, &hosts, &["rotate", "--output", "json"]);
    let mut actions: Vec<String> = runs
        .iter()
        .map(|r| {
            assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
            action(r, "build")
        })
        .collect();
    actions.sort();
    assert_eq!(actions, vec!["adopt", "adopt", "reset"]);
    let new = hosts[0].token("build");
    for h in &hosts {
        assert_eq!(h.token("build"), new);
    }
    assert_eq!(env.sim.state().token_issuing_requests(), 1);

    // Without the client certificate etcd refuses the connection: the shared token is left.
    let other = env.expired("other");
    let mut host = fleet(&env, &other, 2, "").remove(0);
    host.extra_settings = format!(
        "{}ca_file = \"{}\"\n",
        fleet_settings(&etcd.url, &key),
        tls.ca.display()
    );
    let run = host.run(&env, &["rotate", "--output", "json"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run
        .top_codes()
        .contains(&"fleet_store_unavailable".to_string()));
    assert_eq!(action(&run, "other"), "manual");
    assert_eq!(env.sim.state().token_issuing_requests(), 1);
}

#[test]
fn etcd_with_authentication() {
    let mut etcd = Etcd::start();
    let env = TestEnv::new();
    etcd.enable_auth("medic", "medic-secret", PREFIX);
    let e = env.expired("build");
    let key = key_file(env.dir.path(), 0o600);
    let password = env.dir.path().join("etcd-password");
    std::fs::write(&password, "medic-secret\n").unwrap();
    std::fs::set_permissions(
        &password,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let settings = format!(
        "{}username = \"medic\"\npassword_file = \"{}\"\n",
        fleet_settings(&etcd.url, &key),
        password.display()
    );
    let hosts = fleet(&env, &e, 2, &settings);
    let runs = crate::fleet::run_all(&env, &hosts, &["rotate", "--output", "json"]);
    let mut actions: Vec<String> = runs
        .iter()
        .map(|r| {
            assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
            assert!(
                !r.stderr.contains("medic-secret"),
                "the password is in the log"
            );
            action(r, "build")
        })
        .collect();
    actions.sort();
    assert_eq!(actions, vec!["adopt", "reset"]);
    assert_eq!(hosts[0].token("build"), hosts[1].token("build"));
    assert_eq!(env.sim.state().token_issuing_requests(), 1);
    assert!(etcd.lock_keys(PREFIX).is_empty());

    // A wrong password: the store cannot be used, the shared token is left alone.
    std::fs::write(&password, "wrong\n").unwrap();
    let other = env.expired("other");
    let mut host = fleet(&env, &other, 2, "").remove(0);
    host.extra_settings = settings.clone();
    let run = host.run(&env, &["rotate", "--output", "json"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run
        .top_codes()
        .contains(&"fleet_store_unavailable".to_string()));
    assert_eq!(action(&run, "other"), "manual");
    assert_eq!(env.sim.state().token_issuing_requests(), 1);
}

/// A GitLab without the managers endpoint cannot say whether a token is shared. A host with a
/// fleet store configured is in a fleet, so such a token goes through the store all the same:
/// one host resets it, the others adopt it, and none cuts another off.
#[test]
fn with_a_store_a_token_whose_sharing_is_unknown_is_still_coordinated() {
    let etcd = Etcd::start();
    let env = TestEnv::new();
    let e = env.expired("build");
    let key = key_file(env.dir.path(), 0o600);
    let hosts = fleet(&env, &e, 3, &fleet_settings(&etcd.url, &key));
    env.sim.state().managers_endpoint = false;
    let mut actions = Vec::new();
    for h in &hosts {
        let run = h.run(&env, &["rotate", "--output", "json"]);
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        assert_eq!(
            run.runner("build")["shared"],
            false,
            "not known to be shared"
        );
        actions.push(action(&run, "build"));
    }
    assert_eq!(actions, vec!["reset", "adopt", "adopt"]);
    let new = hosts[0].token("build");
    for h in &hosts {
        assert_eq!(h.token("build"), new);
    }
    assert!(env.token_works(&new));
    assert_eq!(env.sim.state().token_issuing_requests(), 1);
}
