//! `runner-medic diagnose`: check everything, change nothing.

use crate::report::Report;
use crate::settings::Settings;

pub async fn run(settings: &Settings) -> Report {
    match crate::diagnose::diagnose_by_deadline(settings, "diagnose", false).await {
        Ok(diagnosis) => diagnosis.report,
        Err(report) => report,
    }
}
