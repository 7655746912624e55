//! The simulator's data and GitLab's rules over it (reference §1–§4).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::Serialize;

/// `instance_type`, `group_type` or `project_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunnerType {
    InstanceType,
    GroupType,
    ProjectType,
}

impl RunnerType {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "instance_type" => Some(Self::InstanceType),
            "group_type" => Some(Self::GroupType),
            "project_type" => Some(Self::ProjectType),
            _ => None,
        }
    }

    /// The partition marker after `glrt-` (reference §1): the runner type in hex.
    fn marker(self) -> &'static str {
        match self {
            Self::InstanceType => "t1_",
            Self::GroupType => "t2_",
            Self::ProjectType => "t3_",
        }
    }
}

/// A runner record.
#[derive(Debug, Clone)]
pub struct Runner {
    pub id: u64,
    pub runner_type: RunnerType,
    pub group_id: Option<u64>,
    /// The owner project of a project runner (the first in `projects`).
    pub project_id: Option<u64>,
    /// Further projects a project runner is assigned to (`POST /projects/:id/runners`).
    pub more_projects: Vec<u64>,
    pub description: String,
    pub tag_list: Vec<String>,
    pub run_untagged: bool,
    pub locked: bool,
    pub access_level: String,
    pub maximum_timeout: Option<u64>,
    pub paused: bool,
    pub maintenance_note: Option<String>,
    pub token: String,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub contacted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A runner manager: one host (one `system_id`) using a runner's token. GitLab keeps them in
/// `ci_runner_machines` (model `Ci::RunnerManager`, gitlab-org/gitlab
/// `app/models/ci/runner_manager.rb`), keyed by the runner and the `system_xid` the runner sends,
/// and creates or updates one on every authenticated runner call that heartbeats (verify,
/// jobs/request): `current_runner_manager` in `lib/api/ci/helpers/runner.rb` calls
/// `current_runner.ensure_manager(params.fetch(:system_id, LEGACY_SYSTEM_XID))`, then
/// `heartbeat` sets `contacted_at` (reference §2.1, §3.7).
#[derive(Debug, Clone)]
pub struct RunnerManager {
    pub id: u64,
    /// `system_xid`, shown as `system_id` by the API entity (`lib/api/entities/ci/runner_manager.rb`).
    pub system_id: String,
    pub created_at: DateTime<Utc>,
    pub contacted_at: Option<DateTime<Utc>>,
}

/// The `system_xid` GitLab gives a manager when the request carries no `system_id`
/// (`LEGACY_SYSTEM_XID = '<legacy>'`, gitlab-org/gitlab `lib/api/ci/helpers/runner.rb`).
pub const LEGACY_SYSTEM_XID: &str = "<legacy>";

/// What a test gives to create a runner directly in the state.
#[derive(Debug, Clone)]
pub struct NewRunner {
    pub runner_type: RunnerType,
    pub description: String,
    pub tag_list: Vec<String>,
    pub paused: bool,
    /// `None`: computed from the settings, as GitLab does.
    pub token_expires_at: Option<Option<DateTime<Utc>>>,
}

impl Default for NewRunner {
    fn default() -> Self {
        Self {
            runner_type: RunnerType::InstanceType,
            description: "runner".into(),
            tag_list: vec![],
            paused: false,
            token_expires_at: None,
        }
    }
}

/// A personal (or group/project) access token.
#[derive(Debug, Clone)]
pub struct Pat {
    pub id: u64,
    pub token: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// A date, as GitLab stores it.
    pub expires_at: Option<NaiveDate>,
    pub revoked: bool,
    /// The owning user is an administrator.
    pub admin: bool,
    /// Groups the owning user is an Owner of (non-administrators).
    pub groups: Vec<u64>,
    /// Projects the owning user is a Maintainer or Owner of (non-administrators).
    pub projects: Vec<u64>,
}

/// The three runner token expiration intervals of `GET /application/settings` (seconds).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AppSettings {
    pub runner_token_expiration_interval: Option<i64>,
    pub group_runner_token_expiration_interval: Option<i64>,
    pub project_runner_token_expiration_interval: Option<i64>,
}

