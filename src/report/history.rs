//! What runner-medic remembers of its own runs, per config.toml, in the state directory: when it
//! last ran and with what exit status, when a run last succeeded, and per runner when it was last
//! checked, its status then and the outcome of its last rotation.
//!
//! Why it exists: `runner-medic list` answers "how were my runners last time?" without asking
//! GitLab, and the metrics carry a failed rotation from run to run until that runner's next
//! rotation, so a "rotation failed" alert does not resolve by itself when the next run merely
//! finds nothing to do. The file holds no token (masked or not): names, ids, times and words.

use std::collections::HashMap;
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
    /// The runners by id and by name, built once: looking runners up one by one in the list
    /// would cost runners × remembered string comparisons (minutes for 100 000 runners).
    pub fn lookup(&self) -> Lookup<'_> {
        Lookup::new(&self.runners)
    }

    /// The runner with this id, else (no id known) the first one of that name without an id.
    pub fn runner(&self, id: Option<u64>, name: &str) -> Option<&RunnerState> {
        self.lookup().runner(id, name)
    }

    /// What `list` shows for a config.toml entry: by id; for an entry without an `id` (older
    /// gitlab-runner versions), the one record of that name, which may carry the id GitLab told.
    pub fn for_entry(&self, id: Option<u64>, name: &str) -> Option<&RunnerState> {
        self.lookup().for_entry(id, name)
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
        let mut by_id: HashMap<u64, usize> = HashMap::new();
        let mut by_name: HashMap<String, usize> = HashMap::new();
        for (i, s) in self.runners.iter().enumerate() {
            match s.id {
                Some(id) => {
                    by_id.entry(id).or_insert(i);
                }
                None => {
                    by_name.entry(s.name.clone()).or_insert(i);
                }
            }
        }
        let mut removed = vec![false; self.runners.len()];
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
                (Some(old), Some(new)) if old != new => by_id.remove(&old).map(|i| {
                    removed[i] = true;
                    self.runners[i].last_rotation.take()
                }),
                _ => None,
            };
            let id = r.current_id();
            let found = match id {
                Some(id) => by_id.get(&id).copied(),
                None => by_name.get(&r.name).copied(),
            };
            let index = found.unwrap_or_else(|| {
                self.runners.push(RunnerState {
                    name: r.name.clone(),
                    id,
                    ..RunnerState::default()
                });
                removed.push(false);
                let at = self.runners.len() - 1;
                match id {
                    Some(id) => by_id.insert(id, at),
                    None => by_name.insert(r.name.clone(), at),
                };
                at
            });
            let entry = &mut self.runners[index];
            if let Some(previous) = previous {
                entry.last_rotation = previous;
            }
            entry.name.clone_from(&r.name);
            entry.last_checked_at = Some(report.generated_at);
            entry.last_status = Some(status);
            if rotation.is_some() {
                entry.last_rotation = rotation;
            }
        }
        if removed.contains(&true) {
            let mut at = 0;
            self.runners.retain(|_| {
                at += 1;
                !removed[at - 1]
            });
        }
        if self.runners.len() > MAX_REMEMBERED {
            let excess = self.runners.len() - MAX_REMEMBERED;
            self.runners.drain(..excess);
        }
    }
}

/// The remembered runners indexed by id and by name ([`RunState::lookup`]).
pub struct Lookup<'a> {
    runners: &'a [RunnerState],
    by_id: HashMap<u64, usize>,
    /// Runners without an id, by name: the first of each.
    by_name_without_id: HashMap<&'a str, usize>,
    /// Every runner by name: the first of each and how many there are.
    by_name: HashMap<&'a str, (usize, usize)>,
}

