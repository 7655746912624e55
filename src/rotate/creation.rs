//! Creations whose outcome is uncertain (a `POST /user/runners` that got no answer, a run killed
//! while one was under way) are settled by finding the runner they made: each creation carries a
//! tag in its `maintenance_note`, so a runner is never created twice for one rotation.

use chrono::Utc;

use super::journal::{Journal, JournalEntry, Step};
use crate::gitlab::{AdminApi, CreateRunner, TokenGrant};

/// Settle an earlier run's uncertain creations: use a runner that was made, so none is created
/// twice; otherwise let the next diagnosis plan it again.
pub(super) async fn settle_uncertain_creations(admin: &AdminApi, journal: &mut Journal) {
    if !journal.entries.iter().any(|e| e.step == Step::Requesting) {
        return;
    }
    for entry in journal
        .entries
        .iter_mut()
        .filter(|e| e.step == Step::Requesting)
    {
        resolve_uncertain(admin, entry).await;
    }
    journal.keep();
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

/// Assign a recreated project runner to the projects besides its first one, as the old runner
/// was (`POST /projects/:id/runners`). A failure is logged: the runner works for the projects it
/// has, and a person can assign the rest.
pub(super) async fn assign_more_projects(
    admin: &AdminApi,
    runner: u64,
    params: Option<&CreateRunner>,
) {
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
