//! The lossless config.toml editor, over the real-world corpus and edge cases.

use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use runner_medic::runner_config::{ConfigFile, Credentials};
use runner_medic::secret::RunnerToken;

/// Real-world config.toml files; `tests/data/config-toml/SOURCES.md` says where each comes from.
fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/config-toml")
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
        .unwrap_or_else(|e| panic!("the corpus `{}`: {e}", corpus_dir().display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 50, "corpus has {} files", files.len());
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
        // An independent parser (toml 0.5, which shares no code with toml_edit) finds exactly
        // the new values and every other value unchanged.
        let parse = |text: &str| -> toml05::Value {
            toml05::from_str(text)
                .unwrap_or_else(|e| panic!("{}: toml 0.5 rejects it: {e}", file.display()))
        };
        let mut old = parse(&config.text);
        let mut new = parse(&new_text);
        // A datetime stays a datetime, a quoted one stays a string: both must name the same moment.
        let moment = |v: &toml05::Value| match v {
            toml05::Value::Datetime(d) => d.to_string().replace('T', " "),
            toml05::Value::String(s) => s.replace('T', " "),
            other => panic!("{}: not a date: {other:?}", file.display()),
        };
        let owned = ["id", "token", "token_obtained_at", "token_expires_at"];
        for (i, c) in &changes {
            let strip = |doc: &mut toml05::Value| -> toml05::value::Table {
                let table = doc["runners"][*i].as_table_mut().expect("a runners table");
                let mine = owned
                    .iter()
                    .filter_map(|k| table.remove(*k).map(|v| ((*k).to_string(), v)))
                    .collect();
                mine
            };
            let r = strip(&mut new);
            strip(&mut old);
            assert_eq!(
                r["token"].as_str(),
                Some(c.token.expose_secret()),
                "{}: token of runner {i}",
                file.display()
            );
            assert_eq!(
                r["id"].as_integer(),
                c.id.map(|id| id as i64),
                "{}: id of runner {i}",
                file.display()
            );
            assert!(
                moment(&r["token_expires_at"]).starts_with("2027-02-22 16:00:00"),
                "{}: {:?}",
                file.display(),
                r["token_expires_at"]
            );
            assert!(
                moment(&r["token_obtained_at"]).starts_with("2026-11-24 16:00:00"),
                "{}: {:?}",
                file.display(),
                r["token_obtained_at"]
            );
        }
        assert!(old == new, "{}: other values changed", file.display());
        rewritten += 1;
    }
    assert!(
        rewritten >= 50,
        "only {rewritten} corpus files were rewritten"
    );
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const SAMPLE: &str = "concurrent = 1\r\n\r\n[[runners]]\r\n  name = \"a\"\r\n  url = \"https://gitlab.example.com\"\r\n  token = \"glrt-oldoldoldoldoldoldold\"\r\n  executor = \"shell\"\r\n";

#[test]
fn crlf_files_stay_crlf_and_missing_keys_are_added_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "config.toml", SAMPLE);
    let config = ConfigFile::load(&path).unwrap();
    let text = config.with_credentials(&[(0, creds(0))]).unwrap();
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "every newline is CRLF:\n{text:?}"
    );
    let expected = "concurrent = 1\r\n\r\n[[runners]]\r\n  name = \"a\"\r\n  url = \"https://gitlab.example.com\"\r\n  id = 900000\r\n  token = \"glrt-t1_NEWTOKEN00abcdefghijklmn\"\r\n  token_obtained_at = 2026-11-24T16:00:00Z\r\n  token_expires_at = 2027-02-22T16:00:00Z\r\n  executor = \"shell\"\r\n";
    assert_eq!(text, expected);
}

#[test]
fn no_final_newline_and_literal_quotes_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "c.toml",
        "[[runners]]\n\turl = 'https://g.example'\n\ttoken = 'glrt-abcdefghijklmnopqrst' # ours",
    );
    let config = ConfigFile::load(&path).unwrap();
    let text = config.with_credentials(&[(0, creds(1))]).unwrap();
    assert_eq!(
        text,
        "[[runners]]\n\turl = 'https://g.example'\n\tid = 900001\n\ttoken = 'glrt-t1_NEWTOKEN01abcdefghijklmn' # ours\n\ttoken_obtained_at = 2026-11-24T16:00:00Z\n\ttoken_expires_at = 2027-02-22T16:00:00Z"
    );
}

fn save_opts(
    dir: &std::path::Path,
) -> (PathBuf, runner_medic::runner_config::SaveOptions<'static>) {
    let backups: &'static std::path::Path = Box::leak(dir.join("backups").into_boxed_path());
    (
        backups.to_path_buf(),
        runner_medic::runner_config::SaveOptions {
            backup_dir: backups,
            keep_backups: 3,
        },
    )
}

