//! From a diagnosis to a plan: one action per runner, and the API calls it takes. Pure.

use crate::cli::Strategy;
use crate::diagnose::{
    url_key, AdminAccess, Diagnosis, FindingCode, Record, RunnerFacts, Severity, TokenState,
};
use crate::gitlab::CreateRunner;
use crate::report::Action;
use crate::settings::Settings;

use super::known::KnownRunners;

/// What the operator asked for.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `--runner` values (names or ids); empty = all.
    pub runners: Vec<String>,
    pub force: bool,
}

#[derive(Debug, Clone)]
pub struct PlanItem {
    pub index: usize,
    pub name: String,
    pub action: Action,
    /// Not selected by `--runner`.
    pub skipped: bool,
    pub old_id: Option<u64>,
    /// For `recreate`: what to create.
    pub create: Option<CreateRunner>,
    /// For `recreate` of a runner whose record still exists: delete it once the new one works.
    pub delete_old: bool,
    /// The token was dead (reset, recreate), so the service must restart to pick it up.
    pub token_was_dead: bool,
    /// For `manual`: what a person must do.
    pub reason: Option<String>,
    pub calls: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub items: Vec<PlanItem>,
}

impl Plan {
    pub fn changes(&self) -> impl Iterator<Item = &PlanItem> {
        self.items
            .iter()
            .filter(|i| matches!(i.action, Action::Renew | Action::Reset | Action::Recreate))
    }
}

/// Codes whose cause rotation cannot fix: a person must act (the finding's fix says how).
const MANUAL: &[FindingCode] = &[
    FindingCode::TokenFromEnvironment,
    FindingCode::RunnerOrphaned,
    FindingCode::UrlInvalid,
    FindingCode::UrlMismatch,
    FindingCode::DnsFailure,
    FindingCode::ConnectFailure,
    FindingCode::TlsFailure,
    FindingCode::ServerError,
];

fn selected(scope: &Scope, facts: &RunnerFacts) -> bool {
    scope.runners.is_empty()
        || scope.runners.iter().any(|r| {
            *r == facts.entry.name
                || facts
                    .entry
                    .id
                    .is_some_and(|id| r.parse::<u64>().ok() == Some(id))
        })
}

