//! runner-medic: detects why GitLab runners lost their authentication and repairs them.
//!
//! # Layout
//! - `secret`: runner and admin tokens as secrets, and `Masked`, their only printable form.
//! - `fs`: atomic replace, backups, private dirs, the lock; every write goes through it.
//! - `crash`: named crash points for the crash-safety tests.
//! - `gitlab`: the GitLab client: runner-token and privileged calls, failure classes, retries.
//! - `runner_config`: gitlab-runner's config.toml: load, list runners, lossless rewrite, save.

pub mod crash;
pub mod fs;
pub mod gitlab;
pub mod runner_config;
pub mod secret;
