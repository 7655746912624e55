//! Glue from settings to work to report, one module per command. Commands return a `Report`
//! (or a reason they could not run); they neither format output nor write files themselves.

pub mod agent;
#[cfg(feature = "demo")]
pub mod demo;
pub mod diagnose;
pub mod list;
pub mod rotate;

/// The command could not run (exit 2), with the fix to show.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CouldNotRun {
    pub message: String,
    pub fix: String,
}

impl From<crate::settings::SettingsError> for CouldNotRun {
    fn from(e: crate::settings::SettingsError) -> Self {
        Self {
            message: e.message,
            fix: e.fix,
        }
    }
}

impl From<crate::rotate::CouldNotRun> for CouldNotRun {
    fn from(e: crate::rotate::CouldNotRun) -> Self {
        Self {
            message: e.message,
            fix: e.fix,
        }
    }
}
