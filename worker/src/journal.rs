//! The usage journal: every finished request's usage record, written by the request path
//! into memory-mapped segment files (`<state-dir>/journal/<seq>.seg`), so that a worker
//! killed by SIGKILL loses none of them.
//!
//! The segments are `MAP_SHARED` mappings of ordinary files: a store into one is a store
//! into the kernel's page cache, which outlives the process (the kernel writes dirty pages
//! back whether their writer is alive or not). This survives the death of the process,
//! not the loss of the machine: pages not yet written back are lost on power loss, and
//! nothing is fsynced on the request path.
//!
//! A record costs the request path no syscall and no lock: reserve its words with one
//! `fetch_add` on the segment's tail, copy the encoded `UsageRecord` in with plain atomic
//! stores, then publish it by storing its commit word last (`Release`). Layout, all words
//! little-endian `u64`s, 8-byte aligned:
//!
//! ```text
//! segment: [magic "SYJRNL01"][seq][acked word offset][segment bytes][key][0; 3] records...
//! record:  [commit = "SYRE" << 32 | len][check][payload, zero-padded to 8 bytes]
//! ```
//!
//! `check` hashes the segment's random key and seq, the record's offset, its length and
//! its padded payload, so a torn record (killed between reserve and commit: zeros) or a
//! damaged one is skipped on replay, and a record copied to another place does not
//! verify there. The key (drawn when the segment is made, never sent anywhere) keeps a
//! client from planting a record that verifies inside one of its strings (a request id),
//! which a replay resyncing after a torn record could otherwise find. A
//! writer whose reservation crosses the segment's end writes an end mark where it starts
//! (if it starts inside), so the reporter knows no record follows; writers then move to
//! the next segment, which the reporter prepared ahead of time ([`Tail::maintain`]). With
//! no next segment (the reporter is behind, or the disk refused one) `append` returns
//! false and the caller falls back to the in-memory queue.
//!
//! The reporter ([`Tail`]) reads committed records in order, sends them, writes the offset
//! control acknowledged into the segment's header, and deletes a segment once it is
//! finished and every batch made from it is acknowledged (or spooled). On the next start
//! [`recover`] reads what is left, from each segment's acknowledged offset on.
use std::{
    collections::VecDeque,
    fs, io,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, OnceLock,
    },
};

use arc_swap::ArcSwap;
use tracing::warn;

/// Size of one segment file: 4 MiB, about 20 000 records of the benchmark's size.
pub const SEGMENT_BYTES: usize = 4 << 20;
const WORDS: usize = SEGMENT_BYTES / 8;
/// Header words before the first record (64 bytes).
const HEADER_WORDS: usize = 8;
const SEG_MAGIC: u64 = u64::from_le_bytes(*b"SYJRNL01");
const H_MAGIC: usize = 0;
const H_SEQ: usize = 1;
const H_ACKED: usize = 2;
const H_SIZE: usize = 3;
const H_KEY: usize = 4;
/// The high half of a record's commit word.
const REC_TAG: u64 = (u32::from_le_bytes(*b"SYRE") as u64) << 32;
/// Written where a reservation crossed the segment's end: no record follows.
const END: u64 = u64::MAX;
/// Longer records (they are ~200 bytes) go to the in-memory queue.
pub const MAX_RECORD: usize = 16 * 1024;
/// Live segments at most (64 MiB): beyond, the reporter prepares no new one until old
/// ones are retired, and records fall back to the in-memory queue.
const MAX_LIVE: usize = 16;
/// Words per 4 KiB page (pages of a new segment are touched before it is published).
const PAGE_WORDS: usize = 4096 / 8;

/// The record check: one multiply per word, each step a bijection of the running value
/// (so a single damaged word always changes it), then a final mix.
struct Check(u64);

