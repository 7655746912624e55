//! rotate: act on what diagnose finds. `plan` decides (pure); `execute` runs a rotation: it
//! takes the locks, completes an earlier one from the `journal`, has `coordinate` deal with
//! tokens other hosts share, `obtain` the new tokens and `commit` put them in place, with
//! `restart` getting gitlab-runner to use them. `creation` settles creations whose outcome is
//! uncertain; `custody` holds the rules that keep every token GitLab issued; `hooks` runs the
//! operator's commands.

mod commit;
mod coordinate;
mod creation;
pub mod custody;
mod execute;
pub mod hooks;
pub mod journal;
pub use crate::diagnose::known;
mod obtain;
pub mod plan;
mod restart;

pub use coordinate::watch as watch_fleet;
pub use execute::{rotate, CouldNotRun, RotateOptions};
pub use plan::{plan, Plan, PlanItem, Scope};