pub fn plan(
    diagnosis: &Diagnosis,
    settings: &Settings,
    scope: &Scope,
    known: &KnownRunners,
) -> Plan {
    let base = settings
        .gitlab_url
        .as_ref()
        .map(url_key)
        .unwrap_or_default();
    // A clock far off makes every expiry judgement wrong: act on nothing until it is fixed.
    let clock_broken = diagnosis
        .report
        .findings
        .iter()
        .any(|f| f.code == FindingCode::ClockSkew && f.severity == Severity::Error);
    // A token that is refused, or has no scope rotate can use. A token missing some scopes only
    // makes the actions that need them `manual` (see `missing_permission`).
    let admin_broken = diagnosis.report.findings.iter().any(|f| {
        f.code == FindingCode::AdminTokenInvalid
            || (f.code == FindingCode::AdminTokenScopeMissing && f.severity == Severity::Error)
    });
    let access = diagnosis.admin_access.as_ref();
    let mut items = Vec::new();
    for (facts, report) in diagnosis.facts.iter().zip(&diagnosis.report.runners) {
        let entry = &facts.entry;
        let mut item = PlanItem {
            index: entry.index,
            name: entry.name.clone(),
            action: Action::None,
            skipped: !selected(scope, facts),
            old_id: entry.id,
            create: None,
            delete_old: false,
            token_was_dead: false,
            reason: None,
            calls: Vec::new(),
        };
        if item.skipped {
            items.push(item);
            continue;
        }
        let manual = |item: &mut PlanItem, why: String| {
            item.action = Action::Manual;
            item.reason = Some(why);
        };
        let has = |code: FindingCode| report.findings.iter().any(|f| f.code == code);
        let runner_url = entry
            .url
            .as_deref()
            .and_then(|u| crate::diagnose::parse_runner_url(u).ok())
            .map(|u| url_key(&u))
            .unwrap_or_default();
        if let Some(f) = report.findings.iter().find(|f| MANUAL.contains(&f.code)) {
            manual(&mut item, f.fix.clone());
        } else if clock_broken {
            manual(
                &mut item,
                "fix the host clock first (see the clock_skew finding)".into(),
            );
        } else if has(FindingCode::TokenMissing) {
            manual(
                &mut item,
                report
                    .findings
                    .iter()
                    .find(|f| f.code == FindingCode::TokenMissing)
                    .map(|f| f.fix.clone())
                    .unwrap_or_default(),
            );
        } else if facts.state == TokenState::Valid {
            let expiring = has(FindingCode::TokenExpiring);
            if (expiring || scope.force) && settings.strategy != Strategy::Recreate {
                item.action = Action::Renew;
                item.calls.push(format!(
                    "POST {runner_url}/api/v4/runners/reset_authentication_token (runner token)"
                ));
            } else if (expiring || scope.force) && settings.strategy == Strategy::Recreate {
                plan_dead(&mut item, facts, settings, known, &base, admin_broken);
                item.token_was_dead = false;
                check_permission(&mut item, facts, access);
            }
        } else if facts.state == TokenState::Dead
            || has(FindingCode::RegistrationTokenInConfig)
            || has(FindingCode::TokenMalformed)
        {
            plan_dead(&mut item, facts, settings, known, &base, admin_broken);
            check_permission(&mut item, facts, access);
        }
        // A token other hosts use: changing it here cuts them all off at once. Without a store
        // that hands the new token to every host, only an operator who named this runner with
        // `--runner` (and then copies the token to the others) gets a change.
        let changes_token = matches!(
            item.action,
            Action::Renew | Action::Reset | Action::Recreate
        );
        if changes_token
            && facts.shared()
            && !settings.fleet.coordinated()
            && scope.runners.is_empty()
        {
            if let Some(f) = report
                .findings
                .iter()
                .find(|f| f.code == FindingCode::SharedToken)
            {
                item.action = Action::Manual;
                item.reason = Some(format!(
                    "not changed: other hosts use this token; {}",
                    f.fix
                ));
                item.calls.clear();
                item.create = None;
                item.delete_old = false;
            }
        }
        // `FF_DISABLE_AUTOMATIC_TOKEN_ROTATION`: the operator manages this token elsewhere.
        // Whatever it needs, a person (or that other tool) provides it.
        let would_act = matches!(
            item.action,
            Action::Renew | Action::Reset | Action::Recreate
        ) || (item.action == Action::Manual && item.token_was_dead);
        if would_act {
            if let Some(f) = report
                .findings
                .iter()
                .find(|f| f.code == FindingCode::TokenRotationDisabled)
            {
                item.action = Action::Manual;
                item.reason = Some(f.fix.clone());
                item.calls.clear();
                item.create = None;
                item.delete_old = false;
            }
        }
        items.push(item);
    }
    Plan { items }
}

/// Make the item `manual` when the privileged token may not carry it out.
fn check_permission(item: &mut PlanItem, facts: &RunnerFacts, access: Option<&AdminAccess>) {
    if let Some(why) = missing_permission(item, facts, access) {
        item.action = Action::Manual;
        item.reason = Some(why);
        item.calls.clear();
        item.create = None;
        item.delete_old = false;
    }
}

