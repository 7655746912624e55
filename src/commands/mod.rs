//! Glue from settings to work to report, one module per command. Commands return a `Report`
//! (or a reason they could not run); they neither format output nor write files themselves.

pub mod agent;
#[cfg(feature = "demo")]
pub mod demo;
pub mod diagnose;
pub mod list;
pub mod rotate;

pub use crate::error::CouldNotRun;
