//! Secrets at rest: XChaCha20-Poly1305 under one platform key.
//!
//! A version's secrets are one sealed blob in its row: a random 24-byte
//! nonce, then the ciphertext of their JSON. The function's id is the
//! associated data, so a blob copied into another function's row does not
//! open. The key is 32 bytes as 64 hex digits, from `THAW_SECRETS_KEY` or
//! `secrets.key` in the data directory (mode 0600); it is never stored in
//! the database. Values leave this module only towards a runtime's
//! environment: [`SecretValues`] prints as names alone.

use crate::RegistryError;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

const NONCE_BYTES: usize = 24;

/// A function's secrets, by name: the value and when it was set.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SecretValues(pub BTreeMap<String, SecretEntry>);

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretEntry {
    pub value: String,
    pub updated_ms: i64,
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: a value must never reach a log line through Debug.
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretValues {
    /// Names with when each was set, for listings.
    pub fn names(&self) -> Vec<(String, i64)> {
        self.0
            .iter()
            .map(|(k, e)| (k.clone(), e.updated_ms))
            .collect()
    }

    /// The values, for the runtime's environment at init.
    pub fn values(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, e)| (k, &e.value))
    }
}

pub struct SecretCipher(XChaCha20Poly1305);

impl SecretCipher {
    /// The key from its text form: 64 hex digits.
    pub fn from_text(text: &str) -> Result<SecretCipher, RegistryError> {
        let bytes = hex::decode(text.trim())
            .ok()
            .filter(|b| b.len() == 32)
            .ok_or_else(|| {
                RegistryError::Secrets(
                    "the secrets key must be 64 hex digits (32 bytes), as `openssl rand -hex 32` prints"
                        .into(),
                )
            })?;
        Ok(SecretCipher(XChaCha20Poly1305::new(
            bytes.as_slice().into(),
        )))
    }

    pub fn seal(&self, function_id: i64, secrets: &SecretValues) -> Vec<u8> {
        let plain = serde_json::to_vec(secrets).expect("secrets serialise");
        let nonce: [u8; NONCE_BYTES] = rand::random();
        let aad = aad(function_id);
        let sealed = self
            .0
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: aad.as_bytes(),
                },
            )
            .expect("encryption of a bounded message cannot fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, function_id: i64, blob: &[u8]) -> Result<SecretValues, RegistryError> {
        if blob.len() < NONCE_BYTES {
            return Err(RegistryError::Secrets("a sealed blob is truncated".into()));
        }
        let (nonce, sealed) = blob.split_at(NONCE_BYTES);
        let aad = aad(function_id);
        let plain = self
            .0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| {
                RegistryError::Secrets(
                    "they were sealed with another key (is THAW_SECRETS_KEY or secrets.key the one they were set with?)"
                        .into(),
                )
            })?;
        serde_json::from_slice(&plain).map_err(|e| RegistryError::Corrupt(format!("secrets: {e}")))
    }
}

fn aad(function_id: i64) -> String {
    format!("thaw-secrets:function:{function_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(value: &str) -> SecretValues {
        let mut s = SecretValues::default();
        s.0.insert(
            "API_KEY".into(),
            SecretEntry {
                value: value.into(),
                updated_ms: 1,
            },
        );
        s
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key_and_function() {
        let key = "11".repeat(32);
        let cipher = SecretCipher::from_text(&key).unwrap();
        let blob = cipher.seal(7, &one("hunter2-value"));
        assert!(!blob.windows(6).any(|w| w == b"hunter"), "stored in clear");
        assert_eq!(cipher.open(7, &blob).unwrap(), one("hunter2-value"));
        assert!(cipher.open(8, &blob).is_err(), "moved to another function");
        let other = SecretCipher::from_text(&"22".repeat(32)).unwrap();
        assert!(other.open(7, &blob).is_err());
        assert!(cipher.open(7, &blob[..10]).is_err());
        let mut tampered = blob.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(cipher.open(7, &tampered).is_err());
    }

    #[test]
    fn debug_shows_names_never_values() {
        let shown = format!("{:?}", one("hunter2-value"));
        assert!(shown.contains("API_KEY"));
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn a_bad_key_is_refused_with_what_to_do() {
        let err = SecretCipher::from_text("short").err().unwrap().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }
}
