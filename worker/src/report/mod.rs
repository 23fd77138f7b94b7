//! Reporting usage and health to control (`WorkerApi.Report`).
//!
//! The hot path only calls [`ReportSink::record`]. With a state dir it encodes the
//! record (with its uuid-v7 id) and appends it to the usage journal ([`crate::journal`],
//! memory-mapped segment files a SIGKILL does not lose); when the journal has no room or
//! could not be opened, and without a state dir, the record is pushed onto a bounded
//! queue instead (`switchyard_usage_journal_fallback_total` counts the first case): when
//! that is full the record is counted as dropped (`switchyard_reports_dropped_total`
//! plus a rate-limited warning) and the request goes on. One owned background task
//! ([`run`]) reads the journal and the queue into batches (every second or 500 records)
//! with a batch id, and sends them; it writes the offset control acknowledged into each
//! segment's header and deletes a segment once all its records are acknowledged or
//! spooled. At start, what an earlier run left in the journal (past the acknowledged
//! offsets) becomes spool files, replayed like any: control dedupes by record id. A batch is written in its wire form as
//! the records are drained ([`encode`]), and kept that way. It stays in memory until
//! control acknowledges it (control commits before it answers, and ids make a resent
//! batch harmless). While control is unreachable for a while, or too much is buffered,
//! batches go to `<state-dir>/spool/<batch-id>.pb`; spool files are replayed (oldest
//! first) and deleted only once acknowledged. On shutdown the task drains the queue,
//! tries to send everything within the drain budget, and spools the rest.
//!
//! Health: the task samples every backend's and credential's state a few times a
//! second and reports each flip as a `HealthEvent` (passive breakers, probes and 429
//! cooldowns all end up in that state, so no flip is missed and the request path does
//! nothing extra). Right after start it reports the full state of every target, so a
//! stale "unhealthy" from a previous run of the same worker id is overwritten.
use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes};
use prometheus_client::metrics::counter::Counter;
use prost::Message;
use switchyard_proto as pb;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    account::{UsageEvent, UsageSink},
    journal::{self, Journal, Next, Tail},
    Secret, Shared,
};

mod encode;
use encode::OpenBatch;

/// Knobs of the reporter; `Default` gives the documented values.
#[derive(Debug, Clone)]
pub struct ReportConfig {
    pub control_url: String,
    pub worker_token: Option<Secret>,
    /// TLS to control (`https://` URLs).
    pub tls: switchyard_proto::channel::ClientTls,
    pub worker_id: String,
    /// `<state_dir>/spool` holds unsent batches; `None` keeps them in memory only.
    pub state_dir: Option<PathBuf>,
    pub flush_every: Duration,
    pub batch_max: usize,
    /// Capacity of the hot-path queue.
    pub queue: usize,
    /// Records kept in memory (unsent) before batches go to the spool (or, without a
    /// state dir, the oldest are dropped).
    pub max_in_memory: usize,
    /// Failing this long moves unsent batches to the spool.
    pub spool_after: Duration,
    /// How often health states are sampled.
    pub health_every: Duration,
    /// Longest time spent flushing at shutdown before spooling the rest.
    pub shutdown_budget: Duration,
}

impl ReportConfig {
    pub fn new(control_url: String, worker_id: String) -> Self {
        Self {
            control_url,
            worker_token: None,
            tls: Default::default(),
            worker_id,
            state_dir: None,
            flush_every: Duration::from_secs(1),
            batch_max: 500,
            queue: 65_536,
            max_in_memory: 100_000,
            spool_after: Duration::from_secs(10),
            health_every: Duration::from_millis(200),
            shutdown_budget: Duration::from_secs(10),
        }
    }
}

/// The hot-path end: never blocks, counts what it has to drop. A vector behind a lock that
/// the reporter swaps out every 50 ms: a push is a lock and a move, where a channel paid a
/// semaphore, a block list and atomics per record.
#[derive(Debug)]
pub struct ReportSink {
    queue: Arc<Queue>,
    /// Where records go first (with a state dir).
    journal: Option<Arc<Journal>>,
    /// A journal was asked for: a record that falls back to the queue is counted.
    journaling: bool,
    fallback: Counter,
    dropped: Counter,
    last_warn_s: AtomicU64,
    start: Instant,
}

