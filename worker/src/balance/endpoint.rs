//! Live state of one endpoint (a backend or a credential): in-flight count, EWMA time to
//! first byte, and a consecutive-failures breaker with growing ejections and a half-open
//! trial. All atomics: selection only reads, request completion and probes write.
//!
//! Breaker, in the style of linkerd's consecutive-failures accrual:
//! - closed: `failure_threshold` consecutive failures eject the endpoint for
//!   `base_ejection_ms * 2^(ejections-1)`, capped at `max_ejection_ms`;
//! - open (`now < ejected_until`): no normal traffic; further failures change nothing;
//! - half-open (`now >= ejected_until`): exactly one trial request is admitted (a CAS on
//!   `trial_at`); if its result never comes back (the client went away), another trial is
//!   admitted after `base_ejection_ms`. A failure re-ejects for the next, longer period.
//! - any success closes the breaker. A success from a request that started before the
//!   ejection counts too: it is real evidence that the endpoint answers.
//! - the ejection multiplier resets after [`EJECTION_RESET_STREAK`] consecutive successes,
//!   not on the first one, so an endpoint that flaps (one good trial, then failures again)
//!   keeps getting longer ejections.
//!
//! Other inputs: `eject` (an upstream 401/403 on a credential) opens the breaker at once;
//! `cool_down` (429 Retry-After) makes the endpoint unavailable until then without
//! touching its health; an unhealthy active probe makes it unavailable until a probe
//! succeeds, and a successful probe also closes a passive ejection.
//!
//! "Healthy" (what `/health` reports and what a [`Transition`] flips) means: not ejected
//! and not probe-down. Every flip is returned exactly once, from the call that caused it,
//! because flips happen under a small mutex that only failures, probes and recoveries
//! take; the success path and selection never take it.
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::bump_health_epoch;

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
        Self {
            failure_threshold: 3,
            base_ejection_ms: 30_000,
            max_ejection_ms: 600_000,
        }
    }
}

impl BreakerConfig {
    /// Length of the `n`th consecutive ejection (`n >= 1`).
    pub fn ejection_ms(&self, n: u32) -> u64 {
        let base = self.base_ejection_ms.max(1);
        let max = self.max_ejection_ms.max(base);
        let shift = n.saturating_sub(1).min(63);
        base.checked_mul(1u64 << shift).map_or(max, |d| d.min(max))
    }
}

/// Consecutive successes after which the ejection multiplier starts again from 1.
pub const EJECTION_RESET_STREAK: u32 = 5;

/// Weight of a new sample in the TTFB moving average.
pub const EWMA_ALPHA: f64 = 0.2;

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
    /// Set while the passive breaker is open or half-open (it may be in the past: then a
    /// trial is due or running).
    pub ejected_until_ms: Option<u64>,
    /// Set while a 429 cooldown is still running.
    pub cooldown_until_ms: Option<u64>,
    pub last_error: Option<String>,
}

/// Sentinel for "no TTFB sample yet" in `ewma_us_bits` (a NaN pattern no update produces).
const EWMA_UNKNOWN: u64 = u64::MAX;

/// What selection may do with an endpoint right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// Takes normal traffic.
    Available,
    /// Half-open and no trial running: the next pick should send it the trial.
    TrialReady,
    /// Unavailable; the status may change by itself at this time (`u64::MAX`: only an
    /// explicit event such as a probe result can change it).
    Blocked(u64),
}

#[derive(Debug)]
pub struct EndpointState {
    cfg: BreakerConfig,
    inflight: AtomicU32,
    /// f64 bits of the TTFB EWMA in microseconds, or `EWMA_UNKNOWN`.
    ewma_us_bits: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Consecutive successes while `ejections > 0`.
    success_streak: AtomicU32,
    /// Consecutive ejections so far (the backoff exponent).
    ejections: AtomicU32,
    /// 0: breaker closed. Otherwise the end of the current ejection.
    ejected_until: AtomicU64,
    /// Length of the current ejection (panic-mode gate period).
    ejection_len: AtomicU64,
    /// `now + 1` when the last trial (half-open or panic) was admitted; 0: none since the
    /// last ejection.
    trial_at: AtomicU64,
    /// 429 cooldown end (ms); 0 or past: none.
    cooldown_until: AtomicU64,
    probe_down: AtomicBool,
    /// Monotonic ms of the last answer (`record_success`); 0: none yet. Tells a slow
    /// request on a live upstream from a dead upstream.
    last_ok_ms: AtomicU64,
    /// `now + 1` when the last confirmation probe of an upstream 401/403 started; 0: never.
    confirm_at: AtomicU64,
    /// The reported health; flips only under `slow`.
    healthy: AtomicBool,
    slow: Mutex<Slow>,
}