impl Check {
    fn new(key: u64, seq: u64, off: usize, len: usize) -> Self {
        let mut c = Self(0x243f_6a88_85a3_08d3);
        c.word(key);
        c.word(seq);
        c.word((off as u64) << 32 | len as u64);
        c
    }
    #[inline]
    fn word(&mut self, w: u64) {
        self.0 = (self.0.rotate_left(23) ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(self) -> u64 {
        let mut h = self.0;
        h ^= h >> 31;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^ (h >> 29)
    }
}

/// The words a record of `len` bytes takes, header included.
fn record_words(len: usize) -> usize {
    2 + len.div_ceil(8)
}

/// One mapped segment file.
pub struct Segment {
    seq: u64,
    key: u64,
    path: PathBuf,
    /// The mapping as words. Borrowed from `_map` (declared after it, so it is unused by
    /// the time the mapping is dropped); never handed out.
    words: &'static [AtomicU64],
    /// The next free word (in memory only: the file's records say where they end).
    tail: AtomicU64,
    /// The segment writers move to when this one is full, set by the reporter.
    next: OnceLock<Arc<Segment>>,
    _map: memmap2::MmapRaw,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// The mapping's bytes as atomic words.
#[allow(unsafe_code)]
fn as_words(map: &memmap2::MmapRaw) -> &'static [AtomicU64] {
    debug_assert!(map.len().is_multiple_of(8));
    // SAFETY: the mapping is page-aligned and `map.len()` bytes long, readable and
    // writable (`map_raw` of a file opened read-write), and zero-initialised or written
    // only through these atomics. `AtomicU64` has the size and alignment of `u64` and
    // every bit pattern is valid, so any content (another process's) is sound to read.
    // Every access goes through atomics, so concurrent writers race on no plain memory.
    // The slice is private to `Segment`, which owns the mapping and keeps it mapped for
    // as long as the slice is reachable (the `'static` does not escape the struct).
    unsafe { std::slice::from_raw_parts(map.as_mut_ptr().cast::<AtomicU64>(), map.len() / 8) }
}

/// Why `append` did not take a record.
#[derive(Debug, PartialEq, Eq)]
struct Full;

impl Segment {
    /// A new, empty segment file `<dir>/<seq>.seg` of [`SEGMENT_BYTES`], mapped, its pages
    /// touched (so the request path takes no page fault on them) and its header written.
    fn create(dir: &Path, seq: u64) -> io::Result<Arc<Segment>> {
        fs::create_dir_all(dir)?;
        let path = dir.join(format!("{seq:020}.seg"));
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let map = (|| {
            file.set_len(SEGMENT_BYTES as u64)?;
            memmap2::MmapOptions::new().len(SEGMENT_BYTES).map_raw(&file)
        })();
        let map = match map {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        let words = as_words(&map);
        // A write fault per page now rather than on the request path.
        for p in (PAGE_WORDS..WORDS).step_by(PAGE_WORDS) {
            words[p].store(0, Ordering::Relaxed);
        }
        words[H_SEQ].store(seq.to_le(), Ordering::Relaxed);
        words[H_ACKED].store((HEADER_WORDS as u64).to_le(), Ordering::Relaxed);
        words[H_SIZE].store((SEGMENT_BYTES as u64).to_le(), Ordering::Relaxed);
        let key: u64 = rand::random();
        words[H_KEY].store(key.to_le(), Ordering::Relaxed);
        words[H_MAGIC].store(SEG_MAGIC.to_le(), Ordering::Release);
        Ok(Arc::new(Segment {
            seq,
            key,
            path,
            words,
            tail: AtomicU64::new(HEADER_WORDS as u64),
            next: OnceLock::new(),
            _map: map,
        }))
    }

    /// Copy `rec` into the segment and publish it.
    fn append(&self, rec: &[u8]) -> Result<(), Full> {
        let n = record_words(rec.len());
        // SeqCst: the reporter's "anything unread?" before it sleeps reads `tail` after
        // setting `Journal::sleeping`, and this writer reads `sleeping` after this.
        let off = self.tail.fetch_add(n as u64, Ordering::SeqCst) as usize;
        if off + n > WORDS {
            if off < WORDS {
                self.words[off].store(END.to_le(), Ordering::Release);
            }
            return Err(Full);
        }
        let mut check = Check::new(self.key, self.seq, off, rec.len());
        let mut i = off + 2;
        let mut chunks = rec.chunks_exact(8);
        for c in &mut chunks {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            check.word(u64::from_le_bytes(b));
            self.words[i].store(u64::from_ne_bytes(b), Ordering::Relaxed);
            i += 1;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            check.word(u64::from_le_bytes(b));
            self.words[i].store(u64::from_ne_bytes(b), Ordering::Relaxed);
        }
        self.words[off + 1].store(check.finish().to_le(), Ordering::Relaxed);
        self.words[off].store((REC_TAG | rec.len() as u64).to_le(), Ordering::Release);
        Ok(())
    }

    /// What is at word `at`, for the reporter reading in order.
    fn read_at(&self, at: usize, out: &mut Vec<u8>) -> Read {
        if at + 2 > WORDS {
            return Read::End;
        }
        let w0 = u64::from_le(self.words[at].load(Ordering::Acquire));
        if w0 == 0 {
            return Read::Pending;
        }
        let len = (w0 & 0xffff_ffff) as usize;
        if w0 == END
            || w0 & !0xffff_ffff != REC_TAG
            || len == 0
            || len > MAX_RECORD
            || at + record_words(len) > WORDS
        {
            // END, or (never written so by this process) a broken word: nothing after it
            // can be found in order.
            if w0 != END {
                warn!(
                    segment = self.seq,
                    at, "usage journal: unreadable record; segment closed"
                );
            }
            return Read::End;
        }
        let mut check = Check::new(self.key, self.seq, at, len);
        let words = len.div_ceil(8);
        // Whole words into a buffer sized once (a fixed 8-byte copy each), then cut to the
        // record's length: no capacity check per word.
        out.clear();
        out.resize(words * 8, 0);
        for (k, dst) in out.chunks_exact_mut(8).enumerate() {
            let b = self.words[at + 2 + k].load(Ordering::Relaxed).to_ne_bytes();
            check.word(u64::from_le_bytes(b));
            dst.copy_from_slice(&b);
        }
        out.truncate(len);
        let ok = check.finish() == u64::from_le(self.words[at + 1].load(Ordering::Relaxed));
        Read::Record {
            next: at + 2 + words,
            ok,
        }
    }

    fn set_acked(&self, at: usize) {
        self.words[H_ACKED].store((at as u64).to_le(), Ordering::Release);
    }

    /// Some reservation went past `at` (a record, or an end mark, is or will be there).
    fn reserved_past(&self, at: usize) -> bool {
        self.tail.load(Ordering::SeqCst) as usize > at
    }
}

enum Read {
    /// A record (in `out`), and where the next one starts; `ok` is false when its check
    /// does not match (skipped).
    Record { next: usize, ok: bool },
    /// Reserved but not yet committed, or nothing written yet.
    Pending,
    /// No record follows in this segment.
    End,
}

/// The request path's end: where records are appended. Shared with the reporter.
pub struct Journal {
    current: ArcSwap<Segment>,
    /// The reporter sleeps for want of work: the next record pokes `activity`.
    sleeping: AtomicBool,
    activity: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("current", &self.current.load().seq)
            .finish()
    }
}

impl Journal {
    /// A journal in `dir` whose first segment has number `first_seq` (after what
    /// [`recover`] found). Returns the shared writer end and the reporter's end.
    pub fn open(
        dir: &Path,
        first_seq: u64,
        activity: Arc<tokio::sync::Notify>,
    ) -> io::Result<(Arc<Journal>, Tail)> {
        let first = Segment::create(dir, first_seq)?;
        let journal = Arc::new(Journal {
            current: ArcSwap::new(first.clone()),
            sleeping: AtomicBool::new(false),
            activity,
        });
        let mut tail = Tail {
            journal: journal.clone(),
            dir: dir.to_path_buf(),
            live: VecDeque::from([Live::new(first)]),
            next_seq: first_seq + 1,
            create_failed: false,
        };
        tail.maintain();
        Ok((journal, tail))
    }

    /// Journal `rec` (an encoded `UsageRecord`). False when it could not be (too long,
    /// no segment with room): the caller keeps it another way. No syscall, no lock.
    pub fn append(&self, rec: &[u8]) -> bool {
        if rec.is_empty() || rec.len() > MAX_RECORD {
            return false;
        }
        let mut seg = self.current.load();
        loop {
            if seg.append(rec).is_ok() {
                if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
                    self.activity.notify_one();
                }
                return true;
            }
            let Some(next) = seg.next.get() else {
                return false;
            };
            // Whoever gets here first moves everyone on; a loser finds it done.
            let _ = self.current.compare_and_swap(&*seg, next.clone());
            // Once per segment: the reporter finishes the old one and prepares another.
            self.activity.notify_one();
            seg = self.current.load();
        }
    }
}

/// A live segment, as the reporter sees it.
struct Live {
    seg: Arc<Segment>,
    /// The next word to read.
    cursor: usize,
    /// Read to its end.
    finished: bool,
    /// Batches holding records of it that control has not acknowledged (nor a spool file
    /// holds).
    outstanding: usize,
}

impl Live {
    fn new(seg: Arc<Segment>) -> Self {
        Self {
            seg,
            cursor: HEADER_WORDS,
            finished: false,
            outstanding: 0,
        }
    }
}

/// What [`Tail::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// A record (copied into the caller's buffer), from segment `seq`, ending at `end`.
    Record { seq: u64, end: usize },
    /// Segment `seq` has no more records: a batch holding its records may close.
    SegmentDone(u64),
    /// Nothing committed to read now.
    Idle,
}

