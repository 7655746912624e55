//! Checks of the privileged credential (validity, expiry, scopes), the instance's token
//! expiration policy, and the host clock against GitLab's.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::host_now;
use crate::gitlab::{AdminApi, AppSettings, PatInfo};
use crate::report::{Finding, FindingCode, Severity};
use crate::settings::Settings;

/// What the privileged token may do, for rotate to plan each action by.
#[derive(Debug, Clone, Default)]
pub struct AdminAccess {
    pub scopes: Vec<String>,
    /// `GET /application/settings` answered (`Some(true)`) or was refused (`Some(false)`): the
    /// token acts as an administrator or not. A refused administrator's token lacks the
    /// `admin_mode` scope while Admin Mode is on.
    pub instance_admin: Option<bool>,
}

impl AdminAccess {
    /// The token carries `scope` or `api`, which allows everything (reference §3 "Scopes").
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == "api")
    }
}

#[derive(Debug, Clone, Default)]
pub struct AdminCheck {
    pub access: Option<AdminAccess>,
    pub findings: Vec<Finding>,
    pub expires_at: Option<chrono::NaiveDate>,
    /// The credential works (rotate may use it).
    pub usable: bool,
    pub dates: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

const NEW_TOKEN_FIX: &str =
    "create an access token with the scopes `create_runner`, `manage_runner` and `read_api` (or \
     `api`; `api` is also needed to assign a recreated runner to more than one project) for a \
     user who owns the runners (an administrator for instance runners, with `admin_mode` if Admin \
     Mode is on), write it to the admin token file (mode 0600), then run `runner-medic diagnose`";

/// What the privileged token's two reads answered: kept in the state directory (see `known`), so
/// that a run that does not need the token reports it without asking GitLab again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminFacts {
    pub pat: PatInfo,
    /// `GET /application/settings` answered (`Some(true)`), was refused (`Some(false)`), or failed.
    pub instance_admin: Option<bool>,
    #[serde(default)]
    pub app_settings: Option<AppSettings>,
}

/// Check the privileged token: `GET /personal_access_tokens/self` and `GET /application/settings`,
/// sent together. The facts come back when the token works, to be remembered.
pub async fn check(
    api: &AdminApi,
    settings: &Settings,
    limit: &super::Limit,
) -> (AdminCheck, Option<AdminFacts>) {
    let mut out = AdminCheck {
        access: None,
        findings: Vec::new(),
        expires_at: None,
        usable: false,
        dates: Vec::new(),
    };
    let url = super::url_key(api.url());
    let (pat_reply, settings_reply) = tokio::join!(
        limit.run(api.pat_self()),
        limit.run(api.application_settings())
    );
    let pat = match pat_reply {
        Err(e) if e.status() == Some(401) => {
            out.findings.push(Finding::error(
                FindingCode::AdminTokenInvalid,
                format!("the privileged token is not accepted by `{url}` (expired, revoked or unknown): {e}"),
                NEW_TOKEN_FIX,
            ));
            return (out, None);
        }
        Err(e) if e.is_transport() => {
            let finding = super::network::probe("(privileged API)", api.url(), &e).await;
            out.findings.push(finding);
            return (out, None);
        }
        Err(e) => {
            out.findings.push(Finding::error(
                FindingCode::ServerError,
                format!("`{url}` could not check the privileged token: {e}"),
                "retry later; check GitLab's health",
            ));
            return (out, None);
        }
        Ok(reply) => {
            if let Some(d) = reply.server_date {
                out.dates.push((d, host_now()));
            }
            reply.value
        }
    };
    // The instance policy is readable by administrators only; others simply skip it. Whether it
    // answers also tells whether the token acts as an administrator.
    let instance_admin = match &settings_reply {
        Ok(_) => Some(true),
        Err(e) if e.status() == Some(403) => Some(false),
        Err(_) => None,
    };
    let app_settings = settings_reply.ok().map(|reply| {
        if let Some(d) = reply.server_date {
            out.dates.push((d, host_now()));
        }
        reply.value
    });
    let facts = AdminFacts {
        pat,
        instance_admin,
        app_settings,
    };
    let judged = judge(&facts, &url, settings);
    out.access = judged.access;
    out.findings = judged.findings;
    out.expires_at = judged.expires_at;
    out.usable = judged.usable;
    (out, Some(facts))
}

