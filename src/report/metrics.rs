//! Prometheus text-format metrics, for node_exporter's textfile collector (written atomically by
//! the caller) and the agent's `/metrics` listener. Series are documented in docs/operator.md.
//!
//! Two rules shape them. A broken runner is never hidden: every per-runner series is labelled
//! `runner_id` and `name` (and `config` when several config.toml files are watched), so runners
//! that share a name stay distinct series. And series that alerts use carry no label whose value
//! comes and goes (a severity, an outcome): a changing value would end one series and start
//! another, which resolves the alert and fires a new one. States are therefore one-hot gauges
//! over a fixed set of values, or plain 0/1 gauges.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::history::{self, RunState};
use super::{FindingCode, Severity};
use super::{Outcome, Report, RunnerReport, RunnerStatus};

/// The series written after every run, whatever its exit status.
pub const RUN_LEVEL: [&str; 4] = [
    "runner_medic_last_run_timestamp_seconds",
    "runner_medic_last_success_timestamp_seconds",
    "runner_medic_last_run_exit_code",
    "runner_medic_run_duration_seconds",
];

/// How a run ended, for the run-level series.
#[derive(Debug, Clone, Copy)]
pub struct RunEnd {
    pub at: DateTime<Utc>,
    pub exit_code: u8,
    pub duration: std::time::Duration,
    /// The last run that exited 0, this one included.
    pub last_success_at: Option<DateTime<Utc>>,
}

/// Label values are escaped as the text format requires (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
}

/// The labels that identify a runner: its id (`line:N`, the line of its `[[runners]]` in
/// config.toml, while no id is known) and its name (the config.toml, when several are watched,
/// is added to every series by [`with_config`]).
fn runner_labels(r: &RunnerReport) -> String {
    let id = r
        .current_id()
        .map_or_else(|| format!("line:{}", r.line), |id| id.to_string());
    format!("runner_id=\"{}\",name=\"{}\"", label(&id), label(&r.name))
}

