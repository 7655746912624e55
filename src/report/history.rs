//! What runner-medic remembers of its own runs, per config.toml, in the state directory: when it
//! last ran and with what exit status, when a run last succeeded, and per runner when it was last
//! checked, its status then and the outcome of its last rotation.
//!
//! Why it exists: `runner-medic list` answers "how were my runners last time?" without asking
//! GitLab, and the metrics carry a failed rotation from run to run until that runner's next
//! rotation, so a "rotation failed" alert does not resolve by itself when the next run merely
//! finds nothing to do. The file holds no token (masked or not): names, ids, times and words.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Outcome, Report, RunnerStatus};

/// The last rotation of one runner: when, which action, and whether it worked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    pub at: DateTime<Utc>,
    pub action: String,
    pub outcome: String,
}

impl Rotation {
    pub fn succeeded(&self) -> bool {
        self.outcome == Outcome::Done.as_str()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunnerState {
    pub name: String,
    pub id: Option<u64>,
    pub last_checked_at: Option<DateTime<Utc>>,
    pub last_status: Option<RunnerStatus>,
    pub last_rotation: Option<Rotation>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RunState {
    #[serde(default)]
    pub version: u32,
    #[serde(default)]
    pub runner_config: String,
    pub last_run_at: Option<DateTime<Utc>>,
    /// The last run that ended with exit status 0.
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_exit_code: Option<u8>,
    #[serde(default)]
    pub runners: Vec<RunnerState>,
}

/// The most runners remembered: entries of runners no longer in config.toml are kept (a
/// config.toml that cannot be read must not wipe the memory) but not for ever.
const MAX_REMEMBERED: usize = 10_000;

impl RunState {
    /// The runner with this id, else (no id known) the first one of that name without an id.
    pub fn runner(&self, id: Option<u64>, name: &str) -> Option<&RunnerState> {
        match id {
            Some(id) => self.runners.iter().find(|r| r.id == Some(id)),
            None => self
                .runners
                .iter()
                .find(|r| r.id.is_none() && r.name == name),
        }
    }

    /// What `list` shows for a config.toml entry: by id; for an entry without an `id` (older
    /// gitlab-runner versions), the one record of that name, which may carry the id GitLab told.
    pub fn for_entry(&self, id: Option<u64>, name: &str) -> Option<&RunnerState> {
        if id.is_some() {
            return self.runner(id, name);
        }
        let mut named = self.runners.iter().filter(|r| r.name == name);
        match (named.next(), named.next()) {
            (Some(only), None) => Some(only),
            _ => self.runner(None, name),
        }
    }

    fn runner_mut(&mut self, id: Option<u64>, name: &str) -> &mut RunnerState {
        let found = match id {
            Some(id) => self.runners.iter().position(|r| r.id == Some(id)),
            None => self
                .runners
                .iter()
                .position(|r| r.id.is_none() && r.name == name),
        };
        let index = found.unwrap_or_else(|| {
            self.runners.push(RunnerState {
                name: name.to_string(),
                id,
                ..RunnerState::default()
            });
            self.runners.len() - 1
        });
        &mut self.runners[index]
    }

    /// Record the end of a run: its time and exit status (every run, whatever the status).
    pub fn record_run(&mut self, at: DateTime<Utc>, exit_code: u8) {
        self.version = 1;
        self.last_run_at = Some(at);
        self.last_exit_code = Some(exit_code);
        if exit_code == 0 {
            self.last_success_at = Some(at);
        }
    }

    /// Record what a (non-dry-run) report says of each runner. A rotation's outcome replaces the
    /// previous one only when this run rotated that runner (done or failed).
    pub fn record_report(&mut self, report: &Report) {
        self.runner_config.clone_from(&report.runner_config);
        for r in &report.runners {
            let status = r.status(report.command);
            let rotation = match (r.action, r.outcome) {
                (Some(action), Some(outcome @ (Outcome::Done | Outcome::Failed))) => {
                    Some(Rotation {
                        at: report.generated_at,
                        action: action.as_str().to_string(),
                        outcome: outcome.as_str().to_string(),
                    })
                }
                _ => None,
            };
            // A recreated runner lives on under its new id, with its history.
            let previous = match (r.id, r.new_id) {
                (Some(old), Some(new)) if old != new => self
                    .runners
                    .iter()
                    .position(|s| s.id == Some(old))
                    .map(|i| self.runners.remove(i)),
                _ => None,
            };
            let entry = self.runner_mut(r.current_id(), &r.name);
            if let Some(previous) = previous {
                entry.last_rotation = previous.last_rotation;
            }
            entry.name.clone_from(&r.name);
            entry.last_checked_at = Some(report.generated_at);
            entry.last_status = Some(status);
            if rotation.is_some() {
                entry.last_rotation = rotation;
            }
        }
        if self.runners.len() > MAX_REMEMBERED {
            let excess = self.runners.len() - MAX_REMEMBERED;
            self.runners.drain(..excess);
        }
    }
}

/// The state file of one config.toml.
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
    /// The config.toml this state is about, as given.
    runner_config: Option<PathBuf>,
}

impl Store {
    /// `state_dir/status/<config key>.json`, beside the journal and backups of that config.toml.
    pub fn new(state_dir: &Path, config_key: &str) -> Self {
        Self {
            path: state_dir.join("status").join(format!("{config_key}.json")),
            runner_config: None,
        }
    }

    /// The config.toml this state is about, for the metrics' `config` label.
    #[must_use]
    pub fn with_runner_config(mut self, runner_config: &Path) -> Self {
        self.runner_config = Some(runner_config.to_path_buf());
        self
    }

    /// The metrics' `config` label: the config.toml path, when more than one config.toml is
    /// watched from this state directory (it records a state for each file runner-medic has
    /// checked); `None` while there is only this one.
    pub fn config_label(&self) -> Option<String> {
        let config = self.runner_config.as_ref()?;
        let dir = self.path.parent()?;
        let others = fs_err::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            // Temp files of an atomic write start with a dot.
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    && *p != self.path
            })
            .count();
        (others > 0).then(|| config.display().to_string())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded state; empty when there is none yet. A file that cannot be read or parsed is
    /// reported in the log and treated as empty: it is a memory, not a source of truth.
    pub fn load(&self) -> RunState {
        match fs_err::read_to_string(&self.path) {
            Ok(text) => serde_json::from_str(&text).unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), error = %e, "the recorded run state is unreadable; starting afresh (it is rewritten after this run)");
                RunState::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RunState::default(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the recorded run state");
                RunState::default()
            }
        }
    }

    /// Save atomically (0600 in a 0700 directory). A failure is logged, never fatal: the run's
    /// work is done by then.
    pub fn save(&self, state: &RunState) {
        let saved = self
            .path
            .parent()
            .map_or(Ok(()), crate::fs::private_dir)
            .and_then(|()| {
                crate::fs::write_private(
                    &self.path,
                    &serde_json::to_vec_pretty(state).unwrap_or_default(),
                    0o600,
                )
            });
        if let Err(e) = saved {
            tracing::warn!(path = %self.path.display(), error = %e, "could not record the run state; `runner-medic list` shows the previous one");
        }
    }
}
