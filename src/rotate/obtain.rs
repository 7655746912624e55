//! Obtaining new tokens, one runner at a time and as many at once as the settings allow, each
//! journalled before anything else happens: renew with the runner's own token, reset with the
//! privileged one, or create a replacement runner at most once (a creation carries a tag so an
//! uncertain outcome can be settled by finding it). Every answer is checked before it is kept.

use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;

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
            // Err carries the message and whether the outcome is uncertain (a creation that may
            // have happened although no answer came back).
            let result: Result<TokenGrant, (String, bool)> = match entry.action {
                Action::Renew => {
                    let url = facts.entry.url.as_deref().and_then(|u| parse_runner_url(u).ok());
                    match (url, &facts.entry.token) {
                        (Some(url), Some(token)) => match clients.for_url(&url, tls_files(&facts.entry)) {
                            Ok(api) => renew_once(&api, token, admin.as_deref().filter(|_| facts.admin_usable), entry.old_id, &settings.retry).await,
                            Err(e) => Err((e.to_string(), false)),
                        },
                        _ => Err(("the entry has no usable url or token".into(), false)),
                    }
                }
                Action::Reset => match (&admin, entry.old_id) {
                    (Some(admin), Some(id)) => admin.reset_token(id).await.map(|r| r.value).map_err(|e| (e.to_string(), false)),
                    _ => Err(("no privileged access or no runner id".into(), false)),
                },
                Action::Recreate => match &admin {
                    Some(admin) => {
                        // On disk before the request: an uncertain outcome is then looked for by tag.
                        let ((), change) = shared.change(|j| j.entries[slot].step = Step::Requesting).await;
                        shared.durable(change).await?;
                        let params = tagged(entry.create.clone().unwrap_or_else(|| CreateRunner::instance(Some(entry.name.clone()))), &entry);
                        create_once(admin, &params, &entry, &settings.retry).await
                    }
                    None => Err(("no privileged access".into(), false)),
                },
                _ => Err(("nothing to obtain".into(), false)),
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
                    Err((err, uncertain)) => {
                        tracing::error!(runner = %e.name, action = e.action.as_str(), error = %err, "could not obtain a new token");
                        e.error = Some(err);
                        // An uncertain creation stays `Requesting`: the next run looks for it by tag.
                        if !uncertain {
                            e.step = Step::Failed;
                        }
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
    Ok(shared.into_inner())
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
) -> Result<TokenGrant, (String, bool)> {
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
        return Err((
            format!("{why}; the old token still works and stays in config.toml"),
            false,
        ));
    }
    let (Some(admin), Some(id)) = (admin.filter(|_| facts.admin_usable), grant.id.or(old_id))
    else {
        return Err((
            format!("{why}; the old token no longer works: rotate with a privileged token (`--admin-token-file`) to recover"),
            false,
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
                Err(twice) => Err((
                    format!("{why}; a privileged reset of runner {id} answered no usable token either ({twice}); nothing was written"),
                    false,
                )),
            }
        }
        Err(e) => Err((
            format!("{why}; a privileged reset of runner {id} to recover failed: {e}; nothing was written"),
            false,
        )),
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

/// Assign a recreated project runner to the projects besides its first one, as the old runner
/// was (`POST /projects/:id/runners`). A failure is logged: the runner works for the projects it
/// has, and a person can assign the rest.
async fn assign_more_projects(admin: &AdminApi, runner: u64, params: Option<&CreateRunner>) {
    let Some(params) = params else { return };
    for &project in &params.more_project_ids {
        match admin.assign_to_project(project, runner).await {
            Ok(()) => tracing::info!(
                runner,
                project,
                "assigned the recreated runner to a project"
            ),
            // Already assigned (a second settling of the same creation).
            Err(e) if e.status() == Some(400) && e.to_string().contains("taken") => {}
            Err(e) => tracing::warn!(
                runner,
                project,
                error = %e,
                fix = %format!("assign it by hand: `POST /api/v4/projects/{project}/runners` with `runner_id={runner}` (needs the `api` scope), or in the project's CI/CD settings"),
                "could not assign the recreated runner to one of its projects"
            ),
        }
    }
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
) -> Result<TokenGrant, (String, bool)> {
    let mut attempt = 0;
    loop {
        let e = match api.reset_own_token(token).await {
            Ok(reply) => return Ok(reply.value),
            Err(e) => e,
        };
        let open = e.is_transport() || e.status().is_some_and(|s| s == 429 || s >= 500);
        if !open {
            return Err((e.to_string(), false));
        }
        match api.verify(token).await {
            Ok(_) if attempt + 1 < retry.max_attempts => {
                let delay = retry
                    .base_delay
                    .saturating_mul(2u32.saturating_pow(attempt))
                    .min(retry.max_delay);
                tracing::warn!(error = %e, "renewal failed and did not happen; trying again");
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
            Ok(_) => return Err((e.to_string(), false)),
            Err(v) if v.status() == Some(403) => {
                return match (admin, id) {
                    (Some(admin), Some(id)) => {
                        tracing::warn!(id, "the renewal happened but its answer was lost; recovering with a privileged reset");
                        admin.reset_token(id).await.map(|r| r.value).map_err(|e| (e.to_string(), false))
                    }
                    _ => Err((
                        format!("{e}; GitLab reset the token but the answer was lost: a privileged token is needed to recover (`runner-medic rotate` with `--admin-token-file`)"),
                        false,
                    )),
                };
            }
            Err(v) => {
                return Err((
                    format!("{e}; and the old token could not be checked: {v}"),
                    false,
                ))
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
) -> Result<TokenGrant, (String, bool)> {
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
                    return Err((e.to_string(), false));
                }
                match find_by_tag(admin, entry).await {
                    Ok(Some(grant)) => return Ok(grant),
                    Ok(None) if attempt + 1 < retry.max_attempts => {
                        let delay = retry
                            .base_delay
                            .saturating_mul(2u32.saturating_pow(attempt))
                            .min(retry.max_delay);
                        tracing::warn!(runner = %entry.name, error = %e, "creation failed and did not happen; trying again");
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    // Looked and it is not there: a certain failure, unless the last try got no answer.
                    Ok(None) => return Err((e.to_string(), e.is_transport())),
                    Err(lookup) => {
                        return Err((
                            format!(
                                "{e}; and the runner list could not be read to check: {lookup}"
                            ),
                            true,
                        ))
                    }
                }
            }
        }
    }
}

/// The runner created with this entry's tag, given a fresh token, if it exists.
pub(super) async fn find_by_tag(
    admin: &AdminApi,
    entry: &JournalEntry,
) -> Result<Option<TokenGrant>, String> {
    let Some(tag) = entry.creation_tag.clone() else {
        return Ok(None);
    };
    let create = entry.create.as_ref();
    let runner_type = create.map(|c| c.runner_type.as_str());
    // `GET /runners/all` is for administrators only; a group's Owner or a project's Maintainer
    // reads the group's or the project's list (GitLab `lib/api/ci/runners.rb`).
    let list = match (
        runner_type,
        create.and_then(|c| c.group_id),
        create.and_then(|c| c.project_id),
    ) {
        (Some("group_type"), Some(group), _) => admin.group_runners(group, runner_type).await,
        (Some("project_type"), _, Some(project)) => {
            admin.project_runners(project, runner_type).await
        }
        _ => admin.all_runners(runner_type).await,
    }
    .map_err(|e| e.to_string())?;
    let wanted = entry.create.as_ref().and_then(|c| c.description.clone());
    for candidate in list
        .iter()
        .rev()
        .filter(|r| wanted.is_none() || r.description == wanted)
    {
        let details = admin
            .runner(candidate.id)
            .await
            .map_err(|e| e.to_string())?;
        if details
            .value
            .maintenance_note
            .as_deref()
            .is_some_and(|n| n.contains(&tag))
        {
            tracing::info!(runner = %entry.name, id = candidate.id, "found the runner an interrupted creation made; using it");
            let grant = admin
                .reset_token(candidate.id)
                .await
                .map_err(|e| e.to_string())?;
            assign_more_projects(admin, candidate.id, create).await;
            return Ok(Some(TokenGrant {
                id: Some(candidate.id),
                ..grant.value
            }));
        }
    }
    Ok(None)
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