#[test]
fn a_symlinked_config_is_written_through_to_its_target() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let target = write(dir.path(), "real.toml", SAMPLE);
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
    let link = dir.path().join("config.toml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let config = ConfigFile::load(&link).unwrap();
    let text = config.with_credentials(&[(0, creds(0))]).unwrap();
    let (backups, opts) = save_opts(dir.path());
    config.save(&text, &opts).unwrap();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link stays a link"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), text);
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o640,
        "mode kept"
    );
    let backup = std::fs::read_dir(&backups)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert_eq!(
        std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), SAMPLE);
}

#[test]
fn owner_group_and_mode_are_preserved() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "config.toml", SAMPLE);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // As root, give the file to another owner and group and prove they survive the rewrite.
    let root = nix::unistd::geteuid().is_root();
    if root {
        std::os::unix::fs::chown(&path, Some(4242), Some(4343)).unwrap();
    }
    let before = std::fs::metadata(&path).unwrap();
    let config = ConfigFile::load(&path).unwrap();
    let text = config.with_credentials(&[(0, creds(0))]).unwrap();
    let (_, opts) = save_opts(dir.path());
    config.save(&text, &opts).unwrap();
    let after = std::fs::metadata(&path).unwrap();
    assert_ne!(
        before.ino(),
        after.ino(),
        "replaced by rename, not rewritten in place"
    );
    assert_eq!(
        (after.uid(), after.gid(), after.mode() & 0o7777),
        (before.uid(), before.gid(), 0o600)
    );
    if root {
        assert_eq!((after.uid(), after.gid()), (4242, 4343));
    }
}

#[test]
fn backups_are_pruned_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "config.toml", SAMPLE);
    let (backups, opts) = save_opts(dir.path());
    for i in 0..5 {
        let config = ConfigFile::load(&path).unwrap();
        let text = config.with_credentials(&[(0, creds(i))]).unwrap();
        config.save(&text, &opts).unwrap();
    }
    let kept = runner_medic::fs::list_backups(&backups, "config.toml").unwrap();
    assert_eq!(kept.len(), 3);
    // The newest backup is the state before the last write.
    let newest = std::fs::read_to_string(kept.last().unwrap()).unwrap();
    assert!(newest.contains("NEWTOKEN03"));
}

#[test]
fn a_concurrent_modification_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "config.toml", SAMPLE);
    let config = ConfigFile::load(&path).unwrap();
    let text = config.with_credentials(&[(0, creds(0))]).unwrap();
    // gitlab-runner rewrites the file meanwhile.
    std::fs::write(&path, SAMPLE.replace("concurrent = 1", "concurrent = 2")).unwrap();
    let (_, opts) = save_opts(dir.path());
    let err = config.save(&text, &opts).unwrap_err();
    assert!(
        err.to_string()
            .contains("changed on disk since it was read"),
        "{err}"
    );
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("concurrent = 2"),
        "the other writer's file stands"
    );
    assert!(
        crate::harness::temp_files(dir.path()).is_empty(),
        "no temp file left"
    );
}

#[test]
fn invalid_toml_is_refused_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "config.toml",
        "[[runners]]\n  name = \"a\"\n  url = https://x\n",
    );
    let err = ConfigFile::load(&path).err().expect("invalid");
    let msg = err.to_string();
    assert!(msg.contains("config.toml:3:"), "{msg}");
    match err {
        runner_medic::runner_config::Error::Invalid { line, column, .. } => {
            assert_eq!((line, column), (3, 9))
        }
        other => panic!("{other}"),
    }
}

#[test]
fn an_entry_without_url_or_token_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "config.toml",
        "[[runners]]\n  name = \"a\"\n  token = \"glrt-abcdefghijklmnopqrst\"\n",
    );
    let config = ConfigFile::load(&path).unwrap();
    let err = config.with_credentials(&[(0, creds(0))]).unwrap_err();
    assert!(
        err.to_string().contains("runner `a`")
            && err.to_string().contains(":1`")
            && err.to_string().contains("no `url`"),
        "{err}"
    );
}

