//! Glue from settings to work to report, one module per command. Commands return a `Report`
//! (or a reason they could not run) and leave its rendering to `main`. The files they write are
//! their work's: the agent's metrics file, the demo's directory, `list` writes nothing.
//! [`finish`] records the end of every diagnose or rotate run.

pub mod agent;
#[cfg(feature = "demo")]
pub mod demo;
pub mod diagnose;
pub mod list;
pub mod rotate;

pub use crate::error::CouldNotRun;
use crate::exit::ExitStatus;
use crate::report::Report;

/// The end of every diagnose or rotate run, whatever its exit status: record it in the state
/// directory, write the metrics file (when one is set) and log the exit status, so that cron
/// (whose mail or `logger` pipe drops it) and the journal keep it.
pub fn finish(
    store: Option<&crate::report::history::Store>,
    metrics_file: Option<&std::path::Path>,
    report: Option<&Report>,
    status: ExitStatus,
    started: std::time::Instant,
    save: bool,
) {
    let code = status.code();
    let previous = metrics_file
        .and_then(|path| fs_err::read_to_string(path).ok())
        .unwrap_or_default();
    let text = crate::report::metrics::finish(
        store,
        &crate::report::metrics::Ending {
            report,
            exit_code: code,
            duration: started.elapsed(),
            save,
        },
        &previous,
    );
    if let Some(path) = metrics_file {
        if let Err(e) = crate::fs::write_private(path, text.as_bytes(), 0o644) {
            tracing::error!(path = %path.display(), error = %e, "could not write the metrics file; check that its directory exists and is writable");
        }
    }
    match code {
        0 => tracing::info!(exit_status = code, "run finished"),
        1 => tracing::warn!(
            exit_status = code,
            "run finished; a runner still needs attention"
        ),
        _ => tracing::error!(exit_status = code, "run finished; it could not do its work"),
    }
}
