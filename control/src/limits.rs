//! Fleet-wide limits: the lease allocator behind `WorkerApi.Lease`, and its ledger.
//!
//! Workers decide admission locally against a ceiling control leases them (Google's
//! Doorman pattern). Every ~250 ms a worker instance claims, per limit, its absolute
//! consumption in the current window (`used`), the ceiling it honours until it applies
//! the answer, and what it expects to need (`want`). Control answers each claim with a
//! new ceiling = `used` + a slice of what remains of the limit:
//!
//! - committed(instance) = max(used, honoured ceiling, granted ceiling) while its grant
//!   is unexpired, else its `used`; remaining = amount − Σ committed (saturating);
//! - slice = min(want, ⌈remaining / 2⌉), where remaining = amount − the others'
//!   commitments − the claimant's `used`. While another instance contends (a live grant
//!   with a slice unspent, or a want of its own), no instance gets more than half of what
//!   is left, so none hoards and the last units are spread; the rounding up lets a
//!   trickle through to the very last unit. An instance alone may take all of it (up to
//!   its want), so a lone worker reaches the limit even with large token estimates.
//!   Counting only `used` (not the ceiling it still honours) is safe: the others'
//!   grants were made counting that ceiling, and it stays in this instance's commitment
//!   until its next claim.
//!
//! Hence Σ committed never exceeds the amount for instances that honour their ceilings,
//! and an instance that stops claiming gives back its unused slice when its grant
//! expires ([`GRANT_TTL_MS`]). The pure core is [`Meter`]; [`Allocator`] holds one meter
//! per limit (for the limit's current window) behind a sync mutex that is never held
//! across an await.
//!
//! Durability: every claim of a windowed limit marks its (limit, window, instance) row
//! dirty; [`run_ledger`] writes the dirty rows in one transaction every second (and once
//! more at shutdown), and [`Allocator::load`] reads the current windows' rows back at
//! start. Values are absolute, so a replay or a second write is harmless, and the
//! fleet's consumption survives a control restart. Concurrency limits (requests in
//! flight) are not persisted: the workers' next claims restore them.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::{
    model::{Limit, LimitKind, LimitSpec},
    store::{now_ms, Store},
};

/// How long a grant stays valid. A worker renews every ~250 ms, so a grant outlives
/// about 20 lost renewals; after it, an instance that stopped claiming holds only its
/// `used` and the worker falls back to the limit's `on_outage`.
pub const GRANT_TTL_MS: i64 = 5_000;

/// A concurrency holding silent this long after its grant expired is forgotten (its
/// worker is gone; its requests in flight went with it).
const CONCURRENCY_FORGET_MS: i64 = 3 * GRANT_TTL_MS;

/// Ledger rows of windows that started this long ago are deleted (longer than a month,
/// so a month window's rows outlive the month they count).
const LEDGER_RETENTION_MS: i64 = 62 * 86_400_000;

/// Most claims accepted in one Lease call (a worker has one per limit).
pub const MAX_CLAIMS: usize = 10_000;

/// What control knows about one worker instance's use of one limit in one window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holding {
    pub worker_id: String,
    /// Consumption in the window, absolute (in flight now, for concurrency).
    pub used: u64,
    /// Requests refused for the limit in the window, absolute.
    pub refused: u64,
    /// The ceiling the instance said it honours until it applies the last answer.
    pub honoured: u64,
    /// The ceiling last granted.
    pub granted: u64,
    pub expires_at_ms: i64,
    /// What the last claim wanted.
    pub want: u64,
}

impl Holding {
    /// What the instance may consume without asking again: while its grant is valid,
    /// the most it may reach; after that, what it consumed.
    pub fn committed(&self, now_ms: i64) -> u64 {
        if now_ms < self.expires_at_ms {
            self.used.max(self.honoured).max(self.granted)
        } else {
            self.used
        }
    }

    pub fn live(&self, now_ms: i64) -> bool {
        now_ms < self.expires_at_ms
    }

