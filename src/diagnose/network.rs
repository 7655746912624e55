//! Talking to GitLab about one runner: verify its token, look up its record, and when the
//! network fails, find the first layer that fails (DNS, TCP, TLS, HTTP) with the address tried.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use url::Url;

use super::config_checks::Pre;
use super::{host_now, Record};
use crate::gitlab::{self, AdminApi, RunnerApi, RunnerDetails, Verified};
use crate::report::{Finding, FindingCode};
use crate::runner_config::RunnerEntry;

#[derive(Debug, Default)]
pub struct Observation {
    pub verify: Option<Result<Verified, gitlab::Error>>,
    pub record: Option<Result<RunnerDetails, gitlab::Error>>,
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

pub async fn observe(
    entry: &RunnerEntry,
    pre: &Pre,
    client: Option<Result<Arc<RunnerApi>, gitlab::Error>>,
    admin: Option<Arc<AdminApi>>,
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
    if pre.token_usable {
        if let Some(token) = &entry.token {
            let result = client.verify(token).await;
            let local = host_now();
            match &result {
                Ok(reply) => {
                    if let Some(d) = reply.server_date {
                        obs.dates.push((d, local));
                    }
                }
                Err(e) if e.is_transport() => {
                    obs.network = Some(probe(&entry.name, url, e).await);
                }
                Err(_) => {}
            }
            obs.verify = Some(result.map(|r| r.value));
        }
    }
    // The record tells deleted from expired/revoked, and shows a paused runner.
    let needs_record = obs.network.is_none();
    if let (Some(admin), Some(id), true) = (admin, entry.id, needs_record) {
        let result = admin.runner(id).await;
        if let Ok(reply) = &result {
            if let Some(d) = reply.server_date {
                obs.dates.push((d, host_now()));
            }
        }
        obs.record = Some(result.map(|r| r.value));
    }
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
