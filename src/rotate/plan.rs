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
        if let Some(f) = report.findings.iter().find(|f| f.code.needs_person()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use crate::diagnose::sharing::Sharing;
    use crate::gitlab::{AdminCredential, RunnerDetails};
    use crate::report::{Finding, Report, RunnerReport};
    use crate::runner_config::ConfigFile;
    use crate::secret::AdminToken;
    use crate::settings::{Environment, Overrides};
    use clap::Parser;

    const URL: &str = "https://gitlab.example.com";

    /// Settings as a bare command line gives them, with a privileged token when `admin`.
    fn settings(dir: &tempfile::TempDir, admin: bool, strategy: Strategy) -> Settings {
        let empty = dir.path().join("settings.toml");
        std::fs::write(&empty, "").unwrap();
        let cli = Cli::parse_from([
            "runner-medic",
            "--settings",
            empty.to_str().unwrap(),
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
            "--gitlab-url",
            URL,
            "diagnose",
        ]);
        let mut s =
            Settings::resolve(&cli.global, &Environment::default(), &Overrides::default()).unwrap();
        s.strategy = strategy;
        if admin {
            s.admin = Some(AdminCredential {
                url: url::Url::parse(URL).unwrap(),
                token: AdminToken::new("glpat-privileged"),
            });
        }
        s
    }

    /// One runner `build` (id 7) in a real config.toml, with what diagnose found of it.
    struct Case {
        dir: tempfile::TempDir,
        state: TokenState,
        record: Record,
        findings: Vec<Finding>,
        sharing: Option<Sharing>,
        access: Option<AdminAccess>,
        host_findings: Vec<Finding>,
    }

    fn case(state: TokenState, record: Record, finding: Option<FindingCode>) -> Case {
        Case {
            dir: tempfile::tempdir().unwrap(),
            state,
            record,
            findings: finding
                .map(|c| Finding::error(c, "found", "fix it"))
                .into_iter()
                .collect(),
            sharing: None,
            access: None,
            host_findings: Vec::new(),
        }
    }

    fn record(runner_type: &str, projects: &[u64]) -> Record {
        Record::Exists(Box::new(details(runner_type, projects)))
    }

    fn details(runner_type: &str, projects: &[u64]) -> RunnerDetails {
        let projects: Vec<_> = projects
            .iter()
            .map(|id| serde_json::json!({"id": id}))
            .collect();
        serde_json::from_value(serde_json::json!({
            "id": 7, "runner_type": runner_type, "tag_list": ["linux"], "projects": projects,
        }))
        .unwrap()
    }

    impl Case {
        fn plan(&self, settings: &Settings, scope: &Scope, known: &KnownRunners) -> PlanItem {
            let path = self.dir.path().join("config.toml");
            std::fs::write(
                &path,
                format!(
                    "concurrent = 1\n[[runners]]\n  name = \"build\"\n  url = \"{URL}\"\n  id = 7\n  token = \"glrt-0123456789abcdefghij\"\n  executor = \"shell\"\n"
                ),
            )
            .unwrap();
            let config = ConfigFile::load(&path).unwrap();
            let entry = config.runners().remove(0);
            let mut report = Report::new(
                crate::report::ReportCommand::Rotate,
                path.display().to_string(),
                Some(URL.into()),
            );
            report.findings = self.host_findings.clone();
            report.runners.push(RunnerReport {
                url: entry.url.clone(),
                findings: self.findings.clone(),
                ..RunnerReport::new(entry.name.clone(), entry.id, entry.line)
            });
            let diagnosis = Diagnosis {
                report,
                config: Some(config),
                facts: vec![RunnerFacts {
                    entry,
                    state: self.state,
                    record: self.record.clone(),
                    admin_usable: true,
                    expires_at: None,
                    sharing: self.sharing.clone(),
                }],
                skew: None,
                admin_access: self.access.clone(),
                known: KnownRunners::default(),
            };
            plan(&diagnosis, settings, scope, known).items.remove(0)
        }

        fn planned(&self, admin: bool, strategy: Strategy) -> PlanItem {
            let settings = settings(&self.dir, admin, strategy);
            self.plan(&settings, &Scope::default(), &KnownRunners::default())
        }
    }

    #[test]
    fn a_dead_token_whose_record_exists_is_reset_by_id() {
        let c = case(
            TokenState::Dead,
            record("project_type", &[1]),
            Some(FindingCode::TokenRevoked),
        );
        let item = c.planned(true, Strategy::Auto);
        assert_eq!(item.action, Action::Reset);
        assert!(item.token_was_dead);
        assert_eq!(
            item.calls,
            vec![format!(
                "POST {URL}/api/v4/runners/7/reset_authentication_token (privileged)"
            )]
        );
    }

    #[test]
    fn a_dead_token_without_a_privileged_token_is_left_to_a_person() {
        let c = case(
            TokenState::Dead,
            Record::Unknown,
            Some(FindingCode::TokenExpired),
        );
        let item = c.planned(false, Strategy::Auto);
        assert_eq!(item.action, Action::Manual);
        assert!(item.reason.unwrap().contains("--admin-token-file"));
        assert!(item.calls.is_empty());
    }

    #[test]
    fn a_valid_token_is_renewed_only_when_expiring_or_forced() {
        let healthy = case(TokenState::Valid, record("instance_type", &[]), None);
        assert_eq!(healthy.planned(true, Strategy::Auto).action, Action::None);
        let settings = settings(&healthy.dir, true, Strategy::Auto);
        let forced = Scope {
            runners: Vec::new(),
            force: true,
        };
        let item = healthy.plan(&settings, &forced, &KnownRunners::default());
        assert_eq!(item.action, Action::Renew);
        assert!(!item.token_was_dead);
        let expiring = case(
            TokenState::Valid,
            record("instance_type", &[]),
            Some(FindingCode::TokenExpiring),
        );
        let item = expiring.planned(false, Strategy::Auto);
        assert_eq!(
            item.action,
            Action::Renew,
            "renewal needs no privileged token"
        );
        assert_eq!(
            item.calls,
            vec![format!(
                "POST {URL}/api/v4/runners/reset_authentication_token (runner token)"
            )]
        );
    }

    #[test]
    fn a_deleted_runner_is_recreated_from_its_remembered_record() {
        let c = case(
            TokenState::Dead,
            Record::Deleted,
            Some(FindingCode::RunnerDeleted),
        );
        let settings = settings(&c.dir, true, Strategy::Auto);
        let mut known = KnownRunners::default();
        known.note_record(&details("project_type", &[3, 4, 5]), chrono::Utc::now());
        let item = c.plan(&settings, &Scope::default(), &known);
        assert_eq!(item.action, Action::Recreate);
        let create = item.create.unwrap();
        assert_eq!(create.runner_type, "project_type");
        assert_eq!(create.project_id, Some(3));
        assert_eq!(create.more_project_ids, vec![4, 5]);
        assert_eq!(create.tag_list, vec!["linux".to_string()]);
        assert!(!item.delete_old, "nothing is left to delete");
        // Unknown settings: nothing is invented, the fix names the template to write.
        let item = c.plan(&settings, &Scope::default(), &KnownRunners::default());
        assert_eq!(item.action, Action::Manual);
        assert!(item.reason.unwrap().contains("[templates.\"build\"]"));
        // `--strategy reset` forbids creating.
        let reset_only = self::settings(&c.dir, true, Strategy::Reset);
        let item = c.plan(&reset_only, &Scope::default(), &known);
        assert_eq!(item.action, Action::Manual);
    }

    #[test]
    fn strategy_recreate_replaces_an_existing_runner_and_deletes_the_old_one() {
        let c = case(
            TokenState::Dead,
            record("group_type", &[]),
            Some(FindingCode::TokenRevoked),
        );
        let item = c.planned(true, Strategy::Recreate);
        assert_eq!(item.action, Action::Recreate);
        assert!(item.delete_old);
        assert_eq!(item.calls.len(), 2);
        assert!(item.calls[1].starts_with(&format!("DELETE {URL}/api/v4/runners/7")));
    }

    #[test]
    fn a_shared_token_is_changed_only_when_coordinated_or_named() {
        let mut c = case(
            TokenState::Dead,
            record("project_type", &[1]),
            Some(FindingCode::TokenRevoked),
        );
        c.sharing = Some(Sharing {
            managers: 3,
            others: vec!["s_other1".into(), "s_other2".into()],
        });
        c.findings.push(Finding::warning(
            FindingCode::SharedToken,
            "shared",
            "configure the fleet store",
        ));
        let item = c.planned(true, Strategy::Auto);
        assert_eq!(item.action, Action::Manual);
        assert!(item.reason.unwrap().contains("other hosts use this token"));
        assert!(item.calls.is_empty());
        // An operator who names the runner takes it on (and distributes the token).
        let settings = settings(&c.dir, true, Strategy::Auto);
        let named = Scope {
            runners: vec!["build".into()],
            force: false,
        };
        let item = c.plan(&settings, &named, &KnownRunners::default());
        assert_eq!(item.action, Action::Reset);
    }

    #[test]
    fn a_missing_scope_or_admin_mode_makes_the_action_manual() {
        let mut c = case(
            TokenState::Dead,
            record("instance_type", &[]),
            Some(FindingCode::TokenRevoked),
        );
        c.access = Some(AdminAccess {
            scopes: vec!["create_runner".into()],
            instance_admin: Some(true),
        });
        let item = c.planned(true, Strategy::Auto);
        assert_eq!(item.action, Action::Manual);
        let why = item.reason.unwrap();
        assert!(why.contains("`manage_runner`"), "{why}");
        assert!(
            why.contains("create_runner"),
            "names what the token has: {why}"
        );
        c.access = Some(AdminAccess {
            scopes: vec!["manage_runner".into()],
            instance_admin: Some(false),
        });
        let why = c.planned(true, Strategy::Auto).reason.unwrap();
        assert!(why.contains("admin_mode"), "{why}");
        c.access = Some(AdminAccess {
            scopes: vec!["api".into()],
            instance_admin: Some(true),
        });
        assert_eq!(c.planned(true, Strategy::Auto).action, Action::Reset);
    }

    #[test]
    fn a_broken_clock_or_disabled_rotation_or_unreachable_gitlab_stops_every_change() {
        let mut c = case(
            TokenState::Dead,
            record("project_type", &[1]),
            Some(FindingCode::TokenExpired),
        );
        c.host_findings.push(Finding::error(
            FindingCode::ClockSkew,
            "off by 2h",
            "sync the clock",
        ));
        let item = c.planned(true, Strategy::Auto);
        assert_eq!(item.action, Action::Manual);
        assert!(item.reason.unwrap().contains("clock"));
        c.host_findings.clear();
        c.findings.push(Finding::info(
            FindingCode::TokenRotationDisabled,
            "FF_DISABLE_AUTOMATIC_TOKEN_ROTATION",
            "rotate it where it is managed",
        ));
        let item = c.planned(true, Strategy::Auto);
        assert_eq!(item.action, Action::Manual);
        assert_eq!(
            item.reason.as_deref(),
            Some("rotate it where it is managed")
        );
        let unreachable = case(
            TokenState::Unknown,
            Record::Unknown,
            Some(FindingCode::ConnectFailure),
        );
        let item = unreachable.planned(true, Strategy::Auto);
        assert_eq!(item.action, Action::Manual);
        assert_eq!(item.reason.as_deref(), Some("fix it"));
    }

    #[test]
    fn runners_not_named_by_runner_are_skipped() {
        let c = case(
            TokenState::Dead,
            record("project_type", &[1]),
            Some(FindingCode::TokenRevoked),
        );
        let settings = settings(&c.dir, true, Strategy::Auto);
        for (named, skipped) in [("other", true), ("build", false), ("7", false)] {
            let scope = Scope {
                runners: vec![named.into()],
                force: false,
            };
            let item = c.plan(&settings, &scope, &KnownRunners::default());
            assert_eq!(item.skipped, skipped, "{named}");
            assert_eq!(item.action == Action::None, skipped, "{named}");
        }
    }
}
