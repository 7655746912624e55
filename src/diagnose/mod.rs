//! diagnose: name every cause of a runner's authentication failure, with its fix. It changes
//! nothing; rotate and the agent run it before they act.
//!
//! Network work happens first (`observe`), judgement after (`judge`, pure), because expiry is
//! judged by GitLab's clock, which is known only once some answer carried a `Date` header.

mod admin;
mod config_checks;
mod judge;
pub mod known;
mod network;
pub mod sharing;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;

pub use crate::gitlab::{has_legacy_ci_suffix, normalize_url, parse_runner_url, url_key};
pub use crate::report::describe_in as describe_expiry;
pub use crate::report::{Finding, FindingCode, Severity};
pub use admin::AdminAccess;
pub use judge::{renew_window, Judged, TokenState};
pub use known::KnownRunners;

use crate::gitlab::{self, AdminApi, ClientOptions, RunnerApi, RunnerDetails, TlsFiles};
use crate::report::{Report, RunnerReport};
use crate::runner_config::{ConfigFile, RunnerEntry};
use crate::settings::Settings;

/// The host's clock, as diagnose reads it (expiry is judged on GitLab's clock: this plus the
/// measured skew).
pub fn host_now() -> DateTime<Utc> {
    Utc::now()
}

/// What the server said about one runner's record.
#[derive(Debug, Clone)]
pub enum Record {
    Exists(Box<RunnerDetails>),
    Deleted,
    /// Not checked (no privileged access for this runner) or the check failed.
    Unknown,
}

/// Everything diagnose learnt about one runner, for rotate to plan from.
#[derive(Debug, Clone)]
pub struct RunnerFacts {
    pub entry: RunnerEntry,
    pub state: TokenState,
    pub record: Record,
    /// The privileged token may be used for this runner (its `url` is `--gitlab-url`).
    pub admin_usable: bool,
    /// Expiry as GitLab reported it (verify), else as config.toml has it.
    pub expires_at: Option<DateTime<Utc>>,
    /// Other hosts use this token (GitLab's runner managers); `None`: not known.
    pub sharing: Option<sharing::Sharing>,
}

impl RunnerFacts {
    pub fn shared(&self) -> bool {
        self.sharing.as_ref().is_some_and(sharing::Sharing::shared)
    }

    /// Shared, or not known not to be (no privileged token, a GitLab without the managers
    /// endpoint): a host with a fleet store treats such a token as shared.
    pub fn maybe_shared(&self) -> bool {
        self.sharing.as_ref().is_none_or(sharing::Sharing::shared)
    }
}

pub struct Diagnosis {
    pub report: Report,
    pub config: Option<ConfigFile>,
    pub facts: Vec<RunnerFacts>,
    /// GitLab's time minus the host's, when known.
    pub skew: Option<chrono::Duration>,
    /// What the privileged token may do, when it was checked and works.
    pub admin_access: Option<AdminAccess>,
    /// The runner records and privileged check remembered, with what this run read added;
    /// saved by the caller ([`KnownRunners::save`]) unless it is a dry run.
    pub known: KnownRunners,
}

/// Client options for a runner: its TLS files, the settings' timeouts and retries.
pub fn client_options(
    settings: &Settings,
    tls: TlsFiles,
    system_id: Option<String>,
) -> ClientOptions {
    ClientOptions {
        timeout: settings.request_timeout,
        retry: settings.retry.clone(),
        tls,
        system_id,
        certs_dirs: settings.certs_dirs.clone(),
    }
}

pub fn tls_files(entry: &RunnerEntry) -> TlsFiles {
    TlsFiles {
        ca_file: entry.tls_ca_file.clone(),
        cert_file: entry.tls_cert_file.clone(),
        key_file: entry.tls_key_file.clone(),
    }
}

/// A client, or why it could not be built (a bad `tls-ca-file`, say).
type ClientSlot = Result<Arc<RunnerApi>, gitlab::Error>;

/// Runner-token clients, one per (url, TLS files): runners of one instance share connections,
/// and the TLS roots are loaded once.
pub struct Clients {
    options: ClientOptions,
    cache: std::sync::Mutex<HashMap<(String, TlsFiles), ClientSlot>>,
}