/// The reporter's end of the journal: reads records in order, tracks which segments
/// may go, prepares the next one.
pub struct Tail {
    journal: Arc<Journal>,
    dir: PathBuf,
    live: VecDeque<Live>,
    next_seq: u64,
    create_failed: bool,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("live", &self.live.len())
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

impl Tail {
    /// The next committed record, copied into `out`.
    pub fn next(&mut self, out: &mut Vec<u8>) -> Next {
        loop {
            let Some(l) = self.live.iter_mut().find(|l| !l.finished) else {
                return Next::Idle;
            };
            match l.seg.read_at(l.cursor, out) {
                Read::Pending => return Next::Idle,
                Read::End => {
                    l.finished = true;
                    return Next::SegmentDone(l.seg.seq);
                }
                Read::Record { next, ok } => {
                    l.cursor = next;
                    if ok {
                        return Next::Record {
                            seq: l.seg.seq,
                            end: next,
                        };
                    }
                    warn!(
                        segment = l.seg.seq,
                        "usage journal: record fails its check; skipped"
                    );
                }
            }
        }
    }

    fn find(&mut self, seq: u64) -> Option<&mut Live> {
        self.live.iter_mut().find(|l| l.seg.seq == seq)
    }

    /// A batch now holds records of segment `seq`.
    pub fn hold(&mut self, seq: u64) {
        if let Some(l) = self.find(seq) {
            l.outstanding += 1;
        }
    }