#[derive(Debug)]
struct Queue {
    events: parking_lot::Mutex<Vec<UsageEvent>>,
    capacity: usize,
    /// Wakes the reporter when it sleeps for want of work: the first record queued after
    /// a drain, and (through `Shared`) health flips and new snapshots.
    activity: Arc<tokio::sync::Notify>,
}

/// The reporter's end of the queue.
#[derive(Debug)]
pub struct ReportQueue {
    queue: Arc<Queue>,
    spare: Vec<UsageEvent>,
    /// The journal's reading end (with a state dir).
    tail: Option<Tail>,
}

impl ReportQueue {
    /// What wakes the reporter from its quiet sleep; `Shared` pokes it on health flips
    /// and snapshot swaps.
    pub fn activity(&self) -> Arc<tokio::sync::Notify> {
        self.queue.activity.clone()
    }

    /// Everything queued so far, oldest first (the returned vector is reused by the next
    /// call: hand it back through `recycle`).
    pub fn drain(&mut self) -> Vec<UsageEvent> {
        let mut out = std::mem::take(&mut self.spare);
        std::mem::swap(&mut *self.queue.events.lock(), &mut out);
        out
    }

    /// Give a drained (and emptied) vector back, so that its capacity is reused.
    pub fn recycle(&mut self, mut v: Vec<UsageEvent>) {
        // A burst's capacity is not kept for good.
        const KEEP: usize = 4096;
        v.clear();
        if v.capacity() > KEEP {
            v = Vec::with_capacity(KEEP);
        }
        self.spare = v;
    }
}

impl ReportSink {
    pub fn new(capacity: usize, dropped: Counter) -> (Arc<Self>, ReportQueue) {
        let queue = Arc::new(Queue {
            events: parking_lot::Mutex::new(Vec::new()),
            capacity: capacity.max(1),
            activity: Arc::new(tokio::sync::Notify::new()),
        });
        (
            Arc::new(Self {
                queue: queue.clone(),
                journal: None,
                journaling: false,
                fallback: Counter::default(),
                dropped,
                last_warn_s: AtomicU64::new(0),
                start: Instant::now(),
            }),
            ReportQueue {
                queue,
                spare: Vec::new(),
                tail: None,
            },
        )
    }

    /// A sink that journals every record under `<state_dir>/journal/` first, after
    /// turning what an earlier run left there into spool files. A journal that cannot be
    /// opened leaves the queue alone (warned, each record counted in `fallback`).
    pub fn journaled(
        cfg: &ReportConfig,
        state_dir: &Path,
        dropped: Counter,
        fallback: Counter,
    ) -> (Arc<Self>, ReportQueue) {
        let (sink, mut rx) = Self::new(cfg.queue, dropped);
        let dir = state_dir.join("journal");
        let opened = recover_journal(&dir, &state_dir.join("spool"), cfg)
            .and_then(|first| Journal::open(&dir, first, rx.activity()));
        let journal = match opened {
            Ok((journal, tail)) => {
                rx.tail = Some(tail);
                Some(journal)
            }
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot open the usage journal; usage records are kept in memory only until reported");
                None
            }
        };
        let sink = Arc::new(Self {
            queue: sink.queue.clone(),
            journal,
            journaling: true,
            fallback,
            dropped: sink.dropped.clone(),
            last_warn_s: AtomicU64::new(0),
            start: sink.start,
        });
        (sink, rx)
    }
}