impl Clients {
    pub fn new(settings: &Settings, system_id: Option<String>) -> Self {
        Self {
            options: client_options(settings, TlsFiles::default(), system_id),
            cache: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The client for an entry's `url` and TLS files; `None` when its url is unusable.
    pub fn for_entry(&self, entry: &RunnerEntry) -> Option<Result<Arc<RunnerApi>, gitlab::Error>> {
        let url = entry
            .url
            .as_deref()
            .and_then(|u| parse_runner_url(u).ok())?;
        Some(self.for_url(&url, tls_files(entry)))
    }

    pub fn for_url(
        &self,
        url: &::url::Url,
        tls: TlsFiles,
    ) -> Result<Arc<RunnerApi>, gitlab::Error> {
        // A poisoned lock only means another task panicked; the map is still usable.
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .entry((url_key(url), tls.clone()))
            .or_insert_with(|| {
                let options = ClientOptions {
                    tls,
                    ..self.options.clone()
                };
                RunnerApi::new(url, options).map(Arc::new)
            })
            .clone()
    }
}

/// The privileged client, built only from the credential (so only for `--gitlab-url`). Its TLS
/// trusts, besides the system roots, the CA and client certificate that a runner of the same
/// instance names in config.toml: a private CA configured for the runners works for both.
pub fn admin_api(
    settings: &Settings,
    cred: &gitlab::AdminCredential,
    entries: &[RunnerEntry],
) -> Result<AdminApi, gitlab::Error> {
    let tls = entries
        .iter()
        .find(|e| {
            e.url
                .as_deref()
                .and_then(|u| parse_runner_url(u).ok())
                .map(|u| url_key(&u))
                == Some(url_key(&cred.url))
        })
        .map(tls_files)
        .unwrap_or_default();
    AdminApi::new(cred, client_options(settings, tls, None))
}

/// gitlab-runner's system id from `<config dir>/.runner_system_id` (reference §6.3). The
/// directory is that of the path as given, not of a symlink's target: gitlab-runner joins
/// `filepath.Dir(pathname)` with the name (gitlab-org/gitlab-runner
/// `commands/internal/configfile`, `ConfigFile.Load`), and `filepath.Dir` does not resolve links.
pub fn read_system_id(config: &ConfigFile) -> Option<String> {
    let path = config.path.parent()?.join(".runner_system_id");
    let text = fs_err::read_to_string(path).ok()?;
    let id = text.trim();
    let valid = id.len() == 14
        && (id.starts_with("s_") || id.starts_with("r_"))
        && id[2..].chars().all(|c| c.is_ascii_alphanumeric());
    valid.then(|| id.to_string())
}

/// Samples of (server `Date`, host time at receipt).
#[derive(Default)]
struct Clock {
    samples: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

impl Clock {
    fn add(&mut self, server: Option<DateTime<Utc>>, local: DateTime<Utc>) {
        if let Some(s) = server {
            // `Date` is cut to whole seconds: the true time lies in [s, s + 1), so centre it.
            self.samples
                .push((s + chrono::Duration::milliseconds(500), local));
        }
    }

    /// Median offset; `Date` has one-second resolution, so one sample is as good as many, but
    /// the median resists a proxy with its own clock.
    fn skew(&self) -> Option<chrono::Duration> {
        let mut offsets: Vec<i64> = self
            .samples
            .iter()
            .map(|(s, l)| (*s - *l).num_milliseconds())
            .collect();
        if offsets.is_empty() {
            return None;
        }
        offsets.sort_unstable();
        Some(chrono::Duration::milliseconds(offsets[offsets.len() / 2]))
    }
}

/// Run every check. Never writes anything.
/// [`diagnose`], cut off at the run's deadline ([`Settings::deadline`]): diagnosing only reads,
/// so stopping it midway loses nothing. Err is the report of a run that ran out of time.
pub async fn diagnose_by_deadline(
    settings: &Settings,
    command: crate::report::ReportCommand,
    force: bool,
) -> Result<Diagnosis, Report> {
    let deadline = tokio::time::Instant::from_std(settings.deadline());
    if let Ok(diagnosis) = tokio::time::timeout_at(deadline, diagnose_for(settings, force)).await {
        Ok(diagnosis)
    } else {
        tracing::error!(
            run_timeout_s = settings.run_timeout.as_secs(),
            "the run's deadline passed while diagnosing; stopping"
        );
        let mut report = Report::new(
            command,
            settings.runner_config.display().to_string(),
            settings.gitlab_url.as_ref().map(url_key),
        );
        report.findings.push(settings.run_timeout_finding(
            "while diagnosing, before anything was changed; no token was requested",
        ));
        Err(report)
    }
}

pub async fn diagnose(settings: &Settings) -> Diagnosis {
    diagnose_for(settings, false).await
}

/// [`diagnose`], for a rotation: with `force`, every runner's token is a candidate for a change,
/// so whether it is shared is asked for every runner, not only for dead and expiring ones.
pub async fn diagnose_for(settings: &Settings, force: bool) -> Diagnosis {
    let mut report = Report::new(
        crate::report::ReportCommand::Diagnose,
        settings.runner_config.display().to_string(),
        settings.gitlab_url.as_ref().map(url_key),
    );
    let config = match ConfigFile::load(&settings.runner_config) {
        Ok(c) => c,
        Err(e) => {
            report.findings.push(config_checks::file_finding(&e));
            return Diagnosis {
                report,
                config: None,
                facts: Vec::new(),
                skew: None,
                admin_access: None,
                known: KnownRunners::default(),
            };
        }
    };
    let entries = config.runners();
    if entries.is_empty() {
        report.findings.push(
            Finding::error(
                FindingCode::ConfigInvalid,
                format!("`{}` has no [[runners]] entries", settings.runner_config.display()),
                "register a runner (`gitlab-runner register`) or point `--runner-config` at the right file",
            )
            .at(Some(1)),
        );
    }
    let system_id = read_system_id(&config);
    let mut clock = Clock::default();
    let mut known = KnownRunners::load(settings);
    let started = host_now();

    // Every request of the diagnosis takes a place here: a runner may send two at once (its record
    // and its managers), the privileged check runs alongside, and `concurrency` still holds.
    let limit = Limit(tokio::sync::Semaphore::new(settings.concurrency));
    let limit = &limit;
    // The privileged credential: checked alongside the runners' verifies when no recent check is
    // remembered or a runner will need it, else only on first use (see `Privileged`).
    let privileged = match &settings.admin {
        Some(cred) => match admin_api(settings, cred, &entries) {
            Ok(api) => Some(Privileged {
                api: Arc::new(api),
                settings,
                limit,
                remembered: known
                    .admin_facts(cred, started, settings.record_refresh)
                    .cloned(),
                checked: tokio::sync::OnceCell::new(),
            }),
            Err(e) => {
                report.findings.push(Finding::error(
                    FindingCode::AdminTokenInvalid,
                    format!("cannot set up the privileged client: {e}"),
                    "check `--gitlab-url` and the TLS settings",
                ));
                None
            }
        },
        None => None,
    };
    let privileged = privileged.as_ref();

    let clients = Clients::new(settings, system_id.clone());
    let pre: Vec<config_checks::Pre> = entries
        .iter()
        .map(|e| config_checks::check_entry(e, &config, settings))
        .collect();

    // Unordered: a runner that needs two rounds does not hold up the places of those after it.
    let observe_all =
        futures::stream::iter(entries.iter().zip(&pre).enumerate().map(|(i, (entry, p))| {
            let client = p.url.as_ref().map(|u| clients.for_url(u, tls_files(entry)));
            let admin = privileged.filter(|_| p.admin_usable);
            let wants = network::Wants {
                force,
                fresh: entry
                    .id
                    .is_some_and(|id| known.fresh(id, started, settings.record_refresh)),
                settings,
                limit,
            };
            async move { (i, network::observe(entry, p, client, admin, wants).await) }
        }))
        .buffer_unordered(settings.concurrency)
        .collect::<Vec<(usize, network::Observation)>>();
    // At once, alongside the verifies, when a runner will need the token anyway (config.toml
    // says a token is expired or about to be, a record is due, `--force`): waiting for the
    // first verify to ask for it would add a round to that runner's path.
    let needed_soon = force
        || entries.iter().zip(&pre).any(|(entry, p)| {
            let due = entry.token_expires_at.is_some_and(|at| {
                at - started <= renew_window(entry, Some(at), settings) + network::EXPIRING_SLACK
            });
            let stale = entry
                .id
                .is_some_and(|id| !known.fresh(id, started, settings.record_refresh));
            p.admin_usable && (due || stale || !p.token_usable)
        });
    let check_admin = async {
        if let Some(p) = privileged.filter(|p| p.remembered.is_none() || needed_soon) {
            p.usable().await;
        }
    };
    let (mut observed, ()) = tokio::join!(observe_all, check_admin);
    observed.sort_by_key(|(i, _)| *i);
    let mut observations: Vec<network::Observation> =
        observed.into_iter().map(|(_, o)| o).collect();
    for o in &observations {
        for (date, local) in &o.dates {
            clock.add(Some(*date), *local);
        }
    }
    if let Some(p) = privileged {
        if let Some((checked, _)) = p.checked.get() {
            for (date, local) in &checked.dates {
                clock.add(Some(*date), *local);
            }
        }
    }

    let skew = clock.skew();
    if let Some(skew) = skew {
        let now = host_now();
        report.server_time = Some(now + skew);
        report.clock_skew_seconds = Some(skew.num_milliseconds() as f64 / 1000.0);
    }
    let server_now = host_now() + skew.unwrap_or_else(chrono::Duration::zero);

    let mut judgements: Vec<Judged> = entries
        .iter()
        .zip(&pre)
        .zip(&observations)
        .map(|((entry, p), obs)| judge::judge(entry, p, obs, server_now, settings))
        .collect();
    // A runner whose token may change needs its record and its managers. `observe` reads both
    // when its answer already suggests a change; what it could not foresee is read now.
    let window = chrono::Duration::from_std(settings.fleet.manager_window)
        .unwrap_or_else(|_| chrono::Duration::hours(2));
    let late: Vec<(usize, Late)> = futures::stream::iter(
        entries
            .iter()
            .zip(&pre)
            .zip(&observations)
            .zip(&judgements)
            .enumerate()
            .map(|(i, (((entry, p), obs), judged))| {
                let considered = force
                    || judged.state == TokenState::Dead
                    || judged
                        .findings
                        .iter()
                        .any(|f| f.code == FindingCode::TokenExpiring);
                let wanted = privileged
                    .filter(|_| p.admin_usable && considered && obs.network.is_none())
                    .zip(entry.id);
                let has_record = obs.record.is_some();
                let has_managers = obs.managers_read;
                async move {
                    let mut late = Late::default();
                    let Some((admin, id)) = wanted else {
                        return (i, late);
                    };
                    if has_record && has_managers {
                        return (i, late);
                    }
                    let Some(api) = admin.usable().await else {
                        return (i, late);
                    };
                    if !has_record {
                        late.record = Some(limit.run(api.runner(id)).await);
                    }
                    let exists = late.record.as_ref().is_none_or(Result::is_ok);
                    if exists && !has_managers {
                        late.managers = limit.run(sharing::read(&api, id)).await;
                        late.managers_read = true;
                    }
                    (i, late)
                }
            }),
    )
    .buffer_unordered(settings.concurrency)
    .collect()
    .await;
    for (i, late) in late {
        let obs = &mut observations[i];
        if late.managers_read {
            obs.managers_read = true;
            obs.managers = late.managers;
        }
        if let Some(record) = late.record {
            if let Ok(reply) = &record {
                if let Some(d) = reply.server_date {
                    clock.add(Some(d), host_now());
                }
            }
            obs.record = Some(record.map(|r| r.value));
            judgements[i] = judge::judge(&entries[i], &pre[i], obs, server_now, settings);
        }
    }

    // The privileged token: as checked in this run, else as remembered.
    let mut admin_access = None;
    let mut admin = None;
    if let (Some(p), Some(cred)) = (privileged, &settings.admin) {
        let checked = match p.checked.get() {
            Some((checked, facts)) => {
                match facts {
                    Some(f) if checked.usable => known.note_admin(cred, f, host_now()),
                    _ => known.forget_admin(),
                }
                checked.clone()
            }
            None => p
                .remembered
                .as_ref()
                .map_or_else(admin::AdminCheck::default, |f| {
                    admin::judge(f, &url_key(&cred.url), settings)
                }),
        };
        report.findings.extend(checked.findings);
        report.admin_token_expires_at = checked
            .expires_at
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc());
        admin_access = checked.access;
        if checked.usable {
            admin = Some(p.api.clone());
        }
    }
    if let Some(skew) = skew {
        if let Some(f) = admin::clock_finding(skew, settings) {
            report.findings.push(f);
        }
    }

    let sharings: Vec<Option<sharing::Sharing>> = entries
        .iter()
        .zip(&pre)
        .zip(&observations)
        .zip(&judgements)
        .map(|(((entry, p), obs), judged)| {
            let considered = force
                || judged.state == TokenState::Dead
                || judged
                    .findings
                    .iter()
                    .any(|f| f.code == FindingCode::TokenExpiring);
            if !(p.admin_usable
                && admin.is_some()
                && considered
                && matches!(obs.record_state(), Record::Exists(_)))
            {
                return None;
            }
            entry.id?;
            let list = obs.managers.clone()?;
            // A dead token was last used when it died: count the hosts that used it then.
            let anchor = match judged.expires_at {
                Some(at) if judged.state == TokenState::Dead => at.min(server_now),
                _ => server_now,
            };
            Some(sharing::count(&list, system_id.as_deref(), anchor, window))
        })
        .collect();
    for obs in &observations {
        if let Some(Ok(record)) = &obs.record {
            known.note_record(record, started);
        }
    }

    let duplicates = config_checks::duplicate_tokens(&entries);
    let mut facts = Vec::new();
    for ((((entry, p), obs), judged), sharing) in entries
        .iter()
        .zip(pre)
        .zip(observations)
        .zip(judgements)
        .zip(sharings)
    {
        let mut findings = p.findings.clone();
        findings.extend(judged.findings);
        if let Some(s) = sharing.as_ref().filter(|s| s.shared()) {
            findings.push(sharing::finding(
                entry,
                s,
                judged.state == TokenState::Dead,
                settings,
            ));
        }
        if let Some(first) = duplicates.get(&entry.index) {
            findings.push(
                Finding::warning(
                    FindingCode::DuplicateToken,
                    format!(
                        "runner `{}` uses the same token as runner `{first}`; a reset for one breaks the other",
                        entry.name
                    ),
                    format!(
                        "remove the duplicate entry at `{}:{}`, or register a runner of its own",
                        settings.runner_config.display(),
                        entry.line
                    ),
                )
                .at(Some(entry.line)),
            );
        }
        report.runners.push(RunnerReport {
            url: entry.url.clone(),
            token: entry.token.as_ref().map(crate::secret::RunnerToken::masked),
            token_expires_at: judged.expires_at,
            findings,
            managers: sharing.as_ref().map(|s| s.managers),
            shared: sharing.as_ref().is_some_and(sharing::Sharing::shared),
            ..RunnerReport::new(
                entry.name.clone(),
                entry.id.or(judged.verified_id),
                entry.line,
            )
        });
        facts.push(RunnerFacts {
            entry: entry.clone(),
            state: judged.state,
            record: obs.record_state(),
            admin_usable: p.admin_usable && admin.is_some(),
            expires_at: judged.expires_at,
            sharing,
        });
    }
    Diagnosis {
        report,
        config: Some(config),
        facts,
        skew,
        admin_access,
        known,
    }
}

/// The places for requests in flight during a diagnosis (`concurrency`).
#[derive(Debug)]
pub(crate) struct Limit(tokio::sync::Semaphore);

impl Limit {
    /// Send `request` once a place is free.
    pub(crate) async fn run<F: std::future::Future>(&self, request: F) -> F::Output {
        // Never closed, so a place always comes.
        let _place = self.0.acquire().await.ok();
        request.await
    }
}

/// What was read for a runner after the judgement.
#[derive(Default)]
struct Late {
    record: Option<Result<gitlab::Reply<RunnerDetails>, gitlab::Error>>,
    managers_read: bool,
    managers: Option<Vec<gitlab::RunnerManagerInfo>>,
}

/// The privileged client, checked once per run and only when needed: at once when no recent
/// check is remembered, else by the first runner that needs the token (a refused token, a stale
/// record, a change to plan). A run of healthy runners with fresh records never sends it.
pub(crate) struct Privileged<'a> {
    api: Arc<AdminApi>,
    settings: &'a Settings,
    limit: &'a Limit,
    /// The facts of a check younger than `record_refresh`.
    remembered: Option<admin::AdminFacts>,
    checked: tokio::sync::OnceCell<(admin::AdminCheck, Option<admin::AdminFacts>)>,
}

impl Privileged<'_> {
    /// The client, once the token is known to work in this run (checked on first use).
    pub(crate) async fn usable(&self) -> Option<Arc<AdminApi>> {
        let (checked, _) = self
            .checked
            .get_or_init(|| admin::check(&self.api, self.settings, self.limit))
            .await;
        checked.usable.then(|| self.api.clone())
    }
}
