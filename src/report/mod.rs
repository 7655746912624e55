//! The report: the data every command returns, and its renderings (human, JSON, metrics).
//! Renderers never compute; they only format what is here.

mod human;
pub mod metrics;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use human::render as render_human;

use crate::diagnose::{Finding, Severity};
use crate::exit::ExitStatus;
use crate::secret::Masked;

/// `action` of a runner (contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    None,
    Renew,
    Reset,
    Recreate,
    Manual,
    /// Took the token another host of the fleet obtained and published; GitLab was not changed.
    Adopt,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Renew => "renew",
            Action::Reset => "reset",
            Action::Recreate => "recreate",
            Action::Manual => "manual",
            Action::Adopt => "adopt",
        }
    }
}

/// `outcome` of a runner's action (contract); `null` for diagnose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Planned,
    Done,
    Failed,
    Skipped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Planned => "planned",
            Outcome::Done => "done",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunnerReport {
    pub name: String,
    pub id: Option<u64>,
    pub url: Option<String>,
    pub token: Option<Masked>,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub findings: Vec<Finding>,
    pub action: Option<Action>,
    pub outcome: Option<Outcome>,
    /// Runner managers (hosts) using the token recently, this one included; `None` when not known
    /// (not asked: no change was considered; no privileged token; GitLab without the endpoint).
    pub managers: Option<usize>,
    /// Other hosts use the token (GitLab's runner managers).
    pub shared: bool,
    /// Line of the `[[runners]]` header in config.toml.
    pub line: usize,
    /// The replacement token (masked) and id, when rotated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_token: Option<Masked>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_id: Option<u64>,
    /// API calls planned (dry-run) or made, e.g. `POST /api/v4/runners/42/reset_authentication_token`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<String>,
    /// Why the action failed or was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl RunnerReport {
    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    pub manager: String,
    pub name: String,
    pub stopped: bool,
    pub started: bool,
    /// Why this manager was chosen (auto-detection) or why nothing was restarted.
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long the stop took (the supervisor's graceful stop and the wait for it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_seconds: Option<f64>,
    /// How long runner-medic itself kept the service down: from stopped to starting it again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_seconds: Option<f64>,
    /// How long the start took, until the supervisor reported it running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_seconds: Option<f64>,
    /// `restart = reload`: true when GitLab saw the runner use its new token after config.toml
    /// was written (no restart needed), false when it did not within the reload timeout (the
    /// service was then restarted), null when no reload was involved or it could not be checked.
    pub reloaded: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: u32,
    pub command: &'static str,
    pub dry_run: bool,
    pub runner_config: String,
    pub gitlab_url: Option<String>,
    pub server_time: Option<DateTime<Utc>>,
    pub clock_skew_seconds: Option<f64>,
    pub findings: Vec<Finding>,
    pub runners: Vec<RunnerReport>,
    pub service: Option<ServiceReport>,
    /// Dry-run: the unified diff of config.toml, tokens masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    /// The backup written before config.toml was replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// When the privileged token expires (from `GET /personal_access_tokens/self`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_expires_at: Option<chrono::NaiveDate>,
    /// Host time the report was made, for "expires in …" wording.
    #[serde(skip)]
    pub generated_at: DateTime<Utc>,
}

impl Report {
    pub fn new(command: &'static str, runner_config: String, gitlab_url: Option<String>) -> Self {
        Self {
            version: 1,
            command,
            dry_run: false,
            runner_config,
            gitlab_url,
            server_time: None,
            clock_skew_seconds: None,
            findings: Vec::new(),
            runners: Vec::new(),
            service: None,
            diff: None,
            backup: None,
            admin_token_expires_at: None,
            generated_at: Utc::now(),
        }
    }

    fn any_error_finding(&self) -> bool {
        self.findings.iter().any(|f| f.severity == Severity::Error)
    }

    /// Exit status per the contract.
    pub fn exit_status(&self) -> ExitStatus {
        let broken = match self.command {
            "rotate" => {
                self.any_error_finding()
                    || self.runners.iter().any(|r| {
                        matches!(r.outcome, Some(Outcome::Failed))
                            || matches!(r.action, Some(Action::Manual))
                            || (matches!(r.outcome, Some(Outcome::Skipped) | None)
                                && r.worst() == Some(Severity::Error))
                    })
                    || self.service.as_ref().is_some_and(|s| s.error.is_some())
            }
            _ => {
                self.any_error_finding()
                    || self
                        .runners
                        .iter()
                        .any(|r| r.worst() == Some(Severity::Error))
            }
        };
        if broken {
            ExitStatus::StillBroken
        } else {
            ExitStatus::Healthy
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data cannot fail.
        serde_json::to_string_pretty(self).expect("report serialises")
    }
}
