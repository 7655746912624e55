//! `runner-medic agent`: diagnose + rotate at start and then every interval (plus random
//! jitter), backing off while GitLab is unreachable. A function of its inputs: signals arrive as
//! [`Signal`] values on a channel (the OS edge is in `main`), so tests can drive it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{mpsc, RwLock};

use super::CouldNotRun;
use crate::exit::ExitStatus;
use crate::report::metrics::{self, Ending};
use crate::report::Report;
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
        .any(|f| f.code.is_connectivity())
}

/// The metrics of the last finished cycle; `None` until the first cycle ends.
type Published = Arc<RwLock<Option<String>>>;

/// With a fleet store: the watch that tells when another host published a token this host does
/// not hold (`rotate::watch_fleet`), so that a cycle adopts it now instead of at the next timer.
struct FleetWatch {
    task: Option<tokio::task::JoinHandle<()>>,
    news: Option<mpsc::Receiver<String>>,
}

impl FleetWatch {
    fn start(settings: &Settings) -> Self {
        if settings.fleet.store.is_none() {
            return Self {
                task: None,
                news: None,
            };
        }
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(crate::rotate::watch_fleet(settings.clone(), tx));
        Self {
            task: Some(task),
            news: Some(rx),
        }
    }

    /// Forget the news a cycle about to start covers anyway.
    fn drain(&mut self) {
        if let Some(rx) = &mut self.news {
            while rx.try_recv().is_ok() {}
        }
    }

    /// The next runner another host published a token for; never, without a store.
    async fn next(&mut self) -> String {
        if let Some(rx) = &mut self.news {
            if let Some(name) = rx.recv().await {
                return name;
            }
        }
        std::future::pending().await
    }
}

impl Drop for FleetWatch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Run until a shutdown signal. `reload` re-reads the settings on SIGHUP.
pub async fn run(
    mut settings: Settings,
    reload: impl Fn() -> Result<Settings, CouldNotRun>,
    mut signals: mpsc::Receiver<Signal>,
) -> Result<Report, CouldNotRun> {
    let published: Published = Arc::new(RwLock::new(None));
    if let Some(addr) = settings.agent.listen.clone() {
        serve_metrics(&addr, published.clone()).await?;
    }
    // Until a cycle of this process ends, the previous metrics are the file an earlier run wrote:
    // they carry its per-runner series and last success across a restart.
    let mut previous = settings
        .metrics_file
        .as_ref()
        .and_then(|p| fs_err::read_to_string(p).ok())
        .unwrap_or_default();
    let mut failures: u32 = 0;
    let mut last_report = Report::new(
        crate::report::ReportCommand::Agent,
        settings.runner_config.display().to_string(),
        None,
    );
    tracing::info!(
        interval_s = settings.agent.interval.as_secs(),
        jitter_s = settings.agent.jitter.as_secs(),
        "agent started"
    );
    let mut watch = FleetWatch::start(&settings);
    loop {
        watch.drain();
        let opts = RotateOptions {
            dry_run: false,
            scope: Scope::default(),
            wait: true,
        };
        let mut current = settings.clone();
        // Each cycle is a run, with a deadline and a retry budget of its own.
        current.retry.budget = current.retry.budget.renewed();
        current.start_run();
        let started = Instant::now();
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
        let store = settings.status_store();
        let next = match result {
            Some(Ok(report)) => {
                let status = report.exit_status();
                previous = metrics::finish(
                    Some(&store),
                    &Ending {
                        report: Some(&report),
                        exit_code: status.code(),
                        duration: started.elapsed(),
                        save: true,
                    },
                    &previous,
                );
                publish(&settings, &published, &previous).await;
                tracing::info!(
                    status = status.code(),
                    runners = report.runners.len(),
                    "cycle finished"
                );
                let down = unreachable(&report);
                last_report = report;
                last_report.command = crate::report::ReportCommand::Agent;
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
                previous = metrics::finish(
                    Some(&store),
                    &Ending {
                        report: None,
                        exit_code: ExitStatus::CouldNotRun.code(),
                        duration: started.elapsed(),
                        save: true,
                    },
                    &previous,
                );
                publish(&settings, &published, &previous).await;
                backoff(failures, settings.agent.interval)
            }
            None => return Ok(last_report),
        };
        if shutting_down {
            return Ok(last_report);
        }
        if reload_pending && apply_reload(&mut settings, &reload) {
            watch = FleetWatch::start(&settings);
        }
        tracing::info!(next_in_s = next.as_secs(), "waiting for the next cycle");
        let sleep = tokio::time::sleep(next);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                runner = watch.next() => {
                    tracing::info!(runner = %runner, "another host published a new token; adopting it now");
                    break;
                }
                s = signals.recv() => match s {
                    Some(Signal::Shutdown) | None => {
                        tracing::info!("agent stopping");
                        return Ok(last_report);
                    }
                    Some(Signal::Reload) => {
                        if apply_reload(&mut settings, &reload) {
                            watch = FleetWatch::start(&settings);
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Serve a cycle's metrics on `/metrics` and write them to the metrics file.
async fn publish(settings: &Settings, published: &Published, text: &str) {
    *published.write().await = Some(text.to_string());
    if let Some(path) = &settings.metrics_file {
        if let Err(e) = crate::fs::write_private(path, text.as_bytes(), 0o644) {
            tracing::error!(path = %path.display(), error = %e, "could not write the metrics file; check that its directory exists and is writable");
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

/// The most connections served at once; more wait to be accepted. A scraper needs one.
const MAX_CONNECTIONS: usize = 32;

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The `/metrics` listener, on hyper (HTTP/1.1): `GET` and `HEAD` of exactly `/metrics` answer
/// the last cycle's metrics, `503` until the first cycle has ended (a scrape then is "down", not
/// an empty success that would hide every series); any other path is `404`, another method `405`.
async fn serve_metrics(addr: &str, published: Published) -> Result<(), CouldNotRun> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| CouldNotRun {
            source: None,
            message: format!("cannot listen on `{addr}`: {e}"),
            fix:
                "choose a free address for `listen` in [agent] (or `--listen`), e.g. 127.0.0.1:9852"
                    .into(),
        })?;
    tracing::info!(addr, "serving /metrics");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "accepting a /metrics connection failed");
                    // Out of file descriptors, say: do not spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let published = published.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let published = published.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(&request, &published).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                if let Err(e) = served {
                    tracing::debug!(error = %e, "a /metrics connection ended with an error");
                }
                drop(permit);
            });
        }
    });
    Ok(())
}

