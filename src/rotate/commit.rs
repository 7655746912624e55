//! The second half of a rotation: put the journalled tokens into config.toml with one stop and
//! one start of the service, verify them, delete the runner records they replace, and finish the
//! journal. A normal run and the recovery of an interrupted one both end here, so an interrupted
//! rotation is completed by exactly the code that would have completed it.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures::StreamExt;

use super::execute::{find_by_tag, CouldNotRun};
use super::hooks::{self, HookEnv};
use super::journal::{token_sha, Journal, JournalEntry, Step};
use crate::crash;
use crate::diagnose::{admin_api, read_system_id, Clients};
use crate::fs;
use crate::gitlab::AdminApi;
use crate::report::{Outcome, Report, ServiceReport};
use crate::runner_config::{ConfigFile, Credentials, SaveOptions};
use crate::secret::RunnerToken;
use crate::service::{self, ManagerKind, RestartPolicy, ServiceManager};
use crate::settings::Settings;

pub(super) async fn commit(
    settings: &Settings,
    mut journal: Journal,
    report: &mut Report,
) -> Result<(), CouldNotRun> {
    // The entries as they are on disk now, for the privileged client's TLS settings.
    let on_disk = ConfigFile::load(&journal.config_path)
        .map(|c| c.runners())
        .unwrap_or_default();
    let admin = settings
        .admin
        .as_ref()
        .and_then(|cred| admin_api(settings, cred, &on_disk).ok());
    if let Some(admin) = &admin {
        settle_uncertain_creations(admin, &mut journal).await?;
    }
    let config = ConfigFile::load(&journal.config_path).map_err(|e| CouldNotRun {
        // The journal stays: its tokens are the only copies.
        message: format!(
            "cannot read `{}` to write the new tokens: {e}",
            journal.config_path.display()
        ),
        fix: format!(
            "{}; the new tokens are kept in `{}`",
            e.fix(),
            journal.path().display()
        ),
    })?;
    let writes = pending_writes(&config, &mut journal);
    let mut service = Restart::choose(settings, &journal);

    if !writes.is_empty() || journal.service_stopped {
        if !writes.is_empty() {
            service.stop(&mut journal).await?;
            if let Err(e) = write(settings, &config, &writes, &mut journal, report) {
                // The journal keeps the tokens; bring the service back and report.
                tracing::error!(error = %e, "could not write config.toml; the new tokens stay in the journal");
                service.start_back(&mut journal).await?;
                for entry in &journal.entries {
                    if let Some(r) = report.runners.get_mut(entry.index) {
                        r.outcome = Some(Outcome::Failed);
                        r.error = Some(format!("{e}; fix: {}", e.fix()));
                    }
                }
                report.service = Some(service.report);
                return Ok(());
            }
        }
        service.start(&mut journal, &config).await?;
    }

    verify_written(settings, &config, &mut journal).await?;
    if let (true, Some(admin)) = (settings.delete_replaced, &admin) {
        delete_replaced(settings, admin, &mut journal).await?;
    }
    fill_report(report, &journal);
    run_deploy_hooks(settings, &journal);
    if writes.is_empty()
        && !service.report.stopped
        && !service.report.started
        && service.report.error.is_none()
    {
        service.report.reason = format!("{}; nothing was written", service.report.reason);
    }
    report.service = Some(service.report);
    finish_or_keep(settings, journal)
}

/// Settle an earlier run's uncertain creations: use a runner that was made, so none is created
/// twice; otherwise let the next diagnosis plan it again.
async fn settle_uncertain_creations(
    admin: &AdminApi,
    journal: &mut Journal,
) -> Result<(), CouldNotRun> {
    if !journal.entries.iter().any(|e| e.step == Step::Requesting) {
        return Ok(());
    }
    for entry in journal
        .entries
        .iter_mut()
        .filter(|e| e.step == Step::Requesting)
    {
        resolve_uncertain(admin, entry).await;
    }
    Ok(journal.save()?)
}

