//! runner-medic's entry point: parse the command line, start logging, run the command, render
//! its report, map the outcome to an exit status. Everything else lives in the library.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use runner_medic::cli::{Cli, Command, OutputFormat};
use runner_medic::commands::{self, CouldNotRun};
use runner_medic::exit::ExitStatus;
use runner_medic::report::{self, Report};
use runner_medic::settings::{Environment, Fallback, Overrides, Settings};

mod docgen;

fn environment() -> Environment {
    Environment {
        admin_token: std::env::var("RUNNER_MEDIC_ADMIN_TOKEN").ok(),
        credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY")
            .filter(|d| !d.is_empty())
            .map(Into::into),
        home: std::env::var_os("HOME").map(Into::into),
        is_root: nix::unistd::geteuid().is_root(),
        fast_retry: std::env::var_os("RUNNER_MEDIC_TEST_FAST_RETRY").is_some(),
        is_tty_stdout: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        is_tty_stderr: std::io::stderr().is_terminal(),
        user: std::env::var("SUDO_USER")
            .or_else(|_| std::env::var("USER"))
            .unwrap_or_else(|_| nix::unistd::geteuid().to_string()),
    }
}

/// Errors are rendered in one place: `error:`, then `fix:`.
fn report_error(e: &CouldNotRun) -> ExitCode {
    let prefix = if runner_medic::logging::prefixed() {
        "<3>"
    } else {
        ""
    };
    let mut text = format!("{prefix}error: {}\n", e.message);
    for cause in e.causes() {
        text = text + prefix + "caused by: " + &cause + "\n";
    }
    text = text + prefix + "fix: " + &e.fix + "\n";
    let _ = std::io::stderr().write_all(text.as_bytes());
    ExitCode::from(ExitStatus::CouldNotRun.code())
}

/// Write to stdout. A closed or full stdout (`| head`) loses the text, never the run: the work is
/// done by the time a report is printed, and the exit status still tells how it went.
fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn render(report: &Report, format: OutputFormat, color: bool) {
    match format {
        OutputFormat::Json => print(&format!("{}\n", report.to_json())),
        OutputFormat::Human => print(&report::render_human(report, color)),
    }
}

fn main() -> ExitCode {
    #[cfg(feature = "demo")]
    let args: Vec<String> = std::env::args().collect();
    // The demo's stand-in gitlab-runner is this same binary, so the demo needs nothing installed.
    #[cfg(feature = "demo")]
    if args.get(1).map(String::as_str) == Some("demo")
        && args.get(2).map(String::as_str) == Some("--stand-in-runner")
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        runtime.block_on(gitlab_sim::stand_in::main_with_args(args));
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    runner_medic::crash::arm(std::env::var("RUNNER_MEDIC_CRASH_AT").ok());
    runner_medic::crash::arm_pause(std::env::var("RUNNER_MEDIC_PAUSE_AT").ok());
    let env = environment();
    runner_medic::logging::init(&cli.global, env.is_tty_stderr);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return report_error(&CouldNotRun {
                source: None,
                message: format!("cannot start the async runtime: {e}"),
                fix: "check the process limits".into(),
            })
        }
    };
    runtime.block_on(run(cli, env))
}

