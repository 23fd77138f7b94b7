//! Responses API state without a shared store: the gateway's response ids.
//!
//! A provider keeps a response (for `GET`/`DELETE /v1/responses/{id}`, `…/cancel`,
//! `…/input_items` and `previous_response_id`) in the account that made it, so a later
//! call must reach the same credential, from any worker. Every response id the worker
//! relays (`resp_…` as a JSON string, in a body or a stream) goes out rewritten as a
//! gateway id that says which credential made it:
//!
//! `resp_sy1` + base64url(tag ‖ mac ‖ upstream id)
//!
//! * `tag` (6 bytes): SHA-256 of the provider's and credential's names, to find the
//!   credential in any worker's snapshot (no secret in it);
//! * `mac` (12 bytes): HMAC-SHA-256 of the client key's id and the upstream id, keyed
//!   with a key derived from the credential's secret (`SHA-256("switchyard response id
//!   v1" ‖ secret)`: the secret cannot be recovered from it). Every worker derives the
//!   same key from the same snapshot; a client cannot make an id that points at a
//!   credential, nor use an id made for another client key (answered 404, as an unknown
//!   id). Rotating the credential's secret retires its ids.
//!
//! On the way in, the gateway ids in a `POST /v1/responses` body (`previous_response_id`,
//! wherever they are) are rewritten back and pin the request to their credential, and a
//! stateful call's path id routes it. Ids are found lexically: a JSON string whose whole
//! content is `resp_` and id characters (a quote preceded by a backslash is inside a
//! string, so text never matches). A stream is rewritten as it passes: only a possible id
//! cut by a read's end is held back (at most [`MAX_ID`] bytes).
//!
//! Encrypted reasoning items sent back by clients that do not store responses
//! (`store: false`) carry no response id: those requests keep to one credential by
//! affinity on the client's session header ([`session_affinity`]).
use std::sync::{Arc, LazyLock};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use hmac::{Hmac, Mac};
use memchr::memmem::Finder;
use sha2::{Digest, Sha256};

use crate::config::{Provider, Routing};

/// The start of every gateway id.
pub const PREFIX: &str = "resp_sy1";
/// The longest id (between its quotes) rewritten; longer tokens are left alone.
pub const MAX_ID: usize = 512;
const TAG: usize = 6;
const MAC: usize = 12;

static QUOTE_RESP: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"resp_"));
static QUOTE_GATEWAY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"resp_sy1"));
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A credential's response-id material, derived when the snapshot is converted.
#[derive(Clone)]
pub struct IdKey {
    tag: [u8; TAG],
    key: [u8; 32],
}

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdKey(***)")
    }
}

impl IdKey {
    pub fn new(provider: &str, credential: &str, secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"switchyard credential tag v1\0");
        h.update(provider.as_bytes());
        h.update(b"\0");
        h.update(credential.as_bytes());
        let t = h.finalize();
        let mut tag = [0; TAG];
        tag.copy_from_slice(&t[..TAG]);
        let mut h = Sha256::new();
        h.update(b"switchyard response id v1\0");
        h.update(secret);
        Self {
            tag,
            key: h.finalize().into(),
        }
    }

    fn mac(&self, client_key: &str, upstream_id: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        m.update(client_key.as_bytes());
        m.update(b"\0");
        m.update(upstream_id);
        m
    }

    /// The gateway id for `upstream_id`, made for client key `client_key`.
    pub fn encode(&self, client_key: &str, upstream_id: &[u8]) -> String {
        let mac = self.mac(client_key, upstream_id).finalize().into_bytes();
        let mut raw = Vec::with_capacity(TAG + MAC + upstream_id.len());
        raw.extend_from_slice(&self.tag);
        raw.extend_from_slice(&mac[..MAC]);
        raw.extend_from_slice(upstream_id);
        let mut out = String::with_capacity(PREFIX.len() + raw.len() * 4 / 3 + 4);
        out.push_str(PREFIX);
        B64.encode_string(&raw, &mut out);
        out
    }
}

/// A gateway id read back: which credential made it, and the upstream's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// Index into `Routing::providers`.
    pub provider: usize,
    /// Index into that provider's credentials.
    pub credential: usize,
    pub upstream_id: String,
}