/// What an earlier run left in the journal `dir`, past each segment's acknowledged
/// offset, written as spool batches (fsynced) before the segment files are deleted.
/// Returns the number for the next segment.
fn recover_journal(dir: &Path, spool: &Path, cfg: &ReportConfig) -> std::io::Result<u64> {
    let (left, next) = journal::recover(dir)?;
    let mut records = 0;
    for seg in left {
        for chunk in seg.records.chunks(cfg.batch_max.max(1)) {
            let mut open = OpenBatch::new(&cfg.worker_id);
            for r in chunk {
                open.push_encoded(r);
            }
            let id = open.id.clone();
            write_spool(spool, &id, &open.finish(&[]))?;
        }
        records += seg.records.len();
        std::fs::remove_file(&seg.path)?;
    }
    if records > 0 {
        info!(
            records,
            "usage journal: records of an earlier run not known to be acknowledged; replaying them"
        );
    }
    Ok(next)
}

thread_local! {
    /// The record being journaled (one per thread, reused).
    static ENCODED: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::with_capacity(512));
}

impl UsageSink for ReportSink {
    fn record(&self, ev: UsageEvent) {
        if let Some(j) = &self.journal {
            let kept = ENCODED.with_borrow_mut(|buf| {
                buf.clear();
                let mut id = [0u8; 36];
                // The record's id is of its time (one clock read less per request).
                let id = crate::hyphenated_bytes(&crate::fast_uuid_v7_at(ev.ts_ms), &mut id);
                encode::encode_record(&ev, id, buf);
                j.append(buf)
            });
            if kept {
                return;
            }
        }
        if self.journaling {
            self.fallback.inc();
        }
        let (full, first) = {
            let mut q = self.queue.events.lock();
            if q.len() < self.queue.capacity {
                let first = q.is_empty();
                q.push(ev);
                (false, first)
            } else {
                (true, false)
            }
        };
        if first {
            // An atomic store when the reporter is awake; a task wake when it is asleep.
            self.queue.activity.notify_one();
        }
        if full {
            self.dropped.inc();
            // At most one warning per 10 s.
            let now = self.start.elapsed().as_secs() + 10;
            let last = self.last_warn_s.load(Ordering::Relaxed);
            if now >= last + 10
                && self
                    .last_warn_s
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                warn!(
                    dropped_total = self.dropped.get(),
                    "usage report queue full; dropping records"
                );
            }
        }
    }
}

/// A formed batch: in memory, or only on disk (then `req` is loaded when sent).
#[derive(Debug)]
struct Batch {
    id: String,
    /// The encoded `ReportRequest` ([`encode`]): a send copies it into the RPC's frame,
    /// a retry or a spool write never encodes it again.
    req: Option<Bytes>,
    spool: Option<PathBuf>,
    records: usize,
    /// The journal segment its journaled records came from, and where they end.
    mark: Option<(u64, usize)>,
}

/// `WorkerApi/Report`, as the generated client calls it (a test checks it against the
/// generated server's route).
static REPORT_PATH: http::uri::PathAndQuery =
    http::uri::PathAndQuery::from_static("/switchyard.v1.WorkerApi/Report");

/// The generated client's codec, except that the request is already encoded.
#[derive(Clone, Copy, Default)]
struct EncodedReportCodec;

struct EncodedReportEncoder;

impl tonic::codec::Encoder for EncodedReportEncoder {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Self::Item, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Self::Error> {
        // EncodeBuf grows as needed.
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Codec for EncodedReportCodec {
    type Encode = Bytes;
    type Decode = pb::ReportResponse;
    type Encoder = EncodedReportEncoder;
    type Decoder = tonic_prost::ProstDecoder<pb::ReportResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedReportEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic::codec::Codec::decoder(&mut tonic_prost::ProstCodec::<
            pb::ReportRequest,
            pb::ReportResponse,
        >::default())
    }
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Rpc(String),
    #[error("spool file {0}: {1}")]
    Spool(PathBuf, std::io::Error),
}

/// Identity of a health target (same fields as the event).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TargetKey {
    kind: &'static str,
    model: String,
    backend: String,
    provider: String,
    credential: String,
}

