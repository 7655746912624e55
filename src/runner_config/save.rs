//! Saving a rewritten config.toml: backup first, then an atomic replace that refuses to clobber a
//! file that changed since it was read.

use std::path::{Path, PathBuf};

use super::{ConfigFile, Error};
use crate::{crash, fs};

pub struct SaveOptions<'a> {
    /// Where timestamped backups go (created 0700; each backup 0600).
    pub backup_dir: &'a Path,
    /// How many backups of this file to keep.
    pub keep_backups: usize,
}

#[derive(Debug, Clone)]
pub struct Saved {
    pub backup: PathBuf,
}

impl ConfigFile {
    /// Write `new_text` over the file this was loaded from (the symlink's target, not the link).
    pub fn save(&self, new_text: &str, opts: &SaveOptions<'_>) -> Result<Saved, Error> {
        let backup = fs::backup(
            &self.real_path,
            self.text.as_bytes(),
            opts.backup_dir,
            opts.keep_backups,
        )
        .map_err(|source| Error::Backup {
            path: opts.backup_dir.to_path_buf(),
            source,
        })?;
        crash::checkpoint("after-backup");
        fs::atomic_replace(&self.real_path, new_text.as_bytes(), Some(&self.sha256))?;
        Ok(Saved { backup })
    }
}
