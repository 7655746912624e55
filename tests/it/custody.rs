//! Custody of credentials: whatever happens around a rotation (other writers, full or read-only
//! disks, a service that will not start, bogus answers, concurrent runs, closed pipes), no token
//! GitLab issued is lost, misplaced or written as garbage, and the next run that can write heals
//! everything without asking GitLab again. Each test counts: tokens issued, tokens in
//! config.toml, runner records, runs to heal (docs/reliability.md quotes them).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use gitlab_sim::FaultKind;

use crate::harness::{Entry, Run, TestEnv};

const RESET: &str = "/api/v4/runners/:id/reset_authentication_token";

/// A `gitlab-runner`-compatible service command (`stop|start|status`) that does nothing but keep
/// its state in a file, and runs `on-stop.sh` / `on-start.sh` from its directory when they exist:
/// the other writers of these tests act there. `start` fails while `start-fails` exists; `stop`
/// stops, then fails, while `stop-fails` exists.
struct FakeService {
    dir: PathBuf,
}

impl FakeService {
    fn install(env: &TestEnv) -> Self {
        let dir = env.path("svc");
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!(
            r#"#!/bin/sh
d="{d}"
case "$1" in
  stop) [ -x "$d/on-stop.sh" ] && "$d/on-stop.sh"; echo stopped > "$d/state"; echo "stop" >> "$d/calls"
    if [ -e "$d/stop-fails" ]; then echo "stop: it went down, then the manager timed out" >&2; exit 1; fi ;;
  start)
    echo "start" >> "$d/calls"
    if [ -e "$d/start-fails" ]; then echo "cannot start: bad config" >&2; exit 1; fi
    [ -x "$d/on-start.sh" ] && "$d/on-start.sh"
    echo running > "$d/state" ;;
  status)
    if [ "$(cat "$d/state" 2>/dev/null)" = stopped ]; then echo "gitlab-runner: Service has stopped (not running)"; exit 1; fi
    echo "gitlab-runner: Service is running"; exit 0 ;;
esac
"#,
            d = dir.display()
        );
        let bin = dir.join("gitlab-runner");
        std::fs::write(&bin, script).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn settings(&self) -> String {
        format!(
            "\n[service]\nmanager = \"gitlab-runner\"\ngitlab_runner_bin = \"{}\"\nrestart = \"always\"\nstop_timeout = \"5s\"\n",
            self.dir.join("gitlab-runner").display()
        )
    }

    fn on(&self, event: &str, shell: &str) {
        let path = self.dir.join(format!("on-{event}.sh"));
        std::fs::write(&path, format!("#!/bin/sh\n{shell}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn clear(&self, event: &str) {
        let _ = std::fs::remove_file(self.dir.join(format!("on-{event}.sh")));
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.dir.join("calls")).unwrap_or_default()
    }
}

fn rotate(env: &TestEnv) -> Run {
    env.run(&["rotate", "--output", "json"])
}

/// Every entry of config.toml holds a token that authenticates as the runner its `id` names, or
/// the token it had before (never another runner's).
fn assert_no_token_misplaced(env: &TestEnv) {
    let doc: toml::Table = toml::from_str(&env.config_text()).unwrap();
    for r in doc["runners"].as_array().unwrap() {
        let token = r["token"].as_str().unwrap();
        let id = r.get("id").and_then(toml::Value::as_integer);
        if let (Some(owner), Some(id)) = (env.sim.state().runner_by_token(token), id) {
            assert_eq!(
                owner as i64,
                id,
                "entry `{}` holds the token of runner {owner}:\n{}",
                r["name"],
                env.config_text()
            );
        }
    }
}

fn resets(env: &TestEnv) -> usize {
    env.sim.state().requests_to("POST", RESET)
}

fn journal_files(env: &TestEnv) -> Vec<PathBuf> {
    std::fs::read_dir(env.state.join("journal"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect()
        })
        .unwrap_or_default()
}