struct State {
    cfg: ReportConfig,
    client: Option<tonic::client::Grpc<tonic::transport::Channel>>,
    /// The batch the drained usage records are written into (closed at `batch_max`
    /// records or when the flush is due).
    open: Option<OpenBatch>,
    pending_health: Vec<pb::HealthEvent>,
    batches: VecDeque<Batch>,
    in_memory: usize,
    failing_since: Option<Instant>,
    next_attempt: Instant,
    backoff: Duration,
    last_flush: Instant,
    health: HashMap<TargetKey, bool>,
    health_seeded: bool,
    dropped: Counter,
    /// The journal's reading end, and the segment (and end) of the open batch's journaled
    /// records.
    tail: Option<Tail>,
    open_mark: Option<(u64, usize)>,
    scratch: Vec<u8>,
}

impl State {
    fn spool_dir(&self) -> Option<PathBuf> {
        self.cfg.state_dir.as_ref().map(|d| d.join("spool"))
    }

    /// Write `ev` into the open batch (opening one if needed), with a new record id;
    /// a batch that reaches `batch_max` records is closed.
    fn push_usage(&mut self, ev: &UsageEvent) {
        let open = self
            .open
            .get_or_insert_with(|| OpenBatch::new(&self.cfg.worker_id));
        let mut id = [0u8; 36];
        open.push_usage(ev, crate::hyphenated(&crate::fast_uuid_v7(), &mut id));
        if open.usage >= self.cfg.batch_max {
            self.close_batch();
        }
    }

    /// Queue the open batch for sending, with the pending health events (a batch of
    /// health events alone when no usage is open). Nothing to send: nothing happens.
    fn close_batch(&mut self) {
        let open = match self.open.take() {
            Some(o) => o,
            None if !self.pending_health.is_empty() => OpenBatch::new(&self.cfg.worker_id),
            None => return,
        };
        let health = std::mem::take(&mut self.pending_health);
        let records = open.usage + health.len();
        self.in_memory += records;
        self.batches.push_back(Batch {
            id: open.id.clone(),
            req: Some(open.finish(&health)),
            spool: None,
            records,
            mark: self.open_mark.take(),
        });
    }

    /// Read the journal's committed records into batches (one segment's records per
    /// batch); prepare the next segment. Whether any record was read.
    fn drain_journal(&mut self) -> bool {
        let Some(mut tail) = self.tail.take() else {
            return false;
        };
        let mut any = false;
        loop {
            match tail.next(&mut self.scratch) {
                Next::Record { seq, end } => {
                    any = true;
                    if self.open_mark.is_none_or(|(s, _)| s != seq) {
                        if self.open_mark.is_some() {
                            self.close_batch();
                        }
                        tail.hold(seq);
                    }
                    self.open_mark = Some((seq, end));
                    let open = self
                        .open
                        .get_or_insert_with(|| OpenBatch::new(&self.cfg.worker_id));
                    open.push_encoded(&self.scratch);
                    if open.usage >= self.cfg.batch_max {
                        self.close_batch();
                    }
                }
                Next::SegmentDone(seq) => {
                    if self.open_mark.is_some_and(|(s, _)| s == seq) {
                        self.close_batch();
                    }
                }
                Next::Idle => break,
            }
        }
        tail.maintain();
        self.tail = Some(tail);
        any
    }

    /// Keep at most `max_in_memory` unsent records in memory: spool the newest
    /// in-memory batches (the oldest go out first anyway), or drop the oldest when
    /// there is no spool.
    fn enforce_memory_bound(&mut self) {
        let spool_all = self
            .failing_since
            .is_some_and(|t| t.elapsed() >= self.cfg.spool_after);
        if self.in_memory <= self.cfg.max_in_memory && !spool_all {
            return;
        }
        match self.spool_dir() {
            Some(dir) => {
                for b in self.batches.iter_mut().rev() {
                    if self.in_memory <= self.cfg.max_in_memory && !spool_all {
                        break;
                    }
                    if let Some(req) = b.req.take() {
                        match write_spool(&dir, &b.id, &req) {
                            Ok(p) => {
                                debug!(batch = %b.id, records = b.records, "batch spooled");
                                b.spool = Some(p);
                                self.in_memory -= b.records;
                                if let (Some((seq, _)), Some(t)) = (b.mark.take(), self.tail.as_mut()) {
                                    t.released(seq);
                                }
                            }
                            Err(e) => {
                                warn!(error = %e, "cannot spool report batch; keeping it in memory");
                                b.req = Some(req);
                                break;
                            }
                        }
                    }
                }
            }
            None => {
                while self.in_memory > self.cfg.max_in_memory {
                    let Some(pos) = self.batches.iter().position(|b| b.req.is_some()) else {
                        break;
                    };
                    if let Some(b) = self.batches.remove(pos) {
                        self.in_memory -= b.records;
                        if let (Some((seq, _)), Some(t)) = (b.mark, self.tail.as_mut()) {
                            t.released(seq);
                        }
                        self.dropped.inc_by(b.records as u64);
                        warn!(
                            records = b.records,
                            "report buffer full and no state dir; dropped the oldest batch"
                        );
                    }
                }
            }
        }
    }

