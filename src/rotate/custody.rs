//! The custody rules of a rotation: the checks that keep a token GitLab issued from being lost,
//! misplaced or replaced by garbage, whatever happens around runner-medic.
//!
//! - **Identity, not position.** A new token goes into the entries of config.toml that still hold
//!   the token it replaces (its SHA-256 fingerprint), wherever they are now. Entries that share one
//!   token are one credential: all of them get the new one. An entry whose old token is gone gets
//!   nothing; the token stays in the journal ([`Target`]).
//! - **A token is checked before it is used** ([`validate_token`]): GitLab's answer must look like
//!   a token of the same family as the old one.
//! - **Persist before asking** ([`preflight`], [`Reserve`]): before the first request that makes
//!   GitLab issue a token, config.toml, its directory and the state directory must be writable, and
//!   room for the journal is set aside, so a full disk cannot strike between "issued" and
//!   "recorded".
//! - **Leftovers of a killed run** ([`remove_stale_temps`]): temp files can hold tokens.

use std::path::{Path, PathBuf};

use crate::fs;
use crate::runner_config::RunnerEntry;
use crate::secret::RunnerToken;

/// Where a journalled token belongs in config.toml as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// These entries still hold the old token: write the new one into each.
    Write(Vec<usize>),
    /// Some entry already holds the new token (written before; nothing to do).
    Written(Vec<usize>),
    /// No entry holds the old token or the new one: it was removed or changed by someone else.
    Gone,
}

/// The entries of config.toml as it is now, by token fingerprint (and, for entries without a
/// token, by name): built once per read of the file, so locating every journalled token is
/// linear in the entries.
#[derive(Debug, Default)]
pub struct Holders {
    by_sha: std::collections::HashMap<String, Vec<usize>>,
    tokenless_by_name: std::collections::HashMap<String, Vec<usize>>,
}

impl Holders {
    pub fn of(current: &[RunnerEntry]) -> Self {
        let mut holders = Self::default();
        for e in current {
            let list = match &e.token {
                Some(token) => holders.by_sha.entry(token_sha(token)).or_default(),
                None => holders.tokenless_by_name.entry(e.name.clone()).or_default(),
            };
            list.push(e.index);
        }
        holders
    }

    /// Find the entries a journalled token belongs to, by the old token's fingerprint.
    /// `old_sha` is `None` for an entry that had no token; then the entry is found by its name,
    /// and only while it still has no token.
    pub fn locate(&self, old_sha: Option<&str>, new_sha: &str, name: &str) -> Target {
        let holders = match old_sha {
            Some(old) => self.by_sha.get(old),
            None => self.tokenless_by_name.get(name),
        };
        if let Some(holders) = holders.filter(|h| !h.is_empty()) {
            return Target::Write(holders.clone());
        }
        match self.by_sha.get(new_sha).filter(|w| !w.is_empty()) {
            Some(written) => Target::Written(written.clone()),
            None => Target::Gone,
        }
    }
}

/// [`Holders::locate`] for one token (build [`Holders`] once to locate many).
pub fn locate(current: &[RunnerEntry], old_sha: Option<&str>, new_sha: &str, name: &str) -> Target {
    let holders = Holders::of(current);
    holders.locate(old_sha, new_sha, name)
}

pub fn token_sha(token: &RunnerToken) -> String {
    fs::sha256_hex(token.expose_secret().as_bytes())
}

/// The shortest random part any GitLab runner token format has (reference §1: legacy tokens are
/// 20 characters; `glrt-` tokens carry 20 or more after the prefix; routable ones far more).
const MIN_TOKEN_BODY: usize = 16;
/// Far above any format GitLab issues; a longer answer is not a token.
const MAX_TOKEN_LEN: usize = 1024;

