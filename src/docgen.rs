//! The man pages and shell completions, generated from the CLI definition (`runner-medic man`,
//! `runner-medic completions SHELL`; packaging/build-deb.sh ships them). One page per command,
//! `runner-medic-rotate(1)` and so on, each with EXIT STATUS, ENVIRONMENT and FILES sections.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_mangen::roff::{bold, italic, roman, Roff};
use runner_medic::cli::Cli;

/// The command as this build has it: a build without the `demo` feature (the packaged binary)
/// hides `demo`, so neither its man page nor its completions offer a command it does not have.
fn command() -> clap::Command {
    let cmd = Cli::command();
    if cfg!(feature = "demo") {
        cmd
    } else {
        cmd.mut_subcommand("demo", |c| c.hide(true))
    }
}

/// The commands that get a page of their own, in the order the main page lists them.
fn documented(cmd: &clap::Command) -> Vec<clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .cloned()
        .collect()
}

/// `runner-medic.1` and one page per command, as (file name, roff).
pub fn man_pages() -> std::io::Result<Vec<(String, Vec<u8>)>> {
    let mut cmd = command().disable_help_subcommand(true);
    cmd.build();
    let subs = documented(&cmd);
    let names: Vec<String> = subs
        .iter()
        .map(|s| format!("runner-medic-{}", s.get_name()))
        .collect();
    let mut pages = vec![(
        "runner-medic.1".to_owned(),
        page(
            &cmd,
            None,
            &names.iter().map(String::as_str).collect::<Vec<_>>(),
        )?,
    )];
    for (sub, name) in subs.iter().zip(&names) {
        let see_also: Vec<&str> = std::iter::once("runner-medic")
            .chain(
                names
                    .iter()
                    .map(String::as_str)
                    .filter(|n| n != name && related(sub.get_name(), n)),
            )
            .collect();
        pages.push((
            format!("{name}.1"),
            page(sub, Some(sub.get_name()), &see_also)?,
        ));
    }
    Ok(pages)
}

/// Which other command pages a command's SEE ALSO names.
fn related(command: &str, page: &str) -> bool {
    let other = page.trim_start_matches("runner-medic-");
    let names: &[&str] = match command {
        "diagnose" => &["rotate", "list"],
        "rotate" => &["diagnose", "agent", "list"],
        "agent" | "list" => &["rotate", "diagnose"],
        _ => &[],
    };
    names.contains(&other)
}

/// Write every page into `dir`.
pub fn write_man_pages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    fs_err::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, text) in man_pages()? {
        let path = dir.join(name);
        fs_err::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

/// The main page (`runner-medic.1`) as roff.
pub fn main_page() -> std::io::Result<Vec<u8>> {
    Ok(man_pages()?.swap_remove(0).1)
}

fn page(cmd: &clap::Command, sub: Option<&str>, see_also: &[&str]) -> std::io::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone())
        .title(
            cmd.get_display_name()
                .unwrap_or(cmd.get_name())
                .to_uppercase(),
        )
        .section("1")
        .source(format!("runner-medic {}", env!("CARGO_PKG_VERSION")))
        .manual("runner-medic manual");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    let mut roff = Roff::new();
    exit_status(&mut roff, sub);
    environment(&mut roff, cmd);
    files(&mut roff, sub);
    roff.control("SH", ["SEE ALSO"]);
    let refs: Vec<_> = see_also
        .iter()
        .enumerate()
        .flat_map(|(i, name)| {
            let sep = if i + 1 < see_also.len() { "), " } else { ")" };
            [bold(*name), roman(format!("(1{sep}"))]
        })
        .collect();
    roff.text(refs);
    roff.control("PP", []);
    roff.text([
        roman("The operator guide, "),
        italic("/usr/share/doc/runner-medic/operator.md"),
        roman(", and the reference, "),
        italic("/usr/share/doc/runner-medic/reference.md"),
        roman("."),
    ]);
    roff.to_writer(&mut out)?;
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    Ok(out)
}

fn item(roff: &mut Roff, term: &str, text: &str) {
    roff.control("TP", []);
    roff.text([bold(term)]);
    roff.text([roman(text)]);
}

