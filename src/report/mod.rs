//! The report: the data every command returns, and its renderings (human, JSON, metrics).
//! A runner's status is computed in one place (`RunnerReport::status`); the renderers use it.

pub mod finding;
pub mod history;
mod human;
pub mod metrics;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;

pub use finding::{Finding, FindingCode, Severity};
pub use human::{describe_in, human_span, render as render_human};

use crate::exit::ExitStatus;
use crate::secret::Masked;

/// `action` of a runner (contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
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

/// `status` of a runner (contract): the one word a person or an alert reads first. The exit
/// status is 1 exactly when some runner is `broken` or `needs_person` (or a host-level error or
/// a failed service restart exists).
// Derived from findings, action and outcome by `RunnerReport::status`, the same rule
// `Report::exit_status` applies.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RunnerStatus {
    Healthy,
    Warning,
    Broken,
    Fixed,
    Planned,
    NeedsPerson,
}

impl RunnerStatus {
    pub const ALL: [RunnerStatus; 6] = [
        RunnerStatus::Healthy,
        RunnerStatus::Warning,
        RunnerStatus::Broken,
        RunnerStatus::Fixed,
        RunnerStatus::Planned,
        RunnerStatus::NeedsPerson,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunnerStatus::Healthy => "healthy",
            RunnerStatus::Warning => "warning",
            RunnerStatus::Broken => "broken",
            RunnerStatus::Fixed => "fixed",
            RunnerStatus::Planned => "planned",
            RunnerStatus::NeedsPerson => "needs_person",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Still broken at the end of the run: the runner makes the exit status 1.
    pub fn is_broken(self) -> bool {
        matches!(self, RunnerStatus::Broken | RunnerStatus::NeedsPerson)
    }
}

/// Timestamps in JSON are RFC 3339 to the second in UTC (`2026-11-25T13:37:24Z`): what `date -d`,
/// `jq`'s `fromdate` and every log pipeline parse without a format string.
pub mod rfc3339 {
    use chrono::{DateTime, SecondsFormat, Utc};

    /// The schema of such a timestamp (a type only schemars sees).
    pub struct Timestamp;

    impl schemars::JsonSchema for Timestamp {
        fn schema_name() -> std::borrow::Cow<'static, str> {
            "Timestamp".into()
        }

        fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
            schemars::json_schema!({
                "type": "string",
                "format": "date-time",
                "description": "RFC 3339 in UTC, to the second: `2026-11-25T13:37:24Z`.",
                "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"
            })
        }
    }

    pub fn format(at: DateTime<Utc>) -> String {
        at.to_rfc3339_opts(SecondsFormat::Secs, true)
    }

    #[allow(clippy::ref_option)] // serde's `serialize_with` passes `&Option<T>`
    pub fn option<S: serde::Serializer>(
        at: &Option<DateTime<Utc>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match at {
            Some(at) => s.serialize_str(&format(*at)),
            None => s.serialize_none(),
        }
    }
}

/// `outcome` of a runner's action (contract); `null` for diagnose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
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

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RunnerReport {
    pub name: String,
    pub id: Option<u64>,
    pub url: Option<String>,
    pub token: Option<Masked>,
    /// When the token expires, as GitLab reports it (else as config.toml has it).
    #[serde(serialize_with = "rfc3339::option")]
    #[schemars(with = "Option<rfc3339::Timestamp>")]
    pub token_expires_at: Option<DateTime<Utc>>,
    /// The runner at the end of the run (docs/reference.md, "JSON report").
    // Filled by `Report::to_json` from `RunnerReport::status`; never set by hand.
    #[schemars(with = "RunnerStatus")]
    pub status: Option<RunnerStatus>,
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
    /// A runner of config.toml (its `name`, `id` and the line of its `[[runners]]` header) that
    /// nothing has been found of, done to or learnt about yet.
    pub fn new(name: String, id: Option<u64>, line: usize) -> Self {
        Self {
            name,
            id,
            url: None,
            token: None,
            token_expires_at: None,
            status: None,
            findings: Vec::new(),
            action: None,
            outcome: None,
            managers: None,
            shared: false,
            line,
            new_token: None,
            new_id: None,
            calls: Vec::new(),
            error: None,
        }
    }

    pub fn worst(&self) -> Option<Severity> {
        self.findings.iter().map(|f| f.severity).max()
    }

    /// The runner's status at the end of a run of `command` (see [`RunnerStatus`]).
    pub fn status(&self, command: ReportCommand) -> RunnerStatus {
        let worst = self.worst();
        if command == ReportCommand::Rotate {
            match (self.action, self.outcome) {
                (_, Some(Outcome::Failed)) => RunnerStatus::Broken,
                (Some(Action::Manual), _) => RunnerStatus::NeedsPerson,
                (_, Some(Outcome::Done)) => RunnerStatus::Fixed,
                (_, Some(Outcome::Planned)) => RunnerStatus::Planned,
                _ if worst == Some(Severity::Error) => RunnerStatus::Broken,
                _ if worst == Some(Severity::Warning) => RunnerStatus::Warning,
                _ => RunnerStatus::Healthy,
            }
        } else {
            match worst {
                Some(Severity::Error) if self.action == Some(Action::Manual) => {
                    RunnerStatus::NeedsPerson
                }
                Some(Severity::Error) => RunnerStatus::Broken,
                Some(Severity::Warning) => RunnerStatus::Warning,
                _ => RunnerStatus::Healthy,
            }
        }
    }

    /// The runner id as it stands after the run: a recreated runner's new id.
    pub fn current_id(&self) -> Option<u64> {
        self.new_id.or(self.id)
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
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

/// The command a report comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReportCommand {
    Diagnose,
    Rotate,
    // An agent cycle (a diagnose and rotate).
    Agent,
}

impl ReportCommand {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Diagnose => "diagnose",
            Self::Rotate => "rotate",
            Self::Agent => "agent",
        }
    }
}

