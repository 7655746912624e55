//! Rotation of tokens that several hosts share, through the fleet store (`[fleet] store`).
//!
//! For every change planned for a shared token, in a fixed order (so two hosts never wait on each
//! other): take the runner's lock, read the published token; when it is not the local one and
//! GitLab accepts it, adopt it (written through the usual commit path; GitLab is not changed);
//! otherwise keep the lock, obtain a new token the usual way, journal it, publish it with a
//! compare-and-swap on the revision read, write it locally, and only then let go.

use std::time::Duration;

use crate::diagnose::{
    parse_runner_url, read_system_id, url_key, Clients, Diagnosis, Finding, FindingCode,
};
use crate::fleet::{self, Held, Published, Store};
use crate::report::{Action, Outcome, Report};
use crate::runner_config::{ConfigFile, RunnerEntry};
use crate::settings::Settings;

use super::journal::{token_sha, FleetClaim, Journal, Step};
use super::plan::PlanItem;

/// A lock this run holds, for a token it is to obtain and publish.
pub(super) struct Pending {
    pub index: usize,
    slot: String,
    revision: i64,
    held: Held,
    /// The runner's own API, to check a new token before it replaces a record published while
    /// this host's lease lapsed.
    api: Option<std::sync::Arc<crate::gitlab::RunnerApi>>,
}

/// The store and the locks held; `adopted` are the runners that take a published token.
pub(super) struct Coordination {
    store: Store,
    pub pending: Vec<Pending>,
    pub adopted: Vec<(usize, Published)>,
}

/// How long a host waits for another that holds a runner's lock.
fn lock_wait(settings: &Settings) -> Duration {
    let ttl = settings
        .fleet
        .store
        .as_ref()
        .map_or(Duration::from_secs(60), |s| s.lock_ttl);
    (ttl * 5).max(Duration::from_secs(300))
}

/// The store's key of an entry's runner: per GitLab instance and runner id.
fn slot_of(store: &Store, entry: &RunnerEntry) -> String {
    let instance = entry
        .url
        .as_deref()
        .and_then(|u| parse_runner_url(u).ok())
        .map(|u| url_key(&u))
        .unwrap_or_default();
    store.slot(&instance, entry.id.unwrap_or_default())
}

fn leave(report: &mut Report, index: usize, why: String) {
    let r = &mut report.runners[index];
    r.action = Some(Action::Manual);
    r.outcome = Some(Outcome::Skipped);
    r.calls.clear();
    r.error = Some(why);
}

