//! Packaging: the .deb holds what it should, and systemd accepts the units.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::BIN;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_deb_has_the_binary_units_cron_man_page_completions_and_config() {
    let cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        cargo_deb,
        "cargo-deb is missing: `cargo install cargo-deb --locked --version 3.8.0` (the test command `.ci/test` installs it)"
    );
    let out = Command::new(root().join("packaging/build-deb.sh"))
        .args(["--profile", "dev"])
        .current_dir(root())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "build-deb.sh failed:\n{stderr}");
    let deb = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(stderr.lines())
        .find(|l| l.trim().ends_with(".deb"))
        .map(|l| PathBuf::from(l.trim()))
        .expect("path of the .deb");
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    let has = |path: &str, mode: &str| {
        listing
            .lines()
            .any(|l| l.starts_with(mode) && l.ends_with(path))
    };
    for (path, mode) in [
        ("./usr/bin/runner-medic", "-rwxr-xr-x"),
        ("./lib/systemd/system/runner-medic.service", "-rw-r--r--"),
        ("./lib/systemd/system/runner-medic.timer", "-rw-r--r--"),
        (
            "./lib/systemd/system/runner-medic-agent.service",
            "-rw-r--r--",
        ),
        ("./etc/cron.d/runner-medic", "-rw-r--r--"),
        ("./etc/runner-medic/settings.toml", "-rw-r--r--"),
        ("./usr/share/man/man1/runner-medic.1.gz", "-rw-r--r--"),
        (
            "./usr/share/bash-completion/completions/runner-medic",
            "-rw-r--r--",
        ),
        (
            "./usr/share/zsh/vendor-completions/_runner-medic",
            "-rw-r--r--",
        ),
        (
            "./usr/share/fish/vendor_completions.d/runner-medic.fish",
            "-rw-r--r--",
        ),
        ("./usr/share/doc/runner-medic/operator.md", "-rw-r--r--"),
    ] {
        assert!(
            has(path, mode),
            "{path} ({mode}) missing from the .deb:\n{listing}"
        );
    }
    assert!(
        !listing.contains("stand-in") && !listing.contains("gitlab-sim"),
        "only runner-medic ships"
    );
    let info = Command::new("dpkg-deb")
        .arg("-f")
        .arg(&deb)
        .arg("Package")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "runner-medic");
    let conffiles = Command::new("dpkg-deb")
        .args(["--ctrl-tarfile"])
        .arg(&deb)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&conffiles.stdout).contains("conffiles"));
    // The man page and completions come from the CLI definition.
    let extract = tempfile::tempdir().unwrap();
    assert!(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(extract.path())
        .status()
        .unwrap()
        .success());
    let bash = std::fs::read_to_string(
        extract
            .path()
            .join("usr/share/bash-completion/completions/runner-medic"),
    )
    .unwrap();
    assert!(bash.contains("--renew-before") && bash.contains("diagnose"));
    let man = Command::new("gzip")
        .arg("-dc")
        .arg(extract.path().join("usr/share/man/man1/runner-medic.1.gz"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH runner-medic"));
    // The shipped binary carries no test code: no simulator, no stand-in runner, no HTTP server.
    let holds =
        |binary: &[u8], needle: &str| binary.windows(needle.len()).any(|w| w == needle.as_bytes());
    let needles = [
        "gitlab_sim",
        "gitlab-sim",
        "stand_in",
        "stand-in-runner",
        "axum",
    ];
    let shipped = std::fs::read(extract.path().join("usr/bin/runner-medic")).unwrap();
    for needle in needles {
        assert!(
            !holds(&shipped, needle),
            "the packaged binary contains `{needle}`"
        );
    }
    // The same check can fail: the binary the tests run is built with the demo.
    let tested = std::fs::read(BIN).unwrap();
    assert!(needles.iter().any(|n| holds(&tested, n)));
    let out = Command::new(extract.path().join("usr/bin/runner-medic"))
        .arg("demo")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cargo run -- demo"));
}

#[test]
fn the_timer_and_units_are_sound() {
    let timer =
        std::fs::read_to_string(root().join("packaging/systemd/runner-medic.timer")).unwrap();
    assert!(timer.contains("RandomizedDelaySec=") && timer.contains("Persistent=true"));
    for unit in ["runner-medic.service", "runner-medic-agent.service"] {
        let text = std::fs::read_to_string(root().join("packaging/systemd").join(unit)).unwrap();
        for key in [
            "ProtectSystem=strict",
            "ReadWritePaths=/etc/gitlab-runner /var/lib/runner-medic",
            "NoNewPrivileges=yes",
        ] {
            assert!(text.contains(key), "{unit}: {key}");
        }
    }
    let cron = std::fs::read_to_string(root().join("packaging/cron.d/runner-medic")).unwrap();
    assert!(cron.contains("--random-delay"));

    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        panic!(
            "systemd-analyze is missing: `apt-get install systemd` (the test command `.ci/test` installs it)"
        );
    };
    // A scratch root with the system's own units, the binary, and ours.
    let scratch = tempfile::tempdir().unwrap();
    let r = scratch.path();
    std::fs::create_dir_all(r.join("usr/bin")).unwrap();
    std::fs::create_dir_all(r.join("bin")).unwrap();
    std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
    std::fs::copy(BIN, r.join("usr/bin/runner-medic")).unwrap();
    std::fs::copy("/bin/kill", r.join("bin/kill")).unwrap();
    assert!(Command::new("cp")
        .arg("-r")
        .arg("/lib/systemd/system")
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .unwrap()
        .success());
    for unit in [
        "runner-medic.service",
        "runner-medic.timer",
        "runner-medic-agent.service",
    ] {
        std::fs::copy(
            root().join("packaging/systemd").join(unit),
            r.join("etc/systemd/system").join(unit),
        )
        .unwrap();
    }
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(format!("--root={}", r.display()))
        .args([
            "runner-medic.service",
            "runner-medic.timer",
            "runner-medic-agent.service",
        ])
        .current_dir(r)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}
