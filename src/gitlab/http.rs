//! The transport: TLS set-up, one send-with-retries loop that paces itself by GitLab's rate
//! limits, and answers read with caps.
//!
//! The server is not trusted to be well-behaved: runner-medic runs unattended as root and a
//! runner's `url` may point anywhere. So every answer is read with a cap ([`MAX_BODY_BYTES`]),
//! a list follows at most [`MAX_PAGES`] pages, and any text from the server that goes into an
//! error is cut to [`SERVER_TEXT_CHARS`] with every token in it masked.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use super::error::{classify, Error};
use super::pace::{Pacer, Seen};
use super::retry::{Idempotency, RetryPolicy};
pub use super::tls::TlsFiles;
use crate::secret::{mask_tokens_in, AdminToken};

/// The most runner-medic reads of any answer. The largest answer it asks for is a page of 100
/// runners (about 30 KiB); 1 MiB leaves room for any real instance while a broken or hostile
/// server (or a proxy answering with a huge page) cannot make a process that runs as root fill
/// its memory. A larger successful answer is [`Error::TooLarge`]; of an error answer only the
/// first 1 MiB is read, enough for its message.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The most pages a list (`GET /runners/all`) is followed for: 1000 pages of [`PER_PAGE`] is
/// 100 000 runners, more than any instance has. A server that still announces a next page after
/// that is broken or hostile, and runner-medic must not loop forever on its word.
pub const MAX_PAGES: u32 = 1000;

/// Items asked for per page (GitLab's maximum).
pub(super) const PER_PAGE: usize = 100;

/// The most characters of a server's own text (an error message) put into an error: enough for
/// any message GitLab writes, short enough that a body cannot flood a report or a log.
pub const SERVER_TEXT_CHARS: usize = 200;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Per-request timeout (connect + answer).
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub tls: TlsFiles,
    /// gitlab-runner's system id (`.runner_system_id`), sent with verify so GitLab does not
    /// create a stray `<legacy>` runner manager (reference §2.1).
    pub system_id: Option<String>,
    /// Where `<host>.crt`, `<host>.auth.crt` and `<host>.auth.key` are looked for when the entry
    /// names no file of its own, first to last (gitlab-runner's certificate directory first).
    pub certs_dirs: Vec<PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            tls: TlsFiles::default(),
            system_id: None,
            certs_dirs: Vec::new(),
        }
    }
}

/// A successful answer and the server's `Date`, for clock-skew checks and expiry decisions.
#[derive(Debug, Clone)]
pub struct Reply<T> {
    pub value: T,
    pub server_date: Option<DateTime<Utc>>,
}

/// The privileged token and the only URL it may be sent to (`--gitlab-url`).
#[derive(Debug, Clone)]
pub struct AdminCredential {
    pub url: Url,
    pub token: AdminToken,
}

pub(super) struct Http {
    client: reqwest::Client,
    base: Url,
    pub(super) opts: ClientOptions,
}