#[test]
fn a_crash_between_temp_write_and_rename_leaves_the_original() {
    let env = crate::harness::TestEnv::new();
    env.write_config(&[env.expired("x")]);
    let before = env.config_text();
    for point in ["after-backup", "after-temp-write"] {
        let mut cmd = env.command(&["rotate"]);
        cmd.env("RUNNER_MEDIC_CRASH_AT", point);
        let run = env.run_cmd(cmd);
        assert_ne!(run.code, 0, "{point}: the process aborted");
        assert_eq!(env.config_text(), before, "{point}: the original is intact");
        assert!(ConfigFile::load(&env.config).is_ok());
    }
    // The next run cleans up and completes.
    let run = env.run(&["rotate"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        crate::harness::temp_files(env.dir.path()).is_empty(),
        "{:?}",
        crate::harness::temp_files(env.dir.path())
    );
}

mod fuzz {
    //! Property test of the editor over generated documents: after setting a token, only that
    //! value changed and the file still parses.
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = String> {
        "[a-z][a-z_]{0,8}".prop_filter("not ours", |k| {
            ![
                "id",
                "token",
                "token_obtained_at",
                "token_expires_at",
                "name",
                "url",
                "runners",
            ]
            .contains(&k.as_str())
        })
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9 _.-]{0,12}".prop_map(|s| format!("\"{s}\"")),
            "[a-zA-Z0-9 _.-]{0,12}".prop_map(|s| format!("'{s}'")),
            any::<i32>().prop_map(|i| i.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            prop::collection::vec("[a-z]{1,5}", 0..3).prop_map(|v| format!(
                "[{}]",
                v.iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        ]
    }

    fn entry() -> impl Strategy<Value = String> {
        (
            prop::collection::vec((key(), value(), any::<bool>()), 0..4),
            "[ \t]{0,4}",
            any::<bool>(),
            prop::option::of("[a-z ]{0,10}"),
            any::<bool>(),
        )
            .prop_map(|(extra, indent, quote_single, comment, dates)| {
                let q = if quote_single { '\'' } else { '"' };
                let mut s = format!("[[runners]]\n{indent}name = \"r\"\n{indent}url = \"https://g.example\"\n{indent}token = {q}glrt-oldtokenoldtokenold{q}");
                if let Some(c) = comment {
                    s.push_str(&format!(" # {c}"));
                }
                s.push('\n');
                if dates {
                    s.push_str(&format!("{indent}token_obtained_at = 2025-01-01T00:00:00Z\n{indent}token_expires_at = \"2026-01-01T00:00:00Z\"\n"));
                }
                let mut seen = std::collections::HashSet::new();
                for (k, v, blank) in extra {
                    if !seen.insert(k.clone()) {
                        continue;
                    }
                    if blank {
                        s.push('\n');
                    }
                    s.push_str(&format!("{indent}{k} = {v}\n"));
                }
                s
            })
    }

    fn document() -> impl Strategy<Value = (String, bool)> {
        (
            prop::collection::vec(entry(), 1..4),
            any::<bool>(),
            "(# [a-z ]{0,20}\n)?",
        )
            .prop_map(|(entries, crlf, header)| {
                let text = format!("{header}concurrent = 2\n\n{}", entries.join("\n"));
                (
                    if crlf {
                        text.replace('\n', "\r\n")
                    } else {
                        text
                    },
                    crlf,
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn only_the_credentials_change((text, crlf) in document(), which in 0usize..4) {
            let dir = tempfile::tempdir().unwrap();
            let path = write(dir.path(), "config.toml", &text);
            let config = ConfigFile::load(&path).unwrap();
            let n = config.runners().len();
            let index = which % n;
            let new = config.with_credentials(&[(index, creds(index))]).unwrap();
            // Still parses, the target has the new token, every other value is unchanged.
            let old_doc: toml::Table = toml::from_str(&text).unwrap();
            let mut new_doc: toml::Table = toml::from_str(&new).unwrap();
            let runners = new_doc["runners"].as_array_mut().unwrap();
            let expected = creds(index);
            prop_assert_eq!(runners[index]["token"].as_str(), Some(expected.token.expose_secret()));
            let mut old_doc = old_doc;
            for doc in [&mut old_doc, &mut new_doc] {
                let r = doc.get_mut("runners").unwrap().as_array_mut().unwrap()[index].as_table_mut().unwrap();
                for k in ["id", "token", "token_obtained_at", "token_expires_at"] { r.remove(k); }
            }
            prop_assert_eq!(old_doc, new_doc);
            // Line endings kept.
            if crlf { prop_assert!(!new.replace("\r\n", "").contains('\n')); }
            // Only our keys' lines differ.
            let diff = similar::TextDiff::from_lines(text.as_str(), new.as_str());
            for c in diff.iter_all_changes().filter(|c| c.tag() != similar::ChangeTag::Equal) {
                prop_assert!(["id", "token", "token_obtained_at", "token_expires_at"].contains(&key_of(c.value()).as_str()), "changed: {:?}", c.value());
            }
        }
    }
}