/// Coordinate the shared tokens among `changes`, and those whose sharing GitLab could not tell
/// (a host with a store is in a fleet: when in doubt, the store decides). Those left alone (the store is unreachable, a
/// lock could not be had) are taken out of `changes` and reported `manual`; adopted ones stay in
/// `changes` with the action `adopt`.
pub(super) async fn coordinate(
    settings: &Settings,
    diagnosis: &Diagnosis,
    changes: &mut Vec<PlanItem>,
    report: &mut Report,
    system_id: Option<&str>,
) -> Option<Box<Coordination>> {
    let store_settings = settings.fleet.store.as_ref()?;
    let mut shared: Vec<(String, usize)> = Vec::new();
    let store = {
        let wanted: Vec<usize> = changes
            .iter()
            .filter(|c| diagnosis.facts[c.index].maybe_shared() && c.old_id.is_some())
            .map(|c| c.index)
            .collect();
        if wanted.is_empty() {
            return None;
        }
        match Store::connect(store_settings, settings.request_timeout).await {
            Ok(store) => {
                for index in wanted {
                    shared.push((slot_of(&store, &diagnosis.facts[index].entry), index));
                }
                store
            }
            Err(e) => {
                tracing::error!(error = %e, "the fleet store cannot be used; shared tokens are left alone");
                report.findings.push(Finding::error(
                    FindingCode::FleetStoreUnavailable,
                    format!("the fleet store cannot be used ({e}); tokens that other hosts share were not changed"),
                    "check that etcd answers at `[fleet] endpoints` (`etcdctl --endpoints … endpoint health`) and the TLS and auth settings, then run again",
                ));
                for index in wanted {
                    leave(
                        report,
                        index,
                        format!("not changed: the fleet store cannot be used ({e})"),
                    );
                }
                changes.retain(|c| !diagnosis.facts[c.index].maybe_shared() || c.old_id.is_none());
                return None;
            }
        }
    };
    // One order for every host: no two wait on each other.
    shared.sort();
    let clients = Clients::new(settings, system_id.map(str::to_string));
    let mut coordination = Coordination {
        store,
        pending: Vec::new(),
        adopted: Vec::new(),
    };
    let mut dropped = Vec::new();
    for (slot, index) in shared {
        let facts = &diagnosis.facts[index];
        let name = &facts.entry.name;
        let held = match coordination.store.lock(&slot, lock_wait(settings)).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(runner = %name, error = %e, "could not take the fleet lock");
                report.findings.push(Finding::error(
                    FindingCode::FleetStoreUnavailable,
                    format!("runner `{name}`: could not take its lock in the fleet store: {e}"),
                    "check etcd's health; the next run tries again",
                ));
                leave(
                    report,
                    index,
                    format!("not changed: could not take the fleet lock ({e})"),
                );
                dropped.push(index);
                continue;
            }
        };
        let current = match coordination.store.read(&slot).await {
            Ok(c) => c,
            Err(e) => {
                coordination.store.release(held).await;
                report.findings.push(Finding::error(
                    FindingCode::FleetStoreUnavailable,
                    format!("runner `{name}`: could not read the fleet store: {e}"),
                    "check etcd's health; the next run tries again",
                ));
                leave(
                    report,
                    index,
                    format!("not changed: could not read the fleet store ({e})"),
                );
                dropped.push(index);
                continue;
            }
        };
        let local = facts.entry.token.as_ref();
        let candidate = current
            .published
            .filter(|p| local.is_none_or(|t| !t.same_as(&p.token)));
        let adopt = match candidate {
            Some(p) => match clients.for_entry(&facts.entry) {
                Some(Ok(api)) => match api.verify(&p.token).await {
                    Ok(v)
                        if v.value
                            .id
                            .is_none_or(|id| Some(id) == facts.entry.id || id == p.runner_id) =>
                    {
                        Some(p)
                    }
                    Ok(_) => {
                        tracing::warn!(runner = %name, "the published token belongs to another runner; not adopted");
                        None
                    }
                    Err(e) => {
                        tracing::info!(runner = %name, error = %e, "the published token is not accepted (any more); obtaining a new one");
                        None
                    }
                },
                _ => None,
            },
            None => None,
        };
        match adopt {
            Some(p) => {
                coordination.store.release(held).await;
                tracing::info!(runner = %name, by = p.by.as_deref().unwrap_or("?"), "adopting the token another host published");
                let r = &mut report.runners[index];
                r.action = Some(Action::Adopt);
                r.calls.clear();
                r.error = None;
                coordination.adopted.push((index, p));
            }
            None => coordination.pending.push(Pending {
                index,
                slot,
                revision: current.revision,
                held,
                api: clients.for_entry(&facts.entry).and_then(Result::ok),
            }),
        }
    }
    changes.retain(|c| !dropped.contains(&c.index));
    for c in changes.iter_mut() {
        if coordination.adopted.iter().any(|(i, _)| *i == c.index) {
            c.action = Action::Adopt;
            c.calls.clear();
            c.create = None;
            c.delete_old = false;
        }
    }
    Some(Box::new(coordination))
}

impl Coordination {
    /// Publish the tokens obtained under the locks held, before they are written locally.
    pub(super) async fn publish(
        &mut self,
        journal: &Journal,
        report: &mut Report,
        system_id: Option<&str>,
    ) {
        for p in &mut self.pending {
            let Some(e) = journal
                .entries
                .iter()
                .find(|e| e.index == p.index && e.step == Step::Obtained)
            else {
                continue;
            };
            let (Some(token), Some(id)) = (&e.new_token, e.new_id.or(e.old_id)) else {
                continue;
            };
            let record = fleet::record(token, e.new_expires_at, id, system_id.map(str::to_string));
            // A lock whose lease ended may be another host's by now, and that host may have
            // reset after this one: the token goes out only if GitLab still takes it.
            if p.held.lost() {
                let alive = match &p.api {
                    Some(api) => api.verify(token).await.is_ok(),
                    None => false,
                };
                if !alive {
                    tracing::error!(runner = %e.name, "the fleet lock was lost and GitLab no longer takes the new token: another host replaced it; not publishing it");
                    report.findings.push(Finding::error(
                        FindingCode::FleetStoreUnavailable,
                        format!("runner `{}`: the fleet lock was lost while its new token was obtained, and another host has replaced that token since", e.name),
                        "run `runner-medic rotate` again: it adopts the token the other host published",
                    ));
                    continue;
                }
            }
            let mut outcome = self.store.publish(&p.slot, &record, p.revision).await;
            if matches!(outcome, Ok(false)) {
                // The record changed under the lock (it lapsed with a lease that could not be kept
                // alive, and another host published meanwhile). This token replaces what is there
                // only if GitLab still takes it after that record was read: had the other host
                // reset after this one, it would be dead, and a dead token must not overwrite a
                // live one.
                tracing::warn!(runner = %e.name, "the published token changed while this host held the lock");
                outcome = match self.store.read(&p.slot).await {
                    Ok(now) => match &p.api {
                        Some(api) => match api.verify(token).await {
                            Ok(_) => self.store.publish(&p.slot, &record, now.revision).await,
                            Err(err) => Err(fleet::StoreError(format!(
                                "another host published a token meanwhile, and GitLab does not take this one now ({err}); not published over it"
                            ))),
                        },
                        None => Err(fleet::StoreError(
                            "another host published a token meanwhile, and this one cannot be checked; not published over it".into(),
                        )),
                    },
                    Err(err) => Err(err),
                };
            }
            if let Ok(true) = outcome {
                tracing::info!(runner = %e.name, "published the new token for the other hosts");
            } else {
                let why = outcome
                    .err()
                    .map_or_else(|| "the record kept changing".to_string(), |e| e.to_string());
                tracing::error!(runner = %e.name, error = %why, "could not publish the new token");
                report.findings.push(Finding::error(
                    FindingCode::FleetStoreUnavailable,
                    format!("runner `{}`: the new token could not be published in the fleet store ({why}); the other hosts do not have it", e.name),
                    format!("copy the new `token` of runner `{}` from this host's config.toml to the others, or run `runner-medic rotate --runner {}` here again once etcd answers", e.name, e.name),
                ));
            }
        }
    }

