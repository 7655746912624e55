//! The etcd v3 store: per runner, a lock on a lease that is kept alive while this host works (a
//! host that dies lets go within `lock_ttl`), and the sealed current token, replaced only by a
//! compare-and-swap on the revision this host read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::collections::VecDeque;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, Identity, LockOptions,
    TlsOptions, Txn, TxnOp, WatchOptions, WatchStream,
};

use super::seal::{FleetKey, Published};
use super::EtcdSettings;

/// A call that reached no member able to answer (refused, reset, unavailable): another member
/// may.
fn member_down(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        // gRPC's UNAVAILABLE (14).
        etcd_client::Error::GRpcStatus(status) => status.code() as i32 == 14,
        _ => false,
    }
}

/// The store could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

fn failed(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("{what}: {e}"))
}

pub struct Store {
    /// The member in use and its client; another when it stops answering.
    active: std::sync::Mutex<(usize, Client)>,
    members: Vec<String>,
    options: ConnectOptions,
    prefix: String,
    key: FleetKey,
    lock_ttl: Duration,
    timeout: Duration,
    endpoints: String,
}

/// How long one attempt against one member may take: a share of the timeout, so that a member
/// that hangs leaves time for the others.
fn per_member(timeout: Duration, members: usize) -> Duration {
    (timeout / u32::try_from(members.max(1)).unwrap_or(1)).max(Duration::from_secs(1))
}

/// A client of the first member, from `start` on, that answers a read of `probe`.
async fn connect_any(
    members: &[String],
    start: usize,
    options: &ConnectOptions,
    timeout: Duration,
    probe: &str,
) -> Result<(usize, Client), String> {
    let mut last = String::from("no endpoint");
    for k in 0..members.len() {
        let i = (start + k) % members.len();
        let endpoint = &members[i];
        let attempt = async {
            let mut client = Client::connect([endpoint], Some(options.clone())).await?;
            client.get(probe, None).await?;
            Ok::<_, etcd_client::Error>(client)
        };
        match tokio::time::timeout(per_member(timeout, members.len()), attempt).await {
            Ok(Ok(client)) => return Ok((i, client)),
            Ok(Err(e)) => last = format!("{endpoint}: {e}"),
            Err(_) => last = format!("{endpoint}: no answer"),
        }
        tracing::debug!(error = %last, "an etcd member did not answer; trying the next");
    }
    Err(last)
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
    /// Set when etcd said the lease ended: another host may hold the lock now.
    lost: Arc<AtomicBool>,
}

