//! Loading config.toml and listing its `[[runners]]` entries.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use toml_edit::{Document, Item, Table, Value};

use super::{line_col, Error};
use crate::fs::sha256_hex;
use crate::secret::RunnerToken;

/// A larger config.toml is refused: real ones are a few KiB, and reading a runaway file into
/// memory as root is how a tool takes a host down.
pub const MAX_CONFIG_BYTES: u64 = 16 * 1024 * 1024;

/// A loaded config.toml: the path as given, the file it resolves to, and the original text.
pub struct ConfigFile {
    /// The path the operator named (may be a symlink).
    pub path: PathBuf,
    /// The regular file behind `path`; writes go here so a symlink stays a symlink.
    pub real_path: PathBuf,
    /// The bytes as read, decoded as UTF-8 (TOML requires it).
    pub text: String,
    /// SHA-256 of `text`, to refuse a write when the file changed since it was read.
    pub sha256: String,
    pub(super) doc: Document<String>,
    /// Byte offset of the start of each line, so that a line number costs a binary search, not a
    /// scan of the file (runners × file size on a large config.toml).
    line_starts: Vec<usize>,
}

/// One `[[runners]]` entry as read. Values that are absent or of the wrong type are `None`; the
/// `*_problem` fields say what was wrong so diagnose can name it.
#[derive(Debug, Clone, Default)]
pub struct RunnerEntry {
    /// Position among the `[[runners]]` entries (0-based).
    pub index: usize,
    /// `name`, or `#N` (1-based) when the entry has none.
    pub name: String,
    /// Line of the `[[runners]]` header (1-based).
    pub line: usize,
    pub url: Option<String>,
    pub url_line: Option<usize>,
    /// `id`, when present and a positive integer (gitlab-runner writes 0 for "unknown").
    pub id: Option<u64>,
    pub token: Option<RunnerToken>,
    pub token_line: Option<usize>,
    /// Why `token` is unusable although the key exists (wrong type).
    pub token_problem: Option<String>,
    pub token_obtained_at: Option<DateTime<Utc>>,
    /// `None` when absent or the Go zero time, which both mean "never expires".
    pub token_expires_at: Option<DateTime<Utc>>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub executor: Option<String>,
    /// Where `FF_DISABLE_AUTOMATIC_TOKEN_ROTATION` is turned on for this entry, when it is:
    /// the operator manages its token elsewhere.
    pub rotation_disabled: Option<RotationDisabled>,
}

/// `FF_DISABLE_AUTOMATIC_TOKEN_ROTATION = true` (gitlab-runner 17.0+, reference §6.2, §7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotationDisabled {
    /// `[runners.feature_flags]` or `environment`.
    pub place: &'static str,
    pub line: Option<usize>,
}

pub const FF_DISABLE_ROTATION: &str = "FF_DISABLE_AUTOMATIC_TOKEN_ROTATION";

impl ConfigFile {
    /// Read and parse `path`. Anything that keeps us from understanding the file is an `Error`
    /// naming the file (and line and column for syntax errors).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let unreadable = |reason: String| Error::Unreadable {
            path: path.to_path_buf(),
            reason,
        };
        let real_path = fs_err::canonicalize(path).map_err(|e| unreadable(io_reason(&e)))?;
        let meta = fs_err::metadata(&real_path).map_err(|e| unreadable(io_reason(&e)))?;
        if !meta.is_file() {
            return Err(unreadable("it is not a regular file".into()));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(unreadable(format!(
                "it is {} bytes, more than the {} a config.toml can sensibly be",
                meta.len(),
                MAX_CONFIG_BYTES
            )));
        }
        let bytes = fs_err::read(&real_path).map_err(|e| unreadable(io_reason(&e)))?;
        Self::parse(path, real_path, bytes)
    }

    fn parse(path: &Path, real_path: PathBuf, bytes: Vec<u8>) -> Result<Self, Error> {
        let sha256 = sha256_hex(&bytes);
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                let offset = e.utf8_error().valid_up_to();
                let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
                let (line, column) = line_col(&text, offset);
                return Err(Error::Invalid {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: "the file is not UTF-8 text".into(),
                });
            }
        };
        let doc = Document::parse(text.clone()).map_err(|e| {
            let (line, column) = e.span().map_or((1, 1), |s| line_col(&text, s.start));
            let message = e
                .message()
                .trim()
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("; ");
            Error::Invalid {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        })?;
        if let Some(item) = doc.as_table().get("runners") {
            if !item.is_array_of_tables() {
                let (line, column) = item.span().map_or((1, 1), |s| line_col(&text, s.start));
                return Err(Error::Invalid {
                    path: path.to_path_buf(),
                    line,
                    column,
                    message: "`runners` must be written as `[[runners]]` tables".into(),
                });
            }
        }
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(at, _)| at + 1))
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            real_path,
            text,
            sha256,
            doc,
            line_starts,
        })
    }

    /// The `[[runners]]` tables in file order.
    pub(super) fn runner_tables(&self) -> Vec<&Table> {
        self.doc
            .as_table()
            .get("runners")
            .and_then(Item::as_array_of_tables)
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    }

    pub fn runners(&self) -> Vec<RunnerEntry> {
        self.runner_tables()
            .into_iter()
            .enumerate()
            .map(|(index, table)| self.entry(index, table))
            .collect()
    }

    /// 1-based line of a byte offset (as [`line_col`], in O(log lines)).
    pub fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        // The number of lines starting at or before `offset`.
        self.line_starts.partition_point(|start| *start <= offset)
    }

    fn value_line(&self, table: &Table, key: &str) -> Option<usize> {
        table
            .get(key)
            .and_then(Item::span)
            .map(|s| self.line_of(s.start))
    }

    fn entry(&self, index: usize, table: &Table) -> RunnerEntry {
        let line = table.span().map_or(1, |s| self.line_of(s.start));
        let string = |key: &str| table.get(key).and_then(Item::as_str).map(str::to_string);
        let (token, token_problem) = match table.get("token") {
            None => (None, None),
            Some(item) => match item.as_str() {
                Some(s) => (Some(RunnerToken::new(s)), None),
                None => (
                    None,
                    Some(format!("`token` is a {}, not a string", item.type_name())),
                ),
            },
        };
        RunnerEntry {
            index,
            name: string("name").unwrap_or_else(|| format!("#{}", index + 1)),
            line,
            url: string("url"),
            url_line: self.value_line(table, "url"),
            id: table
                .get("id")
                .and_then(Item::as_integer)
                .and_then(|i| u64::try_from(i).ok())
                .filter(|i| *i > 0),
            token,
            token_line: self.value_line(table, "token"),
            token_problem,
            token_obtained_at: datetime(table.get("token_obtained_at")),
            token_expires_at: datetime(table.get("token_expires_at")),
            tls_ca_file: string("tls-ca-file").map(PathBuf::from),
            tls_cert_file: string("tls-cert-file").map(PathBuf::from),
            tls_key_file: string("tls-key-file").map(PathBuf::from),
            executor: string("executor"),
            rotation_disabled: self.rotation_disabled(table),
        }
    }

    /// gitlab-runner's rotation reads the flag from `[runners.feature_flags]` only
    /// (`RunnerSettings.IsFeatureFlagOn`, gitlab-org/gitlab-runner `common/config.go`, called by
    /// `resetOneRunnerToken` in `commands/multi.go`), where it is a TOML boolean. A
    /// `FF_DISABLE_AUTOMATIC_TOKEN_ROTATION=true` in the entry's `environment` list does not stop
    /// gitlab-runner (that list reaches jobs only), but it states the same intent, so runner-medic
    /// honours it too: leaving a token alone is the safe side.
    fn rotation_disabled(&self, table: &Table) -> Option<RotationDisabled> {
        if let Some(flag) = table
            .get("feature_flags")
            .and_then(Item::as_table_like)
            .and_then(|t| t.get(FF_DISABLE_ROTATION))
        {
            if flag.as_bool() == Some(true) {
                return Some(RotationDisabled {
                    place: "[runners.feature_flags]",
                    line: flag.span().map(|s| self.line_of(s.start)),
                });
            }
        }
        let environment = table.get("environment")?;
        let set = environment.as_array()?.iter().any(|v| {
            v.as_str()
                .and_then(|e| e.split_once('='))
                .is_some_and(|(k, v)| k.trim() == FF_DISABLE_ROTATION && go_parse_bool(v.trim()))
        });
        set.then(|| RotationDisabled {
            place: "environment",
            line: environment.span().map(|s| self.line_of(s.start)),
        })
    }
}

