//! Prometheus text-format metrics, for node_exporter's textfile collector (written atomically by
//! the caller) and the agent's `/metrics` listener. Series are documented in docs/operator.md.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Outcome, Report};
use crate::diagnose::{FindingCode, Severity};

/// Label values are escaped as the text format requires (backslash, quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Render the metrics for a report. `last_rotation` carries, per runner name, the time and
/// outcome of the most recent rotation this process knows of (the agent keeps them across runs).
pub fn render(report: &Report, last_rotation: &BTreeMap<String, (i64, String, String)>) -> String {
    let mut out = String::new();
    let now = report.generated_at.timestamp();
    let _ = writeln!(out, "# HELP runner_medic_last_check_timestamp_seconds When runner-medic last checked the runners.");
    let _ = writeln!(
        out,
        "# TYPE runner_medic_last_check_timestamp_seconds gauge"
    );
    let _ = writeln!(out, "runner_medic_last_check_timestamp_seconds {now}");

    let _ = writeln!(out, "# HELP runner_medic_runner_healthy 1 when the runner has no error-severity finding after the run.");
    let _ = writeln!(out, "# TYPE runner_medic_runner_healthy gauge");
    for r in &report.runners {
        let healthy = r.worst() != Some(Severity::Error) || r.outcome == Some(Outcome::Done);
        let _ = writeln!(
            out,
            "runner_medic_runner_healthy{{runner=\"{}\"}} {}",
            label(&r.name),
            u8::from(healthy)
        );
    }

    let _ = writeln!(out, "# HELP runner_medic_token_expiry_timestamp_seconds When the runner's token expires (absent: never or unknown).");
    let _ = writeln!(
        out,
        "# TYPE runner_medic_token_expiry_timestamp_seconds gauge"
    );
    for r in &report.runners {
        if let Some(at) = r.token_expires_at {
            let _ = writeln!(
                out,
                "runner_medic_token_expiry_timestamp_seconds{{runner=\"{}\"}} {}",
                label(&r.name),
                at.timestamp()
            );
        }
    }

    let _ = writeln!(
        out,
        "# HELP runner_medic_findings Findings of the last check, by code and severity."
    );
    let _ = writeln!(out, "# TYPE runner_medic_findings gauge");
    let mut counts: BTreeMap<(FindingCode, Severity), usize> = BTreeMap::new();
    for f in report
        .findings
        .iter()
        .chain(report.runners.iter().flat_map(|r| r.findings.iter()))
    {
        *counts.entry((f.code, f.severity)).or_default() += 1;
    }
    for code in FindingCode::ALL {
        let n: usize = counts
            .iter()
            .filter(|((c, _), _)| c == code)
            .map(|(_, n)| *n)
            .sum();
        let severity = counts
            .keys()
            .find(|(c, _)| c == code)
            .map_or("none", |(_, s)| s.as_str());
        let _ = writeln!(
            out,
            "runner_medic_findings{{code=\"{}\",severity=\"{severity}\"}} {n}",
            code.as_str()
        );
    }

    let _ = writeln!(out, "# HELP runner_medic_last_rotation_timestamp_seconds When a runner's token was last rotated, with the action and outcome.");
    let _ = writeln!(
        out,
        "# TYPE runner_medic_last_rotation_timestamp_seconds gauge"
    );
    // Rotations of this report count too, newest winning over what the caller remembers.
    let mut rotations = last_rotation.clone();
    for r in &report.runners {
        if let (Some(action), Some(outcome @ (Outcome::Done | Outcome::Failed))) =
            (r.action, r.outcome)
        {
            rotations.insert(
                r.name.clone(),
                (
                    now,
                    action.as_str().to_string(),
                    outcome.as_str().to_string(),
                ),
            );
        }
    }
    for (runner, (at, action, outcome)) in &rotations {
        let _ = writeln!(
            out,
            "runner_medic_last_rotation_timestamp_seconds{{runner=\"{}\",action=\"{}\",outcome=\"{}\"}} {at}",
            label(runner),
            label(action),
            label(outcome)
        );
    }

    if let Some(d) = report.admin_token_expires_at {
        let _ = writeln!(out, "# HELP runner_medic_admin_token_expiry_timestamp_seconds When the privileged token expires.");
        let _ = writeln!(
            out,
            "# TYPE runner_medic_admin_token_expiry_timestamp_seconds gauge"
        );
        let ts = d.timestamp();
        let _ = writeln!(
            out,
            "runner_medic_admin_token_expiry_timestamp_seconds {ts}"
        );
    }
    if let Some(s) = report.clock_skew_seconds {
        let _ = writeln!(
            out,
            "# HELP runner_medic_clock_skew_seconds GitLab's clock minus this host's."
        );
        let _ = writeln!(out, "# TYPE runner_medic_clock_skew_seconds gauge");
        let _ = writeln!(out, "runner_medic_clock_skew_seconds {s}");
    }
    out
}
