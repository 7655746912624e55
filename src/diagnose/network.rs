//! Talking to GitLab about one runner: verify its token, look up its record, and when the
//! network fails, find the first layer that fails (DNS, TCP, TLS, HTTP) with the address tried.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use url::Url;

use super::config_checks::Pre;
use super::{host_now, Privileged, Record};
use crate::gitlab::{self, RunnerApi, RunnerDetails, RunnerManagerInfo, Verified};
use crate::report::{Finding, FindingCode};
use crate::runner_config::RunnerEntry;
use crate::settings::Settings;

#[derive(Debug, Default)]
pub struct Observation {
    pub verify: Option<Result<Verified, gitlab::Error>>,
    pub record: Option<Result<RunnerDetails, gitlab::Error>>,
    /// The runner's managers were asked for (alongside the record, when a change of its token
    /// is likely); `managers` is `None` when GitLab could not tell.
    pub managers_read: bool,
    pub managers: Option<Vec<RunnerManagerInfo>>,
    /// A network finding, when the path to GitLab is broken.
    pub network: Option<Finding>,
    pub dates: Vec<(DateTime<Utc>, DateTime<Utc>)>,
}

impl Observation {
    pub fn record_state(&self) -> Record {
        match &self.record {
            Some(Ok(d)) => Record::Exists(Box::new(d.clone())),
            Some(Err(e)) if e.status() == Some(404) => Record::Deleted,
            _ => Record::Unknown,
        }
    }
}

/// What decides whether a runner's record is read on this run.
#[derive(Debug, Clone, Copy)]
pub struct Wants<'a> {
    /// Every token is a candidate for a change (`rotate --force`).
    pub force: bool,
    /// A remembered record is recent enough and not paused (`known`).
    pub fresh: bool,
    pub settings: &'a Settings,
    pub limit: &'a super::Limit,
}

/// Slack on the renew window when guessing from one answer's `Date` whether a token is about
/// to be judged expiring (the judgement uses the median clock of all answers): a guess that
/// misses costs one more round after the judgement, never a wrong decision.
pub(super) const EXPIRING_SLACK: chrono::Duration = chrono::Duration::hours(1);

/// Verify the runner's token, then read what the answer calls for: the record when the token is
/// refused or could not be checked (it tells deleted from expired or revoked), when it is about
/// to expire or `--force` makes it a candidate for a change, or when the remembered record is
/// stale or shows a paused runner; with the record, when a change of the token is likely, the
/// runner's managers (who else uses the token), both at once. A healthy runner whose record is
/// remembered costs its verify alone.
pub async fn observe(
    entry: &RunnerEntry,
    pre: &Pre,
    client: Option<Result<Arc<RunnerApi>, gitlab::Error>>,
    admin: Option<&Privileged<'_>>,
    wants: Wants<'_>,
) -> Observation {
    let mut obs = Observation::default();
    let Some(url) = &pre.url else { return obs };
    let client = match client {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            obs.network = Some(Finding::error(
                FindingCode::TlsFailure,
                format!("runner `{}`: {e}", entry.name),
                "check `tls-ca-file`, `tls-cert-file` and `tls-key-file` of the entry",
            ));
            return obs;
        }
        None => return obs,
    };
    let mut expiring = false;
    if pre.token_usable {
        if let Some(token) = &entry.token {
            let result = wants.limit.run(client.verify(token)).await;
            let local = host_now();
            match &result {
                Ok(reply) => {
                    if let Some(d) = reply.server_date {
                        obs.dates.push((d, local));
                    }
                    let at = reply.value.token_expires_at.or(entry.token_expires_at);
                    let now = reply.server_date.unwrap_or(local);
                    expiring = at.is_some_and(|at| {
                        at - now
                            <= super::renew_window(entry, Some(at), wants.settings) + EXPIRING_SLACK
                    });
                }
                Err(e) if e.is_transport() => {
                    obs.network = Some(probe(&entry.name, url, e).await);
                }
                Err(_) => {}
            }
            obs.verify = Some(result.map(|r| r.value));
        }
    }
    if obs.network.is_some() {
        return obs;
    }
    let (Some(admin), Some(id)) = (admin, entry.id) else {
        return obs;
    };
    let dead = matches!(&obs.verify, Some(Err(e)) if matches!(e.status(), Some(403 | 422)));
    let needed = match &obs.verify {
        Some(Ok(_)) => wants.force || expiring || !wants.fresh,
        _ => true,
    };
    if !needed {
        return obs;
    }
    let Some(api) = admin.usable().await else {
        return obs;
    };
    let (record, managers) = if wants.force || dead || expiring {
        let (record, managers) = tokio::join!(
            wants.limit.run(api.runner(id)),
            wants.limit.run(super::sharing::read(&api, id))
        );
        obs.managers_read = true;
        (record, managers)
    } else {
        (wants.limit.run(api.runner(id)).await, None)
    };
    if let Ok(reply) = &record {
        if let Some(d) = reply.server_date {
            obs.dates.push((d, host_now()));
        }
    }
    obs.record = Some(record.map(|r| r.value));
    obs.managers = managers;
    obs
}

/// Find the first layer that fails on the way to `url`.
pub async fn probe(runner: &str, url: &Url, err: &gitlab::Error) -> Finding {
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<std::net::SocketAddr> =
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(a) => a.collect(),
            Err(e) => {
                return Finding::error(
                    FindingCode::DnsFailure,
                    format!("runner `{runner}`: cannot resolve `{host}`: {e}"),
                    format!(
                    "check the name and the resolver: `getent hosts {host}`, `/etc/resolv.conf`"
                ),
                )
            }
        };
    let mut last = String::new();
    let mut connected = false;
    for addr in &addrs {
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(_)) => {
                connected = true;
                break;
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: no answer within 5 s"),
        }
    }
    if !connected {
        return Finding::error(
            FindingCode::ConnectFailure,
            format!("runner `{runner}`: cannot connect to `{host}:{port}` ({last})"),
            format!("check that GitLab is up and that no firewall or proxy blocks it: `curl -v {url}api/v4/version`"),
        );
    }
    match err {
        gitlab::Error::Tls { reason, .. } => Finding::error(
            FindingCode::TlsFailure,
            format!("runner `{runner}`: the TLS handshake with `{host}:{port}` failed: {reason}"),
            "set `tls-ca-file` in the runner's entry to the CA that signed GitLab's certificate, or renew the server certificate",
        ),
        other => Finding::error(
            FindingCode::ServerError,
            format!("runner `{runner}`: `{host}:{port}` accepts connections but the request failed: {other}"),
            format!("check GitLab's health (`curl -v {url}-/readiness`) and retry later"),
        ),
    }
}