/// What the answers of a working privileged token mean: its access, its expiry and scope
/// findings, the instance's token lifetimes. Pure, so remembered facts give the same findings.
pub fn judge(facts: &AdminFacts, url: &str, settings: &Settings) -> AdminCheck {
    let mut out = AdminCheck {
        access: None,
        findings: Vec::new(),
        expires_at: None,
        usable: true,
        dates: Vec::new(),
    };
    let pat = &facts.pat;
    out.expires_at = pat.expires_at;
    let access = AdminAccess {
        scopes: pat.scopes.clone(),
        instance_admin: facts.instance_admin,
    };
    // Per action (GitLab `lib/api/ci/runners.rb` `allow_access_with_scope :manage_runner`
    // for `/runners/:id…`, `lib/api/user_runners.rb` `allow_access_with_scope
    // :create_runner`): a reset needs `manage_runner`, a creation `create_runner`, and
    // `api` covers both. A token with neither can do nothing for rotate.
    let mut missing = Vec::new();
    if !access.has("manage_runner") {
        missing.push("`manage_runner` (resets and deletions by id are planned `manual`)");
    }
    if !access.has("create_runner") {
        missing.push("`create_runner` (recreations are planned `manual`)");
    }
    if !access.has("read_api") && access.has("create_runner") {
        missing.push("`read_api` (an interrupted creation cannot be looked up)");
    }
    let useless = !access.has("manage_runner") && !access.has("create_runner");
    if !missing.is_empty() {
        let message = format!(
            "the privileged token `{}` lacks the scope(s) {} (it has: {})",
            pat.name.as_deref().unwrap_or("?"),
            missing.join(", "),
            if pat.scopes.is_empty() {
                "none".to_string()
            } else {
                pat.scopes.join(", ")
            }
        );
        out.findings.push(if useless {
            Finding::error(FindingCode::AdminTokenScopeMissing, message, NEW_TOKEN_FIX)
        } else {
            Finding::warning(FindingCode::AdminTokenScopeMissing, message, NEW_TOKEN_FIX)
        });
    }
    out.access = Some(access);
    if let Some(expires) = pat.expires_at {
        let today = host_now().date_naive();
        let days = (expires - today).num_days();
        if days <= 30 {
            out.findings.push(Finding::warning(
                FindingCode::AdminTokenExpiring,
                format!("the privileged token expires on {expires} (in {days} days)"),
                format!("rotate it before then (`POST {url}/api/v4/personal_access_tokens/self/rotate`, or create a new one) and update the admin token file"),
            ));
        }
    }
    if let Some(s) = &facts.app_settings {
        for (kind, key, value) in [
            (
                "instance",
                "runner_token_expiration_interval",
                s.runner_token_expiration_interval,
            ),
            (
                "group",
                "group_runner_token_expiration_interval",
                s.group_runner_token_expiration_interval,
            ),
            (
                "project",
                "project_runner_token_expiration_interval",
                s.project_runner_token_expiration_interval,
            ),
        ] {
            let Some(secs) = value else { continue };
            let lifetime = std::time::Duration::from_secs(secs.max(0).unsigned_abs());
            let shown = crate::report::human_span(lifetime.as_secs());
            let too_short_for_window = settings.renew_before.is_some_and(|w| lifetime <= w);
            let unusually_short = lifetime < std::time::Duration::from_secs(7 * 86400);
            if too_short_for_window || unusually_short {
                let why = if too_short_for_window {
                    format!(
                        "shorter than the renew window of {}",
                        humantime::format_duration(settings.renew_before.unwrap_or_default())
                    )
                } else {
                    "unusually short: a runner that is offline for that long loses its token"
                        .to_string()
                };
                out.findings.push(Finding::warning(
                    FindingCode::ShortTokenLifetime,
                    format!("{kind} runner tokens on `{url}` live {shown} ({key}), {why}"),
                    format!("raise it in Admin area > Settings > CI/CD > Runners > Runner expiration, or `PUT {url}/api/v4/application/settings?{key}=<seconds>`; or run runner-medic more often than every {shown}"),
                ));
            }
        }
    }
    out
}

pub fn clock_finding(skew: chrono::Duration, settings: &Settings) -> Option<Finding> {
    let secs = skew.num_milliseconds().abs() as f64 / 1000.0;
    let warn = settings.clock_skew_warning.as_secs_f64();
    if secs < warn {
        return None;
    }
    let severity = if secs > 300.0 {
        Severity::Error
    } else {
        Severity::Warning
    };
    let direction = if skew.num_milliseconds() > 0 {
        "behind"
    } else {
        "ahead of"
    };
    Some(Finding::new(
        FindingCode::ClockSkew,
        severity,
        format!("this host's clock is {secs:.0} s {direction} GitLab's (from its `Date` header); token expiry is judged by GitLab's clock"),
        "turn on time sync: `timedatectl set-ntp true` (systemd-timesyncd), or check `chronyc tracking` / the ntpd service",
    ))
}
