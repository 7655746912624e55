//! `runner-medic demo`: the whole cycle against an embedded simulated GitLab, in a temporary
//! directory, with nothing installed: a config.toml with one healthy, one expired and one deleted
//! runner, a stand-in gitlab-runner process under the `gitlab-runner` service manager, then
//! diagnose → rotate --dry-run → rotate (stop, write, start, verify) → diagnose.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use gitlab_sim::{NewRunner, Options, RunnerType, Simulator};

use super::CouldNotRun;
use crate::cli::{GlobalArgs, OutputFormat};
use crate::exit::ExitStatus;
use crate::report::Report;
use crate::rotate::{RotateOptions, Scope};
use crate::settings::{Environment, Overrides, Settings};

pub struct DemoRun {
    pub dir: PathBuf,
    pub steps: Vec<(String, Report)>,
    /// Lines the stand-in runner logged after the rotation (it shows the runners polling again).
    pub runner_log_tail: Vec<String>,
    pub status: ExitStatus,
}

impl DemoRun {
    /// Each step's report in `format`, then the stand-in runner's log after the rotation and a
    /// verdict.
    pub fn render(&self, format: crate::cli::OutputFormat, color: bool) -> String {
        use std::fmt::Write as _;
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(text, "runner-medic demo in {}", self.dir.display());
        for (title, report) in &self.steps {
            let _ = writeln!(text, "\n==== {title} ====");
            match format {
                crate::cli::OutputFormat::Json => {
                    let _ = writeln!(text, "{}", report.to_json());
                }
                crate::cli::OutputFormat::Human => {
                    text.push_str(&crate::report::render_human(report, color));
                }
            }
        }
        text.push_str("\n==== the stand-in gitlab-runner after the rotation ====\n");
        for line in &self.runner_log_tail {
            let _ = writeln!(text, "{line}");
        }
        let verdict = if self.status == ExitStatus::Healthy {
            "every runner is healthy again"
        } else {
            "some runner is still broken"
        };
        let _ = writeln!(text, "\ndemo: {verdict}");
        text
    }
}

fn io(e: impl std::fmt::Display) -> CouldNotRun {
    CouldNotRun {
        source: None,
        message: format!("the demo could not set up its directory: {e}"),
        fix: "check that the temporary directory is writable (TMPDIR)".into(),
    }
}

/// A `gitlab-runner`-compatible launcher (`start|stop|status`) for the stand-in runner: this
/// binary's hidden `demo --stand-in-runner`. The demo and the end-to-end tests both use it.
pub fn launcher_script(
    exe: &Path,
    config: &Path,
    pid_file: &Path,
    log: &Path,
    interval_ms: u64,
) -> String {
    format!(
        r#"#!/bin/sh
# gitlab-runner-compatible service launcher for the stand-in runner.
pidfile="{pid}"
running() {{ [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null; }}
case "$1" in
  start)
    running && exit 0
    rm -f "$pidfile"
    nohup "{exe}" demo --stand-in-runner --config "{config}" --pid-file "$pidfile" --interval-ms {interval_ms} >>"{log}" 2>&1 &
    i=0; while [ ! -f "$pidfile" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
    running ;;
  stop)
    running || exit 0
    kill -QUIT "$(cat "$pidfile")"
    i=0; while running && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
    ! running ;;
  status)
    if running; then echo "gitlab-runner: Service is running"; exit 0; fi
    echo "gitlab-runner: Service has stopped" >&2; exit 1 ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
"#,
        pid = pid_file.display(),
        exe = exe.display(),
        config = config.display(),
        log = log.display(),
    )
}