impl<'a> Lookup<'a> {
    fn new(runners: &'a [RunnerState]) -> Self {
        let mut by_id = HashMap::new();
        let mut by_name_without_id = HashMap::new();
        let mut by_name: HashMap<&str, (usize, usize)> = HashMap::new();
        for (i, r) in runners.iter().enumerate() {
            match r.id {
                Some(id) => {
                    by_id.entry(id).or_insert(i);
                }
                None => {
                    by_name_without_id.entry(r.name.as_str()).or_insert(i);
                }
            }
            by_name.entry(r.name.as_str()).or_insert((i, 0)).1 += 1;
        }
        Self {
            runners,
            by_id,
            by_name_without_id,
            by_name,
        }
    }

    /// The runner with this id, else (no id known) the first one of that name without an id.
    pub fn runner(&self, id: Option<u64>, name: &str) -> Option<&'a RunnerState> {
        let index = match id {
            Some(id) => self.by_id.get(&id),
            None => self.by_name_without_id.get(name),
        };
        index.map(|&i| &self.runners[i])
    }

    /// What `list` shows for a config.toml entry: by id; for an entry without an `id` (older
    /// gitlab-runner versions), the one record of that name, which may carry the id GitLab told.
    pub fn for_entry(&self, id: Option<u64>, name: &str) -> Option<&'a RunnerState> {
        if id.is_some() {
            return self.runner(id, name);
        }
        match self.by_name.get(name) {
            Some(&(only, 1)) => Some(&self.runners[only]),
            _ => self.runner(None, name),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Action, ReportCommand, RunnerReport};

    fn runner(name: &str, id: Option<u64>) -> RunnerReport {
        RunnerReport::new(name.into(), id, 1)
    }

    fn report(runners: Vec<RunnerReport>) -> Report {
        let mut r = Report::new(ReportCommand::Rotate, "config.toml".into(), None);
        r.runners = runners;
        r
    }

    #[test]
    fn a_recreated_runner_keeps_its_history_under_its_new_id() {
        let mut state = RunState::default();
        let mut first = runner("build", Some(7));
        first.action = Some(Action::Reset);
        first.outcome = Some(Outcome::Done);
        state.record_report(&report(vec![first, runner("other", Some(8))]));
        assert_eq!(state.runners.len(), 2);
        let mut recreated = runner("build", Some(7));
        recreated.action = Some(Action::Recreate);
        recreated.outcome = Some(Outcome::Failed);
        recreated.new_id = Some(9);
        // Failed, but with a new id: the record moves; its last rotation is this run's.
        state.record_report(&report(vec![recreated, runner("other", Some(8))]));
        assert_eq!(state.runners.len(), 2, "{:?}", state.runners);
        assert!(state.runner(Some(7), "build").is_none());
        let moved = state.runner(Some(9), "build").unwrap();
        assert_eq!(moved.last_rotation.as_ref().unwrap().outcome, "failed");
        // A run without a rotation keeps the last one.
        state.record_report(&report(vec![runner("build", Some(9))]));
        let kept = state.runner(Some(9), "build").unwrap();
        assert_eq!(kept.last_rotation.as_ref().unwrap().action, "recreate");
    }

    #[test]
    fn entries_without_an_id_are_found_by_name_and_a_lone_name_by_list() {
        let mut state = RunState::default();
        state.record_report(&report(vec![
            runner("a", None),
            runner("b", Some(2)),
            runner("b", Some(3)),
        ]));
        // Recorded twice without an id: one record.
        state.record_report(&report(vec![runner("a", None)]));
        assert_eq!(state.runners.len(), 3);
        let lookup = state.lookup();
        assert_eq!(lookup.runner(None, "a").unwrap().name, "a");
        assert_eq!(lookup.runner(Some(3), "b").unwrap().id, Some(3));
        assert!(
            lookup.runner(None, "b").is_none(),
            "no record of b without an id"
        );
        // `list` of an entry without an id: the one record of that name...
        assert_eq!(lookup.for_entry(None, "a").unwrap().name, "a");
        // ...but never a guess between two.
        assert!(lookup.for_entry(None, "b").is_none());
    }
}
