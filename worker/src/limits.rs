//! Limits (quotas) on the worker side: admission, settle, window roll-over and outage
//! behaviour, decided locally with a few atomic operations per limit and request.
//!
//! Control leases each worker instance a slice of every limit (`lease`, the Doorman
//! pattern of limits-design.md): a grant says how far this instance's own consumption
//! (`used`, absolute in the window, reservations included) may go (`ceiling`) until it
//! expires. Admission of an `enforce` limit is `used + estimate <= ceiling` (a `fetch_add`,
//! undone when over); `observe` always admits and counts what `enforce` would have
//! refused. Settle (`relay::Finish`) replaces the estimate with the real usage and ends a
//! concurrency slot. A grant past its expiry (control unreachable) leaves each limit to
//! its `on_outage`: `closed` refuses, `open` admits and counts locally.
//!
//! Which limits apply to a key (its own and its team's), a model or a credential is
//! resolved once per snapshot (`convert`) into a [`LimitSet`]: a key without limits has
//! `None` and its requests do nothing here. Live state ([`LimitState`]) is carried into
//! the next snapshot when the limit's definition is unchanged (`config::States`).
//!
//! Units: `requests` 1 per admitted request; `tokens`/`input_tokens`/`output_tokens`
//! reserve an estimate (input ≈ body bytes / 4; output = the body's `max_tokens`,
//! `max_completion_tokens` or `max_output_tokens`, else [`DEFAULT_OUTPUT_ESTIMATE`]; capped
//! at the limit's amount) and settle with the usage record's tokens; `spend` reserves one
//! nano-unit (the price is known only once a backend is) and settles with the record's
//! cost (unpriced counts 0); `concurrency` is +1 at
//! admission and −1 at settle, not windowed.
//!
//! At a window's edge a reservation made in the old window and settled in the new one
//! adjusts nothing (the old window is over); a request racing the roll-over itself may be
//! counted in either window.
use std::sync::{
    atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    Arc, OnceLock,
};

use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use switchyard_common::window::Window;

use crate::{account::Usage, errors::Dialect};

/// The output estimate of a request that sets no `max_tokens` (nor its aliases).
pub const DEFAULT_OUTPUT_ESTIMATE: u64 = 1024;

/// `Retry-After` of a refusal while control cannot be reached (`on_outage = closed`).
pub const OUTAGE_RETRY_AFTER_S: u64 = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Requests,
    Tokens,
    InputTokens,
    OutputTokens,
    Concurrency,
    Spend,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "requests" => Kind::Requests,
            "tokens" => Kind::Tokens,
            "input_tokens" => Kind::InputTokens,
            "output_tokens" => Kind::OutputTokens,
            "concurrency" => Kind::Concurrency,
            "spend" => Kind::Spend,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::Tokens => "tokens",
            Kind::InputTokens => "input tokens",
            Kind::OutputTokens => "output tokens",
            Kind::Concurrency => "concurrent requests",
            Kind::Spend => "spend",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Enforce,
    Observe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outage {
    Closed,
    Open,
}

/// What a limit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Key(String),
    Team(String),
    Model(String),
    Credential { provider: String, name: String },
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        let (tag, rest) = s.split_once(':')?;
        if rest.is_empty() {
            return None;
        }
        Some(match tag {
            "key" => Scope::Key(rest.into()),
            "team" => Scope::Team(rest.into()),
            "model" => Scope::Model(rest.into()),
            "credential" => {
                let (p, n) = rest.split_once('/')?;
                if p.is_empty() || n.is_empty() {
                    return None;
                }
                Scope::Credential {
                    provider: p.into(),
                    name: n.into(),
                }
            }
            _ => return None,
        })
    }

    /// Who the limit is for, in a refusal's message (no name: the client knows its key,
    /// and a team's or model's name is the operator's).
    fn who(&self) -> &'static str {
        match self {
            Scope::Key(_) => "this key",
            Scope::Team(_) => "this key's team",
            Scope::Model(_) => "this model",
            Scope::Credential { .. } => "the upstream account",
        }
    }
}

/// A validated limit (`convert` builds it from the snapshot).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitDef {
    pub name: Arc<str>,
    pub scope: Scope,
    pub kind: Kind,
    /// `None` for concurrency (not windowed).
    pub window: Option<Window>,
    pub amount: u64,
    pub mode: Mode,
    pub on_outage: Outage,
}

/// The limits one key, model or credential answers to, resolved once per snapshot.
pub type LimitSet = Arc<[Arc<LimitState>]>;

/// One limit's live state in this worker instance. Carried across snapshot swaps while
/// the definition is the same.
#[derive(Debug)]
pub struct LimitState {
    pub def: LimitDef,
    /// The window `used` counts in (0: concurrency).
    window: AtomicI64,
    /// This instance's consumption in `window`, reservations included (concurrency: in
    /// flight now).
    used: AtomicU64,
    /// Requests refused for this limit in `window` (claims report it).
    refused: AtomicU64,
    /// What the refused requests would have consumed since the last claim (added to the
    /// next claim's `want`).
    refused_amount: AtomicU64,
    /// The last grant: `ceiling` for `grant_window` (stored before it, read after it).
    ceiling: AtomicU64,
    grant_window: AtomicI64,
    /// Unix ms after which the grant is void; 0: never granted.
    expires_at_ms: AtomicI64,
    /// The fleet's consumption when control answered, and this instance's `used` in the
    /// claim it answered (the remaining-quota headers).
    fleet_used: AtomicU64,
    claimed_used: AtomicU64,
    /// Headroom below which the lease task is woken (half the last slice), once per grant.
    low_at: AtomicU64,
    poked: AtomicBool,
    /// Serialises window roll-overs (once per window; never on the common path).
    roll: parking_lot::Mutex<()>,
    refusals: OnceLock<Counter>,
    observed_over: OnceLock<Counter>,
    /// `def.amount` as a header value (the remaining-quota headers' limit), built once:
    /// a request's copy is a reference count.
    amount_header: HeaderValue,
}

impl LimitState {
    pub fn new(def: LimitDef) -> Self {
        Self {
            amount_header: HeaderValue::from(def.amount),
            def,
            window: AtomicI64::new(0),
            used: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            refused_amount: AtomicU64::new(0),
            ceiling: AtomicU64::new(0),
            grant_window: AtomicI64::new(0),
            expires_at_ms: AtomicI64::new(0),
            fleet_used: AtomicU64::new(0),
            claimed_used: AtomicU64::new(0),
            low_at: AtomicU64::new(0),
            poked: AtomicBool::new(false),
            roll: parking_lot::Mutex::new(()),
            refusals: OnceLock::new(),
            observed_over: OnceLock::new(),
        }
    }