/// Whether GitLab's answer can be a runner token that replaces `old`. GitLab treats tokens as
/// opaque, so this checks only what every format shares: a printable, URL-safe value of sane
/// length with a real random part, and the `glrt-` family when the old token was one.
pub fn validate_token(new: &RunnerToken, old: Option<&RunnerToken>) -> Result<(), String> {
    let value = new.expose_secret();
    if value.is_empty() {
        return Err("GitLab answered with an empty token".into());
    }
    if value.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "GitLab answered with a token of {} bytes (at most {MAX_TOKEN_LEN} are expected)",
            value.len()
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-.~+/=".contains(*c)))
    {
        return Err(format!(
            "GitLab answered with a token containing {bad:?}, which no token format has"
        ));
    }
    let body = match value.find("glrt-") {
        Some(at) => {
            let rest = &value[at + 5..];
            // An optional partition marker `tN_`.
            match rest.split_once('_') {
                Some((marker, after))
                    if marker.len() == 2
                        && marker.starts_with('t')
                        && marker[1..].chars().all(|c| c.is_ascii_hexdigit()) =>
                {
                    after
                }
                _ => rest,
            }
        }
        None => value,
    };
    if body.len() < MIN_TOKEN_BODY {
        return Err(format!(
            "GitLab answered with a token whose random part has {} characters (every format has at least {MIN_TOKEN_BODY})",
            body.len()
        ));
    }
    if let Some(old) = old {
        let glrt = |t: &str| t.starts_with("glrt-") || t.contains("-glrt-");
        if glrt(old.expose_secret()) && !glrt(value) {
            return Err(
                "GitLab answered with a token outside the `glrt-` family of the old one".into(),
            );
        }
    }
    Ok(())
}

/// Why a rotation must not ask GitLab for any token now.
#[derive(Debug, thiserror::Error)]
#[error("{what} `{path}` {why}")]
pub struct NotPersistable {
    pub what: &'static str,
    pub path: PathBuf,
    pub why: String,
}

impl NotPersistable {
    pub fn fix(&self) -> String {
        format!(
            "make `{}` writable (a read-only mount, `chattr +i`, or a full disk) and run again; no token was requested, so nothing was lost",
            self.path.display()
        )
    }
}

/// Bytes the journal of `entries` tokens may take, with room to spare.
pub fn journal_room(entries: usize) -> u64 {
    64 * 1024 + 8 * 1024 * entries as u64
}

/// Prove, before any token-issuing request, that a new token can be kept: config.toml and its
/// directory can be replaced, the state directory can be written, and both file systems have room
/// (config.toml's copy and backup; the journal).
pub fn preflight(
    config_real_path: &Path,
    journal_dir: &Path,
    entries: usize,
) -> Result<(), NotPersistable> {
    use nix::unistd::{access, AccessFlags};
    let config_dir = config_real_path.parent().unwrap_or_else(|| Path::new("."));
    let config_size = std::fs::metadata(config_real_path).map_or(0, |m| m.len());
    for (what, path) in [
        ("config.toml", config_real_path),
        ("the directory of config.toml", config_dir),
        ("the journal directory", journal_dir),
    ] {
        // access(2) as the real user: it sees read-only mounts (EROFS) and immutable files (EPERM).
        if let Err(errno) = access(path, AccessFlags::W_OK) {
            return Err(NotPersistable {
                what,
                path: path.to_path_buf(),
                why: format!("is not writable: {}", errno.desc()),
            });
        }
    }
    for (what, path, need) in [
        (
            "the file system of config.toml",
            config_dir,
            2 * config_size + 64 * 1024,
        ),
        (
            "the state directory",
            journal_dir,
            2 * journal_room(entries),
        ),
    ] {
        match nix::sys::statvfs::statvfs(path) {
            Ok(s) => {
                let free = s.blocks_available() * s.fragment_size();
                if free < need {
                    return Err(NotPersistable {
                        what,
                        path: path.to_path_buf(),
                        why: format!("has {free} bytes free; {need} are needed"),
                    });
                }
            }
            Err(errno) => {
                return Err(NotPersistable {
                    what,
                    path: path.to_path_buf(),
                    why: format!("cannot be checked for free space: {}", errno.desc()),
                })
            }
        }
    }
    Ok(())
}

/// Room set aside in the journal directory before tokens are requested, given back just before
/// the journal is written with them, so the disk cannot fill up in between. It is a temp file
/// ([`fs::temp_file`]) named after [`Reserve::NAME`].
#[derive(Debug)]
pub struct Reserve {
    file: std::sync::Mutex<Option<tempfile::NamedTempFile>>,
}

impl Reserve {
    pub const NAME: &'static str = "runner-medic-reserve";