/// `text` with `config="<path>"` on every sample. When several config.toml files are watched,
/// each has its own metrics file and node_exporter reads them all: without the label their
/// run-level and check-level series would be the same series twice (a scrape error), and runners
/// of two files could share an id and a name.
fn with_config(text: &str, config: &str) -> String {
    let config = format!("config=\"{}\"", label(config));
    let mut out = String::with_capacity(text.len() + text.lines().count() * config.len());
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            out.push_str(line);
        } else if let Some(at) = line.find('{') {
            // Label values never hold a bare `{`, so the first one opens the label set.
            let _ = write!(out, "{}{config},{}", &line[..=at], &line[at + 1..]);
        } else if let Some((name, value)) = line.split_once(' ') {
            let _ = write!(out, "{name}{{{config}}} {value}");
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// The per-runner and check-level series of a report. `state` is the recorded run state with
/// this report already recorded in it: it carries each runner's last rotation across runs.
/// `config` is the config.toml path, given when several files are watched: every series then
/// carries it as the `config` label.
pub fn render(report: &Report, state: &RunState, config: Option<&str>) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "runner_medic_last_check_timestamp_seconds",
        "When runner-medic last checked the runners.",
    );
    let _ = writeln!(
        out,
        "runner_medic_last_check_timestamp_seconds {}",
        report.generated_at.timestamp()
    );

    family(
        &mut out,
        "runner_medic_runner_healthy",
        "1 when the runner has no error-severity finding after the run (or its rotation was done).",
    );
    for r in &report.runners {
        let healthy = r.worst() != Some(Severity::Error) || r.outcome == Some(Outcome::Done);
        let _ = writeln!(
            out,
            "runner_medic_runner_healthy{{{}}} {}",
            runner_labels(r),
            u8::from(healthy)
        );
    }

    family(
        &mut out,
        "runner_medic_runner_status",
        "The runner's status after the run: 1 for its status, 0 for the others.",
    );
    for r in &report.runners {
        let status = r.status(report.command);
        let labels = runner_labels(r);
        for s in RunnerStatus::ALL {
            let _ = writeln!(
                out,
                "runner_medic_runner_status{{{labels},status=\"{}\"}} {}",
                s.as_str(),
                u8::from(s == status)
            );
        }
    }

    family(
        &mut out,
        "runner_medic_token_expiry_timestamp_seconds",
        "When the runner's token expires (absent: never or unknown).",
    );
    for r in &report.runners {
        if let Some(at) = r.token_expires_at {
            let _ = writeln!(
                out,
                "runner_medic_token_expiry_timestamp_seconds{{{}}} {}",
                runner_labels(r),
                at.timestamp()
            );
        }
    }

    family(
        &mut out,
        "runner_medic_findings",
        "Findings of the last check, by code (every code, 0 when absent).",
    );
    let mut by_code: BTreeMap<FindingCode, usize> = BTreeMap::new();
    let mut by_severity: BTreeMap<Severity, usize> = BTreeMap::new();
    for f in report
        .findings
        .iter()
        .chain(report.runners.iter().flat_map(|r| r.findings.iter()))
    {
        *by_code.entry(f.code).or_default() += 1;
        *by_severity.entry(f.severity).or_default() += 1;
    }
    for code in FindingCode::ALL {
        let _ = writeln!(
            out,
            "runner_medic_findings{{code=\"{}\"}} {}",
            code.as_str(),
            by_code.get(code).copied().unwrap_or(0)
        );
    }
    family(
        &mut out,
        "runner_medic_findings_by_severity",
        "Findings of the last check, by severity (every severity, 0 when absent).",
    );
    for severity in [Severity::Error, Severity::Warning, Severity::Info] {
        let _ = writeln!(
            out,
            "runner_medic_findings_by_severity{{severity=\"{}\"}} {}",
            severity.as_str(),
            by_severity.get(&severity).copied().unwrap_or(0)
        );
    }

    // A runner's last rotation, kept (in the state directory) until its next rotation.
    let remembered = state.lookup();
    let rotations: Vec<(&RunnerReport, &super::history::Rotation)> = report
        .runners
        .iter()
        .filter_map(|r| {
            remembered
                .runner(r.current_id(), &r.name)
                .and_then(|s| s.last_rotation.as_ref())
                .map(|rot| (r, rot))
        })
        .collect();
    family(
        &mut out,
        "runner_medic_last_rotation_timestamp_seconds",
        "When the runner's token was last rotated, successfully or not.",
    );
    for (r, rot) in &rotations {
        let _ = writeln!(
            out,
            "runner_medic_last_rotation_timestamp_seconds{{{}}} {}",
            runner_labels(r),
            rot.at.timestamp()
        );
    }
    family(
        &mut out,
        "runner_medic_last_rotation_success",
        "1 when the runner's last rotation worked, 0 when it failed; kept until its next rotation.",
    );
    for (r, rot) in &rotations {
        let _ = writeln!(
            out,
            "runner_medic_last_rotation_success{{{}}} {}",
            runner_labels(r),
            u8::from(rot.succeeded())
        );
    }

    if let Some(at) = report.admin_token_expires_at {
        family(
            &mut out,
            "runner_medic_admin_token_expiry_timestamp_seconds",
            "When the privileged token expires.",
        );
        let _ = writeln!(
            out,
            "runner_medic_admin_token_expiry_timestamp_seconds {}",
            at.timestamp()
        );
    }
    if let Some(s) = report.clock_skew_seconds {
        family(
            &mut out,
            "runner_medic_clock_skew_seconds",
            "GitLab's clock minus this host's.",
        );
        let _ = writeln!(out, "runner_medic_clock_skew_seconds {s}");
    }
    match config {
        Some(config) => with_config(&out, config),
        None => out,
    }
}

/// The run-level series (with the `config` label when several config.toml files are watched).
pub fn render_run(run: &RunEnd, config: Option<&str>) -> String {
    let mut out = String::new();
    family(
        &mut out,
        RUN_LEVEL[0],
        "When the last run of runner-medic ended, whatever its exit status.",
    );
    let _ = writeln!(out, "{} {}", RUN_LEVEL[0], run.at.timestamp());
    if let Some(at) = run.last_success_at {
        family(
            &mut out,
            RUN_LEVEL[1],
            "When a run of runner-medic last ended with exit status 0.",
        );
        let _ = writeln!(out, "{} {}", RUN_LEVEL[1], at.timestamp());
    }
    family(
        &mut out,
        RUN_LEVEL[2],
        "Exit status of the last run: 0 healthy, 1 a runner still broken, 2 could not run.",
    );
    let _ = writeln!(out, "{} {}", RUN_LEVEL[2], run.exit_code);
    family(&mut out, RUN_LEVEL[3], "How long the last run took.");
    let _ = writeln!(out, "{} {:.3}", RUN_LEVEL[3], run.duration.as_secs_f64());
    match config {
        Some(config) => with_config(&out, config),
        None => out,
    }
}