    /// The window `now_ms` falls in (0 for concurrency).
    pub fn window_of(&self, now_ms: i64) -> i64 {
        self.def.window.map_or(0, |w| w.start_ms(now_ms))
    }

    /// The window in force at `now_ms`, rolling this instance's counters over if a new
    /// one began.
    fn current_window(&self, now_ms: i64) -> i64 {
        let ws = self.window_of(now_ms);
        if self.window.load(Ordering::Acquire) < ws {
            let _g = self.roll.lock();
            if self.window.load(Ordering::Acquire) < ws {
                self.used.store(0, Ordering::Relaxed);
                self.refused.store(0, Ordering::Relaxed);
                self.window.store(ws, Ordering::Release);
            }
        }
        ws
    }

    /// What `est` reserves of this limit.
    fn amount_of(&self, est: Estimate) -> u64 {
        let a = match self.def.kind {
            Kind::Requests | Kind::Concurrency => 1,
            Kind::Tokens => est.input.saturating_add(est.output),
            Kind::InputTokens => est.input,
            Kind::OutputTokens => est.output,
            // Spend reserves one nano-unit (settled with the real cost): a slice spent to
            // its last unit refuses.
            Kind::Spend => 1,
        };
        a.min(self.def.amount.max(1))
    }

    /// The ceiling granted for window `ws`, if the grant is for it.
    fn ceiling_for(&self, ws: i64) -> Option<u64> {
        (self.grant_window.load(Ordering::Acquire) == ws).then(|| self.ceiling.load(Ordering::Relaxed))
    }

    /// Reserve `amt` at `now_ms`; `Err` refuses the request.
    fn reserve(&self, amt: u64, now_ms: i64, env: &Env<'_>) -> Result<(), Refused> {
        let ws = self.current_window(now_ms);
        let expired = now_ms >= self.expires_at_ms.load(Ordering::Relaxed);
        if self.def.mode == Mode::Observe {
            let prev = self.used.fetch_add(amt, Ordering::Relaxed);
            // Over the slice held, or (no grant) over the whole amount on this instance.
            let ceiling = match self.ceiling_for(ws) {
                Some(c) if !expired => c,
                _ => self.def.amount,
            };
            if prev + amt > ceiling {
                self.observed_over
                    .get_or_init(|| env.observed_over(&self.def.name))
                    .inc();
            }
            return Ok(());
        }
        if expired {
            if self.def.on_outage == Outage::Open {
                self.used.fetch_add(amt, Ordering::Relaxed);
                self.low(env);
                return Ok(());
            }
            return Err(self.refuse(amt, env, OUTAGE_RETRY_AFTER_S));
        }
        let ceiling = self.ceiling_for(ws).unwrap_or(0);
        let prev = self.used.fetch_add(amt, Ordering::Relaxed);
        let now_used = prev.saturating_add(amt);
        if now_used > ceiling {
            sub(&self.used, amt);
            // The fleet is out (as far as this instance knows): retry when the window
            // resets; else only this instance's slice is: retry at once (a new slice is
            // on its way).
            let fleet = self
                .fleet_used
                .load(Ordering::Relaxed)
                .saturating_add(prev.saturating_sub(self.claimed_used.load(Ordering::Relaxed)));
            let retry = match self.def.window {
                Some(w) if fleet.saturating_add(amt) > self.def.amount => {
                    ((w.end_ms(now_ms) - now_ms).max(0) as u64).div_ceil(1000).max(1)
                }
                _ => 1,
            };
            return Err(self.refuse(amt, env, retry));
        }
        if ceiling - now_used < self.low_at.load(Ordering::Relaxed) {
            self.low(env);
        }
        Ok(())
    }

    /// Wake the lease task, once per grant (the low-headroom edge).
    fn low(&self, env: &Env<'_>) {
        if !self.poked.load(Ordering::Relaxed) && !self.poked.swap(true, Ordering::Relaxed) {
            if let Some(w) = env.wake {
                w.notify_one();
            }
        }
    }

    #[cold]
    fn refuse(&self, amt: u64, env: &Env<'_>, retry_after_s: u64) -> Refused {
        self.refused_amount.fetch_add(amt.max(1), Ordering::Relaxed);
        // Only this instance's slice is out (a new one is asked for below).
        let slice = retry_after_s == 1;
        if !slice || env.count_slice {
            self.count_refusal(env);
        }
        if slice {
            // Ask for more now. (The fleet out, or control away: asking sooner changes
            // nothing.)
            self.low(env);
        }
        Refused {
            kind: self.def.kind,
            window: self.def.window,
            who: self.def.scope.who(),
            retry_after_s,
            slice,
            limit: self.def.name.clone(),
        }
    }

    /// A refusal the client gets: in the claims' `refused` (the fleet's count in
    /// `limits list`) and in `/metrics`. (A slice refusal that may still be admitted by
    /// a grant is counted by [`wait_for_grant`] only if it stays refused.)
    #[cold]
    fn count_refusal(&self, env: &Env<'_>) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.refusals.get_or_init(|| env.refusals(&self.def.name)).inc();
    }

    /// Undo a reservation of `amt` made at `ts_ms` (same window only).
    fn release(&self, amt: u64, ts_ms: i64, now_ms: i64) {
        if amt > 0 && self.window_of(ts_ms) == self.current_window(now_ms) {
            sub(&self.used, amt);
        }
    }

    /// Replace a reservation of `reserved` made at `ts_ms` with `real`.
    fn adjust(&self, reserved: u64, real: u64, ts_ms: i64, now_ms: i64) {
        if reserved == real || self.window_of(ts_ms) != self.current_window(now_ms) {
            return;
        }
        if real > reserved {
            self.used.fetch_add(real - reserved, Ordering::Relaxed);
        } else {
            sub(&self.used, reserved - real);
        }
    }

