//! The human rendering: one block per runner, findings with their fix, a summary line. Colour
//! only when asked (a terminal without `NO_COLOR`), and never as the only carrier of meaning.

use std::fmt::Write;

use super::{Action, Outcome, Report};
use super::{Finding, Severity};

struct Paint {
    on: bool,
}

impl Paint {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn severity(&self, s: Severity) -> String {
        let label = format!("{:<7}", s.as_str());
        match s {
            Severity::Error => self.wrap("31;1", &label),
            Severity::Warning => self.wrap("33", &label),
            Severity::Info => self.wrap("36", &label),
        }
    }
    fn bold(&self, text: &str) -> String {
        self.wrap("1", text)
    }
}

/// Text read from config.toml may hold control characters; show them escaped.
fn clean(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn finding(out: &mut String, p: &Paint, f: &Finding, indent: &str) {
    let _ = writeln!(
        out,
        "{indent}{} {}: {}",
        p.severity(f.severity),
        f.code.as_str(),
        clean(&f.message)
    );
    let _ = writeln!(out, "{indent}        fix: {}", clean(&f.fix));
}

pub fn render(report: &Report, color: bool) -> String {
    let p = Paint { on: color };
    let mut out = String::new();
    let title = if report.dry_run {
        format!("{} --dry-run", report.command)
    } else {
        report.command.to_string()
    };
    let _ = writeln!(
        out,
        "{} {}",
        p.bold(&format!("runner-medic {title}")),
        report.runner_config
    );
    let mut context = Vec::new();
    if let Some(url) = &report.gitlab_url {
        context.push(format!("GitLab {url}"));
    }
    if let Some(t) = report.server_time {
        context.push(format!("server time {}", t.format("%Y-%m-%d %H:%M:%S UTC")));
    }
    if let Some(s) = report.clock_skew_seconds {
        context.push(format!("clock skew {s:+.1} s"));
    }
    if !context.is_empty() {
        let _ = writeln!(out, "{}", context.join(", "));
    }
    if !report.findings.is_empty() {
        let _ = writeln!(out);
        for f in &report.findings {
            finding(&mut out, &p, f, "");
        }
    }
    for r in &report.runners {
        let _ = writeln!(out);
        let mut head = format!("runner `{}`", clean(&r.name));
        let mut bits = Vec::new();
        if let Some(id) = r.id {
            bits.push(format!("id {id}"));
        }
        bits.push(format!("line {}", r.line));
        let _ = write!(head, " ({})", bits.join(", "));
        match (&r.token, &r.new_token, r.outcome) {
            // After a rotation the expiry shown is the new token's: show both tokens.
            (Some(old), Some(new), Some(Outcome::Done)) => {
                let _ = write!(head, " token {old} -> {new}");
            }
            (Some(t), _, _) => {
                let _ = write!(head, " token {t}");
            }
            _ => {}
        }
        match r.token_expires_at {
            Some(at) => {
                let _ = write!(
                    head,
                    ", expires {} ({})",
                    describe_in(at, report.server_time.unwrap_or(report.generated_at)),
                    at.format("%Y-%m-%d")
                );
            }
            None if r.token.is_some() => head.push_str(", no expiry known"),
            None => {}
        }
        let status = match r.worst() {
            _ if r.outcome == Some(Outcome::Done) => p.wrap("32", "fixed"),
            None => p.wrap("32", "ok"),
            Some(Severity::Info) => p.wrap("32", "ok"),
            Some(Severity::Warning) => p.wrap("33", "warning"),
            Some(Severity::Error) => p.wrap("31;1", "broken"),
        };
        let _ = writeln!(out, "{} [{status}]", p.bold(&head));
        for f in &r.findings {
            finding(&mut out, &p, f, "  ");
        }
        if let Some(action) = r.action {
            if action != Action::None || r.outcome.is_some_and(|o| o != Outcome::Skipped) {
                let mut line = format!("  action: {}", action.as_str());
                if let Some(o) = r.outcome {
                    let _ = write!(line, " -> {}", o.as_str());
                }
                if let Some(t) = &r.new_token {
                    let _ = write!(line, " (new token {t}");
                    if let Some(id) = r.new_id {
                        let _ = write!(line, ", new id {id}");
                    }
                    line.push(')');
                }
                let _ = writeln!(out, "{line}");
                for c in &r.calls {
                    let _ = writeln!(out, "    {c}");
                }
                if let Some(e) = &r.error {
                    let _ = writeln!(out, "    {}", clean(e));
                }
            }
        }
    }
    if let Some(s) = &report.service {
        let _ = writeln!(out);
        let reloaded = match s.reloaded {
            Some(true) => ", reloaded yes",
            Some(false) => ", reloaded no",
            None => "",
        };
        let _ = writeln!(
            out,
            "service: {} `{}`: stopped {}, started {}{reloaded} ({})",
            s.manager,
            s.name,
            if s.stopped { "yes" } else { "no" },
            if s.started { "yes" } else { "no" },
            s.reason
        );
        if let Some(e) = &s.error {
            let _ = writeln!(out, "  {} {e}", p.severity(Severity::Error));
        }
    }
    if let Some(b) = &report.backup {
        let _ = writeln!(out, "backup: {b}");
    }
    if let Some(diff) = &report.diff {
        let _ = writeln!(out);
        if diff.is_empty() {
            let _ = writeln!(out, "config.toml would not change");
        } else {
            let _ = writeln!(
                out,
                "{}",
                p.bold("config.toml would change like this (tokens masked):")
            );
            out.push_str(diff);
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{}", summary(report));
    out
}

fn summary(report: &Report) -> String {
    let total = report.runners.len();
    // A runner whose rotation is done is healthy whatever was wrong with it before.
    let fixed = |r: &&super::RunnerReport| r.outcome == Some(Outcome::Done);
    let broken = report
        .runners
        .iter()
        .filter(|r| r.worst() == Some(Severity::Error) && !fixed(r))
        .count();
    let warn = report
        .runners
        .iter()
        .filter(|r| r.worst() == Some(Severity::Warning) && !fixed(r))
        .count();
    let healthy = total - broken - warn;
    let mut s = format!(
        "summary: {total} runner(s): {healthy} healthy, {warn} with warnings, {broken} broken"
    );
    let host_errors = report
        .findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    if host_errors > 0 {
        let _ = write!(s, "; {host_errors} host/credential error(s)");
    }
    if report.command == super::ReportCommand::Rotate {
        let count = |o: Outcome| {
            report
                .runners
                .iter()
                .filter(|r| r.outcome == Some(o))
                .count()
        };
        let _ = write!(
            s,
            "; rotation: {} done, {} planned, {} failed, {} need a person",
            count(Outcome::Done),
            count(Outcome::Planned),
            count(Outcome::Failed),
            report
                .runners
                .iter()
                .filter(|r| r.action == Some(Action::Manual))
                .count()
        );
    }
    s
}

/// "12 days", "5 hours": the coarsest unit of which there are at least two (or one day).
pub fn human_span(secs: u64) -> String {
    let (n, unit) = match secs {
        0..=119 => (secs, "second"),
        120..=7199 => (secs / 60, "minute"),
        7200..=172_799 if secs % 86400 != 0 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// "in 12 days", "3 days ago", "in 5 hours".
pub fn describe_in(
    at: chrono::DateTime<chrono::Utc>,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let secs = (at - now).num_seconds();
    let span = human_span(secs.unsigned_abs());
    if secs >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}