async fn resolve_uncertain(admin: &AdminApi, entry: &mut JournalEntry) {
    match find_by_tag(admin, entry).await {
        Ok(Some(grant)) => {
            entry.new_id = grant.id;
            entry.new_token = Some(grant.token);
            entry.new_expires_at = grant.token_expires_at;
            entry.obtained_at = Some(Utc::now());
            entry.step = Step::Obtained;
        }
        Ok(None) => {
            entry.step = Step::Failed;
            entry.error = Some(match entry.error.take() {
                Some(first) => format!(
                    "{first}; GitLab has no runner with this creation's tag, so it was not created"
                ),
                None => "the interrupted creation did not happen".into(),
            });
        }
        // Still unknown: keep it for the next run.
        Err(e) => entry.error = Some(e),
    }
}

/// The credentials to write: every obtained token whose entry still holds the old token. An
/// entry that already holds the new token was written before a crash; one that holds neither
/// was changed by someone else and is left alone.
fn pending_writes(config: &ConfigFile, journal: &mut Journal) -> Vec<(usize, Credentials)> {
    let current = config.runners();
    let mut writes = Vec::new();
    for e in journal
        .entries
        .iter_mut()
        .filter(|e| e.step == Step::Obtained)
    {
        let Some(token) = e.new_token.clone() else {
            continue;
        };
        let now_sha = current
            .get(e.index)
            .and_then(|c| c.token.as_ref())
            .map(token_sha);
        if now_sha.is_some() && now_sha == Some(token_sha(&token)) {
            e.step = Step::Written;
        } else if current.get(e.index).is_some_and(|c| c.name == e.name)
            && now_sha == e.old_token_sha256
        {
            writes.push((
                e.index,
                Credentials {
                    token,
                    id: e.new_id,
                    obtained_at: e.obtained_at.unwrap_or_else(Utc::now),
                    expires_at: e.new_expires_at,
                },
            ));
        } else {
            e.step = Step::Failed;
            e.error = Some(
                "config.toml changed under the rotation; the entry is no longer where it was"
                    .into(),
            );
        }
    }
    writes
}