/// `id` read as a gateway id made for `client_key`; `None` when it is not one, names no
/// credential of this snapshot, or was made for another key.
pub fn decode(routing: &Routing, client_key: &str, id: &str) -> Option<Decoded> {
    let raw = B64.decode(id.strip_prefix(PREFIX)?).ok()?;
    if raw.len() <= TAG + MAC {
        return None;
    }
    let (tag, rest) = raw.split_at(TAG);
    let (mac, upstream) = rest.split_at(MAC);
    let upstream_id = std::str::from_utf8(upstream).ok()?;
    if !upstream_id.bytes().all(is_id_byte) {
        return None;
    }
    for (pi, p) in routing.providers.iter().enumerate() {
        for (ci, c) in p.credentials.iter().enumerate() {
            if c.id_key.tag == tag {
                c.id_key
                    .mac(client_key, upstream)
                    .verify_truncated_left(mac)
                    .ok()?;
                return Some(Decoded {
                    provider: pi,
                    credential: ci,
                    upstream_id: upstream_id.to_string(),
                });
            }
        }
    }
    None
}

fn is_id_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Whether the quote at `q` opens a string: not preceded by an odd run of backslashes (then
/// it is an escaped quote inside a string).
fn opens_string(b: &[u8], q: usize) -> bool {
    b[..q].iter().rev().take_while(|&&c| c == b'\\').count() % 2 == 0
}

/// Where an id token at the quote `q` ends: `Ok(end)` with `b[end]` its closing quote,
/// `Err(true)` when `b` ends before it could (hold back), `Err(false)` when it is not one.
fn token_end(b: &[u8], q: usize) -> Result<usize, bool> {
    let start = q + 1;
    let mut i = start;
    while i < b.len() && i - start <= MAX_ID {
        match b[i] {
            b'"' => {
                return if i - start > "resp_".len() {
                    Ok(i)
                } else {
                    Err(false)
                }
            }
            c if is_id_byte(c) => i += 1,
            _ => return Err(false),
        }
    }
    Err(i == b.len() && i - start <= MAX_ID)
}

/// The gateway ids in a request body (in JSON strings of their own), made for
/// `client_key`: each one's content range and its upstream id, and the credential they
/// all name. `Err` when they name different credentials.
pub type InboundIds = (Vec<(std::ops::Range<usize>, Bytes)>, Option<(usize, usize)>);

pub fn inbound(routing: &Routing, client_key: &str, body: &[u8]) -> Result<InboundIds, &'static str> {
    let mut edits = Vec::new();
    let mut account = None;
    for q in QUOTE_GATEWAY.find_iter(body) {
        if !opens_string(body, q) {
            continue;
        }
        let Ok(end) = token_end(body, q) else { continue };
        let Ok(id) = std::str::from_utf8(&body[q + 1..end]) else {
            continue;
        };
        let Some(d) = decode(routing, client_key, id) else {
            continue;
        };
        let acct = (d.provider, d.credential);
        if account.replace(acct).is_some_and(|a| a != acct) {
            return Err("the request names responses made by different accounts");
        }
        edits.push((q + 1..end, Bytes::from(d.upstream_id)));
    }
    Ok((edits, account))
}

/// The credential affinity of a Responses API request that names no response: the
/// client's session or conversation header (Codex sends both), so that a conversation
/// whose encrypted reasoning items come back with `store: false` stays on one account.
pub fn session_affinity(headers: &http::HeaderMap) -> Option<u64> {
    ["session_id", "conversation_id", "x-session-id"]
        .iter()
        .find_map(|h| headers.get(*h))
        .map(|v| crate::balance::stable_hash(v.as_bytes()))
}

/// Rewrites the upstream's response ids into gateway ids in what the client sees, as it
/// passes (`relay::Transform::ResponseIds`).
#[derive(Debug)]
pub struct Rewriter {
    key: IdKey,
    client_key: Arc<str>,
    /// A possible id cut by the end of the last read.
    held: Vec<u8>,
}

impl Rewriter {
    pub fn new(provider: &Provider, credential: usize, client_key: Arc<str>) -> Self {
        Self {
            key: provider.credentials[credential].id_key.clone(),
            client_key,
            held: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The stream ended: what was held back, as it came.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.held.is_empty()).then(|| Bytes::from(std::mem::take(&mut self.held)))
    }

