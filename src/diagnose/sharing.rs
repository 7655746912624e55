//! Shared tokens: GitLab lets several hosts use one runner's token, each a "runner manager" with
//! its own `system_id` (reference §3.7, §6.3). A reset or renewal cuts the old token off for all
//! of them at once (§2.2, §3.6), so before runner-medic changes a token it asks GitLab which other
//! hosts use it. It asks only when a change is being considered: one request per such runner.

use chrono::{DateTime, Utc};

use crate::gitlab::{self, AdminApi, RunnerManagerInfo};
use crate::report::human_span;
use crate::report::{Finding, FindingCode, Severity};
use crate::runner_config::RunnerEntry;
use crate::settings::Settings;

/// The `system_xid` GitLab gives a manager whose requests carry no `system_id`
/// (`LEGACY_SYSTEM_XID`, gitlab-org/gitlab `lib/api/ci/helpers/runner.rb`).
pub const LEGACY_SYSTEM_ID: &str = "<legacy>";

/// What GitLab's managers list says about one runner's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sharing {
    /// Managers using the token within the window, this host included.
    pub managers: usize,
    /// The other hosts' system ids, most recent contact first.
    pub others: Vec<String>,
}

impl Sharing {
    pub fn shared(&self) -> bool {
        !self.others.is_empty()
    }
}

/// The managers other than this host (`own`) that contacted GitLab within `window` before
/// `anchor`. A host without `.runner_system_id` sends none, so its own rows are `<legacy>` ones
/// and are not counted as another host.
pub fn count(
    list: &[RunnerManagerInfo],
    own: Option<&str>,
    anchor: DateTime<Utc>,
    window: chrono::Duration,
) -> Sharing {
    let mut others: Vec<(DateTime<Utc>, String)> = list
        .iter()
        .filter_map(|m| {
            let id = m.system_id.as_deref()?;
            let at = m.contacted_at?;
            let mine = match own {
                Some(own) => id == own,
                None => id == LEGACY_SYSTEM_ID,
            };
            (!mine && at >= anchor - window).then(|| (at, id.to_string()))
        })
        .collect();
    others.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    others.dedup_by(|a, b| a.1 == b.1);
    Sharing {
        managers: others.len() + 1,
        others: others.into_iter().map(|(_, id)| id).collect(),
    }
}

/// Read a runner's managers. `None` when GitLab cannot tell: an instance older than the endpoint
/// (404), no access, or a failure; sharing is then unknown.
pub async fn read(admin: &AdminApi, id: u64) -> Option<Vec<RunnerManagerInfo>> {
    match admin.runner_managers(id).await {
        Ok(reply) => Some(reply.value),
        Err(e) if e.status() == Some(404) => {
            tracing::debug!(
                id,
                "GitLab has no runner managers endpoint (older than ~17.1); sharing unknown"
            );
            None
        }
        Err(e) => {
            log_failure(id, &e);
            None
        }
    }
}

fn log_failure(id: u64, e: &gitlab::Error) {
    tracing::warn!(id, error = %e, "could not read the runner's managers; whether its token is shared is unknown");
}

/// The `shared_token` finding: a warning while the token works (a change would need
/// coordination), an error when it is dead and nothing coordinates the hosts.
pub fn finding(entry: &RunnerEntry, sharing: &Sharing, dead: bool, settings: &Settings) -> Finding {
    let name = &entry.name;
    let id = entry.id.unwrap_or_default();
    let shown: Vec<String> = sharing
        .others
        .iter()
        .take(5)
        .map(|s| format!("`{s}`"))
        .collect();
    let more = sharing.others.len().saturating_sub(shown.len());
    let window = human_span(settings.fleet.manager_window.as_secs());
    let severity = if dead && !settings.fleet.coordinated() {
        Severity::Error
    } else {
        Severity::Warning
    };
    let state = if dead {
        "its token no longer works on any of them; a new token must reach every host"
    } else {
        "a reset or renewal here would cut all of them off at once"
    };
    Finding::new(
        FindingCode::SharedToken,
        severity,
        format!(
            "runner `{name}` (id {id}): its token is shared by {} runner managers: {} other host(s) ({}{}) contacted GitLab within the last {window}; {state}",
            sharing.managers,
            sharing.others.len(),
            shown.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() },
        ),
        format!(
            "coordinate the hosts: set `[fleet] store = \"etcd\"` (with `endpoints` and `encryption_key_file`) in the settings of every host that shares the token, and runner-medic rotates it once and hands it to all; or rotate on one host only (`runner-medic rotate --runner {name}{}`) and copy the new `token` and `token_expires_at` of `{}` into the config.toml of every other host",
            if dead { "" } else { " --force" },
            settings.runner_config.display()
        ),
    )
    .at(entry.token_line.or(Some(entry.line)))
}
