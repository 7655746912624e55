//! The rotation journal: a record, fsynced before and after every step, of what one rotation of
//! one config.toml has done. It holds new tokens until config.toml does, so a crash at any point
//! loses none: the next run finds the journal and completes the rotation first.
//!
//! The file is JSON, mode 0600 in a 0700 directory. It is one of the three places a token may
//! be (with config.toml and its backups), and is removed when the rotation completes.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::crash;
use crate::fs;
use crate::gitlab::CreateRunner;
use crate::report::Action;
use crate::secret::RunnerToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Planned,
    /// A creation request was (maybe) sent; its outcome is uncertain until recorded.
    Requesting,
    Obtained,
    Written,
    Verified,
    OldDeleted,
    /// Given up; nothing further to do for this entry.
    Failed,
    /// No entry of config.toml holds the old token (or the new one) any more: another writer
    /// removed or changed it. The new token stays here, and is written if the old one comes back.
    Gone,
}

impl Step {
    /// A new token that is in no config.toml yet: the journal must keep it.
    pub fn holds_unwritten_token(self) -> bool {
        matches!(self, Step::Obtained | Step::Gone)
    }

    /// Work for this runner is still open (a token to write or a creation to settle): a new
    /// plan for the same runner must wait for it, or it would ask GitLab for a second token.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Step::Planned | Step::Requesting | Step::Obtained | Step::Written | Step::Gone
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalEntry {
    pub index: usize,
    pub name: String,
    pub action: Action,
    pub old_id: Option<u64>,
    /// SHA-256 of the old token, to recognise the entry in config.toml without keeping the token.
    pub old_token_sha256: Option<String>,
    /// Put in `maintenance_note` of a created runner so an uncertain creation can be found.
    pub creation_tag: Option<String>,
    pub create: Option<CreateRunner>,
    pub delete_old: bool,
    pub token_was_dead: bool,
    pub step: Step,
    #[serde(serialize_with = "ser_token", deserialize_with = "de_token", default)]
    pub new_token: Option<RunnerToken>,
    pub new_id: Option<u64>,
    pub new_expires_at: Option<DateTime<Utc>>,
    pub obtained_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// The entries (positions in config.toml as last written) that hold the new token. Entries
    /// that shared the old token all get the new one.
    #[serde(default)]
    pub written_to: Vec<usize>,
}

#[allow(clippy::ref_option)]
fn ser_token<S: Serializer>(t: &Option<RunnerToken>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(t.expose_secret()),
        None => s.serialize_none(),
    }
}

fn de_token<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RunnerToken>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.map(RunnerToken::new))
}

/// A token this run obtains under a lock of the fleet store: where it is to be published, and
/// the lock it was obtained under, so that a run that completes the journal after a crash can
/// publish it (compare-and-swap on `revision`) and let go of the dead run's lock (`lease`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetClaim {
    /// The entry's `index`.
    pub index: usize,
    pub slot: String,
    /// The record's revision when the lock was taken; 0: none.
    pub revision: i64,
    pub lease: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    pub run_id: String,
    pub config_path: PathBuf,
    pub started_at: DateTime<Utc>,
    pub entries: Vec<JournalEntry>,
    /// The service was stopped by this rotation and not yet started again.
    pub service_stopped: bool,
    pub backup: Option<PathBuf>,
    /// Tokens to publish in the fleet store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fleet: Vec<FleetClaim>,
    #[serde(skip)]
    path: PathBuf,
    /// The last failed write of the journal, if any: the run carries on (config.toml is the
    /// first home of a new token) and reports it.
    #[serde(skip)]
    pub save_error: Option<String>,
    /// config.toml could not be read back to confirm the new tokens are in it: keep the journal.
    #[serde(skip)]
    pub unconfirmed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write the journal `{path}`: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the journal `{path}` is unreadable ({reason}); move it aside after checking config.toml"
    )]
    Read { path: PathBuf, reason: String },
}

impl Journal {
    pub fn new(
        path: &Path,
        config_path: &Path,
        run_id: String,
        entries: Vec<JournalEntry>,
    ) -> Self {
        Self {
            version: 1,
            run_id,
            config_path: config_path.to_path_buf(),
            started_at: Utc::now(),
            entries,
            service_stopped: false,
            backup: None,
            fleet: Vec::new(),
            path: path.to_path_buf(),
            save_error: None,
            unconfirmed: false,
        }
    }

