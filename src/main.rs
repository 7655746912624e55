//! runner-medic's entry point: parse the command line, start logging, run the command, render
//! its report, map the outcome to an exit status. Everything else lives in the library.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use runner_medic::cli::{Cli, Command, LogFormat, OutputFormat};
use runner_medic::commands::{self, CouldNotRun};
use runner_medic::exit::ExitStatus;
use runner_medic::report::{self, Report};
use runner_medic::settings::{Environment, Overrides, Settings};
use tracing_subscriber::EnvFilter;

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

fn init_tracing(cli: &Cli, env: &Environment) {
    let default = match i16::from(cli.global.verbose) - i16::from(cli.global.quiet) {
        i16::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("runner_medic={default},warn")));
    let format = cli.global.log_format.unwrap_or(if env.is_tty_stderr {
        LogFormat::Human
    } else {
        LogFormat::Plain
    });
    // A closed or full stderr must never stop a run midway (a rotation must finish once GitLab
    // has issued tokens): the subscriber's own report of a failed write would be an `eprintln!`,
    // which panics on a broken pipe, so it is turned off and log lines that cannot be written
    // are dropped.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.with_ansi(false).init(),
        LogFormat::Human => builder
            .with_ansi(env.is_tty_stderr && std::env::var_os("NO_COLOR").is_none())
            .without_time()
            .init(),
    }
}

/// Errors are rendered in one place: `error:`, then `fix:`.
fn report_error(e: &CouldNotRun) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "error: {}\nfix: {}", e.message, e.fix);
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
    let env = environment();
    init_tracing(&cli, &env);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return report_error(&CouldNotRun {
                message: format!("cannot start the async runtime: {e}"),
                fix: "check the process limits".into(),
            })
        }
    };
    runtime.block_on(run(cli, env))
}

async fn run(cli: Cli, env: Environment) -> ExitCode {
    let overrides = match &cli.command {
        Command::Rotate(a) => Overrides {
            renew_before: a.renew_before.clone(),
            strategy: a.strategy,
            service_manager: a.service_manager.clone(),
            service_name: a.service_name.clone(),
            no_restart: a.no_restart,
            ..Overrides::default()
        },
        Command::Diagnose(a) => Overrides {
            renew_before: a.renew_before.clone(),
            ..Overrides::default()
        },
        Command::Agent(a) => Overrides {
            renew_before: a.rotate.renew_before.clone(),
            service_manager: a.rotate.service_manager.clone(),
            service_name: a.rotate.service_name.clone(),
            interval: a.interval.clone(),
            jitter: a.jitter.clone(),
            listen: a.listen.clone(),
            ..Overrides::default()
        },
        _ => Overrides::default(),
    };
    match &cli.command {
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "runner-medic", &mut buf);
            print(&String::from_utf8_lossy(&buf));
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            let mut buf = Vec::new();
            if clap_mangen::Man::new(Cli::command())
                .render(&mut buf)
                .is_err()
            {
                return ExitCode::FAILURE;
            }
            print(&String::from_utf8_lossy(&buf));
            return ExitCode::SUCCESS;
        }
        Command::Demo(args) => return demo(args, &env, cli.global.output).await,
        _ => {}
    }
    let settings = match Settings::resolve(&cli.global, &env, &overrides) {
        Ok(s) => s,
        Err(e) => return report_error(&e.into()),
    };
    let writes_state = match &cli.command {
        Command::Rotate(a) => !a.dry_run,
        Command::Agent(_) => true,
        _ => false,
    };
    if let Err(e) = settings.check_dirs(writes_state) {
        return report_error(&e.into());
    }
    let result: Result<Report, CouldNotRun> = match &cli.command {
        Command::Diagnose(_) => Ok(commands::diagnose::run(&settings).await),
        Command::Rotate(args) => {
            commands::rotate::run(&settings, args, env.is_tty_stdout || env.is_tty_stderr).await
        }
        Command::Agent(_) => {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            tokio::spawn(forward_signals(tx));
            let global = cli.global;
            let env2 = env.clone();
            let reload =
                move || Settings::resolve(&global, &env2, &overrides).map_err(CouldNotRun::from);
            commands::agent::run(settings.clone(), reload, rx).await
        }
        Command::Demo(_) | Command::Completions { .. } | Command::Man => {
            unreachable!("handled above")
        }
    };
    match result {
        Ok(report) => {
            if report.command != "agent" {
                render(&report, settings.output, settings.color);
            }
            if let Some(path) = &settings.metrics_file {
                let text = report::metrics::render(&report, &std::collections::BTreeMap::default());
                if let Err(e) = runner_medic::fs::write_private(path, text.as_bytes(), 0o644) {
                    tracing::error!(path = %path.display(), error = %e, "could not write the metrics file");
                }
            }
            // The agent's own status is its clean shutdown; its findings live in logs and metrics.
            if report.command == "agent" {
                return ExitCode::SUCCESS;
            }
            ExitCode::from(report.exit_status().code())
        }
        Err(e) => report_error(&e),
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
            print(&format!("runner-medic demo in {}\n", demo.dir.display()));
            for (title, report) in &demo.steps {
                print(&format!("\n==== {title} ====\n"));
                render(report, output, env.is_tty_stdout);
            }
            print("\n==== the stand-in gitlab-runner after the rotation ====\n");
            for line in &demo.runner_log_tail {
                print(&format!("{line}\n"));
            }
            let verdict = if demo.status == ExitStatus::Healthy {
                "every runner is healthy again"
            } else {
                "some runner is still broken"
            };
            print(&format!("\ndemo: {verdict}\n"));
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
        message: "this build of runner-medic has no demo: the packaged binary leaves out the simulated GitLab".into(),
        fix: "run the demo from a source checkout: `cargo run -- demo`".into(),
    })
}
