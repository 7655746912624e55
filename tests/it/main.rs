//! runner-medic's integration tests: one binary, a module per area.

mod harness;

mod agent;
mod config_editor;
mod diagnose;
mod gitlab_client;
mod rotate;
mod service;
