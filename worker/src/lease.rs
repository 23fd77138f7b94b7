//! The lease client: an owned, cancellable task that keeps this worker instance's
//! slices of the limits (`limits`) renewed with control's `WorkerApi.Lease`.
//!
//! While the snapshot has limits it sends one claim per limit every [`PERIOD`]
//! (`used`, `ceiling`, `refused`, absolute in the window, and `want`: the consumption of
//! the last second × the period × 4, plus what was refused since the last claim, at least
//! a minimum slice while there was demand within [`KEEP_ASKING`], else 0; for
//! concurrency the level now plus what was refused, and never below the ceiling held
//! while there was demand), and at
//! once when an admission finds a slice's headroom below half of it (`Shared::lease_wake`,
//! poked once per grant by the request that crosses that edge: no wake-up per request).
//! Grants are applied to the limits' atomics. Control unreachable: it backs off (up to
//! [`MAX_BACKOFF`]) and the grants run out, after which each limit follows its
//! `on_outage`. Without limits it sleeps until a snapshot brings some.
use std::{sync::Arc, time::Duration};

use rustc_hash::FxHashMap;
use switchyard_proto as pb;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    limits::{Grant, Kind, LimitState},
    Secret, Shared,
};

/// How often slices are renewed while limits apply.
pub const PERIOD: Duration = Duration::from_millis(250);
/// The shortest gap between two claims (pokes coming faster wait for it).
pub const MIN_GAP: Duration = Duration::from_millis(20);
/// The longest wait between tries while control cannot be reached.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// A limit with demand (a request admitted or refused) within this long keeps asking for
/// at least its minimum slice, so a client that waits out a `Retry-After` finds the slice
/// its refusal asked for still held; after it, an idle worker asks for nothing and its
/// slice goes back to the fleet.
pub const KEEP_ASKING: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub control_url: String,
    pub worker_token: Option<Secret>,
    pub tls: switchyard_proto::channel::ClientTls,
    pub worker_id: String,
    /// New at every start (control keeps consumption per instance).
    pub instance_id: String,
}

/// One limit's consumption a second or so ago (for `want`).
#[derive(Debug, Clone, Copy)]
struct Sample {
    window: i64,
    at_ms: i64,
    used: u64,
    /// The last claim that found demand (consumption or a refusal) since the one before.
    active_ms: i64,
}

/// The claim for `l` at `now_ms`, and the `used` it reports.
fn claim(l: &LimitState, now_ms: i64, samples: &mut FxHashMap<Arc<str>, Sample>) -> pb::LeaseClaim {
    let v = l.claim_view(now_ms);
    let s = samples.entry(l.def.name.clone()).or_insert(Sample {
        window: v.window_start_ms,
        at_ms: now_ms,
        used: v.used,
        active_ms: i64::MIN,
    });
    if s.window != v.window_start_ms {
        *s = Sample {
            window: v.window_start_ms,
            at_ms: now_ms,
            used: 0,
            active_ms: s.active_ms,
        };
    }
    let keep = KEEP_ASKING.as_millis() as i64;
    let period = PERIOD.as_millis() as u64;
    let want = if l.def.kind == Kind::Concurrency {
        // In flight now, and what was turned away.
        if v.used > 0 || v.refused_amount > 0 {
            s.active_ms = now_ms;
        }
        if now_ms.saturating_sub(s.active_ms) < keep {
            // The level now, what was turned away, and one more; and while there is
            // demand, never less than the ceiling held: the level at the instant of a
            // claim says little of the peak between claims (asking for it alone made the
            // ceiling follow each dip, and the next burst was refused).
            (v.used + v.refused_amount + 1).max(v.ceiling)
        } else {
            0
        }
    } else {
        let span = (now_ms - s.at_ms).max(1) as u64;
        let delta = v.used.saturating_sub(s.used);
        // Enough for four periods at the last second's rate: a slice outlasts a renewal
        // that is slow to come back (a loaded control) rather than refusing meanwhile.
        let rate_want = delta.saturating_mul(period * 4) / span.max(period);
        if delta > 0 || v.refused_amount > 0 {
            s.active_ms = now_ms;
        }
        if now_ms.saturating_sub(s.active_ms) < keep {
            rate_want.saturating_add(v.refused_amount).max(min_want(l))
        } else {
            0
        }
    };
    if now_ms - s.at_ms >= 1_000 {
        *s = Sample {
            window: v.window_start_ms,
            at_ms: now_ms,
            used: v.used,
            active_ms: s.active_ms,
        };
    }
    pb::LeaseClaim {
        limit: l.def.name.to_string(),
        window_start_ms: v.window_start_ms,
        used: v.used,
        ceiling: v.ceiling,
        want,
        refused: v.refused,
    }
}