/// A Rack::Attack throttle (GitLab `lib/gitlab/rack_attack.rb`, `throttle_authenticated_api`;
/// docs `administration/settings/user_and_ip_rate_limits.md`; reference §4.2): at most `limit`
/// requests per `period_secs` window. Every answer carries `RateLimit-Name`, `-Limit`,
/// `-Observed`, `-Remaining`, `-Reset` (Unix time) and `-ResetTime` (HTTP date); a request past the
/// limit is answered `429 Retry later`, with `Retry-After` only when `retry_after` is on (older
/// versions and some paths send none).
#[derive(Debug, Clone)]
pub struct Throttle {
    pub limit: u32,
    pub period_secs: i64,
    pub retry_after: bool,
    pub window_start: Option<DateTime<Utc>>,
    pub observed: u32,
    /// Requests refused with 429 so far.
    pub refused: u32,
}

impl Throttle {
    pub fn new(limit: u32, period_secs: i64, retry_after: bool) -> Self {
        Self {
            limit,
            period_secs,
            retry_after,
            window_start: None,
            observed: 0,
            refused: 0,
        }
    }

    /// Count a request at `now`: `(allowed, observed, reset)`.
    pub fn count(&mut self, now: DateTime<Utc>) -> (bool, u32, DateTime<Utc>) {
        let period = chrono::Duration::seconds(self.period_secs);
        let start = match self.window_start {
            Some(s) if now < s + period => s,
            _ => {
                self.observed = 0;
                self.window_start = Some(now);
                now
            }
        };
        self.observed += 1;
        let allowed = self.observed <= self.limit;
        if !allowed {
            self.refused += 1;
        }
        (allowed, self.observed, start + period)
    }
}

/// A fault to inject on an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this status and GitLab's body for it.
    Status(u16),
    /// 429 with `Retry-After: n`.
    RateLimited { retry_after_secs: u64 },
    /// 429 `Retry later` with no header at all, as GitLab.com has answered
    /// (gitlab-org/gitlab#365728; reference §4.2).
    RateLimitedBare,
    /// Drop the connection (RST) without an answer.
    Reset,
    /// Hold the request this long before answering 504.
    Hang(Duration),
    /// Answer with this status and this raw body (e.g. a malformed one).
    Body(u16, String),
    /// Answer with this status and a body of `bytes` bytes, streamed in 64 KiB chunks so the
    /// simulator never holds it; with `declare_length` the `Content-Length` announces it, else
    /// it is sent chunked. Models a misrouted request answered by something that is not GitLab
    /// (a proxy's download, a log endpoint, a runaway error page).
    HugeBody {
        status: u16,
        bytes: u64,
        declare_length: bool,
    },
    /// `GET /runners/all` answers a full page and `X-Next-Page: page+1` for every page, forever.
    /// With `repeat` every page holds the same runners, as a caching proxy that ignores the
    /// query string serves page 1 again and again; without it, new runners every time, as a
    /// broken or hostile server that never ends its list.
    EndlessPages { repeat: bool },
    /// Answer with this status and a `message` that echoes the request's `PRIVATE-TOKEN` and
    /// runner `token`, as some proxies and debug error pages quote the request they refused.
    EchoSecrets(u16),
}

#[derive(Debug, Clone)]
pub struct Fault {
    /// `METHOD /route`, the route as written in the API (e.g. `POST /api/v4/runners/:id/reset_authentication_token`).
    pub endpoint: String,
    pub kind: FaultKind,
    /// How many more requests it applies to; `None` = every one.
    pub remaining: Option<u32>,
    /// Apply the fault after the handler ran (the change happens, the answer is lost).
    pub after_handler: bool,
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    pub method: String,
    /// The route template, e.g. `/api/v4/runners/:id`.
    pub route: String,
    pub path: String,
    /// The credential that came with it: the `token` body field or the `PRIVATE-TOKEN` header.
    pub credential: Option<String>,
    /// `runner_token`, `private_token`, or `none`.
    pub credential_kind: &'static str,
    pub status: u16,
    /// The `Host` the client addressed.
    pub host: String,
    /// The `system_id` the request carried (body field or query parameter), as gitlab-runner
    /// sends it with every runner-token call (reference §2.1, §6.3).
    pub system_id: Option<String>,
    pub at: DateTime<Utc>,
}

