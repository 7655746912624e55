//! `runner-medic agent`: diagnose + rotate at start and then every interval (plus random
//! jitter), backing off while GitLab is unreachable. A function of its inputs: signals arrive as
//! [`Signal`] values on a channel (the OS edge is in `main`), so tests can drive it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, RwLock};

use super::CouldNotRun;
use crate::diagnose::FindingCode;
use crate::report::{metrics, Outcome, Report};
use crate::rotate::{RotateOptions, Scope};
use crate::settings::Settings;

/// What the process was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM / SIGINT.
    Shutdown,
    /// SIGHUP.
    Reload,
}

/// How long a cycle in progress may go on after a shutdown request before it is abandoned (the
/// journal makes abandoning safe, as a crash would be).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

fn unreachable(report: &Report) -> bool {
    report
        .findings
        .iter()
        .chain(report.runners.iter().flat_map(|r| r.findings.iter()))
        .any(|f| {
            matches!(
                f.code,
                FindingCode::DnsFailure
                    | FindingCode::ConnectFailure
                    | FindingCode::ServerError
                    | FindingCode::TlsFailure
            )
        })
}

/// Run until a shutdown signal. `reload` re-reads the settings on SIGHUP.
pub async fn run(
    mut settings: Settings,
    reload: impl Fn() -> Result<Settings, CouldNotRun>,
    mut signals: mpsc::Receiver<Signal>,
) -> Result<Report, CouldNotRun> {
    let metrics_text = Arc::new(RwLock::new(String::new()));
    if let Some(addr) = settings.agent.listen.clone() {
        serve_metrics(&addr, metrics_text.clone()).await?;
    }
    let mut last_rotation: BTreeMap<String, (i64, String, String)> = BTreeMap::new();
    let mut failures: u32 = 0;
    let mut last_report = Report::new("agent", settings.runner_config.display().to_string(), None);
    tracing::info!(
        interval_s = settings.agent.interval.as_secs(),
        jitter_s = settings.agent.jitter.as_secs(),
        "agent started"
    );
    loop {
        let opts = RotateOptions {
            dry_run: false,
            scope: Scope::default(),
            wait: true,
        };
        let mut current = settings.clone();
        // Each cycle is a run, with a deadline of its own.
        current.start_run();
        let cycle = async move { crate::rotate::rotate(&current, &opts).await };
        tokio::pin!(cycle);
        let mut shutting_down = false;
        let mut reload_pending = false;
        let result = loop {
            tokio::select! {
                r = &mut cycle => break Some(r),
                s = signals.recv(), if !shutting_down => match s {
                    Some(Signal::Shutdown) | None => {
                        tracing::info!("shutdown requested; letting the cycle in progress finish");
                        shutting_down = true;
                    }
                    Some(Signal::Reload) => {
                        tracing::info!("reload requested; it applies after this cycle");
                        reload_pending = true;
                    }
                },
                () = tokio::time::sleep(SHUTDOWN_GRACE), if shutting_down => {
                    tracing::warn!("the cycle did not finish in time; abandoning it (the journal lets the next run complete it)");
                    break None;
                }
            }
        };
        let next = match result {
            Some(Ok(report)) => {
                let now = report.generated_at.timestamp();
                for r in &report.runners {
                    if matches!(r.outcome, Some(Outcome::Done | Outcome::Failed)) {
                        last_rotation.insert(
                            r.name.clone(),
                            (
                                now,
                                r.action.map_or("none", |a| a.as_str()).to_string(),
                                r.outcome.map_or("", |o| o.as_str()).to_string(),
                            ),
                        );
                    }
                }
                let text = metrics::render(&report, &last_rotation);
                *metrics_text.write().await = text.clone();
                if let Some(path) = &settings.metrics_file {
                    if let Err(e) = crate::fs::write_private(path, text.as_bytes(), 0o644) {
                        tracing::error!(path = %path.display(), error = %e, "could not write the metrics file");
                    }
                }
                let status = report.exit_status();
                tracing::info!(
                    status = status.code(),
                    runners = report.runners.len(),
                    "cycle finished"
                );
                let down = unreachable(&report);
                last_report = report;
                last_report.command = "agent";
                if down {
                    failures += 1;
                    backoff(failures, settings.agent.interval)
                } else {
                    failures = 0;
                    settings.agent.interval + jitter(settings.agent.jitter)
                }
            }
            Some(Err(e)) => {
                failures += 1;
                tracing::error!(error = %e.message, fix = %e.fix, "cycle could not run");
                backoff(failures, settings.agent.interval)
            }
            None => return Ok(last_report),
        };
        if shutting_down {
            return Ok(last_report);
        }
        if reload_pending {
            apply_reload(&mut settings, &reload);
        }
        tracing::info!(next_in_s = next.as_secs(), "waiting for the next cycle");
        let sleep = tokio::time::sleep(next);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                s = signals.recv() => match s {
                    Some(Signal::Shutdown) | None => {
                        tracing::info!("agent stopping");
                        return Ok(last_report);
                    }
                    Some(Signal::Reload) => {
                        if apply_reload(&mut settings, &reload) {
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Re-read the settings; on failure keep the ones in force. Returns whether they changed.
fn apply_reload(
    settings: &mut Settings,
    reload: &impl Fn() -> Result<Settings, CouldNotRun>,
) -> bool {
    match reload() {
        Ok(new) => {
            tracing::info!("settings reloaded");
            *settings = new;
            true
        }
        Err(e) => {
            tracing::error!(error = %e.message, "reload failed; keeping the previous settings");
            false
        }
    }
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(
        rand::thread_rng().gen_range(0..=u64::try_from(max.as_millis()).unwrap_or(u64::MAX)),
    )
}

/// 30 s, 1 min, 2 min, … capped at the interval, while GitLab is unreachable.
fn backoff(failures: u32, interval: Duration) -> Duration {
    let base = Duration::from_secs(30)
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16)));
    base.min(interval) + jitter(Duration::from_secs(5))
}

/// A minimal `/metrics` listener: GET /metrics answers the last cycle's text.
async fn serve_metrics(addr: &str, text: Arc<RwLock<String>>) -> Result<(), CouldNotRun> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CouldNotRun {
            message: format!("cannot listen on `{addr}`: {e}"),
            fix: "choose a free address for `--listen`, e.g. 127.0.0.1:9852".into(),
        })?;
    tracing::info!(addr, "serving /metrics");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let text = text.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let ok = request.starts_with("GET /metrics");
                let body = if ok {
                    text.read().await.clone()
                } else {
                    "not found\n".to_string()
                };
                let status = if ok { "200 OK" } else { "404 Not Found" };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(())
}
