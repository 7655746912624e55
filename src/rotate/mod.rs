//! rotate: act on what diagnose finds. `plan` decides (pure), `execute` obtains the new tokens
//! and `commit` puts them in place, with a `journal` that makes every step recoverable; `hooks`
//! runs the operator's commands.

mod commit;
mod coordinate;
pub mod custody;
mod execute;
pub mod hooks;
pub mod journal;
pub use crate::diagnose::known;
mod obtain;
pub mod plan;

pub use coordinate::watch as watch_fleet;
pub use execute::{rotate, CouldNotRun, RotateOptions};
pub use plan::{plan, Plan, PlanItem, Scope};
