//! Packaging: the .deb holds what it should, and systemd accepts the units.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::harness::BIN;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The .deb packaging/build-deb.sh builds, once for every test here.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(build_deb)
}

/// The .deb's files, unpacked once.
fn unpacked() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        assert!(Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb())
            .arg(&dir)
            .status()
            .unwrap()
            .success());
        dir
    })
}

/// The path of a Debian tool, or a failure that names the package and `.ci/test`.
fn tool(name: &str, package: &str) -> PathBuf {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("{name} is missing: `apt-get install {package}` (the test command `.ci/test` installs it)")
        })
}

fn build_deb() -> PathBuf {
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
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(stderr.lines())
        .find(|l| l.trim().ends_with(".deb"))
        .map(|l| PathBuf::from(l.trim()))
        .expect("path of the .deb")
}

#[test]
fn the_deb_has_the_binary_units_cron_man_page_completions_and_config() {
    let deb = deb();
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(deb)
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
        .arg(deb)
        .arg("Package")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "runner-medic");
    let conffiles = Command::new("dpkg-deb")
        .args(["--ctrl-tarfile"])
        .arg(deb)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&conffiles.stdout).contains("conffiles"));
    // The man page and completions come from the CLI definition.
    let extract = unpacked();
    let bash =
        std::fs::read_to_string(extract.join("usr/share/bash-completion/completions/runner-medic"))
            .unwrap();
    assert!(bash.contains("--renew-before") && bash.contains("diagnose"));
    let man = Command::new("gzip")
        .arg("-dc")
        .arg(extract.join("usr/share/man/man1/runner-medic.1.gz"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&man.stdout).contains(".TH RUNNER-MEDIC 1"));
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
    let shipped = std::fs::read(extract.join("usr/bin/runner-medic")).unwrap();
    for needle in needles {
        assert!(
            !holds(&shipped, needle),
            "the packaged binary contains `{needle}`"
        );
    }
    // The same check can fail: the binary the tests run is built with the demo.
    let tested = std::fs::read(BIN).unwrap();
    assert!(needles.iter().any(|n| holds(&tested, n)));
    let out = Command::new(extract.join("usr/bin/runner-medic"))
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
    for unit in ["runner-medic.service", "runner-medic-agent.service"] {
        let text = std::fs::read_to_string(root().join("packaging/systemd").join(unit)).unwrap();
        // Debian's prometheus-node-exporter reads this directory; optional (`-`): a host without
        // node_exporter still starts the unit.
        assert!(
            text.contains(" -/var/lib/prometheus/node-exporter")
                && !text.contains("textfile_collector"),
            "{unit}: the metrics directory"
        );
    }
    let cron = std::fs::read_to_string(root().join("packaging/cron.d/runner-medic")).unwrap();
    assert!(cron.contains("--random-delay"));
    // The job is off until the operator uncomments it, and then never runs where systemd runs
    // (the timer is the systemd way), as certbot's cron job does.
    let job = cron
        .lines()
        .find(|l| l.contains(" root ") && l.contains("runner-medic rotate"))
        .expect("the cron job");
    assert!(
        job.starts_with("#17 "),
        "the cron job is commented out: {job}"
    );
    assert!(
        job.contains("root test -x /usr/bin/runner-medic -a \\! -d /run/systemd/system && runner-medic rotate"),
        "the cron job is guarded: {job}"
    );
    assert!(
        cron.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .all(|l| l.contains('=') && !l.contains(" root ")),
        "nothing in the cron file runs by itself:\n{cron}"
    );

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

/// `lintian` on the .deb: no error, no warning, and no override but the documented one.
#[test]
fn the_deb_is_lintian_clean() {
    let lintian = tool("lintian", "lintian");
    let out = Command::new(lintian)
        .args(["--show-overrides", "--no-tag-display-limit"])
        .arg(deb())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let complaints: Vec<&str> = said
        .lines()
        .filter(|l| l.starts_with("E:") || l.starts_with("W:"))
        .collect();
    assert!(
        complaints.is_empty(),
        "lintian:\n{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let overridden: Vec<&str> = said.lines().filter(|l| l.starts_with("O:")).collect();
    assert!(
        overridden
            .iter()
            .all(|l| l.contains("initial-upload-closes-no-bugs")),
        "overrides beyond packaging/debian/lintian-overrides' documented one: {overridden:?}"
    );
    assert!(out.status.success(), "lintian:\n{said}");
    // The changelog describes the version the package carries.
    let changelog = std::fs::read_to_string(root().join("packaging/debian/changelog")).unwrap();
    assert!(
        changelog.starts_with(&format!("runner-medic ({}-1) ", env!("CARGO_PKG_VERSION"))),
        "packaging/debian/changelog's first entry is for {}-1",
        env!("CARGO_PKG_VERSION")
    );
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// dpkg in a scratch root, running the maintainer scripts outside a chroot: they honour
/// DPKG_ROOT, so they act on the scratch root only.
fn dpkg(root: &Path, args: &[&str]) -> String {
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-not-root",
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ])
        .args(args)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "dpkg {args:?}:\n{said}");
    said
}