    /// Competing for what remains: a live grant with some of it unspent, or a want.
    pub fn contending(&self, now_ms: i64) -> bool {
        self.live(now_ms) && (self.granted > self.used || self.want > 0)
    }
}

/// One claim, already moved to the meter's window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    pub used: u64,
    pub ceiling: u64,
    pub want: u64,
    pub refused: u64,
}

/// The slice an instance is leased: at most `want`, and of what remains once everyone
/// else's commitments and the claimant's own `used` are counted, at most half (rounded
/// up) while another instance contends, else all of it.
pub fn slice(amount: u64, others_committed: u64, used: u64, want: u64, alone: bool) -> u64 {
    let remaining = amount.saturating_sub(others_committed).saturating_sub(used);
    want.min(if alone { remaining } else { remaining.div_ceil(2) })
}

/// The holdings of every instance for one limit in one window: the pure core.
#[derive(Clone, Debug, Default)]
pub struct Meter {
    pub window_start_ms: i64,
    /// Values only grow within a window (windowed limits), so a stale or replayed claim
    /// never lowers them; for concurrency `used` is the level now and is taken as is.
    pub absolute_max: bool,
    pub instances: HashMap<String, Holding>,
}

impl Meter {
    pub fn new(window_start_ms: i64, absolute_max: bool) -> Meter {
        Meter {
            window_start_ms,
            absolute_max,
            instances: HashMap::new(),
        }
    }

    /// Σ used: the fleet's consumption in the window.
    pub fn fleet_used(&self) -> u64 {
        self.instances
            .values()
            .fold(0u64, |a, h| a.saturating_add(h.used))
    }

    /// Σ committed of every instance but `except`.
    pub fn committed_except(&self, except: &str, now_ms: i64) -> u64 {
        self.instances
            .iter()
            .filter(|(id, _)| id.as_str() != except)
            .fold(0u64, |a, (_, h)| a.saturating_add(h.committed(now_ms)))
    }

    pub fn fleet_committed(&self, now_ms: i64) -> u64 {
        self.committed_except("", now_ms)
    }

    /// Record `c` from `instance` and answer with its new ceiling.
    pub fn claim(
        &mut self,
        amount: u64,
        instance: &str,
        worker_id: &str,
        c: Claim,
        now_ms: i64,
        ttl_ms: i64,
    ) -> u64 {
        let absolute_max = self.absolute_max;
        let others = self.committed_except(instance, now_ms);
        let alone = !self
            .instances
            .iter()
            .any(|(id, h)| id.as_str() != instance && h.contending(now_ms));
        let h = self.instances.entry(instance.to_string()).or_default();
        if h.worker_id != worker_id {
            h.worker_id = worker_id.to_string();
        }
        // `used` is the instance's latest count: a token reservation settled lower than
        // its estimate lowers it. (Claims of one instance come one at a time; the ledger
        // still keeps the largest value it was sent.) `refused` only grows.
        h.used = c.used;
        if absolute_max {
            h.refused = h.refused.max(c.refused);
        } else {
            h.refused = c.refused;
        }
        h.honoured = c.ceiling;
        h.want = c.want;
        let ceiling = h
            .used
            .saturating_add(slice(amount, others, h.used, c.want, alone));
        h.granted = ceiling;
        h.expires_at_ms = now_ms.saturating_add(ttl_ms);
        ceiling
    }
}

/// One limit's meter for its current window, with the definition it counts for.
struct LimitMeter {
    spec: LimitSpec,
    meter: Meter,
}

/// A ledger row: one instance's consumption of one limit in one window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerRow {
    pub limit: String,
    pub window_start_ms: i64,
    pub instance_id: String,
    pub worker_id: String,
    pub used: u64,
    pub refused: u64,
    pub ceiling: u64,
    pub expires_at_ms: i64,
}

