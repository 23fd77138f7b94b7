//! Client authentication: the presented key (`Authorization: Bearer` or `x-api-key`) is
//! hashed with SHA-256 and looked up among the snapshot's key digests, then compared in
//! constant time; disabled, revoked and expired keys are refused.
use http::HeaderMap;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{
    config::{ClientKey, Routing},
    errors::ProxyError,
};

/// The key the client presented, if any.
pub fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.as_bytes();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            let k = v[7..].trim_ascii();
            if !k.is_empty() {
                return Some(k);
            }
        }
    }
    headers
        .get("x-api-key")
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|k| !k.is_empty())
}

/// Keys longer than this are hashed every time rather than kept.
const MEMO_MAX_KEY: usize = 512;

/// One connection's memo of the last key it presented and that key's digest. A
/// keep-alive client sends the same key on every request, and hashing it was the
/// largest single cost of a request (5% of its instructions). Only the hash is
/// skipped: the lookup and the enabled, revoked and expiry checks run on every
/// request, so a key revoked mid-connection is refused at its next request. The kept
/// copy is wiped when replaced and when the connection closes.
#[derive(Default)]
pub struct KeyMemo(Mutex<Option<Remembered>>);

/// The key as presented (wiped on drop) and its SHA-256 digest.
type Remembered = (Zeroizing<Box<[u8]>>, [u8; 32]);

impl KeyMemo {
    fn digest(&self, key: &[u8]) -> [u8; 32] {
        let mut memo = self.0.lock();
        if let Some((k, d)) = memo.as_ref() {
            // A plain comparison: it is with what this connection itself sent before,
            // so its timing tells the client nothing it does not know. The digest
            // lookup below stays constant-time.
            if k.as_ref() as &[u8] == key {
                return *d;
            }
        }
        let d: [u8; 32] = Sha256::digest(key).into();
        *memo = (key.len() <= MEMO_MAX_KEY).then(|| (Zeroizing::new(Box::from(key)), d));
        d
    }
}

impl std::fmt::Debug for KeyMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyMemo")
    }
}

pub fn authenticate<'r>(
    routing: &'r Routing,
    headers: &HeaderMap,
    now_unix_ms: i64,
    memo: &KeyMemo,
) -> Result<&'r ClientKey, ProxyError> {
    let key = presented_key(headers).ok_or(ProxyError::MissingKey)?;
    let digest = memo.digest(key);
    let k = routing.keys.get(&digest).ok_or(ProxyError::BadKey)?;
    if !bool::from(k.digest.ct_eq(&digest)) {
        return Err(ProxyError::BadKey);
    }
    if !k.enabled || (k.expires_at_ms > 0 && k.expires_at_ms <= now_unix_ms) {
        return Err(ProxyError::BadKey);
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routing(keys: &[(&str, bool)]) -> Routing {
        let mut r = Routing {
            version: 1,
            hash: String::new(),
            providers: Vec::new(),
            models: Default::default(),
            model_names: Vec::new(),
            aliases: Default::default(),
            keys: Default::default(),
            limits: Vec::new(),
        };
        for (plain, enabled) in keys {
            let digest: [u8; 32] = Sha256::digest(plain.as_bytes()).into();
            r.keys.insert(
                digest,
                ClientKey {
                    id: (*plain).into(),
                    name: (*plain).into(),
                    digest,
                    allowed_models: None,
                    enabled: *enabled,
                    expires_at_ms: 0,
                    may_pin: false,
                    team: None,
                    limits: None,
                },
            );
        }
        r
    }

    fn bearer(k: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {k}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn the_memo_gives_the_digest_of_the_key_presented_now() {
        let memo = KeyMemo::default();
        for k in ["sk-a", "sk-a", "sk-b", "sk-a", "sk-ab", "", "sk-b"] {
            let want: [u8; 32] = Sha256::digest(k.as_bytes()).into();
            assert_eq!(memo.digest(k.as_bytes()), want, "{k:?}");
        }
        // A long key is hashed, not kept.
        let long = vec![b'x'; MEMO_MAX_KEY + 1];
        let want: [u8; 32] = Sha256::digest(&long).into();
        assert_eq!(memo.digest(&long), want);
        assert!(memo.0.lock().is_none());
    }

    #[test]
    fn a_key_revoked_mid_connection_is_refused_at_its_next_request() {
        let memo = KeyMemo::default();
        let live = routing(&[("sk-live", true), ("sk-other", true)]);
        assert_eq!(
            &*authenticate(&live, &bearer("sk-live"), 0, &memo).unwrap().id,
            "sk-live"
        );
        // The next snapshot revokes it; the same connection presents it again.
        let revoked = routing(&[("sk-live", false), ("sk-other", true)]);
        assert!(matches!(
            authenticate(&revoked, &bearer("sk-live"), 0, &memo),
            Err(ProxyError::BadKey)
        ));
        // Another key on the same connection is its own.
        assert_eq!(
            &*authenticate(&revoked, &bearer("sk-other"), 0, &memo).unwrap().id,
            "sk-other"
        );
        assert!(matches!(
            authenticate(&revoked, &bearer("sk-wrong"), 0, &memo),
            Err(ProxyError::BadKey)
        ));
        assert!(matches!(
            authenticate(&revoked, &HeaderMap::new(), 0, &memo),
            Err(ProxyError::MissingKey)
        ));
    }
}
