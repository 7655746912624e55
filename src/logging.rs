//! Logging to stderr: the format for a terminal, a pipe or the journal, and the sd-daemon(3)
//! priority prefix the journal and `logger --prio-prefix` read levels from.

use tracing_subscriber::EnvFilter;

use crate::cli::{GlobalArgs, LogFormat};

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

pub fn prefixed() -> bool {
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

pub fn init(global: &GlobalArgs, is_tty_stderr: bool) {
    let default = match i16::from(global.verbose) - i16::from(global.quiet) {
        i16::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("runner_medic={default},warn")));
    let journal = stderr_is_journal();
    let format = match global.log_format {
        // The journal stamps and levels each line itself: plain and human lines become
        // prefixed ones there.
        Some(LogFormat::Plain | LogFormat::Human) | None if journal => LogFormat::Syslog,
        Some(f) => f,
        None if is_tty_stderr => LogFormat::Human,
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
            .with_ansi(is_tty_stderr && std::env::var_os("NO_COLOR").is_none())
            .without_time()
            .init(),
    }
}
