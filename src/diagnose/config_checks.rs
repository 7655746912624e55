//! Checks of config.toml itself, before any network: the file, each entry's token and url.

use std::collections::HashMap;

use url::Url;

use super::finding::{Finding, FindingCode};
use super::url::{parse_runner_url, url_key};
use crate::runner_config::{ConfigFile, Error as ConfigError, RunnerEntry};
use crate::settings::Settings;

/// What the offline checks concluded for one entry.
#[derive(Debug, Clone)]
pub struct Pre {
    pub findings: Vec<Finding>,
    /// The entry's URL, when it is usable.
    pub url: Option<Url>,
    /// The token is worth sending to verify.
    pub token_usable: bool,
    /// The runner's url is the operator's `--gitlab-url`.
    pub admin_usable: bool,
}

pub fn file_finding(e: &ConfigError) -> Finding {
    match e {
        ConfigError::Unreadable { .. } => {
            Finding::error(FindingCode::ConfigUnreadable, e.to_string(), e.fix())
        }
        ConfigError::Invalid { line, column, .. } => {
            let mut f =
                Finding::error(FindingCode::ConfigInvalid, e.to_string(), e.fix()).at(Some(*line));
            f.column = Some(*column);
            f
        }
        other => Finding::error(FindingCode::ConfigInvalid, other.to_string(), other.fix()),
    }
}

pub fn check_entry(entry: &RunnerEntry, config: &ConfigFile, settings: &Settings) -> Pre {
    let file = config.path.display().to_string();
    let at = |line: Option<usize>| format!("`{file}:{}`", line.unwrap_or(entry.line));
    let name = &entry.name;
    let mut findings = Vec::new();
    let mut token_usable = false;
    match (&entry.token, &entry.token_problem) {
        (_, Some(problem)) => findings.push(
            Finding::error(
                FindingCode::TokenMalformed,
                format!("runner `{name}` ({}): {problem}", at(entry.token_line)),
                format!("write the token as a string: token = \"glrt-…\", then `runner-medic rotate --runner {name}`"),
            )
            .at(entry.token_line),
        ),
        (None, None) => findings.push(
            Finding::error(
                FindingCode::TokenMissing,
                format!("runner `{name}` ({}) has no `token`", at(None)),
                match entry.id {
                    Some(id) => format!("add `token = \"\"` to the entry and run `runner-medic rotate --runner {name}` (runner id {id} is known)"),
                    None => format!("re-register it: `gitlab-runner register --token glrt-…` or remove the entry at {}", at(None)),
                },
            )
            .at(Some(entry.line)),
        ),
        (Some(token), None) if token.is_registration_token() => findings.push(
            Finding::error(
                FindingCode::RegistrationTokenInConfig,
                format!(
                    "runner `{name}` ({}) holds a registration token ({}), not an authentication token",
                    at(entry.token_line),
                    token.masked()
                ),
                format!("runner-medic rotate --runner {name} --strategy recreate"),
            )
            .at(entry.token_line),
        ),
        (Some(token), None) => match token.unusable_reason() {
            Some(why) => findings.push(
                Finding::error(
                    FindingCode::TokenMalformed,
                    format!("runner `{name}` ({}): the token is unusable: {why}", at(entry.token_line)),
                    format!("runner-medic rotate --runner {name}"),
                )
                .at(entry.token_line),
            ),
            None => token_usable = true,
        },
    }

    let mut url = None;
    let mut admin_usable = false;
    match &entry.url {
        None => findings.push(
            Finding::error(
                FindingCode::UrlInvalid,
                format!("runner `{name}` ({}) has no `url`", at(None)),
                format!(
                    "add `url = \"{}\"` to the entry",
                    settings
                        .gitlab_url
                        .as_ref()
                        .map_or("https://gitlab.example.com".to_string(), url_key)
                ),
            )
            .at(Some(entry.line)),
        ),
        Some(text) => match parse_runner_url(text) {
            Err(why) => findings.push(
                Finding::error(
                    FindingCode::UrlInvalid,
                    format!(
                        "runner `{name}` ({}): `url = {text:?}` is not a usable URL: {why}",
                        at(entry.url_line)
                    ),
                    format!(
                        "write the instance's base URL, e.g. `url = \"{}\"`",
                        settings
                            .gitlab_url
                            .as_ref()
                            .map_or("https://gitlab.example.com".to_string(), url_key)
                    ),
                )
                .at(entry.url_line),
            ),
            Ok(parsed) => {
                if let Some(gitlab) = &settings.gitlab_url {
                    if url_key(&parsed) == url_key(gitlab) {
                        admin_usable = true;
                    } else {
                        findings.push(
                            Finding::error(
                                FindingCode::UrlMismatch,
                                format!(
                                    "runner `{name}` ({}) points at `{}`, not at `{}`; the privileged token is not used for it",
                                    at(entry.url_line),
                                    url_key(&parsed),
                                    url_key(gitlab)
                                ),
                                format!(
                                    "if the runner belongs to `{}`, set `url = \"{}\"` at {}; otherwise run runner-medic with `--gitlab-url {}` for it",
                                    url_key(gitlab),
                                    url_key(gitlab),
                                    at(entry.url_line),
                                    url_key(&parsed)
                                ),
                            )
                            .at(entry.url_line),
                        );
                    }
                }
                url = Some(parsed);
            }
        },
    }
    Pre {
        findings,
        url,
        token_usable,
        admin_usable,
    }
}

/// Entries whose token repeats an earlier entry's: index → the earlier entry's name.
pub fn duplicate_tokens(entries: &[RunnerEntry]) -> HashMap<usize, String> {
    let mut out = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(token) = &e.token else { continue };
        if token.unusable_reason() == Some("it is empty") {
            continue;
        }
        if let Some(first) = entries[..i]
            .iter()
            .find(|o| o.token.as_ref().is_some_and(|t| t.same_as(token)))
        {
            out.insert(e.index, first.name.clone());
        }
    }
    out
}