impl LogEntry {
    /// A request that changes GitLab state (not a read, not a verify, not a poll).
    pub fn is_changing(&self) -> bool {
        self.method != "GET"
            && !matches!(
                self.route.as_str(),
                "/api/v4/runners/verify" | "/api/v4/jobs/request"
            )
    }
}

/// Everything the simulator knows.
pub struct State {
    /// Added to the host clock to give the simulator's "now" (moves tokens into expiry).
    pub clock_offset: chrono::Duration,
    /// Added to "now" in the `Date` header only (clock skew seen by the client).
    pub date_skew: chrono::Duration,
    pub latency: Duration,
    pub version: String,
    pub runners: BTreeMap<u64, Runner>,
    pub pats: Vec<Pat>,
    pub settings: AppSettings,
    pub faults: Vec<Fault>,
    pub log: Vec<LogEntry>,
    /// Tokens the simulator ever issued, for the secret-confinement scans.
    pub issued_tokens: Vec<String>,
    /// `GET /runners/:id` carries `token_expires_at`. GitLab left it out up to at least 18.x
    /// (gitlab-org/gitlab#627823) and added it with MR !253821 (2026), as null or ISO 8601
    /// (reference §3.2). Off by default, as for the 18.6 this simulator reports.
    pub record_has_token_expiry: bool,
    /// Group or project runners whose owner is gone ("orphaned"; `sharding_key_id` is null).
    pub orphaned: BTreeSet<u64>,
    /// GitLab's feature flag `reject_orphaned_runners`. On: every runner-token call of an
    /// orphaned runner answers `403 {"message":"403 Forbidden - Runner is orphaned"}`
    /// (`authenticate_runner!`). Off: the call fails when it would create the runner manager
    /// (`UnknownRunnerOwnerError`), answered `422 {"message":"Runner is orphaned"}`, which is the
    /// 422 the API docs list for verify and jobs/request. Source: gitlab-org/gitlab
    /// `lib/api/ci/helpers/runner.rb`, `lib/api/ci/runner.rb` (`http_codes [422, 'Runner is
    /// orphaned']`), `spec/requests/api/ci/runner/runners_verify_post_spec.rb`.
    pub reject_orphaned_runners: bool,
    /// Runner managers by runner id (see [`RunnerManager`]). A runner's managers go with it
    /// when it is deleted; a token reset keeps them (reference §3.6).
    pub managers: BTreeMap<u64, Vec<RunnerManager>>,
    /// `GET /runners/:id/managers` exists (GitLab ~17.1, MR !153715, reference §3.7). Off: the
    /// route answers 404 as an older GitLab does.
    pub managers_endpoint: bool,
    /// Admin Mode (*Admin area > Settings > General > Sign-in restrictions*): an administrator's
    /// access token acts as an administrator only when it has the `admin_mode` scope (GitLab
    /// `lib/gitlab/auth/current_user_mode.rb`, `lib/api/api_guard.rb`; reference §3 "Scopes").
    /// Off by default.
    pub admin_mode: bool,
    /// Rate limiting of every request (see [`Throttle`]); off by default.
    pub throttle: Option<Throttle>,
    next_id: u64,
    next_manager_id: u64,
}