    fn client(&mut self) -> Result<tonic::client::Grpc<tonic::transport::Channel>, SendError> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let ep = switchyard_proto::channel::endpoint(&self.cfg.control_url, &self.cfg.tls)
            .map_err(|e| SendError::Rpc(e.to_string()))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        let c = tonic::client::Grpc::new(ep.connect_lazy())
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
        self.client = Some(c.clone());
        Ok(c)
    }

    /// Send the oldest batch. On success it is forgotten (and its spool file deleted).
    async fn send_front(&mut self) -> Result<(), SendError> {
        let Some(b) = self.batches.front() else {
            return Ok(());
        };
        let req = match (&b.req, &b.spool) {
            (Some(r), _) => r.clone(),
            (None, Some(p)) => {
                let bytes = tokio::fs::read(p)
                    .await
                    .map_err(|e| SendError::Spool(p.clone(), e))?;
                // Decoded only to check it (replays are rare): control would refuse a
                // torn batch forever.
                match pb::ReportRequest::decode(bytes.as_slice()) {
                    Ok(_) => Bytes::from(bytes),
                    Err(e) => {
                        // A torn file (crash while writing is excluded by rename, but be safe).
                        warn!(path = %p.display(), error = %e, "unreadable spool file; moving it aside");
                        let _ = tokio::fs::rename(p, p.with_extension("bad")).await;
                        self.batches.pop_front();
                        return Ok(());
                    }
                }
            }
            (None, None) => {
                self.batches.pop_front();
                return Ok(());
            }
        };
        let mut client = self.client()?;
        let mut r = tonic::Request::new(req);
        if let Some(t) = &self.cfg.worker_token {
            if let Ok(v) = format!("Bearer {}", t.expose()).parse() {
                r.metadata_mut().insert("authorization", v);
            }
        }
        let rpc = |s: tonic::Status| SendError::Rpc(format!("{}: {}", s.code(), s.message()));
        client.ready().await.map_err(|e| SendError::Rpc(e.to_string()))?;
        let resp = client
            .unary(r, REPORT_PATH.clone(), EncodedReportCodec)
            .await
            .map_err(rpc)?
            .into_inner();
        if let Some(b) = self.batches.pop_front() {
            if b.req.is_some() {
                self.in_memory -= b.records;
            }
            if let (Some((seq, end)), Some(t)) = (b.mark, self.tail.as_mut()) {
                t.acked(seq, end);
            }
            if let Some(p) = &b.spool {
                if let Err(e) = tokio::fs::remove_file(p).await {
                    warn!(path = %p.display(), error = %e, "cannot delete acknowledged spool file");
                }
            }
            debug!(batch = %b.id, stored = resp.usage_stored, duplicates = resp.usage_duplicates, "report acknowledged");
        }
        Ok(())
    }

    fn on_failure(&mut self, e: &SendError) {
        let first = self.failing_since.is_none();
        self.failing_since.get_or_insert_with(Instant::now);
        if first {
            warn!(control = %self.cfg.control_url, error = %e, queued = self.batches.len(), "cannot report to control; keeping records and retrying");
        }
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
        self.enforce_memory_bound();
    }

    fn on_success(&mut self) {
        if self.failing_since.take().is_some() {
            info!(control = %self.cfg.control_url, "reporting to control again");
        }
        self.backoff = Duration::from_millis(100);
    }

    /// Send as many batches as possible now; stops at the first failure.
    async fn send_all(&mut self) {
        while !self.batches.is_empty() && Instant::now() >= self.next_attempt {
            match self.send_front().await {
                Ok(()) => self.on_success(),
                Err(e) => {
                    self.on_failure(&e);
                    return;
                }
            }
        }
    }

    /// Compare every target's state with the last reported one and queue the flips.
    /// Returns whether some target is unhealthy or cooling down: it can recover with
    /// time alone, so sampling must go on.
    fn sample_health(&mut self, shared: &Shared) -> bool {
        let Some(routing) = shared.routing.load_full() else {
            return true;
        };
        let now = shared.clock.now_ms();
        let ts = crate::unix_ms();
        let seeded = self.health_seeded;
        let mut seen = Vec::new();
        let mut visit = |key: TargetKey, state: &crate::balance::EndpointState| {
            let v = state.snapshot(now);
            let cooling = v.cooldown_until_ms.is_some();
            let healthy = v.healthy && !cooling;
            seen.push((key, healthy, v, cooling));
        };
        for m in routing.models.values() {
            for r in m.routes.iter().flatten() {
                for b in r.native_backends() {
                    visit(
                        TargetKey {
                            kind: "backend",
                            model: m.name.to_string(),
                            backend: b.name.to_string(),
                            provider: routing.providers[b.provider].name.to_string(),
                            credential: String::new(),
                        },
                        &b.state,
                    );
                }
            }
        }
        for p in &routing.providers {
            for c in &p.credentials {
                visit(
                    TargetKey {
                        kind: "credential",
                        model: String::new(),
                        backend: String::new(),
                        provider: p.name.to_string(),
                        credential: c.name.to_string(),
                    },
                    &c.state,
                );
            }
        }
        let unsettled = seen.iter().any(|(_, healthy, _, _)| !healthy);
        for (key, healthy, view, cooling) in seen {
            let prev = self.health.insert(key.clone(), healthy);
            let reason = match prev {
                Some(p) if p == healthy => continue,
                // A target we never reported: full state at start, later only when sick
                // (no event means healthy to control).
                None if seeded && healthy => continue,
                None if !seeded => {
                    if healthy {
                        "initial state: healthy".to_string()
                    } else {
                        format!("initial state: {}", unhealthy_reason(&view, cooling))
                    }
                }
                _ if healthy => "recovered".to_string(),
                _ => unhealthy_reason(&view, cooling),
            };
            info!(kind = key.kind, model = %key.model, backend = %key.backend, provider = %key.provider, credential = %key.credential, healthy, reason = %reason, "reporting health change");
            self.pending_health.push(pb::HealthEvent {
                id: uuid::Uuid::now_v7().to_string(),
                ts_ms: ts,
                worker_id: self.cfg.worker_id.clone(),
                kind: key.kind.to_string(),
                model: key.model,
                backend: key.backend,
                provider: key.provider,
                credential: key.credential,
                healthy,
                reason,
            });
        }
        self.health_seeded = true;
        unsettled
    }

    /// Nothing to send, nothing that can change without an event: the reporter may sleep
    /// until `activity` wakes it, with no timer.
    fn quiet(&self, unsettled: bool, last_activity: Instant) -> bool {
        self.health_seeded
            && !unsettled
            && self.open.is_none()
            && self.pending_health.is_empty()
            && self.batches.is_empty()
            && last_activity.elapsed() >= QUIET_AFTER
    }
}

