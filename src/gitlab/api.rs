//! Request and response bodies of the endpoints runner-medic uses (reference §2–§3).

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::secret::RunnerToken;

/// `POST /runners/verify` 200 (§2.1).
#[derive(Debug, Clone)]
pub struct Verified {
    pub id: Option<u64>,
    pub token_expires_at: Option<DateTime<Utc>>,
}

/// A new token from a reset (§2.2, §3.6) or a creation (§3.1).
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// Present for a creation.
    pub id: Option<u64>,
    pub token: RunnerToken,
    pub token_expires_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
pub(super) struct RawGrant {
    pub id: Option<u64>,
    pub token: String,
    pub token_expires_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
pub(super) struct RawVerified {
    pub id: Option<u64>,
    pub token_expires_at: Option<DateTime<Utc>>,
}

/// `GET /runners/:id` (§3.2): the fields rotate needs to recreate a runner like this one.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RunnerDetails {
    pub id: u64,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub paused: bool,
    pub runner_type: String,
    #[serde(default)]
    pub tag_list: Vec<String>,
    #[serde(default = "yes")]
    pub run_untagged: bool,
    #[serde(default)]
    pub locked: bool,
    #[serde(default)]
    pub access_level: Option<String>,
    #[serde(default)]
    pub maximum_timeout: Option<u64>,
    #[serde(default)]
    pub maintenance_note: Option<String>,
    #[serde(default)]
    pub contacted_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub projects: Vec<IdOnly>,
    #[serde(default)]
    pub groups: Vec<IdOnly>,
    /// Expiry of the runner's current token. `None`: GitLab did not send the field (it is missing
    /// up to at least 18.x, gitlab-org/gitlab#627823); `Some(None)`: sent as null, the token
    /// never expires (added by MR !253821). Reference §3.2.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub token_expires_at: Option<Option<DateTime<Utc>>>,
}

fn yes() -> bool {
    true
}

/// A field that is present, null or not: `Some(value)`; an absent one stays `None` (default).
// Absent and null mean different things here (see `RunnerDetails::token_expires_at`).
#[allow(clippy::option_option)]
fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<DateTime<Utc>>>, D::Error> {
    Option::<DateTime<Utc>>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IdOnly {
    pub id: u64,
}

/// An item of `GET /runners/:id/managers` (§3.7): one host (`system_id`) that used the runner's
/// token. Entity `API::Entities::Ci::RunnerManager` (gitlab-org/gitlab
/// `lib/api/entities/ci/runner_manager.rb`), which exposes `system_xid` as `system_id`.
#[derive(Debug, Clone, Deserialize)]
pub struct RunnerManagerInfo {
    #[serde(default)]
    pub system_id: Option<String>,
    #[serde(default)]
    pub contacted_at: Option<DateTime<Utc>>,
}

/// An item of `GET /runners/all` (§3.3).
#[derive(Debug, Clone, Deserialize)]
pub struct RunnerSummary {
    pub id: u64,
    #[serde(default)]
    pub description: Option<String>,
}

/// `POST /user/runners` parameters (§3.1).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateRunner {
    pub runner_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub tag_list: Vec<String>,
    #[serde(default = "yes")]
    pub run_untagged: bool,
    #[serde(default)]
    pub locked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_level: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maximum_timeout: Option<u64>,
    #[serde(default)]
    pub paused: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maintenance_note: Option<String>,
    /// Projects besides `project_id` a project runner is assigned to after its creation
    /// (`POST /projects/:id/runners`); never sent to `POST /user/runners`, which takes one project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub more_project_ids: Vec<u64>,
}

impl CreateRunner {
    /// An instance runner with GitLab's defaults for everything else (it runs untagged jobs, is
    /// not locked, not paused): what a runner with no remembered record or template becomes.
    pub fn instance(description: Option<String>) -> Self {
        Self {
            runner_type: "instance_type".into(),
            group_id: None,
            project_id: None,
            more_project_ids: Vec::new(),
            description,
            tag_list: Vec::new(),
            run_untagged: true,
            locked: false,
            access_level: None,
            maximum_timeout: None,
            paused: false,
            maintenance_note: None,
        }
    }

    /// The parameters that recreate `old` as it was: every project (GitLab lists the owner
    /// project first) and its maintenance note.
    pub fn like(old: &RunnerDetails) -> Self {
        Self {
            runner_type: old.runner_type.clone(),
            group_id: old.groups.first().map(|g| g.id),
            project_id: old.projects.first().map(|p| p.id),
            more_project_ids: old.projects.iter().skip(1).map(|p| p.id).collect(),
            description: old.description.clone(),
            tag_list: old.tag_list.clone(),
            run_untagged: old.run_untagged,
            locked: old.locked,
            access_level: old.access_level.clone(),
            maximum_timeout: old.maximum_timeout,
            paused: old.paused,
            maintenance_note: old.maintenance_note.clone(),
        }
    }
}

/// `GET /personal_access_tokens/self` (§3.9).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PatInfo {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<NaiveDate>,
}

/// The runner token expiration intervals of `GET /application/settings` (§3.8), in seconds.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AppSettings {
    #[serde(default)]
    pub runner_token_expiration_interval: Option<i64>,
    #[serde(default)]
    pub group_runner_token_expiration_interval: Option<i64>,
    #[serde(default)]
    pub project_runner_token_expiration_interval: Option<i64>,
}