type Body = http_body_util::Full<hyper::body::Bytes>;

fn plain(status: hyper::StatusCode, content_type: &str, body: String) -> hyper::Response<Body> {
    let mut response = hyper::Response::new(Body::from(body));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The answer to one request (hyper leaves the body out for `HEAD`, keeping its length).
async fn answer<B>(request: &hyper::Request<B>, published: &Published) -> hyper::Response<Body> {
    use hyper::{Method, StatusCode};
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: runner-medic serves only /metrics\n".into(),
        );
    }
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed: use GET or HEAD\n".into(),
        );
        response.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return response;
    }
    match published.read().await.clone() {
        Some(text) => plain(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", text),
        None => plain(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "runner-medic agent is starting: the first check has not finished yet; /metrics answers once it has\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use clap::Parser;

    use super::*;
    use crate::cli::Cli;
    use crate::settings::{Environment, Overrides};

    #[test]
    fn backoff_doubles_from_30s_and_is_capped_at_the_interval() {
        let hour = Duration::from_secs(3600);
        let within = |d: Duration, base: u64| {
            d >= Duration::from_secs(base) && d <= Duration::from_secs(base + 5)
        };
        assert!(within(backoff(1, hour), 30));
        assert!(within(backoff(2, hour), 60));
        assert!(within(backoff(3, hour), 120));
        assert!(within(backoff(10, hour), 3600), "capped at the interval");
        assert!(within(backoff(u32::MAX, hour), 3600), "no overflow");
    }

    /// The agent driven through its signal channel, on paused time: a reload re-reads the
    /// settings once, a shutdown ends it cleanly, and its 1 h sleeps take no real time.
    #[tokio::test(start_paused = true)]
    async fn reload_and_shutdown_arrive_through_the_channel() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(&config, "concurrent = 1\n").unwrap();
        let settings_file = dir.path().join("settings.toml");
        std::fs::write(
            &settings_file,
            "[agent]\ninterval = \"1h\"\njitter = \"0s\"\n[service]\nmanager = \"none\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "runner-medic",
            "agent",
            "--runner-config",
            config.to_str().unwrap(),
            "--settings",
            settings_file.to_str().unwrap(),
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
        ])
        .unwrap();
        let env = Environment {
            user: "test".into(),
            ..Environment::default()
        };
        let settings = Settings::resolve(&cli.global, &env, &Overrides::default()).unwrap();
        let reloads = Arc::new(AtomicUsize::new(0));
        let counted = reloads.clone();
        let fresh = settings.clone();
        let (tx, rx) = mpsc::channel(8);
        tx.send(Signal::Reload).await.unwrap();
        tx.send(Signal::Shutdown).await.unwrap();
        let report = Box::pin(run(
            settings,
            move || {
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(fresh.clone())
            },
            rx,
        ))
        .await
        .unwrap();
        assert_eq!(report.command, crate::report::ReportCommand::Agent);
        assert_eq!(reloads.load(Ordering::SeqCst), 1);
    }
}
