//! Backend and credential selection: priority tiers, the seven strategies, affinity,
//! and the live per-endpoint state (in-flight, EWMA latency, breaker) they read.
//!
//! Pure and synchronous: no I/O, no `.await`, no locks held by callers. Time is passed in
//! as milliseconds on a monotonic clock (`now_ms`), so breaker and cooldown logic is
//! tested with plain numbers.
//!
//! INTERFACE CONTRACT (the rest of the worker codes against exactly these items):
//! - `Strategy::parse(&str) -> Option<Strategy>` and `Strategy::as_str()`.
//! - `EndpointState`: live state of one backend or credential, `Arc`-shared, kept across
//!   snapshot swaps by the pool when the endpoint did not change.
//!   - `start(self: &Arc<Self>) -> InflightGuard` (in-flight +1 until the guard drops;
//!     hold the guard until the response stream ends).
//!   - `record_success(now_ms, ttfb_us) -> Option<Transition>`
//!   - `record_failure(now_ms, &str reason) -> Option<Transition>` (consecutive failures)
//!   - `eject(now_ms, &str reason) -> Option<Transition>` (immediate, e.g. upstream 401)
//!   - `cool_down(until_ms)` (429 + Retry-After: load, not sickness; no transition)
//!   - `set_probe_result(now_ms, healthy, &str reason) -> Option<Transition>` (active checks)
//!   - `snapshot(now_ms) -> HealthView` for `/health` and metrics.
//!   - `is_available(now_ms) -> bool`.
//! - `Selector::new(strategy)`; `Selector::pick(&self, &[Endpoint], &PickContext) -> Option<Pick>`.
//!   One `Selector` per model (and per provider for credentials), rebuilt on snapshot swap
//!   (its round-robin counters may reset; that is fine).
//!
//! HOW THE REQUEST PATH USES IT, per attempt:
//! 1. `let pick = selector.pick(&backends, &PickContext { now_ms: now_ms(), excluded: &tried,
//!    affinity })?` — `None` means "nothing to try": answer 503 (or stop retrying).
//!    `excluded` holds the indices this request already tried.
//! 2. `let _guard = backends[pick.index].state.start();` — keep it until the response
//!    stream ends (an SSE stream is load for minutes, not just until its headers).
//! 3. When the upstream answers:
//!    - 2xx (or a client-fault 4xx such as 400/404/422): `record_success(now_ms(), ttfb_us)`,
//!      with `ttfb_us` the time from sending the request to the response headers.
//!    - connect error, timeout before headers, 500/502/503/504: `record_failure(now, reason)`.
//!    - 401/403 on a credential: `eject(now, reason)` on that credential's state.
//!    - 429: `cool_down(now + retry_after_ms)` on the credential (or backend); not a failure.
//!
//!    Every call that returns `Some(Transition)` is a health flip: log it and report it.
//! 4. Before a retry: `retry_budget.try_retry(now)`; every original request calls
//!    `retry_budget.record_request(now)` once.
//!
//! Notes for callers:
//! - Pass the same endpoint slice (the `Vec` kept in the snapshot) on every pick: the
//!   selector caches a view keyed by the slice's address, and a fresh slice per request
//!   would rebuild it every time (correct, but O(n) and allocating).
//! - `Pick::trial` is true for a half-open trial or a panic-mode try. Treat it like any
//!   other attempt and report its outcome: the success or failure is what closes or
//!   re-opens the breaker. If its outcome is never reported (the client went away), a new
//!   trial is admitted after `base_ejection_ms`.
//! - Pinning (`x-switchyard-backend`) is the caller's: look the name up and check
//!   `state.is_available(now)`.
//! - Affinity: flat rendezvous up to 64 endpoints per tier, two-level rendezvous above
//!   (see `select::tier_clusters`); either way a key moves only when its endpoint becomes
//!   unavailable. Weights do not bias affinity.
//!
//! Credentials use the same machinery: one `Selector` per provider over `Endpoint`s built
//! from the credentials. Map the provider's credential strategy with
//! [`Strategy::for_credentials`]: `round_robin` becomes smooth weighted round robin (equal
//! weights give plain rotation) and `random` becomes weighted random (equal weights give a
//! uniform choice), so credential weights are always honoured.
pub mod budget;
pub mod endpoint;
pub mod select;

mod rng;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

pub use budget::RetryBudget;
pub use endpoint::{BreakerConfig, EndpointState, HealthView, InflightGuard, Transition};
pub use select::{Endpoint, Pick, PickContext, Selector, Strategy};

/// Stable 64-bit hash for affinity keys and endpoint identities (rendezvous hashing).
/// Must give the same value on every worker and every build, so it is not `DefaultHasher`.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    // FNV-1a, then a SplitMix64 finaliser for avalanche.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

/// SplitMix64 finaliser.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Milliseconds on a process-wide monotonic clock (0 at the first call). Pass this to
/// every `now_ms` parameter in this module, so that all endpoint states share one time base.
pub fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Bumped after every change that can make an endpoint more or less available (ejection,
/// recovery, cooldown, probe result, trial admission). Selectors cache the set of
/// available endpoints per tier and rebuild it when this moves, so a pick does not have to
/// read the state of all 1,000 endpoints. Process-wide: changes are rare (failures, 429s,
/// probes), and a spurious rebuild is only a little wasted work.
static HEALTH_EPOCH: AtomicU64 = AtomicU64::new(0);

pub(crate) fn health_epoch() -> u64 {
    HEALTH_EPOCH.load(Ordering::Acquire)
}

/// Called after the state change has been stored, so a reader that sees the new epoch
/// also sees the change.
pub(crate) fn bump_health_epoch() {
    HEALTH_EPOCH.fetch_add(1, Ordering::AcqRel);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_hash_is_stable() {
        // Pinned: every worker and every build must agree, or affinity breaks.
        assert_eq!(stable_hash(b""), mix64(0xcbf2_9ce4_8422_2325));
        assert_eq!(stable_hash(b"backend-a"), 0xd95b_e054_efb5_18ce);
        assert_ne!(stable_hash(b"backend-a"), stable_hash(b"backend-b"));
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
    }

    #[test]
    fn now_ms_is_monotonic() {
        let a = now_ms();
        let b = now_ms();
        assert!(b >= a);
    }
}
