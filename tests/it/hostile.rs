//! Hostile servers, files, users and environments: a GitLab (or whatever answers in its place)
//! that sends endless bodies or pages, echoes the request's tokens in its error text, or hangs; a
//! user who plants symlinks where runner-medic writes, or owns or can write its directories; token
//! files and systemd credentials of every mode; an environment that holds tokens a child process
//! must not inherit; an agent asked to hammer GitLab; a config.toml with 20 000 runners. Each test
//! drives the real client or the real binary against the simulator.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;
use std::time::Duration;

use gitlab_sim::{FaultKind, Options, Pat, Simulator};
use runner_medic::gitlab::{
    AdminApi, AdminCredential, ClientOptions, Error, RetryPolicy, MAX_BODY_BYTES, MAX_PAGES,
};
use runner_medic::secret::{AdminToken, Masked};
use url::Url;

use crate::harness::{Run, TestEnv};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn admin(sim: &Simulator) -> AdminApi {
    let token = sim.state().add_pat(&["api"], true, None);
    AdminApi::new(
        &AdminCredential {
            url: Url::parse(&sim.url()).unwrap(),
            token: AdminToken::new(token),
        },
        ClientOptions {
            timeout: Duration::from_secs(20),
            retry: RetryPolicy {
                max_attempts: 2,
                base_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(20),
                max_total: Duration::from_secs(30),
                ..RetryPolicy::default()
            },
            ..ClientOptions::default()
        },
    )
    .unwrap()
}

/// 64 times the cap: an unbounded reader would take it all in.
const HUGE: u64 = 64 << 20;

// ---- 1. bounded response bodies ----

#[test]
fn a_huge_answer_is_refused_by_its_length_or_cut_while_streaming() {
    let sim = Simulator::start(Options::default()).unwrap();
    let api = admin(&sim);
    for declare_length in [true, false] {
        sim.state().inject(
            "GET /api/v4/version",
            FaultKind::HugeBody {
                status: 200,
                bytes: HUGE,
                declare_length,
            },
            Some(1),
        );
        let err = rt().block_on(api.version()).unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { limit, .. } if limit == MAX_BODY_BYTES),
            "declare_length={declare_length}: {err:?}"
        );
        assert!(err.to_string().contains("larger than 1 MiB"), "{err}");
    }
    // Not retried: a second huge answer would be just as large.
    assert_eq!(sim.state().requests_to("GET", "/api/v4/version"), 2);
    // An error answer keeps its status however large its body is.
    sim.state().inject(
        "GET /api/v4/version",
        FaultKind::HugeBody {
            status: 403,
            bytes: HUGE,
            declare_length: false,
        },
        Some(1),
    );
    let err = rt().block_on(api.version()).unwrap_err();
    assert_eq!(err.status(), Some(403), "{err:?}");
    assert!(err.to_string().chars().count() < 400, "{err}");
}

#[test]
fn diagnose_names_a_huge_answer_instead_of_reading_it() {
    let env = TestEnv::new();
    env.write_config(&[env.healthy("big")]);
    // verify is the call that takes any 200 as valid (GitLab before 15.10 answers plain text),
    // so only the cap stops it from reading the whole body and calling the token healthy.
    env.sim.state().inject(
        "POST /api/v4/runners/verify",
        FaultKind::HugeBody {
            status: 200,
            bytes: HUGE,
            declare_length: false,
        },
        None,
    );
    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let findings = run.runner("big")["findings"].clone();
    let f = findings
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "server_error")
        .unwrap_or_else(|| panic!("no server_error: {findings}"));
    assert!(
        f["message"].as_str().unwrap().contains("larger than 1 MiB"),
        "{f}"
    );
    let human = env.run(&["diagnose"]);
    assert_eq!(human.code, 1);
    assert!(
        human.stdout.contains("larger than 1 MiB"),
        "{}",
        human.stdout
    );
}

// ---- 2. bounded pagination ----

