//! runner-medic's integration tests: one binary, a module per area.

// Tests print the figures docs/reliability.md quotes.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod harness;

mod agent;
mod config_editor;
mod diagnose;
mod gitlab_client;
mod packaging;
mod reliability;
mod rotate;
mod service;