fn entry_text(e: &Entry) -> String {
    format!(
        "\n[[runners]]\n  name = \"{}\"\n  url = \"{}\"\n  id = {}\n  token = \"{}\"\n  executor = \"shell\"\n",
        e.name,
        e.url,
        e.id.unwrap(),
        e.token
    )
}

#[test]
fn entries_reordered_during_the_stop_each_get_their_own_token() {
    let mut env = TestEnv::new();
    let svc = FakeService::install(&env);
    env.extra_settings = svc.settings();
    let a = env.revoked("a");
    let b = env.healthy("b");
    let c = env.revoked("c");
    env.write_config(&[a.clone(), b.clone(), c.clone()]);
    // Another writer (a template run) rewrites config.toml while the service stops: the same
    // runners, in another order.
    let swapped = env.path("swapped.toml");
    std::fs::write(
        &swapped,
        format!(
            "concurrent = 4\n{}{}{}",
            entry_text(&c),
            entry_text(&b),
            entry_text(&a)
        ),
    )
    .unwrap();
    svc.on(
        "stop",
        &format!("cp {} {}", swapped.display(), env.config.display()),
    );
    let run = rotate(&env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_no_token_misplaced(&env);
    assert_eq!(
        env.config_token("b"),
        b.token,
        "the healthy runner keeps its token"
    );
    for name in ["a", "c"] {
        assert!(
            env.token_works(&env.config_token(name)),
            "{name} works again"
        );
    }
    assert_eq!(resets(&env), 2);
    assert!(
        run.top_codes().contains(&"config_changed".to_string()),
        "{}",
        run.stdout
    );
    assert!(journal_files(&env).is_empty(), "the rotation is complete");
}

#[test]
fn an_entry_unregistered_during_the_stop_gets_nothing_and_its_token_is_kept() {
    let mut env = TestEnv::new();
    let svc = FakeService::install(&env);
    env.extra_settings = svc.settings();
    let a = env.revoked("a");
    let b = env.healthy("b");
    let d = env.healthy("d");
    env.write_config(&[a.clone(), b.clone()]);
    // `gitlab-runner unregister a` and `register d` while the service stops: d takes a's place.
    let replaced = env.path("replaced.toml");
    std::fs::write(
        &replaced,
        format!("concurrent = 4\n{}{}", entry_text(&d), entry_text(&b)),
    )
    .unwrap();
    svc.on(
        "stop",
        &format!("cp {} {}", replaced.display(), env.config.display()),
    );
    let run = rotate(&env);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        env.config_token("d"),
        d.token,
        "the new entry keeps its own token"
    );
    assert_eq!(env.config_token("b"), b.token);
    assert_no_token_misplaced(&env);
    assert!(
        run.top_codes().contains(&"config_changed".to_string()),
        "{}",
        run.stdout
    );
    // a's new token is in no entry, but it is kept in the journal.
    let issued = env.sim.state().issued_tokens.last().cloned().unwrap();
    let journal = journal_files(&env);
    assert_eq!(journal.len(), 1);
    assert!(std::fs::read_to_string(&journal[0])
        .unwrap()
        .contains(&issued));
    // The next run asks GitLab for nothing more.
    svc.clear("stop");
    let again = rotate(&env);
    assert_eq!(resets(&env), 1, "{}", again.stdout);
    assert_no_token_misplaced(&env);
}