#[test]
fn the_maintainer_scripts_enable_nothing_and_purge_removes_the_state() {
    let scratch = tempfile::tempdir().unwrap();
    let r = scratch.path();
    for dir in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        std::fs::create_dir_all(r.join(dir)).unwrap();
    }
    for file in ["var/lib/dpkg/status", "var/lib/dpkg/available"] {
        std::fs::write(r.join(file), "").unwrap();
    }
    let deb = deb().to_str().unwrap();
    let said = dpkg(r, &["-i", deb]);
    assert!(said.contains("nothing is enabled"), "{said}");
    let state = r.join("var/lib/runner-medic");
    let etc = r.join("etc/runner-medic");
    assert_eq!(mode(&state), 0o700, "/var/lib/runner-medic");
    assert_eq!(mode(&etc), 0o700, "/etc/runner-medic");
    assert_eq!(mode(&etc.join("settings.toml")), 0o644);
    // Nothing enabled: no unit linked into a target, no active cron line.
    let enabled = walk(&r.join("etc"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".wants/"))
        .collect::<Vec<_>>();
    assert!(enabled.is_empty(), "enabled on install: {enabled:?}");
    let cron = std::fs::read_to_string(r.join("etc/cron.d/runner-medic")).unwrap();
    assert!(
        !cron
            .lines()
            .any(|l| !l.starts_with('#') && l.contains("runner-medic rotate")),
        "the cron job is on after install:\n{cron}"
    );
    // The scripts are idempotent: a reinstall over state and loosened modes restores them.
    std::fs::write(state.join("journal-entry"), "glrt-…").unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    dpkg(r, &["-i", deb]);
    assert_eq!(mode(&state), 0o700);
    assert!(
        state.join("journal-entry").exists(),
        "an upgrade keeps the state"
    );
    // The operator's token file is no conffile: purge keeps it, and says so.
    let conffiles = std::fs::read_to_string(r.join("var/lib/dpkg/info/runner-medic.conffiles"))
        .unwrap_or_default();
    assert!(!conffiles.contains("admin-token"), "{conffiles}");
    std::fs::write(etc.join("admin-token"), "glpat-…\n").unwrap();
    std::fs::set_permissions(
        etc.join("admin-token"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let said = dpkg(r, &["--purge", "runner-medic"]);
    assert!(!state.exists(), "purge keeps /var/lib/runner-medic");
    assert!(said.contains("removing /var/lib/runner-medic"), "{said}");
    assert!(
        said.contains("kept /etc/runner-medic/admin-token"),
        "{said}"
    );
    assert!(etc.join("admin-token").exists());
    assert!(!etc.join("settings.toml").exists());
    assert!(!r.join("usr/bin/runner-medic").exists());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}

/// The completions complete each command's options, not only the commands.
#[test]
fn the_completions_complete_command_options() {
    let dir = unpacked();
    let bash = dir.join("usr/share/bash-completion/completions/runner-medic");
    let script = format!(
        "source '{}'\n\
         complete -p runner-medic | grep -o -- '-F [^ ]*'\n\
         fn=$(complete -p runner-medic | sed -n 's/.*-F \\([^ ]*\\).*/\\1/p')\n\
         COMP_WORDS=(runner-medic rotate --dr); COMP_CWORD=2\n\
         COMP_LINE='runner-medic rotate --dr'; COMP_POINT=${{#COMP_LINE}}\n\
         \"$fn\" runner-medic --dr rotate\n\
         printf 'reply:%s\\n' \"${{COMPREPLY[@]}}\"\n\
         COMP_WORDS=(runner-medic agent --lis); COMP_CWORD=2\n\
         \"$fn\" runner-medic --lis agent\n\
         printf 'reply:%s\\n' \"${{COMPREPLY[@]}}\"\n",
        bash.display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<&str> = said
        .lines()
        .filter_map(|l| l.strip_prefix("reply:"))
        .collect();
    assert!(replies.contains(&"--dry-run"), "bash: {said}");
    assert!(replies.contains(&"--listen"), "bash: {said}");
    // zsh and fish: the same options under their command.
    let zsh = std::fs::read_to_string(dir.join("usr/share/zsh/vendor-completions/_runner-medic"))
        .unwrap();
    let rotate = zsh.split("(rotate)").nth(1).expect("zsh: rotate");
    let rotate = rotate.split("\n;;").next().unwrap();
    assert!(rotate.contains("'--dry-run["), "zsh: rotate --dry-run");
    let fish =
        std::fs::read_to_string(dir.join("usr/share/fish/vendor_completions.d/runner-medic.fish"))
            .unwrap();
    assert!(
        fish.lines()
            .any(|l| l.contains("using_subcommand rotate") && l.contains("-l dry-run")),
        "fish: rotate --dry-run"
    );
}

/// A page per command, each with the sections an operator looks for, and a SEE ALSO that names
/// only pages the package has.
#[test]
fn each_man_page_renders_with_its_sections() {
    let man = tool("man", "man-db");
    let dir = unpacked().join("usr/share/man/man1");
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for page in [
        "runner-medic.1.gz",
        "runner-medic-diagnose.1.gz",
        "runner-medic-rotate.1.gz",
        "runner-medic-agent.1.gz",
        "runner-medic-list.1.gz",
    ] {
        assert!(pages.iter().any(|p| p == page), "{page} missing: {pages:?}");
    }
    assert!(
        !pages
            .iter()
            .any(|p| p.contains("demo") || p.contains("completions")),
        "pages of commands the package does not offer: {pages:?}"
    );
    for page in &pages {
        let out = Command::new(&man)
            .args(["--warnings", "--nh", "--nj", "-l"])
            .arg(dir.join(page))
            .env("MANWIDTH", "100")
            .env("MAN_KEEP_FORMATTING", "")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{page}: {stderr}"
        );
        let headings: Vec<&str> = text
            .lines()
            .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
            .collect();
        for section in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "EXIT STATUS",
            "ENVIRONMENT",
            "FILES",
            "SEE ALSO",
        ] {
            assert!(headings.contains(&section), "{page}: no {section}:\n{text}");
        }
        let name = page.trim_end_matches(".1.gz");
        let words = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            words.contains(&format!("NAME {name} - ")),
            "{page}: NAME:\n{text}"
        );
        let see_also = text.split("\nSEE ALSO\n").nth(1).unwrap();
        let see_also = see_also
            .split("\n\n")
            .next()
            .unwrap()
            .replace(['\n', ' '], "");
        let refs: Vec<&str> = see_also
            .split(',')
            .filter_map(|r| r.strip_suffix("(1)"))
            .collect();
        assert!(
            !refs.is_empty(),
            "{page}: SEE ALSO names no page:\n{see_also}"
        );
        for r in refs {
            assert!(
                pages.contains(&format!("{r}.1.gz")),
                "{page}: SEE ALSO names {r}(1), which the package lacks"
            );
        }
    }
    let main = Command::new(&man)
        .arg("-l")
        .arg(dir.join("runner-medic.1.gz"))
        .env("MANWIDTH", "200")
        .output()
        .unwrap();
    let main = String::from_utf8_lossy(&main.stdout);
    for sub in ["diagnose", "rotate", "agent", "list"] {
        assert!(
            main.contains(&format!("runner-medic-{sub}(1)")),
            "runner-medic(1) SEE ALSO lacks runner-medic-{sub}(1)"
        );
    }
}

/// `systemd-analyze security` rates a unit's exposure from 0 (fenced in) to 10.
fn exposure(analyze: &Path, unit: &str) -> f64 {
    let out = Command::new(analyze)
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(unit)
        .current_dir(root().join("packaging/systemd"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let line = said
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| {
            panic!(
                "systemd-analyze security {unit}:\n{said}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    line.rsplit(':')
        .next()
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

#[test]
fn the_agent_is_fenced_in_no_less_than_the_oneshot_unit() {
    let analyze = tool("systemd-analyze", "systemd");
    let oneshot = exposure(&analyze, "runner-medic.service");
    let agent = exposure(&analyze, "runner-medic-agent.service");
    assert!(
        oneshot <= 4.5,
        "runner-medic.service exposure {oneshot} > 4.5"
    );
    assert!(
        agent <= oneshot,
        "runner-medic-agent.service exposure {agent} > runner-medic.service's {oneshot}"
    );
}
