//! `runner-medic diagnose`: check everything, change nothing.

use crate::report::Report;
use crate::settings::Settings;

pub async fn run(settings: &Settings) -> Report {
    match crate::diagnose::diagnose_by_deadline(
        settings,
        crate::report::ReportCommand::Diagnose,
        false,
    )
    .await
    {
        Ok(mut diagnosis) => {
            // The records read are remembered (state directory), so the next run need not read
            // them.
            diagnosis.known.save(settings);
            diagnosis.report
        }
        Err(report) => report,
    }
}