    /// Control acknowledged a batch holding the records of `seq` before `end`.
    pub fn acked(&mut self, seq: u64, end: usize) {
        if let Some(l) = self.find(seq) {
            l.seg.set_acked(end);
            l.outstanding = l.outstanding.saturating_sub(1);
        }
        self.retire();
    }

    /// A batch holding records of `seq` is safe elsewhere (a spool file).
    pub fn released(&mut self, seq: u64) {
        if let Some(l) = self.find(seq) {
            l.outstanding = l.outstanding.saturating_sub(1);
        }
        self.retire();
    }

    /// Delete the oldest segments that are read to their end and held by no batch.
    fn retire(&mut self) {
        while self
            .live
            .front()
            .is_some_and(|l| l.finished && l.outstanding == 0 && self.live.len() > 1)
        {
            if let Some(l) = self.live.pop_front() {
                if let Err(e) = fs::remove_file(&l.seg.path) {
                    warn!(path = %l.seg.path.display(), error = %e, "cannot delete a retired usage journal segment");
                }
            }
        }
    }

    /// Retire what may go, and make sure writers have a next segment to move to: one
    /// spare, prepared for the segment they are in, no more. (A spare was once made for
    /// the newest segment whatever it was, so each call chained another: a worker soon
    /// held `MAX_LIVE` segments, 64 MiB of touched page cache, in its RSS and on disk.)
    pub fn maintain(&mut self) {
        self.retire();
        let Some(newest) = self.live.back() else {
            return;
        };
        let writing = self.journal.current.load();
        if newest.seg.next.get().is_some()
            || !Arc::ptr_eq(&newest.seg, &*writing)
            || self.live.len() >= MAX_LIVE
        {
            return;
        }
        match Segment::create(&self.dir, self.next_seq) {
            Ok(seg) => {
                self.next_seq += 1;
                self.create_failed = false;
                let _ = newest.seg.next.set(seg.clone());
                self.live.push_back(Live::new(seg));
            }
            Err(e) => {
                // Skip the number: a half-made file may be in the way.
                self.next_seq += 1;
                if !std::mem::replace(&mut self.create_failed, true) {
                    warn!(dir = %self.dir.display(), error = %e, "cannot prepare a usage journal segment; records fall back to memory when the current one is full");
                }
            }
        }
    }

