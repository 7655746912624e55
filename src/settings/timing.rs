//! Durations: parsing, and the bounds of the run deadline and of the agent's interval and jitter.

use std::time::Duration;

use super::file::AgentFile;
use super::{bad, Overrides, SettingsError};

/// Parse `90s`, `30m`, `6h`, `7d`.
pub fn parse_duration(what: &str, text: &str) -> Result<Duration, SettingsError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        bad(
            format!("`{what}` is not a duration: `{text}` ({e})"),
            "write durations like `90s`, `30m`, `6h` or `7d`",
        )
    })
}

/// The shortest `agent` interval: each cycle asks GitLab about every runner, so a shorter one only
/// loads the instance (and trips its rate limits) without finding anything sooner that matters.
pub const MIN_AGENT_INTERVAL: Duration = Duration::from_secs(60);

/// The longest `agent` interval: runner tokens can expire within days, so a longer gap lets one
/// die unnoticed; it also keeps `interval + jitter` far from overflowing a deadline.
pub const MAX_AGENT_INTERVAL: Duration = Duration::from_secs(30 * 86400);

/// The default deadline of one run: far beyond what a healthy run takes (seconds to minutes, even
/// for thousands of runners), short enough that a run stuck on a hanging GitLab ends well before
/// the next one is due.
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The shortest `run_timeout`: below it a run could not even diagnose a host with a few runners
/// over a slow link, so every run would stop before doing anything.
pub const MIN_RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// The shortest `run_timeout` the tests may ask for (`RUNNER_MEDIC_TEST_FAST_RETRY`).
const TEST_MIN_RUN_TIMEOUT: Duration = Duration::from_secs(1);

/// `--run-timeout` or `run_timeout`, within bounds; a refusal names where the value came from.
pub(super) fn run_timeout(
    flag: Option<&str>,
    file: Option<&str>,
    test_mode: bool,
) -> Result<Duration, SettingsError> {
    let (what, text) = match (flag, file) {
        (Some(v), _) => (format!("`--run-timeout {v}`"), v),
        (None, Some(v)) => (format!("`run_timeout = \"{v}\"`"), v),
        (None, None) => return Ok(DEFAULT_RUN_TIMEOUT),
    };
    let value = parse_duration("run_timeout", text)?;
    let min = if test_mode {
        TEST_MIN_RUN_TIMEOUT
    } else {
        MIN_RUN_TIMEOUT
    };
    if value < min {
        return Err(bad(
            format!(
                "{what} is shorter than the minimum of {}s: a run could not finish even a diagnosis",
                min.as_secs()
            ),
            "use `--run-timeout 30m` (the default) or at least `1m`",
        ));
    }
    Ok(value)
}

/// The shortest interval the tests may ask for (`RUNNER_MEDIC_TEST_FAST_RETRY`).
const TEST_MIN_AGENT_INTERVAL: Duration = Duration::from_secs(1);

/// The agent's interval and jitter, from the flags or the `[agent]` table, within bounds:
/// `60s ≤ interval ≤ 30d` and `jitter ≤ interval`. A refusal names where the value came from.
pub(super) fn agent_timing(
    overrides: &Overrides,
    file: &AgentFile,
    test_mode: bool,
) -> Result<(Duration, Duration), SettingsError> {
    // (what the operator wrote, as they would write it; the value)
    let source = |flag: &Option<String>, key: &str, from_file: &Option<String>| match (
        flag.as_deref(),
        from_file.as_deref(),
    ) {
        (Some(v), _) => Some((format!("`--{key} {v}`"), v.to_string())),
        (None, Some(v)) => Some((format!("`{key} = \"{v}\"` in [agent]"), v.to_string())),
        (None, None) => None,
    };
    let interval_src = source(&overrides.interval, "interval", &file.interval);
    let interval = match &interval_src {
        Some((_, v)) => parse_duration("agent.interval", v)?,
        None => Duration::from_secs(6 * 3600),
    };
    let min = if test_mode {
        TEST_MIN_AGENT_INTERVAL
    } else {
        MIN_AGENT_INTERVAL
    };
    let shown = |d: Duration| humantime::format_duration(d).to_string();
    if let Some((what, _)) = &interval_src {
        if interval < min {
            return Err(bad(
                format!(
                    "{what} is shorter than the minimum interval of {}s: every cycle asks GitLab \
                     about every runner",
                    min.as_secs()
                ),
                format!(
                    "use `--interval {}s` or longer (the default is `6h`; `1h` suits most hosts)",
                    min.as_secs()
                ),
            ));
        }
        if interval > MAX_AGENT_INTERVAL {
            return Err(bad(
                format!(
                    "{what} is longer than the maximum interval of {}: a token could expire \
                     unnoticed in between",
                    shown(MAX_AGENT_INTERVAL)
                ),
                "use `--interval 6h` (the default) or anything up to `30days`",
            ));
        }
    }
    let jitter = match source(&overrides.jitter, "jitter", &file.jitter) {
        Some((what, v)) => {
            let jitter = parse_duration("agent.jitter", &v)?;
            if jitter > interval {
                return Err(bad(
                    format!(
                        "{what} is longer than the interval ({}): a cycle could wait more than \
                         twice the interval",
                        shown(interval)
                    ),
                    format!(
                        "use a jitter of at most the interval, e.g. `--jitter {}` (a tenth, the \
                         default)",
                        shown(interval / 10)
                    ),
                ));
            }
            jitter
        }
        None => interval / 10,
    };
    Ok((interval, jitter))
}
