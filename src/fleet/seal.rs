//! The fleet key and the sealed token record. Tokens in the store are encrypted with
//! ChaCha20-Poly1305 under a key from a file every host has (`[fleet] encryption_key_file`), so the
//! store and its backups hold no usable token. The record's key in the store is the associated
//! data: a record moved to another runner's key does not open.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::secret::RunnerToken;

/// 32 bytes; never printed.
#[derive(Clone)]
pub struct FleetKey([u8; 32]);

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(…)")
    }
}

/// Why the key file cannot be used (a settings error: exit 2).
#[derive(Debug)]
pub struct KeyError {
    pub message: String,
    pub fix: String,
}

impl FleetKey {
    /// Read the key file: 64 hex characters (`openssl rand -hex 32`), mode 0600 or 0400, or
    /// 0440 when owned by root.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let shown = path.display();
        let make = "create it once with `openssl rand -hex 32 > FILE; chmod 600 FILE` and copy the same file to every host";
        let meta = fs_err::metadata(path).map_err(|e| KeyError {
            message: format!("cannot read the fleet key file `{shown}`: {}", e.kind()),
            fix: make.replace("FILE", &shown.to_string()),
        })?;
        if !meta.is_file() {
            return Err(KeyError {
                message: format!("the fleet key file `{shown}` is not a regular file"),
                fix: make.replace("FILE", &shown.to_string()),
            });
        }
        let mode = meta.permissions().mode() & 0o777;
        let private = mode.trailing_zeros() >= 6 || (mode == 0o440 && meta.uid() == 0);
        if !private {
            return Err(KeyError {
                message: format!(
                    "the fleet key file `{shown}` may be read by others (mode {mode:04o}); refusing to use it"
                ),
                fix: format!("chmod 600 {shown}"),
            });
        }
        let text = fs_err::read_to_string(path).map_err(|e| KeyError {
            message: format!("cannot read the fleet key file `{shown}`: {}", e.kind()),
            fix: "check its permissions".into(),
        })?;
        Self::from_hex(text.trim()).ok_or_else(|| KeyError {
            message: format!(
                "the fleet key file `{shown}` does not hold 64 hexadecimal characters (32 bytes)"
            ),
            fix: make.replace("FILE", &shown.to_string()),
        })
    }

    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut key = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            key[i] = u8::try_from(hi * 16 + lo).ok()?;
        }
        Some(Self(key))
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0))
    }

    /// Seal a record for `slot` (its key in the store): a random 12-byte nonce, then the
    /// ciphertext.
    pub fn seal(&self, slot: &str, record: &Published) -> Vec<u8> {
        let plain = serde_json::to_vec(&Sealed::from(record)).expect("a record serialises");
        let nonce: [u8; 12] = rand::random();
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: slot.as_bytes(),
                },
            )
            .expect("ChaCha20-Poly1305 encrypts any message of this size");
        let mut out = nonce.to_vec();
        out.extend(sealed);
        out
    }

    /// Open a record of `slot`; `None` when it was not sealed with this key for this slot.
    pub fn open(&self, slot: &str, bytes: &[u8]) -> Option<Published> {
        if bytes.len() < 12 {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(12);
        let plain = self
            .cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: slot.as_bytes(),
                },
            )
            .ok()?;
        let s: Sealed = serde_json::from_slice(&plain).ok()?;
        Some(Published {
            token: RunnerToken::new(s.token),
            token_expires_at: s.token_expires_at,
            runner_id: s.runner_id,
            published_at: s.published_at,
            by: s.by,
        })
    }
}

/// A runner's current token as one host published it.
#[derive(Debug, Clone)]
pub struct Published {
    pub token: RunnerToken,
    pub token_expires_at: Option<DateTime<Utc>>,
    pub runner_id: u64,
    pub published_at: DateTime<Utc>,
    /// The publishing host's system id, when it has one.
    pub by: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    v: u32,
    token: String,
    token_expires_at: Option<DateTime<Utc>>,
    runner_id: u64,
    published_at: DateTime<Utc>,
    by: Option<String>,
}

impl From<&Published> for Sealed {
    fn from(p: &Published) -> Self {
        Self {
            v: 1,
            token: p.token.expose_secret().to_string(),
            token_expires_at: p.token_expires_at,
            runner_id: p.runner_id,
            published_at: p.published_at,
            by: p.by.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Published {
        Published {
            token: RunnerToken::new("glrt-t1_abcdefghijklmnopqrst"),
            token_expires_at: None,
            runner_id: 42,
            published_at: Utc::now(),
            by: Some("s_0123456789ab".into()),
        }
    }

    #[test]
    fn a_sealed_record_opens_only_with_its_key_and_slot() {
        let key = FleetKey::from_hex(&"ab".repeat(32)).unwrap();
        let other = FleetKey::from_hex(&"cd".repeat(32)).unwrap();
        let sealed = key.seal("/p/a/42", &record());
        assert!(!String::from_utf8_lossy(&sealed).contains("glrt-"));
        let opened = key.open("/p/a/42", &sealed).unwrap();
        assert_eq!(opened.token.expose_secret(), "glrt-t1_abcdefghijklmnopqrst");
        assert_eq!(opened.runner_id, 42);
        assert!(other.open("/p/a/42", &sealed).is_none());
        assert!(key.open("/p/a/43", &sealed).is_none());
        let mut bent = sealed.clone();
        *bent.last_mut().unwrap() ^= 1;
        assert!(key.open("/p/a/42", &bent).is_none());
    }

    #[test]
    fn the_key_is_64_hex_characters() {
        assert!(FleetKey::from_hex(&"0F".repeat(32)).is_some());
        assert!(FleetKey::from_hex(&"0f".repeat(31)).is_none());
        assert!(FleetKey::from_hex(&"zz".repeat(32)).is_none());
    }
}
