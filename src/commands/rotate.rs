//! `runner-medic rotate`: fix what diagnose finds.

use std::time::Duration;

use rand::Rng;

use super::CouldNotRun;
use crate::cli::RotateArgs;
use crate::report::Report;
use crate::rotate::{RotateOptions, Scope};
use crate::settings::{parse_duration, Settings};

pub fn options(args: &RotateArgs) -> RotateOptions {
    RotateOptions {
        dry_run: args.dry_run,
        scope: Scope {
            runners: args.runners.clone(),
            force: args.force,
        },
        wait: args.wait,
    }
}

/// `--random-delay`: from cron (not on a terminal), sleep a random time up to the given one first,
/// so a fleet's runs do not hit GitLab in the same second. Not part of the run's duration.
pub async fn random_delay(args: &RotateArgs, interactive: bool) -> Result<(), CouldNotRun> {
    if let Some(delay) = &args.random_delay {
        let max = parse_duration("--random-delay", delay)?;
        if !interactive && !max.is_zero() {
            let wait = Duration::from_millis(
                rand::thread_rng()
                    .gen_range(0..=u64::try_from(max.as_millis()).unwrap_or(u64::MAX)),
            );
            tracing::info!(
                delay_s = wait.as_secs(),
                "sleeping a random delay first (--random-delay)"
            );
            tokio::time::sleep(wait).await;
        }
    }
    Ok(())
}

pub async fn run(settings: &Settings, args: &RotateArgs) -> Result<Report, CouldNotRun> {
    // The run's deadline counts from here, after the random delay.
    let mut settings = settings.clone();
    settings.start_run();
    crate::rotate::rotate(&settings, &options(args)).await
}