impl std::fmt::Display for ReportCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The report of `diagnose` and `rotate` (`--output json`), as docs/reference.md describes it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Report {
    pub version: u32,
    pub command: ReportCommand,
    pub dry_run: bool,
    pub runner_config: String,
    pub gitlab_url: Option<String>,
    /// GitLab's clock (its `Date` header) during the run.
    #[serde(serialize_with = "rfc3339::option")]
    #[schemars(with = "Option<rfc3339::Timestamp>")]
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
    /// When the privileged token expires (from `GET /personal_access_tokens/self`): GitLab gives
    /// a date and the token stops working at its start, 00:00:00 UTC.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "rfc3339::option"
    )]
    #[schemars(with = "Option<rfc3339::Timestamp>")]
    pub admin_token_expires_at: Option<DateTime<Utc>>,
    /// Host time the report was made, for "expires in …" wording.
    #[serde(skip)]
    pub generated_at: DateTime<Utc>,
}

impl Report {
    pub fn new(command: ReportCommand, runner_config: String, gitlab_url: Option<String>) -> Self {
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

    /// Exit status per the contract: 1 when a host-level error exists, some runner's
    /// [`RunnerStatus`] is still broken, or (rotate) the service could not be restarted.
    pub fn exit_status(&self) -> ExitStatus {
        let broken = self.any_error_finding()
            || self
                .runners
                .iter()
                .any(|r| r.status(self.command).is_broken())
            || (self.command == ReportCommand::Rotate
                && self.service.as_ref().is_some_and(|s| s.error.is_some()));
        if broken {
            ExitStatus::StillBroken
        } else {
            ExitStatus::Healthy
        }
    }

    /// The report with every runner's `status` filled in, as JSON renders it.
    #[must_use]
    pub fn with_status(&self) -> Report {
        let mut report = self.clone();
        for r in &mut report.runners {
            r.status = Some(r.status(self.command));
        }
        report
    }

    /// The JSON Schema of [`Report::to_json`]'s output (docs/report.schema.json).
    pub fn json_schema() -> serde_json::Value {
        // The schema of what runner-medic writes: fields it leaves out when empty are optional.
        let schema = schemars::generate::SchemaSettings::draft2020_12()
            .for_serialize()
            .into_generator()
            .into_root_schema_for::<Report>();
        serde_json::to_value(schema).expect("a schema serialises")
    }

    pub fn to_json(&self) -> String {
        // Serialising plain data cannot fail.
        serde_json::to_string_pretty(&self.with_status()).expect("report serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(
        findings: Vec<Finding>,
        action: Option<Action>,
        outcome: Option<Outcome>,
    ) -> RunnerReport {
        RunnerReport {
            findings,
            action,
            outcome,
            ..RunnerReport::new("build".into(), Some(42), 1)
        }
    }

    fn expired() -> Finding {
        Finding::error(FindingCode::TokenExpired, "expired", "rotate")
    }

    fn report(command: ReportCommand, runners: Vec<RunnerReport>) -> Report {
        let mut r = Report::new(command, "config.toml".into(), None);
        r.runners = runners;
        r
    }

    #[test]
    fn a_rotated_runner_is_fixed_and_the_run_healthy() {
        let r = runner(vec![expired()], Some(Action::Reset), Some(Outcome::Done));
        assert_eq!(r.status(ReportCommand::Rotate), RunnerStatus::Fixed);
        assert_eq!(r.status(ReportCommand::Diagnose), RunnerStatus::Broken);
        assert_eq!(
            report(ReportCommand::Rotate, vec![r]).exit_status(),
            ExitStatus::Healthy
        );
    }

    #[test]
    fn failed_manual_and_unfixed_errors_make_exit_1() {
        for (r, status) in [
            (
                runner(vec![expired()], Some(Action::Reset), Some(Outcome::Failed)),
                RunnerStatus::Broken,
            ),
            (
                runner(
                    vec![expired()],
                    Some(Action::Manual),
                    Some(Outcome::Skipped),
                ),
                RunnerStatus::NeedsPerson,
            ),
            (runner(vec![expired()], None, None), RunnerStatus::Broken),
        ] {
            assert_eq!(r.status(ReportCommand::Rotate), status);
            assert_eq!(
                report(ReportCommand::Rotate, vec![r]).exit_status(),
                ExitStatus::StillBroken
            );
        }
    }

    #[test]
    fn warnings_alone_are_healthy_but_a_host_error_is_not() {
        let warned = runner(
            vec![Finding::warning(
                FindingCode::TokenExpiring,
                "soon",
                "renew",
            )],
            Some(Action::None),
            None,
        );
        assert_eq!(warned.status(ReportCommand::Rotate), RunnerStatus::Warning);
        let mut r = report(ReportCommand::Diagnose, vec![warned]);
        assert_eq!(r.exit_status(), ExitStatus::Healthy);
        r.findings
            .push(Finding::error(FindingCode::ClockSkew, "clock", "ntp"));
        assert_eq!(r.exit_status(), ExitStatus::StillBroken);
    }

    #[test]
    fn a_dry_run_plan_that_fixes_everything_is_healthy() {
        let r = runner(vec![expired()], Some(Action::Reset), Some(Outcome::Planned));
        assert_eq!(r.status(ReportCommand::Rotate), RunnerStatus::Planned);
        let mut rep = report(ReportCommand::Rotate, vec![r]);
        rep.dry_run = true;
        assert_eq!(rep.exit_status(), ExitStatus::Healthy);
    }
}