/// What the privileged token lacks for this item's action, as the fix a person applies. Per
/// GitLab (reference §3): a reset by id (`POST /runners/:id/reset_authentication_token`) and a
/// deletion (`DELETE /runners/:id`) take `manage_runner`; a creation (`POST /user/runners`)
/// takes `create_runner`; assigning a runner to a further project (`POST /projects/:id/runners`)
/// takes `api` (GitLab `lib/api/ci/runners.rb`: `manage_runner` covers `/runners/:id…` only).
/// Instance runners are an administrator's, and with Admin Mode on the administrator's token acts
/// as one only with the `admin_mode` scope: a token refused `GET /application/settings` is not
/// acting as an administrator.
fn missing_permission(
    item: &PlanItem,
    facts: &RunnerFacts,
    access: Option<&AdminAccess>,
) -> Option<String> {
    let access = access?;
    let mut need = Vec::new();
    let runner_type = match item.action {
        Action::Reset => {
            if !access.has("manage_runner") {
                need.push("`manage_runner`");
            }
            match &facts.record {
                Record::Exists(old) => Some(old.runner_type.clone()),
                _ => None,
            }
        }
        Action::Recreate => {
            let create = item.create.as_ref()?;
            if !access.has("create_runner") {
                need.push("`create_runner`");
            }
            if item.delete_old && !access.has("manage_runner") {
                need.push("`manage_runner` (to delete the replaced runner)");
            }
            if !create.more_project_ids.is_empty() && !access.scopes.iter().any(|s| s == "api") {
                need.push("`api` (to assign the new runner to its other projects)");
            }
            Some(create.runner_type.clone())
        }
        _ => return None,
    };
    let admin_needed =
        runner_type.as_deref() == Some("instance_type") && access.instance_admin == Some(false);
    if need.is_empty() && !admin_needed {
        return None;
    }
    let what = if item.action == Action::Reset {
        "resetting"
    } else {
        "recreating"
    };
    let mut why = Vec::new();
    if !need.is_empty() {
        why.push(format!(
            "{what} runner `{}` needs the scope(s) {} (or `api`); the privileged token has: {}",
            item.name,
            need.join(", "),
            if access.scopes.is_empty() {
                "none".to_string()
            } else {
                access.scopes.join(", ")
            }
        ));
    }
    if admin_needed {
        why.push(format!(
            "{what} instance runner `{}` takes an administrator's token, and GitLab does not treat this one as an administrator's (it refused `GET /api/v4/application/settings`): use an administrator's token, with the `admin_mode` scope if Admin Mode is on",
            item.name
        ));
    }
    Some(format!(
        "{}; then run `runner-medic rotate --runner {}`",
        why.join("; "),
        item.name
    ))
}

/// The token cannot be used any more: reset it by id, or recreate the runner.
fn plan_dead(
    item: &mut PlanItem,
    facts: &RunnerFacts,
    settings: &Settings,
    known: &KnownRunners,
    base: &str,
    admin_broken: bool,
) {
    item.token_was_dead = true;
    if settings.admin.is_none() || !facts.admin_usable || admin_broken {
        item.action = Action::Manual;
        item.reason = Some(if settings.admin.is_none() {
            format!(
                "a new token needs a privileged token: give runner-medic `--gitlab-url` and `--admin-token-file`, then `runner-medic rotate --runner {}`; or create a runner in GitLab and paste its token",
                item.name
            )
        } else {
            "the privileged token cannot be used for this runner (see the findings)".into()
        });
        return;
    }
    // A template from the settings wins; else the record as it was last seen.
    let template = settings.templates.get(&item.name).cloned().or_else(|| {
        item.old_id
            .and_then(|id| known.get(id))
            .map(CreateRunner::like)
    });
    let recreate = |item: &mut PlanItem, params: CreateRunner, delete_old: bool| {
        item.action = Action::Recreate;
        item.calls.push(format!(
            "POST {base}/api/v4/user/runners (privileged; runner_type {})",
            params.runner_type
        ));
        if delete_old {
            if let Some(id) = item.old_id {
                item.calls.push(format!(
                    "DELETE {base}/api/v4/runners/{id} (privileged, after the new runner works)"
                ));
            }
        }
        item.create = Some(params);
        item.delete_old = delete_old;
    };
    match (&facts.record, item.old_id) {
        (Record::Exists(old), Some(id)) => {
            if settings.strategy == Strategy::Recreate {
                recreate(
                    item,
                    template.unwrap_or_else(|| CreateRunner::like(old)),
                    settings.delete_replaced,
                );
            } else {
                item.action = Action::Reset;
                item.calls.push(format!(
                    "POST {base}/api/v4/runners/{id}/reset_authentication_token (privileged)"
                ));
            }
        }
        (Record::Deleted, _) | (_, None) => match (settings.strategy, template) {
            (Strategy::Reset, _) => {
                item.action = Action::Manual;
                item.reason = Some(
                    "the runner record is gone and `--strategy reset` forbids recreating it".into(),
                );
            }
            (_, Some(t)) => recreate(item, t, false),
            (_, None) => {
                item.action = Action::Manual;
                item.reason = Some(format!(
                    "the runner record is gone and its settings are unknown: add `[templates.\"{}\"]` (runner_type, group_id or project_id, tag_list, …) to the settings file, then `runner-medic rotate --runner {}`",
                    item.name, item.name
                ));
            }
        },
        (Record::Unknown, Some(_)) => {
            item.action = Action::Manual;
            item.reason = Some(
                "the runner record could not be looked up; run again when GitLab answers".into(),
            );
        }
    }
}