    /// Records are reserved that were not read yet: sleeping now would strand them.
    fn unread(&self) -> bool {
        self.live
            .iter()
            .any(|l| !l.finished && l.seg.reserved_past(l.cursor))
    }

    /// Before the reporter sleeps: true if it may (the next record will wake it).
    pub fn may_sleep(&self) -> bool {
        self.journal.sleeping.store(true, Ordering::SeqCst);
        if self.unread() {
            self.journal.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The reporter woke up.
    pub fn awake(&self) {
        self.journal.sleeping.store(false, Ordering::Relaxed);
    }

    /// At shutdown, once the request path is done: delete every segment whose records
    /// are all read and held by no batch (the rest is replayed by the next start).
    pub fn close(mut self) {
        for l in self.live.drain(..) {
            if l.outstanding == 0 && !l.seg.reserved_past(l.cursor) {
                let _ = fs::remove_file(&l.seg.path);
            }
        }
    }
}

/// A segment file left by an earlier run.
#[derive(Debug)]
pub struct Leftover {
    pub path: PathBuf,
    /// Its records from its acknowledged offset on.
    pub records: Vec<Vec<u8>>,
}

/// The segment files in `dir` (oldest first) with their unacknowledged records, and the
/// number the next segment should have.
pub fn recover(dir: &Path) -> io::Result<(Vec<Leftover>, u64)> {
    let mut paths: Vec<(u64, PathBuf)> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .filter_map(|p| {
                let n = p.file_stem()?.to_str()?.parse::<u64>().ok()?;
                Some((n, p))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    paths.sort();
    let next = paths.last().map_or(1, |(n, _)| n.saturating_add(1));
    let mut out = Vec::new();
    for (_, path) in paths {
        let bytes = fs::read(&path)?;
        let records = parse(&bytes)
            .map(|p| p.records.into_iter().map(<[u8]>::to_vec).collect())
            .unwrap_or_default();
        out.push(Leftover { path, records });
    }
    Ok((out, next))
}

/// A segment file's contents, as [`parse`] reads them.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub seq: u64,
    /// The records after the acknowledged offset that verify, in order.
    pub records: Vec<&'a [u8]>,
}

/// Read a segment file's bytes: `None` if it is not a segment (no header). A torn or
/// damaged record is skipped, and reading resumes at the next word that starts a record
/// whose check verifies.
pub fn parse(bytes: &[u8]) -> Option<Parsed<'_>> {
    let nwords = bytes.len() / 8;
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_le_bytes(b)
    };
    if nwords < HEADER_WORDS || word(H_MAGIC) != SEG_MAGIC {
        return None;
    }
    let seq = word(H_SEQ);
    let key = word(H_KEY);
    let acked = usize::try_from(word(H_ACKED)).unwrap_or(usize::MAX);
    let mut i = acked.clamp(HEADER_WORDS, nwords);
    let mut records = Vec::new();
    while i + 2 <= nwords {
        let w0 = word(i);
        let len = (w0 & 0xffff_ffff) as usize;
        if w0 & !0xffff_ffff == REC_TAG && len > 0 && len <= MAX_RECORD {
            let n = record_words(len);
            if i + n <= nwords {
                let mut check = Check::new(key, seq, i, len);
                for k in 0..n - 2 {
                    check.word(word(i + 2 + k));
                }
                if check.finish() == word(i + 1) {
                    let start = (i + 2) * 8;
                    records.push(&bytes[start..start + len]);
                    i += n;
                    continue;
                }
            }
        }
        // Zeros of a reservation never committed, an end mark, or damage.
        i += 1;
    }
    Some(Parsed { seq, records })
}

/// The bytes of a segment of `words` words holding `recs` in order, as `append` writes
/// them (those that fit): for the property tests and the fuzz target.
#[doc(hidden)]
pub fn segment_image(key: u64, seq: u64, recs: &[Vec<u8>], words: usize) -> Vec<u8> {
    let words = words.max(HEADER_WORDS);
    let mut bytes = vec![0u8; words * 8];
    bytes[..8].copy_from_slice(&SEG_MAGIC.to_le_bytes());
    bytes[8..16].copy_from_slice(&seq.to_le_bytes());
    bytes[16..24].copy_from_slice(&(HEADER_WORDS as u64).to_le_bytes());
    bytes[24..32].copy_from_slice(&((words * 8) as u64).to_le_bytes());
    bytes[32..40].copy_from_slice(&key.to_le_bytes());
    let mut at = HEADER_WORDS;
    for r in recs {
        let n = record_words(r.len());
        if at + n > words {
            break;
        }
        let mut check = Check::new(key, seq, at, r.len());
        let mut padded = r.clone();
        padded.resize(r.len().div_ceil(8) * 8, 0);
        for c in padded.chunks_exact(8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            check.word(u64::from_le_bytes(b));
        }
        bytes[at * 8..at * 8 + 8].copy_from_slice(&(REC_TAG | r.len() as u64).to_le_bytes());
        bytes[at * 8 + 8..at * 8 + 16].copy_from_slice(&check.finish().to_le_bytes());
        bytes[(at + 2) * 8..(at + 2) * 8 + padded.len()].copy_from_slice(&padded);
        at += n;
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(thread: usize, i: usize) -> Vec<u8> {
        // Lengths from 1 to ~300 bytes, contents naming the writer and the record.
        let len = 1 + (thread * 131 + i * 17) % 300;
        let mut v = format!("t{thread}-r{i}-").into_bytes();
        v.resize(len.max(v.len()), b'x');
        v
    }

    fn open(dir: &Path) -> (Arc<Journal>, Tail) {
        Journal::open(dir, 1, Arc::new(tokio::sync::Notify::new())).unwrap()
    }

    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        v.sort();
        v
    }

    /// Many threads append across several segments while the reporter's end reads and
    /// prepares; the reader sees every record exactly once, and so does a replay of the
    /// files with a torn record added at the end.
    #[test]
    fn concurrent_writers_torn_tail_replay_exactly_the_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (j, mut tail) = open(dir.path());
        const THREADS: usize = 4;
        const PER: usize = 12_000; // ~1.8 MB per thread: several segments in all
        let done = AtomicBool::new(false);
        let fallback = Arc::new(AtomicU64::new(0));
        let writers: Vec<_> = (0..THREADS)
            .map(|t| {
                let j = j.clone();
                let fallback = fallback.clone();
                std::thread::spawn(move || {
                    let mut lost = Vec::new();
                    for i in 0..PER {
                        if !j.append(&rec(t, i)) {
                            fallback.fetch_add(1, Ordering::Relaxed);
                            lost.push(rec(t, i));
                        }
                    }
                    lost
                })
            })
            .collect();
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        let mut segs_done = 0;
        // Every segment read from stays held (as by a batch never acknowledged), so none
        // is deleted and the replay below sees them all.
        let mut held = std::collections::HashSet::new();
        loop {
            match tail.next(&mut buf) {
                Next::Record { seq, .. } => {
                    if held.insert(seq) {
                        tail.hold(seq);
                    }
                    seen.push(buf.clone());
                }
                Next::SegmentDone(_) => segs_done += 1,
                Next::Idle => {
                    if done.load(Ordering::Acquire) && !tail.unread() {
                        break;
                    }
                    tail.maintain();
                    std::thread::yield_now();
                }
            }
            if !done.load(Ordering::Relaxed) && writers.iter().all(|w| w.is_finished()) {
                done.store(true, Ordering::Release);
            }
        }
        let mut lost = std::collections::HashSet::new();
        for w in writers {
            lost.extend(w.join().unwrap());
        }
        assert_eq!(lost.len() as u64, fallback.load(Ordering::Relaxed));
        assert!(segs_done >= 1, "the test must cross a segment boundary");
        let mut want: Vec<Vec<u8>> = (0..THREADS)
            .flat_map(|t| (0..PER).map(move |i| rec(t, i)))
            .filter(|r| !lost.contains(r))
            .collect();
        let mut got = seen.clone();
        got.sort();
        want.sort();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the reader saw other records than were committed");

        // A writer killed between reserve and commit: a reservation with half a payload.
        tail.maintain();
        let cur = j.current.load_full();
        let off = cur.tail.fetch_add(40, Ordering::SeqCst) as usize;
        if off + 40 <= WORDS {
            cur.words[off + 2].store(u64::from_ne_bytes(*b"halfdone"), Ordering::Relaxed);
        }
        // ... and one committed record after it.
        assert!(j.append(b"after the torn one"));
        want.push(b"after the torn one".to_vec());
        want.sort();

        // Replay of the files as a new start would read them (nothing acknowledged).
        let (left, next) = recover(dir.path()).unwrap();
        assert!(next > 2);
        let mut replayed: Vec<Vec<u8>> = left.into_iter().flat_map(|l| l.records).collect();
        replayed.sort();
        assert_eq!(replayed.len(), want.len());
        assert!(replayed == want, "replay differs from the committed records");
    }