/// A claim as the Lease RPC received it.
#[derive(Clone, Debug, Default)]
pub struct RawClaim {
    pub limit: String,
    pub window_start_ms: i64,
    pub used: u64,
    pub ceiling: u64,
    pub want: u64,
    pub refused: u64,
}

/// The answer to one claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub limit: String,
    pub window_start_ms: i64,
    pub ceiling: u64,
    pub fleet_used: u64,
    pub expires_at_ms: i64,
}

/// A limit's fleet-wide state now (ListLimits).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub used: u64,
    pub leased: u64,
    pub workers: u32,
    pub refused: u64,
}

type RowKey = (String, i64, String);

#[derive(Default)]
struct Inner {
    meters: HashMap<String, LimitMeter>,
    dirty: HashMap<RowKey, LedgerRow>,
}

/// The window that holds `now` for a limit: (start, end), (0, 0) for concurrency.
fn window_of(spec: &LimitSpec, now_ms: i64) -> (i64, i64) {
    match spec.window {
        Some(w) => (w.start_ms(now_ms), w.end_ms(now_ms)),
        None => (0, 0),
    }
}

/// In-memory lease state of every limit, shared by the Lease RPC, ListLimits and the
/// ledger task.
pub struct Allocator {
    inner: Mutex<Inner>,
    ttl_ms: i64,
}

impl Default for Allocator {
    fn default() -> Self {
        Allocator::new(GRANT_TTL_MS)
    }
}

impl Allocator {
    pub fn new(ttl_ms: i64) -> Allocator {
        Allocator {
            inner: Mutex::new(Inner::default()),
            ttl_ms,
        }
    }