    /// Take a grant from control: `claimed` is the `used` the claim it answers sent.
    pub fn apply_grant(&self, g: &Grant, claimed: u64) {
        let ws = self.window.load(Ordering::Acquire);
        if g.window_start_ms < ws {
            return; // for a window already over here
        }
        if g.window_start_ms > ws {
            // Control is in a newer window: roll over.
            let _ = self.current_window(g.window_start_ms);
        }
        self.fleet_used.store(g.fleet_used, Ordering::Relaxed);
        self.claimed_used.store(claimed, Ordering::Relaxed);
        self.ceiling.store(g.ceiling, Ordering::Relaxed);
        self.grant_window.store(g.window_start_ms, Ordering::Release);
        self.expires_at_ms.store(g.expires_at_ms, Ordering::Relaxed);
        self.low_at
            .store(g.ceiling.saturating_sub(claimed) / 2, Ordering::Relaxed);
        self.poked.store(false, Ordering::Relaxed);
    }

    /// What a claim reports: (window, used, ceiling honoured, refused, refused amount
    /// since the last claim). Rolls the window over if due.
    pub fn claim_view(&self, now_ms: i64) -> ClaimView {
        let ws = self.current_window(now_ms);
        ClaimView {
            window_start_ms: ws,
            used: self.used.load(Ordering::Relaxed),
            ceiling: self.ceiling_for(ws).unwrap_or(0),
            refused: self.refused.load(Ordering::Relaxed),
            refused_amount: self.refused_amount.swap(0, Ordering::Relaxed),
            granted: now_ms < self.expires_at_ms.load(Ordering::Relaxed),
        }
    }

    /// (used, ceiling, granted) at `now_ms` for `/metrics`: 0 for a window not begun
    /// here, and for a grant expired or of another window.
    pub fn gauges(&self, now_ms: i64) -> (u64, u64, bool) {
        let ws = self.window_of(now_ms);
        let used = if self.window.load(Ordering::Acquire) == ws {
            self.used.load(Ordering::Relaxed)
        } else {
            0
        };
        let valid = now_ms < self.expires_at_ms.load(Ordering::Relaxed);
        (
            used,
            if valid {
                self.ceiling_for(ws).unwrap_or(0)
            } else {
                0
            },
            valid,
        )
    }

    /// This instance's consumption in the current window (tests, metrics).
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The ceiling granted for the current window (0: none).
    pub fn ceiling(&self) -> u64 {
        self.ceiling_for(self.window.load(Ordering::Acquire)).unwrap_or(0)
    }

    /// What remains fleet-wide as far as this instance knows: the amount less the
    /// fleet's use at the last grant and this instance's use since.
    pub fn remaining(&self, now_ms: i64) -> u64 {
        let ws = self.window_of(now_ms);
        let used = self.used.load(Ordering::Relaxed);
        let fleet =
            if self.grant_window.load(Ordering::Acquire) == ws && self.window.load(Ordering::Relaxed) == ws {
                self.fleet_used
                    .load(Ordering::Relaxed)
                    .saturating_add(used.saturating_sub(self.claimed_used.load(Ordering::Relaxed)))
            } else if self.window.load(Ordering::Relaxed) == ws {
                used
            } else {
                0
            };
        self.def.amount.saturating_sub(fleet)
    }
}

/// See [`LimitState::claim_view`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimView {
    pub window_start_ms: i64,
    pub used: u64,
    pub ceiling: u64,
    pub refused: u64,
    pub refused_amount: u64,
    /// An unexpired grant is held.
    pub granted: bool,
}

/// A grant from control, in domain terms (`lease` converts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub window_start_ms: i64,
    pub ceiling: u64,
    pub fleet_used: u64,
    pub expires_at_ms: i64,
}

fn sub(a: &AtomicU64, n: u64) {
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_sub(n))
    });
}

/// What a request is expected to consume, from its body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Estimate {
    pub input: u64,
    pub output: u64,
}

impl Estimate {
    /// Input ≈ body bytes / 4; output = the body's `max_tokens` (or
    /// `max_completion_tokens`, `max_output_tokens`), else [`DEFAULT_OUTPUT_ESTIMATE`].
    pub fn of(body_len: usize, max_output: Option<u64>) -> Self {
        Self {
            input: (body_len as u64).div_ceil(4),
            output: max_output.unwrap_or(DEFAULT_OUTPUT_ESTIMATE),
        }
    }
}

/// A refusal: which kind of limit, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub kind: Kind,
    pub window: Option<Window>,
    pub who: &'static str,
    pub retry_after_s: u64,
    /// Only this worker's slice is spent, not the fleet's quota (as far as it knows): a
    /// new slice was asked for, and the request may wait for it ([`wait_for_grant`]).
    pub slice: bool,
    /// The limit's name (`/metrics`).
    pub limit: Arc<str>,
}

/// A request refused for its worker's spent slice only (`Refused::slice`) waits for the
/// grant its refusal asked for, up to `Shared::limit_wait` (`--limit-wait`, 250 ms by
/// default: a lease round trip is a few ms), and `again` re-tries its admission at each
/// grant. Without it, a worker that was idle (an idle worker holds no slice, so as not
/// to hoard the fleet's quota) or whose traffic jumped would refuse requests that the
/// fleet has quota for. Any other refusal, or none to wait for, is final at once; a
/// final slice refusal is counted here, once (`/metrics` and the claims' `refused`). Boxed: only refused requests
/// take it, so the request's own future does not carry it.
pub fn wait_for_grant<'a, T: Send + 'a>(
    shared: &'a crate::Shared,
    first: Refused,
    mut again: impl FnMut() -> Result<T, Refused> + Send + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, Refused>> + Send + 'a>> {
    Box::pin(async move {
        let mut last = first;
        if last.slice && !shared.limit_wait.is_zero() {
            let deadline = tokio::time::Instant::now() + shared.limit_wait;
            // The refusal asked for a grant (`LimitState::low`), which comes a lease round
            // trip later: a re-try before it would be refused again, and count the
            // request's demand (`refused_amount`, the next claim's `want`) twice.
            let granted = shared.lease_granted.notified();
            tokio::pin!(granted);
            granted.as_mut().enable();
            loop {
                if tokio::time::timeout_at(deadline, granted.as_mut()).await.is_err() {
                    break;
                }
                // Registered before the re-try, so a grant landing in between is not missed.
                granted.set(shared.lease_granted.notified());
                granted.as_mut().enable();
                match again() {
                    Ok(t) => return Ok(t),
                    Err(r) if r.slice => last = r,
                    Err(r) => {
                        last = r;
                        break;
                    }
                }
            }
        }
        let env = shared.limit_env();
        if last.slice && !env.count_slice {
            // Counted once, now that it is final (a cold path: the limit by name).
            let routing = shared.routing.load();
            match routing
                .as_deref()
                .and_then(|r| r.limits.iter().find(|l| l.def.name == last.limit))
            {
                Some(l) => l.count_refusal(&env),
                None => {
                    shared.metrics.limit_refusals(&last.limit).inc();
                }
            }
        }
        Err(last)
    })
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "rate limit reached for {}: {}", self.who, self.kind.as_str())?;
        match self.window {
            Some(w) => write!(f, " per {}", w.as_str())?,
            None => f.write_str(" at once")?,
        }
        write!(f, "; retry after {} s", self.retry_after_s)
    }
}