/// A write that fails after GitLab issued the tokens (the config dir made immutable while the
/// service stops): every later run that cannot write asks GitLab for nothing; the first that can
/// write puts the kept tokens in place.
#[test]
fn failed_writes_heal_on_the_first_run_that_can_write_without_new_tokens() {
    let mut env = TestEnv::new();
    let svc = FakeService::install(&env);
    env.extra_settings = svc.settings();
    let dir = env.path("etc");
    std::fs::create_dir_all(&dir).unwrap();
    env.config = dir.join("config.toml");
    let entries: Vec<_> = (0..3).map(|i| env.revoked(&format!("r{i}"))).collect();
    env.write_config(&entries);
    let original = env.config_text();
    svc.on("stop", &format!("chattr +i {}", dir.display()));
    let first = rotate(&env);
    assert_eq!(first.code, 1, "{}\n{}", first.stdout, first.stderr);
    assert!(
        first.top_codes().contains(&"config_unwritable".to_string()),
        "{}",
        first.stdout
    );
    assert_eq!(resets(&env), 3);
    assert_eq!(env.config_text(), original);
    svc.clear("stop");
    // Still immutable: two more runs, no new request to GitLab.
    for _ in 0..2 {
        let run = rotate(&env);
        assert_eq!(run.code, 1, "{}", run.stdout);
    }
    assert_eq!(
        resets(&env),
        3,
        "runs that cannot write ask GitLab for nothing"
    );
    let _ = Command::new("chattr").arg("-i").arg(&dir).status();
    let healed = rotate(&env);
    assert_eq!(healed.code, 0, "{}\n{}", healed.stdout, healed.stderr);
    assert_eq!(resets(&env), 3, "healed with the kept tokens");
    for e in &entries {
        assert!(env.token_works(&env.config_token(&e.name)));
    }
    assert!(journal_files(&env).is_empty());
}

#[test]
fn a_read_only_config_dir_means_no_token_is_requested() {
    let env = TestEnv::new();
    let dir = env.path("etc");
    std::fs::create_dir_all(&dir).unwrap();
    let mut env = env;
    env.config = dir.join("config.toml");
    let entries = [env.revoked("r0")];
    env.write_config(&entries);
    assert!(Command::new("mount")
        .args(["--bind"])
        .arg(&dir)
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    let ro = Command::new("mount")
        .args(["-o", "remount,ro,bind"])
        .arg(&dir)
        .status()
        .unwrap()
        .success();
    let run = rotate(&env);
    let _ = Command::new("umount").arg(&dir).status();
    assert!(ro);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(
        resets(&env),
        0,
        "nothing requested while nothing could be kept"
    );
    assert!(run.stdout.contains("not writable"), "{}", run.stdout);
    // Writable again: one run fixes it.
    let run = rotate(&env);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(resets(&env), 1);
}

#[test]
fn a_full_state_dir_means_no_token_is_requested() {
    let env = TestEnv::new();
    let entries = [env.revoked("r0")];
    env.write_config(&entries);
    std::fs::create_dir_all(&env.state).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs"])
        .arg(&env.state)
        .status()
        .unwrap()
        .success());
    // Fill it up.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=4k", "count=100"])
        .arg(format!("of={}", env.state.join("filler").display()))
        .stderr(Stdio::null())
        .status();
    let run = rotate(&env);
    let _ = Command::new("umount").arg(&env.state).status();
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(resets(&env), 0, "no token issued that could not be kept");
    let run = rotate(&env);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert_eq!(resets(&env), 1);
}

#[test]
fn a_service_that_fails_to_start_keeps_the_new_tokens() {
    let mut env = TestEnv::new();
    let svc = FakeService::install(&env);
    env.extra_settings = svc.settings();
    let entries = [env.revoked("r0"), env.revoked("r1")];
    env.write_config(&entries);
    std::fs::write(svc.dir.join("start-fails"), "").unwrap();
    let run = rotate(&env);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let json = run.json();
    assert!(json["service"]["error"]
        .as_str()
        .unwrap()
        .contains("start failed"));
    for e in &entries {
        let now = env.config_token(&e.name);
        assert_ne!(now, e.token, "no backup with revoked tokens was restored");
        assert!(env.token_works(&now));
    }
    assert_eq!(
        journal_files(&env).len(),
        1,
        "the journal remembers the service to start"
    );
    std::fs::remove_file(svc.dir.join("start-fails")).unwrap();
    let run = rotate(&env);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(svc.calls().ends_with("start\n"), "{}", svc.calls());
    assert_eq!(resets(&env), 2);
    assert!(journal_files(&env).is_empty());
}

