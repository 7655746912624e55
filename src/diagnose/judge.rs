//! Judging one runner from its observations: pure, so every branch is unit-testable.

use chrono::{DateTime, Utc};

use super::config_checks::Pre;
use super::network::Observation;
use crate::gitlab;
use crate::report::{describe_in, human_span, Finding, FindingCode};
use crate::runner_config::RunnerEntry;
use crate::settings::Settings;

/// Why GitLab refused a token that it answers 403 for: the answer itself never says (reference
/// §2), so the expiry in config.toml and on the runner record decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Expired { at: DateTime<Utc>, by_record: bool },
    Revoked { why: &'static str },
    Unknown,
}

/// The record's `token_expires_at` (newer GitLab, reference §3.2) is the expiry of the runner's
/// *current* token: in the past, the token expired; in the future or null, the current token
/// is live, so the refused one was replaced or revoked.
fn refusal_cause(
    config_expiry: Option<DateTime<Utc>>,
    record: &super::Record,
    now: DateTime<Utc>,
) -> Cause {
    let record_expiry = match record {
        super::Record::Exists(d) => d.token_expires_at,
        _ => None,
    };
    match (config_expiry, record_expiry) {
        (Some(at), _) if at <= now => Cause::Expired {
            at,
            by_record: false,
        },
        (_, Some(Some(at))) if at <= now => Cause::Expired {
            at,
            by_record: true,
        },
        (_, Some(Some(_))) => Cause::Revoked {
            why: "GitLab's runner record shows an unexpired token",
        },
        (_, Some(None)) => Cause::Revoked {
            why: "GitLab's runner record shows a token that never expires",
        },
        (Some(_), None) => Cause::Revoked {
            why: "it had not expired",
        },
        (None, None) => Cause::Unknown,
    }
}

/// GitLab's answer for a runner whose group or project is gone: 422 `Runner is orphaned` where
/// the runner manager cannot be created (verify, jobs/request; the API docs list 422 for it), or
/// 403 `403 Forbidden - Runner is orphaned` behind the flag `reject_orphaned_runners`
/// (gitlab-org/gitlab `lib/api/ci/helpers/runner.rb`, `lib/api/ci/runner.rb`). Reference §2, §2.3.
fn is_orphaned(e: &gitlab::Error) -> bool {
    match e {
        gitlab::Error::Http { status: 422, .. } => true,
        gitlab::Error::Http {
            status: 403,
            message,
            ..
        } => message.contains("orphaned"),
        _ => false,
    }
}

/// What the token is, as far as diagnose could tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// verify accepted it.
    Valid,
    /// verify refused it (403).
    Dead,
    /// Not checked (config problem) or not reachable.
    Unknown,
}

pub struct Judged {
    pub findings: Vec<Finding>,
    pub state: TokenState,
    pub expires_at: Option<DateTime<Utc>>,
    pub verified_id: Option<u64>,
}

/// The renew window: the operator's `renew_before`, or a fifth of the token's lifetime when it
/// is known (gitlab-runner itself rotates at three quarters, reference §7.1, so it gets the first
/// chance), or 7 days.
pub fn renew_window(
    entry: &RunnerEntry,
    expires_at: Option<DateTime<Utc>>,
    settings: &Settings,
) -> chrono::Duration {
    if let Some(d) = settings.renew_before {
        return chrono::Duration::from_std(d).unwrap_or_else(|_| chrono::Duration::days(7));
    }
    match (entry.token_obtained_at, expires_at) {
        (Some(from), Some(to)) if to > from => {
            std::cmp::max((to - from) / 5, chrono::Duration::hours(1))
        }
        _ => chrono::Duration::days(7),
    }
}

