//! runner-medic's entry point: parse the command line, start logging, run the command, render
//! its report, map the outcome to an exit status. Everything else lives in the library.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use runner_medic::cli::{Cli, Command, LogFormat, OutputFormat};
use runner_medic::commands::{self, CouldNotRun};
use runner_medic::exit::ExitStatus;
use runner_medic::report::{self, Report};
use runner_medic::settings::{Environment, Fallback, Overrides, Settings};
use tracing_subscriber::EnvFilter;

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

/// Whether stderr is connected to the journal: `JOURNAL_STREAM` holds the `dev:ino` of the
/// stream systemd connected, and it names stderr only when fd 2 still is that stream
/// (systemd.exec(5)); a child whose stderr was redirected inherits the variable but not the match.
// `dev_t` and `ino_t` are u64 on Linux but not everywhere (macOS has an i32 `dev_t`).
#[allow(clippy::useless_conversion)]
fn stderr_is_journal() -> bool {
    use std::os::fd::AsRawFd;
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (dev, ino) = v.split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    nix::sys::stat::fstat(std::io::stderr().as_raw_fd()).is_ok_and(|st| {
        u64::try_from(st.st_dev).ok() == Some(dev) && u64::try_from(st.st_ino).ok() == Some(ino)
    })
}

/// Set once logging starts: lines on stderr carry a syslog priority prefix.
static PRIORITY_PREFIX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn prefixed() -> bool {
    PRIORITY_PREFIX.get().copied().unwrap_or(false)
}

/// An event format that starts every line of an event with its sd-daemon(3) priority, for the
/// journal and `logger --prio-prefix`: `<3>` error, `<4>` warning, `<6>` info, `<7>` debug and
/// trace. Every line, so that a multi-line message keeps its level throughout.
struct Prioritized<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Prioritized<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        let mut text = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut text),
            event,
        )?;
        for line in text.lines() {
            writeln!(writer, "<{priority}>{line}")?;
        }
        Ok(())
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
    let journal = stderr_is_journal();
    let format = match cli.global.log_format {
        // The journal stamps and levels each line itself: plain and human lines become
        // prefixed ones there.
        Some(LogFormat::Plain | LogFormat::Human) | None if journal => LogFormat::Syslog,
        Some(f) => f,
        None if env.is_tty_stderr => LogFormat::Human,
        None => LogFormat::Plain,
    };
    let _ = PRIORITY_PREFIX.set(format == LogFormat::Syslog || journal);
    // A closed or full stderr must never stop a run midway (a rotation must finish once GitLab
    // has issued tokens): the subscriber's own report of a failed write would be an `eprintln!`,
    // which panics on a broken pipe, so it is turned off and log lines that cannot be written
    // are dropped.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Json if journal => builder
            .event_format(Prioritized(
                tracing_subscriber::fmt::format().json().without_time(),
            ))
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .init(),
        LogFormat::Json => builder.json().init(),
        LogFormat::Plain => builder.with_ansi(false).init(),
        LogFormat::Syslog => builder
            .with_ansi(false)
            .event_format(Prioritized(
                tracing_subscriber::fmt::format()
                    .with_ansi(false)
                    .without_time(),
            ))
            .init(),
        LogFormat::Human => builder
            .with_ansi(env.is_tty_stderr && std::env::var_os("NO_COLOR").is_none())
            .without_time()
            .init(),
    }
}

/// Errors are rendered in one place: `error:`, then `fix:`.
fn report_error(e: &CouldNotRun) -> ExitCode {
    let prefix = if prefixed() { "<3>" } else { "" };
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
    init_tracing(&cli, &env);
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
    let overrides = match &cli.command {
        Command::Rotate(a) => Overrides {
            renew_before: a.renew_before.clone(),
            strategy: a.strategy,
            service_manager: a.service_manager.clone(),
            service_name: a.service_name.clone(),
            no_restart: a.no_restart,
            restart: a.restart,
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
            restart: a.rotate.restart,
            interval: a.interval.clone(),
            jitter: a.jitter.clone(),
            listen: a.listen.clone(),
            ..Overrides::default()
        },
        _ => Overrides::default(),
    };
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
                finish(
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
        Ok(report) if report.command == "agent" => ExitCode::SUCCESS,
        Ok(report) => {
            render(&report, settings.output, settings.color);
            let status = report.exit_status();
            finish(
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
                finish(
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

/// The end of every diagnose or rotate run, whatever its exit status: record it in the state
/// directory, write the metrics file (when one is set) and log the exit status, so that cron
/// (whose mail or `logger` pipe drops it) and the journal keep it.
fn finish(
    store: Option<&runner_medic::report::history::Store>,
    metrics_file: Option<&std::path::Path>,
    report: Option<&Report>,
    status: ExitStatus,
    started: std::time::Instant,
    save: bool,
) {
    let code = status.code();
    let previous = metrics_file
        .and_then(|path| fs_err::read_to_string(path).ok())
        .unwrap_or_default();
    let text = runner_medic::report::metrics::finish(
        store,
        &runner_medic::report::metrics::Ending {
            report,
            exit_code: code,
            duration: started.elapsed(),
            save,
        },
        &previous,
    );
    if let Some(path) = metrics_file {
        if let Err(e) = runner_medic::fs::write_private(path, text.as_bytes(), 0o644) {
            tracing::error!(path = %path.display(), error = %e, "could not write the metrics file; check that its directory exists and is writable");
        }
    }
    match code {
        0 => tracing::info!(exit_status = code, "run finished"),
        1 => tracing::warn!(
            exit_status = code,
            "run finished; a runner still needs attention"
        ),
        _ => tracing::error!(exit_status = code, "run finished; it could not do its work"),
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
 source: None,
        message: "this build of runner-medic has no demo: the packaged binary leaves out the simulated GitLab".into(),
        fix: "run the demo from a source checkout: `cargo run -- demo`".into(),
    })
}
