//! Everything that writes to disk goes through here: atomic replace with mode/owner kept,
//! timestamped backups with pruning, private directories, and the per-config lock.

use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use fs_err::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use crate::crash;

/// SHA-256 of some bytes, as a lowercase hex string.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().fold(String::with_capacity(64), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("`{path}` changed on disk since it was read (another program wrote it); nothing was written")]
    ChangedOnDisk { path: PathBuf },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Replace `target` with `contents` atomically: temp file in the same directory, fsync, the
/// original's mode, owner and group, a last check that the file still holds `expected`
/// (so a concurrent writer such as gitlab-runner itself is never overwritten), rename, fsync of
/// the directory. `target` must already be the resolved path (symlinks followed by the caller).
pub fn atomic_replace(
    target: &Path,
    contents: &[u8],
    expected_sha256: Option<&str>,
) -> Result<(), WriteError> {
    let dir = target.parent().unwrap_or_else(|| Path::new("."));
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.runner-medic-tmp"));
    let original = fs_err::metadata(target).ok();

    // A temp file left by a crashed run is ours (callers hold the lock); start clean.
    match fs_err::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let result = (|| -> Result<(), WriteError> {
        let mut file = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        if let Some(meta) = &original {
            // Owner first: chown clears set-id bits, the chmod after it restores the mode.
            // Only root can give a file away; as another user the owner is already ours.
            let _ = std::os::unix::fs::fchown(file.file(), Some(meta.uid()), Some(meta.gid()));
            file.file()
                .set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
        file.sync_all()?;
        drop(file);
        crash::checkpoint("after-temp-write");

        if let Some(expected) = expected_sha256 {
            let now = fs_err::read(target)?;
            if sha256_hex(&now) != expected {
                return Err(WriteError::ChangedOnDisk {
                    path: target.to_path_buf(),
                });
            }
        }
        fs_err::rename(&tmp, target)?;
        crash::checkpoint("after-rename");
        sync_dir(dir)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs_err::remove_file(&tmp);
    }
    result
}

/// fsync a directory so a rename in it survives a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs_err::File::open(dir)?.sync_all()
}

/// Create `dir` and any missing parents with mode 0700 (they hold tokens), and make `dir`
/// itself 0700 if it already existed.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot create `{}`: {e}", dir.display()))
        })?;
    fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Write a small private file (0600) atomically, e.g. the journal or the metrics file.
pub fn write_private(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let mut file = fs_err::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs_err::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Copy `source` into `backup_dir` as `<name>.<UTC timestamp>` with mode 0600, then keep only the
/// newest `keep` backups of that name. Returns the backup's path.
pub fn backup(
    source: &Path,
    contents: &[u8],
    backup_dir: &Path,
    keep: usize,
) -> std::io::Result<PathBuf> {
    private_dir(backup_dir)?;
    let name = source.file_name().map_or_else(
        || "config.toml".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ");
    let path = backup_dir.join(format!("{name}.{stamp}"));
    write_private(&path, contents, 0o600)?;
    prune_backups(backup_dir, &name, keep)?;
    Ok(path)
}

/// The backups of `name` in `backup_dir`, oldest first.
pub fn list_backups(backup_dir: &Path, name: &str) -> std::io::Result<Vec<PathBuf>> {
    let prefix = format!("{name}.");
    let mut found: Vec<PathBuf> = match fs_err::read_dir(backup_dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && !n.starts_with('.'))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    // The timestamp format sorts lexically in time order.
    found.sort();
    Ok(found)
}

fn prune_backups(backup_dir: &Path, name: &str, keep: usize) -> std::io::Result<()> {
    let all = list_backups(backup_dir, name)?;
    let excess = all.len().saturating_sub(keep.max(1));
    for old in &all[..excess] {
        fs_err::remove_file(old)?;
    }
    Ok(())
}

/// An exclusive advisory lock (flock) held for as long as the value lives.
pub struct LockGuard {
    _lock: Flock<std::fs::File>,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another runner-medic run holds the lock `{path}`")]
    Held { path: PathBuf },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The locks of one config.toml **file**, whatever path names it and whatever state directory a
/// run uses: a lock file keyed by its resolved path (so every spelling and symlink meet, and the
/// file that replaces it on a rewrite is covered too), then a lock on the file itself (so hard
/// links meet). The file stays open while the lock is held, so its inode cannot be reused by
/// another file meanwhile. Every run takes them in this order, so none waits for another while
/// holding what that one needs first.
pub fn lock_file(config: &Path, lock_dir: &Path, wait: bool) -> Result<Vec<LockGuard>, LockError> {
    let real = fs_err::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let name = format!(
        "path-{}.lock",
        &sha256_hex(real.as_os_str().as_encoded_bytes())[..16]
    );
    let mut guards = vec![lock(&lock_dir.join(name), wait)?];
    // A file that cannot be opened (none yet, a symlink loop, a directory) has nothing to
    // rotate: diagnose names the cause, and the path lock is held.
    if let Ok(file) = fs_err::File::open(&real) {
        guards.push(flock(file.into_parts().0, &real, wait)?);
    }
    Ok(guards)
}

fn flock(file: std::fs::File, path: &Path, wait: bool) -> Result<LockGuard, LockError> {
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    match Flock::lock(file, arg) {
        Ok(lock) => Ok(LockGuard {
            _lock: lock,
            path: path.to_path_buf(),
        }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockError::Held {
            path: path.to_path_buf(),
        }),
        Err((_, errno)) => Err(LockError::Io(std::io::Error::from(errno))),
    }
}

/// Take the lock at `path`, failing at once if it is held, or waiting for it when `wait` is set.
pub fn lock(path: &Path, wait: bool) -> Result<LockGuard, LockError> {
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let file = fs_err::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?
        .into_parts()
        .0;
    flock(file, path, wait)
}