/// The metric name a line of the text format is about (`# HELP name …`, `# TYPE name …`, or a
/// sample), if any.
fn metric_of(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("# HELP ")
        .or_else(|| line.strip_prefix("# TYPE "))
        .unwrap_or(line);
    if rest.starts_with('#') {
        return None;
    }
    rest.split(|c: char| c == '{' || c.is_whitespace())
        .next()
        .filter(|n| !n.is_empty())
}

/// `previous` (an earlier metrics text) without its run-level series: what a run that produced
/// no report writes again, so the per-runner series of the last check (a broken runner among
/// them) stay visible, with their old `last_check` time, next to the new run-level series.
pub fn without_run_level(previous: &str) -> String {
    let mut out = String::new();
    for line in previous.lines() {
        if metric_of(line).is_some_and(|m| RUN_LEVEL.contains(&m)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `runner_medic_last_success_timestamp_seconds` of an earlier metrics text, if it has one.
pub fn last_success_in(previous: &str) -> Option<DateTime<Utc>> {
    previous
        .lines()
        .find(|l| metric_of(l) == Some(RUN_LEVEL[1]) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        // runner-medic writes timestamps as whole seconds.
        .and_then(|v| v.parse::<i64>().ok())
        .and_then(|v| DateTime::from_timestamp(v, 0))
}

/// How a run ended, for [`finish`].
#[derive(Debug, Clone, Copy)]
pub struct Ending<'a> {
    /// The report, when the run produced one (exit 0 or 1).
    pub report: Option<&'a Report>,
    pub exit_code: u8,
    pub duration: std::time::Duration,
    /// Record the runners' state (not for a dry run, which writes nothing of its own).
    pub save: bool,
}

/// Record the end of a run in `store` and return the metrics text to publish: the report's
/// series (or, without a report, the previous text's per-runner series, so a broken runner
/// stays visible) followed by the run-level series, which every run writes.
pub fn finish(
    store: Option<&history::Store>,
    ending: &Ending<'_>,
    previous_metrics: &str,
) -> String {
    let now = Utc::now();
    let mut state = store.map(history::Store::load).unwrap_or_default();
    state.record_run(now, ending.exit_code);
    if let Some(report) = ending.report {
        state.record_report(report);
    }
    if ending.save {
        if let Some(store) = store {
            store.save(&state);
        }
    }
    let last_success_at = state
        .last_success_at
        .into_iter()
        .chain(last_success_in(previous_metrics))
        .max();
    // Several config.toml files watched: every series says which one it is about.
    let config = store.and_then(history::Store::config_label);
    let config = config.as_deref();
    let mut text = match ending.report {
        Some(report) => render(report, &state, config),
        None => without_run_level(previous_metrics),
    };
    text.push_str(&render_run(
        &RunEnd {
            at: now,
            exit_code: ending.exit_code,
            duration: ending.duration,
            last_success_at,
        },
        config,
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_level_series_are_replaced_and_the_rest_kept() {
        let previous = "# HELP runner_medic_runner_healthy x\n# TYPE runner_medic_runner_healthy gauge\nrunner_medic_runner_healthy{runner_id=\"1\",name=\"a\"} 0\n# HELP runner_medic_last_run_exit_code x\n# TYPE runner_medic_last_run_exit_code gauge\nrunner_medic_last_run_exit_code 0\n# HELP runner_medic_last_success_timestamp_seconds x\n# TYPE runner_medic_last_success_timestamp_seconds gauge\nrunner_medic_last_success_timestamp_seconds 1700000000\n";
        let kept = without_run_level(previous);
        assert!(kept.contains("runner_medic_runner_healthy{runner_id=\"1\",name=\"a\"} 0"));
        assert!(!kept.contains("exit_code") && !kept.contains("last_success"));
        assert_eq!(
            last_success_in(previous).map(|t| t.timestamp()),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn the_config_label_goes_on_every_sample_and_is_escaped() {
        let text = "# HELP a x\n# TYPE a gauge\na 1\nb{runner_id=\"1\",name=\"n{}\"} 0\n";
        let labelled = with_config(text, "/etc/a \"b\".toml");
        assert_eq!(
            labelled,
            "# HELP a x\n# TYPE a gauge\na{config=\"/etc/a \\\"b\\\".toml\"} 1\nb{config=\"/etc/a \\\"b\\\".toml\",runner_id=\"1\",name=\"n{}\"} 0\n"
        );
        assert_eq!(
            last_success_in(&with_config(
                "runner_medic_last_success_timestamp_seconds 1700000000\n",
                "/c"
            ))
            .map(|t| t.timestamp()),
            Some(1_700_000_000)
        );
    }
}
