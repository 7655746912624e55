//! Coordination of the hosts that share one runner token (GitLab's "runner managers", reference
//! §3.7). A reset or renewal cuts the old token off for every host at once, so exactly one host
//! may obtain a new token, and every other host must take ("adopt") that one. They meet in a store
//! (etcd v3): per runner, a lock held on a lease (it dies with its holder) and the current token,
//! sealed with a key that every host has and the store does not.

mod etcd;
mod seal;

pub use etcd::{record, Current, Held, Store, StoreError};
pub use seal::{FleetKey, KeyError, Published};
