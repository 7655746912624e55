//! What runner-medic last saw of each runner record and of the privileged token, kept in the
//! private state directory (`state_dir/known-runners/<config key>.json`).
//!
//! The records let a runner deleted in GitLab be recreated with its own settings (type, group or
//! project, tags, flags) even without a template. They are also what keeps a steady-state run at
//! one request per healthy runner: a record is read again (`GET /runners/:id`) only when something
//! needs it (a refused token, an expiring one, a runner last seen paused, `--force`), or when the
//! remembered copy is older than `record_refresh` (a day by default), so the copy a recreation
//! uses stays fresh. The privileged token's check (`GET /personal_access_tokens/self`,
//! `GET /application/settings`) is remembered the same way: a run that never uses the token
//! reports the remembered answers while they are younger than `record_refresh`, and any run that
//! needs the token checks it again first.
//!
//! It is a cache: an unreadable file only costs the reads it would have saved. Nothing here is
//! secret (records carry no token; the credential is kept as a hash only).

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::admin::AdminFacts;
use crate::fs;
use crate::gitlab::{AdminCredential, RunnerDetails};
use crate::settings::Settings;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Known {
    /// When GitLab last answered with this record; `None` in files older than this field.
    #[serde(default)]
    seen_at: Option<DateTime<Utc>>,
    record: RunnerDetails,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KnownAdmin {
    /// SHA-256 of the URL and the token: another credential is checked afresh.
    credential: String,
    checked_at: DateTime<Utc>,
    facts: AdminFacts,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    #[serde(default)]
    runners: BTreeMap<u64, Known>,
    #[serde(default)]
    admin: Option<KnownAdmin>,
}

#[derive(Debug, Default)]
pub struct KnownRunners {
    file: File,
    changed: bool,
}

fn path(settings: &Settings) -> PathBuf {
    settings
        .state_dir
        .join("known-runners")
        .join(format!("{}.json", settings.config_key()))
}

fn credential_key(cred: &AdminCredential) -> String {
    fs::sha256_hex(format!("{}\n{}", cred.url.as_str(), cred.token.expose_secret()).as_bytes())
}

fn age_within(at: Option<DateTime<Utc>>, now: DateTime<Utc>, max: std::time::Duration) -> bool {
    let max = chrono::Duration::from_std(max).unwrap_or_else(|_| chrono::Duration::days(1));
    at.is_some_and(|at| at <= now && now - at < max)
}

/// The file's text: this layout, or the earlier one (records by id, no times), whose records are
/// then all due for a refresh; nothing when it is neither.
fn parse(text: &str) -> File {
    serde_json::from_str::<File>(text)
        .ok()
        .filter(|f| !f.runners.is_empty() || f.admin.is_some())
        .or_else(|| {
            serde_json::from_str::<BTreeMap<u64, RunnerDetails>>(text)
                .ok()
                .map(|old| File {
                    runners: old
                        .into_iter()
                        .map(|(id, record)| {
                            (
                                id,
                                Known {
                                    seen_at: None,
                                    record,
                                },
                            )
                        })
                        .collect(),
                    admin: None,
                })
        })
        .unwrap_or_default()
}

impl KnownRunners {
    /// What was seen before; nothing when there is no file or it cannot be read. A file of the
    /// earlier layout (records by id, no times) is read as records due for a refresh.
    pub fn load(settings: &Settings) -> Self {
        let Ok(text) = fs_err::read_to_string(path(settings)) else {
            return Self::default();
        };
        let file = parse(&text);
        Self {
            file,
            changed: false,
        }
    }

    pub fn get(&self, id: u64) -> Option<&RunnerDetails> {
        self.file.runners.get(&id).map(|k| &k.record)
    }

    /// The remembered record of `id` is recent enough that a healthy runner needs no read: seen
    /// within `max_age` and not paused (a paused runner is looked at on every run, so its
    /// warning ends with the first run after it is resumed).
    pub fn fresh(&self, id: u64, now: DateTime<Utc>, max_age: std::time::Duration) -> bool {
        self.file
            .runners
            .get(&id)
            .is_some_and(|k| !k.record.paused && age_within(k.seen_at, now, max_age))
    }

    /// Remember a record GitLab just answered with.
    pub fn note_record(&mut self, record: &RunnerDetails, now: DateTime<Utc>) {
        self.file.runners.insert(
            record.id,
            Known {
                seen_at: Some(now),
                record: record.clone(),
            },
        );
        self.changed = true;
    }

    /// The remembered check of this credential, when younger than `max_age`.
    pub fn admin_facts(
        &self,
        cred: &AdminCredential,
        now: DateTime<Utc>,
        max_age: std::time::Duration,
    ) -> Option<&AdminFacts> {
        self.file
            .admin
            .as_ref()
            .filter(|a| a.credential == credential_key(cred))
            .filter(|a| age_within(Some(a.checked_at), now, max_age))
            .map(|a| &a.facts)
    }

    /// Remember the answers of a privileged token that works.
    pub fn note_admin(&mut self, cred: &AdminCredential, facts: &AdminFacts, now: DateTime<Utc>) {
        self.file.admin = Some(KnownAdmin {
            credential: credential_key(cred),
            checked_at: now,
            facts: facts.clone(),
        });
        self.changed = true;
    }

    /// Forget the privileged token's check (it failed): the next run checks it again.
    pub fn forget_admin(&mut self) {
        if self.file.admin.take().is_some() {
            self.changed = true;
        }
    }

    /// Write what changed since `load`; nothing when nothing did.
    pub fn save(&mut self, settings: &Settings) {
        if !self.changed {
            return;
        }
        let file = path(settings);
        let saved = file
            .parent()
            .map_or(Ok(()), fs::private_dir)
            .and_then(|()| {
                fs::write_private(
                    &file,
                    &serde_json::to_vec_pretty(&self.file).unwrap_or_default(),
                    0o600,
                )
            });
        match saved {
            Ok(()) => self.changed = false,
            Err(e) => {
                tracing::warn!(path = %file.display(), error = %e, "could not save the known runner records");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"id": 7, "runner_type": "project_type", "tag_list": ["linux"], "projects": [{"id": 42}]}"#;

    #[test]
    fn records_of_the_earlier_layout_are_kept_and_due_for_a_refresh() {
        let known = KnownRunners {
            file: parse(&format!(r#"{{"7": {RECORD}}}"#)),
            changed: false,
        };
        assert_eq!(known.get(7).unwrap().tag_list, vec!["linux"]);
        let day = std::time::Duration::from_secs(86_400);
        assert!(!known.fresh(7, Utc::now(), day));
    }

    #[test]
    fn a_record_is_fresh_for_record_refresh_unless_paused() {
        let mut known = KnownRunners::default();
        let record: RunnerDetails = serde_json::from_str(RECORD).unwrap();
        let t0 = Utc::now();
        known.note_record(&record, t0);
        let day = std::time::Duration::from_secs(86_400);
        assert!(known.fresh(7, t0 + chrono::Duration::hours(23), day));
        assert!(!known.fresh(7, t0 + chrono::Duration::hours(25), day));
        // Written and read back in this layout.
        let again = parse(&serde_json::to_string(&known.file).unwrap());
        assert_eq!(again.runners[&7].seen_at, Some(t0));
        let paused = RunnerDetails {
            paused: true,
            ..record
        };
        known.note_record(&paused, t0);
        assert!(!known.fresh(7, t0, day));
        assert!(parse("not json").runners.is_empty());
    }
}
