//! Live state of one endpoint (a backend or a credential): in-flight count, EWMA time to
//! first byte, and a consecutive-failures breaker with growing ejections and a half-open
//! trial. All atomics: selection only reads, request completion and probes write.
use std::sync::Arc;

/// Breaker tuning. Defaults: 3 consecutive failures eject for 30 s, doubling on repeated
/// ejections up to 10 min.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 3, base_ejection_ms: 30_000, max_ejection_ms: 600_000 }
    }
}

/// A health flip worth logging and reporting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub healthy: bool,
    pub reason: String,
}

/// Read-only view for `/health` and metrics.
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
    // Filled in by the balance work.
    _cfg: BreakerConfig,
}

impl EndpointState {
    pub fn new(cfg: BreakerConfig) -> Arc<Self> {
        Arc::new(Self { _cfg: cfg })
    }
}

/// In-flight marker: decrements the endpoint's in-flight count on drop.
#[derive(Debug)]
pub struct InflightGuard {
    _state: Arc<EndpointState>,
}