impl Http {
    pub(super) fn new(base: &Url, opts: ClientOptions) -> Result<Self, Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(opts.timeout)
            .connect_timeout(opts.timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("runner-medic/", env!("CARGO_PKG_VERSION")))
            // Never follow a redirect: it could carry a token to another host.
            .redirect(reqwest::redirect::Policy::none())
            .use_rustls_tls();
        // The trust gitlab-runner would use for this URL (see `tls.rs`).
        let files = super::tls::resolve(
            &opts.tls,
            base.host_str().unwrap_or_default(),
            &opts.certs_dirs,
        );
        builder = builder.use_preconfigured_tls(super::tls::client_config(&files)?);
        let client = builder
            .build()
            .map_err(|e| Error::Setup(format!("HTTP client: {e}")))?;
        let mut base = base.clone();
        // Keep a path prefix such as `/gitlab` and make joins append to it.
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self { client, base, opts })
    }

    pub(super) fn url(&self, path: &str) -> Result<Url, Error> {
        self.base
            .join(path.trim_start_matches('/'))
            .map_err(|e| Error::Setup(format!("bad URL `{}{path}`: {e}", self.base)))
    }

    /// Send with retries. `private_token` adds the credential; `body` is JSON.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        private_token: Option<&AdminToken>,
        body: Option<Value>,
        kind: Idempotency,
    ) -> Result<Answer, Error> {
        let url = self.url(path)?;
        // The secrets this request carries: a server may echo them in its error text.
        let secrets: Vec<&str> = private_token
            .map(AdminToken::expose_secret)
            .into_iter()
            .chain(body.as_ref().and_then(|b| b.get("token")?.as_str()))
            .collect();
        let host = url.host_str().unwrap_or_default().to_string();
        // The URL without its query, for messages.
        let shown = format!("{}{}", url.origin().ascii_serialization(), url.path());
        let started = Instant::now();
        // The throttle this request counts against (see `pace`).
        let pacer = Pacer::of(&url.origin().ascii_serialization());
        let private = private_token.is_some();
        let mut attempt = 0;
        loop {
            let admitted = pacer.admit(private, Instant::now());
            if let Some(wait) = admitted.wait {
                self.wait_for_quota(wait).await;
            }
            let mut req = self.client.request(method.clone(), url.clone());
            if let Some(token) = private_token {
                req = req.header("PRIVATE-TOKEN", token.expose_secret());
            }
            if let Some(b) = &body {
                req = req.json(b);
            }
            let err = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let date = server_date(resp.headers());
                    let retry_after = asked_wait(resp.headers(), status.as_u16(), date);
                    pacer.seen(
                        private,
                        quota_seen(resp.headers(), status.as_u16(), date),
                        Instant::now(),
                    );
                    let next_page = resp
                        .headers()
                        .get("X-Next-Page")
                        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                    match read_capped(resp, MAX_BODY_BYTES, status.is_success()).await {
                        Ok(Capped::Whole(bytes)) if status.is_success() => {
                            return Ok(Answer {
                                status,
                                text: String::from_utf8_lossy(&bytes).into_owned(),
                                date,
                                next_page,
                            })
                        }
                        Ok(Capped::Over(_)) if status.is_success() => Error::TooLarge {
                            url: shown.clone(),
                            limit: MAX_BODY_BYTES,
                        },
                        // An error answer keeps its status; its first 1 MiB is enough to say why.
                        Ok(Capped::Whole(bytes) | Capped::Over(bytes)) => Error::Http {
                            url: shown.clone(),
                            status: status.as_u16(),
                            message: server_text(
                                &error_message(&String::from_utf8_lossy(&bytes)),
                                &secrets,
                            ),
                            retry_after,
                        },
                        Err(e) => classify(&e, &shown, &host, self.opts.timeout),
                    }
                }
                Err(e) => classify(&e, &shown, &host, self.opts.timeout),
            };
            let rate_limited = err.status() == Some(429);
            match self.opts.retry.next_delay(attempt, &err, kind) {
                // A 429's wait is bounded by the run's budget only; other retries also by
                // `max_total` per request.
                Some(delay)
                    if (rate_limited || started.elapsed() + delay <= self.opts.retry.max_total)
                        && self.opts.retry.budget.take(delay) =>
                {
                    tracing::debug!(url = %shown, attempt, delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), error = %err, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Some(delay) if rate_limited => {
                    tracing::warn!(url = %shown, wait_s = delay.as_secs(), budget_left_s = self.opts.retry.budget.left().as_secs(), "GitLab asks to wait longer than this run's retry budget has left; giving up on this request");
                    return Err(err);
                }
                _ => return Err(err),
            }
        }
    }

    /// Wait as the rate-limit quota asks (see `pace`), if the run's retry budget allows.
    pub(super) async fn wait_for_quota(&self, wait: Duration) {
        if self.opts.retry.budget.take(wait) {
            tracing::debug!(
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "rate-limit quota low; pacing requests until it resets"
            );
            tokio::time::sleep(wait).await;
        }
    }

    pub(super) async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        private_token: Option<&AdminToken>,
        body: Option<Value>,
        kind: Idempotency,
    ) -> Result<Reply<T>, Error> {
        let answer = self.send(method, path, private_token, body, kind).await?;
        Ok(Reply {
            value: self.parse(path, &answer.text)?,
            server_date: answer.date,
        })
    }

    /// Parse a JSON answer. serde quotes the values it could not use, so its reason is server
    /// text too.
    pub(super) fn parse<T: DeserializeOwned>(&self, path: &str, text: &str) -> Result<T, Error> {
        serde_json::from_str(text).map_err(|e| Error::Body {
            url: self.shown(path),
            reason: server_text(&e.to_string(), &[]),
        })
    }

    /// `path` under the base URL without its query, for messages.
    pub(super) fn shown(&self, path: &str) -> String {
        let path = path.split('?').next().unwrap_or_default();
        format!("{}{path}", self.base.as_str())
    }
}