    /// One spare segment ahead of the one written, however often the reporter
    /// maintains; the next is made once writers move into the spare.
    #[test]
    fn one_spare_segment_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let (j, mut tail) = open(dir.path());
        for _ in 0..10 {
            tail.maintain();
        }
        assert_eq!(segment_files(dir.path()).len(), 2, "the first and its spare");
        let big = vec![7u8; 4000];
        while j.current.load().seq == 1 {
            assert!(j.append(&big));
        }
        for _ in 0..10 {
            tail.maintain();
        }
        assert_eq!(segment_files(dir.path()).len(), 3, "1 (unread), 2 and its spare");
    }

    /// Acknowledged records are not replayed; a finished segment whose batches are all
    /// acknowledged is deleted.
    #[test]
    fn acked_offset_and_retirement() {
        let dir = tempfile::tempdir().unwrap();
        let (j, mut tail) = open(dir.path());
        let big = vec![7u8; 4000];
        let mut buf = Vec::new();
        // Fill the first segment and a bit of the second.
        let mut n = 0;
        while j.current.load().seq == 1 {
            assert!(j.append(&big));
            n += 1;
        }
        assert!(n > 1000);
        for _ in 0..5 {
            assert!(j.append(b"in segment 2"));
        }
        let mut ends = Vec::new();
        let mut done = false;
        while !done {
            match tail.next(&mut buf) {
                Next::Record { seq, end } => ends.push((seq, end)),
                Next::SegmentDone(1) => {}
                Next::SegmentDone(_) => unreachable!(),
                Next::Idle => done = true,
            }
        }
        assert!(ends.iter().any(|(s, _)| *s == 1) && ends.iter().any(|(s, _)| *s == 2));
        // One batch per segment: the second's acknowledged half-way.
        tail.hold(1);
        tail.hold(2);
        let seg2: Vec<_> = ends.iter().filter(|(s, _)| *s == 2).collect();
        assert!(!seg2.is_empty());
        tail.maintain();
        assert_eq!(segment_files(dir.path()).len(), 3, "1, 2 and the prepared 3");
        tail.acked(1, ends.iter().rev().find(|(s, _)| *s == 1).unwrap().1);
        assert_eq!(segment_files(dir.path()).len(), 2, "1 retired");
        let (s, end) = *seg2[0];
        tail.acked(s, end);
        let (left, next) = recover(dir.path()).unwrap();
        assert_eq!(next, 4);
        let total: usize = left.iter().map(|l| l.records.len()).sum();
        assert_eq!(total, seg2.len() - 1, "the acknowledged record is not replayed");
    }

