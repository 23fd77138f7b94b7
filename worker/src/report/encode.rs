//! Report batches written in their wire form as they are formed, straight from the
//! queued events.
//!
//! A batch waiting for control's acknowledgement is its encoded `ReportRequest`, not a
//! `pb::ReportRequest`: a usage record takes its wire size (about 200 bytes in the
//! benchmark) instead of a struct of eleven `String`s and their allocations (about
//! three times that), and an event's fields are written once instead of being copied
//! into eight new strings, encoded and dropped. The
//! bytes are exactly those prost writes for the generated types (the tests compare
//! them), so control, and spool files written by earlier versions, see no difference.
use bytes::{Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use switchyard_proto as pb;

use crate::account::UsageEvent;

/// A `ReportRequest` being written: its header first, then each usage record as the
/// reporter drains it, then (on [`OpenBatch::finish`]) the health events.
#[derive(Debug)]
pub(super) struct OpenBatch {
    pub id: String,
    pub usage: usize,
    buf: BytesMut,
}

/// `ReportRequest` field numbers (switchyard.proto).
const REQ_WORKER_ID: u32 = 1;
const REQ_BATCH_ID: u32 = 2;
const REQ_USAGE: u32 = 3;
const REQ_HEALTH: u32 = 4;

impl OpenBatch {
    /// A batch with a new uuid-v7 id (sortable: spool files replay in order).
    pub fn new(worker_id: &str) -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        let mut buf = BytesMut::with_capacity(4096);
        put_str(&mut buf, REQ_WORKER_ID, worker_id);
        put_str(&mut buf, REQ_BATCH_ID, &id);
        Self { id, usage: 0, buf }
    }

    /// Append `ev` as a usage record with id `record_id`.
    pub fn push_usage(&mut self, ev: &UsageEvent, record_id: &str) {
        let mut len = Len(0);
        usage_fields(ev, record_id.as_bytes(), &mut len);
        encode_key(REQ_USAGE, WireType::LengthDelimited, &mut self.buf);
        encode_varint(len.0 as u64, &mut self.buf);
        encode_record(ev, record_id.as_bytes(), &mut self.buf);
        self.usage += 1;
    }

    /// Append a usage record already encoded ([`encode_record`], read back from the
    /// journal).
    pub fn push_encoded(&mut self, rec: &[u8]) {
        encode_key(REQ_USAGE, WireType::LengthDelimited, &mut self.buf);
        encode_varint(rec.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(rec);
        self.usage += 1;
    }

    /// The finished `ReportRequest`, with `health` after the usage records.
    pub fn finish(mut self, health: &[pb::HealthEvent]) -> Bytes {
        for h in health {
            prost::encoding::message::encode(REQ_HEALTH, h, &mut self.buf);
        }
        // A batch may wait in memory for a long time (control down): it keeps no more
        // than a quarter of spare room from the buffer's doublings.
        if self.buf.capacity() - self.buf.len() > self.buf.len() / 4 {
            return Bytes::copy_from_slice(&self.buf);
        }
        self.buf.freeze()
    }
}

/// `ev` as an encoded `pb::UsageRecord` with id `record_id`, appended to `buf` (what the
/// request path journals).
pub(crate) fn encode_record(ev: &UsageEvent, record_id: &[u8], buf: &mut BytesMut) {
    // Written into room made once, at most the bound: prost's `encode_varint` over
    // `BufMut` (a capacity check and a one-byte copy call per byte) cost ~570
    // instructions a record on the request path.
    let start = buf.len();
    buf.resize(start + usage_bound(ev, record_id), 0);
    let mut out = Out {
        b: &mut buf[start..],
        n: 0,
    };
    usage_fields(ev, record_id, &mut out);
    let n = out.n;
    buf.truncate(start + n);
}

/// At most the encoded size of `usage_fields(ev, id)`: each field's key (two bytes for
/// the numbers used), a varint (at most ten bytes) and its bytes.
fn usage_bound(ev: &UsageEvent, id: &[u8]) -> usize {
    const FIELDS: usize = 25;
    FIELDS * 12
        + id.len()
        + ev.request_id.len()
        + ev.key_id.len()
        + ev.key_name.len()
        + ev.model.len()
        + ev.backend.len()
        + ev.provider.len()
        + ev.credential.len()
        + ev.endpoint.len()
        + ev.outcome.as_str().len()
        + ev.team.as_deref().map_or(0, str::len)
}

/// The fields of `pb::UsageRecord` for `ev`, in field order, defaults left out (as
/// proto3 and prost do). `worker_id` (4) stays empty: control takes the batch's.
fn usage_fields(ev: &UsageEvent, id: &[u8], f: &mut impl Fields) {
    f.bytes(1, id);
    f.varint(2, ev.ts_ms as u64);
    f.str(3, &ev.request_id);
    f.str(5, &ev.key_id);
    f.str(6, &ev.key_name);
    f.str(7, &ev.model);
    f.str(8, &ev.backend);
    f.str(9, &ev.provider);
    f.str(10, &ev.credential);
    f.str(11, &ev.endpoint);
    f.varint(12, u64::from(ev.status));
    f.varint(13, u64::from(ev.stream));
    f.varint(14, u64::from(ev.retries));
    f.varint(15, ev.latency_us);
    f.varint(16, ev.ttfb_us);
    f.varint(17, ev.usage.prompt_tokens);
    f.varint(18, ev.usage.completion_tokens);
    f.varint(19, ev.usage.total_tokens);
    f.varint(20, ev.usage.cached_tokens);
    f.varint(21, ev.usage.reasoning_tokens);
    f.str(22, ev.outcome.as_str());
    f.varint(23, ev.usage.cache_write_tokens);
    // `optional`: present even when 0 (free is not unpriced).
    if let Some(c) = ev.cost_nano {
        f.present_varint(24, c);
    }
    if let Some(t) = &ev.team {
        f.str(25, t);
    }
}

/// What a message's fields go to: their encoded length, or the buffer. One field list
/// serves both, so the length prefix cannot disagree with what is written.
trait Fields {
    fn bytes(&mut self, tag: u32, v: &[u8]);
    fn str(&mut self, tag: u32, v: &str) {
        self.bytes(tag, v.as_bytes());
    }
    /// int64, uint32, uint64 and bool are all a varint of the value as u64.
    fn varint(&mut self, tag: u32, v: u64);
    /// An `optional` field that is set: written even when 0.
    fn present_varint(&mut self, tag: u32, v: u64);
}

struct Len(usize);

impl Fields for Len {
    fn bytes(&mut self, tag: u32, v: &[u8]) {
        if !v.is_empty() {
            self.0 += key_len(tag) + encoded_len_varint(v.len() as u64) + v.len();
        }
    }
    fn varint(&mut self, tag: u32, v: u64) {
        if v != 0 {
            self.present_varint(tag, v);
        }
    }
    fn present_varint(&mut self, tag: u32, v: u64) {
        self.0 += key_len(tag) + encoded_len_varint(v);
    }
}

/// Fields written into a slice made large enough beforehand ([`usage_bound`]).
struct Out<'a> {
    b: &'a mut [u8],
    n: usize,
}

