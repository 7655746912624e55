//! Carrying out a plan for one config.toml, in the order that keeps every token safe:
//! obtain all new tokens → journal them → stop the service once → write config.toml once →
//! start the service once → verify → delete replaced runner records → report.
//! A run that finds an unfinished journal completes it first.

use std::sync::Arc;

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::Mutex;

use super::commit::commit;
use super::custody::{self, Reserve};
use super::hooks::{self, HookEnv};
use super::journal::{token_sha, Journal, JournalEntry, JournalError, Step};
use super::known::KnownRunners;
use super::plan::{plan, PlanItem, Scope};
use crate::crash;
use crate::diagnose::{
    admin_api, diagnose_by_deadline, parse_runner_url, read_system_id, tls_files, Clients,
    Diagnosis,
};
use crate::diagnose::{Finding, FindingCode};
use crate::fs;
use crate::gitlab::{AdminApi, CreateRunner, RunnerApi, TokenGrant};
use crate::report::{Action, Outcome, Report};
use crate::runner_config::Credentials;
use crate::secret::RunnerToken;
use crate::settings::Settings;

#[derive(Debug, Clone, Default)]
pub struct RotateOptions {
    pub dry_run: bool,
    pub scope: Scope,
    /// Wait for another run's lock instead of failing.
    pub wait: bool,
}

/// The rotation could not run at all (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CouldNotRun {
    pub message: String,
    pub fix: String,
}

impl From<JournalError> for CouldNotRun {
    fn from(e: JournalError) -> Self {
        Self {
            message: e.to_string(),
            fix: "check the state directory's permissions and free space".into(),
        }
    }
}

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