/// What admission needs from the worker: metrics to resolve and the lease task to wake.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    pub metrics: Option<&'a crate::metrics::Metrics>,
    pub wake: Option<&'a tokio::sync::Notify>,
    /// Count a slice-only refusal in `/metrics` where it happens (else the caller counts
    /// it if it stays refused: [`wait_for_grant`]).
    pub count_slice: bool,
}

impl Env<'_> {
    fn refusals(&self, name: &str) -> Counter {
        self.metrics.map(|m| m.limit_refusals(name)).unwrap_or_default()
    }
    fn observed_over(&self, name: &str) -> Counter {
        self.metrics
            .map(|m| m.limit_observed_over(name))
            .unwrap_or_default()
    }
}

/// The reservations one request holds, settled once (`relay::Finish`). Empty (the
/// default) for a request no limit applies to.
#[derive(Debug, Default)]
pub struct Held {
    /// The key's limits, the model's, and the credential's of the last attempt.
    sets: [Option<LimitSet>; 3],
    est: Estimate,
    ts_ms: i64,
    /// The reservations are this `Held`'s to settle (a copy kept for the headers is not).
    owns: bool,
}

impl Held {
    /// Reserve `est` of every limit in `set` (slot 0: the key's, 1: the model's), all
    /// or none: a refusal releases what this request reserved so far, in every set.
    pub fn admit(
        &mut self,
        slot: usize,
        set: &LimitSet,
        est: Estimate,
        now_ms: i64,
        env: &Env<'_>,
    ) -> Result<(), Refused> {
        if slot > 0 && !self.owns {
            // A re-try after a refusal, which released the key's reservations too: take
            // them again first.
            if let Some(key) = self.sets[0].clone() {
                self.admit(0, &key, est, now_ms, env)?;
            }
        }
        if !self.owns {
            self.est = est;
            self.ts_ms = now_ms;
        }
        for (i, l) in set.iter().enumerate() {
            if let Err(r) = l.reserve(l.amount_of(self.est), now_ms, env) {
                for l in &set[..i] {
                    l.release(l.amount_of(self.est), now_ms, now_ms);
                }
                // This set holds nothing now: a re-try's refusal must not release the
                // set a previous refusal kept here (for the headers) a second time.
                self.sets[slot] = None;
                self.rollback(now_ms);
                // Kept for the remaining-quota headers of the refusal.
                self.sets[slot] = Some(set.clone());
                return Err(r);
            }
        }
        self.sets[slot] = Some(set.clone());
        self.owns = true;
        Ok(())
    }

    /// Reserve `est` of a credential's limits (the provider account's own), replacing
    /// the reservation of the previous attempt's credential. `Err`: the credential has no
    /// headroom (selection skips it); nothing else is released.
    pub fn admit_credential(
        &mut self,
        set: &LimitSet,
        est: Estimate,
        now_ms: i64,
        env: &Env<'_>,
    ) -> Result<(), Refused> {
        if !self.owns {
            self.est = est;
            self.ts_ms = now_ms;
        }
        if let Some(prev) = self.sets[2].take() {
            if self.owns {
                for l in prev.iter() {
                    l.release(l.amount_of(self.est), self.ts_ms, now_ms);
                }
            }
        }
        // A credential without headroom is skipped, not waited for: counted here.
        let env = &Env {
            count_slice: true,
            ..*env
        };
        for (i, l) in set.iter().enumerate() {
            if let Err(r) = l.reserve(l.amount_of(self.est), now_ms, env) {
                for l in &set[..i] {
                    l.release(l.amount_of(self.est), now_ms, now_ms);
                }
                return Err(r);
            }
        }
        self.sets[2] = Some(set.clone());
        self.owns = true;
        Ok(())
    }

    /// Release every reservation (the request was refused later on).
    fn rollback(&mut self, now_ms: i64) {
        if std::mem::take(&mut self.owns) {
            for l in self.sets.iter().flatten().flat_map(|s| s.iter()) {
                l.release(l.amount_of(self.est), self.ts_ms, now_ms);
            }
        }
    }

    /// The reservations, moved to the relayed body's `Finish`; this one keeps the sets
    /// (for the remaining-quota headers) and settles nothing.
    pub fn hand_over(&mut self) -> Held {
        if self.sets.iter().all(Option::is_none) {
            return Held::default();
        }
        let owns = std::mem::take(&mut self.owns);
        Held {
            sets: self.sets.clone(),
            est: self.est,
            ts_ms: self.ts_ms,
            owns,
        }
    }

    /// Settle: real usage replaces the estimates, concurrency slots end. `usage` `None`:
    /// nothing was consumed upstream.
    pub fn settle(&mut self, usage: Option<&Usage>, price: Option<&crate::account::Price>) {
        if self.owns {
            self.settle_at(usage, price, crate::unix_ms());
        }
    }

    /// [`Held::settle`] at `now`.
    pub fn settle_at(&mut self, usage: Option<&Usage>, price: Option<&crate::account::Price>, now: i64) {
        if !std::mem::take(&mut self.owns) {
            return;
        }
        let u = usage.copied().unwrap_or_default();
        for l in self.sets.iter().flatten().flat_map(|s| s.iter()) {
            let reserved = l.amount_of(self.est);
            let real = match l.def.kind {
                Kind::Requests => continue,
                Kind::Concurrency => {
                    sub(&l.used, 1);
                    continue;
                }
                Kind::Tokens => u.prompt_tokens.saturating_add(u.completion_tokens),
                Kind::InputTokens => u.prompt_tokens,
                Kind::OutputTokens => u.completion_tokens,
                Kind::Spend => crate::account::cost_of(price, &u).unwrap_or(0),
            };
            l.adjust(reserved, real, self.ts_ms, now);
        }
    }

