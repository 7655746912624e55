//! Talking to GitLab: one concrete client over reqwest, typed failure classes, retries.
//! `http` is the transport (TLS as gitlab-runner builds it in `tls`, the send loop with its
//! retries and rate-limit pacing in `retry` and `pace`, capped reads); `client` the calls; `api`
//! the shapes of GitLab's answers; `url` the normalisation of runner URLs.
//!
//! Two entry points keep the privileged token where it belongs: [`RunnerApi`] sends only the
//! runner's own token, to the runner's `url`; [`AdminApi`] is built only from an
//! [`AdminCredential`], which binds the privileged token to the operator's `--gitlab-url`, and no
//! method of it takes a URL. No code path can send the privileged token elsewhere.

mod api;
mod client;
mod error;
mod http;
mod pace;
mod retry;
pub mod tls;
mod url;

pub use api::{
    AppSettings, CreateRunner, PatInfo, RunnerDetails, RunnerManagerInfo, RunnerSummary,
    TokenGrant, Verified,
};
pub use client::{AdminApi, RunnerApi};
pub use error::Error;
pub use http::{
    AdminCredential, ClientOptions, Reply, TlsFiles, MAX_BODY_BYTES, MAX_PAGES, SERVER_TEXT_CHARS,
};
pub use retry::{RetryBudget, RetryPolicy, MAX_RATE_LIMITED_ATTEMPTS};
pub use url::{has_legacy_ci_suffix, normalize_url, parse_runner_url, url_key};