pub async fn rotate(settings: &Settings, opts: &RotateOptions) -> Result<Report, CouldNotRun> {
    // One lock per config.toml file, outside the state directory: no two runs rotate one file
    // at once, whatever `--state-dir` or path spelling (symlink, hard link) each uses.
    let _locks = if opts.dry_run {
        None
    } else {
        // The directories a token may be written to are checked before anything is asked of
        // GitLab (the backup directory is created only when a backup is written).
        for (what, dir) in [
            ("the journal directory", journal_dir(settings)),
            ("the backup directory", settings.backup_dir()),
        ] {
            fs::check_dir(&dir, what, fs::DirUse::Private).map_err(|u| CouldNotRun {
                message: u.message,
                fix: u.fix,
            })?;
        }
        {
            let what = "the state directory";
            fs::ensure_private_dir(&settings.state_dir, what).map_err(|e| match e {
                fs::DirError::Unsafe(u) => CouldNotRun {
                    message: u.message,
                    fix: u.fix,
                },
                fs::DirError::Io(e) => CouldNotRun {
                    message: format!("cannot use {what}: {e}"),
                    fix: "create it (mode 0700) or choose another with `--state-dir`".into(),
                },
            })?;
        }
        let lock_dir = settings.lock_dir();
        if opts.wait {
            tracing::info!(locks = %lock_dir.display(), "waiting for another runner-medic run to finish");
        }
        let locks =
            fs::lock_file(&settings.runner_config, &lock_dir, opts.wait).map_err(|e| match e {
                fs::LockError::Held { .. } => CouldNotRun {
                    message: format!(
                        "{e}; it is rotating `{}` now",
                        settings.runner_config.display()
                    ),
                    fix: "wait for it to finish, or run again with `--wait`".into(),
                },
                fs::LockError::Io(_) => CouldNotRun {
                    message: format!("cannot take the lock in `{}`: {e}", lock_dir.display()),
                    fix: format!(
                        "make `{}` a writable directory owned by this user",
                        lock_dir.display()
                    ),
                },
            })?;
        // Temp files a killed run left behind can hold tokens; with the lock held they are no
        // live run's.
        let real = fs_err::canonicalize(&settings.runner_config)
            .unwrap_or_else(|_| settings.runner_config.clone());
        let journal_dir = journal_dir(settings);
        for stale in custody::remove_stale_temps(&real, &[journal_dir, settings.backup_dir()]) {
            tracing::info!(path = %stale.display(), "removed a temp file a killed run left behind");
        }
        Some(locks)
    };
    let mut notes = Vec::new();
    // Work an earlier run left open (an uncertain creation, a record to delete) that recovery
    // could not settle yet; it is carried into this run's journal so it is never dropped.
    let mut carried: Vec<JournalEntry> = Vec::new();
    if !opts.dry_run {
        if let Some(journal) = Journal::load(&settings.journal_path())? {
            tracing::warn!(journal = %journal.path().display(), "an unfinished rotation was found; completing it first");
            let mut scratch = Report::new("rotate", String::new(), None);
            commit(settings, journal, &mut scratch).await?;
            notes.push("completed an unfinished rotation found in the journal".to_string());
        }
        if let Some(journal) = Journal::load(&settings.journal_path())? {
            carried = journal.entries;
        }
    }
    let diagnosis = match diagnose_by_deadline(settings, "rotate").await {
        Ok(diagnosis) => diagnosis,
        Err(report) => return Ok(report),
    };
    check_runner_names(&diagnosis, &opts.scope)?;
    let mut known = KnownRunners::load(settings);
    if !opts.dry_run {
        known.remember(settings, &diagnosis);
    }
    let plan = plan(&diagnosis, settings, &opts.scope, &known);
    let mut report = diagnosis.report.clone();
    report.command = "rotate";
    report.dry_run = opts.dry_run;
    for item in &plan.items {
        let r = &mut report.runners[item.index];
        r.action = Some(item.action);
        r.calls.clone_from(&item.calls);
        r.error.clone_from(&item.reason);
        r.outcome = match (item.skipped, item.action, opts.dry_run) {
            (true, _, _) => Some(Outcome::Skipped),
            (_, Action::Renew | Action::Reset | Action::Recreate, true) => Some(Outcome::Planned),
            (_, Action::Manual, _) => Some(Outcome::Skipped),
            _ => None,
        };
    }
    if opts.dry_run {
        report.diff = Some(dry_run_diff(&diagnosis, &plan.items));
        return Ok(report);
    }
    // One runner, one open rotation: a runner whose earlier rotation is still open (a token
    // not yet in config.toml, a creation not yet settled) is not planned again; asking GitLab
    // again would revoke the token waiting in the journal or create a second runner. Runners are
    // recognised by their token, not their position.
    // Each token's fingerprint once (not once per pair of entries).
    let shas: Vec<Option<String>> = diagnosis
        .facts
        .iter()
        .map(|f| f.entry.token.as_ref().map(token_sha))
        .collect();
    let sha_of = |index: usize| shas[index].clone();
    let open: Vec<&JournalEntry> = carried.iter().filter(|e| e.step.is_open()).collect();
    let waits_for_earlier = |index: usize| {
        let sha = sha_of(index);
        let name = &diagnosis.facts[index].entry.name;
        open.iter().any(|e| match (&sha, &e.old_token_sha256) {
            (Some(sha), Some(old)) => sha == old,
            (None, None) => e.name == *name,
            _ => false,
        })
    };
    let mut changes: Vec<PlanItem> = Vec::new();
    // Token fingerprint → the change that rotates it.
    let mut rotating: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for item in plan.changes().filter(|i| !i.skipped) {
        let r = &mut report.runners[item.index];
        if waits_for_earlier(item.index) {
            r.outcome = Some(Outcome::Skipped);
            r.error = Some(format!(
                "an earlier rotation of this runner is not finished (its new token or creation is kept in `{}`); it is completed first, and this run asks GitLab for nothing",
                settings.journal_path().display()
            ));
            continue;
        }
        // Entries that share one token are one credential: one rotation, written to all.
        if let Some(first) = shas[item.index]
            .as_ref()
            .and_then(|sha| rotating.get(sha))
            .map(|at| &changes[*at])
        {
            r.action = Some(first.action);
            r.calls.clear();
            r.error = Some(format!(
                "shares its token with `{}`: one rotation, the new token written to both",
                first.name
            ));
            continue;
        }
        if let Some(sha) = &shas[item.index] {
            rotating.insert(sha.clone(), changes.len());
        }
        changes.push(item.clone());
    }
    if changes.is_empty() {
        for note in notes {
            tracing::info!("{note}");
        }
        return Ok(report);
    }
    let names: Vec<String> = changes.iter().map(|c| c.name.clone()).collect();
    let actions: Vec<String> = changes
        .iter()
        .map(|c| format!("{}:{}", c.name, c.action.as_str()))
        .collect();
    let hook_env = HookEnv {
        vars: vec![
            ("RUNNER_MEDIC_RUNNERS".into(), names.join(" ")),
            ("RUNNER_MEDIC_ACTIONS".into(), actions.join(" ")),
            (
                "RUNNER_MEDIC_RUNNER_CONFIG".into(),
                settings.runner_config.display().to_string(),
            ),
        ],
    };
    if let Some(pre) = &settings.hooks.pre {
        if let Err(e) = hooks::run("pre", pre, &hook_env) {
            for c in &changes {
                let r = &mut report.runners[c.index];
                r.outcome = Some(Outcome::Failed);
                r.error = Some(format!("not rotated: {e}"));
            }
            return Ok(report);
        }
    }

    let config = diagnosis
        .config
        .as_ref()
        .expect("changes imply a loaded config");
    let run_id = format!("{:016x}", rand::random::<u64>());
    let entries = changes
        .iter()
        .map(|c| {
            let entry = &diagnosis.facts[c.index].entry;
            JournalEntry {
                index: c.index,
                name: c.name.clone(),
                action: c.action,
                old_id: c.old_id,
                old_token_sha256: entry.token.as_ref().map(token_sha),
                creation_tag: (c.action == Action::Recreate)
                    .then(|| format!("runner-medic:{run_id}:{}", c.index)),
                create: c.create.clone(),
                delete_old: c.delete_old,
                token_was_dead: c.token_was_dead,
                step: Step::Planned,
                new_token: None,
                new_id: None,
                new_expires_at: None,
                obtained_at: None,
                error: None,
                written_to: Vec::new(),
            }
        })
        .collect();
    let mut entries: Vec<JournalEntry> = entries;
    entries.extend(carried);
    // Before GitLab issues anything: prove the new tokens can be kept, and set aside the room
    // their journal needs.
    let journal_dir = journal_dir(settings);
    let persistable = fs::private_dir(&journal_dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            custody::preflight(&config.real_path, &journal_dir, entries.len()).map_err(|e| {
                format!("{e}; fix: {}", e.fix())
            })
        })
        .and_then(|()| {
            Reserve::take(&journal_dir, custody::journal_room(entries.len())).map_err(|e| {
                format!(
                    "the state directory `{}` has no room for the journal: {e}; fix: free space there or choose another `--state-dir`; no token was requested",
                    journal_dir.display()
                )
            })
        });
    let reserve = match persistable {
        Ok(reserve) => reserve,
        Err(why) => {
            tracing::error!(error = %why, "not rotating: a new token could not be kept");
            report.findings.push(Finding::error(
                FindingCode::ConfigUnwritable,
                format!("nothing was rotated: {why}"),
                "make config.toml, its directory and the state directory writable, with free space, and run again",
            ));
            for c in &changes {
                let r = &mut report.runners[c.index];
                r.outcome = Some(Outcome::Failed);
                r.error = Some(format!("not rotated: {why}"));
            }
            return Ok(report);
        }
    };
    let journal = Journal::new(&settings.journal_path(), &config.path, run_id, entries);
    journal.save()?;
    crash::checkpoint("after-journal-planned");

    let journal = obtain(settings, &diagnosis, journal, &reserve).await?;
    drop(reserve);
    let not_requested = journal
        .entries
        .iter()
        .filter(|e| {
            e.step == Step::Failed
                && e.error
                    .as_deref()
                    .is_some_and(|m| m.starts_with(NOT_REQUESTED_DEADLINE))
        })
        .count();
    if not_requested > 0 {
        report.findings.push(settings.run_timeout_finding(&format!(
            "before every new token was requested: {not_requested} runner(s) were left as they are; the tokens already obtained were written"
        )));
    }
    commit(settings, journal, &mut report).await?;

    if let Some(post) = &settings.hooks.post {
        if let Err(e) = hooks::run("post", post, &hook_env) {
            tracing::warn!(error = %e, "post hook failed");
        }
    }
    Ok(report)
}

