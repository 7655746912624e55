//! runner-medic's integration tests: one binary, a module per area.

// Tests print the figures docs/reliability.md quotes.
#![allow(clippy::print_stdout, clippy::print_stderr)]
// Pedantic lints guard the shipped code; tests favour directness.
#![allow(clippy::pedantic)]

mod harness;

mod agent;
mod config_editor;
mod cost;
mod custody;
mod diagnose;
mod fidelity;
mod fleet;
#[cfg(feature = "fleet-etcd")]
mod fleet_etcd;
mod gitlab_client;
mod hostile;
mod operations;
mod packaging;
mod reliability;
mod reload;
mod rotate;
mod service;
mod supervisors;
mod trust;