impl State {
    pub fn new(latency: Duration) -> Self {
        Self {
            clock_offset: chrono::Duration::zero(),
            date_skew: chrono::Duration::zero(),
            latency,
            version: "18.6.2".into(),
            runners: BTreeMap::new(),
            pats: Vec::new(),
            settings: AppSettings::default(),
            faults: Vec::new(),
            log: Vec::new(),
            issued_tokens: Vec::new(),
            record_has_token_expiry: false,
            orphaned: BTreeSet::new(),
            reject_orphaned_runners: false,
            managers: BTreeMap::new(),
            managers_endpoint: true,
            admin_mode: false,
            throttle: None,
            next_id: 1000,
            next_manager_id: 1,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }

    /// A runner authentication token in GitLab's format: `glrt-tN_` + 20 friendly characters.
    pub fn generate_runner_token(&mut self, runner_type: RunnerType) -> String {
        let token = format!("glrt-{}{}", runner_type.marker(), friendly_token());
        self.issued_tokens.push(token.clone());
        token
    }

    /// Expiry for a new or reset token, from the settings (reference §3.8).
    pub fn compute_token_expiration(&self, runner_type: RunnerType) -> Option<DateTime<Utc>> {
        let interval = match runner_type {
            RunnerType::InstanceType => self.settings.runner_token_expiration_interval,
            RunnerType::GroupType => self.settings.group_runner_token_expiration_interval,
            RunnerType::ProjectType => self.settings.project_runner_token_expiration_interval,
        }?;
        Some(self.now() + chrono::Duration::seconds(interval))
    }

    /// Create a runner directly (test set-up). Returns its id and token.
    pub fn add_runner(&mut self, new: NewRunner) -> (u64, String) {
        let id = self.next_id;
        self.next_id += 1;
        let token = self.generate_runner_token(new.runner_type);
        let expires = new
            .token_expires_at
            .unwrap_or_else(|| self.compute_token_expiration(new.runner_type));
        let (group_id, project_id) = match new.runner_type {
            RunnerType::InstanceType => (None, None),
            RunnerType::GroupType => (Some(7), None),
            RunnerType::ProjectType => (None, Some(42)),
        };
        self.runners.insert(
            id,
            Runner {
                id,
                runner_type: new.runner_type,
                group_id,
                project_id,
                more_projects: Vec::new(),
                description: new.description,
                tag_list: new.tag_list,
                run_untagged: true,
                locked: false,
                access_level: "not_protected".into(),
                maximum_timeout: None,
                paused: new.paused,
                maintenance_note: None,
                token: token.clone(),
                token_expires_at: expires,
                contacted_at: None,
                created_at: self.now(),
            },
        );
        (id, token)
    }

    pub fn next_runner_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Add an access token; returns its value.
    pub fn add_pat(
        &mut self,
        scopes: &[&str],
        admin: bool,
        expires_at: Option<NaiveDate>,
    ) -> String {
        let token = format!("glpat-{}", friendly_token());
        let id = self.pats.len() as u64 + 1;
        self.pats.push(Pat {
            id,
            token: token.clone(),
            name: format!("runner-medic-{id}"),
            scopes: scopes.iter().map(|s| (*s).to_string()).collect(),
            expires_at,
            revoked: false,
            admin,
            groups: Vec::new(),
            projects: Vec::new(),
        });
        token
    }

    /// An access token of a user who is no administrator but owns these groups and projects.
    pub fn add_owner_pat(&mut self, scopes: &[&str], groups: &[u64], projects: &[u64]) -> String {
        let token = self.add_pat(scopes, false, None);
        let pat = self.pats.last_mut().expect("just added");
        pat.groups = groups.to_vec();
        pat.projects = projects.to_vec();
        token
    }

    /// The projects of a runner: its owner project first, then the others.
    pub fn runner_projects(&self, id: u64) -> Vec<u64> {
        self.runners.get(&id).map_or_else(Vec::new, |r| {
            r.project_id
                .into_iter()
                .chain(r.more_projects.iter().copied())
                .collect()
        })
    }

    /// The runner whose current, unexpired token this is (`Ci::Runner.find_by_token` leaves out
    /// expired tokens, reference §2).
    pub fn runner_by_token(&self, token: &str) -> Option<u64> {
        let now = self.now();
        self.runners
            .values()
            .find(|r| r.token == token && r.token_expires_at.is_none_or(|at| at >= now))
            .map(|r| r.id)
    }

    /// Make a runner's token expired as of now.
    pub fn expire_token(&mut self, id: u64) {
        let now = self.now();
        if let Some(r) = self.runners.get_mut(&id) {
            r.token_expires_at = Some(now - chrono::Duration::seconds(1));
        }
    }

    /// Reset a runner's token as GitLab does: a new value, the old one dead at once.
    pub fn reset_token(&mut self, id: u64) -> Option<(String, Option<DateTime<Utc>>)> {
        let runner_type = self.runners.get(&id)?.runner_type;
        let token = self.generate_runner_token(runner_type);
        let expires = self.compute_token_expiration(runner_type);
        let r = self.runners.get_mut(&id)?;
        r.token = token.clone();
        r.token_expires_at = expires;
        Some((token, expires))
    }

    /// `ensure_manager` + `heartbeat`: the manager of `runner` for `system_id` (or
    /// [`LEGACY_SYSTEM_XID`] when the request carried none), created if new, `contacted_at` now.
    pub fn touch_manager(&mut self, runner: u64, system_id: Option<&str>) {
        let now = self.now();
        self.add_manager(runner, system_id.unwrap_or(LEGACY_SYSTEM_XID), Some(now));
    }

    /// Create or update the manager `system_id` of `runner` with this `contacted_at` (test
    /// set-up: another host that used the token at some time).
    pub fn add_manager(
        &mut self,
        runner: u64,
        system_id: &str,
        contacted_at: Option<DateTime<Utc>>,
    ) {
        let now = self.now();
        let next = self.next_manager_id;
        let list = self.managers.entry(runner).or_default();
        match list.iter_mut().find(|m| m.system_id == system_id) {
            Some(m) => m.contacted_at = contacted_at,
            None => {
                list.push(RunnerManager {
                    id: next,
                    system_id: system_id.to_string(),
                    created_at: contacted_at.map_or(now, |c| c.min(now)),
                    contacted_at,
                });
                self.next_manager_id += 1;
            }
        }
    }

    /// The `system_id`s of a runner's managers.
    pub fn manager_ids(&self, runner: u64) -> Vec<String> {
        self.managers
            .get(&runner)
            .map(|l| l.iter().map(|m| m.system_id.clone()).collect())
            .unwrap_or_default()
    }

    /// Requests that made GitLab issue a runner token: a reset (own or by id) or a creation.
    pub fn token_issuing_requests(&self) -> usize {
        self.log
            .iter()
            .filter(|e| {
                e.method == "POST"
                    && (200..300).contains(&e.status)
                    && matches!(
                        e.route.as_str(),
                        "/api/v4/runners/reset_authentication_token"
                            | "/api/v4/runners/:id/reset_authentication_token"
                            | "/api/v4/user/runners"
                    )
            })
            .count()
    }

    pub fn inject(&mut self, endpoint: &str, kind: FaultKind, times: Option<u32>) {
        self.faults.push(Fault {
            endpoint: endpoint.to_string(),
            kind,
            remaining: times,
            after_handler: false,
        });
    }

    /// A fault that lets the change happen and then loses the answer (an uncertain outcome).
    pub fn inject_after(&mut self, endpoint: &str, kind: FaultKind, times: Option<u32>) {
        self.faults.push(Fault {
            endpoint: endpoint.to_string(),
            kind,
            remaining: times,
            after_handler: true,
        });
    }

    /// Take the fault for `endpoint`, counting it down.
    pub(crate) fn take_fault(&mut self, endpoint: &str, after_handler: bool) -> Option<FaultKind> {
        let pos = self.faults.iter().position(|f| {
            f.endpoint == endpoint && f.after_handler == after_handler && f.remaining != Some(0)
        })?;
        let fault = &mut self.faults[pos];
        if let Some(n) = fault.remaining.as_mut() {
            *n -= 1;
        }
        Some(fault.kind.clone())
    }

    pub fn requests_to(&self, method: &str, route: &str) -> usize {
        self.log
            .iter()
            .filter(|e| e.method == method && e.route == route)
            .count()
    }
}

/// `Devise.friendly_token`: 20 characters from `[A-Za-z0-9_-]`.
fn friendly_token() -> String {
    let mut rng = rand::thread_rng();
    (0..20)
        .map(|i| {
            // Mix in `_` and `-` now and then, as base64url does.
            match rng.gen_range(0..32) {
                0 if i > 0 => '_',
                1 if i > 0 => '-',
                _ => char::from(rng.sample(Alphanumeric)),
            }
        })
        .collect()
}