    /// The meter of `l` for the window that holds `now`: a new one when the window
    /// rolled over or the limit now counts something else.
    fn meter<'a>(meters: &'a mut HashMap<String, LimitMeter>, l: &Limit, now_ms: i64) -> &'a mut Meter {
        let (start, _) = window_of(&l.spec, now_ms);
        let windowed = l.spec.kind != LimitKind::Concurrency;
        let m = meters.entry(l.name.clone()).or_insert_with(|| LimitMeter {
            spec: l.spec.clone(),
            meter: Meter::new(start, windowed),
        });
        if !m.spec.same_meter(&l.spec) || m.meter.window_start_ms != start {
            m.meter = Meter::new(start, windowed);
        }
        m.spec = l.spec.clone();
        &mut m.meter
    }

    /// Answer one instance's claims. Claims for limits that no longer exist get no
    /// grant. A claim for another window than the current one is answered for the
    /// current one (its consumption there is what control already knows, or 0).
    pub fn lease(
        &self,
        limits: &BTreeMap<String, Limit>,
        worker_id: &str,
        instance_id: &str,
        claims: &[RawClaim],
        now_ms: i64,
    ) -> Vec<Grant> {
        let mut grants = Vec::with_capacity(claims.len());
        let mut g = self.inner.lock();
        let Inner { meters, dirty } = &mut *g;
        for rc in claims {
            let Some(l) = limits.get(&rc.limit) else {
                continue;
            };
            let windowed = l.spec.kind != LimitKind::Concurrency;
            let ttl = self.ttl_ms;
            let meter = Self::meter(meters, l, now_ms);
            let start = meter.window_start_ms;
            let claim = if !windowed || rc.window_start_ms == start {
                Claim {
                    used: rc.used,
                    ceiling: rc.ceiling,
                    want: rc.want,
                    refused: rc.refused,
                }
            } else {
                // An older window's final count is still worth keeping in the ledger.
                if rc.window_start_ms < start && rc.window_start_ms > 0 {
                    let key = (l.name.clone(), rc.window_start_ms, instance_id.to_string());
                    let row = dirty.entry(key).or_insert_with(|| LedgerRow {
                        limit: l.name.clone(),
                        window_start_ms: rc.window_start_ms,
                        instance_id: instance_id.to_string(),
                        worker_id: worker_id.to_string(),
                        used: 0,
                        refused: 0,
                        ceiling: 0,
                        expires_at_ms: 0,
                    });
                    row.used = row.used.max(rc.used);
                    row.refused = row.refused.max(rc.refused);
                }
                let known = meter.instances.get(instance_id);
                Claim {
                    used: known.map_or(0, |h| h.used),
                    ceiling: 0,
                    want: rc.want,
                    refused: known.map_or(0, |h| h.refused),
                }
            };
            if !windowed {
                meter
                    .instances
                    .retain(|_, h| h.expires_at_ms.saturating_add(CONCURRENCY_FORGET_MS) > now_ms);
            }
            let ceiling = meter.claim(l.spec.amount, instance_id, worker_id, claim, now_ms, ttl);
            let fleet_used = meter.fleet_used();
            if windowed {
                if let Some(h) = meter.instances.get(instance_id) {
                    dirty.insert(
                        (l.name.clone(), start, instance_id.to_string()),
                        LedgerRow {
                            limit: l.name.clone(),
                            window_start_ms: start,
                            instance_id: instance_id.to_string(),
                            worker_id: worker_id.to_string(),
                            used: h.used,
                            refused: h.refused,
                            ceiling: h.granted,
                            expires_at_ms: h.expires_at_ms,
                        },
                    );
                }
            }
            grants.push(Grant {
                limit: l.name.clone(),
                window_start_ms: start,
                ceiling,
                fleet_used,
                expires_at_ms: now_ms.saturating_add(ttl),
            });
        }
        grants
    }

    /// Each limit's state in the window that holds `now`.
    pub fn status(&self, limits: &BTreeMap<String, Limit>, now_ms: i64) -> BTreeMap<String, Status> {
        let g = self.inner.lock();
        limits
            .values()
            .map(|l| {
                let (start, end) = window_of(&l.spec, now_ms);
                let mut s = Status {
                    window_start_ms: start,
                    window_end_ms: end,
                    ..Default::default()
                };
                let current = g
                    .meters
                    .get(&l.name)
                    .filter(|m| m.spec.same_meter(&l.spec) && m.meter.window_start_ms == start);
                if let Some(m) = current {
                    let concurrency = l.spec.kind == LimitKind::Concurrency;
                    let mut workers = HashSet::new();
                    for h in m.meter.instances.values() {
                        if concurrency && h.expires_at_ms.saturating_add(CONCURRENCY_FORGET_MS) <= now_ms {
                            continue;
                        }
                        s.used = s.used.saturating_add(h.used);
                        s.refused = s.refused.saturating_add(h.refused);
                        if h.live(now_ms) {
                            s.leased = s.leased.saturating_add(h.committed(now_ms) - h.used);
                            workers.insert(h.worker_id.as_str());
                        }
                    }
                    s.workers = u32::try_from(workers.len()).unwrap_or(u32::MAX);
                }
                (l.name.clone(), s)
            })
            .collect()
    }

    /// Seed the meters from ledger rows (at start): rows of each limit's current window
    /// become holdings, with the lease they were granted (still counted until it
    /// expires, since the worker may still be spending it).
    pub fn load(&self, limits: &BTreeMap<String, Limit>, rows: Vec<LedgerRow>, now_ms: i64) -> usize {
        let mut g = self.inner.lock();
        let mut n = 0;
        for r in rows {
            let Some(l) = limits.get(&r.limit) else {
                continue;
            };
            if l.spec.kind == LimitKind::Concurrency {
                continue;
            }
            let meter = Self::meter(&mut g.meters, l, now_ms);
            if meter.window_start_ms != r.window_start_ms {
                continue;
            }
            let h = meter.instances.entry(r.instance_id).or_default();
            h.worker_id = r.worker_id;
            h.used = h.used.max(r.used);
            h.refused = h.refused.max(r.refused);
            h.granted = h.granted.max(r.ceiling);
            h.expires_at_ms = h.expires_at_ms.max(r.expires_at_ms);
            n += 1;
        }
        n
    }

    /// The rows changed since the last call.
    pub fn take_dirty(&self) -> Vec<LedgerRow> {
        let mut g = self.inner.lock();
        std::mem::take(&mut g.dirty).into_values().collect()
    }

    /// Put back rows whose write failed, unless a newer version is already waiting.
    pub fn requeue(&self, rows: Vec<LedgerRow>) {
        let mut g = self.inner.lock();
        for r in rows {
            let key = (r.limit.clone(), r.window_start_ms, r.instance_id.clone());
            g.dirty.entry(key).or_insert(r);
        }
    }
}