fn unhealthy_reason(v: &crate::balance::HealthView, cooling: bool) -> String {
    if cooling && v.healthy {
        return "429 cooldown".to_string();
    }
    match &v.last_error {
        Some(e) if v.consecutive_failures > 1 && !e.starts_with("probe") => {
            format!("{} consecutive failures: {e}", v.consecutive_failures)
        }
        Some(e) => e.clone(),
        None => "unhealthy".to_string(),
    }
}

/// Write a batch atomically (temp file, fsync, rename) as `<dir>/<batch-id>.pb`.
fn write_spool(dir: &Path, id: &str, req: &[u8]) -> std::io::Result<PathBuf> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{id}.pb"));
    let tmp = dir.join(format!(".{id}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(req)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Spool files left by an earlier run, oldest first (uuid v7 names sort by time).
fn load_spool(dir: &Path) -> Vec<Batch> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pb"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| Batch {
            id: p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            req: None,
            spool: Some(p),
            records: 0,
            mark: None,
        })
        .collect()
}

/// How often the reporter takes what the request path queued.
const DRAIN_EVERY: Duration = Duration::from_millis(50);
/// With no usage and no flip for this long, nothing to send and every target healthy,
/// the reporter stops its timers until `activity` wakes it: an idle worker stays asleep
/// (it woke ~36 times a second for nothing).
const QUIET_AFTER: Duration = Duration::from_secs(2);