    /// The remaining-quota headers of this request's key's and model's enforced limits,
    /// and the time they are for (none without such limits: no clock read).
    pub fn quota(&self) -> Option<(Quota, i64)> {
        if self.sets[..2].iter().all(Option::is_none) {
            return None;
        }
        let now = crate::unix_ms();
        self.quota_at(now).map(|q| (q, now))
    }

    fn quota_at(&self, now_ms: i64) -> Option<Quota> {
        let mut q = Quota::default();
        // The key's and the model's: a credential's limits are the operator's business.
        for l in self.sets[..2].iter().flatten().flat_map(|s| s.iter()) {
            let (i, w) = match (l.def.mode, l.def.kind, l.def.window) {
                (Mode::Enforce, Kind::Requests, Some(w)) => (0, w),
                (Mode::Enforce, Kind::Tokens, Some(w)) => (1, w),
                _ => continue,
            };
            let rem = l.remaining(now_ms);
            let slot = if i == 0 { &mut q.requests } else { &mut q.tokens };
            if slot.is_none_or(|(_, r, _)| rem < r) {
                *slot = Some((l.def.amount, rem, w.end_ms(now_ms)));
                q.amounts[i] = Some(l.amount_header.clone());
            }
        }
        (q.requests.is_some() || q.tokens.is_some()).then_some(q)
    }
}

/// The tightest enforced `requests` and `tokens` limits: (amount, remaining, reset at
/// unix ms).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Quota {
    pub requests: Option<(u64, u64, i64)>,
    pub tokens: Option<(u64, u64, i64)>,
    /// The amounts above as header values (`LimitState::amount_header`).
    amounts: [Option<HeaderValue>; 2],
}

static OPENAI: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("x-ratelimit-limit-requests"),
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ],
    [
        HeaderName::from_static("x-ratelimit-limit-tokens"),
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ],
];

static ANTHROPIC: [[HeaderName; 3]; 2] = [
    [
        HeaderName::from_static("anthropic-ratelimit-requests-limit"),
        HeaderName::from_static("anthropic-ratelimit-requests-remaining"),
        HeaderName::from_static("anthropic-ratelimit-requests-reset"),
    ],
    [
        HeaderName::from_static("anthropic-ratelimit-tokens-limit"),
        HeaderName::from_static("anthropic-ratelimit-tokens-remaining"),
        HeaderName::from_static("anthropic-ratelimit-tokens-reset"),
    ],
];

impl Quota {
    /// Write the headers in the client's dialect, replacing an upstream's of the same
    /// names (the operator's provider-account limits are not the key's).
    ///
    /// On every answer to a key with enforced limits, so each value costs as little as
    /// it can: the amounts are built once per limit (`LimitState::amount_header`), the
    /// resets once per second they change in (`RESETS`), and only the two remaining
    /// counts are written per request, into one buffer that both take a slice of. The
    /// map has room for the six (`upstream::head_from` sizes it), so it does not grow.
    pub fn write(&self, dialect: Dialect, now_ms: i64, h: &mut HeaderMap) {
        let (names, d) = match dialect {
            Dialect::OpenAi => (&OPENAI, 0),
            Dialect::Anthropic => (&ANTHROPIC, 1),
        };
        let mut buf = bytes::BytesMut::with_capacity(40);
        let mut nums = itoa::Buffer::new();
        let mut spans = [(0, 0); 2];
        for (i, v) in [self.requests, self.tokens].into_iter().enumerate() {
            if let Some((_, rem, _)) = v {
                let at = buf.len();
                buf.extend_from_slice(nums.format(rem).as_bytes());
                spans[i] = (at, buf.len());
            }
        }
        let rems = buf.freeze();
        h.reserve(6);
        for (i, v) in [self.requests, self.tokens].into_iter().enumerate() {
            let Some((amount, _, reset_ms)) = v else {
                continue;
            };
            let amount = match &self.amounts[i] {
                Some(a) => a.clone(),
                None => HeaderValue::from(amount),
            };
            h.insert(&names[i][0], amount);
            if let Ok(rem) = HeaderValue::from_maybe_shared(rems.slice(spans[i].0..spans[i].1)) {
                h.insert(&names[i][1], rem);
            }
            h.insert(&names[i][2], reset_header(d * 2 + i, dialect, now_ms, reset_ms));
        }
    }
}

thread_local! {
    /// The last reset value of each (dialect, requests/tokens) header and the key it was
    /// made for (OpenAI: the whole seconds left; Anthropic: the reset time), so a value is
    /// formatted at most once a second per thread, not per request.
    static RESETS: std::cell::RefCell<[(u64, HeaderValue); 4]> =
        std::cell::RefCell::new(std::array::from_fn(|_| (u64::MAX, HeaderValue::from_static(""))));
}

/// The reset header's value (`slot`: its `RESETS` entry).
fn reset_header(slot: usize, dialect: Dialect, now_ms: i64, reset_ms: i64) -> HeaderValue {
    let key = match dialect {
        Dialect::OpenAi => go_seconds((reset_ms - now_ms).max(0) as u64),
        Dialect::Anthropic => reset_ms.max(0) as u64,
    };
    RESETS.with_borrow_mut(|cache| {
        let (k, v) = &mut cache[slot];
        if *k != key {
            let mut buf = bytes::BytesMut::with_capacity(24);
            match dialect {
                Dialect::OpenAi => go_duration_secs(&mut buf, key),
                Dialect::Anthropic => {
                    use std::fmt::Write as _;
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(key);
                    let _ = write!(buf, "{}", humantime::format_rfc3339_seconds(t));
                }
            }
            // Digits, letters, `-`, `:`: always a valid value.
            *v = HeaderValue::from_maybe_shared(buf.freeze())
                .unwrap_or_else(|_| HeaderValue::from_static("0"));
            *k = key;
        }
        v.clone()
    })
}

/// A duration as OpenAI writes its resets (Go's format, whole seconds rounded up:
/// `1s`, `6m0s`, `1h2m3s`).
pub fn go_duration(ms: u64) -> String {
    let mut b = bytes::BytesMut::new();
    go_duration_secs(&mut b, go_seconds(ms));
    String::from_utf8_lossy(&b).into_owned()
}

