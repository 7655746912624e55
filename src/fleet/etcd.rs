//! The etcd v3 store: per runner, a lock on a lease that is kept alive while this host works (a
//! host that dies lets go within `lock_ttl`), and the sealed current token, replaced only by a
//! compare-and-swap on the revision this host read.

use std::time::Duration;

use std::collections::VecDeque;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, Identity, LockOptions,
    TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};

use super::seal::{FleetKey, Published};
use super::EtcdSettings;

/// The store could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

fn failed(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what}: {e}"))
}

pub struct Store {
    client: Client,
    prefix: String,
    key: FleetKey,
    lock_ttl: Duration,
    timeout: Duration,
    endpoints: String,
}

/// A runner's lock, held until [`Store::release`]. Dropped without it (a run abandoned, a
/// panic), it stops keeping its lease alive and asks etcd to revoke it, so that another host is
/// not kept waiting by a process that lives on (the agent).
pub struct Held {
    lock_key: Vec<u8>,
    lease: i64,
    keeper: tokio::task::JoinHandle<()>,
    /// `Some` until released.
    client: Option<Client>,
}

impl Held {
    /// The lease the lock is held on.
    pub fn lease(&self) -> i64 {
        self.lease
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.keeper.abort();
        if let Some(mut client) = self.client.take() {
            let lease = self.lease;
            tracing::warn!(
                lease,
                "a fleet lock was dropped without being released; revoking its lease"
            );
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = client.lease_revoke(lease).await;
                });
            }
        }
    }
}

/// A watch on the tokens published for every runner under the prefix.
pub struct Watching {
    stream: WatchStream,
    key: FleetKey,
    pending: VecDeque<(String, Option<Published>)>,
}

impl Watching {
    /// The next token published: its slot and record (`None`: a record this host's key does not
    /// open). An error when the watch ended (etcd went away); watch again then.
    pub async fn next(&mut self) -> Result<(String, Option<Published>), StoreError> {
        loop {
            if let Some(next) = self.pending.pop_front() {
                return Ok(next);
            }
            let reply = match self.stream.message().await {
                Ok(Some(reply)) => reply,
                Ok(None) => return Err(StoreError("etcd ended the watch".into())),
                Err(e) => return Err(failed("etcd watch", e)),
            };
            if reply.canceled() {
                return Err(StoreError(format!(
                    "etcd cancelled the watch: {}",
                    reply.cancel_reason()
                )));
            }
            for event in reply.events() {
                let Some(kv) = event.kv() else { continue };
                if event.event_type() != EventType::Put || !kv.key().ends_with(b"/token") {
                    continue;
                }
                let slot = String::from_utf8_lossy(kv.key()).into_owned();
                let record = self.key.open(&slot, kv.value());
                self.pending.push_back((slot, record));
            }
        }
    }
}

/// What the store holds for a runner now.
pub struct Current {
    pub published: Option<Published>,
    /// `mod_revision` of the record; 0 when there is none.
    pub revision: i64,
}