impl Out<'_> {
    #[inline]
    fn byte(&mut self, x: u8) {
        self.b[self.n] = x;
        self.n += 1;
    }
    /// prost's varint: seven bits a byte, low first, the high bit set on all but the last.
    #[inline]
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.byte(v as u8 | 0x80);
            v >>= 7;
        }
        self.byte(v as u8);
    }
    #[inline]
    fn key(&mut self, tag: u32, wire_type: WireType) {
        self.varint(u64::from(tag << 3 | wire_type as u32));
    }
}

impl Fields for Out<'_> {
    fn bytes(&mut self, tag: u32, v: &[u8]) {
        if !v.is_empty() {
            self.key(tag, WireType::LengthDelimited);
            self.varint(v.len() as u64);
            self.b[self.n..self.n + v.len()].copy_from_slice(v);
            self.n += v.len();
        }
    }
    #[inline]
    fn varint(&mut self, tag: u32, v: u64) {
        if v != 0 {
            self.present_varint(tag, v);
        }
    }
    #[inline]
    fn present_varint(&mut self, tag: u32, v: u64) {
        self.key(tag, WireType::Varint);
        Out::varint(self, v);
    }
}

/// A string field of the batch's header, left out when empty (as proto3 and prost do).
fn put_str(buf: &mut BytesMut, tag: u32, v: &str) {
    if !v.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(v.len() as u64, buf);
        buf.extend_from_slice(v.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use prost::Message;

    use super::*;
    use crate::account::{Outcome, Usage};

    /// The record the generated type would carry for `ev` (what the reporter built
    /// before batches were written directly).
    fn record(ev: &UsageEvent, id: &str) -> pb::UsageRecord {
        pb::UsageRecord {
            team: ev.team.as_deref().unwrap_or_default().to_string(),
            id: id.to_string(),
            ts_ms: ev.ts_ms,
            request_id: ev.request_id.clone(),
            worker_id: String::new(),
            key_id: ev.key_id.to_string(),
            key_name: ev.key_name.to_string(),
            model: ev.model.to_string(),
            backend: ev.backend.to_string(),
            provider: ev.provider.to_string(),
            credential: ev.credential.to_string(),
            endpoint: ev.endpoint.clone(),
            status: u32::from(ev.status),
            stream: ev.stream,
            retries: ev.retries,
            latency_us: ev.latency_us,
            ttfb_us: ev.ttfb_us,
            prompt_tokens: ev.usage.prompt_tokens,
            completion_tokens: ev.usage.completion_tokens,
            total_tokens: ev.usage.total_tokens,
            cached_tokens: ev.usage.cached_tokens,
            reasoning_tokens: ev.usage.reasoning_tokens,
            outcome: ev.outcome.as_str().to_string(),
            cache_write_tokens: ev.usage.cache_write_tokens,
            cost_nano: ev.cost_nano,
        }
    }

    const OUTCOMES: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::ClientError,
        Outcome::UpstreamError,
        Outcome::ClientAborted,
        Outcome::StreamError,
        Outcome::NoBackend,
        Outcome::Rejected,
    ];

    /// Strings from empty to longer than 127 bytes (a two-byte length), not only ASCII.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), ".{0,12}", "[a-z0-9é-]{100,300}"]
    }

    /// Numbers at 0 (left out), small, and at the top of their range.
    fn num() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0u64), 1u64..300, any::<u64>(), Just(u64::MAX)]
    }

    prop_compose! {
        fn event()(
            ts_ms in prop_oneof![Just(0i64), any::<i64>()],
            strs in proptest::collection::vec(text(), 8),
            status in any::<u16>(),
            stream in any::<bool>(),
            retries in prop_oneof![Just(0u32), any::<u32>()],
            nums in proptest::collection::vec(num(), 8),
            cost in prop_oneof![Just(None), Just(Some(0u64)), num().prop_map(Some)],
            outcome in 0..OUTCOMES.len(),
        ) -> UsageEvent {
            let a = |i: usize| -> Arc<str> { strs[i].as_str().into() };
            UsageEvent {
                ts_ms,
                request_id: strs[0].clone(),
                key_id: a(1),
                key_name: a(2),
                team: (!strs[3].is_empty()).then(|| a(3)),
                model: a(3),
                backend: a(4),
                provider: a(5),
                credential: a(6),
                endpoint: strs[7].clone(),
                status,
                stream,
                retries,
                latency_us: nums[0],
                ttfb_us: nums[1],
                usage: Usage {
                    prompt_tokens: nums[2],
                    completion_tokens: nums[3],
                    total_tokens: nums[4],
                    cached_tokens: nums[5],
                    reasoning_tokens: nums[6],
                    cache_write_tokens: nums[7],
                },
                cost_nano: cost,
                outcome: OUTCOMES[outcome],
            }
        }
    }

    fn health(i: usize) -> pb::HealthEvent {
        pb::HealthEvent {
            id: format!("h{i}"),
            ts_ms: 1_700_000_000_000 + i as i64,
            kind: "backend".into(),
            model: "m".into(),
            backend: format!("b{i}"),
            healthy: i.is_multiple_of(2),
            reason: "3 consecutive failures".into(),
            ..Default::default()
        }
    }

    proptest! {
        #[test]
        fn batch_bytes_are_prosts(
            worker in text(),
            evs in proptest::collection::vec(event(), 0..6),
            n_health in 0usize..3,
            journaled in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let ids: Vec<String> = (0..evs.len()).map(|i| format!("rec-{i}")).collect();
            let health: Vec<_> = (0..n_health).map(health).collect();
            let mut open = OpenBatch::new(&worker);
            let batch_id = open.id.clone();
            for (i, (ev, id)) in evs.iter().zip(&ids).enumerate() {
                // Written directly, or encoded on the request path and read back from the
                // journal: the same bytes.
                if journaled[i] {
                    let mut rec = BytesMut::new();
                    encode_record(ev, id.as_bytes(), &mut rec);
                    prop_assert_eq!(&rec[..], &record(ev, id).encode_to_vec()[..]);
                    open.push_encoded(&rec);
                } else {
                    open.push_usage(ev, id);
                }
            }
            prop_assert_eq!(open.usage, evs.len());
            let ours = open.finish(&health);
            let want = pb::ReportRequest {
                worker_id: worker.clone(),
                batch_id,
                usage: evs.iter().zip(&ids).map(|(ev, id)| record(ev, id)).collect(),
                health,
            };
            prop_assert_eq!(&ours[..], &want.encode_to_vec()[..]);
            prop_assert_eq!(pb::ReportRequest::decode(ours).unwrap(), want);
        }
    }
}
