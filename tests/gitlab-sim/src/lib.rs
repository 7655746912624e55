//! A GitLab API simulator for runner-medic's tests and demo.
//!
//! It serves the runner endpoints over real HTTP (or HTTPS with a CA it generates) on a loopback
//! port and answers the way GitLab does, as written down in
//! `tests/data/reference/gitlab-runner-api.md`: the same paths, status codes, JSON bodies, token
//! formats and expiry rules. It shares no code or types with runner-medic, so it cannot share
//! runner-medic's mistakes.
//!
//! Tests drive it in-process: seed runners and access tokens, move its clock, skew its `Date`
//! header, add latency, inject faults, and read the request log.
//!
//! # Layout
//! - `state`: the data (runners, access tokens, settings, faults, log) and GitLab's rules over it.
//! - `api`: the HTTP handlers, one per endpoint.
//! - `server`: the accept loop (plain or TLS), latency, faults and the request log.
//! - `stand_in`: a stand-in gitlab-runner process that polls for jobs with config.toml's tokens.
//! - `tls`: the generated CA and server certificate.

mod api;
mod server;
pub mod stand_in;
pub mod state;
mod tls;

pub use tls::TrustSetup;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use state::{
    AppSettings, Fault, FaultKind, LogEntry, NewRunner, Pat, Runner, RunnerManager, RunnerType,
    State, Throttle, LEGACY_SYSTEM_XID,
};

/// How to start a simulator.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Serve HTTPS with a freshly generated CA (its PEM is written to `tls_dir`).
    pub tls: bool,
    /// With `tls`: require a client certificate signed by the CA (mutual TLS).
    pub client_cert: bool,
    /// With `tls`: what the server presents and what [`Simulator::ca_pem_path`] holds.
    pub trust: TrustSetup,
    /// Where to write `ca.pem` when `tls` is on.
    pub tls_dir: Option<PathBuf>,
    /// Fixed latency added to every request.
    pub latency: Duration,
}

/// A running simulator. Dropping it stops the server.
pub struct Simulator {
    addr: SocketAddr,
    tls: bool,
    ca_pem_path: Option<PathBuf>,
    client_cert: Option<(PathBuf, PathBuf)>,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Simulator {
    /// Start on 127.0.0.1 with an ephemeral port, on a runtime thread of its own.
    pub fn start(options: Options) -> std::io::Result<Self> {
        Self::start_on(
            "127.0.0.1:0".parse().expect("a literal socket address"),
            options,
        )
    }

    pub fn start_on(bind: SocketAddr, options: Options) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State::new(options.latency)));
        let tls = if options.tls {
            let dir = options.tls_dir.clone().unwrap_or_else(std::env::temp_dir);
            Some(tls::generate(&dir, options.client_cert, options.trust)?)
        } else {
            None
        };
        let ca_pem_path = tls.as_ref().map(|t| t.ca_pem_path.clone());
        let client_cert = tls.as_ref().and_then(|t| t.client.clone());
        let listener = std::net::TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shared = state.clone();
        let is_tls = tls.is_some();
        let thread = std::thread::Builder::new()
            .name("gitlab-sim".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a tokio runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("listener to tokio");
                    server::serve(listener, shared, tls.map(|t| t.acceptor), rx).await;
                });
            })?;
        Ok(Self {
            addr,
            tls: is_tls,
            ca_pem_path,
            client_cert,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let host = if self.tls {
            "localhost".to_string()
        } else {
            self.addr.ip().to_string()
        };
        format!("{scheme}://{host}:{}", self.addr.port())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM a client must trust: the CA that signed the HTTPS certificate, or (see
    /// [`TrustSetup`]) the self-signed certificate or the leaf itself.
    pub fn ca_pem_path(&self) -> Option<&Path> {
        self.ca_pem_path.as_deref()
    }

    /// The client certificate and key files, when the simulator requires mutual TLS.
    pub fn client_cert_paths(&self) -> Option<(&Path, &Path)> {
        self.client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path()))
    }

    /// Lock the state to read or change it. Keep the guard short: requests wait on it.
    pub fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a handler panicked: the test is over anyway.
        self.state.lock().expect("simulator state lock")
    }

    pub fn shared_state(&self) -> Arc<Mutex<State>> {
        self.state.clone()
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
