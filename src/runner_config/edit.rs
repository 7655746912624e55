//! Rewriting credentials by splicing new values into the original text at `toml_edit`'s spans.

use chrono::{DateTime, SecondsFormat, Utc};
use toml_edit::{Item, Table};

use super::{ConfigFile, Error};
use crate::secret::RunnerToken;

/// The keys we own in a `[[runners]]` entry, in the order gitlab-runner writes them.
const OWNED_KEYS: [&str; 4] = ["id", "token", "token_obtained_at", "token_expires_at"];

/// New credentials for one entry.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub token: RunnerToken,
    /// The runner id; `None` keeps whatever the entry has.
    pub id: Option<u64>,
    pub obtained_at: DateTime<Utc>,
    /// `None` means the token never expires (written as the Go zero time, as gitlab-runner does).
    pub expires_at: Option<DateTime<Utc>>,
}

/// gitlab-runner's way of writing a timestamp: UTC, `Z`, fractional seconds only when present.
pub fn format_datetime(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

struct Splice {
    at: usize,
    remove: usize,
    /// Orders insertions at the same offset so the keys come out in gitlab-runner's order.
    order: usize,
    text: String,
}

impl ConfigFile {
    /// The file's text with `changes` applied (entry index → credentials). Only the values of
    /// `id`, `token`, `token_obtained_at` and `token_expires_at` change; absent keys are added on
    /// their own line after the nearest key that precedes them in gitlab-runner's order.
    pub fn with_credentials(&self, changes: &[(usize, Credentials)]) -> Result<String, Error> {
        let tables = self.runner_tables();
        let entries = self.runners();
        let eol = if self.text.contains("\r\n") {
            "\r\n"
        } else {
            "\n"
        };
        let mut splices = Vec::new();
        for (index, creds) in changes {
            let (Some(table), Some(entry)) = (tables.get(*index), entries.get(*index)) else {
                return Err(Error::Unsupported {
                    path: self.path.clone(),
                    runner: format!("#{}", index + 1),
                    line: 1,
                    message: "no such [[runners]] entry".into(),
                });
            };
            for key in ["url", "token"] {
                if table.get(key).and_then(Item::as_str).is_none() {
                    return Err(Error::EntryIncomplete {
                        path: self.path.clone(),
                        runner: entry.name.clone(),
                        line: entry.line,
                        key,
                    });
                }
            }
            self.entry_splices(table, &entry.name, entry.line, creds, eol, &mut splices)?;
        }
        // One pass from the start, copying the text between splices: linear in the file, however
        // many entries change (a `replace_range` per splice would move the rest of the file each
        // time).
        splices.sort_by(|a, b| a.at.cmp(&b.at).then(a.order.cmp(&b.order)));
        let mut text = String::with_capacity(
            self.text.len() + splices.iter().map(|s| s.text.len()).sum::<usize>(),
        );
        let mut copied = 0;
        for s in &splices {
            if s.at < copied {
                return Err(Error::SelfCheck {
                    path: self.path.clone(),
                    message: "two changes overlap".into(),
                });
            }
            text.push_str(&self.text[copied..s.at]);
            text.push_str(&s.text);
            copied = s.at + s.remove;
        }
        text.push_str(&self.text[copied..]);
        self.self_check(&text, changes)?;
        Ok(text)
    }

    fn entry_splices(
        &self,
        table: &Table,
        runner: &str,
        line: usize,
        creds: &Credentials,
        eol: &str,
        out: &mut Vec<Splice>,
    ) -> Result<(), Error> {
        let unsupported = |message: String| Error::Unsupported {
            path: self.path.clone(),
            runner: runner.to_string(),
            line,
            message,
        };
        let values: [Option<String>; 4] = [
            creds.id.map(|id| id.to_string()),
            Some(creds.token.expose_secret().to_string()),
            Some(format_datetime(trim_to_seconds(creds.obtained_at))),
            Some(
                creds
                    .expires_at
                    .map_or_else(|| "0001-01-01T00:00:00Z".to_string(), format_datetime),
            ),
        ];
        for (order, key) in OWNED_KEYS.iter().enumerate() {
            let Some(raw) = &values[order] else { continue };
            if let Some(item) = table.get(key) {
                {
                    let span = item.span().ok_or_else(|| {
                        unsupported(format!("`{key}` has no position in the file"))
                    })?;
                    let old = &self.text[span.clone()];
                    let text = render_like(old, key, raw);
                    out.push(Splice {
                        at: span.start,
                        remove: span.len(),
                        order,
                        text,
                    });
                }
            } else {
                {
                    let (at, indent) = self.insertion_point(table, order);
                    let text = format!("{eol}{indent}{key} = {}", render_new(key, raw));
                    out.push(Splice {
                        at,
                        remove: 0,
                        order,
                        text,
                    });
                }
            }
        }
        Ok(())
    }

    /// Where to add a missing key: the end of the line of the nearest preceding key in
    /// gitlab-runner's order (`name`, `url`, `id`, `token`, …), else the end of the header line.
    fn insertion_point(&self, table: &Table, order: usize) -> (usize, String) {
        let preceding = ["name", "url"]
            .into_iter()
            .chain(OWNED_KEYS[..order].iter().copied())
            .collect::<Vec<_>>();
        let anchor = preceding
            .iter()
            .rev()
            .find_map(|k| table.get(k).and_then(Item::span));
        let token_span = table.get("token").and_then(Item::span);
        let indent = token_span
            .as_ref()
            .or(anchor.as_ref())
            .map_or_else(|| "  ".into(), |s| self.indent_of(s.start));
        let from = match anchor {
            Some(span) => span.end,
            None => table.span().map_or(0, |s| s.end),
        };
        (self.end_of_line(from), indent)
    }

    fn end_of_line(&self, from: usize) -> usize {
        let bytes = self.text.as_bytes();
        match bytes[from..].iter().position(|b| *b == b'\n') {
            Some(rel) => {
                let nl = from + rel;
                if nl > 0 && bytes[nl - 1] == b'\r' {
                    nl - 1
                } else {
                    nl
                }
            }
            None => bytes.len(),
        }
    }

    fn indent_of(&self, offset: usize) -> String {
        let start = self.text[..offset].rfind('\n').map_or(0, |p| p + 1);
        self.text[start..offset]
            .chars()
            .take_while(|c| *c == ' ' || *c == '\t')
            .collect()
    }

    /// Re-parse the new text and prove that exactly the intended values changed.
    fn self_check(&self, new_text: &str, changes: &[(usize, Credentials)]) -> Result<(), Error> {
        let fail = |message: String| Error::SelfCheck {
            path: self.path.clone(),
            message,
        };
        let mut old: toml::Table =
            toml::from_str(&self.text).map_err(|e| fail(format!("original: {}", e.message())))?;
        let mut new: toml::Table =
            toml::from_str(new_text).map_err(|e| fail(format!("rewritten: {}", e.message())))?;
        for (index, creds) in changes {
            let entry =
                runner_table(&mut new, *index).ok_or_else(|| fail("entry vanished".into()))?;
            if entry.get("token").and_then(toml::Value::as_str) != Some(creds.token.expose_secret())
            {
                return Err(fail("token not set".into()));
            }
            if let Some(id) = creds.id {
                if entry.get("id").and_then(toml::Value::as_integer) != i64::try_from(id).ok() {
                    return Err(fail("id not set".into()));
                }
            }
            for key in OWNED_KEYS {
                if key != "id" || creds.id.is_some() {
                    entry.remove(key);
                    if let Some(old_entry) = runner_table(&mut old, *index) {
                        old_entry.remove(key);
                    }
                }
            }
        }
        if old != new {
            return Err(fail("a value other than the credentials changed".into()));
        }
        Ok(())
    }
}

fn runner_table(doc: &mut toml::Table, index: usize) -> Option<&mut toml::Table> {
    doc.get_mut("runners")?
        .as_array_mut()?
        .get_mut(index)?
        .as_table_mut()
}

/// gitlab-runner's `register` writes `token_obtained_at` cut to whole seconds.
fn trim_to_seconds(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
}

/// A new value written in the style of the old one: the same quote character for strings, a
/// quoted or bare datetime as before.
fn render_like(old: &str, key: &str, raw: &str) -> String {
    match key {
        "id" => raw.to_string(),
        _ if old.starts_with("'''") || old.starts_with("\"\"\"") => format!("\"{raw}\""),
        _ if old.starts_with('\'') => format!("'{raw}'"),
        _ if old.starts_with('"') => format!("\"{raw}\""),
        // A bare datetime stays bare.
        _ => raw.to_string(),
    }
}

/// A value for a key that was absent, written as gitlab-runner writes it.
fn render_new(key: &str, raw: &str) -> String {
    match key {
        "token" => format!("\"{raw}\""),
        _ => raw.to_string(),
    }
}

/// The token value a dry-run writes in its preview; it is never saved.
pub const NEW_TOKEN_PLACEHOLDER: &str = "<new token from GitLab>";

impl ConfigFile {
    /// A unified diff from this file to `new_text`, with every token of the file masked and the
    /// preview's placeholder expiry shown as what it is.
    pub fn masked_diff(&self, new_text: &str) -> String {
        let diff = similar::TextDiff::from_lines(self.text.as_str(), new_text);
        let path = self.path.display().to_string();
        let mut out = diff
            .unified_diff()
            .context_radius(2)
            .header(&path, &format!("{path} (after)"))
            .to_string();
        out = mask_file_tokens(&out, &self.runners());
        out.lines()
            .map(|l| {
                if l.starts_with('+') && l.contains("token_expires_at") {
                    let indent: String = l[1..].chars().take_while(|c| c.is_whitespace()).collect();
                    format!("+{indent}token_expires_at = <from GitLab's answer>")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    }
}

/// Characters a token found in free text is made of (every GitLab format, and the placeholder's
/// neighbours are not).
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_-.~+/=".contains(c)
}

/// `text` with every token of `entries` masked. Linear in the text and the entries: the text is
/// cut into words of token characters, each looked up in a map of the tokens; the rare token
/// with other characters in it (which no word can match) is replaced the slow way.
fn mask_file_tokens(text: &str, entries: &[super::RunnerEntry]) -> String {
    let mut words: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    let mut odd: Vec<(&str, String)> = Vec::new();
    for entry in entries {
        let Some(token) = &entry.token else { continue };
        let raw = token.expose_secret();
        if raw.len() < 4 {
            continue;
        }
        if raw.chars().all(is_word_char) {
            words.insert(raw, token.masked().as_str().to_string());
        } else {
            odd.push((raw, token.masked().as_str().to_string()));
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let start = rest.find(is_word_char).unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(|c: char| !is_word_char(c)).unwrap_or(rest.len());
        let word = &rest[..end];
        match words.get(word) {
            Some(masked) => out.push_str(masked),
            // A token may be part of a longer word (`x=glrt-…`): mask it inside.
            None if !words.is_empty() && word.len() >= 4 => {
                out.push_str(&mask_inside(word, &words));
            }
            None => out.push_str(word),
        }
        rest = &rest[end..];
    }
    for (raw, masked) in odd {
        out = out.replace(raw, &masked);
    }
    out
}

/// Mask the tokens of `words` that appear inside `word` at a split point of its `=`, `/`, `+`
/// or `.` (where a token can be glued to other characters in a diff line).
fn mask_inside(word: &str, words: &std::collections::HashMap<&str, String>) -> String {
    let mut out = word.to_string();
    for (at, _) in word.match_indices(['=', '/', '+', '.']) {
        for part in [&word[..at], &word[at + 1..]] {
            if let Some(masked) = words.get(part) {
                out = out.replace(part, masked);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner_config::RunnerEntry;
    use crate::secret::RunnerToken;

    fn entry(token: &str) -> RunnerEntry {
        RunnerEntry {
            token: Some(RunnerToken::new(token)),
            ..RunnerEntry::default()
        }
    }

    #[test]
    fn every_token_of_the_file_is_masked_wherever_it_stands() {
        let entries = [
            entry("glrt-t1_aaaaaaaaaaaaaaaaaaaa"),
            entry("0123456789abcdefghij"),
            entry("odd:token@with#chars"),
            entry("abc"),
        ];
        let text = "-  token = \"glrt-t1_aaaaaaaaaaaaaaaaaaaa\"\n \
                    environment = [\"T=0123456789abcdefghij\"]\n \
                    x = 'odd:token@with#chars'\n \
                    name = \"abc\" glrt-t1_aaaaaaaaaaaaaaaaaaaab\n";
        let masked = mask_file_tokens(text, &entries);
        for raw in [
            "glrt-t1_aaaaaaaaaaaaaaaaaaaa\"",
            "0123456789abcdefghij",
            "odd:token@with#chars",
        ] {
            assert!(!masked.contains(raw), "{raw} in {masked}");
        }
        // Short values are no token; a longer word that merely starts like one is not it.
        assert!(masked.contains("\"abc\""), "{masked}");
        assert!(masked.contains("glrt-t1_aaaaaaaaaaaaaaaaaaaab"), "{masked}");
    }
}