/// Write config.toml once (backup first), and journal that it is written.
fn write(
    settings: &Settings,
    config: &ConfigFile,
    writes: &[(usize, Credentials)],
    journal: &mut Journal,
    report: &mut Report,
) -> Result<(), crate::runner_config::Error> {
    let backup = save_with_retry(settings, config, writes)?;
    journal.backup = Some(backup.clone());
    report.backup = Some(backup.display().to_string());
    for e in journal
        .entries
        .iter_mut()
        .filter(|e| e.step == Step::Obtained)
    {
        if writes.iter().any(|(i, _)| *i == e.index) {
            e.step = Step::Written;
        }
    }
    journal
        .save()
        .map_err(|e| crate::runner_config::Error::Backup {
            path: journal.path().to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    tracing::info!(config = %config.path.display(), runners = writes.len(), "config.toml rewritten");
    crash::checkpoint("after-journal-written");
    Ok(())
}

/// Save once; if gitlab-runner rewrote the file meanwhile, re-read it and try once more.
fn save_with_retry(
    settings: &Settings,
    config: &ConfigFile,
    writes: &[(usize, Credentials)],
) -> Result<std::path::PathBuf, crate::runner_config::Error> {
    let opts = SaveOptions {
        backup_dir: &settings.backup_dir(),
        keep_backups: settings.keep_backups,
    };
    let text = config.with_credentials(writes)?;
    match config.save(&text, &opts) {
        Ok(saved) => Ok(saved.backup),
        Err(crate::runner_config::Error::Write(fs::WriteError::ChangedOnDisk { .. })) => {
            tracing::warn!("config.toml changed while rotating; re-reading it once");
            let fresh = ConfigFile::load(&config.path)?;
            let text = fresh.with_credentials(writes)?;
            fresh.save(&text, &opts).map(|s| s.backup)
        }
        Err(e) => Err(e),
    }
}

/// The service, stopped once and started once around the write, and what happened to it.
struct Restart {
    manager: Arc<dyn ServiceManager>,
    /// Whether this rotation restarts the service at all (policy, manager).
    wanted: bool,
    timeout: std::time::Duration,
    stopped_at: Option<Instant>,
    report: ServiceReport,
}

impl Restart {
    fn choose(settings: &Settings, journal: &Journal) -> Self {
        let chosen = service::choose(&settings.service, std::path::Path::new("/"));
        let token_was_dead = journal
            .entries
            .iter()
            .any(|e| e.token_was_dead && e.step == Step::Obtained);
        let none = chosen.manager.kind() == ManagerKind::None;
        let wanted = !none
            && match settings.service.restart {
                RestartPolicy::Always => true,
                RestartPolicy::WhenNeeded => token_was_dead,
                RestartPolicy::Never => false,
            };
        let reason = if wanted {
            chosen.reason.clone()
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
        };
        Self {
            manager: Arc::from(chosen.manager),
            wanted,
            timeout: settings.service.stop_timeout,
            stopped_at: None,
            report,
        }
    }

    /// Run a blocking supervisor call off the async workers, then wait for the state.
    async fn call(&self, start: bool) -> Result<service::ServiceState, service::Error> {
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

    async fn stop(&mut self, journal: &mut Journal) -> Result<(), CouldNotRun> {
        if !self.wanted || journal.service_stopped {
            return Ok(());
        }
        let asked = Instant::now();
        match self.call(false).await {
            Ok(_) => {
                self.report.stopped = true;
                self.report.stop_seconds = Some(asked.elapsed().as_secs_f64());
                self.stopped_at = Some(Instant::now());
                journal.service_stopped = true;
                journal.save()?;
                tracing::info!(service = %self.manager.name(), manager = self.manager.kind().as_str(), "service stopped");
                crash::checkpoint("after-stop");
            }
            Err(e) => {
                // The tokens must still be written: gitlab-runner re-reads the file itself.
                tracing::error!(error = %e, "could not stop the service; writing config.toml anyway");
                self.report.error = Some(format!("stop failed: {e}"));
            }
        }
        Ok(())
    }

    /// Start the service again after the write; if it does not come up with the new file,
    /// restore the backup and start it with the old one.
    async fn start(
        &mut self,
        journal: &mut Journal,
        config: &ConfigFile,
    ) -> Result<(), CouldNotRun> {
        if !journal.service_stopped {
            return Ok(());
        }
        if let Some(at) = self.stopped_at {
            self.report.held_seconds = Some(at.elapsed().as_secs_f64());
        }
        let asked = Instant::now();
        match self.call(true).await {
            Ok(_) => {
                self.report.started = true;
                self.report.start_seconds = Some(asked.elapsed().as_secs_f64());
                tracing::info!(service = %self.manager.name(), "service started");
                crash::checkpoint("after-start");
            }
            Err(e) => {
                tracing::error!(error = %e, "the service did not start with the new config.toml; restoring the backup");
                self.report.error = Some(format!(
                    "start failed with the new config.toml: {e}; the backup was restored"
                ));
                if let Some(backup) = &journal.backup {
                    if let Ok(bytes) = fs_err::read(backup) {
                        let _ = fs::atomic_replace(&config.real_path, &bytes, None);
                    }
                }
                self.report.started = self.call(true).await.is_ok();
                for e in journal
                    .entries
                    .iter_mut()
                    .filter(|e| e.step == Step::Written)
                {
                    e.step = Step::Failed;
                    e.error = Some("the service did not start with the new token; the old config.toml was restored".into());
                }
            }
        }
        journal.service_stopped = false;
        Ok(journal.save()?)
    }

    /// After a failed write: start the service again with the file as it was.
    async fn start_back(&mut self, journal: &mut Journal) -> Result<(), CouldNotRun> {
        if journal.service_stopped {
            self.report.started = self.call(true).await.is_ok();
            journal.service_stopped = false;
            journal.save()?;
        }
        Ok(())
    }
}

/// Verify every written token against GitLab, as many at once as the settings allow.
async fn verify_written(
    settings: &Settings,
    config: &ConfigFile,
    journal: &mut Journal,
) -> Result<(), CouldNotRun> {
    let current = config.runners();
    let clients = Clients::new(settings, read_system_id(config));
    let checks: Vec<(usize, Option<Result<(), String>>)> = futures::stream::iter(
        journal
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.step == Step::Written)
            .map(|(slot, e)| {
                let entry = current.get(e.index).cloned();
                let token = e.new_token.clone();
                let clients = &clients;
                async move {
                    let (Some(entry), Some(token)) = (entry, token) else {
                        return (slot, None);
                    };
                    let result = match clients.for_entry(&entry) {
                        Some(Ok(api)) => api
                            .verify(&token)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        Some(Err(err)) => Err(err.to_string()),
                        None => return (slot, None),
                    };
                    (slot, Some(result))
                }
            }),
    )
    .buffer_unordered(settings.concurrency)
    .collect()
    .await;
    for (slot, result) in checks {
        let e = &mut journal.entries[slot];
        match result {
            Some(Ok(())) => e.step = Step::Verified,
            Some(Err(err)) => {
                e.error = Some(format!("the new token did not verify: {err}"));
                e.step = Step::Failed;
            }
            None => {}
        }
    }
    crash::checkpoint("after-verify");
    Ok(journal.save()?)
}

/// Delete the records the new runners replace, only once the new ones work. A record that
/// cannot be deleted now stays in the journal for the next run.
async fn delete_replaced(
    settings: &Settings,
    admin: &AdminApi,
    journal: &mut Journal,
) -> Result<(), CouldNotRun> {
    let deletions: Vec<(usize, bool)> = futures::stream::iter(
        journal
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.step == Step::Verified && e.delete_old)
            .filter_map(|(slot, e)| e.old_id.filter(|old| Some(*old) != e.new_id).map(|old| (slot, old, e.name.clone())))
            .map(|(slot, old, name)| async move {
                match admin.delete_runner(old).await {
                    Ok(()) => (slot, true),
                    Err(err) if err.status() == Some(404) => (slot, true),
                    Err(err) => {
                        tracing::warn!(runner = %name, old_id = old, error = %err, "could not delete the replaced runner; the next run tries again");
                        (slot, false)
                    }
                }
            }),
    )
    .buffer_unordered(settings.concurrency)
    .collect()
    .await;
    for (slot, deleted) in deletions {
        if deleted {
            journal.entries[slot].step = Step::OldDeleted;
        }
    }
    journal.save()?;
    crash::checkpoint("after-delete-replaced");
    Ok(())
}

fn done(e: &JournalEntry) -> bool {
    matches!(e.step, Step::Verified | Step::OldDeleted)
}

fn fill_report(report: &mut Report, journal: &Journal) {
    for e in &journal.entries {
        if let Some(r) = report.runners.get_mut(e.index) {
            r.outcome = Some(if done(e) {
                Outcome::Done
            } else {
                Outcome::Failed
            });
            r.new_token = e.new_token.as_ref().map(RunnerToken::masked);
            r.new_id = e.new_id.filter(|id| Some(*id) != e.old_id);
            if done(e) {
                r.token_expires_at = e.new_expires_at;
            } else {
                r.error.clone_from(&e.error);
            }
        }
    }
}

fn run_deploy_hooks(settings: &Settings, journal: &Journal) {
    let Some(deploy) = &settings.hooks.deploy else {
        return;
    };
    for e in journal.entries.iter().filter(|e| done(e)) {
        let env = HookEnv {
            vars: vec![
                ("RUNNER_MEDIC_RUNNER".into(), e.name.clone()),
                ("RUNNER_MEDIC_ACTION".into(), e.action.as_str().into()),
                (
                    "RUNNER_MEDIC_RUNNER_ID".into(),
                    e.new_id.map(|i| i.to_string()).unwrap_or_default(),
                ),
                (
                    "RUNNER_MEDIC_RUNNER_CONFIG".into(),
                    journal.config_path.display().to_string(),
                ),
            ],
        };
        if let Err(err) = hooks::run("deploy", deploy, &env) {
            tracing::warn!(error = %err, "deploy hook failed");
        }
    }
}

/// An uncertain creation or a replaced record still to delete keeps the journal, so the next
/// run settles it; otherwise the rotation is complete and the journal goes.
fn finish_or_keep(settings: &Settings, journal: Journal) -> Result<(), CouldNotRun> {
    let pending = journal.entries.iter().any(|e| {
        e.step == Step::Requesting
            || (e.step == Step::Verified
                && e.delete_old
                && settings.delete_replaced
                && e.old_id.is_some()
                && e.old_id != e.new_id)
    });
    if pending {
        journal.save()?;
        tracing::warn!(journal = %journal.path().display(), "work left for the next run (an uncertain creation or a runner record to delete)");
        Ok(())
    } else {
        Ok(journal.finish()?)
    }
}