fn journal_dir(settings: &Settings) -> std::path::PathBuf {
    settings
        .journal_path()
        .parent()
        .map_or_else(|| settings.state_dir.clone(), std::path::Path::to_path_buf)
}

/// `--runner` values must name runners of config.toml; a misspelt one gets a suggestion.
fn check_runner_names(diagnosis: &Diagnosis, scope: &Scope) -> Result<(), CouldNotRun> {
    if diagnosis.config.is_none() {
        return Ok(());
    }
    for wanted in &scope.runners {
        let found = diagnosis.facts.iter().any(|f| {
            f.entry.name == *wanted
                || f.entry
                    .id
                    .is_some_and(|id| wanted.parse::<u64>().ok() == Some(id))
        });
        if found {
            continue;
        }
        let best = diagnosis
            .facts
            .iter()
            .map(|f| {
                (
                    strsim::jaro_winkler(wanted, &f.entry.name),
                    f.entry.name.as_str(),
                )
            })
            .filter(|(score, _)| *score > 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        return Err(CouldNotRun {
            message: format!(
                "no runner `{wanted}` in `{}`{}",
                diagnosis.report.runner_config,
                best.map_or_else(String::new, |(_, name)| format!("; did you mean `{name}`?"))
            ),
            fix: "give a runner's `name` or `id` as it is in config.toml (`runner-medic diagnose` lists them)".into(),
        });
    }
    Ok(())
}

/// How the error of a runner left alone because the run's deadline passed begins.
const NOT_REQUESTED_DEADLINE: &str =
    "not rotated: the run's deadline passed before a new token was requested";

/// Obtain every new token, journalling each one before anything else happens.
async fn obtain(
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
    let shared = Arc::new(Mutex::new(journal));
    let count = shared.lock().await.entries.len();
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
        let shared = shared.clone();
        let admin = admin.clone();
        let clients = &clients;
        async move {
            let entry = {
                let j = shared.lock().await;
                j.entries[slot].clone()
            };
            if entry.step != Step::Planned {
                // Carried over from an earlier run; commit settles it.
                return Ok(());
            }
            // The run's deadline: no token request starts after it. Requests already under way
            // finish (bounded by the request timeout), and what they obtained is kept.
            if settings.deadline_passed() {
                let mut j = shared.lock().await;
                let e = &mut j.entries[slot];
                tracing::error!(runner = %e.name, "the run's deadline passed; not requesting a new token");
                e.step = Step::Failed;
                e.error = Some(format!(
                    "{NOT_REQUESTED_DEADLINE} ({} `run_timeout`); nothing was asked of GitLab for this runner",
                    humantime::format_duration(settings.run_timeout)
                ));
                j.keep();
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
                        {
                            let mut j = shared.lock().await;
                            j.entries[slot].step = Step::Requesting;
                            j.save()?;
                        }
                        let params = tagged(entry.create.clone().unwrap_or_else(|| CreateRunner {
                            runner_type: "instance_type".into(),
                            group_id: None,
                            project_id: None,
                            description: Some(entry.name.clone()),
                            tag_list: vec![],
                            run_untagged: true,
                            locked: false,
                            access_level: None,
                            maximum_timeout: None,
                            paused: false,
                            maintenance_note: None,
                        }), &entry);
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
            let mut j = shared.lock().await;
            let e = &mut j.entries[slot];
            match result {
                Ok(grant) => {
                    audit(&e.name, e.action, facts.entry.token.as_ref(), &grant.token, grant.id.or(e.old_id), &settings.user);
                    e.new_id = grant.id.or(e.old_id);
                    e.new_token = Some(grant.token);
                    e.new_expires_at = grant.token_expires_at;
                    e.obtained_at = Some(Utc::now());
                    e.step = Step::Obtained;
                }
                Err((err, uncertain)) => {
                    tracing::error!(runner = %e.name, action = e.action.as_str(), error = %err, "could not obtain a new token");
                    e.error = Some(err);
                    // An uncertain creation stays `Requesting`: the next run looks for it by tag.
                    if !uncertain {
                        e.step = Step::Failed;
                    }
                }
            }
            // The room set aside for the journal is given back just before the first write
            // that carries a token; that write must not fail for want of space.
            reserve.release();
            j.keep();
            drop(j);
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
    let journal = Arc::try_unwrap(shared).map_err(|_| CouldNotRun {
        message: "internal error: journal still shared".into(),
        fix: "report this as a bug".into(),
    })?;
    Ok(journal.into_inner())
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

/// Mark a creation so it can be found again after an uncertain outcome.
fn tagged(mut params: CreateRunner, entry: &JournalEntry) -> CreateRunner {
    let tag = entry.creation_tag.clone().unwrap_or_default();
    let replaces = entry
        .old_id
        .map_or_else(String::new, |id| format!(" to replace runner {id}"));
    params.maintenance_note = Some(format!("created by runner-medic{replaces} ({tag})"));
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
            Ok(reply) => return Ok(reply.value),
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
    let runner_type = entry.create.as_ref().map(|c| c.runner_type.clone());
    let list = admin
        .all_runners(runner_type.as_deref())
        .await
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
            return Ok(Some(TokenGrant {
                id: Some(candidate.id),
                ..grant.value
            }));
        }
    }
    Ok(None)
}

/// The unified diff config.toml would get, with every token masked.
fn dry_run_diff(diagnosis: &Diagnosis, items: &[PlanItem]) -> String {
    let Some(config) = &diagnosis.config else {
        return String::new();
    };
    let changes: Vec<(usize, Credentials)> = items
        .iter()
        .filter(|i| {
            !i.skipped && matches!(i.action, Action::Renew | Action::Reset | Action::Recreate)
        })
        .filter(|i| diagnosis.facts[i.index].entry.token.is_some())
        .map(|i| {
            (
                i.index,
                Credentials {
                    token: RunnerToken::new(crate::runner_config::NEW_TOKEN_PLACEHOLDER),
                    id: None,
                    obtained_at: Utc::now(),
                    expires_at: None,
                },
            )
        })
        .collect();
    if changes.is_empty() {
        return String::new();
    }
    match config.with_credentials(&changes) {
        Ok(text) => config.masked_diff(&text),
        Err(e) => format!("(no diff: {e})\n"),
    }
}