/// Write dirty ledger rows every `every` until cancelled, then once more. Prunes rows of
/// long-past windows about hourly.
pub async fn run_ledger(
    store: Arc<Store>,
    alloc: Arc<Allocator>,
    every: Duration,
    cancel: CancellationToken,
) {
    let mut last_prune = 0i64;
    loop {
        let stop = tokio::select! {
            _ = cancel.cancelled() => true,
            _ = tokio::time::sleep(every) => false,
        };
        flush(&store, &alloc).await;
        let now = now_ms();
        if !stop && now - last_prune > 3_600_000 {
            last_prune = now;
            match store.prune_ledger(now - LEDGER_RETENTION_MS).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned limit ledger rows of past windows"),
                Err(e) => tracing::warn!(error = %e, "pruning the limit ledger failed"),
            }
        }
        if stop {
            return;
        }
    }
}

/// Write the dirty rows in one transaction; on failure they wait for the next round.
pub async fn flush(store: &Store, alloc: &Allocator) {
    let rows = alloc.take_dirty();
    if rows.is_empty() {
        return;
    }
    if let Err(e) = store.save_ledger(&rows, now_ms()).await {
        tracing::warn!(error = %e, rows = rows.len(), "writing the limit ledger failed; retrying");
        alloc.requeue(rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LimitMode, OnOutage};
    use proptest::prelude::*;
    use switchyard_common::window::Window;

    fn limit(name: &str, kind: LimitKind, window: Option<Window>, amount: u64) -> Limit {
        Limit {
            name: name.into(),
            spec: LimitSpec {
                scope: "team:t".into(),
                kind,
                window,
                amount,
                mode: LimitMode::Enforce,
                on_outage: OnOutage::Closed,
                description: String::new(),
            },
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn slices_are_at_most_half_of_what_remains() {
        assert_eq!(slice(100, 0, 0, 1000, false), 50);
        assert_eq!(slice(100, 0, 0, 10, false), 10);
        assert_eq!(slice(100, 60, 20, 1000, false), 10);
        assert_eq!(slice(100, 99, 0, 1000, false), 1, "the last unit still goes out");
        assert_eq!(slice(100, 100, 0, 1000, false), 0);
        assert_eq!(slice(100, 150, 0, 1000, false), 0, "overspent: nothing");
        assert_eq!(slice(100, 0, 0, 0, false), 0, "no want, no slice");
        assert_eq!(slice(100, 60, 20, 1000, true), 20, "alone: all that remains");
        assert_eq!(
            slice(100, 60, 20, 5, true),
            5,
            "alone: still no more than its want"
        );
    }

    #[test]
    fn a_lone_worker_converges_on_the_amount_without_passing_it() {
        let mut m = Meter::new(0, true);
        let (mut used, mut ceiling, mut now) = (0u64, 0u64, 0i64);
        for _ in 0..40 {
            used = ceiling; // spends all it may
            ceiling = m.claim(
                100,
                "i",
                "w",
                Claim {
                    used,
                    ceiling,
                    want: 1000,
                    refused: 0,
                },
                now,
                GRANT_TTL_MS,
            );
            now += 250;
            assert!(ceiling <= 100);
        }
        assert_eq!((used, ceiling), (100, 100));
    }

    #[test]
    fn windows_roll_and_old_claims_are_answered_for_the_current_window() {
        let a = Allocator::default();
        let l = limit("rpm", LimitKind::Requests, Some(Window::Minute), 100);
        let limits = BTreeMap::from([(l.name.clone(), l)]);
        let claim = |w, used| RawClaim {
            limit: "rpm".into(),
            window_start_ms: w,
            used,
            ceiling: 0,
            want: 10,
            refused: 0,
        };
        let t0 = 1_800_000_000_000 / 60_000 * 60_000;
        let g = a.lease(&limits, "w", "i", &[claim(t0, 30)], t0 + 5);
        assert_eq!(g[0].window_start_ms, t0);
        assert_eq!((g[0].ceiling, g[0].fleet_used), (40, 30));
        // A minute later the old window's claim gets a grant for the new window.
        let g = a.lease(&limits, "w", "i", &[claim(t0, 35)], t0 + 60_005);
        assert_eq!(g[0].window_start_ms, t0 + 60_000);
        assert_eq!((g[0].ceiling, g[0].fleet_used), (10, 0));
        let rows = a.take_dirty();
        let old = rows.iter().find(|r| r.window_start_ms == t0).unwrap();
        assert_eq!(old.used, 35, "the old window's final count is kept");
        assert!(rows.iter().any(|r| r.window_start_ms == t0 + 60_000));
        // Unknown limits get no grant.
        let mut c = claim(t0 + 60_000, 1);
        c.limit = "gone".into();
        assert!(a.lease(&limits, "w", "i", &[c], t0 + 60_010).is_empty());
    }

    #[test]
    fn the_ledger_restores_consumption_and_live_leases() {
        let l = limit("day", LimitKind::Tokens, Some(Window::Day), 1000);
        let limits = BTreeMap::from([(l.name.clone(), l)]);
        let now = 1_800_000_123_456;
        let a = Allocator::default();
        for (inst, used) in [("i1", 100), ("i2", 250)] {
            a.lease(
                &limits,
                "w",
                inst,
                &[RawClaim {
                    limit: "day".into(),
                    window_start_ms: Window::Day.start_ms(now),
                    used,
                    ceiling: used,
                    want: 50,
                    refused: 2,
                }],
                now,
            );
        }
        let before = a.status(&limits, now + 1)["day"].clone();
        let b = Allocator::default();
        assert_eq!(b.load(&limits, a.take_dirty(), now + 1), 2);
        let after = b.status(&limits, now + 1)["day"].clone();
        assert_eq!(after, before);
        assert_eq!(
            (after.used, after.refused, after.leased, after.workers),
            (350, 4, 100, 1)
        );
        // After the leases expire only the consumption stays.
        let later = b.status(&limits, now + GRANT_TTL_MS + 1)["day"].clone();
        assert_eq!((later.used, later.leased, later.workers), (350, 0, 0));
    }

    #[test]
    fn a_concurrency_claim_gets_what_it_wants() {
        let a = Allocator::default();
        let l = limit("conc", LimitKind::Concurrency, None, 100_000);
        let limits = BTreeMap::from([(l.name.clone(), l)]);
        let claim = |used, ceiling, want| RawClaim {
            limit: "conc".into(),
            used,
            ceiling,
            want,
            ..Default::default()
        };
        let now = 1_800_000_000_000;
        assert_eq!(a.lease(&limits, "w", "i", &[claim(0, 0, 0)], now)[0].ceiling, 0);
        assert_eq!(
            a.lease(&limits, "w", "i", &[claim(0, 0, 2)], now + 20)[0].ceiling,
            2
        );
    }

    #[test]
    fn concurrency_holdings_follow_the_level_and_are_forgotten() {
        let a = Allocator::default();
        let l = limit("conc", LimitKind::Concurrency, None, 4);
        let limits = BTreeMap::from([(l.name.clone(), l)]);
        let claim = |used| RawClaim {
            limit: "conc".into(),
            used,
            want: 2,
            ..Default::default()
        };
        a.lease(&limits, "w", "i", &[claim(3)], 0);
        a.lease(&limits, "w", "i", &[claim(1)], 100);
        assert_eq!(a.status(&limits, 200)["conc"].used, 1, "the level, not the max");
        assert!(a.take_dirty().is_empty(), "concurrency is not persisted");
        assert_eq!(
            a.status(&limits, GRANT_TTL_MS + CONCURRENCY_FORGET_MS + 200)["conc"].used,
            0
        );
    }

    /// One step of a simulated fleet: an instance spends up to its ceiling (never past it
    /// and never after its grant expired), then claims; the answer may be lost.
    #[derive(Clone, Debug)]
    struct Step {
        instance: usize,
        spend: u64,
        want: u64,
        lost: bool,
        advance_ms: i64,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            0usize..4,
            0u64..60,
            0u64..80,
            proptest::bool::weighted(0.2),
            0i64..3000,
        )
            .prop_map(|(instance, spend, want, lost, advance_ms)| Step {
                instance,
                spend,
                want,
                lost,
                advance_ms,
            })
    }

    #[derive(Clone, Copy, Default)]
    struct Worker {
        used: u64,
        ceiling: u64,
        expires: i64,
    }

    proptest! {
        /// Σ committed never exceeds the amount; while another instance contends, no
        /// instance is granted more than half (rounded up) of what remained; an instance's
        /// grant never lets it pass the amount.
        #[test]
        fn the_fleet_never_commits_more_than_the_amount(
            amount in 1u64..500,
            steps in proptest::collection::vec(step(), 1..120),
        ) {
            let mut m = Meter::new(0, true);
            let mut ws = [Worker::default(); 4];
            let mut now = 1_000i64;
            for s in steps {
                now += s.advance_ms;
                let w = &mut ws[s.instance];
                let honoured = if now < w.expires { w.ceiling } else { w.used };
                w.used = (w.used + s.spend).min(honoured.max(w.used));
                let id = format!("i{}", s.instance);
                let others = m.committed_except(&id, now);
                let alone = !m.instances.iter().any(|(i, h)| *i != id && h.contending(now));
                let remaining = amount.saturating_sub(others).saturating_sub(w.used);
                let c = m.claim(amount, &id, "w", Claim { used: w.used, ceiling: honoured, want: s.want, refused: 0 },  now, GRANT_TTL_MS);
                let most = if alone { remaining } else { remaining.div_ceil(2) };
                prop_assert!(c - w.used <= most, "slice {} of remaining {} (alone: {})", c - w.used, remaining, alone);
                prop_assert!(c - w.used <= s.want);
                if !s.lost {
                    w.ceiling = c;
                    w.expires = now + GRANT_TTL_MS;
                }
                prop_assert!(m.fleet_committed(now) <= amount, "committed {} > {}", m.fleet_committed(now), amount);
                prop_assert!(m.fleet_used() <= amount);
            }
        }

        /// An instance that stops claiming holds only what it used once its grant expires.
        #[test]
        fn an_idle_instance_shrinks_to_its_used(
            amount in 1u64..10_000,
            used in 0u64..5_000,
            want in 0u64..10_000,
            later in 0i64..20_000,
        ) {
            let used = used.min(amount);
            let mut m = Meter::new(0, true);
            m.claim(amount, "idle", "w", Claim { used, ceiling: 0, want, refused: 0 }, 0, GRANT_TTL_MS);
            m.claim(amount, "busy", "w", Claim { used: 0, ceiling: 0, want: amount, refused: 0 }, later, GRANT_TTL_MS);
            let idle = &m.instances["idle"];
            if later >= GRANT_TTL_MS {
                prop_assert_eq!(idle.committed(later), used);
            }
            prop_assert!(idle.committed(later) <= used + want.min(amount - used));
        }
    }
}
