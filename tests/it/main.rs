//! runner-medic's integration tests: one binary, a module per area.

mod config_editor;