/// Go's `strconv.ParseBool` true values, which gitlab-runner's feature flags use.
fn go_parse_bool(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True")
}

/// A TOML datetime or an RFC 3339 string (gitlab-runner reads both); the Go zero time
/// (`0001-01-01T00:00:00Z`) means "not set".
fn datetime(item: Option<&Item>) -> Option<DateTime<Utc>> {
    let text = match item?.as_value()? {
        Value::Datetime(d) => d.value().to_string(),
        Value::String(s) => s.value().clone(),
        _ => return None,
    };
    let parsed = DateTime::parse_from_rfc3339(text.trim())
        .ok()?
        .with_timezone(&Utc);
    (parsed.timestamp() > 0).then_some(parsed)
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => {
            // fs-err puts the path in its message; keep only the OS reason.
            e.get_ref()
                .and_then(|inner| inner.source())
                .map_or_else(|| e.to_string(), std::string::ToString::to_string)
        }
    }
}

#[cfg(test)]
mod toml11_tests {
    use super::*;

    fn load(text: &str) -> Result<ConfigFile, Error> {
        ConfigFile::parse(
            Path::new("config.toml"),
            PathBuf::from("config.toml"),
            text.as_bytes().to_vec(),
        )
    }

    /// gitlab-runner 18.9+ reads TOML 1.1 (BurntSushi/toml); so does runner-medic.
    #[test]
    fn toml_1_1_syntax_is_read() {
        let base = "concurrent = 1\n[[runners]]\n  name = \"a\"\n  token = \"glrt-abc\"\n";
        for extra in [
            "  env = { A = \"1\",\n    B = \"2\" }\n",
            "  env = { A = \"1\", }\n",
            "  note = \"\\e[0m\"\n",
            "  note = \"\\x41\"\n",
            "  token_obtained_at = 2026-01-02T03:04Z\n",
        ] {
            let text = format!("{base}{extra}");
            if let Err(e) = load(&text) {
                panic!("{text}: {e}");
            }
        }
    }

    #[test]
    fn other_errors_stay_invalid_toml() {
        for text in [
            "concurrent = 1\nconcurrent = 2\n",
            "[[runners]]\nname = \n",
            "[a]\nx = 1\n[a]\ny = 2\n",
        ] {
            assert!(
                matches!(load(text), Err(Error::Invalid { .. })),
                "{text}: {:?}",
                load(text).err()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_of_agrees_with_counting() {
        let text = "a = 1\r\n\n[[runners]]\n  name = \"x\"\n# end";
        let file = ConfigFile::parse(
            Path::new("c.toml"),
            PathBuf::from("c.toml"),
            text.as_bytes().to_vec(),
        );
        let file = match file {
            Ok(f) => f,
            Err(e) => panic!("{e}"),
        };
        for offset in 0..=text.len() + 3 {
            assert_eq!(file.line_of(offset), line_col(text, offset).0, "{offset}");
        }
    }
}
