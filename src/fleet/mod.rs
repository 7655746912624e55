//! Coordination of the hosts that share one runner token (GitLab's "runner managers", reference
//! §3.7). A reset or renewal cuts the old token off for every host at once, so exactly one host
//! may obtain a new token, and every other host must take ("adopt") that one. They meet in a store
//! (etcd v3): per runner, a lock held on a lease (it dies with its holder) and the current token,
//! sealed with a key that every host has and the store does not.

#[cfg(not(feature = "fleet-etcd"))]
#[path = "absent.rs"]
mod etcd;
#[cfg(feature = "fleet-etcd")]
mod etcd;
mod seal;

pub use etcd::{Current, Held, Store, StoreError, Watching};
pub use seal::{FleetKey, KeyError, Published};

/// `[fleet] store = "etcd"`, validated.
#[derive(Debug, Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    /// Without a trailing `/`.
    pub prefix: String,
    pub key: FleetKey,
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate and key (both or neither).
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    pub user: Option<(String, crate::secret::AdminToken)>,
    pub lock_ttl: std::time::Duration,
}

/// A record for a token this host obtained.
pub fn record(
    token: &crate::secret::RunnerToken,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
    runner_id: u64,
    by: Option<String>,
) -> Published {
    Published {
        token: token.clone(),
        token_expires_at: expires_at,
        runner_id,
        published_at: chrono::Utc::now(),
        by,
    }
}