    /// The on-disk format as documented, checked against segment files written by
    /// another implementation (the fuzz seeds, made by a short Python script from the
    /// module docs): three records; the first acknowledged; the first torn.
    #[test]
    fn reads_the_documented_format() {
        let seed = |name: &str| {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/corpus/journal")
                .join(name);
            fs::read(p).unwrap()[1..].to_vec()
        };
        let whole = seed("segment_three_records");
        let p = parse(&whole).unwrap();
        assert_eq!(p.seq, 7);
        assert_eq!(p.records.len(), 3);
        assert_eq!(p.records[1], b"x");
        assert_eq!(
            parse(&seed("segment_acked_first")).unwrap().records,
            p.records[1..]
        );
        assert_eq!(
            parse(&seed("segment_torn_first")).unwrap().records,
            p.records[1..]
        );
        assert_eq!(
            segment_image(
                0x1234_5678_9abc_def0,
                7,
                &p.records.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
                96
            ),
            whole
        );
    }

    /// A parse of any bytes never panics.
    #[test]
    fn parse_survives_short_and_headerless_input() {
        assert!(parse(&[]).is_none());
        assert!(parse(&[0; 63]).is_none());
        let mut b = vec![0u8; 64];
        b[..8].copy_from_slice(&SEG_MAGIC.to_le_bytes());
        b[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(parse(&b).unwrap().records.len(), 0);
    }

    proptest! {
        /// Damaged segment bytes never make the reader panic, and never yield a record
        /// that was not written.
        #[test]
        fn damaged_segments_yield_only_written_records(
            recs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 0..20),
            damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..16),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = segment_image(0x5eed, 9, &recs, 1024);
            for (at, v) in &damage {
                let i = at.index(bytes.len());
                bytes[i] ^= v | 1;
            }
            let cut = cut.index(bytes.len() + 1);
            bytes.truncate(cut);
            if let Some(p) = parse(&bytes) {
                for r in p.records {
                    prop_assert!(recs.iter().any(|w| w.as_slice() == r), "a record never written: {r:?}");
                }
            }
        }

        /// Undamaged: exactly the written records, in order.
        #[test]
        fn intact_segments_yield_exactly_the_records(
            recs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 0..20),
        ) {
            let bytes = segment_image(0x5eed, 3, &recs, 1024);
            let got: Vec<Vec<u8>> = parse(&bytes).unwrap().records.into_iter().map(<[u8]>::to_vec).collect();
            prop_assert_eq!(got, recs);
        }
    }
}