/// The whole seconds OpenAI's reset says for `ms` (rounded up, at least 1).
fn go_seconds(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// `s` seconds in Go's format, appended to `out`.
fn go_duration_secs(out: &mut bytes::BytesMut, s: u64) {
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    let mut n = itoa::Buffer::new();
    if h > 0 {
        out.extend_from_slice(n.format(h).as_bytes());
        out.extend_from_slice(b"h");
    }
    if h > 0 || m > 0 {
        out.extend_from_slice(n.format(m).as_bytes());
        out.extend_from_slice(b"m");
    }
    out.extend_from_slice(n.format(s).as_bytes());
    out.extend_from_slice(b"s");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MIN: i64 = 60_000;

    fn def(kind: Kind, amount: u64, mode: Mode, on_outage: Outage) -> LimitDef {
        LimitDef {
            name: "l".into(),
            scope: Scope::Key("k".into()),
            kind,
            window: (kind != Kind::Concurrency).then_some(Window::Minute),
            amount,
            mode,
            on_outage,
        }
    }

    fn state(kind: Kind, amount: u64) -> Arc<LimitState> {
        Arc::new(LimitState::new(def(kind, amount, Mode::Enforce, Outage::Closed)))
    }

    fn grant(l: &LimitState, now: i64, ceiling: u64, fleet_used: u64) {
        let claimed = l.claim_view(now).used;
        l.apply_grant(
            &Grant {
                window_start_ms: l.window_of(now),
                ceiling,
                fleet_used,
                expires_at_ms: now + 5_000,
            },
            claimed,
        );
    }

    const ENV: Env<'static> = Env {
        metrics: None,
        wake: None,
        count_slice: true,
    };

    fn admit(set: &LimitSet, est: Estimate, now: i64) -> Result<Held, Refused> {
        let mut h = Held::default();
        h.admit(0, set, est, now, &ENV).map(|()| h)
    }

    #[test]
    fn enforce_admits_up_to_the_ceiling_then_refuses() {
        let now = 10 * MIN + 5_000;
        let l = state(Kind::Requests, 10);
        let set: LimitSet = Arc::from(vec![l.clone()]);
        // No grant yet: nothing is admitted (closed).
        assert_eq!(
            admit(&set, Estimate::default(), now).unwrap_err().retry_after_s,
            OUTAGE_RETRY_AFTER_S
        );
        grant(&l, now, 4, 0);
        for _ in 0..4 {
            admit(&set, Estimate::default(), now)
                .unwrap()
                .settle_at(None, None, now);
        }
        // The slice is out, not the fleet: retry at once.
        let r = admit(&set, Estimate::default(), now).unwrap_err();
        assert_eq!(r.retry_after_s, 1);
        assert_eq!(l.claim_view(now).refused, 2);
        // A bigger slice; then the fleet is out: retry when the minute ends (55 s).
        grant(&l, now, 10, 4);
        for _ in 0..6 {
            admit(&set, Estimate::default(), now).unwrap();
        }
        assert_eq!(l.remaining(now), 0);
        let r = admit(&set, Estimate::default(), now).unwrap_err();
        assert_eq!(r.retry_after_s, 55);
        assert_eq!(
            r.to_string(),
            "rate limit reached for this key: requests per minute; retry after 55 s"
        );
        // The next minute starts from zero; the old grant is not for it.
        let next = now + MIN;
        assert!(admit(&set, Estimate::default(), next).is_err());
        assert_eq!(l.used(), 0);
        grant(&l, next, 3, 0);
        admit(&set, Estimate::default(), next).unwrap();
        assert_eq!(l.used(), 1);
    }

    #[test]
    fn tokens_settle_with_the_real_usage() {
        let now = 3 * MIN;
        let l = state(Kind::Tokens, 10_000);
        let set: LimitSet = Arc::from(vec![l.clone()]);
        grant(&l, now, 5_000, 0);
        let est = Estimate::of(400, Some(500));
        assert_eq!(
            est,
            Estimate {
                input: 100,
                output: 500
            }
        );
        let mut h = admit(&set, est, now).unwrap();
        assert_eq!(l.used(), 600);
        let u = Usage {
            prompt_tokens: 90,
            completion_tokens: 20,
            ..Default::default()
        };
        h.settle_at(Some(&u), None, now);
        assert_eq!(l.used(), 110);
        // Settled once only.
        h.settle_at(Some(&u), None, now);
        assert_eq!(l.used(), 110);
        // More than estimated counts too.
        let mut h = admit(&set, Estimate::of(4, Some(1)), now).unwrap();
        h.settle_at(
            Some(&Usage {
                prompt_tokens: 1_000,
                completion_tokens: 1_000,
                ..Default::default()
            }),
            None,
            now,
        );
        assert_eq!(l.used(), 2_110);
        // An estimate is capped at the limit's amount, so a huge max_tokens can pass.
        let small = state(Kind::OutputTokens, 100);
        let set: LimitSet = Arc::from(vec![small.clone()]);
        grant(&small, now, 100, 0);
        admit(&set, Estimate::of(4, Some(1_000_000)), now).unwrap();
        assert_eq!(small.used(), 100);
    }

    #[test]
    fn spend_settles_with_the_cost_and_concurrency_ends_at_settle() {
        let now = 7 * MIN;
        let spend = state(Kind::Spend, 1_000_000);
        let conc = state(Kind::Concurrency, 2);
        let set: LimitSet = Arc::from(vec![spend.clone(), conc.clone()]);
        grant(&spend, now, 1_000_000, 0);
        grant(&conc, now, 2, 0);
        let mut a = admit(&set, Estimate::default(), now).unwrap();
        let mut b = admit(&set, Estimate::default(), now).unwrap();
        assert_eq!((spend.used(), conc.used()), (2, 2));
        // A third in flight is refused, and releases what it reserved of the others.
        assert!(admit(&set, Estimate::default(), now).is_err());
        assert_eq!(conc.used(), 2);
        let price = crate::account::Price {
            input: 10,
            cached_input: 10,
            cache_write: 10,
            output: 100,
            reasoning: 100,
        };
        let u = Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            ..Default::default()
        };
        a.settle_at(Some(&u), Some(&price), now);
        assert_eq!((spend.used(), conc.used()), (231, 1));
        b.settle_at(None, None, now);
        assert_eq!((spend.used(), conc.used()), (230, 0));
        // A slice spent to its last unit refuses.
        grant(&spend, now, 230, 0);
        assert!(admit(&set, Estimate::default(), now).is_err());
    }

    #[test]
    fn a_refusal_in_the_model_set_releases_the_key_set() {
        let now = MIN;
        let key = state(Kind::Requests, 10);
        let model = state(Kind::Requests, 10);
        grant(&key, now, 10, 0);
        grant(&model, now, 0, 0);
        let (ks, ms): (LimitSet, LimitSet) = (Arc::from(vec![key.clone()]), Arc::from(vec![model.clone()]));
        let mut h = Held::default();
        h.admit(0, &ks, Estimate::default(), now, &ENV).unwrap();
        assert_eq!(key.used(), 1);
        assert!(h.admit(1, &ms, Estimate::default(), now, &ENV).is_err());
        assert_eq!(key.used(), 0);
        // The refusal still carries the headers' state, and settles nothing.
        assert!(h.quota_at(now).is_some());
        h.settle_at(None, None, now);
        assert_eq!((key.used(), model.used()), (0, 0));
    }

    /// A request waiting for a grant re-tries the model's set (`wait_for_grant`): each
    /// re-try takes the key's set again, and a second refusal releases only what that
    /// re-try reserved, not the model's set a second time (another request's
    /// reservation must survive it).
    #[test]
    fn a_retried_model_refusal_releases_nothing_twice() {
        let now = 2 * MIN;
        let key = state(Kind::Requests, 10);
        let room = state(Kind::Concurrency, 10);
        let spent = state(Kind::Requests, 10);
        grant(&key, now, 10, 0);
        grant(&room, now, 10, 0);
        grant(&spent, now, 0, 0);
        let ks: LimitSet = Arc::from(vec![key.clone()]);
        let ms: LimitSet = Arc::from(vec![room.clone(), spent.clone()]);
        // Another request holds one of the model's concurrency slots.
        let other: LimitSet = Arc::from(vec![room.clone()]);
        let _other = admit(&other, Estimate::default(), now).unwrap();
        assert_eq!(room.used(), 1);
        let mut h = Held::default();
        h.admit(0, &ks, Estimate::default(), now, &ENV).unwrap();
        for _ in 0..3 {
            assert!(h.admit(1, &ms, Estimate::default(), now, &ENV).is_err());
            assert_eq!((key.used(), room.used(), spent.used()), (0, 1, 0));
        }
        // The grant comes: the re-try takes both sets once.
        grant(&spent, now, 10, 0);
        h.admit(1, &ms, Estimate::default(), now, &ENV).unwrap();
        assert_eq!((key.used(), room.used(), spent.used()), (1, 2, 1));
        h.settle_at(None, None, now);
        assert_eq!((key.used(), room.used(), spent.used()), (1, 1, 1));
    }

    /// A request waiting for a grant re-tries only when one is applied: the demand its
    /// refusal reported (`refused_amount`, the next claim's `want`) is counted once, not
    /// again by a re-try at once; a grant with room admits it.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_request_reports_its_demand_once() {
        let shared = crate::proxy::testing::shared();
        let now = crate::unix_ms();
        let l = state(Kind::Concurrency, 10);
        grant(&l, now, 0, 0);
        let set: LimitSet = Arc::from(vec![l.clone()]);
        let mut h = Held::default();
        let first = h
            .admit(0, &set, Estimate::default(), now, &shared.limit_env())
            .unwrap_err();
        assert!(first.slice);
        let again = |h: &mut Held| {
            h.admit(
                0,
                &set,
                Estimate::default(),
                crate::unix_ms(),
                &shared.limit_env(),
            )
        };
        // No grant comes: refused at the deadline, its demand reported once.
        assert!(wait_for_grant(&shared, first.clone(), || again(&mut h))
            .await
            .is_err());
        assert_eq!(l.claim_view(now).refused_amount, 1);
        // A grant with room comes while it waits: admitted.
        let waiting = wait_for_grant(&shared, first, || again(&mut h));
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        grant(&l, now, 1, 0);
        shared.lease_granted.notify_waiters();
        assert!(waiting.await.is_ok());
        assert_eq!(l.used(), 1);
    }

    /// A credential without headroom is skipped; the next credential's reservation
    /// replaces it, and settles with the request. Its limits are not the client's
    /// business: no headers.
    #[test]
    fn credential_reservations_follow_the_attempt() {
        let now = 4 * MIN;
        let a = state(Kind::Requests, 10);
        let b = state(Kind::Tokens, 1_000);
        grant(&a, now, 1, 0);
        grant(&b, now, 1_000, 0);
        let (sa, sb): (LimitSet, LimitSet) = (Arc::from(vec![a.clone()]), Arc::from(vec![b.clone()]));
        let est = Estimate { input: 5, output: 5 };
        let mut h = Held::default();
        h.admit_credential(&sa, est, now, &ENV).unwrap();
        assert_eq!(a.used(), 1);
        assert!(Held::default().admit_credential(&sa, est, now, &ENV).is_err());
        // A retry on another credential: the first one's reservation is released.
        h.admit_credential(&sb, est, now, &ENV).unwrap();
        assert_eq!((a.used(), b.used()), (0, 10));
        assert!(h.quota_at(now).is_none());
        h.settle_at(
            Some(&Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
                ..Default::default()
            }),
            None,
            now,
        );
        assert_eq!(b.used(), 7);
    }

    #[test]
    fn outage_follows_on_outage() {
        let now = 5 * MIN;
        let open = Arc::new(LimitState::new(def(
            Kind::Requests,
            2,
            Mode::Enforce,
            Outage::Open,
        )));
        let closed = state(Kind::Requests, 2);
        for l in [&open, &closed] {
            grant(l, now, 1, 0);
        }
        let later = now + 6_000; // the grants expired
        let set: LimitSet = Arc::from(vec![open.clone()]);
        for _ in 0..5 {
            admit(&set, Estimate::default(), later).unwrap();
        }
        assert_eq!(open.used(), 5, "open admits and counts");
        let set: LimitSet = Arc::from(vec![closed.clone()]);
        // While valid, what is held is spent; once expired, closed refuses.
        admit(&set, Estimate::default(), now).unwrap();
        let r = admit(&set, Estimate::default(), later).unwrap_err();
        assert_eq!(r.retry_after_s, OUTAGE_RETRY_AFTER_S);
    }

    #[test]
    fn observe_never_refuses() {
        let now = 2 * MIN;
        let l = Arc::new(LimitState::new(def(
            Kind::Requests,
            1,
            Mode::Observe,
            Outage::Closed,
        )));
        let set: LimitSet = Arc::from(vec![l.clone()]);
        grant(&l, now, 1, 0);
        for _ in 0..3 {
            admit(&set, Estimate::default(), now).unwrap();
        }
        assert_eq!(l.used(), 3);
        assert!(Held::default().quota_at(now).is_none());
        assert!(admit(&set, Estimate::default(), now)
            .unwrap()
            .quota_at(now)
            .is_none());
    }

    #[test]
    fn headers_in_both_dialects() {
        let now = 30 * MIN + 54_000; // 6 s before the minute ends
        let r = state(Kind::Requests, 100);
        let t = state(Kind::Tokens, 5_000);
        let set: LimitSet = Arc::from(vec![r.clone(), t.clone()]);
        grant(&r, now, 50, 40);
        grant(&t, now, 2_000, 1_000);
        let h = admit(&set, Estimate::of(40, Some(90)), now).unwrap();
        let q = h.quota_at(now).unwrap();
        assert_eq!(q.requests, Some((100, 59, 31 * MIN)));
        assert_eq!(q.tokens, Some((5_000, 3_900, 31 * MIN)));
        let mut m = HeaderMap::new();
        m.insert("x-ratelimit-limit-requests", HeaderValue::from_static("999999"));
        q.write(Dialect::OpenAi, now, &mut m);
        assert_eq!(m["x-ratelimit-limit-requests"], "100");
        assert_eq!(m["x-ratelimit-remaining-requests"], "59");
        assert_eq!(m["x-ratelimit-reset-requests"], "6s");
        assert_eq!(m["x-ratelimit-remaining-tokens"], "3900");
        let mut m = HeaderMap::new();
        q.write(Dialect::Anthropic, now, &mut m);
        assert_eq!(m["anthropic-ratelimit-tokens-limit"], "5000");
        assert_eq!(m["anthropic-ratelimit-requests-reset"], "1970-01-01T00:31:00Z");
        // The resets are kept per second: a later second, or the next window, has its own.
        for (at, want) in [
            (now + 1_500, "5s"),
            (now + 1_900, "5s"),
            (now + 5_001, "1s"),
            (now + 6_001, "1m0s"),
        ] {
            let q = h.quota_at(at).unwrap();
            let mut m = HeaderMap::new();
            q.write(Dialect::OpenAi, at, &mut m);
            assert_eq!(m["x-ratelimit-reset-requests"], want, "{at}");
            assert_eq!(m["x-ratelimit-limit-tokens"], "5000");
        }
        let q = h.quota_at(now + 6_001).unwrap();
        let mut m = HeaderMap::new();
        q.write(Dialect::Anthropic, now + 6_001, &mut m);
        assert_eq!(m["anthropic-ratelimit-tokens-reset"], "1970-01-01T00:32:00Z");
        assert_eq!(m.len(), 6);
        assert_eq!(go_duration(360_000), "6m0s");
        assert_eq!(go_duration(1), "1s");
        assert_eq!(go_duration(3_723_000), "1h2m3s");
    }

    #[test]
    fn the_lease_task_is_woken_once_on_low_headroom() {
        let now = 9 * MIN;
        let l = state(Kind::Requests, 1_000);
        let set: LimitSet = Arc::from(vec![l.clone()]);
        grant(&l, now, 10, 0);
        let n = tokio::sync::Notify::new();
        let env = Env {
            metrics: None,
            wake: Some(&n),
            count_slice: true,
        };
        for _ in 0..5 {
            Held::default()
                .admit(0, &set, Estimate::default(), now, &env)
                .unwrap();
        }
        assert!(!l.poked.load(Ordering::Relaxed), "headroom 5 of a slice of 10");
        Held::default()
            .admit(0, &set, Estimate::default(), now, &env)
            .unwrap();
        assert!(l.poked.load(Ordering::Relaxed));
        grant(&l, now, 20, 0);
        assert!(!l.poked.load(Ordering::Relaxed), "a grant re-arms it");
    }

    mod concurrent {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(48))]
            /// Threads admitting and settling at once never take an enforce limit past its
            /// ceiling, and settle gives back exactly what was reserved.
            #[test]
            fn never_past_the_ceiling(
                ceiling in 1u64..200,
                threads in 2usize..6,
                per_thread in 1usize..200,
                kinds in prop::collection::vec(0u8..3, 1..3),
            ) {
                let now = 20 * MIN;
                let states: Vec<Arc<LimitState>> = kinds
                    .iter()
                    .map(|k| match k {
                        0 => state(Kind::Requests, 10_000),
                        1 => state(Kind::Tokens, 10_000),
                        _ => state(Kind::Concurrency, 10_000),
                    })
                    .collect();
                for l in &states {
                    grant(l, now, ceiling, 0);
                }
                let set: LimitSet = Arc::from(states.clone());
                // What the threads hold admitted, per limit, counted outside the limits:
                // raised after an admission, lowered before its settle, so never above
                // what the limit itself holds reserved.
                let outstanding: Vec<AtomicU64> = states.iter().map(|_| AtomicU64::new(0)).collect();
                let peak = AtomicU64::new(0);
                std::thread::scope(|s| {
                    for t in 0..threads {
                        let (set, peak, states, out) = (&set, &peak, &states, &outstanding);
                        s.spawn(move || {
                            let mut held = Vec::new();
                            let give_back = |(mut h, est): (Held, Estimate)| {
                                for (l, o) in states.iter().zip(out) {
                                    if l.def.kind != Kind::Requests {
                                        o.fetch_sub(l.amount_of(est), Ordering::Relaxed);
                                    }
                                }
                                h.settle_at(None, None, now);
                            };
                            for i in 0..per_thread {
                                let est = Estimate { input: (i % 3) as u64, output: 1 };
                                let mut h = Held::default();
                                if h.admit(0, set, est, now, &ENV).is_ok() {
                                    for (l, o) in states.iter().zip(out) {
                                        let v = o.fetch_add(l.amount_of(est), Ordering::Relaxed) + l.amount_of(est);
                                        peak.fetch_max(v, Ordering::Relaxed);
                                    }
                                    held.push((h, est));
                                }
                                if (i + t) % 2 == 0 {
                                    if let Some(h) = held.pop() {
                                        give_back(h);
                                    }
                                }
                            }
                            for h in held {
                                give_back(h);
                            }
                        });
                    }
                });
                prop_assert!(peak.load(Ordering::Relaxed) <= ceiling, "{} > {}", peak.load(Ordering::Relaxed), ceiling);
                for l in &states {
                    let left = l.used();
                    match l.def.kind {
                        // Requests stay counted; tokens settle to 0 (no usage); slots end.
                        Kind::Requests => prop_assert!(left <= ceiling),
                        _ => prop_assert_eq!(left, 0),
                    }
                }
            }
        }
    }
}
