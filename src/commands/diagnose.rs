//! `runner-medic diagnose`: check everything, change nothing.

use crate::report::Report;
use crate::settings::Settings;

pub async fn run(settings: &Settings) -> Report {
    crate::diagnose::diagnose(settings).await.report
}
