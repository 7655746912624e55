//! The second half of a rotation: put the journalled tokens into config.toml with one stop and
//! one start of the service, verify them, delete the runner records they replace, and finish the
//! journal. A normal run and the recovery of an interrupted one both end here, so an interrupted
//! rotation is completed by exactly the code that would have completed it.

use chrono::Utc;
use futures::StreamExt;

use super::creation::settle_uncertain_creations;
use super::custody::{self, Target};
use super::hooks::{self, HookEnv};
use super::journal::{token_sha, Journal, JournalEntry, Step};
use super::restart::Restart;
use crate::crash;
use crate::diagnose::{admin_api, read_system_id, Clients};
use crate::diagnose::{Finding, FindingCode};
use crate::error::CouldNotRun;
use crate::fs;
use crate::gitlab::AdminApi;
use crate::report::{Outcome, Report, RunnerReport};
use crate::runner_config::{ConfigFile, Credentials, SaveOptions};
use crate::secret::RunnerToken;
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
        settle_uncertain_creations(admin, &mut journal).await;
    }
    let config = load_for_write(&journal)?;
    let pending = !plan_writes(&config, &mut journal, report).is_empty();
    let mut service = Restart::choose(settings, &journal);
    let mut written_at = Utc::now();

    if pending || journal.service_stopped {
        if pending {
            service.stop(&mut journal).await;
            written_at = Utc::now();
            // Written from a fresh read after the stop: whatever changed meanwhile, each token
            // goes to the entry that holds the token it replaces.
            if let Err(e) = write(settings, &mut journal, report) {
                // The journal keeps the tokens; bring the service back and report.
                tracing::error!(error = %e, "could not write config.toml; the new tokens stay in the journal");
                service.start_back(&mut journal).await;
                for entry in journal
                    .entries
                    .iter()
                    .filter(|e| e.step.holds_unwritten_token())
                {
                    if let Some(r) = report_runner(report, entry) {
                        r.outcome = Some(Outcome::Failed);
                        r.error = Some(format!(
                            "{e}; fix: {}; the new token is kept in `{}` and the next run that can write puts it in place without asking GitLab again",
                            e.fix(),
                            journal.path().display()
                        ));
                    }
                }
                report.findings.push(Finding::error(
                    FindingCode::ConfigUnwritable,
                    format!("new tokens could not be written to `{}`: {e}", journal.config_path.display()),
                    format!("{}; then run `runner-medic rotate` again: it writes the kept tokens and asks GitLab for nothing", e.fix()),
                ));
                journal_findings(report, &journal);
                report.service = Some(service.report);
                return Ok(());
            }
        }
        service.start(&mut journal).await;
        if pending {
            service
                .reload_and_confirm(admin.as_ref(), &mut journal, written_at)
                .await;
        }
    }

    let config = load_for_write(&journal)?;
    verify_written(settings, &config, &mut journal).await;
    confirm_in_file(settings, &mut journal, report);
    if let (true, Some(admin)) = (settings.delete_replaced, &admin) {
        delete_replaced(settings, admin, &mut journal).await;
    }
    fill_report(report, &journal);
    run_deploy_hooks(settings, &journal);
    if !pending
        && !service.report.stopped
        && !service.report.started
        && service.report.error.is_none()
    {
        service.report.reason = format!("{}; nothing was written", service.report.reason);
    }
    report.service = Some(service.report);
    journal_findings(report, &journal);
    let path = journal.path().to_path_buf();
    if let Err(e) = finish_or_keep(settings, journal) {
        // The work is done and config.toml holds it; only the record of it could not be put
        // away. The next run finds it and completes it again, which changes nothing.
        tracing::error!(error = %e.message, "could not finish the journal");
        report.findings.push(Finding::error(
            FindingCode::JournalUnwritable,
            format!("the finished journal could not be removed: {}", e.message),
            format!(
                "make the state directory writable; the next run finds `{}` and completes it again, asking GitLab for nothing",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn load_for_write(journal: &Journal) -> Result<ConfigFile, CouldNotRun> {
    ConfigFile::load(&journal.config_path).map_err(|e| CouldNotRun {
        source: None,
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
    })
}

/// The report's runner a journal entry is about: by name, preferring the position it was
/// written to (config.toml may have changed since the report was made).
fn report_runner<'a>(report: &'a mut Report, e: &JournalEntry) -> Option<&'a mut RunnerReport> {
    let at = e
        .written_to
        .iter()
        .copied()
        .chain(std::iter::once(e.index))
        .find(|i| report.runners.get(*i).is_some_and(|r| r.name == e.name))
        .or_else(|| report.runners.iter().position(|r| r.name == e.name))?;
    report.runners.get_mut(at)
}

/// Top-level findings about custody: tokens kept for entries that are gone, a journal that
/// could not be written.
fn journal_findings(report: &mut Report, journal: &Journal) {
    for e in journal.entries.iter().filter(|e| e.step == Step::Gone) {
        report.findings.push(Finding::warning(
            FindingCode::ConfigChanged,
            format!(
                "runner `{}`: config.toml no longer has an entry with the token that was replaced (another program removed or changed it); its new token was not written anywhere else",
                e.name
            ),
            format!(
                "the new token is kept in `{}`; if the entry comes back with its old token, the next run writes it; if it was unregistered on purpose, delete runner {} in GitLab",
                journal.path().display(),
                e.new_id.or(e.old_id).map_or_else(|| "?".into(), |id| id.to_string())
            ),
        ));
    }
    if let Some(error) = &journal.save_error {
        report.findings.push(Finding::error(
            FindingCode::JournalUnwritable,
            format!("the journal could not be written: {error}"),
            "free space in the state directory or make it writable; config.toml holds every new token that is reported done",
        ));
    }
}

/// The credentials to write into `config` as it is now: every obtained token goes into the
/// entries that still hold the token it replaces, wherever they are (custody: identity, not
/// position). An entry that already holds its new token was written before; one whose old token
/// is gone gets nothing and its token stays in the journal. A move is reported as
/// `config_changed`.
fn plan_writes(
    config: &ConfigFile,
    journal: &mut Journal,
    report: &mut Report,
) -> Vec<(usize, Credentials)> {
    let current = custody::Holders::of(&config.runners());
    let mut writes = Vec::new();
    for e in journal
        .entries
        .iter_mut()
        .filter(|e| e.step.holds_unwritten_token())
    {
        let Some(token) = e.new_token.clone() else {
            continue;
        };
        match current.locate(e.old_token_sha256.as_deref(), &token_sha(&token), &e.name) {
            Target::Write(holders) => {
                if holders != [e.index] {
                    report.findings.push(Finding::warning(
                        FindingCode::ConfigChanged,
                        format!(
                            "config.toml changed while runner-medic worked: the entry of runner `{}` is now at position {} (was {}); the new token goes where the old one is now",
                            e.name,
                            holders.iter().map(|i| (i + 1).to_string()).collect::<Vec<_>>().join(", "),
                            e.index + 1
                        ),
                        "nothing to do; check what else rewrites config.toml if this repeats",
                    ));
                }
                e.step = Step::Obtained;
                for &index in &holders {
                    writes.push((
                        index,
                        Credentials {
                            token: token.clone(),
                            id: e.new_id,
                            obtained_at: e.obtained_at.unwrap_or_else(Utc::now),
                            expires_at: e.new_expires_at,
                        },
                    ));
                }
                e.written_to = holders;
            }
            Target::Written(at) => {
                e.step = Step::Written;
                e.written_to = at;
            }
            Target::Gone => {
                if e.step != Step::Gone {
                    tracing::warn!(runner = %e.name, "no entry of config.toml holds the replaced token any more; the new token stays in the journal");
                }
                e.step = Step::Gone;
            }
        }
    }
    writes
}

/// How often a write is tried again when another program changed config.toml in between.
const WRITE_ATTEMPTS: usize = 3;

/// Write config.toml once (backup first) from a fresh read, and journal that it is written. If
/// another program rewrote the file between the read and the rename, read it again and re-plan.
fn write(
    settings: &Settings,
    journal: &mut Journal,
    report: &mut Report,
) -> Result<(), crate::runner_config::Error> {
    let opts = SaveOptions {
        backup_dir: &settings.backup_dir(),
        keep_backups: settings.keep_backups,
    };
    let mut attempt = 0;
    let saved = loop {
        attempt += 1;
        let config = ConfigFile::load(&journal.config_path)?;
        let writes = plan_writes(&config, journal, report);
        if writes.is_empty() {
            return Ok(());
        }
        let text = config.with_credentials(&writes)?;
        match config.save(&text, &opts) {
            Ok(saved) => break (saved, writes.len(), config.path),
            Err(crate::runner_config::Error::Write(fs::WriteError::ChangedOnDisk { .. }))
                if attempt < WRITE_ATTEMPTS =>
            {
                tracing::warn!("config.toml changed while rotating; reading it again");
            }
            Err(e) => return Err(e),
        }
    };
    let (saved, count, path) = saved;
    journal.backup = Some(saved.backup.clone());
    report.backup = Some(saved.backup.display().to_string());
    for e in journal
        .entries
        .iter_mut()
        .filter(|e| e.step == Step::Obtained && !e.written_to.is_empty())
    {
        e.step = Step::Written;
    }
    journal.keep();
    tracing::info!(config = %path.display(), entries = count, "config.toml rewritten");
    crash::checkpoint("after-journal-written");
    Ok(())
}

/// How often a token another program put back is written again before it is reported.
const REVERT_REWRITES: usize = 2;

/// Before the journal lets go of the new tokens, read config.toml once more: if another writer
/// put an old token back (a template run, a restore), write the new one again; if it keeps
/// coming back, report `config_reverted` and keep the journal, so the next run finishes the job.
fn confirm_in_file(settings: &Settings, journal: &mut Journal, report: &mut Report) {
    for round in 0..=REVERT_REWRITES {
        let config = match ConfigFile::load(&journal.config_path) {
            Ok(config) => config,
            Err(e) => {
                // Cannot tell whether the tokens are still there: keep the journal.
                report.findings.push(Finding::warning(
                    FindingCode::ConfigChanged,
                    format!("config.toml could not be read again to confirm the new tokens: {e}"),
                    format!(
                        "the new tokens are kept in `{}`; the next run checks again",
                        journal.path().display()
                    ),
                ));
                journal.unconfirmed = true;
                journal.keep();
                return;
            }
        };
        let current = custody::Holders::of(&config.runners());
        let mut reverted = Vec::new();
        let mut prior = Vec::new();
        for (slot, e) in
            journal.entries.iter_mut().enumerate().filter(|(_, e)| {
                matches!(e.step, Step::Written | Step::Verified | Step::OldDeleted)
            })
        {
            let Some(token) = &e.new_token else { continue };
            let new_sha = token_sha(token);
            if let Target::Write(_) =
                current.locate(e.old_token_sha256.as_deref(), &new_sha, &e.name)
            {
                prior.push((slot, e.step));
                e.step = Step::Obtained;
                reverted.push(e.name.clone());
            }
        }
        if reverted.is_empty() {
            return;
        }
        tracing::warn!(runners = %reverted.join(", "), "another program put old tokens back into config.toml");
        if round == REVERT_REWRITES {
            report.findings.push(Finding::error(
                FindingCode::ConfigReverted,
                format!(
                    "another program keeps putting old tokens back into `{}` (runners {}) after runner-medic wrote the new ones",
                    journal.config_path.display(),
                    reverted.join(", ")
                ),
                format!(
                    "stop the other writer (a template, a restore) or give it the new tokens; they are kept in `{}` and the next run writes them again",
                    journal.path().display()
                ),
            ));
            journal.keep();
            return;
        }
        if let Err(e) = write(settings, journal, report) {
            tracing::error!(error = %e, "could not write the new tokens again");
            journal.keep();
            return;
        }
        // Written again: the same tokens, already verified (or their old records deleted).
        for (slot, step) in prior {
            if journal.entries[slot].step == Step::Written {
                journal.entries[slot].step = step;
            }
        }
    }
}

/// Verify every written token against GitLab, as many at once as the settings allow.
async fn verify_written(settings: &Settings, config: &ConfigFile, journal: &mut Journal) {
    let current = config.runners();
    let clients = Clients::new(settings, read_system_id(config));
    let checks: Vec<(usize, Option<Result<(), String>>)> = futures::stream::iter(
        journal
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.step == Step::Written)
            .map(|(slot, e)| {
                let at = e.written_to.first().copied().unwrap_or(e.index);
                let entry = current.get(at).cloned();
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
    journal.keep();
}

/// Delete the records the new runners replace, only once the new ones work. A record that
/// cannot be deleted now stays in the journal for the next run.
async fn delete_replaced(settings: &Settings, admin: &AdminApi, journal: &mut Journal) {
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
    journal.keep();
    crash::checkpoint("after-delete-replaced");
}

fn done(e: &JournalEntry) -> bool {
    matches!(e.step, Step::Verified | Step::OldDeleted)
}

fn fill_report(report: &mut Report, journal: &Journal) {
    let fill = |r: &mut RunnerReport, e: &JournalEntry| {
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
            if e.step == Step::Gone {
                r.error = Some(format!(
                    "config.toml no longer has this entry with the replaced token; the new token is kept in `{}`",
                    journal.path().display()
                ));
            }
        }
    };
    for e in &journal.entries {
        if let Some(r) = report_runner(report, e) {
            fill(r, e);
        }
        // Entries that shared the old token got the same new one.
        for &i in e.written_to.iter().skip(1) {
            if let Some(r) = report.runners.get_mut(i) {
                fill(r, e);
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
fn finish_or_keep(settings: &Settings, mut journal: Journal) -> Result<(), CouldNotRun> {
    let pending = journal.service_stopped
        || journal.unconfirmed
        || journal.entries.iter().any(|e| {
            e.step == Step::Requesting
                || e.step.holds_unwritten_token()
                || (e.step == Step::Verified
                    && e.delete_old
                    && settings.delete_replaced
                    && e.old_id.is_some()
                    && e.old_id != e.new_id)
        });
    if pending {
        journal.keep();
        tracing::warn!(journal = %journal.path().display(), "work left for the next run (a token to write, a service to start, an uncertain creation or a runner record to delete)");
        Ok(())
    } else {
        Ok(journal.finish()?)
    }
}
