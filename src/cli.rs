//! The command line, as docs/reference.md documents it. clap definitions only; the man page and
//! completions are generated from these same definitions.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "runner-medic",
    version,
    about = "Detects why GitLab runners lost their authentication and repairs them",
    long_about = "Detects why GitLab runners lost their authentication and repairs them: \
                  diagnose every [[runners]] entry of a gitlab-runner config.toml, obtain new \
                  tokens, rewrite config.toml in place, restart the service, verify."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// The gitlab-runner config.toml [default: /etc/gitlab-runner/config.toml as root, else ~/.gitlab-runner/config.toml]
    #[arg(
        long,
        global = true,
        env = "RUNNER_MEDIC_RUNNER_CONFIG",
        value_name = "FILE"
    )]
    pub runner_config: Option<PathBuf>,
    /// runner-medic's own settings (TOML) [default: /etc/runner-medic/settings.toml if present]
    #[arg(
        long,
        global = true,
        env = "RUNNER_MEDIC_SETTINGS",
        value_name = "FILE"
    )]
    pub settings: Option<PathBuf>,
    /// The GitLab instance trusted with the privileged token
    #[arg(
        long,
        global = true,
        env = "RUNNER_MEDIC_GITLAB_URL",
        value_name = "URL"
    )]
    pub gitlab_url: Option<String>,
    /// File holding the privileged token (must not be group/world readable); or set RUNNER_MEDIC_ADMIN_TOKEN
    #[arg(
        long,
        global = true,
        env = "RUNNER_MEDIC_ADMIN_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// Journal, backups and lock files (mode 0700) [default: /var/lib/runner-medic as root, else ~/.local/state/runner-medic]
    #[arg(
        long,
        global = true,
        env = "RUNNER_MEDIC_STATE_DIR",
        value_name = "DIR"
    )]
    pub state_dir: Option<PathBuf>,
    /// Report format on stdout; logs go to stderr
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// After the run, write Prometheus text-format metrics here (atomically)
    #[arg(
        long,
        global = true,
        env = "RUNNER_MEDIC_METRICS_FILE",
        value_name = "FILE"
    )]
    pub metrics_file: Option<PathBuf>,
    /// Coordination store for runner tokens that several hosts share: none or etcd [default: none]
    #[arg(
        long,
        global = true,
        env = "RUNNER_MEDIC_FLEET_STORE",
        value_name = "STORE"
    )]
    pub fleet_store: Option<String>,
    /// The store's endpoints, comma-separated [default: http://127.0.0.1:2379]
    #[arg(
        long,
        global = true,
        env = "RUNNER_MEDIC_FLEET_ENDPOINTS",
        value_name = "URL[,URL…]",
        value_delimiter = ','
    )]
    pub fleet_endpoints: Option<Vec<String>>,
    /// Key prefix in the store [default: /runner-medic]
    #[arg(
        long,
        global = true,
        env = "RUNNER_MEDIC_FLEET_PREFIX",
        value_name = "PREFIX"
    )]
    pub fleet_prefix: Option<String>,
    /// One deadline for the whole run (e.g. `30m`): once it passes no new token is requested and the run stops with exit 1 [default: 30m]
    #[arg(
        long,
        global = true,
        env = "RUNNER_MEDIC_RUN_TIMEOUT",
        value_name = "DURATION"
    )]
    pub run_timeout: Option<String>,
    /// Log format on stderr [default: human on a terminal, plain otherwise]
    #[arg(long, global = true, value_enum, env = "RUNNER_MEDIC_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// More log output (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Plain,
    Json,
    /// Plain lines that start with their syslog priority (`<3>` error, `<4>` warning, `<6>`
    /// info, `<7>` debug) and carry no timestamp: what journald and `logger --prio-prefix` read.
    /// Chosen by itself when stderr is the journal (`JOURNAL_STREAM`).
    Syslog,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every [[runners]] entry against GitLab and name each problem with its fix; changes nothing
    Diagnose(DiagnoseArgs),
    /// Fix what diagnose finds: new tokens, config.toml rewritten, service restarted, result verified
    Rotate(RotateArgs),
    /// Stay running: diagnose + rotate every interval, with random jitter
    Agent(AgentArgs),
    /// Show every runner of config.toml: name, id, host, masked token, expiry, last recorded
    /// status; offline: sends no request and changes nothing
    List,
    /// The whole cycle against an embedded simulated GitLab in a temporary directory
    Demo(DemoArgs),
    /// Print shell completions
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff); with --dir, write it and one page per command there
    #[command(hide = true)]
    Man {
        /// Write runner-medic.1 and runner-medic-COMMAND.1 into this directory
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

#[derive(Debug, Args, Clone, Default)]
pub struct DiagnoseArgs {
    /// Warn about valid tokens that expire sooner than this (e.g. 30d)
    #[arg(long, value_name = "DURATION")]
    pub renew_before: Option<String>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct RotateArgs {
    /// Print the plan and a masked diff; send no changing request, write nothing, touch no service
    #[arg(long)]
    pub dry_run: bool,
    /// Only this runner (name or id); repeatable
    #[arg(long = "runner", value_name = "NAME_OR_ID")]
    pub runners: Vec<String>,
    /// Rotate healthy tokens too
    #[arg(long)]
    pub force: bool,
    /// Renew valid tokens that expire sooner than this (e.g. 30d)
    #[arg(long, value_name = "DURATION")]
    pub renew_before: Option<String>,
    /// How to replace a dead token: `auto` resets it when the runner record exists and recreates
    /// the runner when it is gone; `reset` never recreates; `recreate` always makes a new runner
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Write config.toml but do not stop or start the service (= `--restart never`)
    #[arg(long)]
    pub no_restart: bool,
    /// Wait for another run's lock instead of exiting 2
    #[arg(long)]
    pub wait: bool,
    /// Sleep a random delay up to this long first when not on a terminal (cron fleets)
    #[arg(long, value_name = "DURATION")]
    pub random_delay: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Auto,
    Reset,
    Recreate,
}

#[derive(Debug, Args, Clone, Default)]
pub struct AgentArgs {
    /// Time between cycles [default: 6h]
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
    /// Random extra delay per cycle [default: a tenth of the interval]
    #[arg(long, value_name = "DURATION")]
    pub jitter: Option<String>,
    /// Serve /metrics on this address
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    #[command(flatten)]
    pub rotate: AgentRotateArgs,
}

#[derive(Debug, Args, Clone, Default)]
pub struct AgentRotateArgs {
    /// Renew valid tokens that expire sooner than this (e.g. 30d)
    #[arg(long, value_name = "DURATION")]
    pub renew_before: Option<String>,
    #[command(flatten)]
    pub service: ServiceArgs,
}

/// How gitlab-runner is supervised and picks up new tokens: the same flags for `rotate` and
/// `agent`.
#[derive(Debug, Args, Clone, Default)]
pub struct ServiceArgs {
    /// The supervisor of gitlab-runner [default: auto]
    #[arg(long, value_enum, value_name = "MANAGER")]
    pub service_manager: Option<crate::service::ManagerKind>,
    /// The service (unit, init script, container) name [default: gitlab-runner]
    #[arg(long, value_name = "NAME")]
    pub service_name: Option<String>,
    /// How gitlab-runner picks up new tokens: `reload` (default) lets it re-read config.toml
    /// (SIGHUP where the supervisor can send one), confirms the new token is in use and restarts
    /// only if not; `always` stops, writes, starts; `when-needed` restarts only for dead tokens;
    /// `never` only writes
    #[arg(long, value_enum, value_name = "POLICY")]
    pub restart: Option<crate::service::RestartPolicy>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct DemoArgs {
    /// Keep the demo's directory instead of removing it
    #[arg(long)]
    pub keep: bool,
}
