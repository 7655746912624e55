//! systemd as PID 1 of a `systemd-nspawn -b` container (Debian's `systemd-container`) booted
//! from a Debian 12 minbase rootfs (debootstrap, cached under [`CACHE`]): a real system
//! manager with journald and `/etc/systemd/system` units. Confined: its own cgroups under the
//! host's `name=systemd` and cgroup2 hierarchies, `--register=no --keep-unit` (no machined),
//! a volatile overlay over the rootfs, read-only `/proc/sys` (nspawn's default). It shares the
//! host's network namespace so the stand-in reaches the simulator on loopback.
//!
//! The unit is the one `gitlab-runner install` writes (kardianos/service's template:
//! `Restart=always`, `RestartSec=120`, `EnvironmentFile=-/etc/sysconfig/gitlab-runner`, no
//! `KillSignal`, no `ExecReload`), plus the drop-in gitlab-runner's docs recommend
//! (`KillSignal=SIGQUIT`) with `ExecReload=/bin/kill -HUP $MAINPID`, and a log file for the
//! test. runner-medic runs inside the container's mount, PID, UTS and IPC namespaces (not its
//! network, which is the host's anyway), as it would on that host.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::host::{remove_cgroup, HostCheck};
use super::{exclusive, require, require_root, sh, wrapped, Supervised};
use crate::harness::{Run, TestEnv, BIN};

/// Where the debootstrapped rootfs is kept between runs (a tarball, and its extraction).
pub const CACHE: &str = "/var/cache/runner-medic-tests";
const MIRROR: &str = "http://deb.debian.org/debian";

/// The cached rootfs (made once: debootstrap of bookworm minbase with systemd, dbus, procps).
pub fn rootfs() -> PathBuf {
    let cache = Path::new(CACHE);
    let tar = cache.join("bookworm-systemd.tar");
    let dir = cache.join("bookworm-systemd");
    std::fs::create_dir_all(cache).unwrap();
    if !tar.exists() {
        require("debootstrap", "debootstrap");
        let build = cache.join(format!("build-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&build);
        let build_s = build.display().to_string();
        sh(
            &[
                "debootstrap",
                "--variant=minbase",
                "--include=systemd,systemd-sysv,dbus,procps",
                "bookworm",
                &build_s,
                MIRROR,
            ],
            true,
        );
        let part = cache.join("bookworm-systemd.tar.part");
        sh(
            &[
                "tar",
                "-C",
                &build_s,
                "-cf",
                &part.display().to_string(),
                ".",
            ],
            true,
        );
        std::fs::rename(&part, &tar).unwrap();
        std::fs::remove_dir_all(&build).unwrap();
    }
    if !dir.join("usr/lib/systemd/systemd").exists() {
        let part = cache.join(format!("bookworm-systemd.part-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&part);
        std::fs::create_dir_all(&part).unwrap();
        sh(
            &[
                "tar",
                "-C",
                &part.display().to_string(),
                "-xf",
                &tar.display().to_string(),
            ],
            true,
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&part, &dir).unwrap();
    }
    dir
}

struct Nspawn {
    dir: PathBuf,
    config: PathBuf,
    nspawn: Child,
    /// The container's PID 1.
    leader: u32,
    cgroup: String,
    machine: String,
}

impl Nspawn {
    fn boot(env: &TestEnv) -> Self {
        let rootfs = rootfs();
        let dir = env.path("systemd");
        std::fs::create_dir_all(&dir).unwrap();
        let cgroup = format!("runner-medic-test-nspawn-{}", std::process::id());
        let machine = format!("rmtest{}", std::process::id());
        for h in ["systemd", "unified"] {
            std::fs::create_dir_all(format!("/sys/fs/cgroup/{h}/{cgroup}")).unwrap();
        }
        let shared = env.dir.path().display().to_string();
        let log = std::fs::File::create(dir.join("nspawn.log")).unwrap();
        let nspawn = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > /sys/fs/cgroup/systemd/{cgroup}/cgroup.procs && \
                 echo $$ > /sys/fs/cgroup/unified/{cgroup}/cgroup.procs && exec setsid \"$@\""
            ))
            .arg("sh")
            .args(["systemd-nspawn", "-q", "-D"])
            .arg(&rootfs)
            .args(["-M", &machine, "-b", "--register=no", "--keep-unit"])
            .args(["--volatile=overlay", "--console=passive"])
            .arg(format!("--bind={shared}"))
            .arg(format!("--bind-ro={BIN}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("systemd-nspawn runs");
        let mut me = Self {
            dir,
            config: env.config.clone(),
            leader: 0,
            nspawn,
            cgroup,
            machine,
        };
        // The container's PID 1 is the child of nspawn that runs systemd (nspawn's first child
        // is a short-lived helper); wait for it and for the boot to finish.
        let mut state = String::new();
        for _ in 0..400 {
            me.leader = children(me.nspawn.id())
                .into_iter()
                .find(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|c| c.trim() == "systemd")
                })
                .unwrap_or(0);
            if me.leader != 0 {
                let out = me.exec(&["systemctl", "is-system-running"]);
                state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if state == "running" || state == "degraded" {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            state == "running" || state == "degraded",
            "the container did not boot (state {state:?}):\n{}",
            me.nspawn_log()
        );
        me.install();
        me
    }

    fn nspawn_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("nspawn.log")).unwrap_or_default()
    }

    fn prefix(&self) -> Vec<String> {
        [
            "nsenter",
            "-t",
            &self.leader.to_string(),
            "-m",
            "-u",
            "-i",
            "-p",
            "--",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect()
    }

    fn exec(&self, argv: &[&str]) -> std::process::Output {
        let mut all = self.prefix();
        all.extend(argv.iter().map(|s| (*s).to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        sh(&all, false)
    }

    fn exec_ok(&self, argv: &[&str]) {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Put `text` at `path` inside the container.
    fn put(&self, path: &str, text: &str) {
        let staged = self.dir.join("staged");
        std::fs::write(&staged, text).unwrap();
        if let Some(parent) = Path::new(path).parent() {
            self.exec_ok(&["mkdir", "-p", &parent.display().to_string()]);
        }
        self.exec_ok(&["cp", &staged.display().to_string(), path]);
    }

    fn job_file(&self) -> PathBuf {
        self.dir.join("job")
    }

    fn install(&self) {
        let args = super::stand_in_argv(&self.config);
        let args: Vec<String> = args
            .split_whitespace()
            .skip(1)
            .map(|a| format!("\"{a}\""))
            .collect();
        self.put(
            "/etc/systemd/system/gitlab-runner.service",
            &format!(
                "[Unit]\nDescription=GitLab Runner\nConditionFileIsExecutable={BIN}\n\
                 After=syslog.target network.target\n\n[Service]\nStartLimitInterval=5\n\
                 StartLimitBurst=10\nExecStart={BIN} {}\n\n\n\n\nRestart=always\nRestartSec=120\n\
                 EnvironmentFile=-/etc/sysconfig/gitlab-runner\n\n[Install]\nWantedBy=multi-user.target\n",
                args.join(" ")
            ),
        );
        self.put(
            "/etc/systemd/system/gitlab-runner.service.d/kill.conf",
            &format!(
                "[Service]\nKillSignal=SIGQUIT\nTimeoutStopSec=120\nExecReload=/bin/kill -HUP $MAINPID\n\
                 StandardOutput=append:{log}\nStandardError=append:{log}\n",
                log = self.dir.join("runner.log").display()
            ),
        );
        self.put(
            "/etc/sysconfig/gitlab-runner",
            &format!("STAND_IN_JOB_FILE={}\n", self.job_file().display()),
        );
        self.exec_ok(&["systemctl", "daemon-reload"]);
        self.exec_ok(&["systemctl", "enable", "--now", "gitlab-runner"]);
    }
}

/// Every pid in the cgroup `dir` and below it.
fn cgroup_procs(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(cgroup_procs(&e.path()));
            }
        }
    }
    pids
}

/// The pids whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Supervised for Nspawn {
    fn kind(&self) -> &'static str {
        "systemd"
    }
    fn medic(&self, env: &TestEnv, args: &[&str]) -> Run {
        let prefix = self.prefix();
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        env.run_cmd(wrapped(env.command(args), &prefix))
    }
    fn ctl(&self, action: &str) {
        self.exec_ok(&["systemctl", action, "gitlab-runner"]);
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("runner.log")).unwrap_or_default()
    }
    fn job_at_next_start(&self, ms: Option<u64>) {
        super::job_file(&self.job_file(), ms);
    }
    fn break_start(&self, broken: bool) {
        let dropin = "/etc/systemd/system/gitlab-runner.service.d/broken.conf";
        if broken {
            self.put(
                dropin,
                "[Service]\nExecStart=\nExecStart=/nonexistent/gitlab-runner run\n",
            );
        } else {
            self.exec_ok(&["rm", "-f", dropin]);
        }
        self.exec_ok(&["systemctl", "daemon-reload"]);
    }
    fn failed_start_words(&self) -> &'static [&'static str] {
        &[
            "Failed to locate executable /nonexistent/gitlab-runner",
            "203/EXEC",
        ]
    }
}