/// What `send` hands back of a successful answer.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) text: String,
    pub(super) date: Option<DateTime<Utc>>,
    /// `X-Next-Page`: empty on the last page of a list.
    pub(super) next_page: Option<String>,
}

/// A body read up to a limit: all of it, or the first `limit` bytes of a longer one.
enum Capped {
    Whole(Vec<u8>),
    Over(Vec<u8>),
}

/// Read `resp`'s body chunk by chunk, never more than `limit` bytes. With `refuse_by_length`, a
/// `Content-Length` over the limit is refused before anything is read.
async fn read_capped(
    mut resp: reqwest::Response,
    limit: usize,
    refuse_by_length: bool,
) -> Result<Capped, reqwest::Error> {
    if refuse_by_length
        && resp
            .content_length()
            .is_some_and(|n| usize::try_from(n).map_or(true, |n| n > limit))
    {
        return Ok(Capped::Over(Vec::new()));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = limit - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(Capped::Over(bytes));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Capped::Whole(bytes))
}

/// A server's text made fit for a message: the tokens of the request (`secrets`) and any other
/// token-shaped word masked, control characters (terminal escapes) dropped, and cut to
/// [`SERVER_TEXT_CHARS`]. Masking comes first so the cut never leaves part of a token.
pub(super) fn server_text(text: &str, secrets: &[&str]) -> String {
    let masked = mask_tokens_in(text.trim(), secrets);
    let mut out: String = masked
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(SERVER_TEXT_CHARS)
        .collect();
    if masked.chars().count() > SERVER_TEXT_CHARS {
        out.push('…');
    }
    out
}

/// The wait a refusal asks for. On 429: until the quota resets (`RateLimit-ResetTime`, an HTTP
/// date, as gitlab-runner reads first in `network/retry_requester.go`; or `RateLimit-Reset`, Unix
/// seconds), else `Retry-After`. On other statuses only `Retry-After` (GitLab sends `RateLimit-*`
/// on every answer, which says nothing about a 503). Reference §4.2, §4.3.
fn asked_wait(
    headers: &reqwest::header::HeaderMap,
    status: u16,
    date: Option<DateTime<Utc>>,
) -> Option<Duration> {
    if status == 429 {
        if let Some(wait) = rate_limit_reset(headers, date) {
            return Some(wait);
        }
    }
    let text = headers.get("Retry-After")?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // `Retry-After` may also be an HTTP date (RFC 9110 §10.2.3).
    let at = DateTime::parse_from_rfc2822(text).ok()?.with_timezone(&Utc);
    Some(until(at, date))
}

/// What an answer's `RateLimit-*` headers say about the quota.
fn quota_seen(
    headers: &reqwest::header::HeaderMap,
    status: u16,
    date: Option<DateTime<Utc>>,
) -> Seen<'_> {
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Seen {
        name: headers
            .get("RateLimit-Name")
            .and_then(|v| v.to_str().ok())
            .map(str::trim),
        remaining: number("RateLimit-Remaining"),
        limit: number("RateLimit-Limit"),
        reset_in: rate_limit_reset(headers, date),
        rate_limited: status == 429,
    }
}

