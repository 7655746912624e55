//! `runner-medic diagnose`: check everything, change nothing.

use crate::report::Report;
use crate::settings::Settings;

pub async fn run(settings: &Settings) -> Report {
    let mut diagnosis = crate::diagnose::diagnose(settings).await;
    // The records read are remembered (state directory), so the next run need not read them.
    diagnosis.known.save(settings);
    diagnosis.report
}