pub async fn run(env: &Environment, keep: bool) -> Result<DemoRun, CouldNotRun> {
    let tmp = tempfile::Builder::new()
        .prefix("runner-medic-demo-")
        .tempdir()
        .map_err(io)?;
    let dir = if keep {
        tmp.keep()
    } else {
        tmp.path().to_path_buf()
    };
    let sim = Simulator::start(Options::default()).map_err(io)?;
    let url = sim.url();
    let (healthy, expired, deleted, admin_token) = {
        let mut s = sim.state();
        s.settings.runner_token_expiration_interval = Some(90 * 86400);
        s.settings.project_runner_token_expiration_interval = Some(30 * 86400);
        s.settings.group_runner_token_expiration_interval = Some(30 * 86400);
        let admin = s.add_pat(
            &["api"],
            true,
            Some((Utc::now() + chrono::Duration::days(300)).date_naive()),
        );
        let healthy = s.add_runner(NewRunner {
            description: "docker-prod".into(),
            tag_list: vec!["docker".into()],
            ..NewRunner::default()
        });
        let expired = s.add_runner(NewRunner {
            runner_type: RunnerType::ProjectType,
            description: "shell-build".into(),
            tag_list: vec!["shell".into()],
            ..NewRunner::default()
        });
        s.expire_token(expired.0);
        let deleted = s.add_runner(NewRunner {
            runner_type: RunnerType::GroupType,
            description: "k8s-deploy".into(),
            tag_list: vec!["k8s".into()],
            ..NewRunner::default()
        });
        s.runners.remove(&deleted.0);
        (healthy, expired, deleted, admin)
    };
    let now = Utc::now();
    let fmt = |d: chrono::DateTime<Utc>| d.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let config = format!(
        r#"# gitlab-runner configuration (demo); comments and layout survive the rewrite.
concurrent = 4
check_interval = 0

[session_server]
  session_timeout = 1800

[[runners]]
  name = "docker-prod"   # healthy
  url = "{url}"
  id = {hid}
  token = "{htok}"
  token_obtained_at = {obtained}
  token_expires_at = {hexp}
  executor = "docker"
  [runners.docker]
    image = "alpine:3.20"

[[runners]]
  name = "shell-build"   # its token expired yesterday
  url = "{url}"
  id = {eid}
  token = "{etok}"
  token_obtained_at = {eobtained}
  token_expires_at = {eexp}
  executor = "shell"

[[runners]]
  name = "k8s-deploy"    # someone deleted it in the GitLab UI
  url = "{url}"
  id = {did}
  token = "{dtok}"
  token_obtained_at = {obtained}
  token_expires_at = {dexp}
  executor = "kubernetes"
"#,
        hid = healthy.0,
        htok = healthy.1,
        obtained = fmt(now),
        hexp = fmt(now + chrono::Duration::days(90)),
        eid = expired.0,
        etok = expired.1,
        eobtained = fmt(now - chrono::Duration::days(31)),
        eexp = fmt(now - chrono::Duration::days(1)),
        did = deleted.0,
        dtok = deleted.1,
        dexp = fmt(now + chrono::Duration::days(29)),
    );
    let config_path = dir.join("config.toml");
    fs_err::write(&config_path, config).map_err(io)?;
    fs_err::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let token_file = dir.join("admin-token");
    fs_err::write(&token_file, format!("{admin_token}\n")).map_err(io)?;
    fs_err::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let exe = std::env::current_exe().map_err(io)?;
    let launcher_path = dir.join("gitlab-runner");
    let script = launcher_script(
        &exe,
        &config_path,
        &dir.join("runner.pid"),
        &dir.join("runner.log"),
        200,
    );
    fs_err::write(&launcher_path, script).map_err(io)?;
    fs_err::set_permissions(&launcher_path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
    let settings_path = dir.join("settings.toml");
    fs_err::write(
        &settings_path,
        format!(
            r#"gitlab_url = "{url}"
admin_token_file = "{token}"
state_dir = "{state}"

[service]
manager = "gitlab-runner"
gitlab_runner_bin = "{launcher}"
stop_timeout = "10s"

# The deleted runner's record is gone; this is how to recreate it.
[templates."k8s-deploy"]
runner_type = "group_type"
group_id = 7
description = "k8s-deploy"
tag_list = ["k8s"]
"#,
            token = token_file.display(),
            state = dir.join("state").display(),
            launcher = launcher_path.display(),
        ),
    )
    .map_err(io)?;

    let global = GlobalArgs {
        runner_config: Some(config_path.clone()),
        settings: Some(settings_path),
        gitlab_url: None,
        admin_token_file: None,
        state_dir: None,
        output: OutputFormat::Human,
        metrics_file: None,
        fleet_store: None,
        fleet_endpoints: None,
        fleet_prefix: None,
        run_timeout: None,
        log_format: None,
        verbose: 0,
        quiet: 0,
    };
    let demo_env = Environment {
        admin_token: None,
        ..env.clone()
    };
    let settings = Settings::resolve(&global, &demo_env, &Overrides::default())?;

    // Start the stand-in runner the way an operator's service manager would.
    let service = crate::service::choose(&settings.service, Path::new("/"));
    let m = service.manager;
    let started = tokio::task::spawn_blocking(move || m.start().map(|()| m))
        .await
        .map_err(io)?;
    let manager = started.map_err(|e| CouldNotRun {
        source: None,
        message: format!("the demo's stand-in runner did not start: {e}"),
        fix: "run `runner-medic demo --keep` and read runner.log in its directory".into(),
    })?;

    let mut steps = Vec::new();
    steps.push((
        "1. diagnose".to_string(),
        crate::diagnose::diagnose(&settings).await.report,
    ));
    let dry = RotateOptions {
        dry_run: true,
        scope: Scope::default(),
        wait: false,
    };
    steps.push((
        "2. rotate --dry-run".to_string(),
        crate::rotate::rotate(&settings, &dry).await?,
    ));
    let real = RotateOptions {
        dry_run: false,
        scope: Scope::default(),
        wait: false,
    };
    steps.push((
        "3. rotate".to_string(),
        crate::rotate::rotate(&settings, &real).await?,
    ));
    // Give the restarted stand-in a moment to poll with its new tokens.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let last = crate::diagnose::diagnose(&settings).await.report;
    let status = last.exit_status();
    steps.push(("4. diagnose again".to_string(), last));

    let log = fs_err::read_to_string(dir.join("runner.log")).unwrap_or_default();
    let runner_log_tail = log
        .lines()
        .rev()
        .take(6)
        .map(str::to_string)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let _ = tokio::task::spawn_blocking(move || manager.stop()).await;
    drop(sim);
    if !keep {
        let _ = fs_err::remove_dir_all(&dir);
    }
    Ok(DemoRun {
        dir,
        steps,
        runner_log_tail,
        status,
    })
}
