//! OpenRC: `rc-service` and `supervise-daemon` (Debian's `openrc`), not booted as init but
//! holding its state in a private mount namespace: `/run` is a tmpfs there (with OpenRC's
//! `softlevel`), and `/etc/init.d` and `/etc/runlevels` are this test's directories. The init
//! script is the one gitlab-runner's service library (kardianos/service) writes for OpenRC:
//! `supervisor=supervise-daemon`, no `reload`, no stop signal of its own (so `rc-service stop`
//! sends SIGTERM). runner-medic runs inside the namespace, as it would on such a host.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::host::{remove_cgroup, HostCheck};
use super::{exclusive, require, require_root, sh, wrapped, Supervised};
use crate::harness::{Run, TestEnv, BIN};

/// Not `gitlab-runner`: OpenRC names the service's cgroup after it, in the host's hierarchy.
const NAME: &str = "gitlab-runner-rm-test";

struct OpenRc {
    dir: PathBuf,
    config: PathBuf,
    holder: Child,
    log: PathBuf,
}

impl OpenRc {
    fn start(env: &TestEnv) -> Self {
        let dir = env.path("openrc");
        for d in ["init.d", "runlevels", "log"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let me = Self {
            log: dir.join("log/runner-medic.log"),
            config: env.config.clone(),
            dir: dir.clone(),
            holder: Command::new("setsid")
                .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
                .arg(format!(
                    "set -e
                     mount -t tmpfs -o mode=755 tmpfs /run
                     mkdir -p /run/openrc && cd /run/openrc
                     mkdir daemons exclusive failed hotplugged inactive options scheduled started \
                           starting stopping tmp wasinactive
                     touch softlevel
                     mount --bind '{d}/init.d' /etc/init.d
                     mount --bind '{d}/runlevels' /etc/runlevels
                     touch '{d}/ready'
                     exec sleep infinity",
                    d = dir.display()
                ))
                .stdin(Stdio::null())
                .spawn()
                .expect("unshare runs"),
        };
        for _ in 0..100 {
            if dir.join("ready").exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(dir.join("ready").exists(), "the namespace holder is up");
        me.write_script(false);
        me
    }

    /// The init script as kardianos/service writes it for OpenRC (its `EnvVars` become `export`
    /// lines; the log directory is this test's).
    fn write_script(&self, broken: bool) {
        let command = if broken {
            "/nonexistent/gitlab-runner".to_string()
        } else {
            BIN.to_string()
        };
        let args = super::stand_in_argv(&self.config);
        let args = args.strip_prefix(BIN).unwrap().trim();
        let env = format!("export STAND_IN_JOB_FILE={}\n", self.job_file().display());
        let text = format!(
            "#!/sbin/openrc-run\nsupervisor=supervise-daemon\nname=\"{NAME}\"\ndescription=\"GitLab Runner\"\n\
             command={command}\ncommand_args=\"{args} \"\nname=$(basename $(readlink -f $command))\n\
             supervise_daemon_args=\"--stdout {log}/${{name}}.log --stderr {log}/${{name}}.err\"\n\n{env}",
            log = self.dir.join("log").display()
        );
        let script = self.dir.join("init.d").join(NAME);
        std::fs::write(&script, text).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn job_file(&self) -> PathBuf {
        self.dir.join("job")
    }

    fn nsenter(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            "-t".into(),
            self.holder.id().to_string(),
            "-m".into(),
            "--".into(),
        ]
    }

    fn rc(&self, action: &str) -> std::process::Output {
        let mut argv = self.nsenter();
        argv.extend(["rc-service".into(), NAME.into(), action.into()]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        sh(&argv, false)
    }
}

impl Supervised for OpenRc {
    fn kind(&self) -> &'static str {
        "openrc"
    }
    fn medic(&self, env: &TestEnv, args: &[&str]) -> Run {
        let prefix = self.nsenter();
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        env.run_cmd(wrapped(env.command(args), &prefix))
    }
    fn ctl(&self, action: &str) {
        let out = self.rc(action);
        assert!(
            out.status.success(),
            "rc-service {NAME} {action}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn job_at_next_start(&self, ms: Option<u64>) {
        super::job_file(&self.job_file(), ms);
    }
    fn break_start(&self, broken: bool) {
        self.write_script(broken);
    }
    fn failed_start_words(&self) -> &'static [&'static str] {
        &["/nonexistent/gitlab-runner does not exist"]
    }
}

impl Drop for OpenRc {
    fn drop(&mut self) {
        let _ = self.rc("stop");
        // Anything still running in the namespace (a supervisor that failed to stop) goes with it.
        let ns = std::fs::read_link(format!("/proc/{}/ns/mnt", self.holder.id())).ok();
        if let Some(ns) = ns {
            for e in std::fs::read_dir("/proc").unwrap().flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                    continue;
                };
                if pid as u32 != self.holder.id()
                    && std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                        .ok()
                        .as_ref()
                        == Some(&ns)
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        remove_cgroup(&Path::new("/sys/fs/cgroup/unified").join(NAME));
    }
}

#[test]
fn openrc_supervise_daemon() {
    let _one = exclusive();
    require_root();
    require("rc-service", "openrc");
    require("supervise-daemon", "openrc");
    require("nsenter", "util-linux");
    let host = HostCheck::take();
    {
        let mut env = TestEnv::new();
        let runner = env.revoked("build");
        env.write_config(std::slice::from_ref(&runner));
        env.extra_settings = super::service_settings(NAME);
        let openrc = OpenRc::start(&env);
        openrc.ctl("start");
        super::scenario(&openrc, &env, &runner);
    }
    host.assert_unchanged();
}
