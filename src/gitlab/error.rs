//! Failure classes a diagnosis branches on: each becomes a different finding.

use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("cannot resolve `{host}`: {reason}")]
    Dns { host: String, reason: String },
    #[error("cannot connect to `{url}`: {reason}")]
    Connect { url: String, reason: String },
    #[error("TLS handshake with `{url}` failed: {reason}")]
    Tls { url: String, reason: String },
    #[error("`{url}` did not answer within {secs} s")]
    Timeout { url: String, secs: u64 },
    #[error("`{url}` answered {status}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("`{url}` answered with a body runner-medic cannot read: {reason}")]
    Body { url: String, reason: String },
    /// The answer was larger than runner-medic reads of any answer ([`super::MAX_BODY_BYTES`]).
    #[error(
        "the answer from `{url}` was larger than {}; runner-medic reads at most that much of any \
         answer, and GitLab's answers to these calls are a few KiB (a proxy or a broken server is \
         answering instead)",
        size(*.limit)
    )]
    TooLarge { url: String, limit: usize },
    /// A paginated list that did not end the way GitLab's lists end.
    #[error("the list at `{url}` did not end: {reason}; runner-medic stopped reading it")]
    Pagination { url: String, reason: String },
    #[error("{0}")]
    Setup(String),
}

impl Error {
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A failure of the network path rather than an answer from GitLab.
    pub fn is_transport(&self) -> bool {
        matches!(
            self,
            Error::Dns { .. } | Error::Connect { .. } | Error::Tls { .. } | Error::Timeout { .. }
        )
    }
}

/// `1 MiB`, `64 KiB`, `512 B`: a byte limit as people write it.
fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes % (1 << 20) == 0 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes % (1 << 10) == 0 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// Turn a reqwest failure into its class by walking the source chain; reqwest does not expose
/// DNS and TLS failures as kinds of their own.
pub(super) fn classify(err: &reqwest::Error, url: &str, host: &str, timeout: Duration) -> Error {
    let mut chain = Vec::new();
    let mut source: Option<&dyn std::error::Error> = Some(err);
    while let Some(e) = source {
        chain.push(e.to_string());
        source = e.source();
    }
    let all = chain.join(": ").to_lowercase();
    let innermost = chain.last().cloned().unwrap_or_default();
    if err.is_timeout() {
        return Error::Timeout {
            url: url.to_string(),
            secs: timeout.as_secs(),
        };
    }
    if all.contains("certificate") || all.contains("tls") || all.contains("handshake") {
        return Error::Tls {
            url: url.to_string(),
            reason: innermost,
        };
    }
    if all.contains("dns error") || all.contains("failed to lookup address") {
        return Error::Dns {
            host: host.to_string(),
            reason: innermost,
        };
    }
    if err.is_decode() || err.is_body() {
        return Error::Body {
            url: url.to_string(),
            reason: innermost,
        };
    }
    Error::Connect {
        url: url.to_string(),
        reason: innermost,
    }
}
