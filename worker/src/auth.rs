//! Client authentication: the presented key (`Authorization: Bearer` or `x-api-key`) is
//! hashed with SHA-256 and looked up among the snapshot's key digests, then compared in
//! constant time; disabled, revoked and expired keys are refused.
use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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

pub fn authenticate<'r>(
    routing: &'r Routing,
    headers: &HeaderMap,
    now_unix_ms: i64,
) -> Result<&'r ClientKey, ProxyError> {
    let key = presented_key(headers).ok_or(ProxyError::MissingKey)?;
    let digest: [u8; 32] = Sha256::digest(key).into();
    let k = routing.keys.get(&digest).ok_or(ProxyError::BadKey)?;
    if !bool::from(k.digest.ct_eq(&digest)) {
        return Err(ProxyError::BadKey);
    }
    if !k.enabled || (k.expires_at_ms > 0 && k.expires_at_ms <= now_unix_ms) {
        return Err(ProxyError::BadKey);
    }
    Ok(k)
}