    /// The unfinished journal at `path`, if any.
    pub fn load(path: &Path) -> Result<Option<Self>, JournalError> {
        let text = match fs_err::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(JournalError::Read {
                    path: path.to_path_buf(),
                    reason: e.kind().to_string(),
                })
            }
        };
        let mut journal: Journal = serde_json::from_str(&text).map_err(|e| JournalError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        journal.path = path.to_path_buf();
        Ok(Some(journal))
    }

    /// Write the journal durably (temp file, fsync, rename, fsync of the directory).
    pub fn save(&self) -> Result<(), JournalError> {
        write_durably(&self.path, &self.to_bytes())
    }

    fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain data cannot fail.
        serde_json::to_vec_pretty(self).expect("journal serialises")
    }

    /// Save, and if that fails, remember why and carry on: once GitLab has issued a token, stopping
    /// would leave it only in memory, while writing config.toml still keeps it.
    pub fn keep(&mut self) {
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "could not write the journal; carrying on so config.toml gets the new tokens");
            self.save_error = Some(e.to_string());
        }
    }

    /// The rotation is complete: remove the journal.
    pub fn finish(self) -> Result<(), JournalError> {
        match fs_err::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(JournalError::Write {
                    path: self.path.clone(),
                    source,
                })
            }
        }
        if let Some(dir) = self.path.parent() {
            let _ = fs::sync_dir(dir);
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn write_durably(path: &Path, text: &[u8]) -> Result<(), JournalError> {
    let err = |source| JournalError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::private_dir(dir).map_err(err)?;
    }
    fs::write_private(path, text, 0o600).map_err(err)
}

/// A journal that many tasks change at once (one per runner obtaining a token), saved by group
/// commit: a change is durable once a save that began after it has completed. Changes made while
/// a save is under way go to disk together in the next one, so `n` tokens cost far fewer than
/// `n` rewrites and fsyncs of an `n`-entry file, and no task waits for more than the save in
/// flight and its own. The custody rule is unchanged: a task goes on (reports its token, lets
/// anything depend on it) only once [`Shared::durable`] has returned for its change.
pub struct Shared {
    /// The journal and the number of changes made to it so far.
    journal: tokio::sync::Mutex<(Journal, u64)>,
    /// How many changes are on disk; held for the whole of a save, so saves run one at a time
    /// and those waiting behind one find their change saved with the next.
    saved: tokio::sync::Mutex<u64>,
}

/// A change to a [`Shared`] journal, to wait for with [`Shared::durable`].
#[derive(Debug, Clone, Copy)]
#[must_use = "a change is not durable until `durable` returns for it"]
pub struct Change(u64);

impl Shared {
    pub fn new(journal: Journal) -> Self {
        Self {
            journal: tokio::sync::Mutex::new((journal, 0)),
            saved: tokio::sync::Mutex::new(0),
        }
    }

    /// Read the journal as it is in memory.
    pub async fn read<R>(&self, f: impl FnOnce(&Journal) -> R) -> R {
        f(&self.journal.lock().await.0)
    }

    /// Change the journal in memory; the change is on disk once `durable` returns for it.
    pub async fn change<R>(&self, f: impl FnOnce(&mut Journal) -> R) -> (R, Change) {
        let mut guard = self.journal.lock().await;
        let result = f(&mut guard.0);
        guard.1 += 1;
        (result, Change(guard.1))
    }

    /// Wait until `change` is on disk: saved by a save already under way, or by the next one,
    /// which this call makes when no one else has (with every change made until then). The
    /// file is written off the async workers.
    pub async fn durable(&self, change: Change) -> Result<(), JournalError> {
        let mut saved = self.saved.lock().await;
        if *saved >= change.0 {
            return Ok(());
        }
        let (path, text, upto) = {
            let guard = self.journal.lock().await;
            (guard.0.path.clone(), guard.0.to_bytes(), guard.1)
        };
        let written = tokio::task::spawn_blocking(move || write_durably(&path, &text))
            .await
            .unwrap_or_else(|e| {
                Err(JournalError::Write {
                    path: PathBuf::new(),
                    source: std::io::Error::other(e.to_string()),
                })
            });
        written?;
        let batch = upto - *saved;
        *saved = upto;
        tracing::debug!(changes = batch, "journal saved");
        // Every change of the batch is on disk; none of the tasks waiting for it has gone on yet.
        crash::checkpoint("after-journal-batch");
        Ok(())
    }

    /// [`Shared::durable`], and if the save fails, remember why and carry on ([`Journal::keep`]).
    pub async fn keep(&self, change: Change) {
        if let Err(e) = self.durable(change).await {
            tracing::error!(error = %e, "could not write the journal; carrying on so config.toml gets the new tokens");
            self.journal.lock().await.0.save_error = Some(e.to_string());
        }
    }

    pub fn into_inner(self) -> Journal {
        self.journal.into_inner().0
    }

    /// The journal once every task is done. If a save failed on the way, everything is saved
    /// once more: when that works, every change is on disk after all and the failure is no
    /// longer reported (a later save may have carried the changes the failed one did not).
    pub async fn settle(self) -> Journal {
        let failed = self.journal.lock().await.0.save_error.is_some();
        if failed {
            let latest = Change(self.journal.lock().await.1);
            if self.durable(latest).await.is_ok() {
                self.journal.lock().await.0.save_error = None;
            }
        }
        self.into_inner()
    }
}

pub use super::custody::token_sha;