    /// What the journal keeps of the locks held, for a run that completes it after a crash.
    pub(super) fn claims(&self) -> Vec<FleetClaim> {
        self.pending
            .iter()
            .map(|p| FleetClaim {
                index: p.index,
                slot: p.slot.clone(),
                revision: p.revision,
                lease: p.held.lease(),
            })
            .collect()
    }

    /// Let go of every lock.
    pub(super) async fn release(self: Box<Self>) {
        for p in self.pending {
            self.store.release(p.held).await;
        }
    }
}

/// The runner of this host's config.toml that `record`, just published at `slot`, is news for:
/// a token this host does not hold, published by another host.
fn news_for(
    settings: &Settings,
    store: &Store,
    slot: &str,
    record: Option<&Published>,
) -> Option<String> {
    let record = record?;
    let config = ConfigFile::load(&settings.runner_config).ok()?;
    if record.by.is_some() && record.by == read_system_id(&config) {
        return None;
    }
    config
        .runners()
        .into_iter()
        .filter(|e| e.id.is_some() && slot_of(store, e) == slot)
        .find(|e| e.token.as_ref().is_none_or(|t| !t.same_as(&record.token)))
        .map(|e| e.name)
}

/// The agent's watch on the fleet store: the name of a runner of this host is sent on `news`
/// whenever another host publishes a token for it that this host does not hold, so that the
/// agent adopts it within seconds rather than at its next timer. (Re)connecting, it also checks
/// what was published while it was not watching. Returns when `news` is closed.
pub async fn watch(settings: Settings, news: tokio::sync::mpsc::Sender<String>) {
    let Some(store_settings) = settings.fleet.store.clone() else {
        return;
    };
    let mut failures: u32 = 0;
    loop {
        let outcome: Result<(), fleet::StoreError> = Box::pin(async {
            let store = Store::connect(&store_settings, settings.request_timeout).await?;
            let mut watching = store.watch().await?;
            tracing::info!(endpoints = store.endpoints(), "watching the fleet store for tokens other hosts publish");
            failures = 0;
            // What was published before the watch began.
            if let Ok(config) = ConfigFile::load(&settings.runner_config) {
                for entry in config.runners().iter().filter(|e| e.id.is_some()) {
                    let slot = slot_of(&store, entry);
                    let current = store.read(&slot).await?;
                    if let Some(name) = news_for(&settings, &store, &slot, current.published.as_ref()) {
                        if news.send(name).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            loop {
                let (slot, record) = watching.next().await?;
                if let Some(name) = news_for(&settings, &store, &slot, record.as_ref()) {
                    tracing::info!(runner = %name, "another host published a new token for this runner");
                    if news.send(name).await.is_err() {
                        return Ok(());
                    }
                }
            }
        })
        .await;
        match outcome {
            Ok(()) => return,
            Err(e) => {
                failures += 1;
                let wait = Duration::from_secs(1u64 << failures.min(6));
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "the watch on the fleet store stopped; watching again");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// A run that held fleet locks ended (crashed, was killed) after GitLab issued tokens under them:
/// publish each one still unwritten, if GitLab still accepts it and nothing was published since
/// the lock was taken (compare-and-swap on that revision). One GitLab refuses was replaced by a
/// newer token another host obtained after the dead run's lease lapsed: it is given up (dead, it
/// is lost to no one), and this run adopts the newer one. Then the dead run's leases are revoked,
/// so that hosts waiting for its locks go on at once.
pub(super) async fn recover(settings: &Settings, journal: &mut Journal) {
    let Some(store_settings) = settings.fleet.store.as_ref() else {
        return;
    };
    let store = match Store::connect(store_settings, settings.request_timeout).await {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(error = %e, "the fleet store cannot be used: the token obtained before the interruption is written here but not published; the other hosts do not have it");
            return;
        }
    };
    let config = ConfigFile::load(&journal.config_path).ok();
    let system_id = config.as_ref().and_then(read_system_id);
    let entries = config.as_ref().map(ConfigFile::runners).unwrap_or_default();
    let clients = Clients::new(settings, system_id.clone());
    for claim in std::mem::take(&mut journal.fleet) {
        let Some(e) = journal.entries.iter_mut().find(|e| {
            e.index == claim.index
                && e.step == Step::Obtained
                && e.action != Action::Adopt
                && e.new_token.is_some()
        }) else {
            store.revoke(claim.lease).await;
            continue;
        };
        let Some(token) = e.new_token.clone() else {
            continue;
        };
        // The entry of config.toml the token is for: the one holding the token it replaces.
        let entry = entries
            .iter()
            .find(|r| {
                r.token.as_ref().map(token_sha).is_some()
                    && r.token.as_ref().map(token_sha) == e.old_token_sha256
            })
            .or_else(|| entries.get(e.index));
        let Some(Ok(api)) = entry.and_then(|r| clients.for_entry(r)) else {
            tracing::warn!(runner = %e.name, "cannot check the token obtained before the interruption (no usable url); not publishing it");
            store.revoke(claim.lease).await;
            continue;
        };
        let verdict = api.verify(&token).await.map(|_| ());
        match verdict {
            Ok(()) => {
                let record = fleet::record(
                    &token,
                    e.new_expires_at,
                    e.new_id.or(e.old_id).unwrap_or_default(),
                    system_id.clone(),
                );
                let mut outcome = store.publish(&claim.slot, &record, claim.revision).await;
                if matches!(outcome, Ok(false)) {
                    // Published since (the dead run's lease lapsed and another host held the
                    // lock). What is there is older only if GitLab still takes this token *after*
                    // it was read: a reset by that host would have killed this one. Checked so,
                    // a dead token never overwrites the live one another host published.
                    outcome = match store.read(&claim.slot).await {
                        Ok(now)
                            if now
                                .published
                                .as_ref()
                                .is_some_and(|p| p.token.same_as(&token)) =>
                        {
                            Ok(true)
                        }
                        Ok(now) => match api.verify(&token).await {
                            Ok(_) => store.publish(&claim.slot, &record, now.revision).await,
                            Err(err) if matches!(err.status(), Some(401 | 403)) => {
                                tracing::warn!(runner = %e.name, "another host published a newer token meanwhile; the one obtained before the interruption is given up and the newer one adopted");
                                e.step = Step::Failed;
                                e.error = Some("superseded: another host obtained a newer token after this run was interrupted".into());
                                Ok(true)
                            }
                            Err(err) => Err(fleet::StoreError(format!(
                                "the token could not be checked again: {err}"
                            ))),
                        },
                        Err(err) => Err(err),
                    };
                }
                match outcome {
                    Ok(true) => {
                        tracing::info!(runner = %e.name, "published the token obtained before the interruption for the other hosts");
                    }
                    Ok(false) => {
                        tracing::error!(runner = %e.name, "could not publish the token obtained before the interruption: the record kept changing");
                    }
                    Err(err) => {
                        tracing::error!(runner = %e.name, error = %err, "could not publish the token obtained before the interruption");
                    }
                }
            }
            Err(err) if matches!(err.status(), Some(401 | 403)) => {
                tracing::warn!(runner = %e.name, "GitLab no longer accepts the token obtained before the interruption: another host obtained a newer one; it is adopted instead");
                e.step = Step::Failed;
                e.error = Some(
                    "superseded: another host obtained a newer token after this run was interrupted"
                        .into(),
                );
            }
            Err(err) => {
                tracing::warn!(runner = %e.name, error = %err, "cannot check the token obtained before the interruption; it is written here but not published");
            }
        }
        store.revoke(claim.lease).await;
    }
    journal.keep();
}
