//! Carrying out a plan for one config.toml, in the order that keeps every token safe: lock the
//! file → complete an unfinished journal → diagnose and plan → prove the tokens can be kept →
//! obtain and journal them (`obtain`) → write config.toml once, reload or restart, verify,
//! delete replaced records (`commit`) → report.

use chrono::Utc;

use super::commit::commit;
use super::custody::{self, Reserve};
use super::hooks::{self, HookEnv};
use super::journal::{token_sha, Journal, JournalEntry, JournalError, Step};
use super::obtain::{obtain, NOT_REQUESTED_DEADLINE};
use super::plan::{plan, PlanItem, Scope};
use crate::crash;
use crate::diagnose::{diagnose_by_deadline, read_system_id, Diagnosis};
use crate::diagnose::{Finding, FindingCode};
use crate::fs;
use crate::report::{Action, Outcome, Report, ReportCommand};
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

pub use crate::error::CouldNotRun;

impl From<JournalError> for CouldNotRun {
    fn from(e: JournalError) -> Self {
        CouldNotRun::new(
            "the rotation journal cannot be used",
            "check the state directory's permissions and free space",
        )
        .caused_by(e)
    }
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
            fs::check_dir(&dir, what, fs::DirUse::Private)
                .map_err(|u| CouldNotRun::new(u.message, u.fix))?;
        }
        {
            let what = "the state directory";
            fs::ensure_private_dir(&settings.state_dir, what).map_err(|e| match e {
                fs::DirError::Unsafe(u) => CouldNotRun::new(u.message, u.fix),
                fs::DirError::Io(e) => CouldNotRun::new(
                    format!("cannot use {what}: {e}"),
                    "create it (mode 0700) or choose another with `--state-dir`",
                ),
            })?;
        }
        let lock_dir = settings.lock_dir();
        // Try without blocking first: "waiting" is said only when another run holds the lock.
        let attempt = match fs::lock_file(&settings.runner_config, &lock_dir, false) {
            Err(fs::LockError::Held { path }) if opts.wait => {
                tracing::info!(lock = %path.display(), "waiting for another runner-medic run to finish");
                fs::lock_file(&settings.runner_config, &lock_dir, true)
            }
            other => other,
        };
        let locks = attempt.map_err(|e| match e {
            fs::LockError::Held { .. } => CouldNotRun {
                source: None,
                message: format!(
                    "{e}; it is rotating `{}` now",
                    settings.runner_config.display()
                ),
                fix: "wait for it to finish, or run again with `--wait`".into(),
            },
            fs::LockError::Io(_) => CouldNotRun {
                source: None,
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
    // What completing an earlier run did to the service (a start it still owed, say): reported
    // when this run has nothing of its own to do.
    let mut completed_service = None;
    // Work an earlier run left open (an uncertain creation, a record to delete) that recovery
    // could not settle yet; it is carried into this run's journal so it is never dropped.
    let mut carried: Vec<JournalEntry> = Vec::new();
    if !opts.dry_run {
        if let Some(mut journal) = Journal::load(&settings.journal_path())? {
            tracing::warn!(journal = %journal.path().display(), "an unfinished rotation was found; completing it first");
            // A token obtained under a fleet lock goes to the other hosts before it is written.
            if !journal.fleet.is_empty() {
                Box::pin(super::coordinate::recover(settings, &mut journal)).await;
            }
            let mut scratch = Report::new(ReportCommand::Rotate, String::new(), None);
            commit(settings, journal, &mut scratch).await?;
            completed_service = scratch
                .service
                .filter(|s| s.started || s.stopped || s.error.is_some());
            notes.push("completed an unfinished rotation found in the journal".to_string());
        }
        if let Some(journal) = Journal::load(&settings.journal_path())? {
            carried = journal.entries;
        }
    }
    let mut diagnosis =
        match diagnose_by_deadline(settings, ReportCommand::Rotate, opts.scope.force).await {
            Ok(diagnosis) => diagnosis,
            Err(report) => return Ok(report),
        };
    check_runner_names(&diagnosis, &opts.scope)?;
    if !opts.dry_run {
        diagnosis.known.save(settings);
    }
    let plan = plan(&diagnosis, settings, &opts.scope, &diagnosis.known);
    let mut report = diagnosis.report.clone();
    report.command = ReportCommand::Rotate;
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
    // Tokens other hosts share go through the fleet store: adopted, or obtained under its lock.
    let system_id = diagnosis.config.as_ref().and_then(read_system_id);
    // Boxed: the store's client makes this future large.
    let mut coordination = Box::pin(super::coordinate::coordinate(
        settings,
        &diagnosis,
        &mut changes,
        &mut report,
        system_id.as_deref(),
    ))
    .await;
    // Whatever happens next (an error included), every lock taken in the fleet store is let go
    // before this run ends: another host goes on at once instead of after `lock_ttl`.
    let carried_out = Box::pin(carry_out(
        settings,
        &diagnosis,
        changes,
        carried,
        notes,
        &mut report,
        &mut coordination,
        system_id.as_deref(),
    ))
    .await;
    if let Some(c) = coordination {
        Box::pin(c.release()).await;
    }
    if report.service.is_none() {
        report.service = completed_service;
    }
    if let Some(hook_env) = carried_out? {
        if let Some(post) = &settings.hooks.post {
            if let Err(e) = hooks::run("post", post, &hook_env) {
                tracing::warn!(error = %e, "post hook failed");
            }
        }
    }
    Ok(report)
}

/// Write, obtain, publish and commit the `changes`; `Some` when the post hook is due. Locks in
/// `coordination` stay held: the caller lets go of them whatever this returns.
#[allow(clippy::too_many_arguments)]
async fn carry_out(
    settings: &Settings,
    diagnosis: &Diagnosis,
    changes: Vec<PlanItem>,
    carried: Vec<JournalEntry>,
    notes: Vec<String>,
    report: &mut Report,
    coordination: &mut Option<Box<super::coordinate::Coordination>>,
    system_id: Option<&str>,
) -> Result<Option<HookEnv>, CouldNotRun> {
    if changes.is_empty() {
        for note in notes {
            tracing::info!("{note}");
        }
        return Ok(None);
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
            return Ok(None);
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
            // A token another host obtained and published: already in hand, only to be written.
            let adopted = coordination.as_ref().and_then(|co| {
                co.adopted
                    .iter()
                    .find(|(i, _)| *i == c.index)
                    .map(|(_, p)| p.clone())
            });
            if let Some(p) = adopted {
                return JournalEntry {
                    index: c.index,
                    name: c.name.clone(),
                    action: Action::Adopt,
                    old_id: c.old_id,
                    old_token_sha256: entry.token.as_ref().map(token_sha),
                    creation_tag: None,
                    create: None,
                    delete_old: false,
                    token_was_dead: c.token_was_dead,
                    step: Step::Obtained,
                    new_id: Some(p.runner_id).or(c.old_id),
                    new_token: Some(p.token),
                    new_expires_at: p.token_expires_at,
                    obtained_at: Some(Utc::now()),
                    error: None,
                    written_to: Vec::new(),
                };
            }
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
            return Ok(None);
        }
    };
    let mut journal = Journal::new(&settings.journal_path(), &config.path, run_id, entries);
    if let Some(c) = coordination.as_ref() {
        journal.fleet = c.claims();
    }
    journal.save()?;
    crash::checkpoint("after-journal-planned");

    let journal = obtain(settings, diagnosis, journal, &reserve).await?;
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
    if let Some(c) = coordination.as_mut() {
        Box::pin(c.publish(&journal, report, system_id)).await;
    }
    commit(settings, journal, report).await?;
    Ok(Some(hook_env))
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
 source: None,
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