#[test]
fn a_writer_that_puts_the_old_file_back_is_overruled() {
    let mut env = TestEnv::new();
    let svc = FakeService::install(&env);
    env.extra_settings = svc.settings();
    let entries: Vec<_> = (0..4).map(|i| env.revoked(&format!("r{i}"))).collect();
    env.write_config(&entries);
    let old = env.path("old.toml");
    std::fs::copy(&env.config, &old).unwrap();
    // A configuration-management run restores its copy right after the service starts.
    svc.on(
        "start",
        &format!("cp {} {}", old.display(), env.config.display()),
    );
    let run = rotate(&env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for e in &entries {
        assert!(
            env.token_works(&env.config_token(&e.name)),
            "{}",
            env.config_text()
        );
    }
    assert_eq!(resets(&env), 4);
}

#[test]
fn a_writer_that_keeps_reverting_never_gets_an_unconfirmed_exit_0() {
    let mut env = TestEnv::new();
    let svc = FakeService::install(&env);
    env.extra_settings = svc.settings();
    let entries: Vec<_> = (0..2).map(|i| env.revoked(&format!("r{i}"))).collect();
    env.write_config(&entries);
    let old = env.path("old.toml");
    std::fs::copy(&env.config, &old).unwrap();
    // From the service start on, a writer puts the old file back every few milliseconds.
    let stop_flag = env.path("svc/stop-reverting");
    let alive = env.path("svc/reverting");
    svc.on(
        "start",
        &format!(
            "(touch {alive}; while [ ! -e {stop} ]; do cp {old} {cfg}.x && mv {cfg}.x {cfg}; done; rm -f {alive}) >/dev/null 2>&1 &",
            alive = alive.display(),
            stop = stop_flag.display(),
            old = old.display(),
            cfg = env.config.display()
        ),
    );
    let run = rotate(&env);
    std::fs::write(&stop_flag, "").unwrap();
    for _ in 0..200 {
        if !alive.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!alive.exists(), "the reverting writer stopped");
    svc.clear("start");
    // How the race ends depends on timing: runner-medic writes the new tokens up to three times
    // and reads them back each time. Either it saw them in place at its last read (exit 0, and
    // they were), or it did not and says so, keeping the journal (exit 1). Never exit 0 with a
    // new token unconfirmed.
    if run.code == 0 {
        assert!(journal_files(&env).is_empty());
        assert!(
            run.stderr.contains("another program put old tokens back"),
            "{}",
            run.stderr
        );
        return;
    }
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.top_codes().contains(&"config_reverted".to_string()),
        "{}",
        run.stdout
    );
    assert_eq!(
        journal_files(&env).len(),
        1,
        "the journal keeps the new tokens"
    );
    // Once the writer is gone, the next run writes the kept tokens, asking GitLab for nothing.
    let healed = rotate(&env);
    assert_eq!(healed.code, 0, "{}\n{}", healed.stdout, healed.stderr);
    assert_eq!(resets(&env), 2);
    for e in &entries {
        assert!(env.token_works(&env.config_token(&e.name)));
    }
}

#[test]
fn bogus_token_answers_are_never_written() {
    for (label, body) in [
        ("empty", String::new()),
        ("short", "glrt-t1_x".to_string()),
        ("huge", "glrt-t1_".to_string() + &"a".repeat(1_000_000)),
    ] {
        let env = TestEnv::new();
        let e = env.expiring("r0", 3);
        env.write_config(std::slice::from_ref(&e));
        let answer = serde_json::json!({"token": body, "token_expires_at": null}).to_string();
        // The renewal answers garbage, before anything changed (the old token still works).
        env.sim.state().inject(
            "POST /api/v4/runners/reset_authentication_token",
            FaultKind::Body(201, answer),
            None,
        );
        let run = env.run(&["rotate", "--output", "json", "--renew-before", "30d"]);
        assert_eq!(
            env.config_token("r0"),
            e.token,
            "{label}: the old token stays"
        );
        assert!(env.token_works(&e.token), "{label}");
        assert!(
            run.stdout.contains("not a usable token")
                || run.stdout.contains("GitLab answered with"),
            "{label}: {}",
            run.stdout
        );
        assert!(journal_files(&env).is_empty(), "{label}: no wedge");
    }
}