impl Held {
    /// The lease the lock is held on.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The lease ended while held: the lock may be another host's by now.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
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
        // One read proves that a member answers.
        let probe = format!("{}/version", settings.prefix);
        let (at, client) = connect_any(&settings.endpoints, 0, &options, timeout, &probe)
            .await
            .map_err(|e| {
                StoreError(format!(
                    "cannot use etcd at {endpoints}: no member answered within {}s ({e})",
                    timeout.as_secs()
                ))
            })?;
        Ok(Self {
            active: std::sync::Mutex::new((at, client)),
            members: settings.endpoints.clone(),
            options,
            prefix: settings.prefix.clone(),
            key: settings.key.clone(),
            lock_ttl: settings.lock_ttl,
            timeout,
            endpoints,
        })
    }

    /// The client of the member in use, and which one it is.
    fn client(&self) -> (usize, Client) {
        let active = self
            .active
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (active.0, active.1.clone())
    }

    /// Move to another member than `from`, when one answers.
    async fn fail_over(&self, from: usize) -> bool {
        if self.members.len() < 2 {
            return false;
        }
        let probe = format!("{}/version", self.prefix);
        match connect_any(&self.members, from + 1, &self.options, self.timeout, &probe).await {
            Ok((at, client)) => {
                tracing::warn!(from = %self.members[from], to = %self.members[at], "an etcd member stopped answering; using another");
                *self
                    .active
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = (at, client);
                true
            }
            Err(_) => false,
        }
    }

    pub fn endpoints(&self) -> &str {
        &self.endpoints
    }

    /// One call: one that finds its member down (refused, reset, unavailable, no answer in its
    /// share of the timeout) is made again through another member, so that a cluster with a
    /// member down still serves.
    async fn call<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (at, client) = self.client();
            let error =
                match tokio::time::timeout(per_member(self.timeout, self.members.len()), f(client))
                    .await
                {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(e)) if member_down(&e) => {
                        failed(&format!("etcd {what} at {}", self.members[at]), e)
                    }
                    Ok(Err(e)) => {
                        return Err(failed(&format!("etcd {what} at {}", self.endpoints), e))
                    }
                    Err(_) => StoreError(format!(
                        "etcd {what} at {} got no answer within {}s",
                        self.members[at],
                        per_member(self.timeout, self.members.len()).as_secs()
                    )),
                };
            if attempt >= self.members.len() || !self.fail_over(at).await {
                return Err(error);
            }
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
        let lease = self
            .call(
                "lease",
                |mut c| async move { c.lease_grant(ttl, None).await },
            )
            .await?
            .id();
        let (mut keeper, mut stream) = self
            .call("lease keep-alive", |mut c| async move {
                c.lease_keep_alive(lease).await
            })
            .await?;
        let every = self.lock_ttl / 3;
        let members = self.members.clone();
        let options = self.options.clone();
        let timeout = self.timeout;
        let probe = format!("{}/version", self.prefix);
        let lost = Arc::new(AtomicBool::new(false));
        let lost_by_keeper = lost.clone();
        let keeper = tokio::spawn(async move {
            let mut at = 0;
            loop {
                tokio::time::sleep(every).await;
                // A member that accepts the request and never answers (frozen) counts as gone.
                let answer = match keeper.keep_alive().await {
                    Ok(()) => tokio::time::timeout(timeout, stream.message())
                        .await
                        .ok()
                        .and_then(|m| m.ok().flatten()),
                    Err(_) => None,
                };
                match answer {
                    Some(r) if r.ttl() > 0 => {}
                    Some(_) => {
                        tracing::warn!(lease, "the fleet lock's lease ended; the lock is lost");
                        lost_by_keeper.store(true, Ordering::SeqCst);
                        return;
                    }
                    // The member the keep-alive went to may be gone: keep it alive through
                    // another; the lease lives on in the cluster meanwhile.
                    None => {
                        let renewed =
                            match connect_any(&members, at + 1, &options, timeout, &probe).await {
                                Ok((i, mut client)) => {
                                    at = i;
                                    client
                                        .lease_keep_alive(lease)
                                        .await
                                        .map_err(|e| e.to_string())
                                }
                                Err(e) => Err(e),
                            };
                        match renewed {
                            Ok((k, s)) => {
                                keeper = k;
                                stream = s;
                            }
                            Err(e) => {
                                tracing::warn!(lease, error = %e, "could not keep the fleet lock's lease alive; trying again");
                            }
                        }
                    }
                }
            }
        });
        let name = Self::lock_name(slot);
        // Waiting for another host's lock is no member failing: the wait has a bound of its own.
        let taken = tokio::time::timeout(wait, async {
            let mut attempt = 0;
            loop {
                attempt += 1;
                let (at, mut c) = self.client();
                match c
                    .lock(name.clone(), Some(LockOptions::new().with_lease(lease)))
                    .await
                {
                    Err(e)
                        if member_down(&e)
                            && attempt < self.members.len()
                            && self.fail_over(at).await => {}
                    other => return other,
                }
            }
        })
        .await;
        let (_, mut client) = self.client();
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
            lost,
        })
    }

    /// Let go of a lock (and its lease). A failure only delays the next host by `lock_ttl`.
    pub async fn release(&self, mut held: Held) {
        held.keeper.abort();
        held.client = None;
        let lock_key = std::mem::take(&mut held.lock_key);
        let lease = held.lease;
        if let Err(e) = self
            .call("unlock", |mut c| {
                let key = lock_key.clone();
                async move { c.unlock(key).await }
            })
            .await
        {
            tracing::warn!(error = %e, "could not release the fleet lock; it lapses with its lease");
        }
        self.revoke(lease).await;
    }

    /// Watch every runner's published token (from now on).
    pub async fn watch(&self) -> Result<Watching, StoreError> {
        let prefix = format!("{}/runners/", self.prefix);
        let mut stream = self
            .call("watch", |mut c| {
                let prefix = prefix.clone();
                async move {
                    c.watch(prefix, Some(WatchOptions::new().with_prefix()))
                        .await
                }
            })
            .await?;
        // The first answer says the watch exists: from then on no publication is missed.
        match tokio::time::timeout(self.timeout, stream.message()).await {
            Ok(Ok(Some(reply))) if reply.created() => {}
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
        let _ = self
            .call("lease revoke", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
    }

    /// The published token of `slot`. A record this key does not open counts as none (and is
    /// logged): it is replaced by the next publication.
    pub async fn read(&self, slot: &str) -> Result<Current, StoreError> {
        let reply = self
            .call("read", |mut c| {
                let slot = slot.to_string();
                async move { c.get(slot, None).await }
            })
            .await?;
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
        let reply = self
            .call("publish", |mut c| {
                let txn = Txn::new()
                    .when([Compare::mod_revision(slot, CompareOp::Equal, revision)])
                    .and_then([TxnOp::put(slot, sealed.clone(), None)]);
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(reply.succeeded())
    }
}
