//! Secrets at rest (AES-256-GCM with a key version stored beside each value, so keys
//! can be rotated) and client API keys (generated `sk-sy-…`, stored as SHA-256 digests).
use std::{collections::HashMap, fmt};

use aes_gcm::{aead::Aead, Aes256Gcm, KeyInit, Nonce};
use base64::Engine;
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::Error;

/// A 32-byte AES-256 key and its version number (≥ 1). Never printed.
#[derive(Clone)]
pub struct MasterKey {
    pub version: u32,
    key: [u8; 32],
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey(v{}, …)", self.version)
    }
}

impl MasterKey {
    /// Parse 32 bytes given as base64 (standard or URL-safe) or hex.
    pub fn parse(version: u32, text: &str) -> Result<Self, Error> {
        if version == 0 {
            return Err(Error::Config("master key version must be >= 1".into()));
        }
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).ok()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(t))
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(t))
                .ok()
        };
        let key: [u8; 32] = bytes.and_then(|b| b.try_into().ok()).ok_or_else(|| {
            Error::Config(format!(
                "master key v{version} must be 32 bytes, base64 or hex encoded"
            ))
        })?;
        Ok(MasterKey { version, key })
    }

    /// Parse `1:<key>,2:<key>` (old keys kept for decryption during rotation).
    pub fn parse_list(text: &str) -> Result<Vec<Self>, Error> {
        text.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|item| {
                let (v, k) = item.split_once(':').ok_or_else(|| {
                    Error::Config("old master keys must look like `1:<key>,2:<key>`".into())
                })?;
                let v: u32 = v
                    .trim()
                    .parse()
                    .map_err(|_| Error::Config(format!("bad master key version {v:?}")))?;
                MasterKey::parse(v, k)
            })
            .collect()
    }
}

/// The keys in use: the current one (encrypts) and old ones (decrypt only).
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    current: Option<MasterKey>,
    all: HashMap<u32, MasterKey>,
}

impl Keyring {
    pub fn new(current: Option<MasterKey>, old: Vec<MasterKey>) -> Self {
        let mut all: HashMap<u32, MasterKey> = old.into_iter().map(|k| (k.version, k)).collect();
        if let Some(c) = &current {
            all.insert(c.version, c.clone());
        }
        Keyring { current, all }
    }

    pub fn encrypts(&self) -> bool {
        self.current.is_some()
    }

    pub fn current_version(&self) -> i64 {
        self.current.as_ref().map_or(0, |k| i64::from(k.version))
    }

    /// Encrypt for storage: `(stored text, key version)`; version 0 means plaintext.
    pub fn seal(&self, plain: &str) -> Result<(String, i64), Error> {
        let Some(k) = &self.current else {
            return Ok((plain.to_string(), 0));
        };
        let cipher = Aes256Gcm::new(&k.key.into());
        let mut nonce = [0u8; 12];
        rand::rng().fill(&mut nonce);
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_bytes())
            .map_err(|_| Error::Crypto("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok((
            base64::engine::general_purpose::STANDARD.encode(out),
            i64::from(k.version),
        ))
    }

    pub fn open(&self, stored: &str, version: i64) -> Result<String, Error> {
        if version == 0 {
            return Ok(stored.to_string());
        }
        let k = u32::try_from(version)
            .ok()
            .and_then(|v| self.all.get(&v))
            .ok_or_else(|| {
                Error::Crypto(format!(
                    "a secret is encrypted with master key v{version}, which is not configured \
                     (set SWITCHYARD_MASTER_KEY or SWITCHYARD_OLD_MASTER_KEYS)"
                ))
            })?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(stored)
            .map_err(|_| Error::Crypto("stored secret is not valid base64".into()))?;
        if raw.len() < 12 {
            return Err(Error::Crypto("stored secret is truncated".into()));
        }
        let (nonce, ct) = raw.split_at(12);
        let cipher = Aes256Gcm::new(&k.key.into());
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| Error::Crypto(format!("cannot decrypt a secret with master key v{version}")))?;
        String::from_utf8(plain).map_err(|_| Error::Crypto("decrypted secret is not UTF-8".into()))
    }
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A new client key: `sk-sy-` + 40 random base62 characters (~238 bits).
pub fn generate_api_key() -> String {
    let mut rng = rand::rng();
    let mut s = String::from("sk-sy-");
    for _ in 0..40 {
        s.push(char::from(BASE62[rng.random_range(0..BASE62.len())]));
    }
    s
}

/// Hex SHA-256 of a client key (keys are high-entropy, so a plain digest suffices).
pub fn hash_api_key(plaintext: &str) -> String {
    hex::encode(Sha256::digest(plaintext.as_bytes()))
}

/// Display prefix of a client key: `sk-sy-` and 4 of its 40 random characters. An
/// imported token (`--import-env`, as short as 16 characters, any shape) shows only its
/// first 4: ten would be most of it.
pub fn key_prefix(plaintext: &str) -> String {
    let n = if plaintext.starts_with("sk-sy-") { 10 } else { 4 };
    plaintext.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_rotate() {
        let k1 = MasterKey::parse(1, &hex::encode([7u8; 32])).unwrap();
        let k2 = MasterKey::parse(2, &base64::engine::general_purpose::STANDARD.encode([9u8; 32])).unwrap();
        let r1 = Keyring::new(Some(k1.clone()), vec![]);
        let (ct, v) = r1.seal("sk-upstream-secret").unwrap();
        assert_eq!(v, 1);
        assert!(!ct.contains("upstream"));
        let r2 = Keyring::new(Some(k2), vec![k1]);
        assert_eq!(r2.open(&ct, v).unwrap(), "sk-upstream-secret");
        assert_eq!(r2.current_version(), 2);
        let r3 = Keyring::default();
        assert!(r3.open(&ct, v).is_err());
        assert_eq!(r3.seal("x").unwrap(), ("x".to_string(), 0));
    }

    #[test]
    fn keys() {
        let k = generate_api_key();
        assert!(k.starts_with("sk-sy-"));
        assert_eq!(k.len(), 46);
        assert_eq!(hash_api_key(&k).len(), 64);
        assert_eq!(key_prefix(&k).len(), 10);
        assert_eq!(key_prefix("legacy-bearer-token-0123"), "lega");
        assert!(MasterKey::parse(1, "short").is_err());
    }
}
