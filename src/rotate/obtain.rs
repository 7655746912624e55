//! Obtaining new tokens, one runner at a time and as many at once as the settings allow, each
//! journalled before anything else happens: renew with the runner's own token, reset with the
//! privileged one, or create a replacement runner at most once (a creation carries a tag so an
//! uncertain outcome can be settled by finding it). Every answer is checked before it is kept.

use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;

use super::creation::{assign_more_projects, find_by_tag};
use super::custody::{self, Reserve};
use super::journal::{Journal, JournalEntry, Shared, Step};
use crate::crash;
use crate::diagnose::{admin_api, parse_runner_url, read_system_id, tls_files, Clients, Diagnosis};
use crate::error::CouldNotRun;
use crate::gitlab::{AdminApi, CreateRunner, RunnerApi, TokenGrant};
use crate::report::Action;
use crate::secret::RunnerToken;
use crate::settings::Settings;

/// One audit event per change: what runner, which action, old and new masked token, who ran it.
fn audit(
    runner: &str,
    action: Action,
    old: Option<&RunnerToken>,
    new: &RunnerToken,
    new_id: Option<u64>,
    user: &str,
) {
    tracing::info!(
        target: "runner_medic::audit",
        runner,
        action = action.as_str(),
        old_token = %old.map_or_else(|| "-".to_string(), |t| t.masked().to_string()),
        new_token = %new.masked(),
        new_id = new_id.unwrap_or_default(),
        user,
        "token rotated"
    );
}

/// Why no new token was obtained for a runner.
#[derive(Debug)]
enum ObtainError {
    /// Nothing changed at GitLab, or what changed is known: the runner's rotation failed.
    Failed(String),
    /// A creation that may have happened although no answer came back: it stays `Requesting`
    /// in the journal and is settled by its tag (see `creation`) before anything is retried.
    Uncertain(String),
}

impl ObtainError {
    fn failed(e: impl std::fmt::Display) -> Self {
        Self::Failed(e.to_string())
    }

    fn message(&self) -> &str {
        match self {
            Self::Failed(m) | Self::Uncertain(m) => m,
        }
    }

    fn into_message(self) -> String {
        match self {
            Self::Failed(m) | Self::Uncertain(m) => m,
        }
    }
}

/// How the error of a runner left alone because the run's deadline passed begins.
pub(super) const NOT_REQUESTED_DEADLINE: &str =
    "not rotated: the run's deadline passed before a new token was requested";