#[test]
fn a_bogus_reset_answer_is_replaced_by_a_real_token() {
    let env = TestEnv::new();
    let e = env.revoked("r0");
    env.write_config(std::slice::from_ref(&e));
    env.sim.state().inject_after(
        &format!("POST {RESET}"),
        FaultKind::Body(
            201,
            r#"{"token":"glrt-t1_x","token_expires_at":null}"#.into(),
        ),
        Some(1),
    );
    let run = rotate(&env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(env.token_works(&env.config_token("r0")));
    assert_eq!(
        resets(&env),
        2,
        "one garbled answer, one privileged reset to recover"
    );
}

#[test]
fn entries_sharing_a_token_are_rotated_once_and_all_get_the_new_token() {
    let env = TestEnv::new();
    let a = env.revoked("a");
    let twin = Entry {
        name: "a-docker".into(),
        ..a.clone()
    };
    env.write_config(&[a.clone(), twin]);
    let run = rotate(&env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(resets(&env), 1);
    let (x, y) = (env.config_token("a"), env.config_token("a-docker"));
    assert_eq!(x, y);
    assert!(env.token_works(&x));
    // Stable: the next run changes nothing.
    let again = rotate(&env);
    assert_eq!(again.code, 0, "{}", again.stdout);
    assert_eq!(resets(&env), 1);
}

#[test]
fn two_runs_on_one_file_through_other_paths_and_state_dirs_are_serialised() {
    let env = TestEnv::new();
    env.sim.state().latency = std::time::Duration::from_millis(200);
    let entries: Vec<_> = (0..3).map(|i| env.revoked(&format!("r{i}"))).collect();
    env.write_config(&entries);
    let link = env.path("hardlink.toml");
    std::fs::hard_link(&env.config, &link).unwrap();
    env.command(&["diagnose"]); // writes the settings file
    let spawn = |config: &Path, state: &Path| {
        Command::new(crate::harness::BIN)
            .arg("rotate")
            .arg("--runner-config")
            .arg(config)
            .arg("--settings")
            .arg(&env.settings)
            .arg("--state-dir")
            .arg(state)
            .env_remove("RUNNER_MEDIC_ADMIN_TOKEN")
            .env("RUNNER_MEDIC_TEST_FAST_RETRY", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The lock taken through one path and state directory (as a run through them takes it)
    // refuses a run through the other: the lock belongs to the file, not to a path.
    let lock =
        runner_medic::fs::lock_file(&env.config, Path::new("/run/runner-medic"), false).unwrap();
    let refused = spawn(&link, &env.path("state-b"))
        .wait_with_output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("holds the lock"));
    assert_eq!(resets(&env), 0);
    drop(lock);
    // Started together, whichever runs second either is refused or finds nothing left to do.
    let a = spawn(&env.config, &env.path("state-a"));
    let b = spawn(&link, &env.path("state-b"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut codes = [a.status.code().unwrap(), b.status.code().unwrap()];
    codes.sort_unstable();
    assert!(codes == [0, 2] || codes == [0, 0], "{codes:?}");
    if codes == [0, 2] {
        let refused = if a.status.code() == Some(2) { &a } else { &b };
        assert!(String::from_utf8_lossy(&refused.stderr).contains("holds the lock"));
    }
    assert_eq!(resets(&env), 3, "each runner reset once");
}

#[test]
fn a_closed_stderr_and_stdout_never_abort_a_rotation() {
    let env = TestEnv::new();
    let entries: Vec<_> = (0..3).map(|i| env.revoked(&format!("r{i}"))).collect();
    env.write_config(&entries);
    let mut cmd = env.command(&["rotate"]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // The reader goes away at once (`| head -1` that has its line).
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(101), "no panic");
    for e in &entries {
        assert!(
            env.token_works(&env.config_token(&e.name)),
            "{}",
            env.config_text()
        );
    }
    assert!(journal_files(&env).is_empty());
}

#[test]
fn temp_files_of_a_killed_run_are_removed() {
    let env = TestEnv::new();
    let entries = [env.healthy("r0")];
    env.write_config(&entries);
    let journal_dir = env.state.join("journal");
    std::fs::create_dir_all(&journal_dir).unwrap();
    let key = &runner_medic::fs::sha256_hex(
        std::fs::canonicalize(&env.config)
            .unwrap()
            .as_os_str()
            .as_encoded_bytes(),
    )[..16];
    let marker = runner_medic::fs::TEMP_MARKER;
    // What a run killed midway leaves, named as runner-medic names its temp files.
    let stale_journal = journal_dir.join(format!(".{key}.json{marker}Xq3vB9aZk2Lm"));
    std::fs::write(&stale_journal, "glrt-secret").unwrap();
    let stale_reserve = journal_dir.join(format!(".runner-medic-reserve{marker}Pw8eR4tYu1Io"));
    std::fs::write(&stale_reserve, vec![0u8; 4096]).unwrap();
    let stale_config = env.path(&format!(".config.toml{marker}Hj5kL7mN0bVc"));
    std::fs::write(&stale_config, "token = glrt-secret").unwrap();
    // Not runner-medic's: another program's file beside config.toml, and a symlink under a
    // temp name (never followed, never removed).
    let foreign = env.path(".other.tmp.4242");
    std::fs::write(&foreign, "keep").unwrap();
    let planted = journal_dir.join(format!(".x.json{marker}Aa1Bb2Cc3Dd4"));
    std::os::unix::fs::symlink(&foreign, &planted).unwrap();
    let run = rotate(&env);
    assert_eq!(run.code, 0, "{}", run.stdout);
    assert!(!stale_journal.exists());
    assert!(!stale_reserve.exists());
    assert!(!stale_config.exists());
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "keep");
    assert!(std::fs::symlink_metadata(&planted).is_ok());
}

/// `diagnose` changes nothing of the runner's world; its own records are a convenience: on a
/// read-only state directory it still diagnoses every runner and exits as the runners are.
#[test]
fn diagnose_on_a_read_only_state_dir_still_reports() {
    let env = TestEnv::new();
    let entries = [env.healthy("ok"), env.revoked("dead")];
    env.write_config(&entries);
    std::fs::create_dir_all(&env.state).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=64k,mode=0700", "tmpfs"])
        .arg(&env.state)
        .status()
        .unwrap()
        .success());
    let before = env.config_text();
    let run = env.run(&["diagnose", "--output", "json"]);
    let _ = Command::new("umount").arg(&env.state).status();
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.runner("ok")["status"], "healthy", "{}", run.stdout);
    assert_eq!(run.runner("dead")["status"], "broken", "{}", run.stdout);
    assert_eq!(env.config_text(), before);
    assert!(env.changing_requests().is_empty());
}

/// The journal is saved by group commit: tokens that arrive while a save is under way are saved
/// together by the next one. A crash right after the second save (the one that carries the
/// tokens answered while the first was written), before any task whose token it carries has gone
/// on: every token of that save is in the journal, still GitLab's current token, and the
/// next run writes it without asking GitLab again; only the runners whose tokens were not yet on
/// disk are reset once more.
#[test]
fn a_crash_right_after_a_batch_of_tokens_is_saved_loses_none_of_them() {
    let env = TestEnv::with_options(gitlab_sim::Options {
        // Answers arrive close together, so a save carries several tokens.
        latency: std::time::Duration::from_millis(20),
        ..gitlab_sim::Options::default()
    });
    let names: Vec<String> = (0..12).map(|i| format!("r{i:02}")).collect();
    let entries: Vec<Entry> = names.iter().map(|n| env.expired(n)).collect();
    env.write_config(&entries);
    let before = env.config_text();
    let mut cmd = env.command(&["rotate"]);
    cmd.env("RUNNER_MEDIC_CRASH_AT", "after-journal-batch#2");
    let crashed = env.run_cmd(cmd);
    assert!(
        crashed.stderr.contains("crash point reached"),
        "{}",
        crashed.stderr
    );
    assert_ne!(crashed.code, 0);
    assert_eq!(env.config_text(), before, "nothing written yet");
    let journal_dir = env.state.join("journal");
    let journal = std::fs::read_dir(&journal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("the journal is on disk");
    assert_eq!(crate::harness::mode(&journal), 0o600);
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&journal).unwrap()).unwrap();
    let kept: Vec<(String, String)> = saved["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["step"] == "obtained")
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e["new_token"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(!kept.is_empty(), "the save carried a token: {saved:#}");
    for (name, token) in &kept {
        assert!(
            env.token_works(token),
            "{name}: the journalled token is GitLab's current one"
        );
    }
    let resets_before = env.sim.state().requests_to("POST", RESET);
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for (name, token) in &kept {
        assert_eq!(
            env.config_token(name),
            *token,
            "{name}: the journalled token was written"
        );
    }
    for name in &names {
        assert!(
            env.token_works(&env.config_token(name)),
            "{name}: healthy after the second run"
        );
    }
    let resets_again = env.sim.state().requests_to("POST", RESET) - resets_before;
    assert_eq!(
        resets_again,
        names.len() - kept.len(),
        "a token on disk is never asked for again"
    );
    assert!(
        !journal.exists(),
        "the journal is removed once every token is in config.toml"
    );
    println!(
        "figures: crash after the second journal save: {} of {} tokens in the journal, {} runners reset again",
        kept.len(),
        names.len(),
        resets_again
    );
}

/// The journal becomes unwritable after the plan is saved: a reset gets its token (kept in
/// memory, reported), and the creation that must be on disk before it is asked for is not asked
/// for. The run must still write the reset's token into config.toml; ending the whole run on
/// the creation's failed save would lose a token GitLab issued.
#[test]
fn a_journal_that_fails_before_a_creation_still_lets_the_issued_tokens_be_written() {
    let mut env = TestEnv::new();
    let entries = [env.revoked("r0"), env.deleted("r1")];
    env.write_config(&entries);
    env.extra_settings
        .push_str("[templates.r1]\nrunner_type = \"instance_type\"\n");
    let mut cmd = env.command(&["rotate", "--output", "json"]);
    cmd.env("RUNNER_MEDIC_PAUSE_AT", "after-journal-planned");
    let mut run = crate::harness::Background::spawn(cmd, env.dir.path(), "rotate");
    run.wait_stopped();
    let journal = env.state.join("journal");
    assert!(Command::new("chattr")
        .arg("+i")
        .arg(&journal)
        .status()
        .unwrap()
        .success());
    run.signal(nix::sys::signal::Signal::SIGCONT);
    let run = run.finish();
    let _ = Command::new("chattr").arg("-i").arg(&journal).status();
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(resets(&env), 1);
    assert_eq!(
        env.sim.state().requests_to("POST", "/api/v4/user/runners"),
        0,
        "no creation without its record on disk"
    );
    let token = crate::harness::token_in(&env.config, "r0");
    assert_ne!(token, entries[0].token);
    assert_eq!(env.sim.state().runner_by_token(&token), entries[0].id);
    assert!(run.runner("r1")["error"]
        .as_str()
        .unwrap_or_default()
        .contains("journal could not be written"));
}

/// A stop that fails after the service went down (a step after the signal failed) must not
/// leave gitlab-runner down: it is started after the write like a stopped one.
#[test]
fn a_stop_that_fails_after_the_service_went_down_still_starts_it() {
    let mut env = TestEnv::new();
    let svc = FakeService::install(&env);
    env.extra_settings = svc.settings();
    let entries = [env.revoked("r0")];
    env.write_config(&entries);
    std::fs::write(svc.dir.join("stop-fails"), "").unwrap();
    let run = rotate(&env);
    let service = &run.json()["service"];
    assert!(
        service["error"]
            .as_str()
            .unwrap_or_default()
            .contains("stop failed"),
        "{service}"
    );
    assert_eq!(service["started"], true, "{service}");
    assert_eq!(svc.calls(), "stop\nstart\n");
    assert_eq!(
        std::fs::read_to_string(svc.dir.join("state"))
            .unwrap()
            .trim(),
        "running"
    );
    assert!(env.token_works(&env.config_token("r0")));
}
