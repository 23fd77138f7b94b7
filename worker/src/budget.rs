//! The retry budget: retries may use about 20% of recent request volume plus a small
//! floor per second, so that retries cannot multiply load when everything is failing.
//! Lock-free token bucket in milli-tokens.
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug)]
pub struct RetryBudget {
    milli: AtomicI64,
    last_refill_ms: AtomicU64,
    /// Milli-tokens deposited per request (200 = 20%).
    per_request: i64,
    /// Milli-tokens per millisecond of floor (10/s = 10).
    floor_per_ms: i64,
    cap: i64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new(0.2, 10.0, 1000)
    }
}

impl RetryBudget {
    /// `ratio` of requests, `floor_per_sec` retries per second always allowed, at most
    /// `max_tokens` saved up.
    pub fn new(ratio: f64, floor_per_sec: f64, max_tokens: i64) -> Self {
        Self {
            milli: AtomicI64::new(max_tokens.min(10) * 1000),
            last_refill_ms: AtomicU64::new(0),
            per_request: (ratio * 1000.0) as i64,
            floor_per_ms: floor_per_sec as i64,
            cap: max_tokens * 1000,
        }
    }

    fn add(&self, m: i64) {
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((v + m).min(self.cap))
            });
    }

    /// Called once per request.
    pub fn deposit(&self) {
        self.add(self.per_request);
    }

    /// Take one retry; false when the budget is exhausted.
    pub fn try_withdraw(&self, now_ms: u64) -> bool {
        let last = self.last_refill_ms.swap(now_ms, Ordering::Relaxed);
        if now_ms > last {
            self.add(((now_ms - last) as i64).saturating_mul(self.floor_per_ms));
        }
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v >= 1000).then_some(v - 1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_limits_retry_storms() {
        let b = RetryBudget::new(0.2, 10.0, 100);
        let now = 1_000_000;
        assert!(b.try_withdraw(now)); // first call refills from time 0 to cap
        let mut n = 0;
        while b.try_withdraw(now) {
            n += 1;
        }
        assert!(n <= 100);
        for _ in 0..50 {
            b.deposit();
        }
        let mut m = 0;
        while b.try_withdraw(now) {
            m += 1;
        }
        assert_eq!(m, 10, "20% of 50 requests");
        assert!(b.try_withdraw(now + 100), "floor refills 10/s");
    }
}
