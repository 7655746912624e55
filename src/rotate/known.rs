//! What runner-medic last saw of each runner record, so that a runner deleted in GitLab can be
//! recreated with its own settings (type, group or project, tags, flags) even without a
//! template. rotate refreshes it from every record it reads; nothing here is secret (records
//! carry no token), but it lives in the private state directory with the rest.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::diagnose::{Diagnosis, Record};
use crate::fs;
use crate::gitlab::RunnerDetails;
use crate::settings::Settings;

#[derive(Debug, Default)]
pub struct KnownRunners {
    by_id: BTreeMap<u64, RunnerDetails>,
}

fn path(settings: &Settings) -> PathBuf {
    settings
        .state_dir
        .join("known-runners")
        .join(format!("{}.json", settings.config_key()))
}

impl KnownRunners {
    /// The records seen before; none when there is no file or it cannot be read (it is a cache).
    pub fn load(settings: &Settings) -> Self {
        let by_id = fs_err::read_to_string(path(settings))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Self { by_id }
    }

    pub fn get(&self, id: u64) -> Option<&RunnerDetails> {
        self.by_id.get(&id)
    }

    /// Remember every record the diagnosis read, and save.
    pub fn remember(&mut self, settings: &Settings, diagnosis: &Diagnosis) {
        let mut changed = false;
        for facts in &diagnosis.facts {
            if let Record::Exists(details) = &facts.record {
                self.by_id.insert(details.id, (**details).clone());
                changed = true;
            }
        }
        if !changed {
            return;
        }
        let file = path(settings);
        let saved = file
            .parent()
            .map_or(Ok(()), fs::private_dir)
            .and_then(|()| {
                fs::write_private(
                    &file,
                    &serde_json::to_vec_pretty(&self.by_id).unwrap_or_default(),
                    0o600,
                )
            });
        if let Err(e) = saved {
            tracing::warn!(path = %file.display(), error = %e, "could not save the known runner records");
        }
    }
}
