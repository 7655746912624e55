//! What the podman and docker tests share: a busybox image imported from a tarball (Debian's
//! `busybox-static`, no registry), the stand-in gitlab-runner that is its PID 1, and the
//! container installed the way gitlab-runner's docs run it: `run -d --name gitlab-runner
//! --restart always`, config.toml's directory bind-mounted at `/etc/gitlab-runner` (read-only:
//! runner-medic writes it on the host) and a home at `/home/gitlab-runner`. `--network host`
//! (nothing on the host changes) lets the stand-in reach the simulator on loopback.
//!
//! The stand-in is a busybox `sh` script that behaves like gitlab-runner: it polls
//! `POST /api/v4/jobs/request` with each runner's token of config.toml; SIGHUP re-reads
//! config.toml (the only time it does, so the new token in use proves the signal arrived);
//! SIGQUIT waits for the running job, then exits 0; SIGTERM and SIGINT abort it. It logs the
//! same lines as the Rust stand-in, never a token.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{require, sh, Supervised};
use crate::harness::{Run, TestEnv};

pub const NAME: &str = "gitlab-runner";

const STAND_IN: &str = r#"#!/bin/sh
exec >> /stand-in/runner.log 2>&1
CONFIG=/etc/gitlab-runner/config.toml
load() {
  RUNNERS=$(awk '
    function flush() { if (t != "") print u, t, n; n = ""; u = ""; t = "" }
    /^[ \t]*\[\[runners\]\]/ { flush(); inr = 1; next }
    /^[ \t]*\[/ { inr = 0; next }
    inr && /^[ \t]*(name|url|token)[ \t]*=[ \t]*"/ {
      k = $0; sub(/^[ \t]*/, "", k); sub(/[ \t=].*$/, "", k)
      v = $0; sub(/^[^"]*"/, "", v); sub(/".*$/, "", v)
      if (k == "name") n = v; else if (k == "url") u = v; else t = v
    }
    END { flush() }' "$CONFIG")
}
count() { echo "$RUNNERS" | grep -c .; }
poll() {
  echo "$RUNNERS" | while read -r url token name; do
    [ -n "$token" ] || continue
    if wget -q -O /dev/null --header 'Content-Type: application/json' \
         --post-data "{\"token\":\"$token\"}" "${url%/}/api/v4/jobs/request" 2>/dev/null; then
      s=ok
    else
      s=refused
    fi
    echo "poll name=$name status=$s"
  done
}
JOB=
job_running() { [ -n "$JOB" ] && kill -0 "$JOB" 2>/dev/null; }
on_hup() { echo "SIGHUP: reloading"; load; echo "reloaded config runners=$(count)"; }
on_quit() {
  echo "SIGQUIT: stopping gracefully"
  if job_running; then
    echo "waiting for the running job"
    wait "$JOB"
    echo "job finished"
  fi
  exit 0
}
on_term() {
  echo "SIGTERM: stopping"
  if job_running; then kill "$JOB"; echo "job aborted"; fi
  exit 0
}
trap on_hup HUP
trap on_quit QUIT
trap on_term TERM INT
load
echo "started pid=$$ runners=$(count)"
if [ -f /stand-in/job ]; then
  ms=$(cat /stand-in/job)
  rm -f /stand-in/job
  sleep "$(awk "BEGIN { print $ms / 1000 }")" &
  JOB=$!
  echo "job started"
fi
while :; do
  if [ -n "$JOB" ] && ! job_running; then JOB=; echo "job finished"; fi
  poll & wait $!
  sleep 0.1 & wait $!
done
"#;

/// A gitlab-runner container under a container engine.
pub struct Runner {
    pub kind: &'static str,
    /// The engine's command line up to the verb (`podman`, `docker -H unix://…`).
    pub cli: Vec<String>,
    /// The environment runner-medic and the engine's commands run with.
    pub env: Vec<(String, String)>,
    /// Where the stand-in, its log and the container's home live.
    pub dir: PathBuf,
    pub image: String,
    pub failed_start_words: &'static [&'static str],
}

/// The busybox rootfs tarball (`/bin/busybox` of busybox-static and its applets).
pub fn image_tarball(dir: &Path) -> PathBuf {
    require("busybox", "busybox-static");
    let busybox = std::fs::read("/bin/busybox").expect("/bin/busybox");
    assert!(
        !has_interpreter(&busybox),
        "/bin/busybox is dynamically linked: install Debian's `busybox-static`"
    );
    let root = dir.join("rootfs");
    for d in ["bin", "tmp", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "sleep", "cat", "echo", "wget", "awk", "grep", "rm", "kill",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    let tar = dir.join("busybox-rootfs.tar");
    sh(
        &[
            "tar",
            "-C",
            &root.display().to_string(),
            "-cf",
            &tar.display().to_string(),
            ".",
        ],
        true,
    );
    tar
}

/// Whether the ELF64 file `elf` names a program interpreter (is dynamically linked).
fn has_interpreter(elf: &[u8]) -> bool {
    let at = |o: usize, n: usize| -> u64 {
        elf.get(o..o + n).map_or(0, |b| {
            b.iter().rev().fold(0, |a, x| (a << 8) | u64::from(*x))
        })
    };
    let (phoff, phentsize, phnum) = (at(0x20, 8) as usize, at(0x36, 2) as usize, at(0x38, 2));
    (0..phnum as usize).any(|i| at(phoff + i * phentsize, 4) == 3)
}

impl Runner {
    pub fn engine(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(&self.cli[0]);
        cmd.args(&self.cli[1..]).args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", self.cli))
    }

    pub fn engine_ok(&self, args: &[&str]) -> String {
        let out = self.engine(args);
        assert!(
            out.status.success(),
            "{} {args:?}: {}{}",
            self.cli.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn stand_in_dir(&self) -> PathBuf {
        self.dir.join("stand-in")
    }

    fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    /// Import the image and create and start the container.
    pub fn install(&self, env: &TestEnv) {
        let tar = image_tarball(&self.dir);
        self.engine_ok(&[
            "import",
            "--change",
            r#"CMD ["/bin/sh"]"#,
            &tar.display().to_string(),
            &self.image,
        ]);
        std::fs::create_dir_all(self.stand_in_dir()).unwrap();
        std::fs::create_dir_all(self.home()).unwrap();
        std::fs::write(self.stand_in_dir().join("run.sh"), STAND_IN).unwrap();
        let config_dir = env.config.parent().unwrap().display().to_string();
        self.engine_ok(&[
            "run",
            "-d",
            "--name",
            NAME,
            "--restart",
            "always",
            "--network",
            "host",
            "--mount",
            &format!("type=bind,source={config_dir},target=/etc/gitlab-runner,readonly"),
            "--mount",
            &format!(
                "type=bind,source={},target=/stand-in",
                self.stand_in_dir().display()
            ),
            "--mount",
            &format!(
                "type=bind,source={},target=/home/gitlab-runner",
                self.home().display()
            ),
            &self.image,
            "sh",
            "/stand-in/run.sh",
        ]);
    }

    /// Remove the container and the image (the engine's state goes with the test's directory).
    pub fn remove(&self) {
        let _ = self.engine(&["rm", "-f", NAME]);
        let _ = self.engine(&["rmi", "-f", &self.image]);
    }

    /// The container's restart policy and state, as the engine reports them.
    pub fn state(&self) -> String {
        self.engine_ok(&[
            "inspect",
            "--format",
            "{{.HostConfig.RestartPolicy.Name}} {{.State.Status}}",
            NAME,
        ])
        .trim()
        .to_string()
    }
}

impl Supervised for Runner {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn medic(&self, env: &TestEnv, args: &[&str]) -> Run {
        let mut cmd = env.command(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        env.run_cmd(cmd)
    }
    fn ctl(&self, action: &str) {
        self.engine_ok(&[action, NAME]);
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.stand_in_dir().join("runner.log")).unwrap_or_default()
    }
    fn job_at_next_start(&self, ms: Option<u64>) {
        super::job_file(&self.stand_in_dir().join("job"), ms);
    }
    /// The host directory mounted as the container's home is gone (moved away), so the engine
    /// cannot start the container; moved back, it can.
    fn break_start(&self, broken: bool) {
        let away = self.dir.join("home.away");
        if broken {
            std::fs::rename(self.home(), &away).unwrap();
        } else {
            std::fs::rename(&away, self.home()).unwrap();
        }
    }
    fn failed_start_words(&self) -> &'static [&'static str] {
        self.failed_start_words
    }
    fn auto_detected(&self) -> bool {
        false
    }
}

/// Every directory under the cgroup hierarchies named `name` (e.g. `libpod_parent`, `docker`).
pub fn cgroup_trees(name: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|h| h.path().join(name))
        .filter(|p| p.is_dir())
        .collect()
}

/// Unmount whatever the engine left mounted under `dir` (deepest first).
pub fn unmount_under(dir: &Path) {
    let dir = dir.display().to_string();
    let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = sh(&["umount", "-l", &p], false);
    }
}

/// A reload must leave the container's restart policy in force: after one, gitlab-runner
/// crashing (its process killed from the host) is started again by the engine. (`docker kill`
/// with SIGHUP would have disabled docker's policy until the next start.)
pub fn reload_keeps_the_restart_policy(runner: &Runner, env: &TestEnv) {
    let run = runner_medic_reload(runner, env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.json()["service"]["reloaded"], true, "{}", run.stdout);
    let inspect = |what: &str| {
        runner
            .engine_ok(&["inspect", "--format", what, NAME])
            .trim()
            .to_string()
    };
    let (pid, started) = (inspect("{{.State.Pid}}"), inspect("{{.State.StartedAt}}"));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid.parse().unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if inspect("{{.State.Status}}") == "running" && inspect("{{.State.StartedAt}}") != started {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "docker did not start the crashed container again: {} (restart count {})",
            inspect("{{.State.Status}}"),
            inspect("{{.RestartCount}}")
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A rotation that only reloads: `--force` renews the runner's working token.
fn runner_medic_reload(runner: &Runner, env: &TestEnv) -> crate::harness::Run {
    super::Supervised::medic(runner, env, &["rotate", "--force", "--output", "json"])
}
