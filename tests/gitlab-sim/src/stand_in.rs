//! A stand-in for `gitlab-runner run`, for end-to-end tests: it reads config.toml, polls
//! `POST /api/v4/jobs/request` with each runner's token, re-reads the file when its mtime
//! changes (as gitlab-runner does every 3 s, here faster) and on SIGHUP, writes a pid file, and
//! exits cleanly on SIGQUIT, SIGTERM or SIGINT. It logs `poll name=… status=…`, never a token.
//!
//! A build in progress is simulated with `STAND_IN_JOB_MS=N` in its environment at start: a job
//! runs for N ms; or with `STAND_IN_JOB_FILE=FILE`, where FILE holds N and is removed by the
//! process that takes the job (one process gets it, not those a supervisor starts after it). As gitlab-runner does (reference §7.3): SIGHUP reloads and leaves it running,
//! SIGQUIT waits for it to finish before exiting, SIGTERM/SIGINT abort it (`job aborted`).
//!
//! Usage: stand-in-runner --config FILE [--pid-file FILE] [--interval-ms N]
//! (also reachable as `runner-medic demo --stand-in-runner …` for the demo)

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{signal, SignalKind};

/// Every line carries the time (ms since the epoch) so tests can order events across processes.
macro_rules! say {
    ($($arg:tt)*) => {{
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        println!("ts={ms} {}", format!($($arg)*));
    }};
}

struct Entry {
    name: String,
    url: String,
    token: String,
}

fn load(path: &Path) -> Result<Vec<Entry>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| e.message().to_string())?;
    let runners = doc
        .get("runners")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    Ok(runners
        .iter()
        .filter_map(|r| {
            Some(Entry {
                name: r.get("name")?.as_str()?.to_string(),
                url: r.get("url")?.as_str()?.trim_end_matches('/').to_string(),
                token: r.get("token")?.as_str()?.to_string(),
            })
        })
        .collect())
}

/// A job waiting in `STAND_IN_JOB_FILE` (its length in ms): taken by the first process that
/// starts, so a process a supervisor starts again afterwards has none.
fn take_job_file() -> Option<u64> {
    let file = std::env::var_os("STAND_IN_JOB_FILE")?;
    let ms = std::fs::read_to_string(&file).ok()?.trim().parse().ok();
    let _ = std::fs::remove_file(&file);
    ms
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Parse `--config FILE [--pid-file FILE] [--interval-ms N]` from `args` and run until a signal.
pub async fn main_with_args(args: Vec<String>) {
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(config) = arg("--config").map(PathBuf::from) else {
        eprintln!("usage: stand-in-runner --config FILE [--pid-file FILE] [--interval-ms N]");
        std::process::exit(2);
    };
    let pid_file = arg("--pid-file").map(PathBuf::from);
    let interval = Duration::from_millis(
        arg("--interval-ms")
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    if let Some(p) = &pid_file {
        std::fs::write(p, format!("{}\n", std::process::id())).expect("write pid file");
    }
    let mut entries = load(&config).unwrap_or_else(|e| {
        say!("config error: {e}");
        Vec::new()
    });
    let mut seen = mtime(&config);
    say!(
        "started pid={} runners={}",
        std::process::id(),
        entries.len()
    );

    let mut job_until = std::env::var("STAND_IN_JOB_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .or_else(take_job_file)
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    if job_until.is_some() {
        say!("job started");
    }
    let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut tick = tokio::time::interval(interval);
    loop {
        let mut reload = false;
        tokio::select! {
            _ = quit.recv() => {
                say!("SIGQUIT: stopping gracefully");
                if let Some(until) = job_until.take() {
                    say!("waiting for the running job");
                    tokio::time::sleep_until(until).await;
                    say!("job finished");
                }
                break;
            }
            _ = term.recv() => {
                say!("SIGTERM: stopping");
                if job_until.take().is_some() { say!("job aborted"); }
                break;
            }
            _ = int.recv() => {
                say!("SIGINT: stopping");
                if job_until.take().is_some() { say!("job aborted"); }
                break;
            }
            _ = hup.recv() => { say!("SIGHUP: reloading"); reload = true; }
            _ = tick.tick() => {}
        }
        if job_until.is_some_and(|until| tokio::time::Instant::now() >= until) {
            job_until = None;
            say!("job finished");
        }
        let now = mtime(&config);
        if reload || now != seen {
            seen = now;
            match load(&config) {
                Ok(e) => {
                    entries = e;
                    say!("reloaded config runners={}", entries.len());
                }
                // As gitlab-runner: keep the previous config when the new one is bad.
                Err(e) => say!("failed to load config, keeping the previous one: {e}"),
            }
        }
        // Poll every runner at once, as gitlab-runner's workers do, so a large config does not
        // delay the reaction to signals.
        let mut polls = tokio::task::JoinSet::new();
        // gitlab-runner sends its system id (`.runner_system_id` beside config.toml, reference
        // §6.3) with every poll, so GitLab keeps one runner manager per host.
        let system_id = config
            .parent()
            .and_then(|d| std::fs::read_to_string(d.join(".runner_system_id")).ok())
            .map(|s| s.trim().to_string());
        for e in &entries {
            let client = client.clone();
            let url = format!("{}/api/v4/jobs/request", e.url);
            let mut body = serde_json::json!({ "token": e.token });
            if let Some(id) = &system_id {
                body["system_id"] = serde_json::json!(id);
            }
            let name = e.name.clone();
            polls.spawn(async move {
                let status = client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16().to_string())
                    .unwrap_or_else(|err| {
                        format!(
                            "error({})",
                            if err.is_connect() { "connect" } else { "other" }
                        )
                    });
                (name, status)
            });
        }
        while let Some(Ok((name, status))) = polls.join_next().await {
            say!("poll name={name} status={status}");
        }
    }
    if let Some(p) = &pid_file {
        let _ = std::fs::remove_file(p);
    }
}