/// The reporter task: runs until `cancel`, then flushes (bounded) and spools the rest.
pub async fn run(
    shared: Arc<Shared>,
    cfg: ReportConfig,
    mut rx: ReportQueue,
    dropped: Counter,
    cancel: CancellationToken,
) {
    let mut st = State {
        client: None,
        open: None,
        pending_health: Vec::new(),
        batches: VecDeque::new(),
        in_memory: 0,
        failing_since: None,
        next_attempt: Instant::now(),
        backoff: Duration::from_millis(100),
        last_flush: Instant::now(),
        health: HashMap::new(),
        health_seeded: false,
        dropped,
        tail: rx.tail.take(),
        open_mark: None,
        scratch: Vec::new(),
        cfg,
    };
    if let Some(dir) = st.spool_dir() {
        let old = load_spool(&dir);
        if !old.is_empty() {
            info!(files = old.len(), "replaying spooled usage batches");
        }
        st.batches.extend(old);
    }
    let mut tick = tokio::time::interval(st.cfg.health_every.min(st.cfg.flush_every));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The queue is drained on a timer, not on every record: waking this task for each
    // finished request cost the request path a task switch each time.
    let mut drain = tokio::time::interval(DRAIN_EVERY.min(st.cfg.flush_every));
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let activity = rx.activity();
    let mut last_activity = Instant::now();
    let mut unsettled = true;
    loop {
        // With a journal, the next record wakes it only once it knows the reporter
        // sleeps (records reserved before that are read first).
        if st.quiet(unsettled, last_activity) && st.tail.as_ref().is_none_or(Tail::may_sleep) {
            shared.metrics.reporter_idle.set(1);
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = activity.notified() => last_activity = Instant::now(),
            }
            if let Some(t) = &st.tail {
                t.awake();
            }
            shared.metrics.reporter_idle.set(0);
            // Both intervals missed their ticks while asleep: they fire at once (drain
            // what woke us, sample a flip), then keep their periods from now.
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = drain.tick() => {
                let mut evs = rx.drain();
                if !evs.is_empty() {
                    last_activity = Instant::now();
                }
                for ev in evs.drain(..) {
                    st.push_usage(&ev);
                }
                rx.recycle(evs);
                if st.drain_journal() {
                    last_activity = Instant::now();
                }
            },
            _ = tick.tick() => {
                unsettled = st.sample_health(&shared);
            }
        }
        let due = st.last_flush.elapsed() >= st.cfg.flush_every;
        if due || !st.pending_health.is_empty() {
            st.close_batch();
            if due {
                st.last_flush = Instant::now();
            }
        }
        st.enforce_memory_bound();
        // Sending happens inline: the queue in front absorbs the wait, and a send is
        // bounded by the channel timeout.
        // A send in progress is abandoned on shutdown (its batch stays queued).
        tokio::select! {
            _ = st.send_all() => {}
            _ = cancel.cancelled() => {}
        }
        let open = st.open.as_ref().map_or(0, |o| o.usage);
        let pending = open + st.batches.iter().map(|b| b.records).sum::<usize>();
        shared.metrics.reports_pending.set(pending as i64);
    }

    // Shutdown: everything still queued goes out now, or into the spool.
    for ev in rx.drain() {
        st.push_usage(&ev);
    }
    st.drain_journal();
    st.sample_health(&shared);
    st.close_batch();
    st.enforce_memory_bound();
    let deadline = Instant::now() + st.cfg.shutdown_budget;
    st.next_attempt = Instant::now();
    while !st.batches.is_empty() && Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let res = tokio::time::timeout(left.min(Duration::from_secs(3)), st.send_front()).await;
        match res {
            Ok(Ok(())) => st.on_success(),
            Ok(Err(e)) => {
                st.on_failure(&e);
                // With a spool, do not hold up the exit retrying: the next start replays it.
                if st.spool_dir().is_some() {
                    break;
                }
                let wait = st.next_attempt.saturating_duration_since(Instant::now());
                tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
            }
            Err(_) => {
                if st.spool_dir().is_some() {
                    break;
                }
            }
        }
    }
    let unsent: usize = st
        .batches
        .iter()
        .filter(|b| b.req.is_some())
        .map(|b| b.records)
        .sum();
    if unsent == 0 {
        info!("usage reports flushed");
        if let Some(t) = st.tail.take() {
            t.close();
        }
        return;
    }
    match st.spool_dir() {
        Some(dir) => {
            let mut spooled = 0;
            for b in &mut st.batches {
                if let Some(req) = b.req.take() {
                    match write_spool(&dir, &b.id, &req) {
                        Ok(_) => {
                            spooled += b.records;
                            if let (Some((seq, _)), Some(t)) = (b.mark.take(), st.tail.as_mut()) {
                                t.released(seq);
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, records = b.records, "cannot spool report batch at shutdown; records lost")
                        }
                    }
                }
            }
            info!(
                records = spooled,
                "control unreachable at shutdown; usage spooled for the next start"
            );
        }
        None => warn!(
            records = unsent,
            "control unreachable at shutdown and no state dir; usage records lost"
        ),
    }
    if let Some(t) = st.tail.take() {
        t.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_path_is_the_generated_services() {
        assert_eq!(
            REPORT_PATH.as_str(),
            format!("/{}/Report", pb::worker_api_server::SERVICE_NAME)
        );
    }

    #[test]
    fn spool_round_trip_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let a = uuid::Uuid::now_v7().to_string();
        std::thread::sleep(Duration::from_millis(2));
        let b = uuid::Uuid::now_v7().to_string();
        let req = |id: &str| pb::ReportRequest {
            worker_id: "w".into(),
            batch_id: id.into(),
            usage: vec![],
            health: vec![],
        };
        write_spool(dir.path(), &b, &req(&b).encode_to_vec()).unwrap();
        write_spool(dir.path(), &a, &req(&a).encode_to_vec()).unwrap();
        let got = load_spool(dir.path());
        assert_eq!(got.iter().map(|x| x.id.clone()).collect::<Vec<_>>(), vec![a, b]);
    }

    #[test]
    fn full_queue_counts_drops() {
        let c = Counter::default();
        let (sink, _rx) = ReportSink::new(1, c.clone());
        let ev = UsageEvent {
            ts_ms: 1,
            request_id: "r".into(),
            key_id: "".into(),
            key_name: "".into(),
            team: None,
            model: "m".into(),
            backend: "b".into(),
            provider: "p".into(),
            credential: "c".into(),
            endpoint: "/v1/chat/completions".into(),
            status: 200,
            stream: false,
            retries: 0,
            latency_us: 1,
            ttfb_us: 1,
            usage: Default::default(),
            cost_nano: Some(0),
            outcome: crate::account::Outcome::Ok,
        };
        sink.record(ev.clone());
        sink.record(ev.clone());
        sink.record(ev);
        assert_eq!(c.get(), 2);
    }
}
