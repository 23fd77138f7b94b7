//! A tiny per-thread random generator (wyrand) for random picks: a couple of
//! nanoseconds per draw, no lock, no syscall. Not for anything secret.
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

thread_local! {
    static STATE: Cell<u64> = const { Cell::new(0) };
}

/// Distinct seeds per thread even when threads start in the same nanosecond.
static SEEDS: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = SEEDS.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
    super::mix64(n ^ nanos) | 1
}

/// A uniformly distributed 64-bit value.
pub(crate) fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = seed();
        }
        x = x.wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// A value in `0..n` (`n > 0`), by multiply-shift (Lemire); the bias is below 2^-32 for
/// any `n` we will see.
pub(crate) fn below(n: u64) -> u64 {
    ((u128::from(next_u64()) * u128::from(n)) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_in_range_and_spread() {
        let mut seen = [0u32; 7];
        for _ in 0..7_000 {
            let v = below(7);
            assert!(v < 7);
            seen[v as usize] += 1;
        }
        // Each bucket expects 1,000; 700 is more than 9 standard deviations away.
        assert!(seen.iter().all(|&c| c > 700), "{seen:?}");
    }
}