/// When the rate-limit quota resets, as a wait from now.
fn rate_limit_reset(
    headers: &reqwest::header::HeaderMap,
    date: Option<DateTime<Utc>>,
) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let at = text("RateLimit-ResetTime")
        .and_then(|t| DateTime::parse_from_rfc2822(t).ok())
        .map(|d| d.with_timezone(&Utc))
        .or_else(|| {
            text("RateLimit-Reset")
                .and_then(|t| t.parse::<i64>().ok())
                .and_then(|secs| DateTime::from_timestamp(secs, 0))
        })?;
    Some(until(at, date))
}

/// From now until `at`, measured on the server's clock (its `Date`) when known: the host's
/// clock may be off. `Date` and the reset are whole seconds, so one second is added: coming back
/// early only earns another 429.
fn until(at: DateTime<Utc>, date: Option<DateTime<Utc>>) -> Duration {
    let now = date.unwrap_or_else(Utc::now);
    let secs = (at - now).num_seconds().max(0);
    Duration::from_secs(secs.unsigned_abs() + 1)
}

fn server_date(headers: &reqwest::header::HeaderMap) -> Option<DateTime<Utc>> {
    let v = headers.get("Date")?.to_str().ok()?;
    DateTime::parse_from_rfc2822(v)
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// GitLab's `message` is a string or an object (reference §4.1); OAuth errors use `error`. The
/// caller masks and cuts the result with [`server_text`].
fn error_message(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => {
            if let Some(m) = v.get("message") {
                return match m {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
            }
            match (v.get("error"), v.get("error_description")) {
                (Some(e), Some(d)) => format!(
                    "{}: {}",
                    e.as_str().unwrap_or_default(),
                    d.as_str().unwrap_or_default()
                ),
                (Some(e), None) => e.as_str().unwrap_or_default().to_string(),
                _ => text.to_string(),
            }
        }
        Err(_) => text.to_string(),
    }
}

#[cfg(test)]
mod rate_limit_tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn waits_are_read_as_gitlab_sends_them() {
        let date = DateTime::parse_from_rfc2822("Tue, 05 Jan 2021 10:59:30 GMT")
            .unwrap()
            .with_timezone(&Utc);
        let secs = |d: Option<Duration>| d.map(|d| d.as_secs());
        // RateLimit-ResetTime first, then RateLimit-Reset (Unix time), measured from `Date`.
        let both = headers(&[
            ("RateLimit-ResetTime", "Tue, 05 Jan 2021 11:00:00 GMT"),
            ("RateLimit-Reset", "1609844460"),
            ("Retry-After", "5"),
        ]);
        assert_eq!(secs(asked_wait(&both, 429, Some(date))), Some(31));
        let reset = headers(&[("RateLimit-Reset", "1609844400")]);
        assert_eq!(secs(asked_wait(&reset, 429, Some(date))), Some(31));
        // A reset in the past: come back in a second.
        assert_eq!(
            secs(asked_wait(
                &reset,
                429,
                Some(date + chrono::Duration::hours(1))
            )),
            Some(1)
        );
        // Not on other statuses: there only Retry-After counts.
        assert_eq!(secs(asked_wait(&both, 503, Some(date))), Some(5));
        assert_eq!(secs(asked_wait(&reset, 503, Some(date))), None);
        // Retry-After as an HTTP date.
        let at = headers(&[("Retry-After", "Tue, 05 Jan 2021 11:00:00 GMT")]);
        assert_eq!(secs(asked_wait(&at, 429, Some(date))), Some(31));
        assert_eq!(secs(asked_wait(&headers(&[]), 429, Some(date))), None);
        assert_eq!(
            secs(asked_wait(
                &headers(&[("Retry-After", "soon")]),
                429,
                Some(date)
            )),
            None
        );
    }
}