/// Obtain every new token, journalling each one before anything else happens.
pub(super) async fn obtain(
    settings: &Settings,
    diagnosis: &Diagnosis,
    journal: Journal,
    reserve: &Reserve,
) -> Result<Journal, CouldNotRun> {
    let entries: Vec<_> = diagnosis.facts.iter().map(|f| f.entry.clone()).collect();
    let admin = settings
        .admin
        .as_ref()
        .and_then(|cred| admin_api(settings, cred, &entries).ok())
        .map(Arc::new);
    let config = diagnosis
        .config
        .as_ref()
        .expect("changes imply a loaded config");
    let clients = Clients::new(settings, read_system_id(config));
    // Saved by group commit: tokens that arrive while a save is under way are saved together by
    // the next one, and each task goes on only once its token is on disk.
    let shared = Shared::new(journal);
    let count = shared.read(|j| j.entries.len()).await;
    // A progress bar on a terminal when several runners are handled; nothing otherwise.
    let bar = (settings.progress && count > 1).then(|| {
        let bar = indicatif::ProgressBar::new(count as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} obtaining new tokens {pos}/{len} [{bar:30}] {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let bar = &bar;
    let results: Vec<Result<(), CouldNotRun>> = futures::stream::iter((0..count).map(|slot| {
        let shared = &shared;
        let admin = admin.clone();
        let clients = &clients;
        async move {
            let entry = shared.read(|j| j.entries[slot].clone()).await;
            if entry.step != Step::Planned {
                // Carried over from an earlier run; commit settles it.
                return Ok(());
            }
            // The run's deadline: no token request starts after it. Requests already under way
            // finish (bounded by the request timeout), and what they obtained is kept.
            if settings.deadline_passed() {
                let ((), change) = shared.change(|j| {
                    let e = &mut j.entries[slot];
                    tracing::error!(runner = %e.name, "the run's deadline passed; not requesting a new token");
                    e.step = Step::Failed;
                    e.error = Some(format!(
                        "{NOT_REQUESTED_DEADLINE} ({} `run_timeout`); nothing was asked of GitLab for this runner",
                        humantime::format_duration(settings.run_timeout)
                    ));
                }).await;
                shared.keep(change).await;
                return Ok(());
            }
            let facts = &diagnosis.facts[entry.index];
            let result: Result<TokenGrant, ObtainError> = match entry.action {
                Action::Renew => {
                    let url = facts.entry.url.as_deref().and_then(|u| parse_runner_url(u).ok());
                    match (url, &facts.entry.token) {
                        (Some(url), Some(token)) => match clients.for_url(&url, tls_files(&facts.entry)) {
                            Ok(api) => renew_once(&api, token, admin.as_deref().filter(|_| facts.admin_usable), entry.old_id, &settings.retry).await,
                            Err(e) => Err(ObtainError::failed(e)),
                        },
                        _ => Err(ObtainError::failed("the entry has no usable url or token")),
                    }
                }
                Action::Reset => match (&admin, entry.old_id) {
                    (Some(admin), Some(id)) => admin.reset_token(id).await.map(|r| r.value).map_err(ObtainError::failed),
                    _ => Err(ObtainError::failed("no privileged access or no runner id")),
                },
                Action::Recreate => match &admin {
                    Some(admin) => {
                        // On disk before the request: an uncertain outcome is then looked for by tag.
                        let ((), change) = shared.change(|j| j.entries[slot].step = Step::Requesting).await;
                        match shared.durable(change).await {
                            Ok(()) => {
                                let params = tagged(entry.create.clone().unwrap_or_else(|| CreateRunner::instance(Some(entry.name.clone()))), &entry);
                                create_once(admin, &params, &entry, &settings.retry).await
                            }
                            // Not asked: a creation whose outcome could not be settled later must
                            // not start. The task ends normally, so the journal, with the tokens
                            // other tasks obtained, goes on to be written to config.toml.
                            Err(e) => {
                                tracing::error!(runner = %entry.name, error = %e, "the journal could not be written; not creating a runner");
                                Err(ObtainError::Failed(format!("not recreated: the journal could not be written ({e}); nothing was asked of GitLab")))
                            }
                        }
                    }
                    None => Err(ObtainError::failed("no privileged access")),
                },
                _ => Err(ObtainError::failed("nothing to obtain")),
            };
            crash::checkpoint("after-token-obtained");
            // GitLab's answer is checked before it goes anywhere: garbage is never written over
            // a token, and is treated as an answer that may or may not have changed anything.
            let result = match result {
                Ok(grant) => checked(grant, facts, admin.as_deref(), entry.old_id, clients).await,
                Err(e) => Err(e),
            };
            let (obtained, change) = shared.change(|j| {
                let e = &mut j.entries[slot];
                match result {
                    Ok(grant) => {
                        e.new_id = grant.id.or(e.old_id);
                        e.new_token = Some(grant.token);
                        e.new_expires_at = grant.token_expires_at;
                        e.obtained_at = Some(Utc::now());
                        e.step = Step::Obtained;
                        e.new_token.clone().map(|t| (e.name.clone(), e.action, t, e.new_id))
                    }
                    Err(err) => {
                        tracing::error!(runner = %e.name, action = e.action.as_str(), error = %err.message(), "could not obtain a new token");
                        // An uncertain creation stays `Requesting`: the next run looks for it by tag.
                        if let ObtainError::Failed(_) = err {
                            e.step = Step::Failed;
                        }
                        e.error = Some(err.into_message());
                        None
                    }
                }
            }).await;
            // The room set aside for the journal is given back just before the first write
            // that carries a token; that write must not fail for want of space.
            reserve.release();
            shared.keep(change).await;
            // On disk (or the failure to write it reported): only now is the token announced.
            if let Some((name, action, token, new_id)) = obtained {
                audit(&name, action, facts.entry.token.as_ref(), &token, new_id, &settings.user);
            }
            if let Some(bar) = bar {
                bar.inc(1);
            }
            crash::checkpoint("after-journal-obtained");
            Ok(())
        }
    }))
    .buffer_unordered(settings.concurrency)
    .collect()
    .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    for r in results {
        r?;
    }
    Ok(shared.settle().await)
}

/// GitLab's answer, if it is a token; otherwise what can be known about the runner now. A bad
/// answer is an uncertain outcome: if the old token still works, it stays in config.toml and the
/// runner keeps working. If it is dead (the change happened, or the runner was recreated), a
/// privileged reset of the runner gives a real token; without one, a person must act.
async fn checked(
    grant: TokenGrant,
    facts: &crate::diagnose::RunnerFacts,
    admin: Option<&AdminApi>,
    old_id: Option<u64>,
    clients: &Clients,
) -> Result<TokenGrant, ObtainError> {
    let old = facts.entry.token.as_ref();
    let Err(why) = custody::validate_token(&grant.token, old) else {
        return Ok(grant);
    };
    tracing::error!(runner = %facts.entry.name, error = %why, "GitLab's answer is not a usable token");
    let old_works = match (
        old,
        facts
            .entry
            .url
            .as_deref()
            .and_then(|u| parse_runner_url(u).ok()),
    ) {
        (Some(token), Some(url)) if grant.id.is_none() || grant.id == old_id => {
            match clients.for_url(&url, tls_files(&facts.entry)) {
                Ok(api) => api.verify(token).await.is_ok(),
                Err(_) => false,
            }
        }
        _ => false,
    };
    if old_works {
        return Err(ObtainError::Failed(format!(
            "{why}; the old token still works and stays in config.toml"
        )));
    }
    let (Some(admin), Some(id)) = (admin.filter(|_| facts.admin_usable), grant.id.or(old_id))
    else {
        return Err(ObtainError::Failed(
            format!("{why}; the old token no longer works: rotate with a privileged token (`--admin-token-file`) to recover"),
        ));
    };
    match admin.reset_token(id).await {
        Ok(reply) => {
            let again = TokenGrant {
                id: Some(id),
                ..reply.value
            };
            match custody::validate_token(&again.token, old) {
                Ok(()) => {
                    tracing::warn!(runner = %facts.entry.name, id, "recovered from a bad answer with a privileged reset");
                    Ok(again)
                }
                Err(twice) => Err(ObtainError::Failed(
                    format!("{why}; a privileged reset of runner {id} answered no usable token either ({twice}); nothing was written"),
                )),
            }
        }
        Err(e) => Err(ObtainError::Failed(format!(
            "{why}; a privileged reset of runner {id} to recover failed: {e}; nothing was written"
        ))),
    }
}

/// GitLab's limit on `maintenance_note` (reference §3.1).
const NOTE_MAX_CHARS: usize = 1024;

/// Mark a creation so it can be found again after an uncertain outcome. The old runner's own
/// note is kept, with runner-medic's line after it (an earlier runner-medic line is replaced, so
/// notes do not grow with every recreation); if both do not fit in GitLab's 1024 characters, the
/// old note is cut (the tag must stay whole to be found).
fn tagged(mut params: CreateRunner, entry: &JournalEntry) -> CreateRunner {
    const OURS: &str = "created by runner-medic";
    let tag = entry.creation_tag.clone().unwrap_or_default();
    let replaces = entry
        .old_id
        .map_or_else(String::new, |id| format!(" to replace runner {id}"));
    let ours = format!("{OURS}{replaces} ({tag})");
    let old: Option<String> = params.maintenance_note.as_deref().map(|n| {
        n.lines()
            .filter(|l| !l.starts_with(OURS))
            .collect::<Vec<_>>()
            .join("\n")
            .trim_end()
            .to_string()
    });
    let note = match old.as_deref() {
        Some(old) if !old.is_empty() => {
            let room = NOTE_MAX_CHARS.saturating_sub(ours.chars().count() + 2);
            let old: String = old.chars().take(room).collect();
            format!("{old}\n\n{ours}")
        }
        _ => ours,
    };
    params.maintenance_note = Some(note);
    params
}

/// Renew with the runner's own token. A self-reset is not idempotent (the old token dies the
/// moment it commits), so after a failure that leaves the outcome open, the old token is checked
/// with `verify` first: still valid means nothing happened and the renew is tried again; refused
/// means GitLab did reset it and the answer was lost, so the token is recovered by a privileged
/// reset when one is possible.
async fn renew_once(
    api: &RunnerApi,
    token: &RunnerToken,
    admin: Option<&AdminApi>,
    id: Option<u64>,
    retry: &crate::gitlab::RetryPolicy,
) -> Result<TokenGrant, ObtainError> {
    let mut attempt = 0;
    loop {
        let e = match api.reset_own_token(token).await {
            Ok(reply) => return Ok(reply.value),
            Err(e) => e,
        };
        let open = e.is_transport() || e.status().is_some_and(|s| s == 429 || s >= 500);
        if !open {
            return Err(ObtainError::failed(e));
        }
        match api.verify(token).await {
            Ok(_) if attempt + 1 < retry.max_attempts => {
                let delay = retry.backoff(attempt);
                tracing::warn!(error = %e, "renewal failed and did not happen; trying again");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Ok(_) => return Err(ObtainError::failed(e)),
            Err(v) if v.status() == Some(403) => {
                return match (admin, id) {
                    (Some(admin), Some(id)) => {
                        tracing::warn!(id, "the renewal happened but its answer was lost; recovering with a privileged reset");
                        admin.reset_token(id).await.map(|r| r.value).map_err(ObtainError::failed)
                    }
                    _ => Err(ObtainError::Failed(
                        format!("{e}; GitLab reset the token but the answer was lost: a privileged token is needed to recover (`runner-medic rotate` with `--admin-token-file`)"),
                    )),
                };
            }
            Err(v) => {
                return Err(ObtainError::Failed(format!(
                    "{e}; and the old token could not be checked: {v}"
                )))
            }
        }
    }
}

/// Create a runner at most once. A creation is not idempotent, so after a failure that leaves
/// the outcome open (5xx, 429, no answer) it looks for the runner by its tag before trying again.
async fn create_once(
    admin: &AdminApi,
    params: &CreateRunner,
    entry: &JournalEntry,
    retry: &crate::gitlab::RetryPolicy,
) -> Result<TokenGrant, ObtainError> {
    let mut attempt = 0;
    loop {
        match admin.create_runner(params).await {
            Ok(reply) => {
                if let Some(id) = reply.value.id {
                    assign_more_projects(admin, id, Some(params)).await;
                }
                return Ok(reply.value);
            }
            Err(e) => {
                let open = e.is_transport() || e.status().is_some_and(|s| s == 429 || s >= 500);
                if !open {
                    return Err(ObtainError::failed(e));
                }
                match find_by_tag(admin, entry).await {
                    Ok(Some(grant)) => return Ok(grant),
                    Ok(None) if attempt + 1 < retry.max_attempts => {
                        let delay = retry.backoff(attempt);
                        tracing::warn!(runner = %entry.name, error = %e, "creation failed and did not happen; trying again");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    // Looked and it is not there: a certain failure, unless the last try got no answer.
                    Ok(None) if e.is_transport() => {
                        return Err(ObtainError::Uncertain(e.to_string()))
                    }
                    Ok(None) => return Err(ObtainError::failed(e)),
                    Err(lookup) => {
                        return Err(ObtainError::Uncertain(format!(
                            "{e}; and the runner list could not be read to check: {lookup}"
                        )))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> JournalEntry {
        JournalEntry {
            index: 0,
            name: "r".into(),
            action: Action::Recreate,
            old_id: Some(7),
            old_token_sha256: None,
            creation_tag: Some("runner-medic:abc:0".into()),
            create: None,
            delete_old: false,
            token_was_dead: true,
            step: Step::Planned,
            new_token: None,
            new_id: None,
            new_expires_at: None,
            obtained_at: None,
            error: None,
            written_to: Vec::new(),
        }
    }

    fn params(note: Option<&str>) -> CreateRunner {
        CreateRunner {
            runner_type: "project_type".into(),
            project_id: Some(1),
            maintenance_note: note.map(str::to_string),
            ..CreateRunner::instance(None)
        }
    }

    #[test]
    fn the_old_note_is_kept_and_ours_replaced_and_the_tag_always_fits() {
        let ours = "created by runner-medic to replace runner 7 (runner-medic:abc:0)";
        assert_eq!(
            tagged(params(None), &entry()).maintenance_note.unwrap(),
            ours
        );
        assert_eq!(
            tagged(params(Some("  ")), &entry())
                .maintenance_note
                .unwrap(),
            ours
        );
        let kept = tagged(
            params(Some(
                "call #ci\ncreated by runner-medic (runner-medic:old:3)\n",
            )),
            &entry(),
        )
        .maintenance_note
        .unwrap();
        assert_eq!(kept, format!("call #ci\n\n{ours}"));
        let long = "x".repeat(2000);
        let cut = tagged(params(Some(&long)), &entry())
            .maintenance_note
            .unwrap();
        assert_eq!(cut.chars().count(), NOTE_MAX_CHARS);
        assert!(cut.ends_with(ours));
    }
}
