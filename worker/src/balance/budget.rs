//! Retry budget, as in linkerd and finagle: retries may add about `ratio` (20%) of the
//! recent requests plus a small floor per second, over a sliding window (10 s in 1 s
//! buckets). When everything is failing, this keeps retries from multiplying the load
//! on the upstreams (a retry storm) while still letting a quiet worker retry.
//!
//! Lock-free: each bucket is one `AtomicU64` holding (bucket number, count), so rolling a
//! bucket over and counting in it is a single CAS.
use std::sync::atomic::{AtomicU64, Ordering};

const BUCKETS: usize = 10;

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: u32,
    bucket_ms: u64,
    requests: [AtomicU64; BUCKETS],
    retries: [AtomicU64; BUCKETS],
}

impl Default for RetryBudget {
    /// 20% of the requests of the last 10 s, plus 10 retries per second.
    fn default() -> Self {
        Self::new(0.2, 10, 10_000)
    }
}

impl RetryBudget {
    /// `ratio`: retries allowed per request; `min_per_sec`: retries always allowed per
    /// second of window; `window_ms`: the sliding window (split in 10 buckets).
    pub fn new(ratio: f64, min_per_sec: u32, window_ms: u64) -> Self {
        Self {
            ratio: ratio.max(0.0),
            min_per_sec,
            bucket_ms: (window_ms / BUCKETS as u64).max(1),
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    /// Counts one original request (not a retry); each deposits `ratio` retries.
    pub fn record_request(&self, now_ms: u64) {
        self.add(&self.requests, now_ms);
    }

    /// Withdraws one retry if the budget allows it. `false`: do not retry.
    pub fn try_retry(&self, now_ms: u64) -> bool {
        let requests = self.sum(&self.requests, now_ms);
        let retries = self.sum(&self.retries, now_ms);
        let window_secs = (self.bucket_ms * BUCKETS as u64) as f64 / 1000.0;
        let allowed = self.ratio * requests as f64 + f64::from(self.min_per_sec) * window_secs;
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        self.add(&self.retries, now_ms);
        true
    }

    fn tag(&self, now_ms: u64) -> (u32, usize) {
        let bucket = now_ms / self.bucket_ms;
        // +1 so that an untouched slot (tag 0) never looks like a current bucket.
        (
            (bucket as u32).wrapping_add(1),
            (bucket % BUCKETS as u64) as usize,
        )
    }

    fn add(&self, slots: &[AtomicU64; BUCKETS], now_ms: u64) {
        let (tag, slot) = self.tag(now_ms);
        let _ = slots[slot].fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            let (t, count) = unpack(cur);
            Some(if t == tag {
                pack(tag, count.saturating_add(1))
            } else {
                pack(tag, 1)
            })
        });
    }

    fn sum(&self, slots: &[AtomicU64; BUCKETS], now_ms: u64) -> u64 {
        let (tag, _) = self.tag(now_ms);
        slots
            .iter()
            .map(|s| unpack(s.load(Ordering::Acquire)))
            .filter(|&(t, _)| t != 0 && tag.wrapping_sub(t) < BUCKETS as u32)
            .map(|(_, count)| u64::from(count))
            .sum()
    }
}

fn pack(tag: u32, count: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(count)
}

fn unpack(v: u64) -> (u32, u32) {
    ((v >> 32) as u32, v as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_retries_at_ratio_plus_floor() {
        let budget = RetryBudget::new(0.2, 1, 10_000);
        for i in 0..1_000u64 {
            budget.record_request(i * 5);
        }
        // 20% of 1,000 requests + 1/s over 10 s.
        let granted = (0..1_000).filter(|_| budget.try_retry(5_000)).count();
        assert_eq!(granted, 210);
    }

    #[test]
    fn floor_allows_retries_without_traffic() {
        let budget = RetryBudget::new(0.2, 2, 10_000);
        let granted = (0..100).filter(|_| budget.try_retry(0)).count();
        assert_eq!(granted, 20);
    }

    #[test]
    fn window_slides() {
        let budget = RetryBudget::new(0.2, 0, 10_000);
        for _ in 0..100 {
            budget.record_request(0);
        }
        assert_eq!((0..100).filter(|_| budget.try_retry(500)).count(), 20);
        // Still inside the window: spent.
        assert!(!budget.try_retry(9_000));
        // 10 s later the old requests and retries have left the window.
        assert!(!budget.try_retry(10_500));
        for _ in 0..10 {
            budget.record_request(10_500);
        }
        assert_eq!((0..10).filter(|_| budget.try_retry(10_600)).count(), 2);
    }
}