#[derive(Debug, Default)]
struct Slow {
    last_error: Option<String>,
}

impl EndpointState {
    pub fn new(cfg: BreakerConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            inflight: AtomicU32::new(0),
            ewma_us_bits: AtomicU64::new(EWMA_UNKNOWN),
            consecutive_failures: AtomicU32::new(0),
            success_streak: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejection_len: AtomicU64::new(0),
            trial_at: AtomicU64::new(0),
            cooldown_until: AtomicU64::new(0),
            probe_down: AtomicBool::new(false),
            last_ok_ms: AtomicU64::new(0),
            confirm_at: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            slow: Mutex::new(Slow::default()),
        })
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.cfg
    }

    /// Counts a request as load until the returned guard drops. Hold it until the response
    /// stream ends, not just until its headers.
    pub fn start(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard {
            state: Arc::clone(self),
        }
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// EWMA of time to first byte in microseconds; `None` before the first success.
    pub fn ewma_ttfb_us(&self) -> Option<f64> {
        let bits = self.ewma_us_bits.load(Ordering::Relaxed);
        (bits != EWMA_UNKNOWN).then(|| f64::from_bits(bits))
    }

    /// The reported health (not ejected, not probe-down). A cooling-down endpoint is
    /// healthy but not available.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.slow.lock().last_error.clone()
    }

    /// Can take normal traffic now. False while ejected, half-open (only the trial goes
    /// there), cooling down, or probe-down.
    pub fn is_available(&self, now_ms: u64) -> bool {
        self.status(now_ms) == Status::Available
    }

    pub(crate) fn status(&self, now: u64) -> Status {
        let mut blocked_until = 0u64;
        if self.probe_down.load(Ordering::Acquire) {
            blocked_until = u64::MAX;
        }
        let cooldown = self.cooldown_until.load(Ordering::Acquire);
        if cooldown > now {
            blocked_until = blocked_until.max(cooldown);
        }
        let mut trial_ready = false;
        let ejected_until = self.ejected_until.load(Ordering::Acquire);
        if ejected_until != 0 {
            if now < ejected_until {
                blocked_until = blocked_until.max(ejected_until);
            } else {
                let trial = self.trial_at.load(Ordering::Acquire);
                if self.trial_admissible(trial, ejected_until, now) {
                    trial_ready = true;
                } else {
                    blocked_until = blocked_until.max(self.trial_expiry(trial));
                }
            }
        }
        if blocked_until > now {
            Status::Blocked(blocked_until)
        } else if trial_ready {
            Status::TrialReady
        } else {
            Status::Available
        }
    }

    /// Half-open trial rule: none admitted since this ejection period ended, or the last
    /// one never reported back in time.
    fn trial_admissible(&self, trial_at: u64, ejected_until: u64, now: u64) -> bool {
        trial_at == 0 || trial_at - 1 < ejected_until || now >= self.trial_expiry(trial_at)
    }

    fn trial_expiry(&self, trial_at: u64) -> u64 {
        (trial_at - 1).saturating_add(self.cfg.base_ejection_ms.max(1))
    }

    /// Admits the single half-open trial. True for exactly one caller per trial.
    pub(crate) fn try_take_trial(&self, now: u64) -> bool {
        let ejected_until = self.ejected_until.load(Ordering::Acquire);
        if ejected_until == 0 || now < ejected_until {
            return false;
        }
        let trial = self.trial_at.load(Ordering::Acquire);
        if !self.trial_admissible(trial, ejected_until, now) {
            return false;
        }
        let won = self
            .trial_at
            .compare_exchange(trial, now + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            bump_health_epoch();
        }
        won
    }

    /// Panic-mode gate: at most one pick per ejection period (per `base_ejection_ms` when
    /// the endpoint is only cooling down or probe-down).
    pub(crate) fn try_take_panic(&self, now: u64) -> bool {
        let period = if self.ejected_until.load(Ordering::Acquire) != 0 {
            self.ejection_len.load(Ordering::Acquire)
        } else {
            self.cfg.base_ejection_ms
        }
        .max(1);
        let trial = self.trial_at.load(Ordering::Acquire);
        if trial != 0 && now < (trial - 1).saturating_add(period) {
            return false;
        }
        let won = self
            .trial_at
            .compare_exchange(trial, now + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            bump_health_epoch();
        }
        won
    }

    /// The upstream answered (headers arrived). Updates the EWMA, resets the failure count
    /// and closes an ejection.
    pub fn record_success(&self, now_ms: u64, ttfb_us: u64) -> Option<Transition> {
        self.update_ewma(ttfb_us as f64);
        self.last_ok_ms.store(now_ms.max(1), Ordering::Relaxed);
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            let streak = self.success_streak.fetch_add(1, Ordering::Relaxed) + 1;
            if streak >= EJECTION_RESET_STREAK {
                self.ejections.store(0, Ordering::Relaxed);
                self.success_streak.store(0, Ordering::Relaxed);
            }
        }
        if self.ejected_until.load(Ordering::Acquire) == 0 {
            return None;
        }
        let _slow = self.slow.lock();
        if self.ejected_until.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.close_locked();
        self.flip(|| "recovered: request succeeded".to_owned())
    }

    fn update_ewma(&self, sample_us: f64) {
        let _ = self
            .ewma_us_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let next = if bits == EWMA_UNKNOWN {
                    sample_us
                } else {
                    let old = f64::from_bits(bits);
                    old + EWMA_ALPHA * (sample_us - old)
                };
                Some(next.to_bits())
            });
    }

    /// A connect error, a timeout before headers, or a 5xx. Ejects at the threshold, and
    /// re-ejects (longer) when the half-open trial fails.
    pub fn record_failure(&self, now_ms: u64, reason: &str) -> Option<Transition> {
        let mut slow = self.slow.lock();
        slow.last_error = Some(reason.to_owned());
        self.success_streak.store(0, Ordering::Relaxed);
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let ejected_until = self.ejected_until.load(Ordering::Acquire);
        let eject = if ejected_until == 0 {
            failures >= self.cfg.failure_threshold.max(1)
        } else {
            // Open: already out, nothing to add. Half-open: the trial failed.
            now_ms >= ejected_until
        };
        if !eject {
            return None;
        }
        self.eject_locked(now_ms);
        let transition =
            self.flip(|| format!("ejected after {failures} consecutive failures, last: {reason}"));
        drop(slow);
        transition
    }

    /// Ejects at once (an upstream 401/403 on a credential). While already ejected and the
    /// ejection has not ended, only the last error changes: a burst of 401s is one event.
    pub fn eject(&self, now_ms: u64, reason: &str) -> Option<Transition> {
        let mut slow = self.slow.lock();
        slow.last_error = Some(reason.to_owned());
        let ejected_until = self.ejected_until.load(Ordering::Acquire);
        if ejected_until != 0 && now_ms < ejected_until {
            return None;
        }
        self.success_streak.store(0, Ordering::Relaxed);
        self.eject_locked(now_ms);
        let transition = self.flip(|| reason.to_owned());
        drop(slow);
        transition
    }

    /// Whether the upstream answered a request at or after `since_ms`: a timeout while it
    /// answers others is a long request, not a dead upstream.
    pub fn answered_since(&self, since_ms: u64) -> bool {
        let at = self.last_ok_ms.load(Ordering::Relaxed);
        at != 0 && at >= since_ms
    }

    /// Claims the right to confirm an upstream 401/403 with a probe: one at a time, at most
    /// one per `gap_ms`, so that a flood of rejected requests sends one probe.
    pub fn try_start_confirm(&self, now_ms: u64, gap_ms: u64) -> bool {
        let at = self.confirm_at.load(Ordering::Relaxed);
        if at != 0 && now_ms.saturating_add(1) < at.saturating_add(gap_ms) {
            return false;
        }
        self.confirm_at
            .compare_exchange(at, now_ms.saturating_add(1), Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// A 429 with Retry-After: unavailable until `until_ms`. Load, not sickness: no
    /// transition, no failure counted.
    pub fn cool_down(&self, until_ms: u64) {
        let prev = self.cooldown_until.fetch_max(until_ms, Ordering::AcqRel);
        if until_ms > prev {
            bump_health_epoch();
        }
    }

    /// Result of an active health check. Unhealthy keeps the endpoint out until a probe
    /// succeeds; healthy also closes a passive ejection.
    pub fn set_probe_result(&self, _now_ms: u64, healthy: bool, reason: &str) -> Option<Transition> {
        let mut slow = self.slow.lock();
        if healthy {
            let was_down = self.probe_down.swap(false, Ordering::AcqRel);
            let was_ejected = self.ejected_until.load(Ordering::Acquire) != 0;
            if was_ejected {
                self.close_locked();
            } else if was_down {
                bump_health_epoch();
            }
        } else {
            slow.last_error = Some(reason.to_owned());
            if !self.probe_down.swap(true, Ordering::AcqRel) {
                bump_health_epoch();
            }
        }
        let transition = self.flip(|| reason.to_owned());
        drop(slow);
        transition
    }

    /// Health for `/health` and metrics.
    pub fn snapshot(&self, now_ms: u64) -> HealthView {
        let ejected_until = self.ejected_until.load(Ordering::Acquire);
        let cooldown = self.cooldown_until.load(Ordering::Acquire);
        HealthView {
            healthy: self.is_healthy(),
            inflight: self.inflight(),
            ewma_ttfb_ms: self.ewma_ttfb_us().map(|us| us / 1000.0),
            consecutive_failures: self.consecutive_failures(),
            ejected_until_ms: (ejected_until != 0).then_some(ejected_until),
            cooldown_until_ms: (cooldown > now_ms).then_some(cooldown),
            last_error: self.last_error(),
        }
    }

    // Caller holds `slow`.
    fn eject_locked(&self, now: u64) {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let len = self.cfg.ejection_ms(n);
        self.ejection_len.store(len, Ordering::Release);
        // A new period: the panic gate and the half-open trial start afresh.
        self.trial_at.store(0, Ordering::Release);
        self.ejected_until
            .store(now.saturating_add(len).max(1), Ordering::Release);
        bump_health_epoch();
    }

    // Caller holds `slow`.
    fn close_locked(&self) {
        self.ejected_until.store(0, Ordering::Release);
        self.trial_at.store(0, Ordering::Release);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        bump_health_epoch();
    }

    /// Publishes the health implied by the state. Caller holds `slow`, so flips are
    /// serialised with the changes they describe and each one is returned once.
    fn flip(&self, reason: impl FnOnce() -> String) -> Option<Transition> {
        let healthy =
            !self.probe_down.load(Ordering::Acquire) && self.ejected_until.load(Ordering::Acquire) == 0;
        if self.healthy.swap(healthy, Ordering::AcqRel) == healthy {
            return None;
        }
        Some(Transition {
            healthy,
            reason: reason(),
        })
    }
}

/// In-flight marker: decrements the endpoint's in-flight count on drop.
#[derive(Debug)]
pub struct InflightGuard {
    state: Arc<EndpointState>,
}

impl InflightGuard {
    pub fn state(&self) -> &Arc<EndpointState> {
        &self.state
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.state.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            base_ejection_ms: 1_000,
            max_ejection_ms: 8_000,
        }
    }

    fn eject_by_failures(s: &EndpointState, now: u64) -> Option<Transition> {
        assert_eq!(s.record_failure(now, "boom"), None);
        assert_eq!(s.record_failure(now, "boom"), None);
        s.record_failure(now, "boom")
    }

    #[test]
    fn threshold_ejects_with_one_transition() {
        let s = EndpointState::new(cfg());
        assert!(s.is_available(0));
        assert_eq!(s.record_failure(10, "connect refused"), None);
        assert_eq!(s.record_failure(20, "connect refused"), None);
        assert!(s.is_available(20), "below the threshold");
        let t = s.record_failure(30, "503").unwrap();
        assert!(!t.healthy);
        assert!(
            t.reason.contains("3 consecutive failures") && t.reason.contains("503"),
            "{t:?}"
        );
        assert!(!s.is_available(30));
        assert!(!s.is_available(1_029));
        let view = s.snapshot(30);
        assert!(!view.healthy);
        assert_eq!(view.ejected_until_ms, Some(1_030));
        assert_eq!(view.last_error.as_deref(), Some("503"));
        // More failures while open: no second transition, no longer ejection.
        assert_eq!(s.record_failure(40, "503"), None);
        assert_eq!(s.snapshot(40).ejected_until_ms, Some(1_030));
    }

    #[test]
    fn a_success_resets_the_consecutive_count() {
        let s = EndpointState::new(cfg());
        s.record_failure(0, "x");
        s.record_failure(0, "x");
        assert_eq!(s.record_success(0, 1_000), None);
        assert_eq!(s.record_failure(0, "x"), None);
        assert_eq!(s.record_failure(0, "x"), None);
        assert!(s.is_available(0));
        assert_eq!(s.consecutive_failures(), 2);
    }

    #[test]
    fn single_half_open_trial_and_growing_ejection() {
        let s = EndpointState::new(cfg());
        assert!(eject_by_failures(&s, 0).is_some());
        assert_eq!(s.status(999), Status::Blocked(1_000));
        assert!(!s.try_take_trial(999), "no trial before the ejection ends");
        assert_eq!(s.status(1_000), Status::TrialReady);
        assert!(!s.is_available(1_000), "half-open is not open for normal traffic");
        assert!(s.try_take_trial(1_000));
        assert!(!s.try_take_trial(1_000), "exactly one trial");
        assert!(!s.try_take_trial(1_500));
        // The trial fails: ejected again, twice as long, and no second transition.
        assert_eq!(s.record_failure(1_200, "timeout"), None);
        assert_eq!(s.snapshot(1_200).ejected_until_ms, Some(3_200));
        assert!(s.try_take_trial(3_200));
        assert_eq!(s.record_failure(3_200, "timeout"), None);
        assert_eq!(s.snapshot(3_200).ejected_until_ms, Some(7_200));
        assert!(s.try_take_trial(7_200));
        assert_eq!(s.record_failure(7_200, "timeout"), None);
        assert_eq!(s.snapshot(7_200).ejected_until_ms, Some(15_200), "8 s, the cap");
        assert!(s.try_take_trial(15_200));
        assert_eq!(s.record_failure(15_200, "timeout"), None);
        assert_eq!(
            s.snapshot(15_200).ejected_until_ms,
            Some(23_200),
            "stays at the cap"
        );
    }

    #[test]
    fn trial_success_restores_once() {
        let s = EndpointState::new(cfg());
        eject_by_failures(&s, 0).unwrap();
        assert!(s.try_take_trial(1_000));
        let t = s.record_success(1_100, 5_000).unwrap();
        assert!(t.healthy);
        assert!(s.is_available(1_100));
        assert_eq!(s.record_success(1_200, 5_000), None);
        assert_eq!(s.consecutive_failures(), 0);
        assert!(s.snapshot(1_200).healthy);
        assert_eq!(s.snapshot(1_200).ejected_until_ms, None);
    }

    #[test]
    fn multiplier_resets_only_after_a_success_streak() {
        let s = EndpointState::new(cfg());
        eject_by_failures(&s, 0).unwrap();
        s.record_success(1_000, 1).unwrap();
        // Flapping: back to failing right after one good trial: 2 s, not 1 s.
        eject_by_failures(&s, 2_000).unwrap();
        assert_eq!(s.snapshot(2_000).ejected_until_ms, Some(4_000));
        s.record_success(4_000, 1).unwrap();
        for _ in 1..EJECTION_RESET_STREAK {
            s.record_success(4_000, 1);
        }
        eject_by_failures(&s, 5_000).unwrap();
        assert_eq!(
            s.snapshot(5_000).ejected_until_ms,
            Some(6_000),
            "back to the base"
        );
    }

    #[test]
    fn lost_trial_is_readmitted_after_a_base_period() {
        let s = EndpointState::new(cfg());
        eject_by_failures(&s, 0).unwrap();
        assert!(s.try_take_trial(1_000));
        assert_eq!(s.status(1_999), Status::Blocked(2_000));
        assert_eq!(s.status(2_000), Status::TrialReady);
        assert!(s.try_take_trial(2_000));
    }

    #[test]
    fn eject_is_immediate_and_a_burst_is_one_event() {
        let s = EndpointState::new(cfg());
        let t = s.eject(100, "upstream 401").unwrap();
        assert_eq!(
            t,
            Transition {
                healthy: false,
                reason: "upstream 401".into()
            }
        );
        assert!(!s.is_available(100));
        assert_eq!(s.eject(150, "upstream 401"), None);
        assert_eq!(s.snapshot(150).ejected_until_ms, Some(1_100), "not extended");
        assert_eq!(s.last_error().as_deref(), Some("upstream 401"));
    }

    #[test]
    fn cooldown_is_not_a_transition() {
        let s = EndpointState::new(cfg());
        s.cool_down(5_000);
        assert!(!s.is_available(4_999));
        assert!(s.is_healthy());
        let view = s.snapshot(100);
        assert!(view.healthy);
        assert_eq!(view.cooldown_until_ms, Some(5_000));
        // An earlier Retry-After does not shorten a running cooldown.
        s.cool_down(2_000);
        assert!(!s.is_available(3_000));
        assert!(s.is_available(5_000));
        assert_eq!(s.snapshot(5_000).cooldown_until_ms, None);
        assert_eq!(s.consecutive_failures(), 0);
    }

    #[test]
    fn probe_down_until_a_probe_succeeds() {
        let s = EndpointState::new(cfg());
        let t = s.set_probe_result(0, false, "probe: 500").unwrap();
        assert!(!t.healthy);
        assert_eq!(s.set_probe_result(10, false, "probe: 500"), None, "once per flip");
        assert!(!s.is_available(1_000_000));
        // Traffic successes do not override the probe.
        assert_eq!(s.record_success(20, 1), None);
        assert!(!s.is_available(20));
        let t = s.set_probe_result(30, true, "probe ok").unwrap();
        assert_eq!(
            t,
            Transition {
                healthy: true,
                reason: "probe ok".into()
            }
        );
        assert!(s.is_available(30));
        assert_eq!(s.set_probe_result(40, true, "probe ok"), None);
    }

    #[test]
    fn probe_success_clears_a_passive_ejection() {
        let s = EndpointState::new(cfg());
        eject_by_failures(&s, 0).unwrap();
        let t = s.set_probe_result(10, true, "probe ok").unwrap();
        assert!(t.healthy);
        assert!(s.is_available(10));
    }

    #[test]
    fn probe_down_while_ejected_flips_once() {
        let s = EndpointState::new(cfg());
        eject_by_failures(&s, 0).unwrap();
        assert_eq!(s.set_probe_result(10, false, "probe: refused"), None);
        // The trial succeeds but the probe still says down: still unhealthy.
        assert!(s.try_take_trial(1_000));
        assert_eq!(s.record_success(1_000, 1), None);
        assert!(!s.is_available(1_000));
        assert!(s.set_probe_result(1_100, true, "probe ok").unwrap().healthy);
    }

    #[test]
    fn concurrent_failures_flip_exactly_once() {
        let s = EndpointState::new(cfg());
        let flips = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| (0..100).filter(|_| s.record_failure(0, "boom").is_some()).count()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum::<usize>()
        });
        assert_eq!(flips, 1);
    }

    #[test]
    fn inflight_guard_counts_until_drop() {
        let s = EndpointState::new(cfg());
        let a = s.start();
        let b = s.start();
        assert_eq!(s.inflight(), 2);
        drop(a);
        assert_eq!(s.snapshot(0).inflight, 1);
        drop(b);
        assert_eq!(s.inflight(), 0);
    }

    #[test]
    fn ewma_starts_unknown_then_moves_by_alpha() {
        let s = EndpointState::new(cfg());
        assert_eq!(s.ewma_ttfb_us(), None);
        s.record_success(0, 100_000);
        assert_eq!(s.ewma_ttfb_us(), Some(100_000.0));
        s.record_success(0, 200_000);
        let e = s.ewma_ttfb_us().unwrap();
        assert!((e - 120_000.0).abs() < 1e-6, "{e}");
        assert_eq!(s.snapshot(0).ewma_ttfb_ms, Some(e / 1000.0));
    }

    #[test]
    fn ejection_lengths() {
        let c = cfg();
        assert_eq!(
            (1..=6).map(|n| c.ejection_ms(n)).collect::<Vec<_>>(),
            [1_000, 2_000, 4_000, 8_000, 8_000, 8_000]
        );
        assert_eq!(c.ejection_ms(u32::MAX), 8_000);
    }
}
