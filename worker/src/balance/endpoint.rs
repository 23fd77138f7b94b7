//! TEMPORARY local fallback for the balance contract (replaced by the `balance` branch on merge).
use std::sync::{
    atomic::{AtomicU32, AtomicU64, Ordering},
    Arc,
};

use parking_lot::Mutex;

#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            base_ejection_ms: 30_000,
            max_ejection_ms: 600_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub healthy: bool,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthView {
    pub healthy: bool,
    pub inflight: u32,
    pub ewma_ttfb_ms: Option<f64>,
    pub consecutive_failures: u32,
    pub ejected_until_ms: Option<u64>,
    pub cooldown_until_ms: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug)]
pub struct EndpointState {
    cfg: BreakerConfig,
    pub(crate) inflight: AtomicU32,
    failures: AtomicU32,
    ejected_until: AtomicU64,
    cooldown_until: AtomicU64,
    ewma_us: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl EndpointState {
    pub fn new(cfg: BreakerConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            inflight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            cooldown_until: AtomicU64::new(0),
            ewma_us: AtomicU64::new(0),
            last_error: Mutex::new(None),
        })
    }
    pub fn start(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard { state: self.clone() }
    }
    pub fn record_success(&self, _now_ms: u64, ttfb_us: u64) -> Option<Transition> {
        self.failures.store(0, Ordering::Relaxed);
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            ttfb_us
        } else {
            (old * 4 + ttfb_us) / 5
        };
        self.ewma_us.store(new.max(1), Ordering::Relaxed);
        if self.ejected_until.swap(0, Ordering::Relaxed) != 0 {
            return Some(Transition {
                healthy: true,
                reason: "request ok".into(),
            });
        }
        None
    }
    pub fn record_failure(&self, now_ms: u64, reason: &str) -> Option<Transition> {
        *self.last_error.lock() = Some(reason.to_string());
        let f = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if f >= self.cfg.failure_threshold {
            return self.eject(now_ms, reason);
        }
        None
    }
    pub fn eject(&self, now_ms: u64, reason: &str) -> Option<Transition> {
        *self.last_error.lock() = Some(reason.to_string());
        let was = self
            .ejected_until
            .swap(now_ms + self.cfg.base_ejection_ms, Ordering::Relaxed);
        (was <= now_ms).then(|| Transition {
            healthy: false,
            reason: reason.to_string(),
        })
    }
    pub fn cool_down(&self, until_ms: u64) {
        self.cooldown_until.fetch_max(until_ms, Ordering::Relaxed);
    }
    pub fn set_probe_result(&self, now_ms: u64, healthy: bool, reason: &str) -> Option<Transition> {
        if healthy {
            self.failures.store(0, Ordering::Relaxed);
            (self.ejected_until.swap(0, Ordering::Relaxed) > now_ms).then(|| Transition {
                healthy: true,
                reason: reason.to_string(),
            })
        } else {
            self.eject(now_ms, reason)
        }
    }
    pub fn snapshot(&self, now_ms: u64) -> HealthView {
        let ej = self.ejected_until.load(Ordering::Relaxed);
        let cd = self.cooldown_until.load(Ordering::Relaxed);
        let ew = self.ewma_us.load(Ordering::Relaxed);
        HealthView {
            healthy: ej <= now_ms,
            inflight: self.inflight.load(Ordering::Relaxed),
            ewma_ttfb_ms: (ew > 0).then(|| ew as f64 / 1000.0),
            consecutive_failures: self.failures.load(Ordering::Relaxed),
            ejected_until_ms: (ej > now_ms).then_some(ej),
            cooldown_until_ms: (cd > now_ms).then_some(cd),
            last_error: self.last_error.lock().clone(),
        }
    }
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) <= now_ms
            && self.cooldown_until.load(Ordering::Relaxed) <= now_ms
    }
}

#[derive(Debug)]
pub struct InflightGuard {
    state: Arc<EndpointState>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.state.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}
