//! Getting gitlab-runner to use the new tokens: let it reload config.toml and confirm, or stop it
//! once before the write and start it once after, whatever the supervisor; and what happened to
//! it, for the report.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use super::journal::{Journal, Step};
use crate::crash;
use crate::gitlab::AdminApi;
use crate::report::ServiceReport;
use crate::service::{self, ManagerKind, RestartPolicy, ServiceManager};
use crate::settings::Settings;

/// The service, stopped once and started once around the write, and what happened to it.
pub(super) struct Restart {
    manager: Arc<dyn ServiceManager>,
    /// Whether this rotation restarts the service at all (policy, manager).
    wanted: bool,
    /// `restart = reload`: let gitlab-runner re-read the file, confirm, restart only if needed.
    reload: bool,
    reload_timeout: std::time::Duration,
    timeout: std::time::Duration,
    stopped_at: Option<Instant>,
    pub(super) report: ServiceReport,
}

impl Restart {
    pub(super) fn choose(settings: &Settings, journal: &Journal) -> Self {
        let chosen = service::choose(&settings.service, std::path::Path::new("/"));
        let token_was_dead = journal
            .entries
            .iter()
            .any(|e| e.token_was_dead && e.step == Step::Obtained);
        let none = chosen.manager.kind() == ManagerKind::None;
        let reload = settings.service.restart == RestartPolicy::Reload;
        let wanted = !none
            && match settings.service.restart {
                RestartPolicy::Always => true,
                RestartPolicy::WhenNeeded => token_was_dead,
                RestartPolicy::Reload | RestartPolicy::Never => false,
            };
        let reason = if wanted {
            chosen.reason.clone()
        } else if reload {
            format!("{}; reload (no job interrupted)", chosen.reason)
        } else if none {
            format!("{}; no restart", chosen.reason)
        } else {
            "not restarted (restart policy); gitlab-runner re-reads config.toml within 3 s".into()
        };
        let report = ServiceReport {
            manager: chosen.manager.kind().as_str().to_string(),
            name: chosen.manager.name().to_string(),
            stopped: false,
            started: false,
            reason,
            error: None,
            stop_seconds: None,
            held_seconds: None,
            start_seconds: None,
            reloaded: None,
        };
        Self {
            manager: Arc::from(chosen.manager),
            wanted,
            reload,
            reload_timeout: settings.service.reload_timeout,
            timeout: settings.service.stop_timeout,
            stopped_at: None,
            report,
        }
    }