#[test]
fn an_endless_runner_list_stops_after_the_page_limit() {
    let sim = Simulator::start(Options::default()).unwrap();
    let api = admin(&sim);
    sim.state().inject(
        "GET /api/v4/runners/all",
        FaultKind::EndlessPages { repeat: false },
        None,
    );
    let err = rt().block_on(api.all_runners(None)).unwrap_err();
    assert!(matches!(err, Error::Pagination { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&format!("after {MAX_PAGES} pages")), "{text}");
    assert!(text.contains("/api/v4/runners/all"), "{text}");
    assert_eq!(
        sim.state().requests_to("GET", "/api/v4/runners/all"),
        MAX_PAGES as usize
    );
}

#[test]
fn a_runner_list_that_repeats_its_page_stops_at_once() {
    let sim = Simulator::start(Options::default()).unwrap();
    let api = admin(&sim);
    sim.state().inject(
        "GET /api/v4/runners/all",
        FaultKind::EndlessPages { repeat: true },
        None,
    );
    let err = rt()
        .block_on(api.all_runners(Some("instance_type")))
        .unwrap_err();
    assert!(matches!(err, Error::Pagination { .. }), "{err:?}");
    assert!(
        err.to_string().contains("page 2 lists only runners"),
        "{err}"
    );
    assert_eq!(sim.state().requests_to("GET", "/api/v4/runners/all"), 2);
}

#[test]
fn a_normal_runner_list_of_several_pages_is_read_whole() {
    let sim = Simulator::start(Options::default()).unwrap();
    for i in 0..250 {
        sim.state().add_runner(gitlab_sim::NewRunner {
            description: format!("r{i}"),
            ..Default::default()
        });
    }
    let api = admin(&sim);
    let all = rt().block_on(api.all_runners(None)).unwrap();
    assert_eq!(all.len(), 250);
    assert_eq!(sim.state().requests_to("GET", "/api/v4/runners/all"), 3);
}

// ---- 3. server text never leaks secrets ----

/// A privileged token without a prefix (as tokens made before GitLab 14.5 are), so only the
/// exact-value masking can catch it.
fn legacy_admin(env: &mut TestEnv) -> String {
    let token = "Zq4vL9xTr2Wm8KpB3nHc".to_string();
    let mut s = env.sim.state();
    let id = s.pats.len() as u64 + 1;
    s.pats.push(Pat {
        id,
        token: token.clone(),
        name: "legacy".into(),
        scopes: vec!["api".into()],
        expires_at: None,
        revoked: false,
        admin: true,
        groups: vec![],
        projects: vec![],
    });
    drop(s);
    env.admin_token = token.clone();
    token
}

/// Neither token in any form but the mask; the echo itself reached the output (masked), so the
/// test cannot pass by the message having been dropped.
fn assert_masked(run: &Run, secrets: &[&str]) {
    let all = format!("{}\n{}", run.stdout, run.stderr);
    for secret in secrets {
        assert!(!all.contains(secret), "a token leaked:\n{all}");
    }
    assert!(
        all.contains("refused: PRIVATE-TOKEN="),
        "no echo shown:\n{all}"
    );
    let shown_masked = secrets.iter().any(|s| all.contains(Masked::of(s).as_str()));
    assert!(shown_masked, "no masked token in:\n{all}");
}

#[test]
fn diagnose_masks_tokens_a_server_echoes_in_its_errors() {
    let mut env = TestEnv::new();
    let admin = legacy_admin(&mut env);
    let runner = env.healthy("echo");
    env.write_config(std::slice::from_ref(&runner));
    for format in ["json", "human"] {
        {
            let mut s = env.sim.state();
            s.faults.clear();
            s.inject(
                "GET /api/v4/personal_access_tokens/self",
                FaultKind::EchoSecrets(500),
                None,
            );
            s.inject(
                "POST /api/v4/runners/verify",
                FaultKind::EchoSecrets(500),
                None,
            );
        }
        let run = env.run(&["diagnose", "--output", format]);
        assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
        assert_masked(&run, &[&admin, &runner.token]);
        assert!(
            run.stdout.contains(Masked::of(&admin).as_str())
                && run.stdout.contains(Masked::of(&runner.token).as_str()),
            "{}",
            run.stdout
        );
    }
}

#[test]
fn rotate_masks_tokens_a_server_echoes_in_its_errors() {
    let mut env = TestEnv::new();
    let admin = legacy_admin(&mut env);
    let dead = env.expired("dead");
    let soon = env.expiring("soon", 2);
    env.write_config(&[dead.clone(), soon.clone()]);
    {
        let mut s = env.sim.state();
        // The privileged reset of the dead token, and the self-renewal that sends the runner token.
        s.inject(
            "POST /api/v4/runners/:id/reset_authentication_token",
            FaultKind::EchoSecrets(400),
            None,
        );
        s.inject(
            "POST /api/v4/runners/reset_authentication_token",
            FaultKind::EchoSecrets(400),
            None,
        );
    }
    for format in ["json", "human"] {
        let run = env.run(&["rotate", "--output", format]);
        assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
        assert_masked(&run, &[&admin, &dead.token, &soon.token]);
        assert!(
            run.stdout.contains(Masked::of(&admin).as_str()),
            "{}",
            run.stdout
        );
        assert!(
            run.stdout.contains(Masked::of(&soon.token).as_str()),
            "{}",
            run.stdout
        );
    }
    // Nothing was changed by the refused calls.
    assert_eq!(env.config_token("dead"), dead.token);
    assert_eq!(env.config_token("soon"), soon.token);
}

// ---- 4. scrubbed child environments ----

#[test]
fn hooks_and_service_commands_never_inherit_a_secret() {
    let mut env = TestEnv::new();
    let dumps = env.path("dumps");
    std::fs::create_dir(&dumps).unwrap();
    let d = dumps.display();
    // A gitlab-runner stand-in that records its environment for every action.
    let service = env.path("gitlab-runner");
    std::fs::write(
        &service,
        format!(
            "#!/bin/sh\nenv > \"{d}/service-$1\"\ncase \"$1\" in\n  stop) touch \"{d}/stopped\" ;;\n  start) rm -f \"{d}/stopped\" ;;\n  status) if [ -e \"{d}/stopped\" ]; then echo \"gitlab-runner: Service is not running.\"; exit 1; fi; echo \"gitlab-runner: Service is running\" ;;\nesac\nexit 0\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&service, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.extra_settings = format!(
        "[hooks]\npre = \"env > {d}/hook-pre\"\ndeploy = \"env > {d}/hook-deploy\"\npost = \"env > {d}/hook-post\"\n\n[service]\nmanager = \"gitlab-runner\"\ngitlab_runner_bin = \"{}\"\nstop_timeout = \"5s\"\n",
        service.display()
    );
    let dead = env.expired("dead");
    env.write_config(std::slice::from_ref(&dead));
    let mut cmd = env.command(&["rotate", "--output", "json"]);
    cmd.env("RUNNER_MEDIC_ADMIN_TOKEN", &env.admin_token)
        // The same secrets under other names: a copy of the privileged token, the runner token
        // kept for gitlab-runner's `$VAR` expansion, and someone else's token of GitLab's shape.
        .env("DEPLOY_PAT", &env.admin_token)
        .env("CI_RUNNER_TOKEN", &dead.token)
        .env("OTHER_TOKEN", "glpat-AAAAbbbbCCCCddddEEEE")
        // Harmless-looking variables outside the allowlist: they do not pass either (a secret
        // can hide under any name and in any shape).
        .env("KEEP_ME", "visible")
        // Where a container engine listens goes to the engine's commands only, not to an init
        // script (whose gitlab-runner would use that engine for its docker executor) or a hook.
        .env("DOCKER_HOST", "tcp://another-engine.example.com:2376")
        .env(
            "AWS_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        )
        // The allowlist passes.
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("LANG", "C.UTF-8")
        .env("LC_TIME", "C")
        .env("TZ", "UTC");
    let run = env.run_cmd(cmd);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_ne!(
        env.config_token("dead"),
        dead.token,
        "the token was rotated"
    );
    let mut secrets = env.all_secrets();
    secrets.push("glpat-AAAAbbbbCCCCddddEEEE".into());
    for name in [
        "hook-pre",
        "hook-deploy",
        "hook-post",
        "service-stop",
        "service-start",
        "service-status",
    ] {
        let text = std::fs::read_to_string(dumps.join(name))
            .unwrap_or_else(|e| panic!("{name} did not run: {e}"));
        for line in [
            "PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "LANG=C.UTF-8",
            "LC_TIME=C",
            "TZ=UTC",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in {name}:\n{text}"
            );
        }
        // Nothing but the allowlist, the hook variables and what the shell sets itself.
        let allowed = |var: &str| {
            runner_medic::service::PASSED_ON.contains(&var)
                || runner_medic::service::HOOK_VARS.contains(&var)
                || var.starts_with("LC_")
                || ["PWD", "OLDPWD", "SHLVL", "_"].contains(&var)
        };
        for line in text.lines() {
            let var = line.split('=').next().unwrap();
            assert!(allowed(var), "{var} reached {name}:\n{text}");
        }
        for var in [
            "RUNNER_MEDIC_ADMIN_TOKEN",
            "DEPLOY_PAT",
            "CI_RUNNER_TOKEN",
            "OTHER_TOKEN",
            "KEEP_ME",
            "AWS_SECRET_ACCESS_KEY",
            "CARGO_PKG_NAME",
            "DOCKER_HOST",
        ] {
            assert!(
                !text.contains(&format!("{var}=")),
                "{var} reached {name}:\n{text}"
            );
        }
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a token reached {name}:\n{text}"
            );
        }
    }
    let deploy = std::fs::read_to_string(dumps.join("hook-deploy")).unwrap();
    assert!(deploy.contains("RUNNER_MEDIC_HOOK=deploy"), "{deploy}");
    assert!(deploy.contains("RUNNER_MEDIC_RUNNER=dead"), "{deploy}");
}

