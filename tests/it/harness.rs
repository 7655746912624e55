//! `TestEnv`: a temp dir, a config.toml, the GitLab simulator, and the real binary.
//! Each test builds its world as data, runs `runner-medic`, and checks what came out: exit code,
//! stdout, stderr, the files afterwards and the simulator's request log.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Duration, Utc};
use gitlab_sim::{NewRunner, Options, RunnerType, Simulator};

pub const BIN: &str = env!("CARGO_BIN_EXE_runner-medic");

pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub sim: Simulator,
    pub admin_token: String,
    pub config: PathBuf,
    pub settings: PathBuf,
    pub state: PathBuf,
    /// Extra settings text appended to the generated settings file.
    pub extra_settings: String,
    pub use_admin: bool,
}

/// One `[[runners]]` entry to write.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub url: String,
    pub id: Option<u64>,
    pub token: String,
    pub obtained_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub extra: String,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
    /// The runner object named `name` in the JSON report.
    pub fn runner(&self, name: &str) -> serde_json::Value {
        self.json()["runners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no runner {name} in report"))
    }
    /// The finding `code` of runner `name`; the test fails, showing the report, without it.
    pub fn finding(&self, name: &str, code: &str) -> serde_json::Value {
        self.runner(name)["findings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["code"] == code)
            .cloned()
            .unwrap_or_else(|| panic!("no {code} for {name}: {}", self.stdout))
    }

    pub fn codes(&self, name: &str) -> Vec<String> {
        self.runner(name)["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap().to_string())
            .collect()
    }
    pub fn top_codes(&self) -> Vec<String> {
        self.json()["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap().to_string())
            .collect()
    }
}

fn fmt(d: DateTime<Utc>) -> String {
    d.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl TestEnv {
    pub fn new() -> Self {
        Self::with_options(Options::default())
    }

    pub fn with_options(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            tls_dir: Some(dir.path().to_path_buf()),
            ..options
        };
        let sim = Simulator::start(options).unwrap();
        let admin_token = sim.state().add_pat(&["api"], true, None);
        let config = dir.path().join("config.toml");
        let settings = dir.path().join("settings.toml");
        let state = dir.path().join("state");
        Self {
            dir,
            sim,
            admin_token,
            config,
            settings,
            state,
            extra_settings: String::new(),
            use_admin: true,
        }
    }

    pub fn url(&self) -> String {
        self.sim.url()
    }

    /// A runner in the simulator plus the matching config entry.
    pub fn runner(&self, name: &str, kind: RunnerType) -> Entry {
        let (id, token) = self.sim.state().add_runner(NewRunner {
            runner_type: kind,
            description: name.to_string(),
            tag_list: vec!["linux".into()],
            ..NewRunner::default()
        });
        let expires = self.sim.state().runners[&id].token_expires_at;
        Entry {
            name: name.to_string(),
            url: self.url(),
            id: Some(id),
            token,
            obtained_at: Some(Utc::now() - Duration::days(1)),
            expires_at: expires,
            extra: String::new(),
        }
    }

    pub fn healthy(&self, name: &str) -> Entry {
        self.runner(name, RunnerType::InstanceType)
    }

    /// Token expired (in the simulator and in config.toml).
    pub fn expired(&self, name: &str) -> Entry {
        let mut e = self.runner(name, RunnerType::ProjectType);
        self.sim.state().expire_token(e.id.unwrap());
        e.obtained_at = Some(Utc::now() - Duration::days(31));
        e.expires_at = Some(Utc::now() - Duration::days(1));
        e
    }

    /// Token reset elsewhere: config.toml has the old value.
    pub fn revoked(&self, name: &str) -> Entry {
        let e = self.runner(name, RunnerType::ProjectType);
        self.sim.state().reset_token(e.id.unwrap());
        e
    }

    /// Runner record deleted; config.toml still has it.
    pub fn deleted(&self, name: &str) -> Entry {
        let e = self.runner(name, RunnerType::GroupType);
        self.sim.state().runners.remove(&e.id.unwrap());
        e
    }

    /// Valid token that expires in `days`.
    pub fn expiring(&self, name: &str, days: i64) -> Entry {
        let mut e = self.runner(name, RunnerType::InstanceType);
        let at = Utc::now() + Duration::days(days);
        self.sim
            .state()
            .runners
            .get_mut(&e.id.unwrap())
            .unwrap()
            .token_expires_at = Some(at);
        e.obtained_at = Some(Utc::now() - Duration::days(80));
        e.expires_at = Some(at);
        e
    }

    pub fn write_config(&self, entries: &[Entry]) -> String {
        let mut text = String::from("# managed by hand\nconcurrent = 4\ncheck_interval = 0\n\n[session_server]\n  session_timeout = 1800\n");
        for e in entries {
            text.push_str(&format!(
                "\n[[runners]]\n  name = \"{}\"\n  url = \"{}\"\n",
                e.name, e.url
            ));
            if let Some(id) = e.id {
                text.push_str(&format!("  id = {id}\n"));
            }
            text.push_str(&format!("  token = \"{}\"\n", e.token));
            if let Some(at) = e.obtained_at {
                text.push_str(&format!("  token_obtained_at = {}\n", fmt(at)));
            }
            text.push_str(&format!(
                "  token_expires_at = {}\n",
                e.expires_at
                    .map_or_else(|| "0001-01-01T00:00:00Z".to_string(), fmt)
            ));
            text.push_str("  executor = \"shell\"  # keep this comment\n");
            text.push_str(&e.extra);
        }
        self.write_config_text(&text);
        text
    }

    pub fn write_config_text(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
        std::fs::set_permissions(&self.config, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config).unwrap()
    }

    fn write_settings(&self) {
        let mut text = format!(
            "state_dir = \"{}\"
",
            self.state.display()
        );
        if !self.extra_settings.contains("request_timeout") {
            text.push_str("request_timeout = \"5s\"\n");
        }
        if self.use_admin {
            let token_file = self.dir.path().join("admin-token");
            replace_file(&token_file, self.admin_token.as_bytes(), 0o600);
            text.push_str(&format!(
                "gitlab_url = \"{}\"\nadmin_token_file = \"{}\"\n",
                self.url(),
                token_file.display()
            ));
        }
        text.push_str(&self.extra_settings);
        if !self.extra_settings.contains("[service]") {
            text.push_str("\n[service]\nmanager = \"none\"\n");
        }
        replace_file(&self.settings, text.as_bytes(), 0o644);
    }

    /// The binary with this environment's config and settings, and nothing from the caller's env.
    pub fn command(&self, args: &[&str]) -> Command {
        self.write_settings();
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .arg("--runner-config")
            .arg(&self.config)
            .arg("--settings")
            .arg(&self.settings)
            .env_remove("RUNNER_MEDIC_ADMIN_TOKEN")
            .env_remove("RUNNER_MEDIC_GITLAB_URL")
            .env_remove("RUNNER_MEDIC_ADMIN_TOKEN_FILE")
            .env_remove("RUNNER_MEDIC_STATE_DIR")
            .env_remove("RUNNER_MEDIC_RUNNER_CONFIG")
            .env_remove("RUNNER_MEDIC_SETTINGS")
            .env_remove("RUNNER_MEDIC_METRICS_FILE")
            .env_remove("RUNNER_MEDIC_CRASH_AT")
            .env_remove("RUNNER_MEDIC_RUN_TIMEOUT")
            .env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("NO_COLOR")
            .env("RUNNER_MEDIC_TEST_FAST_RETRY", "1")
            .env("RUST_LOG", "runner_medic=debug");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_cmd(self.command(args))
    }

    pub fn run_cmd(&self, mut cmd: Command) -> Run {
        let out: Output = cmd.output().expect("runner-medic runs");
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        // Every run is scanned for secrets: no token may ever be printed.
        self.assert_no_secrets(&run.stdout, "stdout");
        self.assert_no_secrets(&run.stderr, "stderr");
        run
    }

    /// Every token the simulator ever issued, and the privileged token.
    pub fn all_secrets(&self) -> Vec<String> {
        let s = self.sim.state();
        let mut all: Vec<String> = s.issued_tokens.clone();
        all.extend(s.pats.iter().map(|p| p.token.clone()));
        all
    }

    pub fn assert_no_secrets(&self, text: &str, what: &str) {
        for secret in self.all_secrets() {
            assert!(
                !text.contains(&secret),
                "a token leaked into {what}:\n{text}"
            );
        }
    }

    /// Token currently in config.toml for `name`.
    pub fn config_token(&self, name: &str) -> String {
        token_in(&self.config, name)
    }

    pub fn config_id(&self, name: &str) -> Option<i64> {
        let doc: toml::Table = toml::from_str(&self.config_text()).unwrap();
        doc["runners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"].as_str() == Some(name))
            .and_then(|r| r.get("id"))
            .and_then(toml::Value::as_integer)
    }

    /// Whether `token` is the current token of a runner the simulator has.
    pub fn token_works(&self, token: &str) -> bool {
        self.sim.state().runner_by_token(token).is_some()
    }

    pub fn changing_requests(&self) -> Vec<String> {
        self.sim
            .state()
            .log
            .iter()
            .filter(|e| e.is_changing())
            .map(|e| format!("{} {}", e.method, e.route))
            .collect()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The temp files runner-medic left in `dir` (`.<name>.runner-medic-tmp.<random>`).
pub fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(runner_medic::fs::TEMP_MARKER))
                .collect()
        })
        .unwrap_or_default()
}