    /// Run a blocking supervisor call off the async workers, then wait for the state.
    pub(super) async fn call(&self, start: bool) -> Result<service::ServiceState, service::Error> {
        let m = self.manager.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            if start {
                m.start()?;
            } else {
                m.stop()?;
            }
            service::wait_for(m.as_ref(), start, timeout)
        })
        .await
        .unwrap_or_else(|e| {
            Err(service::Error::Spawn {
                argv: if start { "start" } else { "stop" }.into(),
                reason: e.to_string(),
            })
        })
    }

    pub(super) async fn stop(&mut self, journal: &mut Journal) {
        if !self.wanted || journal.service_stopped {
            return;
        }
        let asked = Instant::now();
        match self.call(false).await {
            Ok(_) => {
                self.report.stopped = true;
                self.report.stop_seconds = Some(asked.elapsed().as_secs_f64());
                self.stopped_at = Some(Instant::now());
                journal.service_stopped = true;
                journal.keep();
                tracing::info!(service = %self.manager.name(), manager = self.manager.kind().as_str(), "service stopped");
                crash::checkpoint("after-stop");
            }
            Err(e) => {
                // The tokens must still be written: gitlab-runner re-reads the file itself.
                tracing::error!(error = %e, "could not stop the service; writing config.toml anyway");
                self.report.error = Some(format!("stop failed: {e}"));
                // A stop can fail after gitlab-runner already drained and exited (a step after
                // the signal failed). Unless the service is known to run, it is started after the
                // write, as a stopped one is: a start of a running service changes nothing, a
                // service left down takes no job.
                let m = self.manager.clone();
                let state = tokio::task::spawn_blocking(move || m.status())
                    .await
                    .unwrap_or_else(|e| Ok(service::ServiceState::Unknown(e.to_string())));
                if !matches!(state, Ok(service::ServiceState::Running { .. })) {
                    tracing::warn!(service = %self.manager.name(), state = ?state, "the service may be down after the failed stop; it is started after the write");
                    self.stopped_at = Some(Instant::now());
                    journal.service_stopped = true;
                    journal.keep();
                }
            }
        }
    }

    /// Start the service again after the write. If it does not come up, the new tokens stay in
    /// config.toml: GitLab has already revoked the old ones, so restoring the backup would only
    /// bring back dead tokens. The failure is reported with its fix, and the journal remembers
    /// that the service is still to be started, so the next run starts it.
    pub(super) async fn start(&mut self, journal: &mut Journal) {
        if !journal.service_stopped {
            return;
        }
        if let Some(at) = self.stopped_at {
            self.report.held_seconds = Some(at.elapsed().as_secs_f64());
        }
        let asked = Instant::now();
        match self.call(true).await {
            Ok(_) => {
                self.report.started = true;
                self.report.start_seconds = Some(asked.elapsed().as_secs_f64());
                journal.service_stopped = false;
                tracing::info!(service = %self.manager.name(), "service started");
                crash::checkpoint("after-start");
            }
            Err(e) => {
                tracing::error!(error = %e, "the service did not start; the new tokens stay in config.toml");
                self.report.error = Some(format!(
                    "start failed: {e}; the new tokens stay in config.toml (the old ones are revoked); fix: start `{}` by hand once its cause is fixed; the next runner-medic run starts it too",
                    self.manager.name()
                ));
            }
        }
        journal.keep();
    }

    /// `restart = reload`, after config.toml was written at `written_at`: ask gitlab-runner to
    /// re-read it (a SIGHUP through the supervisor where it has a way; gitlab-runner also re-reads
    /// a changed file every 3 s, `commands/multi.go` `checkConfig`, reference §7.2), then confirm
    /// the new tokens are in use: GitLab records every contact of the runner (`contacted_at` of
    /// `GET /runners/:id`, reference §3.2), and after the write only the new token can make one
    /// (the old one is dead, and runner-medic's own verify of the new token comes after this).
    /// Restart only when that does not happen within the reload timeout; the stop waits for jobs.
    pub(super) async fn reload_and_confirm(
        &mut self,
        admin: Option<&AdminApi>,
        journal: &mut Journal,
        written_at: chrono::DateTime<Utc>,
    ) {
        if !self.reload {
            return;
        }
        if self.manager.kind() == ManagerKind::None {
            // Nothing to signal and nothing to restart: gitlab-runner, wherever it runs, re-reads
            // the changed file by itself; waiting to confirm could only end in a report.
            self.report.reason = format!(
                "{}; gitlab-runner re-reads the changed file by itself (not confirmed: no service manager to restart it)",
                self.report.reason
            );
            return;
        }
        let m = self.manager.clone();
        let signalled = tokio::task::spawn_blocking(move || m.reload())
            .await
            .unwrap_or(Ok(false));
        let how = match &signalled {
            Ok(true) => "SIGHUP sent through the supervisor".to_string(),
            Ok(false) => "gitlab-runner re-reads the changed file by itself".to_string(),
            Err(e) => {
                tracing::warn!(error = %e, "could not signal gitlab-runner; it re-reads the changed file by itself");
                format!("the reload signal failed ({e}); gitlab-runner re-reads the changed file by itself")
            }
        };
        let ids: Vec<u64> = journal
            .entries
            .iter()
            .filter(|e| e.step == Step::Written)
            .filter_map(|e| e.new_id.or(e.old_id))
            .collect();
        let Some(admin) = admin.filter(|_| !ids.is_empty()) else {
            self.report.reason = format!(
                "{}; {how}; not confirmed (confirming needs a privileged token and runner ids)",
                self.report.reason
            );
            return;
        };
        let deadline = Instant::now() + self.reload_timeout;
        let mut waiting = ids;
        loop {
            let mut still = Vec::new();
            for id in waiting {
                let seen = admin
                    .runner(id)
                    .await
                    .ok()
                    .and_then(|r| r.value.contacted_at)
                    .is_some_and(|at| at > written_at);
                if !seen {
                    still.push(id);
                }
            }
            waiting = still;
            if waiting.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        if waiting.is_empty() {
            tracing::info!("gitlab-runner uses the new tokens; no restart needed");
            self.report.reloaded = Some(true);
            self.report.reason = format!("{}; {how}; new tokens in use", self.report.reason);
            return;
        }
        let list = waiting
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        tracing::warn!(runners = %list, "gitlab-runner did not use the new tokens after the reload; restarting it");
        self.report.reloaded = Some(false);
        self.report.reason = format!(
            "{}; {how}; runner(s) {list} made no contact with the new token within {} s, so the service was restarted",
            self.report.reason,
            self.reload_timeout.as_secs()
        );
        self.wanted = true;
        self.stop(journal).await;
        self.start(journal).await;
    }

    /// After a failed write: start the service again with the file as it was.
    pub(super) async fn start_back(&mut self, journal: &mut Journal) {
        if journal.service_stopped {
            self.report.started = self.call(true).await.is_ok();
            journal.service_stopped = !self.report.started;
            journal.keep();
        }
    }
}
