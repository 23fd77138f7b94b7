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
pub mod endpoint;
pub mod select;

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