/// The token of runner `name` in the config.toml at `path`.
pub fn token_in(path: &Path, name: &str) -> String {
    let doc: toml::Table = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    doc["runners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"].as_str() == Some(name))
        .and_then(|r| r["token"].as_str())
        .unwrap()
        .to_string()
}

pub fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A stand-in gitlab-runner process (this binary's `demo --stand-in-runner`), managed through a
/// `gitlab-runner`-compatible launcher script (`start|stop|status`).
pub struct StandIn {
    pub launcher: PathBuf,
    pub log: PathBuf,
    pub pid_file: PathBuf,
}

impl StandIn {
    pub fn install(env: &TestEnv) -> Self {
        let dir = env.dir.path();
        let launcher = dir.join("gitlab-runner");
        let log = dir.join("runner.log");
        let pid_file = dir.join("runner.pid");
        let script = runner_medic::commands::demo::launcher_script(
            Path::new(BIN),
            &env.config,
            &pid_file,
            &log,
            100,
        );
        std::fs::write(&launcher, script).unwrap();
        std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self {
            launcher,
            log,
            pid_file,
        }
    }

    pub fn settings(&self) -> String {
        format!("\n[service]\nmanager = \"gitlab-runner\"\ngitlab_runner_bin = \"{}\"\nstop_timeout = \"10s\"\n", self.launcher.display())
    }

    pub fn ctl(&self, action: &str) -> bool {
        Command::new(&self.launcher)
            .arg(action)
            .status()
            .unwrap()
            .success()
    }

    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Lines of the log that match `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = Command::new(&self.launcher).arg("stop").status();
    }
}

/// Wait (bounded) until the simulator has seen a successful job poll with `token`: the runner
/// works again. Returns whether it did.
pub fn wait_polling_with(env: &TestEnv, token: &str) -> bool {
    for _ in 0..100 {
        let seen = env.sim.state().log.iter().any(|e| {
            e.route == "/api/v4/jobs/request"
                && e.status == 204
                && e.credential.as_deref() == Some(token)
        });
        if seen {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

/// Write `path` whole by renaming a finished file into place, so that a run started a moment
/// earlier (two runs spawned together, each writing the settings) never reads a half-written one.
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A run in the background, its output going to files (a pipe would fill up with its log and
/// stop it).
pub struct Background {
    pub child: std::process::Child,
    out: PathBuf,
    err: PathBuf,
}

impl Background {
    pub fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Self {
        let out = dir.join(format!("{name}.stdout"));
        let err = dir.join(format!("{name}.stderr"));
        let child = cmd
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .stdin(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Self { child, out, err }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Wait until the process stopped itself at its pause point (`RUNNER_MEDIC_PAUSE_AT`).
    pub fn wait_stopped(&mut self) {
        let stat = format!("/proc/{}/stat", self.pid());
        wait_for("the run to reach its pause point", || {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the run ended ({status}) before its pause point:\n{}",
                    self.stderr()
                );
            }
            std::fs::read_to_string(&stat)
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .map(|r| r.trim_start().starts_with('T'))
                })
                .unwrap_or(false)
        });
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    /// Its end, within a deadline that is there only so that a hung run fails the test rather
    /// than hanging it.
    pub fn finish(mut self) -> Run {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the run did not end:\n{}", self.stderr());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&self.out).unwrap_or_default(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Poll `done` until it holds; the deadline only keeps a broken run from hanging the test.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
