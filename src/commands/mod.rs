//! Glue from settings to work to report, one module per command. Commands return a `Report`
//! (or a reason they could not run) and leave its rendering to `main`. The files they write are
//! their work's: the agent's metrics file, the demo's directory, `list` writes nothing.

pub mod agent;
#[cfg(feature = "demo")]
pub mod demo;
pub mod diagnose;
pub mod list;
pub mod rotate;

pub use crate::error::CouldNotRun;