pub fn judge(
    entry: &RunnerEntry,
    pre: &Pre,
    obs: &Observation,
    server_now: DateTime<Utc>,
    settings: &Settings,
) -> Judged {
    let name = &entry.name;
    let file = settings.runner_config.display();
    let mut findings = Vec::new();
    if let Some(f) = &obs.network {
        findings.push(f.clone().at(Some(entry.line)));
    }
    let config_expiry = entry.token_expires_at;
    let out =
        |state, expires_at: Option<DateTime<Utc>>, verified_id, findings: Vec<Finding>| Judged {
            findings,
            state,
            expires_at,
            verified_id,
        };
    let rotate = format!("runner-medic rotate --runner {name}");
    let needs_admin = if settings.admin.is_some() {
        rotate.clone()
    } else {
        format!("give runner-medic a privileged token (`--admin-token-file`, `--gitlab-url`) and run `{rotate}`")
    };
    match &obs.verify {
        None => out(TokenState::Unknown, config_expiry, None, findings),
        Some(Ok(v)) => {
            let expires_at = v.token_expires_at.or(config_expiry);
            if let Some(at) = expires_at {
                let window = renew_window(entry, expires_at, settings);
                if at - server_now <= window {
                    findings.push(
                        Finding::warning(
                            FindingCode::TokenExpiring,
                            format!(
                                "runner `{name}` (`{file}:{}`): the token expires {} ({}), inside the renew window of {}",
                                entry.token_line.unwrap_or(entry.line),
                                describe_in(at, server_now),
                                at.format("%Y-%m-%d %H:%M UTC"),
                                human_span(window.to_std().unwrap_or_default().as_secs())
                            ),
                            format!("{rotate} (renews with the runner's own token; no privileged token needed)"),
                        )
                        .at(entry.token_line),
                    );
                }
            }
            if let Some(Ok(record)) = &obs.record {
                if record.paused {
                    findings.push(
                        Finding::warning(
                            FindingCode::RunnerPaused,
                            format!("runner `{name}` (id {}) is paused: its token is valid but it takes no jobs", record.id),
                            format!(
                                "resume it in GitLab (Admin area > CI/CD > Runners > runner {} > Resume) or `curl --request PUT --header \"PRIVATE-TOKEN: $TOKEN\" --data paused=false {}/api/v4/runners/{}`",
                                record.id,
                                settings.gitlab_url.as_ref().map_or(String::new(), super::url_key),
                                record.id
                            ),
                        )
                        .at(Some(entry.line)),
                    );
                }
            }
            out(TokenState::Valid, expires_at, v.id, findings)
        }
        Some(Err(e)) if is_orphaned(e) => {
            findings.push(
                Finding::error(
                    FindingCode::RunnerOrphaned,
                    format!(
                        "runner `{name}` (`{file}:{}`): GitLab refuses it because the runner is orphaned: the group or project it belonged to no longer exists ({e})",
                        entry.line
                    ),
                    format!(
                        "no new token revives it: create a runner for an existing group or project in GitLab, put its token in `{file}:{}` (or `gitlab-runner register --token glrt-…`), then delete the orphaned runner{}",
                        entry.token_line.unwrap_or(entry.line),
                        entry.id.map_or(String::new(), |id| format!(" (id {id})"))
                    ),
                )
                .at(Some(entry.line)),
            );
            out(TokenState::Dead, config_expiry, None, findings)
        }
        Some(Err(e)) if e.status() == Some(403) => {
            if let Some(Err(lookup)) = &obs.record {
                if lookup.status() != Some(404) {
                    findings.push(
                        Finding::error(
                            FindingCode::ServerError,
                            format!(
                                "runner `{name}`: GitLab could not say whether runner {} still exists: {lookup}",
                                entry.id.unwrap_or_default()
                            ),
                            "retry later (`runner-medic rotate`); check GitLab's health and the privileged token's access to this runner",
                        )
                        .at(Some(entry.line)),
                    );
                }
            }
            let record = obs.record_state();
            let token_at = format!("`{file}:{}`", entry.token_line.unwrap_or(entry.line));
            let record_note = match &record {
                super::Record::Exists(_) => "; the runner record still exists".to_string(),
                _ if pre.admin_usable && entry.id.is_none() => {
                    "; the entry has no `id`, so the record cannot be looked up".to_string()
                }
                _ => " (or the runner was deleted; a privileged token tells which)".to_string(),
            };
            let cause = refusal_cause(config_expiry, &record, server_now);
            let expires_at = match cause {
                Cause::Expired { at, .. } => Some(at),
                _ => config_expiry,
            };
            match (&record, cause) {
                (super::Record::Deleted, _) => findings.push(
                    Finding::error(
                        FindingCode::RunnerDeleted,
                        format!(
                            "runner `{name}` (`{file}:{}`): GitLab has no runner with id {} (\"runner not found\"); it was deleted",
                            entry.line,
                            entry.id.unwrap_or_default()
                        ),
                        format!("{rotate} (creates a replacement runner with the old settings)"),
                    )
                    .at(Some(entry.line)),
                ),
                (record, Cause::Expired { at, by_record }) => findings.push(
                    Finding::error(
                        FindingCode::TokenExpired,
                        format!(
                            "runner `{name}` ({token_at}): the token expired on {} ({}){}{}",
                            at.format("%Y-%m-%d"),
                            describe_in(at, server_now),
                            if by_record { ", as GitLab's runner record says" } else { "" },
                            if matches!(record, super::Record::Unknown) { "" } else { "; the runner record still exists" }
                        ),
                        needs_admin.clone(),
                    )
                    .at(entry.token_line),
                ),
                (_, Cause::Revoked { why }) => findings.push(
                    Finding::error(
                        FindingCode::TokenRevoked,
                        format!(
                            "runner `{name}` ({token_at}): GitLab refuses the token although {why}: it was revoked or reset{record_note}"
                        ),
                        needs_admin.clone(),
                    )
                    .at(entry.token_line),
                ),
                // Nothing tells the expiry: say so rather than guess (reference §5, step 3).
                (_, Cause::Unknown) => findings.push(
                    Finding::error(
                        FindingCode::TokenRevoked,
                        format!(
                            "runner `{name}` ({token_at}): GitLab refuses the token: it expired or was revoked or reset (config.toml has no `token_expires_at` and GitLab does not say which){record_note}"
                        ),
                        needs_admin.clone(),
                    )
                    .at(entry.token_line),
                ),
            }
            out(TokenState::Dead, expires_at, None, findings)
        }
        Some(Err(e)) => {
            if obs.network.is_none() {
                findings.push(
                    Finding::error(
                        FindingCode::ServerError,
                        format!("runner `{name}`: GitLab could not check the token: {e}"),
                        "GitLab is failing or rate-limiting; retry later (`runner-medic diagnose`) and check the instance's health",
                    )
                    .at(Some(entry.line)),
                );
            }
            out(TokenState::Unknown, config_expiry, None, findings)
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use clap::Parser;

    use super::*;
    use crate::cli::Cli;
    use crate::gitlab::Verified;
    use crate::settings::{Environment, Overrides};

    fn settings() -> Settings {
        let cli = Cli::try_parse_from([
            "runner-medic",
            "diagnose",
            "--runner-config",
            "/nonexistent/config.toml",
            "--settings",
            "/dev/null",
            "--state-dir",
            "/nonexistent/state",
        ])
        .unwrap();
        Settings::resolve(&cli.global, &Environment::default(), &Overrides::default()).unwrap()
    }

    fn entry(expires: Option<DateTime<Utc>>) -> RunnerEntry {
        RunnerEntry {
            name: "build".into(),
            line: 3,
            id: Some(42),
            token: Some(crate::secret::RunnerToken::new(
                "glrt-t1_abcdefghijklmnopqrst",
            )),
            token_expires_at: expires,
            ..RunnerEntry::default()
        }
    }

    fn pre() -> Pre {
        Pre {
            findings: Vec::new(),
            url: Some(url::Url::parse("https://gitlab.example.com").unwrap()),
            token_usable: true,
            admin_usable: false,
        }
    }

    fn refused() -> Observation {
        Observation {
            verify: Some(Err(gitlab::Error::Http {
                url: "https://gitlab.example.com/api/v4/runners/verify".into(),
                status: 403,
                message: "403 Forbidden".into(),
                retry_after: None,
            })),
            ..Observation::default()
        }
    }

    fn codes(j: &Judged) -> Vec<&'static str> {
        j.findings.iter().map(|f| f.code.as_str()).collect()
    }

    #[test]
    fn a_verified_token_far_from_expiry_is_healthy() {
        let now = Utc::now();
        let obs = Observation {
            verify: Some(Ok(Verified {
                id: Some(42),
                token_expires_at: Some(now + Duration::days(80)),
            })),
            ..Observation::default()
        };
        let j = judge(&entry(None), &pre(), &obs, now, &settings());
        assert_eq!(j.state, TokenState::Valid);
        assert!(codes(&j).is_empty(), "{:?}", codes(&j));
        assert_eq!(j.verified_id, Some(42));
    }

    #[test]
    fn a_verified_token_inside_the_renew_window_is_expiring() {
        let now = Utc::now();
        let obs = Observation {
            verify: Some(Ok(Verified {
                id: Some(42),
                token_expires_at: Some(now + Duration::days(2)),
            })),
            ..Observation::default()
        };
        let j = judge(&entry(None), &pre(), &obs, now, &settings());
        assert_eq!(j.state, TokenState::Valid);
        assert!(codes(&j).contains(&"token_expiring"), "{:?}", codes(&j));
    }

    #[test]
    fn a_refused_token_past_its_expiry_is_expired() {
        let now = Utc::now();
        let j = judge(
            &entry(Some(now - Duration::days(1))),
            &pre(),
            &refused(),
            now,
            &settings(),
        );
        assert_eq!(j.state, TokenState::Dead);
        assert!(codes(&j).contains(&"token_expired"), "{:?}", codes(&j));
    }

    #[test]
    fn a_refused_token_before_its_expiry_is_revoked() {
        let now = Utc::now();
        let j = judge(
            &entry(Some(now + Duration::days(30))),
            &pre(),
            &refused(),
            now,
            &settings(),
        );
        assert_eq!(j.state, TokenState::Dead);
        assert!(codes(&j).contains(&"token_revoked"), "{:?}", codes(&j));
        assert!(!codes(&j).contains(&"token_expired"));
    }

    #[test]
    fn the_expiry_is_judged_on_gitlabs_clock_not_the_hosts() {
        // The host clock is an hour behind GitLab's: a token that expired 30 minutes ago by
        // GitLab's clock is expired, although the host thinks it still has 30 minutes.
        let server_now = Utc::now();
        let j = judge(
            &entry(Some(server_now - Duration::minutes(30))),
            &pre(),
            &refused(),
            server_now,
            &settings(),
        );
        assert!(codes(&j).contains(&"token_expired"), "{:?}", codes(&j));
    }

    #[test]
    fn renew_window_is_a_fifth_of_the_lifetime_or_seven_days() {
        let now = Utc::now();
        let mut e = entry(None);
        assert_eq!(
            renew_window(&e, None, &settings()),
            chrono::Duration::days(7)
        );
        e.token_obtained_at = Some(now);
        assert_eq!(
            renew_window(&e, Some(now + Duration::days(30)), &settings()),
            chrono::Duration::days(6)
        );
    }
}