impl Store {
    /// Connect, and check that the store answers within `timeout`.
    pub async fn connect(settings: &EtcdSettings, timeout: Duration) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(10), timeout);
        if let Some((user, password)) = &settings.user {
            options = options.with_user(user.clone(), password.expose_secret().to_string());
        }
        let https = settings.endpoints.iter().any(|e| e.starts_with("https://"));
        if https || settings.ca_file.is_some() || settings.identity.is_some() {
            let mut tls = TlsOptions::new();
            match &settings.ca_file {
                Some(ca) => {
                    let pem = fs_err::read(ca).map_err(|e| failed("fleet ca_file", e))?;
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                None => tls = tls.with_native_roots(),
            }
            if let Some((cert, key)) = &settings.identity {
                let cert = fs_err::read(cert).map_err(|e| failed("fleet cert_file", e))?;
                let key = fs_err::read(key).map_err(|e| failed("fleet key_file", e))?;
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(tls);
        }
        let endpoints = settings.endpoints.join(",");
        let client =
            tokio::time::timeout(timeout, Client::connect(&settings.endpoints, Some(options)))
                .await
                .map_err(|_| {
                    StoreError(format!(
                        "etcd at {endpoints} did not answer within {}s",
                        timeout.as_secs()
                    ))
                })?
                .map_err(|e| failed(&format!("cannot connect to etcd at {endpoints}"), e))?;
        let store = Self {
            client,
            prefix: settings.prefix.clone(),
            key: settings.key.clone(),
            lock_ttl: settings.lock_ttl,
            timeout,
            endpoints,
        };
        // The connection is made lazily: one read proves the store answers.
        let probe = format!("{}/version", store.prefix);
        store
            .timed("read", store.client.clone().get(probe, None))
            .await?;
        Ok(store)
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    async fn timed<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(failed(&format!("etcd {what} at {}", self.endpoints), e)),
            Err(_) => Err(StoreError(format!(
                "etcd {what} at {} got no answer within {}s",
                self.endpoints,
                self.timeout.as_secs()
            ))),
        }
    }

    /// The key of a runner's record: per GitLab instance (`instance`, its base URL) and runner id.
    pub fn slot(&self, instance: &str, runner_id: u64) -> String {
        let host = &crate::fs::sha256_hex(instance.as_bytes())[..16];
        format!("{}/runners/{host}/{runner_id}/token", self.prefix)
    }

    fn lock_name(slot: &str) -> String {
        format!("{}/lock", slot.trim_end_matches("/token"))
    }

    /// Take the runner's lock: a lease of `lock_ttl`, kept alive in the background, and the lock
    /// on it. Waits for another host that holds it, at most `wait`.
    pub async fn lock(&self, slot: &str, wait: Duration) -> Result<Held, StoreError> {
        let ttl = i64::try_from(self.lock_ttl.as_secs()).unwrap_or(60);
        let mut client = self.client.clone();
        let lease = self
            .timed("lease", client.lease_grant(ttl, None))
            .await?
            .id();
        let (mut keeper, mut stream) = self
            .timed("lease keep-alive", client.lease_keep_alive(lease))
            .await?;
        let every = self.lock_ttl / 3;
        let keeper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if keeper.keep_alive().await.is_err() {
                    tracing::warn!(lease, "could not keep the fleet lock's lease alive");
                    return;
                }
                if !matches!(stream.message().await, Ok(Some(_))) {
                    tracing::warn!(lease, "the fleet lock's lease ended");
                    return;
                }
            }
        });
        let name = Self::lock_name(slot);
        let taken = tokio::time::timeout(
            wait,
            client.lock(name.clone(), Some(LockOptions::new().with_lease(lease))),
        )
        .await;
        let lock_key = match taken {
            Ok(Ok(r)) => r.key().to_vec(),
            Ok(Err(e)) => {
                keeper.abort();
                let _ = client.lease_revoke(lease).await;
                return Err(failed(
                    &format!("etcd lock `{name}` at {}", self.endpoints),
                    e,
                ));
            }
            Err(_) => {
                keeper.abort();
                let _ = client.lease_revoke(lease).await;
                return Err(StoreError(format!(
                    "another host held the lock `{name}` for more than {}s",
                    wait.as_secs()
                )));
            }
        };
        Ok(Held {
            lock_key,
            lease,
            keeper,
            client: Some(client),
        })
    }

    /// Let go of a lock (and its lease). A failure only delays the next host by `lock_ttl`.
    pub async fn release(&self, mut held: Held) {
        held.keeper.abort();
        let mut client = held.client.take().unwrap_or_else(|| self.client.clone());
        let lock_key = std::mem::take(&mut held.lock_key);
        if let Err(e) = self.timed("unlock", client.unlock(lock_key)).await {
            tracing::warn!(error = %e, "could not release the fleet lock; it lapses with its lease");
        }
        let _ = self
            .timed("lease revoke", client.lease_revoke(held.lease))
            .await;
    }

    /// Watch every runner's published token (from now on).
    pub async fn watch(&self) -> Result<Watching, StoreError> {
        let prefix = format!("{}/runners/", self.prefix);
        let mut client = self.client.clone();
        let mut stream = self
            .timed(
                "watch",
                client.watch(prefix, Some(WatchOptions::new().with_prefix())),
            )
            .await?;
        // The first answer says the watch exists: from then on no publication is missed.
        match self.timed("watch", stream.message()).await? {
            Some(reply) if reply.created() => {}
            _ => return Err(StoreError("etcd did not create the watch".into())),
        }
        Ok(Watching {
            stream,
            key: self.key.clone(),
            pending: VecDeque::new(),
        })
    }

    /// Revoke a lease (one a killed run of this host held its lock on): its lock goes with it.
    pub async fn revoke(&self, lease: i64) {
        let mut client = self.client.clone();
        let _ = self.timed("lease revoke", client.lease_revoke(lease)).await;
    }

    /// The published token of `slot`. A record this key does not open counts as none (and is
    /// logged): it is replaced by the next publication.
    pub async fn read(&self, slot: &str) -> Result<Current, StoreError> {
        let mut client = self.client.clone();
        let reply = self.timed("read", client.get(slot, None)).await?;
        let Some(kv) = reply.kvs().first() else {
            return Ok(Current {
                published: None,
                revision: 0,
            });
        };
        let published = self.key.open(slot, kv.value());
        if published.is_none() {
            tracing::warn!(slot, "the fleet store holds a record this host's key does not open (another encryption_key_file?); ignoring it");
        }
        Ok(Current {
            published,
            revision: kv.mod_revision(),
        })
    }

    /// Publish a token in place of the record of `revision` (0: none). `false`: the record
    /// changed since it was read, and nothing was written.
    pub async fn publish(
        &self,
        slot: &str,
        record: &Published,
        revision: i64,
    ) -> Result<bool, StoreError> {
        let sealed = self.key.seal(slot, record);
        let txn = Txn::new()
            .when([Compare::mod_revision(slot, CompareOp::Equal, revision)])
            .and_then([TxnOp::put(slot, sealed, None)]);
        let mut client = self.client.clone();
        let reply = self.timed("publish", client.txn(txn)).await?;
        Ok(reply.succeeded())
    }
}
