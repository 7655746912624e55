//! podman (Debian's `podman`, rootful, no daemon), confined as the measured recipe says: runc
//! (crun refuses this hybrid cgroup layout), cgroupfs, file events, lowered rlimits (root lacks
//! CAP_SYS_RESOURCE here), no network by default, and all of its configuration and storage under
//! the test's directory through `CONTAINERS_CONF` and `CONTAINERS_STORAGE_CONF`, which
//! runner-medic is given too. Afterwards the container cgroups (`libpod_parent`) are removed, and
//! what podman writes outside its storage (`/var/lib/containers/cache`, an empty `/run/runc`)
//! when it was not there before.

use std::path::Path;

use super::container::{cgroup_trees, unmount_under, Runner};
use super::host::{remove_cgroup, HostCheck};
use super::{exclusive, require, require_root};
use crate::harness::TestEnv;

struct Podman {
    runner: Runner,
    /// Host paths podman creates that were not there before the test.
    created: Vec<&'static str>,
    _dir: tempfile::TempDir,
}

impl Podman {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
                 netns = \"none\"\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{d}/events.log\"\nruntime = \"runc\"\ntmp_dir = \"{d}/tmp\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/root\"\nrunroot = \"{d}/runroot\"\n"
            ),
        )
        .unwrap();
        let created = ["/var/lib/containers", "/run/runc", "/run/containers"]
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        Self {
            runner: Runner {
                kind: "podman",
                cli: vec!["podman".into()],
                env: vec![
                    ("CONTAINERS_CONF".into(), format!("{d}/containers.conf")),
                    (
                        "CONTAINERS_STORAGE_CONF".into(),
                        format!("{d}/storage.conf"),
                    ),
                ],
                dir: dir.path().to_path_buf(),
                image: "localhost/runner-medic-test-busybox:latest".into(),
                failed_start_words: &["no such file or directory"],
            },
            created,
            _dir: dir,
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        self.runner.remove();
        let _ = self.runner.engine(&["system", "reset", "--force"]);
        unmount_under(&self.runner.dir);
        for tree in cgroup_trees("libpod_parent") {
            remove_cgroup(&tree);
        }
        for p in &self.created {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

#[test]
fn podman_rootful_with_runc() {
    let _one = exclusive();
    require_root();
    require("podman", "podman");
    require("runc", "runc");
    let host = HostCheck::take();
    {
        let mut env = TestEnv::new();
        let runner = env.revoked("build");
        env.write_config(std::slice::from_ref(&runner));
        env.extra_settings = format!(
            "\n[service]\nmanager = \"podman\"\nname = \"{}\"\nstop_timeout = \"20s\"\nreload_timeout = \"10s\"\n",
            super::container::NAME
        );
        let podman = Podman::start();
        podman.runner.install(&env);
        assert_eq!(podman.runner.state(), "always running");
        super::scenario(&podman.runner, &env, &runner);
        // The graceful stop left the restart policy as it was.
        assert_eq!(podman.runner.state(), "always running");
        super::container::reload_keeps_the_restart_policy(&podman.runner, &env);
    }
    host.assert_unchanged();
}
