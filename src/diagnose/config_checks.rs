//! Checks of config.toml itself, before any network: the file, each entry's token and url.
//!
//! Values are read as gitlab-runner reads them: a `url` ending in the legacy `/ci` is used
//! without it, a `$VARIABLE` in `token` or `url` is a value gitlab-runner takes from its own
//! environment (so runner-medic neither checks nor rewrites it), and
//! `FF_DISABLE_AUTOMATIC_TOKEN_ROTATION` means the token is managed elsewhere.

use std::collections::HashMap;

use url::Url;

use crate::gitlab::{has_legacy_ci_suffix, parse_runner_url, url_key};
use crate::report::{Finding, FindingCode};
use crate::runner_config::{ConfigFile, Error as ConfigError, RunnerEntry, FF_DISABLE_ROTATION};
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

/// A TLS file the entry names (or gitlab-runner's certificate directory holds for its host) that
/// cannot be used: gitlab-runner goes on without it (the system's CAs, no client certificate;
/// gitlab-org/gitlab-runner `network/client.go` `addTLSCA`, `addTLSAuth`), and so does
/// runner-medic, with a warning.
fn tls_file_findings(
    entry: &RunnerEntry,
    url: &Url,
    settings: &Settings,
    at: &dyn Fn(Option<usize>) -> String,
    findings: &mut Vec<Finding>,
) {
    let files = crate::gitlab::tls::resolve(
        &super::tls_files(entry),
        url.host_str().unwrap_or_default(),
        &settings.certs_dirs,
    );
    for problem in crate::gitlab::tls::problems(&files) {
        findings.push(
            Finding::warning(
                FindingCode::TlsFileUnusable,
                format!("runner `{}` ({}): {problem}", entry.name, at(None)),
                "fix the path in the entry (`tls-ca-file`, `tls-cert-file`, `tls-key-file`) or the file it names, or remove the key; gitlab-runner ignores such a file the same way",
            )
            .at(Some(entry.line)),
        );
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
        (Some(token), None) if token.is_env_reference() => findings.push(
            from_environment(entry, "token", &token.env_variables(), &at(entry.token_line))
                .at(entry.token_line),
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
        Some(text) if text.contains('$') => findings.push(
            from_environment(
                entry,
                "url",
                &crate::secret::env_variables(text),
                &at(entry.url_line),
            )
            .at(entry.url_line),
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
                if has_legacy_ci_suffix(text) {
                    tracing::warn!(
                        runner = %name,
                        url = %text,
                        using = %url_key(&parsed),
                        "the url ends in the legacy `/ci`; like gitlab-runner, runner-medic uses it without that suffix (it may be removed from {})",
                        at(entry.url_line)
                    );
                }
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
                tls_file_findings(entry, &parsed, settings, &at, &mut findings);
                url = Some(parsed);
            }
        },
    }
    if let Some(off) = &entry.rotation_disabled {
        findings.push(
            Finding::info(
                FindingCode::TokenRotationDisabled,
                format!(
                    "runner `{name}` ({}): `{FF_DISABLE_ROTATION}` is on in `{}`: its token is managed outside gitlab-runner, so runner-medic diagnoses it but never renews, resets or recreates it",
                    at(off.line),
                    off.place
                ),
                format!(
                    "renew the token with whatever manages it (the secret store or deployment that writes config.toml), or remove `{FF_DISABLE_ROTATION}` from `{}` to let runner-medic rotate runner `{name}`",
                    off.place
                ),
            )
            .at(off.line),
        );
    }
    Pre {
        findings,
        url,
        token_usable,
        admin_usable,
    }
}

/// `token` or `url` is a `$VARIABLE` that gitlab-runner 18.10+ expands from its own environment
/// (gitlab-org/gitlab-runner MR !6068): the value lives where the variable is set, which
/// runner-medic cannot see and must not write around.
fn from_environment(entry: &RunnerEntry, key: &str, names: &[String], place: &str) -> Finding {
    let vars = if names.is_empty() {
        "an environment variable".to_string()
    } else {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let name = &entry.name;
    Finding::warning(
        FindingCode::TokenFromEnvironment,
        format!(
            "runner `{name}` ({place}): `{key}` comes from the environment variable {vars}, which gitlab-runner expands when it loads config.toml; runner-medic cannot check that value and does not rewrite this entry"
        ),
        format!(
            "change the value of {vars} where it is set for gitlab-runner (its service environment, e.g. a systemd `Environment=`/`EnvironmentFile=`, the container's environment or secret), then restart gitlab-runner; for a new token use GitLab (runner > Reset token) or `gitlab-runner reset-token`"
        ),
    )
}

/// Entries whose token repeats an earlier entry's: index → the first entry's name. One pass
/// with a map from token value to its first holder.
pub fn duplicate_tokens(entries: &[RunnerEntry]) -> HashMap<usize, String> {
    let mut out = HashMap::new();
    let mut first_holder: HashMap<&str, &str> = HashMap::with_capacity(entries.len());
    for e in entries {
        let Some(token) = &e.token else { continue };
        if token.unusable_reason() == Some("it is empty") {
            continue;
        }
        match first_holder.entry(token.expose_secret()) {
            std::collections::hash_map::Entry::Occupied(first) => {
                out.insert(e.index, (*first.get()).to_string());
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(&e.name);
            }
        }
    }
    out
}