    pub fn take(journal_dir: &Path, bytes: u64) -> std::io::Result<Self> {
        use std::io::Write;
        // Removed on any error, when dropped.
        let mut file = fs::temp_file(journal_dir, Self::NAME, 0o600)?;
        let chunk = vec![0u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
            file.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        file.as_file().sync_all()?;
        Ok(Self {
            file: std::sync::Mutex::new(Some(file)),
        })
    }

    /// Give the room back (before a journal write that carries tokens).
    pub fn release(&self) {
        let taken = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(file) = taken {
            let _ = file.close();
        }
    }
}

impl Drop for Reserve {
    fn drop(&mut self) {
        self.release();
    }
}

/// Whether `name` is a temp file runner-medic creates (`.<name>.runner-medic-tmp.<random>`), or
/// one an earlier version created (`.<name>.runner-medic-tmp`, `.<name>.tmp.<pid>`, the reserve
/// `.runner-medic-reserve`).
fn is_temp_name(name: &str) -> bool {
    name.starts_with('.')
        && (name.contains(fs::TEMP_MARKER)
            || name.ends_with(".runner-medic-tmp")
            || name.contains(".tmp.")
            || name == ".runner-medic-reserve")
}

/// Remove what a killed run may have left: temp files of config.toml (they hold its text, tokens
/// included), of the journal and of backups, and the journal's reserve. Callers hold the lock of
/// config.toml, so none of these belongs to a live run. Only regular files are removed (a symlink
/// planted under such a name is left alone).
pub fn remove_stale_temps(config_real_path: &Path, dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let mut remove_in = |dir: &Path, wanted: &dyn Fn(&str) -> bool| {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if wanted(&name)
                && entry.file_type().is_ok_and(|t| t.is_file())
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed.push(entry.path());
            }
        }
    };
    if let (Some(dir), Some(name)) = (
        config_real_path.parent(),
        config_real_path.file_name().and_then(|n| n.to_str()),
    ) {
        // Beside config.toml, only config.toml's own temp files: the directory is not ours.
        let current = format!(".{name}{}", fs::TEMP_MARKER);
        let legacy = format!(".{name}.runner-medic-tmp");
        remove_in(dir, &|n: &str| n.starts_with(&current) || n == legacy);
    }
    for dir in dirs {
        remove_in(dir, &is_temp_name);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> RunnerToken {
        RunnerToken::new(s)
    }

    #[test]
    fn real_formats_pass() {
        for ok in [
            "glrt-t1_a0b1c2d3e4f5g6h7i8j9",
            "glrt-t9Wkyj-HGRkqQ-VWTGAr",
            "GR1348941Z196cJVywzZpx_Ki_Cn2",
            "0123456789abcdef0123",
            "acme-glrt-t2_abcdefghijklmnopqrst",
        ] {
            assert_eq!(validate_token(&t(ok), None), Ok(()), "{ok}");
        }
        assert_eq!(
            validate_token(
                &t("glrt-t3_zzzzzzzzzzzzzzzzzzzz"),
                Some(&t("glrt-t1_yyyyyyyyyyyyyyyyyyyy"))
            ),
            Ok(())
        );
    }

    #[test]
    fn garbage_fails() {
        let old = t("glrt-t1_yyyyyyyyyyyyyyyyyyyy");
        for bad in [
            String::new(),
            "glrt-t1_x".to_string(),
            "x".repeat(1025),
            "glrt-t1_abc def ghi jkl mno pqr".to_string(),
            "glrt-t1_abcdefghijklmnopqrst\"".to_string(),
            "0123456789abcdef0123456789".to_string(),
        ] {
            assert!(validate_token(&t(&bad), Some(&old)).is_err(), "{bad:?}");
        }
    }

    fn entry(index: usize, name: &str, token: Option<&str>) -> RunnerEntry {
        RunnerEntry {
            index,
            name: name.into(),
            token: token.map(RunnerToken::new),
            ..RunnerEntry::default()
        }
    }

    #[test]
    fn locate_follows_the_old_token_not_the_position() {
        let old = token_sha(&t("old"));
        let new = token_sha(&t("new"));
        let moved = [entry(0, "b", Some("other")), entry(1, "a", Some("old"))];
        assert_eq!(
            locate(&moved, Some(&old), &new, "a"),
            Target::Write(vec![1])
        );
        let shared = [entry(0, "a", Some("old")), entry(1, "a2", Some("old"))];
        assert_eq!(
            locate(&shared, Some(&old), &new, "a"),
            Target::Write(vec![0, 1])
        );
        let done = [entry(0, "x", Some("new"))];
        assert_eq!(
            locate(&done, Some(&old), &new, "a"),
            Target::Written(vec![0])
        );
        let gone = [entry(0, "a", Some("someone-elses"))];
        assert_eq!(locate(&gone, Some(&old), &new, "a"), Target::Gone);
        let empty = [entry(0, "a", None), entry(1, "b", None)];
        assert_eq!(locate(&empty, None, &new, "b"), Target::Write(vec![1]));
    }
}
