//! A build without the `fleet-etcd` feature: the store's interface with no store behind it.
//! Settings refuse `[fleet] store = "etcd"` in such a build (exit 2, naming the fix), so nothing
//! reaches this; `connect` says the same should it ever be called.

use std::convert::Infallible;
use std::time::Duration;

use super::seal::Published;
use super::EtcdSettings;

/// The store could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// No value of this type can exist in this build.
pub struct Store {
    never: Infallible,
}

pub struct Held {
    never: Infallible,
}

impl Held {
    pub fn lease(&self) -> i64 {
        match self.never {}
    }

    pub fn lost(&self) -> bool {
        match self.never {}
    }
}

pub struct Watching {
    never: Infallible,
}

#[allow(clippy::unused_async)]
impl Watching {
    pub async fn next(&mut self) -> Result<(String, Option<Published>), StoreError> {
        match self.never {}
    }
}

/// What the store holds for a runner now.
pub struct Current {
    pub published: Option<Published>,
    pub revision: i64,
}

#[allow(clippy::unused_async)]
impl Store {
    pub async fn connect(_: &EtcdSettings, _: Duration) -> Result<Self, StoreError> {
        Err(StoreError(
            "this build of runner-medic has no etcd client (built without the `fleet-etcd` feature)"
                .into(),
        ))
    }
    pub fn endpoints(&self) -> &str {
        match self.never {}
    }
    pub fn slot(&self, _: &str, _: u64) -> String {
        match self.never {}
    }
    pub async fn lock(&self, _: &str, _: Duration) -> Result<Held, StoreError> {
        match self.never {}
    }
    pub async fn release(&self, held: Held) {
        match held.never {}
    }
    pub async fn watch(&self) -> Result<Watching, StoreError> {
        match self.never {}
    }
    pub async fn revoke(&self, _: i64) {
        match self.never {}
    }
    pub async fn read(&self, _: &str) -> Result<Current, StoreError> {
        match self.never {}
    }
    pub async fn publish(&self, _: &str, _: &Published, _: i64) -> Result<bool, StoreError> {
        match self.never {}
    }
}