/// The least a limit with traffic asks for: a request or two's worth.
fn min_want(l: &LimitState) -> u64 {
    let m = match l.def.kind {
        Kind::Requests | Kind::Concurrency => 4,
        Kind::Tokens | Kind::InputTokens | Kind::OutputTokens => 2 * crate::limits::DEFAULT_OUTPUT_ESTIMATE,
        Kind::Spend => l.def.amount / 1_000,
    };
    m.clamp(1, l.def.amount.max(1))
}

/// The task: runs until `cancel`.
pub async fn run(shared: Arc<Shared>, cfg: LeaseConfig, cancel: CancellationToken) {
    let mut client: Option<pb::worker_api_client::WorkerApiClient<tonic::transport::Channel>> = None;
    let mut samples: FxHashMap<Arc<str>, Sample> = FxHashMap::default();
    let mut backoff = Duration::ZERO;
    let mut failing = false;
    loop {
        let limits: Vec<Arc<LimitState>> = shared
            .routing
            .load_full()
            .map(|r| r.limits.clone())
            .unwrap_or_default();
        if limits.is_empty() {
            samples.clear();
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = shared.lease_wake.notified() => continue,
            }
        }
        let now = crate::unix_ms();
        let claims: Vec<pb::LeaseClaim> = limits.iter().map(|l| claim(l, now, &mut samples)).collect();
        samples.retain(|k, _| limits.iter().any(|l| l.def.name == *k));
        // (window, used) of each claim, in the order of `limits`.
        let sent: Vec<(i64, u64)> = claims.iter().map(|c| (c.window_start_ms, c.used)).collect();
        if client.is_none() {
            match switchyard_proto::channel::endpoint(&cfg.control_url, &cfg.tls) {
                Ok(ep) => {
                    let ch = ep
                        .connect_timeout(Duration::from_secs(2))
                        .timeout(Duration::from_secs(2))
                        .tcp_nodelay(true)
                        .connect_lazy();
                    client = Some(pb::worker_api_client::WorkerApiClient::new(ch));
                }
                Err(e) => {
                    // A configuration error (the URL, the TLS files): say so, retry slowly.
                    warn!(control = %cfg.control_url, error = %e, "cannot set up the lease client");
                }
            }
        }
        let result = match &mut client {
            None => Err("no client".to_string()),
            Some(c) => {
                let mut req = tonic::Request::new(pb::LeaseRequest {
                    worker_id: cfg.worker_id.clone(),
                    instance_id: cfg.instance_id.clone(),
                    claims,
                });
                if let Some(t) = &cfg.worker_token {
                    if let Ok(v) = format!("Bearer {}", t.expose()).parse() {
                        req.metadata_mut().insert("authorization", v);
                    }
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = c.lease(req) => r.map(tonic::Response::into_inner).map_err(|s| format!("{}: {}", s.code(), s.message())),
                }
            }
        };
        match result {
            Ok(resp) => {
                if std::mem::take(&mut failing) {
                    info!(control = %cfg.control_url, "leasing limits from control again");
                }
                backoff = Duration::ZERO;
                for g in &resp.grants {
                    let Some(i) = limits.iter().position(|l| *l.def.name == *g.limit) else {
                        continue;
                    };
                    let l = &limits[i];
                    // A grant for a newer window than claimed: nothing used in it yet.
                    let claimed = match sent[i] {
                        (w, used) if w == g.window_start_ms => used,
                        _ => 0,
                    };
                    l.apply_grant(
                        &Grant {
                            window_start_ms: g.window_start_ms,
                            ceiling: g.ceiling,
                            fleet_used: g.fleet_used,
                            expires_at_ms: g.expires_at_ms,
                        },
                        claimed,
                    );
                }
                // Requests waiting for a slice re-try their admission.
                shared.lease_granted.notify_waiters();
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    warn!(control = %cfg.control_url, error = %e, "cannot lease limits from control; each limit follows its on_outage once its grant expires");
                }
                backoff = (backoff * 2).clamp(PERIOD, MAX_BACKOFF);
                // A broken channel is rebuilt (certificates re-read) on the next try.
                client = None;
            }
        }
        // Pokes wait for the minimum gap, then cut the period short (not a backoff).
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(MIN_GAP) => {}
        }
        let wait = PERIOD.saturating_sub(MIN_GAP) + backoff;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = shared.lease_wake.notified(), if backoff.is_zero() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::limits::{LimitDef, Mode, Outage, Scope};

    /// Admission without metrics or a lease task to wake.
    const ENV: crate::limits::Env<'static> = crate::limits::Env {
        metrics: None,
        wake: None,
        count_slice: true,
    };

    fn state(kind: Kind, amount: u64) -> LimitState {
        LimitState::new(LimitDef {
            name: "l".into(),
            scope: Scope::Team("t".into()),
            kind,
            window: (kind != Kind::Concurrency).then_some(switchyard_common::window::Window::Minute),
            amount,
            mode: Mode::Enforce,
            on_outage: Outage::Closed,
        })
    }

    /// No traffic: want 0 (an idle worker holds no more than its last small slice).
    /// Traffic: four times what a period consumes at the last second's rate, at least a
    /// minimum; what was refused is asked for on top.
    #[test]
    fn want_follows_the_rate() {
        let l = state(Kind::Requests, 10_000);
        let mut samples = FxHashMap::default();
        let t0 = 60_000 * 100;
        assert_eq!(claim(&l, t0, &mut samples).want, 0);
        l.apply_grant(
            &Grant {
                window_start_ms: t0,
                ceiling: 1_000,
                fleet_used: 0,
                expires_at_ms: t0 + 5_000,
            },
            0,
        );
        // 100 requests over the next second: 100/s → 4 × 25 = 100.
        let shared_l = Arc::new(l);
        let set: crate::limits::LimitSet = Arc::from(vec![shared_l.clone()]);
        for _ in 0..100 {
            let mut h = crate::limits::Held::default();
            h.admit(0, &set, crate::limits::Estimate::default(), t0 + 10, &ENV)
                .unwrap();
        }
        let c = claim(&shared_l, t0 + 1_000, &mut samples);
        assert_eq!((c.used, c.want, c.ceiling), (100, 100, 1_000));
        // A quiet second later: the minimum (a client waiting out a Retry-After finds its
        // slice still there); once quiet for KEEP_ASKING, nothing.
        assert_eq!(claim(&shared_l, t0 + 2_000, &mut samples).want, 4);
        let later = t0 + 1_000 + KEEP_ASKING.as_millis() as i64;
        assert_eq!(claim(&shared_l, later, &mut samples).want, 0);
    }

    /// A concurrency limit asks for the ceiling it holds while it sees demand (the level
    /// at a claim's instant is no guide to the next burst), and for nothing once idle for
    /// `KEEP_ASKING`.
    #[test]
    fn a_concurrency_limit_keeps_its_ceiling_while_in_demand() {
        let l = Arc::new(state(Kind::Concurrency, 100_000));
        let mut samples = FxHashMap::default();
        let t0 = 60_000 * 100;
        let c = claim(&l, t0, &mut samples);
        l.apply_grant(
            &Grant {
                window_start_ms: c.window_start_ms,
                ceiling: 10,
                fleet_used: 0,
                expires_at_ms: t0 + 60_000,
            },
            0,
        );
        let set: crate::limits::LimitSet = Arc::from(vec![l.clone()]);
        let mut h = crate::limits::Held::default();
        h.admit(0, &set, crate::limits::Estimate::default(), t0 + 10, &ENV)
            .unwrap();
        let c = claim(&l, t0 + 250, &mut samples);
        assert_eq!((c.used, c.want), (1, 10), "{c:?}");
        h.settle_at(None, None, t0 + 300);
        assert_eq!(claim(&l, t0 + 500, &mut samples).want, 10);
        let later = t0 + 250 + KEEP_ASKING.as_millis() as i64;
        assert_eq!(claim(&l, later, &mut samples).want, 0);
    }

    /// A concurrency limit with no grant yet: the refused request is asked for, and the
    /// grant admits the next one.
    #[test]
    fn a_refused_concurrency_request_is_asked_for() {
        let l = Arc::new(state(Kind::Concurrency, 100_000));
        let mut samples = FxHashMap::default();
        let t0 = 60_000 * 100;
        let set: crate::limits::LimitSet = Arc::from(vec![l.clone()]);
        let c = claim(&l, t0, &mut samples);
        assert_eq!(c.want, 0);
        l.apply_grant(
            &Grant {
                window_start_ms: c.window_start_ms,
                ceiling: 0,
                fleet_used: 0,
                expires_at_ms: t0 + 5_000,
            },
            0,
        );
        let mut h = crate::limits::Held::default();
        assert!(h
            .admit(0, &set, crate::limits::Estimate::default(), t0 + 10, &ENV)
            .is_err());
        let c = claim(&l, t0 + 20, &mut samples);
        assert_eq!(c.want, 2, "{c:?}");
        l.apply_grant(
            &Grant {
                window_start_ms: c.window_start_ms,
                ceiling: 2,
                fleet_used: 0,
                expires_at_ms: t0 + 5_000,
            },
            0,
        );
        let mut h = crate::limits::Held::default();
        h.admit(0, &set, crate::limits::Estimate::default(), t0 + 30, &ENV)
            .unwrap();
    }
}