async fn run(cli: Cli, env: Environment) -> ExitCode {
    let mut started = std::time::Instant::now();
    let overrides = Overrides::of(&cli.command);
    match &cli.command {
        Command::Completions { shell } => {
            print(&String::from_utf8_lossy(&docgen::completions(*shell)));
            return ExitCode::SUCCESS;
        }
        Command::Man { dir } => {
            let done = match dir {
                Some(dir) => docgen::write_man_pages(dir).map(drop),
                None => docgen::main_page().map(|page| print(&String::from_utf8_lossy(&page))),
            };
            return if done.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Command::Demo(args) => return demo(args, &env, cli.global.output).await,
        _ => {}
    }
    let settings = match Settings::resolve(&cli.global, &env, &overrides) {
        Ok(s) => s,
        Err(e) => {
            let code = report_error(&e);
            // Even a run that cannot read its settings shows in the metrics (exit 2).
            if matches!(
                cli.command,
                Command::Diagnose(_) | Command::Rotate(_) | Command::Agent(_)
            ) {
                let fallback = Fallback::resolve(&cli.global, &env);
                commands::finish(
                    Some(&fallback.store),
                    fallback.metrics_file.as_deref(),
                    None,
                    ExitStatus::CouldNotRun,
                    started,
                    true,
                );
            }
            return code;
        }
    };
    let writes_state = match &cli.command {
        Command::Rotate(a) => !a.dry_run,
        Command::Agent(_) => true,
        _ => false,
    };
    if let Err(e) = settings.check_dirs(writes_state) {
        return report_error(&e);
    }
    if matches!(cli.command, Command::List) {
        return match commands::list::run(&settings) {
            Ok(listing) => {
                match settings.output {
                    OutputFormat::Json => print(&format!(
                        "{}\n",
                        serde_json::to_string_pretty(&listing).expect("the listing serialises")
                    )),
                    OutputFormat::Human => print(&commands::list::render_human(&listing)),
                }
                ExitCode::SUCCESS
            }
            Err(e) => report_error(&e),
        };
    }
    let dry_run = matches!(&cli.command, Command::Rotate(a) if a.dry_run);
    let result: Result<Report, CouldNotRun> = match &cli.command {
        Command::Diagnose(_) => Ok(commands::diagnose::run(&settings).await),
        Command::Rotate(args) => {
            match commands::rotate::random_delay(args, env.is_tty_stdout || env.is_tty_stderr).await
            {
                Ok(()) => {
                    // The run's duration is its work, not the fleet-spreading sleep.
                    started = std::time::Instant::now();
                    commands::rotate::run(&settings, args).await
                }
                Err(e) => Err(e),
            }
        }
        Command::Agent(_) => {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            tokio::spawn(forward_signals(tx));
            let global = cli.global;
            let env2 = env.clone();
            let reload = move || Settings::resolve(&global, &env2, &overrides);
            Box::pin(commands::agent::run(settings.clone(), reload, rx)).await
        }
        Command::Demo(_) | Command::Completions { .. } | Command::Man { .. } | Command::List => {
            unreachable!("handled above")
        }
    };
    match result {
        // The agent's own status is its clean shutdown; each cycle recorded itself and its
        // findings live in logs and metrics.
        Ok(report) if report.command == runner_medic::report::ReportCommand::Agent => {
            ExitCode::SUCCESS
        }
        Ok(report) => {
            render(&report, settings.output, settings.color);
            let status = report.exit_status();
            commands::finish(
                Some(&settings.status_store()),
                settings.metrics_file.as_deref(),
                Some(&report),
                status,
                started,
                !dry_run,
            );
            ExitCode::from(status.code())
        }
        Err(e) => {
            let code = report_error(&e);
            if !matches!(cli.command, Command::Agent(_)) {
                commands::finish(
                    Some(&settings.status_store()),
                    settings.metrics_file.as_deref(),
                    None,
                    ExitStatus::CouldNotRun,
                    started,
                    !dry_run,
                );
            }
            code
        }
    }
}

/// The OS edge of the agent: SIGTERM/SIGINT mean shut down, SIGHUP means reload.
async fn forward_signals(tx: tokio::sync::mpsc::Sender<commands::agent::Signal>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    loop {
        let s = tokio::select! {
            _ = term.recv() => commands::agent::Signal::Shutdown,
            _ = int.recv() => commands::agent::Signal::Shutdown,
            _ = hup.recv() => commands::agent::Signal::Reload,
        };
        if tx.send(s).await.is_err() {
            return;
        }
    }
}

/// `runner-medic demo`: the whole cycle against the embedded simulator, each step's report.
#[cfg(feature = "demo")]
async fn demo(
    args: &runner_medic::cli::DemoArgs,
    env: &Environment,
    output: OutputFormat,
) -> ExitCode {
    match commands::demo::run(env, args.keep).await {
        Ok(demo) => {
            print(&demo.render(output, env.is_tty_stdout));
            ExitCode::from(demo.status.code())
        }
        Err(e) => report_error(&e),
    }
}

/// A build without the `demo` feature (the packaged binary) carries no simulator.
#[cfg(not(feature = "demo"))]
#[allow(clippy::unused_async)]
async fn demo(
    _args: &runner_medic::cli::DemoArgs,
    _env: &Environment,
    _output: OutputFormat,
) -> ExitCode {
    report_error(&CouldNotRun {
 source: None,
        message: "this build of runner-medic has no demo: the packaged binary leaves out the simulated GitLab".into(),
        fix: "run the demo from a source checkout: `cargo run -- demo`".into(),
    })
}
