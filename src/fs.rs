//! Everything that writes to disk goes through here: atomic replace with mode/owner kept,
//! timestamped backups with pruning, private directories, and the per-config lock.

use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

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

/// Every temp file runner-medic creates is named `.<name>` + this + random characters, in the
/// directory of the file it becomes: `rotate::custody::remove_stale_temps` finds what a killed run
/// left by it.
pub const TEMP_MARKER: &str = ".runner-medic-tmp.";

/// A new, empty file of `mode` in `dir`, named `.<name>.runner-medic-tmp.<random>`: created with
/// `O_CREAT|O_EXCL` (so never through a symlink or over another file), and removed again unless
/// it is persisted. Its mode is set on the descriptor (whatever the umask), which is safe because
/// the file is ours.
pub fn temp_file(dir: &Path, name: &str, mode: u32) -> std::io::Result<tempfile::NamedTempFile> {
    let file = tempfile::Builder::new()
        .prefix(&format!(".{name}{TEMP_MARKER}"))
        .rand_bytes(12)
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot create a temp file in `{}`: {e}", dir.display()),
            )
        })?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    Ok(file)
}

fn file_name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(|e| persist_error(e, path))`
fn persist_error(e: tempfile::PersistError, target: &Path) -> std::io::Error {
    std::io::Error::new(
        e.error.kind(),
        format!("cannot rename into `{}`: {}", target.display(), e.error),
    )
}

/// Replace `target` with `contents` atomically: temp file in the same directory (see
/// [`temp_file`]), fsync, the original's mode, owner and group, a last check that the file still
/// holds `expected` (so a concurrent writer such as gitlab-runner itself is never overwritten),
/// rename, fsync of the directory. `target` must already be the resolved path (symlinks followed
/// by the caller).
pub fn atomic_replace(
    target: &Path,
    contents: &[u8],
    expected_sha256: Option<&str>,
) -> Result<(), WriteError> {
    let dir = target.parent().unwrap_or_else(|| Path::new("."));
    let original = fs_err::metadata(target).ok();
    // Dropped on any error below, which removes it.
    let mut tmp = temp_file(dir, &file_name_of(target), 0o600)?;
    tmp.write_all(contents)?;
    if let Some(meta) = &original {
        // Owner first: chown clears set-id bits, the chmod after it restores the mode. Both act
        // on the temp file's descriptor, a file this run created. Only root can give a file
        // away; as another user the owner is already ours.
        let _ = std::os::unix::fs::fchown(tmp.as_file(), Some(meta.uid()), Some(meta.gid()));
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    tmp.as_file().sync_all()?;
    crash::checkpoint("after-temp-write");

    if let Some(expected) = expected_sha256 {
        let now = fs_err::read(target)?;
        if sha256_hex(&now) != expected {
            return Err(WriteError::ChangedOnDisk {
                path: target.to_path_buf(),
            });
        }
    }
    tmp.persist(target).map_err(|e| persist_error(e, target))?;
    crash::checkpoint("after-rename");
    sync_dir(dir)?;
    Ok(())
}

/// fsync a directory so a rename in it survives a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs_err::File::open(dir)?.sync_all()
}

/// Which directories runner-medic accepts to write in, like OpenSSH's `StrictModes`: each
/// directory from `/` down must be owned by root or by this user, and not writable by group or
/// others, or whoever else can write there could swap the files runner-medic writes (a symlink, a
/// renamed journal). A parent with the sticky bit (`/tmp`) is accepted: nobody else can rename or
/// remove what runner-medic puts there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirUse {
    /// Holds tokens (state, journal, backups, locks): the directory itself must not be group- or
    /// world-writable, sticky bit or not.
    Private,
    /// Holds files anyone may read (the metrics file): a group- or world-writable directory is
    /// accepted when its sticky bit is set, as for a parent.
    Shared,
}

/// A directory runner-medic refuses to write in, with the fix.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct UnsafeDir {
    pub path: PathBuf,
    pub message: String,
    pub fix: String,
}

/// Check `dir` (when it exists) and every directory above it, see [`DirUse`]. `what` names the
/// directory for the message (`the state directory`).
pub fn check_dir(dir: &Path, what: &str, usage: DirUse) -> Result<(), UnsafeDir> {
    let euid = nix::unistd::geteuid().as_raw();
    // A symlink on the way that someone else owns could be pointed anywhere (a link planted in
    // `/tmp` aimed at a directory of root's): refused like a directory of theirs.
    for part in dir.ancestors() {
        if let Ok(meta) = std::fs::symlink_metadata(part) {
            let uid = meta.uid();
            if meta.file_type().is_symlink() && uid != 0 && uid != euid {
                return Err(UnsafeDir {
                    path: part.to_path_buf(),
                    message: format!(
                        "{what} `{}` is unsafe: `{}` is a symlink owned by uid {uid}, not by root or this user, who could point it anywhere",
                        dir.display(),
                        part.display()
                    ),
                    fix: format!(
                        "replace `{}` by a directory (or a link) of root's, or choose another directory",
                        part.display()
                    ),
                });
            }
        }
    }
    // The deepest part that exists, with symlinks resolved: the directories that really hold it.
    let mut existing = dir.to_path_buf();
    let mut is_target = true;
    let real = loop {
        if let Ok(real) = std::fs::canonicalize(&existing) {
            break real;
        }
        is_target = false;
        if !existing.pop() || existing.as_os_str().is_empty() {
            break std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        }
    };
    let mut current = Some(real.as_path());
    let mut first = true;
    while let Some(path) = current {
        let own = first && is_target;
        first = false;
        current = path.parent();
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let shown = path.display();
        let mode = meta.mode() & 0o7777;
        let uid = meta.uid();
        if uid != 0 && uid != euid {
            let owner = nix::unistd::User::from_uid(uid.into())
                .ok()
                .flatten()
                .map_or_else(
                    || format!("uid {uid}"),
                    |u| format!("`{}` (uid {uid})", u.name),
                );
            return Err(UnsafeDir {
                path: path.to_path_buf(),
                message: format!(
                    "{what} `{}` is unsafe: `{shown}` is owned by {owner}, not by root or this user, who could replace the files runner-medic writes there",
                    dir.display()
                ),
                fix: format!(
                    "`chown root {shown}` (or `chown {euid} {shown}`), or choose a directory that only root or this user can change"
                ),
            });
        }
        let sticky = mode & 0o1000 != 0;
        let sticky_ok = sticky && (!own || usage == DirUse::Shared);
        if mode & 0o022 != 0 && !sticky_ok {
            let fix = if own && usage == DirUse::Private {
                format!("`chmod 0700 {shown}`, or choose another directory")
            } else {
                format!("`chmod go-w {shown}`, or choose another directory")
            };
            return Err(UnsafeDir {
                path: path.to_path_buf(),
                message: format!(
                    "{what} `{}` is unsafe: `{shown}` is writable by {} (mode {mode:04o}){}; others could replace the files runner-medic writes there",
                    dir.display(),
                    if mode & 0o002 != 0 { "everyone" } else { "its group" },
                    if sticky { "" } else { " without the sticky bit" },
                ),
                fix,
            });
        }
    }
    Ok(())
}

/// Create `dir` and any missing parents with mode 0700 (they hold tokens), after checking the
/// directories that already exist ([`check_dir`], [`DirUse::Private`]). A directory that already
/// existed is never chmodded or chowned: one that is not safe as it is is refused.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    ensure_private_dir(dir, "the directory").map_err(|e| match e {
        DirError::Unsafe(u) => std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{u}; fix: {}", u.fix),
        ),
        DirError::Io(e) => e,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error(transparent)]
    Unsafe(#[from] UnsafeDir),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// [`private_dir`], keeping an unsafe directory apart so that callers can show its fix.
pub fn ensure_private_dir(dir: &Path, what: &str) -> Result<(), DirError> {
    use std::os::unix::fs::DirBuilderExt;
    check_dir(dir, what, DirUse::Private)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot create `{}`: {e}", dir.display()))
        })?;
    // Again, now that it exists: another user may have made it between the check and mkdir.
    check_dir(dir, what, DirUse::Private)?;
    Ok(())
}

/// Write a small file atomically (the journal, the metrics file, known runner records): a new
/// temp file of `mode` beside `path` ([`temp_file`]), fsync, rename over `path` (a symlink planted
/// there is replaced, never followed), fsync of the directory.
pub fn write_private(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = temp_file(dir, &file_name_of(path), mode)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| persist_error(e, path))?;
    sync_dir(dir)
}

/// Write a new file at `path`, which must not exist: like [`write_private`], but the rename is
/// refused when anything (a file, a symlink) is already there.
pub fn write_new_private(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = temp_file(dir, &file_name_of(path), mode)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist_noclobber(path)
        .map_err(|e| persist_error(e, path))?;
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
    write_new_private(&path, contents, 0o600)?;
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
/// The lock file is opened with `O_NOFOLLOW` and must be a regular file; a missing one is created
/// as a temp file and linked into place, so a symlink planted at its name is never followed and no
/// file runner-medic did not create is ever changed.
pub fn lock(path: &Path, wait: bool) -> Result<LockGuard, LockError> {
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    let file = open_lock_file(path)?;
    flock(file, path, wait)
}

fn open_lock_file(path: &Path) -> std::io::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut last = None;
    for _ in 0..5 {
        let mut options = std::fs::OpenOptions::new();
        std::os::unix::fs::OpenOptionsExt::custom_flags(
            options.read(true).write(true),
            (OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits(),
        );
        match options.open(path) {
            Ok(file) => {
                if !file.metadata()?.is_file() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("the lock file `{}` is not a regular file", path.display()),
                    ));
                }
                return Ok(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let tmp = temp_file(dir, &file_name_of(path), 0o600)?;
                match tmp.persist_noclobber(path) {
                    Ok(file) => return Ok(file),
                    // Another run created it meanwhile: open theirs.
                    Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists => {
                        last = Some(e.error);
                    }
                    Err(e) => return Err(persist_error(e, path)),
                }
            }
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "the lock file `{}` is a symlink; runner-medic does not follow it",
                        path.display()
                    ),
                ));
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot open the lock file `{}`: {e}", path.display()),
                ))
            }
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("cannot create the lock file")))
}
