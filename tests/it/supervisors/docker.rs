//! docker (Debian's `docker.io`): a private dockerd started by the test, with its own data root,
//! exec root, pid file and socket, and no networking of its own (`--bridge=none`, no iptables,
//! masquerading or forwarding changes), so nothing of the host's network changes; the container
//! uses the host's network. runner-medic finds it through `DOCKER_HOST` and runs Debian's
//! client (`[service] container_cli = "/usr/bin/docker"`, the version of the daemon). Afterwards
//! dockerd is stopped, its cgroups (`docker`) removed, the mount of the host's network namespace
//! it leaves under its exec root unmounted, and what it writes outside its roots
//! (`/run/docker`, `/run/containerd`, `/etc/docker/key.json`) removed when it was not there
//! before and no other dockerd runs.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::container::{cgroup_trees, unmount_under, Runner};
use super::host::{remove_cgroup, HostCheck};
use super::{exclusive, require, require_root};
use crate::harness::TestEnv;

/// Debian's docker client (another one may come first on PATH).
const CLI: &str = "/usr/bin/docker";

struct Dockerd {
    runner: Runner,
    dockerd: Child,
    created: Vec<&'static str>,
    _dir: tempfile::TempDir,
}

/// Whether a dockerd or containerd other than `ours` runs on the host.
fn other_daemon(ours: u32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let pid = e.file_name().to_string_lossy().parse::<u32>().unwrap_or(0);
        if pid == 0 || pid == ours {
            return false;
        }
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_string))
            })
            .and_then(|p| p.parse::<u32>().ok());
        match comm.trim() {
            "dockerd" => true,
            // dockerd's own containerd is its child.
            "containerd" => parent != Some(ours),
            _ => false,
        }
    })
}

impl Dockerd {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let created = ["/run/docker", "/run/containerd", "/etc/docker/key.json"]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let dockerd = Command::new("setsid")
            .arg("dockerd")
            .args(["--data-root", &format!("{d}/data")])
            .args(["--exec-root", &format!("{d}/exec")])
            .args(["--pidfile", &format!("{d}/dockerd.pid")])
            .args(["-H", &format!("unix://{d}/docker.sock")])
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--ip-forward=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("dockerd runs");
        let me = Self {
            runner: Runner {
                kind: "docker",
                cli: vec![CLI.into()],
                env: vec![
                    ("DOCKER_HOST".into(), format!("unix://{d}/docker.sock")),
                    ("DOCKER_CONFIG".into(), format!("{d}/client")),
                ],
                dir: dir.path().to_path_buf(),
                image: "runner-medic-test-busybox:latest".into(),
                failed_start_words: &["bind source path does not exist"],
            },
            dockerd,
            created,
            _dir: dir,
        };
        let mut up = false;
        for _ in 0..200 {
            if me.runner.engine(&["version"]).status.success() {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            up,
            "dockerd did not come up:\n{}",
            std::fs::read_to_string(me.runner.dir.join("dockerd.log")).unwrap_or_default()
        );
        me
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.runner.remove();
        // setsid execs dockerd, so the child is dockerd itself.
        let ours = self.dockerd.id();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(ours as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        for _ in 0..200 {
            if matches!(self.dockerd.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !matches!(self.dockerd.try_wait(), Ok(Some(_))) {
            let _ = self.dockerd.kill();
            let _ = self.dockerd.wait();
        }
        unmount_under(&self.runner.dir);
        for tree in cgroup_trees("docker") {
            remove_cgroup(&tree);
        }
        if !other_daemon(ours) {
            for p in &self.created {
                let _ = std::fs::remove_dir_all(p);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

#[test]
fn docker_private_dockerd() {
    let _one = exclusive();
    require_root();
    require("dockerd", "docker.io");
    require("docker", "docker.io");
    let host = HostCheck::take();
    {
        let mut env = TestEnv::new();
        let runner = env.revoked("build");
        env.write_config(std::slice::from_ref(&runner));
        env.extra_settings = format!(
            "\n[service]\nmanager = \"docker\"\nname = \"{}\"\ncontainer_cli = \"{CLI}\"\n\
             stop_timeout = \"20s\"\nreload_timeout = \"10s\"\n",
            super::container::NAME
        );
        let docker = Dockerd::start();
        docker.runner.install(&env);
        assert_eq!(docker.runner.state(), "always running");
        super::scenario(&docker.runner, &env, &runner);
        assert_eq!(docker.runner.state(), "always running");
        super::container::reload_keeps_the_restart_policy(&docker.runner, &env);
    }
    host.assert_unchanged();
}
