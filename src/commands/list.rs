//! `runner-medic list`: every runner of config.toml with its masked token, its expiry and what
//! runner-medic last recorded of it, like `certbot certificates` or `gitlab-runner list`.
//!
//! Offline by design: it reads config.toml and the state directory and nothing else, sends no
//! request and writes nothing, so it is safe on a host whose GitLab is down, in a shell loop, or
//! while a rotation holds the lock.

use std::fmt::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::CouldNotRun;
use crate::report::{rfc3339, RunnerStatus};
use crate::runner_config::ConfigFile;
use crate::secret::Masked;
use crate::settings::Settings;

/// The `--output json` object (contract: `runner-medic list`).
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub version: u32,
    pub command: &'static str,
    pub runner_config: String,
    pub runners: Vec<Listed>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub name: String,
    pub id: Option<u64>,
    /// The `url` of the entry, without any user or password in it.
    pub url: Option<String>,
    pub token: Option<Masked>,
    #[serde(serialize_with = "rfc3339::option")]
    pub token_expires_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "rfc3339::option")]
    pub last_checked_at: Option<DateTime<Utc>>,
    pub last_status: Option<RunnerStatus>,
}

/// A URL as it may be shown: user and password removed; a value that is no URL (a
/// `$VARIABLE`) is shown as written.
fn shown_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string().trim_end_matches('/').to_string()
        }
        Err(_) => text.to_string(),
    }
}

fn host(text: &str) -> String {
    url::Url::parse(text)
        .ok()
        .and_then(|u| {
            u.host_str().map(|h| match u.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            })
        })
        .unwrap_or_else(|| text.to_string())
}

pub fn run(settings: &Settings) -> Result<Listing, CouldNotRun> {
    let config = ConfigFile::load(&settings.runner_config).map_err(|e| CouldNotRun {
        source: None,
        message: e.to_string(),
        fix: e.fix(),
    })?;
    let state = settings.status_store().load();
    let remembered = state.lookup();
    let runners = config
        .runners()
        .into_iter()
        .map(|entry| {
            let recorded = remembered.for_entry(entry.id, &entry.name);
            Listed {
                id: entry.id,
                url: entry.url.as_deref().map(shown_url),
                token: entry.token.as_ref().map(crate::secret::RunnerToken::masked),
                token_expires_at: entry.token_expires_at,
                last_checked_at: recorded.and_then(|r| r.last_checked_at),
                last_status: recorded.and_then(|r| r.last_status),
                name: entry.name,
            }
        })
        .collect();
    Ok(Listing {
        version: 1,
        command: "list",
        runner_config: settings.runner_config.display().to_string(),
        runners,
    })
}

/// Text read from config.toml may hold control characters; show them escaped.
fn clean(text: &str) -> String {
    text.chars().flat_map(char::escape_debug).collect()
}

/// One line per runner under a header, columns aligned.
pub fn render_human(listing: &Listing) -> String {
    let dash = || "-".to_string();
    let time = |t: Option<DateTime<Utc>>| t.map_or_else(dash, rfc3339::format);
    let mut rows = vec![[
        "NAME".to_string(),
        "ID".into(),
        "HOST".into(),
        "TOKEN".into(),
        "EXPIRES".into(),
        "LAST CHECKED".into(),
        "LAST STATUS".into(),
    ]];
    for r in &listing.runners {
        rows.push([
            clean(&r.name),
            r.id.map_or_else(dash, |id| id.to_string()),
            r.url.as_deref().map_or_else(dash, |u| clean(&host(u))),
            r.token.as_ref().map_or_else(dash, ToString::to_string),
            time(r.token_expires_at),
            time(r.last_checked_at),
            r.last_status
                .map_or_else(|| "never checked".to_string(), |s| s.as_str().to_string()),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = format!("runner-medic list {}\n", listing.runner_config);
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = w - cell.chars().count();
                let _ = write!(line, "{cell}{}  ", " ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if listing.runners.is_empty() {
        out.push_str("(no [[runners]] in this file)\n");
    }
    out
}
