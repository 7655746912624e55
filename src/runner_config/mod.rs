//! gitlab-runner's config.toml: load it, list its `[[runners]]`, rewrite credentials losslessly
//! and save atomically with a backup.
//!
//! The editor never re-serialises the document. It parses with `toml_edit` to learn the exact
//! byte spans of the values it owns, splices new values into the original text, and re-parses the
//! result to prove that nothing else changed. Every other byte (comments, order, quoting, blank
//! lines, indentation, CRLF, a missing final newline) is carried over untouched.

mod document;
mod edit;
mod save;

use std::path::PathBuf;

pub use document::{
    ConfigFile, RotationDisabled, RunnerEntry, FF_DISABLE_ROTATION, MAX_CONFIG_BYTES,
};
pub use edit::{format_datetime, Credentials, NEW_TOKEN_PLACEHOLDER};
pub use save::{SaveOptions, Saved};

/// What can go wrong with config.toml itself. Each variant names the file; those about a place
/// in it carry the line and column (1-based).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read `{path}`: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("`{path}:{line}:{column}` is not valid TOML: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("runner `{runner}` (`{path}:{line}`) has no `{key}`; it cannot be rewritten")]
    EntryIncomplete {
        path: PathBuf,
        runner: String,
        line: usize,
        key: &'static str,
    },
    #[error("runner `{runner}` (`{path}:{line}`): {message}")]
    Unsupported {
        path: PathBuf,
        runner: String,
        line: usize,
        message: String,
    },
    #[error("the rewritten `{path}` failed its self-check ({message}); nothing was written")]
    SelfCheck { path: PathBuf, message: String },
    #[error(transparent)]
    Write(#[from] crate::fs::WriteError),
    #[error("cannot back up `{path}`: {source}")]
    Backup {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// The command an operator can run, or the edit to make, to get past this error.
    pub fn fix(&self) -> String {
        match self {
            Error::Unreadable { path, .. } => format!(
                "check that `{}` exists, is a regular file and is readable by this user (`ls -l {}`)",
                path.display(),
                path.display()
            ),
            Error::Invalid { path, line, .. } => format!(
                "correct the syntax at `{}:{line}` (or restore a backup), then run `runner-medic diagnose`",
                path.display()
            ),
            Error::EntryIncomplete { key, .. } => {
                format!("add `{key}` to the entry, or re-register the runner")
            }
            Error::Unsupported { .. } => "edit the entry by hand".into(),
            Error::SelfCheck { .. } => "report this as a bug; the file was left as it was".into(),
            Error::Write(crate::fs::WriteError::ChangedOnDisk { .. }) => {
                "run the command again; it re-reads the file".into()
            }
            Error::Write(_) | Error::Backup { .. } => {
                "check free space and permissions of the directory".into()
            }
        }
    }
}

/// 1-based line and column of a byte offset in `text`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text.as_bytes()[..offset];
    // Files are at most 16 MiB and this runs once per error: a plain count is enough.
    #[allow(clippy::naive_bytecount)]
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}