    /// What the client gets of the next chunk.
    pub fn feed(&mut self, chunk: Bytes) -> Bytes {
        let data: Bytes = if self.held.is_empty() {
            chunk
        } else {
            let mut j = std::mem::take(&mut self.held);
            j.extend_from_slice(&chunk);
            Bytes::from(j)
        };
        let mut out: Option<BytesMut> = None;
        let mut copied = 0;
        let mut hold_from = None;
        for q in QUOTE_RESP.find_iter(&data) {
            if q < copied || !opens_string(&data, q) {
                continue;
            }
            match token_end(&data, q) {
                Ok(end) => {
                    let id = &data[q + 1..end];
                    if id.starts_with(PREFIX.as_bytes()) {
                        continue;
                    }
                    let o = out.get_or_insert_with(|| BytesMut::with_capacity(data.len() + 64));
                    o.extend_from_slice(&data[copied..q + 1]);
                    o.extend_from_slice(self.key.encode(&self.client_key, id).as_bytes());
                    copied = end;
                }
                Err(true) => {
                    hold_from = Some(q);
                    break;
                }
                Err(false) => {}
            }
        }
        // A read that ends inside `"resp_` itself.
        let end = match hold_from {
            Some(q) => q,
            None => partial_prefix_start(&data, copied),
        };
        if end < data.len() {
            self.held.extend_from_slice(&data[end..]);
        }
        match out {
            None if end == data.len() => data,
            None => data.slice(..end),
            Some(mut o) => {
                o.extend_from_slice(&data[copied..end]);
                o.freeze()
            }
        }
    }
}

/// Where a strict prefix of `"resp_` (a quote opening a string) ends `data`, if one does.
fn partial_prefix_start(data: &[u8], from: usize) -> usize {
    const NEEDLE: &[u8] = b"\"resp_";
    for k in (1..NEEDLE.len()).rev() {
        if data.len() >= from + k && data.ends_with(&NEEDLE[..k]) {
            let q = data.len() - k;
            if opens_string(data, q) {
                return q;
            }
        }
    }
    data.len()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key() -> IdKey {
        IdKey::new("p", "k1", b"Bearer sk-1")
    }

    fn rewrite(chunks: &[&[u8]]) -> Vec<u8> {
        let mut r = Rewriter {
            key: key(),
            client_key: Arc::from("key1"),
            held: Vec::new(),
        };
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&r.feed(Bytes::copy_from_slice(c)));
        }
        out.extend(r.finish().into_iter().flatten());
        out
    }

    #[test]
    fn ids_are_rewritten_in_any_reads_and_text_is_not() {
        let gw = key().encode("key1", b"resp_abc123");
        let doc = br#"{"id":"resp_abc123","text":"say \"resp_abc123\" or resp_x","previous_response_id":"resp_abc123","n":"resp_"}"#;
        let want = String::from_utf8(doc.to_vec())
            .unwrap()
            .replace(r#""id":"resp_abc123""#, &format!(r#""id":"{gw}""#))
            .replace(
                r#""previous_response_id":"resp_abc123""#,
                &format!(r#""previous_response_id":"{gw}""#),
            );
        for cut in 0..doc.len() {
            for cut2 in [cut, (cut + 3).min(doc.len()), doc.len()] {
                let got = rewrite(&[&doc[..cut], &doc[cut..cut2], &doc[cut2..]]);
                assert_eq!(String::from_utf8(got).unwrap(), want, "{cut} {cut2}");
            }
        }
        // Already a gateway id: left alone; nothing to rewrite: the same bytes.
        let same = format!(r#"{{"id":"{gw}"}}"#);
        assert_eq!(rewrite(&[same.as_bytes()]), same.as_bytes());
    }

    #[test]
    fn an_id_is_bound_to_its_credential_and_client_key() {
        let k = key();
        let id = k.encode("key1", b"resp_abc");
        assert!(id.starts_with(PREFIX));
        assert!(!id.contains("sk-1"));
        let mut bad = id.clone();
        bad.pop();
        bad.push(if id.ends_with('A') { 'B' } else { 'A' });
        // Read back only against a snapshot that has the credential (`decode` needs a
        // routing table: see `proxy::testing`): here, the MAC alone.
        let raw = B64.decode(id.strip_prefix(PREFIX).unwrap()).unwrap();
        let (tag, rest) = raw.split_at(TAG);
        assert_eq!(tag, k.tag);
        let (mac, up) = rest.split_at(MAC);
        assert_eq!(up, b"resp_abc");
        assert!(k.mac("key1", up).verify_truncated_left(mac).is_ok());
        assert!(k.mac("key2", up).verify_truncated_left(mac).is_err());
        let other = IdKey::new("p", "k1", b"Bearer sk-2");
        assert!(other.mac("key1", up).verify_truncated_left(mac).is_err());
        assert_eq!(format!("{k:?}"), "IdKey(***)");
    }
}
