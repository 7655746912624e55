//! The lossless config.toml editor, over the real-world corpus and edge cases.

use std::path::PathBuf;
use std::process::Command;

use chrono::{TimeZone, Utc};
use runner_medic::runner_config::{ConfigFile, Credentials};
use runner_medic::secret::RunnerToken;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus/config-toml")
}

fn creds(i: usize) -> Credentials {
    Credentials {
        token: RunnerToken::new(format!("glrt-t1_NEWTOKEN{i:02}abcdefghijklmn")),
        id: Some(900_000 + i as u64),
        obtained_at: Utc.with_ymd_and_hms(2026, 11, 24, 16, 0, 0).unwrap(),
        expires_at: Some(Utc.with_ymd_and_hms(2027, 2, 22, 16, 0, 0).unwrap()),
    }
}

/// Lines of `new` that are not in `old` (a multiset difference, enough for a line-level check).
fn changed_lines(old: &str, new: &str) -> (Vec<String>, Vec<String>) {
    let diff = similar::TextDiff::from_lines(old, new);
    let mut removed = Vec::new();
    let mut added = Vec::new();
    for change in diff.iter_all_changes() {
        match change.tag() {
            similar::ChangeTag::Delete => removed.push(change.value().to_string()),
            similar::ChangeTag::Insert => added.push(change.value().to_string()),
            similar::ChangeTag::Equal => {}
        }
    }
    (removed, added)
}

fn key_of(line: &str) -> String {
    line.trim_start()
        .split(['=', ' '])
        .next()
        .unwrap_or("")
        .to_string()
}

#[test]
fn every_corpus_file_survives_a_rewrite_of_every_runner() {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .expect("corpus dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 50, "corpus has {} files", files.len());
    let tmp = tempfile::tempdir().unwrap();
    let mut rewritten = 0;
    for file in &files {
        let config = ConfigFile::load(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let runners = config.runners();
        assert!(!runners.is_empty(), "{}", file.display());
        let changes: Vec<_> = runners
            .iter()
            .filter(|r| r.token.is_some() && r.url.is_some())
            .map(|r| (r.index, creds(r.index)))
            .collect();
        if changes.is_empty() {
            continue;
        }
        let new_text = config
            .with_credentials(&changes)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // Only our keys' lines differ (or were added).
        let (removed, added) = changed_lines(&config.text, &new_text);
        for line in removed.iter().chain(&added) {
            let key = key_of(line);
            assert!(
                ["id", "token", "token_obtained_at", "token_expires_at"].contains(&key.as_str()),
                "{}: unexpected changed line {line:?}",
                file.display()
            );
        }
        // An independent parser finds exactly the new values and every other value unchanged.
        let out = tmp.path().join(file.file_name().unwrap());
        std::fs::write(&out, &new_text).unwrap();
        let expected: Vec<_> = changes
            .iter()
            .map(|(i, c)| {
                serde_json::json!({
                    "index": i, "token": c.token.expose_secret(), "id": c.id,
                })
            })
            .collect();
        let script = r#"
import json, sys, tomllib
old = tomllib.load(open(sys.argv[1], 'rb'))
new = tomllib.load(open(sys.argv[2], 'rb'))
exp = json.loads(sys.argv[3])
owned = {'id', 'token', 'token_obtained_at', 'token_expires_at'}
for e in exp:
    r = new['runners'][e['index']]
    assert r['token'] == e['token'], ('token', e['index'])
    assert r['id'] == e['id'], ('id', e['index'])
    # A datetime stays a datetime, a quoted one stays a string: both must name the same moment.
    norm = lambda v: str(v).replace('T', ' ')
    assert norm(r['token_expires_at']).startswith('2027-02-22 16:00:00'), r['token_expires_at']
    assert norm(r['token_obtained_at']).startswith('2026-11-24 16:00:00'), r['token_obtained_at']
    for k in owned:
        old['runners'][e['index']].pop(k, None); r.pop(k, None)
assert old == new, 'other values changed'
print('ok')
"#;
        let status = Command::new("python3")
            .args(["-c", script])
            .arg(file)
            .arg(&out)
            .arg(serde_json::to_string(&expected).unwrap())
            .output()
            .expect("python3 runs");
        assert!(
            status.status.success(),
            "{}: tomllib check failed: {}",
            file.display(),
            String::from_utf8_lossy(&status.stderr)
        );
        rewritten += 1;
    }
    assert!(
        rewritten >= 50,
        "only {rewritten} corpus files were rewritten"
    );
}