// ---- 5. agent interval and jitter bounds ----

/// Run the agent, which must refuse to start: a bounded wait, so an accepted interval fails the
/// test instead of hanging it.
fn agent_refuses(env: &TestEnv, args: &[&str], production: bool) -> (i32, String) {
    let mut all = vec!["agent"];
    all.extend_from_slice(args);
    let mut cmd = env.command(&all);
    if production {
        cmd.env_remove("RUNNER_MEDIC_TEST_FAST_RETRY");
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..300 {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            env.assert_no_secrets(&stderr, "stderr");
            return (out.status.code().unwrap_or(-1), stderr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the agent started with {args:?}");
}

#[test]
fn agent_refuses_an_interval_below_the_minimum() {
    let env = TestEnv::new();
    env.write_config(&[env.healthy("a")]);
    for (args, production) in [
        (&["--interval", "1ns"][..], false),
        (&["--interval", "1ns"][..], true),
        (&["--interval", "30s"][..], true),
    ] {
        let (code, stderr) = agent_refuses(&env, args, production);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        let value = args[1];
        assert!(
            stderr.contains(&format!("`--interval {value}`")),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains("minimum interval"), "{stderr}");
        if production {
            assert!(stderr.contains("minimum interval of 60s"), "{stderr}");
        }
        assert!(stderr.contains("fix: use `--interval"), "{stderr}");
    }
    assert!(env.sim.state().log.is_empty(), "no cycle ran");
}

#[test]
fn agent_refuses_a_jitter_longer_than_the_interval_and_an_interval_from_the_settings() {
    let mut env = TestEnv::new();
    env.write_config(&[env.healthy("a")]);
    let (code, stderr) = agent_refuses(&env, &["--interval", "1h", "--jitter", "2d"], true);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`--jitter 2d`"), "{stderr}");
    assert!(stderr.contains("longer than the interval (1h)"), "{stderr}");
    assert!(stderr.contains("fix: "), "{stderr}");
    let (code, stderr) = agent_refuses(&env, &["--interval", "400d"], true);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("maximum interval"), "{stderr}");
    env.extra_settings = "[agent]\ninterval = \"5s\"\n".into();
    let (code, stderr) = agent_refuses(&env, &[], true);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("`interval = \"5s\"` in [agent]"),
        "{stderr}"
    );
    assert!(env.sim.state().log.is_empty(), "no cycle ran");
}

// ---- 6. safe file creation ----

/// A root-owned 0600 file someone wants runner-medic to clobber or loosen.
fn victim(env: &TestEnv, name: &str) -> std::path::PathBuf {
    let path = env.path(name);
    std::fs::write(&path, "precious\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn assert_untouched(path: &std::path::Path) {
    assert_eq!(
        std::fs::read_to_string(path).unwrap(),
        "precious\n",
        "{} was written through a symlink",
        path.display()
    );
    assert_eq!(
        crate::harness::mode(path),
        0o600,
        "{} had its mode changed",
        path.display()
    );
}

fn config_key(env: &TestEnv) -> String {
    runner_medic::fs::sha256_hex(
        std::fs::canonicalize(&env.config)
            .unwrap()
            .as_os_str()
            .as_encoded_bytes(),
    )[..16]
        .to_string()
}

#[test]
fn symlinks_planted_at_temp_names_and_at_the_metrics_path_are_never_followed() {
    let env = TestEnv::new();
    let dead = env.expired("dead");
    env.write_config(std::slice::from_ref(&dead));
    let key = config_key(&env);
    let journal_dir = env.state.join("journal");
    let known_dir = env.state.join("known-runners");
    for d in [&env.state, &journal_dir, &known_dir] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let metrics_dir = env.path("metrics");
    std::fs::create_dir(&metrics_dir).unwrap();
    let metrics = metrics_dir.join("runner-medic.prom");

    // The names the temp files used to have: fixed for config.toml, `.<name>.tmp.<pid>` for the
    // journal, the known runner records and the metrics file. The pid of the next process is
    // predictable, so symlinks are planted for the next few thousand.
    let config_victim = victim(&env, "victim-config");
    std::os::unix::fs::symlink(&config_victim, env.path(".config.toml.runner-medic-tmp")).unwrap();
    let journal_victim = victim(&env, "victim-journal");
    let known_victim = victim(&env, "victim-known");
    let metrics_victim = victim(&env, "victim-metrics");
    let next_pid: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .map(|t| t.trim().parse::<u32>().unwrap() + 1)
        .unwrap_or(std::process::id());
    for pid in next_pid..next_pid + 3000 {
        for (dir, name, target) in [
            (&journal_dir, format!("{key}.json"), &journal_victim),
            (&known_dir, format!("{key}.json"), &known_victim),
            (
                &metrics_dir,
                "runner-medic.prom".to_string(),
                &metrics_victim,
            ),
        ] {
            let _ = std::os::unix::fs::symlink(target, dir.join(format!(".{name}.tmp.{pid}")));
        }
    }
    // And the metrics file itself a symlink to a file of root's.
    let metrics_target = victim(&env, "victim-metrics-path");
    std::os::unix::fs::symlink(&metrics_target, &metrics).unwrap();

    let run = env.run(&[
        "rotate",
        "--output",
        "json",
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(env.token_works(&env.config_token("dead")), "rotated");
    for v in [
        &config_victim,
        &journal_victim,
        &known_victim,
        &metrics_victim,
        &metrics_target,
    ] {
        assert_untouched(v);
    }
    // The metrics file was written: the symlink was replaced by a file of runner-medic's own.
    let meta = std::fs::symlink_metadata(&metrics).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
    assert!(std::fs::read_to_string(&metrics)
        .unwrap()
        .contains("runner_medic_"));
    assert!(known_dir.join(format!("{key}.json")).is_file());
    // No temp file is left anywhere, and the planted symlinks are still symlinks.
    for dir in [env.dir.path(), &journal_dir, &known_dir, &metrics_dir] {
        assert!(
            crate::harness::temp_files(dir).is_empty(),
            "{}: {:?}",
            dir.display(),
            crate::harness::temp_files(dir)
        );
    }
    assert!(
        std::fs::symlink_metadata(env.path(".config.toml.runner-medic-tmp"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

// ---- 7. StrictModes for the directories runner-medic writes in ----

const NOBODY: u32 = 65534;

fn assert_refused_dir(run: &Run, dir: &std::path::Path, fix: &str) {
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    let shown = format!("`{}`", dir.display());
    assert!(
        run.stderr.contains("error: ") && run.stderr.contains(&shown),
        "the directory is named:\n{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("fix: `{fix} {}`", dir.display())),
        "the fix is given:\n{}",
        run.stderr
    );
}

#[test]
fn a_state_or_backup_dir_someone_else_can_change_is_refused_and_left_as_it_is() {
    let env = TestEnv::new();
    let dead = env.expired("dead");
    env.write_config(std::slice::from_ref(&dead));
    std::fs::create_dir(&env.state).unwrap();

    // Owned by another user: refused, named, not chowned back.
    std::os::unix::fs::chown(&env.state, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_refused_dir(&run, &env.state, "chown root");
    assert!(run.stderr.contains("owned by"), "{}", run.stderr);
    assert_eq!(std::fs::metadata(&env.state).unwrap().uid(), NOBODY);

    // Writable by everyone: refused, not chmodded.
    std::os::unix::fs::chown(&env.state, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_refused_dir(&run, &env.state, "chmod 0700");
    assert!(run.stderr.contains("(mode 0777)"), "{}", run.stderr);
    assert_eq!(crate::harness::mode(&env.state), 0o777, "never chmodded");
    // The same with the sticky bit: the state directory holds tokens, so still refused.
    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_refused_dir(&run, &env.state, "chmod 0700");

    // The backups directory inside a sound state directory, owned by another user.
    std::fs::set_permissions(&env.state, std::fs::Permissions::from_mode(0o700)).unwrap();
    let backups = env.state.join("backups");
    std::fs::create_dir(&backups).unwrap();
    std::os::unix::fs::chown(&backups, Some(NOBODY), Some(NOBODY)).unwrap();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_refused_dir(&run, &backups, "chown root");
    assert!(
        run.stderr.contains("the backup directory"),
        "{}",
        run.stderr
    );

    // Nothing was asked of GitLab by the refused runs, and config.toml is as it was.
    assert!(
        env.changing_requests().is_empty(),
        "{:?}",
        env.changing_requests()
    );
    assert_eq!(env.config_token("dead"), dead.token);

    // Once it is fixed, the run works.
    std::os::unix::fs::chown(&backups, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&backups, std::fs::Permissions::from_mode(0o700)).unwrap();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(env.token_works(&env.config_token("dead")));
}

#[test]
fn a_state_dir_that_is_another_users_symlink_is_refused() {
    let env = TestEnv::new();
    let dead = env.expired("dead");
    env.write_config(std::slice::from_ref(&dead));
    // A directory of root's, and a link to it that another user planted (and could re-aim).
    let target = env.path("roots-dir");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&target, &env.state).unwrap();
    std::os::unix::fs::lchown(&env.state, Some(NOBODY), Some(NOBODY)).unwrap();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("is a symlink owned by uid 65534"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("fix: "), "{}", run.stderr);
    assert!(env.changing_requests().is_empty());
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "nothing written"
    );
    // The same link, root's: accepted.
    std::os::unix::fs::lchown(&env.state, Some(0), Some(0)).unwrap();
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn a_metrics_dir_someone_else_can_change_is_refused_unless_sticky() {
    let env = TestEnv::new();
    env.write_config(&[env.healthy("ok")]);
    let dir = env.path("textfile");
    std::fs::create_dir(&dir).unwrap();
    let metrics = dir.join("runner-medic.prom");
    let diagnose = |env: &TestEnv| {
        env.run(&[
            "diagnose",
            "--output",
            "json",
            "--metrics-file",
            metrics.to_str().unwrap(),
        ])
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let run = diagnose(&env);
    assert_refused_dir(&run, &dir, "chmod go-w");
    assert!(!metrics.exists());
    assert_eq!(crate::harness::mode(&dir), 0o777, "never chmodded");

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let run = diagnose(&env);
    assert_refused_dir(&run, &dir, "chown root");
    assert!(!metrics.exists());

    // World-writable with the sticky bit (as /tmp): nobody else can replace runner-medic's file.
    std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let run = diagnose(&env);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(metrics.is_file());
}

// ---- 8. one deadline per run ----

#[test]
fn a_diagnosis_stuck_on_a_hanging_gitlab_stops_at_the_run_deadline() {
    let mut env = TestEnv::new();
    env.write_config(&[env.healthy("slow")]);
    // Each answer hangs far longer than the run may take; each request alone is within its own
    // timeout, so only the run's deadline stops the run.
    env.extra_settings = "request_timeout = \"120s\"\n".into();
    env.sim.state().inject(
        "POST /api/v4/runners/verify",
        FaultKind::Hang(Duration::from_secs(100)),
        None,
    );
    let run = env.run(&["diagnose", "--output", "json", "--run-timeout", "2s"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.top_codes(), ["run_timeout"], "{}", run.stdout);
    let finding = &run.json()["findings"][0];
    assert!(
        finding["message"].as_str().unwrap().contains("2s"),
        "{finding}"
    );
    // The same from the environment and from the settings file.
    let mut cmd = env.command(&["diagnose", "--output", "json"]);
    cmd.env("RUNNER_MEDIC_RUN_TIMEOUT", "1s");
    let run = env.run_cmd(cmd);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.top_codes(), ["run_timeout"], "{}", run.stdout);
    env.extra_settings.push_str("run_timeout = \"1s\"\n");
    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(run.top_codes(), ["run_timeout"], "{}", run.stdout);
}

#[test]
fn a_run_timeout_below_the_minimum_is_refused() {
    let env = TestEnv::new();
    env.write_config(&[env.healthy("a")]);
    let mut cmd = env.command(&["diagnose", "--run-timeout", "10s"]);
    cmd.env_remove("RUNNER_MEDIC_TEST_FAST_RETRY");
    let run = env.run_cmd(cmd);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("`--run-timeout 10s` is shorter than the minimum of 60s"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("fix: "), "{}", run.stderr);
    assert!(env.sim.state().log.is_empty());
}

#[test]
fn no_token_request_starts_after_the_run_deadline_and_the_next_run_heals() {
    let mut env = TestEnv::new();
    let dead: Vec<_> = (0..3).map(|i| env.expired(&format!("d{i}"))).collect();
    env.write_config(&dead);
    // One request at a time; the first reset hangs past the run's deadline (within its own
    // timeout, so it is answered, late).
    env.extra_settings = "request_timeout = \"10s\"\nconcurrency = 1\n".into();
    env.sim.state().inject(
        "POST /api/v4/runners/:id/reset_authentication_token",
        FaultKind::Hang(Duration::from_secs(4)),
        Some(1),
    );
    let run = env.run(&["rotate", "--output", "json", "--run-timeout", "2s"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.top_codes().contains(&"run_timeout".to_string()),
        "{}",
        run.stdout
    );
    let asked: std::collections::BTreeSet<String> = env
        .sim
        .state()
        .log
        .iter()
        .filter(|e| e.route == "/api/v4/runners/:id/reset_authentication_token")
        .map(|e| e.path.clone())
        .collect();
    assert!(
        asked.len() <= 1,
        "runners were asked for after the deadline: {asked:?}"
    );
    // Nothing GitLab issued is lost: every runner's config entry holds its old token or a
    // working new one, and config.toml is whole.
    let mut rotated = 0;
    for e in &dead {
        let now = env.config_token(&e.name);
        if now != e.token {
            assert!(env.token_works(&now), "{}", e.name);
            rotated += 1;
        }
    }
    assert!(rotated <= 1, "{rotated} rotated");
    // When the run got as far as asking (its diagnosis finished in time), the runners after
    // the deadline are reported as left alone.
    let left = run.json()["runners"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["error"]
                .as_str()
                .is_some_and(|e| e.contains("deadline passed"))
        })
        .count();
    if !asked.is_empty() {
        assert_eq!(left, 2, "{}", run.stdout);
    }

    // The next run, with time enough, heals every runner, each asked once more at most.
    let run = env.run(&["rotate", "--output", "json"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    for e in &dead {
        assert!(env.token_works(&env.config_token(&e.name)), "{}", e.name);
    }
}

// ---- 9. the privileged token from systemd credentials and mounted secrets ----

fn privileged_requests_with(env: &TestEnv, token: &str) -> usize {
    env.sim
        .state()
        .log
        .iter()
        .filter(|e| e.credential.as_deref() == Some(token))
        .count()
}

#[test]
fn the_privileged_token_comes_from_systemd_credentials_when_nothing_else_is_set() {
    let mut env = TestEnv::new();
    env.write_config(&[env.deleted("gone")]);
    let creds = env.path("credentials");
    std::fs::create_dir(&creds).unwrap();
    let cred = creds.join("runner-medic-admin-token");
    std::fs::write(&cred, format!("{}\n", env.admin_token)).unwrap();
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o400)).unwrap();
    env.use_admin = false;
    env.extra_settings = format!("gitlab_url = \"{}\"\n", env.url());
    let diagnose = |env: &TestEnv| {
        let mut cmd = env.command(&["diagnose", "--output", "json"]);
        cmd.env("CREDENTIALS_DIRECTORY", &creds);
        env.run_cmd(cmd)
    };
    let run = diagnose(&env);
    assert!(
        privileged_requests_with(&env, &env.admin_token) > 0,
        "the credential was used:\n{}\n{}",
        run.stdout,
        run.stderr
    );
    assert!(
        !run.top_codes().iter().any(|c| c.starts_with("admin_token")),
        "{}",
        run.stdout
    );

    // Another source wins: the credential is not even read.
    env.sim.state().log.clear();
    let other = env.sim.state().add_pat(&["api"], true, None);
    let file = env.path("admin-token-file");
    std::fs::write(&file, &other).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    env.extra_settings
        .push_str(&format!("admin_token_file = \"{}\"\n", file.display()));
    let run = diagnose(&env);
    assert!(privileged_requests_with(&env, &other) > 0, "{}", run.stderr);
    assert_eq!(privileged_requests_with(&env, &env.admin_token), 0);

    // A credential others may read is refused like any token file.
    env.extra_settings = format!("gitlab_url = \"{}\"\n", env.url());
    std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o444)).unwrap();
    let run = diagnose(&env);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(&cred.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("readable by others"), "{}", run.stderr);
}

#[test]
fn a_read_only_token_file_of_root_may_be_group_readable_but_never_more() {
    let mut env = TestEnv::new();
    env.write_config(&[env.deleted("gone")]);
    let file = env.path("mounted-secret");
    std::fs::write(&file, &env.admin_token).unwrap();
    env.use_admin = false;
    env.extra_settings = format!(
        "gitlab_url = \"{}\"\nadmin_token_file = \"{}\"\n",
        env.url(),
        file.display()
    );
    // As Docker and Kubernetes mount secrets: read-only, root's, readable by a group.
    for ok in [0o400, 0o440, 0o600] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(ok)).unwrap();
        env.sim.state().log.clear();
        let run = env.run(&["diagnose", "--output", "json"]);
        assert_ne!(run.code, 2, "{ok:o}: {}", run.stderr);
        assert!(
            privileged_requests_with(&env, &env.admin_token) > 0,
            "{ok:o}"
        );
    }
    // Writable by the group or others, readable by others, or group-readable but writable.
    for (bad, why) in [
        (0o460, "writable by others"),
        (0o444, "readable by others"),
        (0o404, "readable by others"),
        (0o640, "readable by others (its group"),
        (0o442, "writable by others"),
    ] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(bad)).unwrap();
        env.sim.state().log.clear();
        let run = env.run(&["diagnose", "--output", "json"]);
        assert_eq!(run.code, 2, "{bad:o}: {}", run.stderr);
        assert!(run.stderr.contains(why), "{bad:o}: {}", run.stderr);
        assert!(run.stderr.contains("fix: chmod 600"), "{}", run.stderr);
        assert!(env.sim.state().log.is_empty(), "{bad:o}: nothing sent");
    }
    // Owned by another user, even 0400.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
    std::os::unix::fs::chown(&file, Some(NOBODY), None).unwrap();
    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("owned by uid 65534"), "{}", run.stderr);
}

// ---- 10. a config.toml with very many runners ----

/// 20 000 entries: all but three have a token runner-medic cannot use (so the run stays offline
/// for them), the last repeats an early one's token, and three real runners sit at the start,
/// the middle and the end. Everything must come out right, entry by entry (no timing here: the
/// benchmark measures the time, docs/performance.md).
#[test]
fn a_config_with_twenty_thousand_runners_is_diagnosed_and_rotated_entry_by_entry() {
    const N: usize = 20_000;
    let env = TestEnv::new();
    let first = env.healthy("real-first");
    let middle = env.expired("real-middle");
    let last = env.healthy("real-last");
    let mut entries = Vec::with_capacity(N);
    for i in 0..N {
        let e = match i {
            0 => first.clone(),
            10_000 => middle.clone(),
            _ if i == N - 1 => last.clone(),
            _ => crate::harness::Entry {
                name: format!("r{i}"),
                url: env.url(),
                // No id and an unusable token (a placeholder): nothing to ask GitLab about. The
                // one before last repeats r7's token.
                id: None,
                token: format!("glrt-t1_{:020}>", if i == N - 2 { 7 } else { i }),
                obtained_at: None,
                expires_at: None,
                extra: String::new(),
            },
        };
        entries.push(e);
    }
    let before = env.write_config(&entries);
    // Where each entry starts, counted independently of runner-medic.
    let headers: Vec<usize> = before
        .lines()
        .enumerate()
        .filter(|(_, l)| l.starts_with("[[runners]]"))
        .map(|(n, _)| n + 1)
        .collect();
    assert_eq!(headers.len(), N);
    let header_line = |i: usize| headers[i];

    let run = env.run(&["diagnose", "--output", "json"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report = run.json();
    let runners = report["runners"].as_array().unwrap();
    assert_eq!(runners.len(), N);
    for (i, r) in runners.iter().enumerate() {
        assert_eq!(r["line"].as_u64().unwrap() as usize, header_line(i), "{r}");
    }
    let codes = |i: usize| -> Vec<String> {
        runners[i]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["code"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        codes(0).iter().all(|c| c != "token_expired"),
        "{:?}",
        codes(0)
    );
    assert!(codes(N - 1).is_empty(), "{:?}", codes(N - 1));
    assert!(codes(10_000).contains(&"token_expired".to_string()));
    assert_eq!(codes(5), ["token_malformed"]);
    // Exactly one duplicate, named after the first holder.
    let dups: Vec<usize> = (0..N)
        .filter(|i| codes(*i).contains(&"duplicate_token".to_string()))
        .collect();
    assert_eq!(dups, [N - 2]);
    let dup = runners[N - 2]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "duplicate_token")
        .unwrap()
        .clone();
    assert!(
        dup["message"].as_str().unwrap().contains("runner `r7`"),
        "{dup}"
    );
    // Only the three real runners were asked about.
    assert_eq!(
        env.sim
            .state()
            .requests_to("POST", "/api/v4/runners/verify"),
        3
    );

    // The plan: only the dead runner is reset, with a masked diff.
    let dry = env.run(&["rotate", "--dry-run", "--output", "json"]);
    let planned: Vec<String> = dry.json()["runners"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "planned")
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(planned, ["real-middle"]);
    let diff = dry.json()["diff"].as_str().unwrap().to_string();
    assert!(!diff.contains(&middle.token), "{diff}");
    assert!(diff.contains("<new token from GitLab>"), "{diff}");

    // The rotation rewrites that one entry and nothing else.
    let run = env.run(&["rotate", "--output", "json", "--runner", "real-middle"]);
    // Exit 1: the placeholder tokens of the other entries still need a person.
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.json()["runners"][10_000]["outcome"], "done");
    let new = env.config_token("real-middle");
    assert!(env.token_works(&new));
    let after = env.config_text();
    let changed: Vec<(&str, &str)> = before
        .lines()
        .zip(after.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert!(
        !changed.is_empty()
            && changed.len() <= 4
            && changed
                .iter()
                .all(|(a, _)| a.trim_start().starts_with("token")),
        "{changed:?}"
    );
    assert_eq!(before.lines().count(), after.lines().count());
}
