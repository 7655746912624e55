//! runner-medic: detects why GitLab runners lost their authentication and repairs them.
//!
//! # Layout
//! - `cli`: clap definitions of the contract's commands and flags.
//! - `settings`: settings file + environment + flags merged into one validated value.
//! - `logging`: stderr logging for a terminal, a pipe or the journal (priority prefixes).
//! - `secret`: runner and admin tokens as secrets, and `Masked`, their only printable form.
//! - `fs`: atomic replace, backups, private dirs, the lock; every write goes through it.
//! - `crash`: named crash points for the crash-safety tests.
//! - `runner_config`: gitlab-runner's config.toml: load, list runners, lossless rewrite, save.
//! - `gitlab`: the GitLab client: runner-token and privileged calls, failure classes, retries.
//! - `diagnose`: findings for every runner and for the host and credential.
//! - `rotate`: plan, journal, execute; crash recovery.
//! - `service`: stop/start gitlab-runner under systemd, SysV, OpenRC, launchd, its CLI, a container.
//! - `report`: the report data (findings, runners, service), its human, JSON and metrics
//!   renderings, and `history`: what runner-medic recorded of its last runs (state dir), for
//!   `list` and metrics.
//! - `commands`: glue from settings to work to report, one module per command.
//! - `exit`: the contract's exit status; `error`: `CouldNotRun`, the one exit-2 error.

pub mod cli;
pub mod commands;
pub mod crash;
pub mod diagnose;
pub mod error;
pub mod exit;
pub mod fleet;
pub mod fs;
pub mod gitlab;
pub mod logging;
pub mod report;
pub mod rotate;
pub mod runner_config;
pub mod secret;
pub mod service;
pub mod settings;