impl Drop for Nspawn {
    fn drop(&mut self) {
        if self.leader != 0 {
            let _ = self.exec(&["systemctl", "poweroff"]);
        }
        for _ in 0..100 {
            if matches!(self.nspawn.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !matches!(self.nspawn.try_wait(), Ok(Some(_))) {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        // Whatever still runs in the container's cgroup (a container that did not power off)
        // goes too, so its cgroups can be removed.
        let procs = Path::new("/sys/fs/cgroup/systemd").join(&self.cgroup);
        for _ in 0..50 {
            let left = cgroup_procs(&procs);
            if left.is_empty() {
                break;
            }
            for pid in left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for h in ["systemd", "unified"] {
            remove_cgroup(&Path::new("/sys/fs/cgroup").join(h).join(&self.cgroup));
        }
        // /run is no tmpfs here, so nspawn cannot remove what it propagated to the container.
        let propagate = Path::new("/run/systemd/nspawn/propagate");
        let _ = std::fs::remove_dir_all(propagate.join(&self.machine));
        for d in [
            propagate,
            Path::new("/run/systemd/nspawn/locks"),
            Path::new("/run/systemd/nspawn"),
            Path::new("/run/systemd"),
        ] {
            let _ = std::fs::remove_dir(d);
        }
    }
}

#[test]
fn systemd_pid1_in_nspawn() {
    let _one = exclusive();
    require_root();
    require("systemd-nspawn", "systemd-container");
    require("nsenter", "util-linux");
    let before = std::path::Path::new("/run/systemd").exists();
    let host = HostCheck::take();
    {
        let mut env = TestEnv::new();
        let runner = env.revoked("build");
        env.write_config(std::slice::from_ref(&runner));
        env.extra_settings = super::service_settings("gitlab-runner");
        let systemd = Nspawn::boot(&env);
        super::scenario(&systemd, &env, &runner);
    }
    host.assert_unchanged();
    assert_eq!(
        std::path::Path::new("/run/systemd").exists(),
        before,
        "/run/systemd left as it was"
    );
}
