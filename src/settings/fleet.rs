//! `[fleet]`: how the hosts that share a runner's token are coordinated.

use std::time::Duration;

use url::Url;

use super::file::FleetFile;
use super::secrets::read_secret_file;
use super::{bad, parse_duration, SettingsError};
use crate::cli::GlobalArgs;
pub use crate::fleet::EtcdSettings;

#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Other runner managers that contacted GitLab within this window share the token.
    pub manager_window: Duration,
    /// The store that coordinates the hosts sharing a token; `None`: no coordination.
    pub store: Option<EtcdSettings>,
}

impl FleetSettings {
    /// A store coordinates the hosts that share a token.
    pub fn coordinated(&self) -> bool {
        self.store.is_some()
    }
}

/// The `[fleet]` settings, with `--fleet-*` flags (and their environment variables) first.
pub(super) fn fleet_settings(
    global: &GlobalArgs,
    file: &FleetFile,
) -> Result<FleetSettings, SettingsError> {
    let manager_window = file
        .manager_window
        .as_deref()
        .map_or(Ok(Duration::from_secs(2 * 3600)), |t| {
            parse_duration("fleet.manager_window", t)
        })?;
    let store = global
        .fleet_store
        .clone()
        .or(file.store.clone())
        .unwrap_or_else(|| "none".into());
    let store = match store.trim() {
        "none" | "" => None,
        "etcd" => {
            let etcd = etcd_settings(global, file)?;
            // The etcd client compiles etcd's API definitions with protoc when it is built, so it
            // is a cargo feature: `cargo run -- demo` needs nothing but the Rust toolchain, and
            // the Debian package is built with it.
            if !cfg!(feature = "fleet-etcd") {
                return Err(bad(
                    "`[fleet] store = \"etcd\"`: this build of runner-medic has no etcd client",
                    "use the Debian package, or build with `cargo build --release --features fleet-etcd` (needs protoc: `apt-get install protobuf-compiler libprotobuf-dev`)",
                ));
            }
            Some(etcd)
        }
        other => {
            return Err(bad(
                format!("unknown fleet store `{other}`"),
                "use `none` (the default) or `etcd` for `[fleet] store` / `--fleet-store`",
            ))
        }
    };
    Ok(FleetSettings {
        manager_window,
        store,
    })
}

fn etcd_settings(global: &GlobalArgs, file: &FleetFile) -> Result<EtcdSettings, SettingsError> {
    let endpoints: Vec<String> = global
        .fleet_endpoints
        .clone()
        .or(file.endpoints.clone())
        .unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()])
        .into_iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err(bad(
            "`[fleet] store = \"etcd\"` has no endpoints",
            "set `[fleet] endpoints = [\"https://etcd-1.example.com:2379\", …]` or `--fleet-endpoints`",
        ));
    }
    for e in &endpoints {
        let ok = Url::parse(e)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if !ok {
            return Err(bad(
                format!("fleet endpoint `{e}` is not an http(s) URL"),
                "write endpoints like `https://etcd-1.example.com:2379`",
            ));
        }
    }
    let prefix = global
        .fleet_prefix
        .clone()
        .or(file.prefix.clone())
        .unwrap_or_else(|| "/runner-medic".into());
    let prefix = prefix.trim_end_matches('/').to_string();
    let Some(key_file) = &file.encryption_key_file else {
        return Err(bad(
            "`[fleet] store = \"etcd\"` needs `encryption_key_file`: tokens are stored encrypted",
            "create one key for the whole fleet (`openssl rand -hex 32 > /etc/runner-medic/fleet.key; chmod 600 /etc/runner-medic/fleet.key`), copy it to every host and set `[fleet] encryption_key_file`",
        ));
    };
    let key = crate::fleet::FleetKey::read(key_file).map_err(|e| bad(e.message, e.fix))?;
    let identity = match (&file.cert_file, &file.key_file) {
        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        (None, None) => None,
        _ => {
            return Err(bad(
                "`[fleet]` has only one of `cert_file` and `key_file`",
                "give both (the client certificate and its key) or neither",
            ))
        }
    };
    let user = match (&file.username, &file.password_file) {
        (Some(u), Some(p)) => Some((u.clone(), read_secret_file("fleet password file", p)?)),
        (None, None) => None,
        _ => {
            return Err(bad(
                "`[fleet]` has only one of `username` and `password_file`",
                "give both (etcd's user and a file, mode 0600, with its password) or neither",
            ))
        }
    };
    let lock_ttl = file
        .lock_ttl
        .as_deref()
        .map_or(Ok(Duration::from_secs(60)), |t| {
            parse_duration("fleet.lock_ttl", t)
        })?;
    if lock_ttl < Duration::from_secs(5) {
        return Err(bad(
            "`[fleet] lock_ttl` is shorter than 5s",
            "use `lock_ttl = \"60s\"` (the default) or longer",
        ));
    }
    Ok(EtcdSettings {
        endpoints,
        prefix,
        key,
        ca_file: file.ca_file.clone(),
        identity,
        user,
        lock_ttl,
    })
}