fn exit_status(roff: &mut Roff, sub: Option<&str>) {
    roff.control("SH", ["EXIT STATUS"]);
    match sub {
        Some("list") => {
            item(roff, "0", "The runners were listed.");
            item(
                roff,
                "2",
                "It could not run: bad arguments, unusable settings, an unreadable config.toml.",
            );
        }
        Some("agent") => {
            item(
                roff,
                "0",
                "The agent shut down cleanly (SIGTERM or SIGINT); each cycle's outcome is in the \
                 log and the metrics.",
            );
            item(
                roff,
                "2",
                "It could not start: bad arguments, unusable settings, a /metrics address it \
                 cannot listen on.",
            );
        }
        _ => {
            item(
                roff,
                "0",
                "Every runner is healthy at the end (with --dry-run: the plan fixes everything).",
            );
            item(
                roff,
                "1",
                "At least one runner is still broken, failed, or needs a person.",
            );
            item(
                roff,
                "2",
                "The command could not run: bad arguments, unusable settings, a lock held by \
                 another run.",
            );
        }
    }
}

/// Every environment variable the command reads: those of its options, and the few without one.
fn environment(roff: &mut Roff, cmd: &clap::Command) {
    roff.control("SH", ["ENVIRONMENT"]);
    let mut vars: Vec<(String, String)> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| {
            let var = a.get_env()?.to_string_lossy().into_owned();
            let long = a.get_long()?;
            Some((var, format!("As --{long}.")))
        })
        .collect();
    vars.push((
        "RUNNER_MEDIC_ADMIN_TOKEN".into(),
        "The privileged GitLab token itself, instead of --admin-token-file.".into(),
    ));
    vars.push((
        "RUST_LOG".into(),
        "Log filter (tracing-subscriber EnvFilter syntax); overrides -v and -q.".into(),
    ));
    vars.push((
        "NO_COLOR".into(),
        "When set, reports and logs are not coloured.".into(),
    ));
    vars.push((
        "JOURNAL_STREAM".into(),
        "Set by systemd: when it names stderr, log lines carry their syslog priority.".into(),
    ));
    for (var, text) in vars {
        item(roff, &var, &text);
    }
}

fn files(roff: &mut Roff, sub: Option<&str>) {
    roff.control("SH", ["FILES"]);
    item(
        roff,
        "/etc/runner-medic/settings.toml",
        "runner-medic's settings (a conffile, mode 0644, no secret in it); every key is documented \
         in /usr/share/doc/runner-medic/settings.example.toml.",
    );
    item(
        roff,
        "/etc/runner-medic/admin-token",
        "The privileged GitLab token, where admin_token_file points; created by the operator, \
         mode 0600, refused when the group or others can read it.",
    );
    item(
        roff,
        "/etc/gitlab-runner/config.toml",
        "gitlab-runner's configuration, read (and by rotate and agent rewritten) as root.",
    );
    item(
        roff,
        "/var/lib/runner-medic/",
        "The state directory (mode 0700): rotation journal, backups of config.toml, runner \
         records and statuses. Purging the package removes it.",
    );
    item(
        roff,
        "/run/runner-medic/",
        "Locks, one per config.toml, shared by the timer's runs, cron and the agent.",
    );
    item(
        roff,
        "/var/lib/prometheus/node-exporter/runner-medic.prom",
        "The metrics file the packaged settings.toml names, for node_exporter's textfile \
         collector.",
    );
    if matches!(sub, None | Some("rotate" | "agent")) {
        item(
            roff,
            "/lib/systemd/system/runner-medic.timer",
            "Runs runner-medic.service (rotate) twice a day; enable with systemctl enable --now \
             runner-medic.timer.",
        );
        item(
            roff,
            "/lib/systemd/system/runner-medic-agent.service",
            "The agent; enable with systemctl enable --now runner-medic-agent.service.",
        );
        item(
            roff,
            "/etc/cron.d/runner-medic",
            "The cron job for hosts without systemd, off until its line is uncommented.",
        );
    }
}

/// The completion script for `shell`. clap_complete's bash script names the branches of a
/// hyphenated binary inconsistently (`runner__medic__subcmd__rotate` where it sets `cmd`,
/// `runner__subcmd__medic__subcmd__rotate` where it reads it), so no command's options would
/// complete: the labels are made to match.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut command(), "runner-medic", &mut buf);
    if shell == clap_complete::Shell::Bash {
        let text = String::from_utf8_lossy(&buf).replace("runner__subcmd__medic", "runner__medic");
        return text.into_bytes();
    }
    buf
}
