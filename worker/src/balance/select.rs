//! Picking one endpoint: enabled and not excluded → available (not ejected, not cooling
//! down; half-open trial admitted once) → lowest priority tier → strategy (or affinity
//! rendezvous) → panic mode (soonest-ending ejection, once) when nothing is available.
//!
//! Speed: reading the live state of every endpoint costs a few nanoseconds each, which
//! is far too slow at 1,000 endpoints (the budget is 200 ns per pick). So a `Selector`
//! caches a *view*: the available endpoints of the serving tier, their cumulative weights
//! and, for smooth weighted round robin, one precomputed cycle. The view stays valid until
//! the process-wide health epoch moves (any ejection, recovery, cooldown, probe flip or
//! trial admission bumps it) or until the earliest time at which an ejection or cooldown
//! ends by itself. With a fresh view, a pick costs O(1) (O(log n) for weighted random,
//! O(n) for affinity and for least connections under load). Requests that exclude
//! endpoints (retries), half-open trials and panic mode take the slow path, which reads
//! every state and allocates nothing for up to 64 candidates.
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use super::endpoint::{EndpointState, Status};
use super::{health_epoch, mix64, rng, stable_hash};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    RoundRobin,
    Random,
    WeightedRandom,
    WeightedRoundRobin,
    LeastConnections,
    LeastLatency,
    Failover,
}

impl Strategy {
    pub const ALL: [Strategy; 7] = [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::WeightedRandom,
        Strategy::WeightedRoundRobin,
        Strategy::LeastConnections,
        Strategy::LeastLatency,
        Strategy::Failover,
    ];

    /// The config spelling (`round_robin`, …). Strict: a typo is a config error, not a
    /// silent default.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Random => "random",
            Strategy::WeightedRandom => "weighted_random",
            Strategy::WeightedRoundRobin => "weighted_round_robin",
            Strategy::LeastConnections => "least_connections",
            Strategy::LeastLatency => "least_latency",
            Strategy::Failover => "failover",
        }
    }

    /// The strategy to use for a provider's credentials: weights are always honoured
    /// there. `round_robin` becomes smooth weighted round robin and `random` becomes
    /// weighted random; with equal weights both behave exactly like the plain strategy.
    pub fn for_credentials(self) -> Self {
        match self {
            Strategy::RoundRobin => Strategy::WeightedRoundRobin,
            Strategy::Random => Strategy::WeightedRandom,
            other => other,
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One selectable endpoint, in declaration order.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Relative weight for the weighted strategies; 0 counts as 1.
    pub weight: u32,
    /// Lower is preferred.
    pub priority: i32,
    /// `stable_hash` of the endpoint's name; rendezvous hashing input.
    pub id_hash: u64,
    pub state: Arc<EndpointState>,
}

impl Endpoint {
    /// An endpoint whose identity (for affinity) is `stable_hash(name)`.
    pub fn new(name: &str, weight: u32, priority: i32, state: Arc<EndpointState>) -> Self {
        Self {
            weight,
            priority,
            id_hash: stable_hash(name.as_bytes()),
            state,
        }
    }

    fn w(&self) -> u64 {
        u64::from(self.weight.max(1))
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext<'a> {
    pub now_ms: u64,
    /// Indices (into the endpoint slice) already tried by this request.
    pub excluded: &'a [usize],
    /// `stable_hash` of the affinity key, when the model uses affinity and the request has one.
    pub affinity: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    /// True when this is a half-open trial or a panic-mode pick.
    pub trial: bool,
}

/// Picks endpoints for one model (or one provider's credentials). Cheap to share: all
/// methods take `&self`.
pub struct Selector {
    pub strategy: Strategy,
    /// Round robin position, least-connections tie-break rotation, WRR cycle position.
    counter: AtomicU64,
    /// Smooth WRR current weights, by endpoint index, for the paths without a
    /// precomputed cycle. Held only for one pass over the candidates.
    swrr: Mutex<Vec<i64>>,
    view: ArcSwapOption<View>,
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Selector")
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

/// Above this many steps (cycle length × candidates), smooth WRR does not precompute its
/// cycle and runs nginx's O(n) step under a mutex instead (a build is ~2 ms at most).
const SCHEDULE_WORK_LIMIT: u64 = 1 << 22;
/// Longest precomputed cycle (4 bytes per entry).
const SCHEDULE_MAX_LEN: u64 = 1 << 16;

/// Up to this many endpoints in a tier, affinity is plain rendezvous hashing. Above it,
/// two-level rendezvous (see [`tier_clusters`]) keeps the pick near O(√n).
const FLAT_AFFINITY_MAX: usize = 64;
const CLUSTER_SALT: u64 = 0x7377_6974_6368_7964;

/// Above this many candidates, least connections takes the minimum over a rotating window
/// of `LEAST_CONN_WINDOW` candidates instead of all of them: an exact scan reads every
/// endpoint's counter (~2.5 µs at 1,000), the window keeps the pick O(1) and still visits
/// every endpoint as the window rotates.
const LEAST_CONN_EXACT_MAX: usize = 128;
const LEAST_CONN_WINDOW: usize = 64;

/// Cached result of filtering, valid for one endpoint slice, one health epoch and a
/// time window.
struct View {
    slice_ptr: usize,
    slice_len: usize,
    first_id: u64,
    epoch: u64,
    built_at: u64,
    /// Usable while `now < valid_until`.
    valid_until: u64,
    /// `None`: every pick in this window takes the slow path (trial due, nothing
    /// available, …).
    fast: Option<Fast>,
}

struct Fast {
    tier: i32,
    /// Two-level affinity structure for big tiers.
    clusters: Option<Clusters>,
    /// Available endpoints of the serving tier, in declaration order.
    idx: Box<[u32]>,
    /// Their `id_hash`es, for affinity.
    ids: Box<[u64]>,
    /// Inclusive cumulative weights (empty when all weights are equal).
    cum: Box<[u64]>,
    total: u64,
    equal_weights: bool,
    /// One smooth-WRR cycle as positions into `idx`.
    schedule: Option<Box<[u32]>>,
}

/// The clusters of a big tier that have available members (see [`tier_clusters`]).
struct Clusters {
    /// `mix64(cluster number ^ CLUSTER_SALT)` per cluster, in cluster order.
    salts: Box<[u64]>,
    /// Cluster `c` owns `members[bounds[c]..bounds[c + 1]]`.
    bounds: Box<[u32]>,
    /// Positions into `Fast::idx`, sorted by id within a cluster.
    members: Box<[u32]>,
    ids: Box<[u64]>,
}

impl Clusters {
    fn pick(&self, key: u64) -> usize {
        let c = rendezvous(self.salts.iter().copied(), key);
        let (lo, hi) = (self.bounds[c] as usize, self.bounds[c + 1] as usize);
        self.members[lo + rendezvous(self.ids[lo..hi].iter().copied(), key)] as usize
    }
}

/// Deterministic grouping of a big tier for two-level rendezvous: the tier's endpoints
/// (all of them, whatever their health, so the grouping is the same on every worker and
/// does not move when health changes) sorted by id and cut into ⌈√n⌉ equal clusters. A
/// key picks a cluster by rendezvous over the clusters that have an available member,
/// then an endpoint by rendezvous inside it. When an endpoint leaves, only its keys move
/// (to its cluster mates, or, if the cluster empties, to other clusters), exactly as with
/// flat rendezvous; a change to the endpoint set itself may regroup some keys. `None`
/// for small tiers (flat rendezvous).
fn tier_clusters(endpoints: &[Endpoint], tier: i32) -> Option<Vec<Vec<usize>>> {
    let mut members: Vec<(u64, usize)> = endpoints
        .iter()
        .enumerate()
        .filter(|(_, e)| e.priority == tier)
        .map(|(i, e)| (e.id_hash, i))
        .collect();
    let m = members.len();
    if m <= FLAT_AFFINITY_MAX {
        return None;
    }
    members.sort_unstable();
    let c = (m as f64).sqrt().ceil() as usize;
    Some(
        (0..c)
            .map(|j| {
                members[m * j / c..m * (j + 1) / c]
                    .iter()
                    .map(|&(_, i)| i)
                    .collect()
            })
            .collect(),
    )
}

fn cluster_salt(j: usize) -> u64 {
    mix64(j as u64 ^ CLUSTER_SALT)
}

/// Affinity over an arbitrary candidate set `idx` (sorted endpoint indices) of `tier`;
/// same answer as the cached [`Clusters`] for the same set. Returns a position in `idx`.
fn affinity_any(endpoints: &[Endpoint], tier: i32, idx: &[u32], key: u64) -> usize {
    let Some(clusters) = tier_clusters(endpoints, tier) else {
        return rendezvous(idx.iter().map(|&i| endpoints[i as usize].id_hash), key);
    };
    let eligible = |i: usize| idx.binary_search(&(i as u32)).is_ok();
    let live: Vec<(u64, &Vec<usize>)> = clusters
        .iter()
        .enumerate()
        .filter(|(_, members)| members.iter().any(|&i| eligible(i)))
        .map(|(j, members)| (cluster_salt(j), members))
        .collect();
    let (_, members) = live[rendezvous(live.iter().map(|(salt, _)| *salt), key)];
    let inside: Vec<usize> = members.iter().copied().filter(|&i| eligible(i)).collect();
    let winner = inside[rendezvous(inside.iter().map(|&i| endpoints[i].id_hash), key)];
    idx.binary_search(&(winner as u32)).unwrap_or(0)
}

impl View {
    fn fresh(&self, endpoints: &[Endpoint], epoch: u64, now: u64) -> bool {
        self.epoch == epoch
            && now < self.valid_until
            && now >= self.built_at
            && self.slice_ptr == endpoints.as_ptr() as usize
            && self.slice_len == endpoints.len()
            && endpoints.first().map(|e| e.id_hash) == Some(self.first_id)
    }
}

impl Selector {
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            counter: AtomicU64::new(0),
            swrr: Mutex::new(Vec::new()),
            view: ArcSwapOption::empty(),
        }
    }

    /// Picks an endpoint, or `None` when every endpoint is excluded or nothing can be
    /// tried (all unavailable and the panic-mode try was already spent).
    pub fn pick(&self, endpoints: &[Endpoint], ctx: &PickContext<'_>) -> Option<Pick> {
        if endpoints.is_empty() {
            return None;
        }
        let now = ctx.now_ms;
        // Read the epoch before any state, so a change made while we build is caught by
        // the next pick.
        let epoch = health_epoch();
        {
            let guard = self.view.load();
            if let Some(view) = guard.as_ref() {
                if view.fresh(endpoints, epoch, now) {
                    return match &view.fast {
                        Some(fast) => self.pick_cached(fast, endpoints, ctx),
                        None => self.pick_slow(endpoints, ctx, true),
                    };
                }
            }
        }
        let view = Arc::new(self.build_view(endpoints, epoch, now));
        self.view.store(Some(Arc::clone(&view)));
        match &view.fast {
            Some(fast) => self.pick_cached(fast, endpoints, ctx),
            None => self.pick_slow(endpoints, ctx, true),
        }
    }

    /// With a fresh view: O(1) without exclusions; a retry filters the cached candidates
    /// (no state reads) and falls back to the slow path only when it excludes them all.
    fn pick_cached(&self, fast: &Fast, endpoints: &[Endpoint], ctx: &PickContext<'_>) -> Option<Pick> {
        if ctx.excluded.is_empty() {
            return Some(self.pick_fast(fast, endpoints, ctx));
        }
        let mut buf = IdxBuf::with_capacity(fast.idx.len());
        for &i in fast.idx.iter() {
            if !ctx.excluded.contains(&(i as usize)) {
                buf.push(i);
            }
        }
        let idx = buf.as_slice();
        if idx.is_empty() {
            return self.pick_slow(endpoints, ctx, true);
        }
        let pos = self.choose(endpoints, fast.tier, idx, ctx);
        Some(Pick {
            index: idx[pos] as usize,
            trial: false,
        })
    }

    fn tick(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    fn build_view(&self, endpoints: &[Endpoint], epoch: u64, now: u64) -> View {
        let statuses: Vec<Status> = endpoints.iter().map(|e| e.state.status(now)).collect();
        let tier = endpoints
            .iter()
            .zip(&statuses)
            .filter(|(_, s)| !matches!(s, Status::Blocked(_)))
            .map(|(e, _)| e.priority)
            .min();
        let mut view = View {
            slice_ptr: endpoints.as_ptr() as usize,
            slice_len: endpoints.len(),
            first_id: endpoints.first().map_or(0, |e| e.id_hash),
            epoch,
            built_at: now,
            valid_until: u64::MAX,
            fast: None,
        };
        let mut trial_due = false;
        let mut idx = Vec::new();
        for (i, (e, s)) in endpoints.iter().zip(&statuses).enumerate() {
            if tier.is_some_and(|t| e.priority > t) {
                continue;
            }
            match *s {
                Status::Blocked(until) => view.valid_until = view.valid_until.min(until),
                Status::TrialReady => trial_due = true,
                Status::Available if Some(e.priority) == tier => idx.push(i as u32),
                Status::Available => {}
            }
        }
        if tier.is_none() || trial_due || idx.is_empty() {
            // Panic mode or a trial to hand out: the slow path decides, per pick, until
            // the epoch moves (trial admission bumps it) or an ejection ends.
            return view;
        }
        let weights: Vec<u64> = idx.iter().map(|&i| endpoints[i as usize].w()).collect();
        let equal_weights = weights.windows(2).all(|w| w[0] == w[1]);
        let mut total = 0u64;
        let cum: Box<[u64]> = if equal_weights {
            total = weights.iter().sum();
            Box::new([])
        } else {
            weights
                .iter()
                .map(|w| {
                    total += w;
                    total
                })
                .collect()
        };
        let schedule = (self.strategy == Strategy::WeightedRoundRobin && !equal_weights)
            .then(|| swrr_schedule(&weights))
            .flatten();
        let tier = tier.unwrap_or_default();
        let clusters = tier_clusters(endpoints, tier).map(|groups| {
            let mut pos_of = vec![u32::MAX; endpoints.len()];
            for (pos, &i) in idx.iter().enumerate() {
                pos_of[i as usize] = pos as u32;
            }
            let (mut salts, mut bounds, mut members, mut ids) = (vec![], vec![0u32], vec![], vec![]);
            for (j, group) in groups.iter().enumerate() {
                let before = members.len();
                for &i in group {
                    if pos_of[i] != u32::MAX {
                        members.push(pos_of[i]);
                        ids.push(endpoints[i].id_hash);
                    }
                }
                if members.len() > before {
                    salts.push(cluster_salt(j));
                    bounds.push(members.len() as u32);
                }
            }
            Clusters {
                salts: salts.into(),
                bounds: bounds.into(),
                members: members.into(),
                ids: ids.into(),
            }
        });
        view.fast = Some(Fast {
            tier,
            clusters,
            ids: idx.iter().map(|&i| endpoints[i as usize].id_hash).collect(),
            idx: idx.into_boxed_slice(),
            cum,
            total,
            equal_weights,
            schedule,
        });
        view
    }

    fn pick_fast(&self, fast: &Fast, endpoints: &[Endpoint], ctx: &PickContext<'_>) -> Pick {
        let idx = &fast.idx;
        let k = idx.len() as u64;
        let pos = if let Some(key) = ctx.affinity {
            match &fast.clusters {
                Some(clusters) => clusters.pick(key),
                None => rendezvous(fast.ids.iter().copied(), key),
            }
        } else {
            match self.strategy {
                Strategy::RoundRobin => (self.tick() % k) as usize,
                Strategy::Random => rng::below(k) as usize,
                Strategy::WeightedRandom if fast.equal_weights => rng::below(k) as usize,
                Strategy::WeightedRandom => {
                    let r = rng::below(fast.total);
                    fast.cum.partition_point(|&c| c <= r)
                }
                Strategy::WeightedRoundRobin if fast.equal_weights => (self.tick() % k) as usize,
                Strategy::WeightedRoundRobin => match &fast.schedule {
                    Some(cycle) => cycle[(self.tick() % cycle.len() as u64) as usize] as usize,
                    None => self.swrr_step(endpoints, idx),
                },
                Strategy::LeastConnections => least_connections(endpoints, idx, self.tick()),
                Strategy::LeastLatency => least_latency(endpoints, idx),
                Strategy::Failover => 0,
            }
        };
        Pick {
            index: idx[pos] as usize,
            trial: false,
        }
    }

    fn pick_slow(&self, endpoints: &[Endpoint], ctx: &PickContext<'_>, may_retry: bool) -> Option<Pick> {
        let now = ctx.now_ms;
        let excluded = |i: usize| ctx.excluded.contains(&i);
        let mut any = false;
        let mut tier: Option<i32> = None;
        // (ends at, priority, index) of the unavailable endpoint that comes back soonest.
        let mut soonest: Option<(u64, i32, usize)> = None;
        for (i, e) in endpoints.iter().enumerate() {
            if excluded(i) {
                continue;
            }
            any = true;
            match e.state.status(now) {
                Status::Available | Status::TrialReady => {
                    tier = Some(tier.map_or(e.priority, |t| t.min(e.priority)));
                }
                Status::Blocked(until) => {
                    if soonest.is_none_or(|(u, p, _)| (until, e.priority) < (u, p)) {
                        soonest = Some((until, e.priority, i));
                    }
                }
            }
        }
        if !any {
            return None;
        }
        let Some(tier) = tier else {
            // Panic mode: everything is out. Try the one that comes back soonest, once per
            // its ejection period, so a burst of errors cannot black-hole the model and
            // cannot hammer a sick endpoint either.
            let (_, _, i) = soonest?;
            return endpoints[i].state.try_take_panic(now).then_some(Pick {
                index: i,
                trial: true,
            });
        };
        let mut buf = IdxBuf::with_capacity(endpoints.len());
        for (i, e) in endpoints.iter().enumerate() {
            if e.priority != tier || excluded(i) {
                continue;
            }
            match e.state.status(now) {
                // The half-open trial goes first: it is how a recovered endpoint returns.
                Status::TrialReady if e.state.try_take_trial(now) => {
                    return Some(Pick {
                        index: i,
                        trial: true,
                    });
                }
                Status::Available => buf.push(i as u32),
                Status::TrialReady | Status::Blocked(_) => {}
            }
        }
        let idx = buf.as_slice();
        if idx.is_empty() {
            // Lost a race between the two passes (another request took the trial, or an
            // endpoint went out): look once more with fresh states.
            return if may_retry {
                self.pick_slow(endpoints, ctx, false)
            } else {
                None
            };
        }
        let pos = self.choose(endpoints, tier, idx, ctx);
        Some(Pick {
            index: idx[pos] as usize,
            trial: false,
        })
    }

    /// The strategy (or affinity) over an explicit candidate list (sorted endpoint
    /// indices, all in `tier`, none excluded). Returns a position in `idx`.
    fn choose(&self, endpoints: &[Endpoint], tier: i32, idx: &[u32], ctx: &PickContext<'_>) -> usize {
        let k = idx.len() as u64;
        if let Some(key) = ctx.affinity {
            affinity_any(endpoints, tier, idx, key)
        } else {
            match self.strategy {
                Strategy::RoundRobin => (self.tick() % k) as usize,
                Strategy::Random => rng::below(k) as usize,
                Strategy::WeightedRandom => {
                    let total: u64 = idx.iter().map(|&i| endpoints[i as usize].w()).sum();
                    let mut r = rng::below(total);
                    idx.iter()
                        .position(|&i| {
                            let w = endpoints[i as usize].w();
                            if r < w {
                                return true;
                            }
                            r -= w;
                            false
                        })
                        .unwrap_or(0)
                }
                Strategy::WeightedRoundRobin => self.swrr_step(endpoints, idx),
                Strategy::LeastConnections => least_connections(endpoints, idx, self.tick()),
                Strategy::LeastLatency => least_latency(endpoints, idx),
                Strategy::Failover => 0,
            }
        }
    }

    /// One step of nginx's smooth weighted round robin over the candidates: every
    /// candidate gains its weight, the largest current weight wins and pays the total.
    /// Endpoints that are not candidates keep their current weight untouched, as in nginx.
    fn swrr_step(&self, endpoints: &[Endpoint], idx: &[u32]) -> usize {
        let mut current = self.swrr.lock();
        if current.len() != endpoints.len() {
            current.clear();
            current.resize(endpoints.len(), 0);
        }
        let mut total = 0i64;
        let mut best = 0usize;
        let mut best_weight = i64::MIN;
        for (pos, &i) in idx.iter().enumerate() {
            let w = endpoints[i as usize].w() as i64;
            let c = &mut current[i as usize];
            *c += w;
            total += w;
            if *c > best_weight {
                best_weight = *c;
                best = pos;
            }
        }
        current[idx[best] as usize] -= total;
        best
    }
}

/// One full smooth-WRR cycle (gcd-reduced), as positions, or `None` when too long to
/// precompute.
fn swrr_schedule(weights: &[u64]) -> Option<Box<[u32]>> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let reduced: Vec<i64> = weights.iter().map(|w| (w / g) as i64).collect();
    let total: i64 = reduced.iter().sum();
    let work = (total as u64).checked_mul(weights.len() as u64)?;
    if work > SCHEDULE_WORK_LIMIT || total as u64 > SCHEDULE_MAX_LEN {
        return None;
    }
    let mut current = vec![0i64; reduced.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0usize;
        for (pos, w) in reduced.iter().enumerate() {
            current[pos] += w;
            if current[pos] > current[best] {
                best = pos;
            }
        }
        current[best] -= total;
        cycle.push(best as u32);
    }
    Some(cycle.into_boxed_slice())
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Highest-random-weight hashing: every worker computes the same winner from the key and
/// the endpoint identities alone, and a key moves only when its winner leaves the set.
fn rendezvous(ids: impl Iterator<Item = u64>, key: u64) -> usize {
    let mut best = 0usize;
    let mut best_score = 0u64;
    for (pos, id) in ids.enumerate() {
        let score = mix64(key ^ id);
        if pos == 0 || score > best_score {
            best = pos;
            best_score = score;
        }
    }
    best
}

/// Fewest in-flight requests; the scan starts at a rotating position, so ties go round
/// robin, and it stops at the first idle endpoint. Exact up to `LEAST_CONN_EXACT_MAX`
/// candidates, windowed above.
fn least_connections(endpoints: &[Endpoint], idx: &[u32], rotation: u64) -> usize {
    let k = idx.len();
    let start = (rotation % k as u64) as usize;
    let mut best = start;
    let mut best_load = u32::MAX;
    let span = if k > LEAST_CONN_EXACT_MAX {
        LEAST_CONN_WINDOW
    } else {
        k
    };
    for off in 0..span {
        let pos = if start + off >= k {
            start + off - k
        } else {
            start + off
        };
        let load = endpoints[idx[pos] as usize].state.inflight();
        if load < best_load {
            best = pos;
            best_load = load;
            if load == 0 {
                break;
            }
        }
    }
    best
}

/// Power of two choices on the latency cost: two distinct random candidates, the cheaper
/// wins, so the fastest endpoint gets most traffic without being stampeded.
fn least_latency(endpoints: &[Endpoint], idx: &[u32]) -> usize {
    let k = idx.len() as u64;
    if k == 1 {
        return 0;
    }
    let a = rng::below(k);
    let mut b = rng::below(k - 1);
    if b >= a {
        b += 1;
    }
    let cost_a = latency_cost(&endpoints[idx[a as usize] as usize].state);
    let cost_b = latency_cost(&endpoints[idx[b as usize] as usize].state);
    if cost_b < cost_a {
        b as usize
    } else {
        a as usize
    }
}

/// Ordered cost: an endpoint with no sample yet and nothing in flight is tried first
/// (optimism, so new endpoints get measured), but only one request at a time until its
/// first answer (no stampede on an unknown). Known endpoints cost EWMA × (in-flight + 1),
/// as in linkerd's peak-EWMA. Unknown and busy sorts last, by in-flight.
fn latency_cost(state: &EndpointState) -> (u8, u64) {
    let inflight = u64::from(state.inflight());
    match state.ewma_ttfb_us() {
        None if inflight == 0 => (0, 0),
        None => (2, inflight),
        Some(ewma) => (1, ((ewma + 1.0) * (inflight + 1) as f64) as u64),
    }
}

/// Candidate indices without allocating for the common case.
// The inline variant is meant to be big: it lives on the stack for one pick.
#[allow(clippy::large_enum_variant)]
enum IdxBuf {
    Inline { len: usize, buf: [u32; IdxBuf::INLINE] },
    Heap(Vec<u32>),
}

impl IdxBuf {
    const INLINE: usize = 64;

    /// Inline up to `INLINE` candidates; above that, one allocation of the right size.
    fn with_capacity(n: usize) -> Self {
        if n <= Self::INLINE {
            IdxBuf::Inline {
                len: 0,
                buf: [0; Self::INLINE],
            }
        } else {
            IdxBuf::Heap(Vec::with_capacity(n))
        }
    }

    fn push(&mut self, v: u32) {
        match self {
            IdxBuf::Inline { len, buf } if *len < Self::INLINE => {
                buf[*len] = v;
                *len += 1;
            }
            IdxBuf::Inline { len, buf } => {
                let mut heap = Vec::with_capacity(*len * 2);
                heap.extend_from_slice(&buf[..*len]);
                heap.push(v);
                *self = IdxBuf::Heap(heap);
            }
            IdxBuf::Heap(heap) => heap.push(v),
        }
    }

    fn as_slice(&self) -> &[u32] {
        match self {
            IdxBuf::Inline { len, buf } => &buf[..*len],
            IdxBuf::Heap(heap) => heap,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::endpoint::BreakerConfig;
    use proptest::prelude::{
        any, prop_assert, prop_assert_eq, prop_assume, prop_oneof, proptest, ProptestConfig,
    };

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            base_ejection_ms: 1_000,
            max_ejection_ms: 8_000,
        }
    }

    fn tiered(specs: &[(u32, i32)]) -> Vec<Endpoint> {
        specs
            .iter()
            .enumerate()
            .map(|(i, &(w, p))| Endpoint::new(&format!("e{i}"), w, p, EndpointState::new(cfg())))
            .collect()
    }

    fn weighted(weights: &[u32]) -> Vec<Endpoint> {
        tiered(&weights.iter().map(|&w| (w, 0)).collect::<Vec<_>>())
    }

    fn at(now_ms: u64) -> PickContext<'static> {
        PickContext {
            now_ms,
            ..Default::default()
        }
    }

    fn counts(sel: &Selector, eps: &[Endpoint], n: usize, now: u64) -> Vec<usize> {
        let mut c = vec![0; eps.len()];
        for _ in 0..n {
            c[sel.pick(eps, &at(now)).unwrap().index] += 1;
        }
        c
    }

    fn sequence(sel: &Selector, eps: &[Endpoint], ctx: &PickContext<'_>, n: usize) -> Vec<usize> {
        (0..n).map(|_| sel.pick(eps, ctx).unwrap().index).collect()
    }

    #[test]
    fn parse_round_trips_and_is_strict() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(
            Strategy::parse("weighted_round_robin"),
            Some(Strategy::WeightedRoundRobin)
        );
        assert_eq!(Strategy::parse("Round_Robin"), None);
        assert_eq!(Strategy::parse("roundrobin"), None);
        assert_eq!(
            Strategy::RoundRobin.for_credentials(),
            Strategy::WeightedRoundRobin
        );
        assert_eq!(Strategy::Random.for_credentials(), Strategy::WeightedRandom);
        assert_eq!(Strategy::Failover.for_credentials(), Strategy::Failover);
    }

    #[test]
    fn empty_slice_gives_none() {
        for s in Strategy::ALL {
            assert_eq!(Selector::new(s).pick(&[], &at(0)), None);
        }
    }

    #[test]
    fn round_robin_is_exactly_even_in_order() {
        let eps = weighted(&[1, 5, 1]);
        let sel = Selector::new(Strategy::RoundRobin);
        assert_eq!(sequence(&sel, &eps, &at(0), 6), [0, 1, 2, 0, 1, 2]);
        assert_eq!(counts(&sel, &eps, 3_000, 0), [1_000, 1_000, 1_000]);
    }

    #[test]
    fn random_spreads_over_all() {
        let eps = weighted(&[1, 9, 1, 1]);
        let c = counts(&Selector::new(Strategy::Random), &eps, 4_000, 0);
        // Weights are ignored: each expects 1,000 (sd ≈ 27).
        assert!(c.iter().all(|&n| (850..=1_150).contains(&n)), "{c:?}");
    }

    #[test]
    fn weighted_random_follows_weights() {
        let eps = weighted(&[3, 1]);
        let c = counts(&Selector::new(Strategy::WeightedRandom), &eps, 2_000, 0);
        // 75% ± 5 points (sd ≈ 1 point).
        let share = c[0] as f64 / 2_000.0;
        assert!((0.70..=0.80).contains(&share), "{c:?}");
    }

    #[test]
    fn weighted_random_on_the_slow_path_follows_weights() {
        let eps = weighted(&[3, 1, 7]);
        let sel = Selector::new(Strategy::WeightedRandom);
        let ctx = PickContext {
            now_ms: 0,
            excluded: &[2],
            affinity: None,
        };
        let hits = (0..2_000)
            .filter(|_| sel.pick(&eps, &ctx).unwrap().index == 0)
            .count();
        let share = hits as f64 / 2_000.0;
        assert!((0.70..=0.80).contains(&share), "{hits}");
    }

    #[test]
    fn smooth_wrr_is_exact_over_a_cycle() {
        let eps = weighted(&[5, 1, 1]);
        let sel = Selector::new(Strategy::WeightedRoundRobin);
        // nginx's sequence for 5,1,1: a a b a c a a.
        assert_eq!(sequence(&sel, &eps, &at(0), 7), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&sel, &eps, 700, 0), [500, 100, 100]);
        // gcd-reduced: 10,2,2 is the same cycle.
        let eps = weighted(&[10, 2, 2]);
        let sel = Selector::new(Strategy::WeightedRoundRobin);
        assert_eq!(sequence(&sel, &eps, &at(0), 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn smooth_wrr_slow_path_is_exact_too() {
        // Excluding an index forces the mutex-held nginx step.
        let eps = weighted(&[5, 1, 1, 9]);
        let sel = Selector::new(Strategy::WeightedRoundRobin);
        let ctx = PickContext {
            now_ms: 0,
            excluded: &[3],
            affinity: None,
        };
        assert_eq!(sequence(&sel, &eps, &ctx, 7), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(sequence(&sel, &eps, &ctx, 7), [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn smooth_wrr_without_a_precomputed_cycle() {
        // 2,000 candidates with total weight ~5,000: too long to precompute, so every pick
        // runs the nginx step; over one cycle each endpoint gets exactly its weight.
        let weights: Vec<u32> = (0..2_000).map(|i| 1 + (i % 4)).collect();
        let total: u32 = weights.iter().sum();
        let eps = weighted(&weights);
        let sel = Selector::new(Strategy::WeightedRoundRobin);
        let c = counts(&sel, &eps, total as usize, 0);
        assert_eq!(c, weights.iter().map(|&w| w as usize).collect::<Vec<_>>());
    }

    #[test]
    fn smooth_wrr_stays_exact_when_the_set_changes() {
        let eps = weighted(&[5, 1, 1]);
        let sel = Selector::new(Strategy::WeightedRoundRobin);
        assert_eq!(counts(&sel, &eps, 7, 0), [5, 1, 1]);
        eps[2].state.eject(0, "401");
        assert_eq!(counts(&sel, &eps, 60, 10), [50, 10, 0]);
        // Back after the ejection and a good trial.
        let trial = sel.pick(&eps, &at(1_000)).unwrap();
        assert_eq!(
            trial,
            Pick {
                index: 2,
                trial: true
            }
        );
        eps[2].state.record_success(1_000, 1).unwrap();
        assert_eq!(counts(&sel, &eps, 70, 1_001), [50, 10, 10]);
    }

    #[test]
    fn weight_zero_counts_as_one() {
        let eps = weighted(&[0, 1]);
        let sel = Selector::new(Strategy::WeightedRoundRobin);
        assert_eq!(counts(&sel, &eps, 10, 0), [5, 5]);
    }

    #[test]
    fn least_connections_picks_the_least_loaded() {
        let eps = weighted(&[1, 1, 1]);
        let sel = Selector::new(Strategy::LeastConnections);
        let _g0 = [eps[0].state.start(), eps[0].state.start()];
        let _g2 = eps[2].state.start();
        for _ in 0..10 {
            assert_eq!(sel.pick(&eps, &at(0)).unwrap().index, 1);
        }
        let _g1 = [eps[1].state.start(), eps[1].state.start()];
        for _ in 0..10 {
            assert_eq!(sel.pick(&eps, &at(0)).unwrap().index, 2);
        }
        // Same on the slow path.
        let ctx = PickContext {
            now_ms: 0,
            excluded: &[1],
            affinity: None,
        };
        assert_eq!(sel.pick(&eps, &ctx).unwrap().index, 2);
    }

    #[test]
    fn least_connections_breaks_ties_round_robin() {
        let eps = weighted(&[1, 1, 1, 1]);
        let sel = Selector::new(Strategy::LeastConnections);
        assert_eq!(counts(&sel, &eps, 400, 0), [100, 100, 100, 100]);
        let guards: Vec<_> = eps.iter().map(|e| e.state.start()).collect();
        assert_eq!(counts(&sel, &eps, 400, 0), [100, 100, 100, 100]);
        drop(guards);
    }

    #[test]
    fn least_latency_prefers_the_fast_but_not_exclusively() {
        let eps = weighted(&[1, 1, 1, 1]);
        for (e, ms) in eps.iter().zip([200u64, 10, 50, 100]) {
            e.state.record_success(0, ms * 1_000);
        }
        let c = counts(&Selector::new(Strategy::LeastLatency), &eps, 6_000, 0);
        // Two distinct of four: the fastest wins the 3 pairs of 6 that contain it (50%),
        // the next 2/6, then 1/6; the slowest never wins.
        assert!((2_700..=3_300).contains(&c[1]), "{c:?}");
        assert!((1_700..=2_300).contains(&c[2]), "{c:?}");
        assert!((700..=1_300).contains(&c[3]), "{c:?}");
        assert_eq!(c[0], 0, "{c:?}");
    }

    #[test]
    fn least_latency_penalises_inflight() {
        let eps = weighted(&[1, 1]);
        eps[0].state.record_success(0, 10_000);
        eps[1].state.record_success(0, 30_000);
        let sel = Selector::new(Strategy::LeastLatency);
        assert_eq!(counts(&sel, &eps, 100, 0), [100, 0]);
        // 10 ms × (3 + 1) in flight costs more than 30 ms × 1.
        let _g: Vec<_> = (0..3).map(|_| eps[0].state.start()).collect();
        assert_eq!(counts(&sel, &eps, 100, 0), [0, 100]);
    }

    #[test]
    fn least_latency_tries_an_unknown_endpoint_one_at_a_time() {
        let eps = weighted(&[1, 1]);
        eps[0].state.record_success(0, 10_000);
        let sel = Selector::new(Strategy::LeastLatency);
        assert_eq!(
            sel.pick(&eps, &at(0)).unwrap().index,
            1,
            "new endpoints get sampled"
        );
        let guard = eps[1].state.start();
        assert_eq!(counts(&sel, &eps, 50, 0), [50, 0], "no stampede on an unknown");
        drop(guard);
        eps[1].state.record_success(0, 50_000);
        assert_eq!(counts(&sel, &eps, 50, 0), [50, 0]);
    }

    #[test]
    fn failover_sticks_to_the_first_until_it_is_ejected() {
        let eps = weighted(&[1, 1, 1]);
        let sel = Selector::new(Strategy::Failover);
        assert_eq!(counts(&sel, &eps, 100, 0), [100, 0, 0]);
        for _ in 0..3 {
            eps[0].state.record_failure(10, "502");
        }
        assert_eq!(counts(&sel, &eps, 100, 20), [0, 100, 0]);
        eps[1].state.eject(30, "401");
        assert_eq!(counts(&sel, &eps, 100, 40), [0, 0, 100]);
        // The first comes back through its trial, then takes everything again.
        assert_eq!(
            sel.pick(&eps, &at(1_010)),
            Some(Pick {
                index: 0,
                trial: true
            })
        );
        assert_eq!(counts(&sel, &eps, 10, 1_010), [0, 0, 10], "one trial only");
        eps[0].state.record_success(1_020, 1).unwrap();
        assert_eq!(counts(&sel, &eps, 100, 1_020), [100, 0, 0]);
    }

    #[test]
    fn lower_tier_serves_only_when_the_preferred_has_nothing() {
        // Declared out of order: priority decides, not position.
        let eps = tiered(&[(1, 1), (1, 0), (1, 0), (1, 2)]);
        for s in Strategy::ALL {
            let sel = Selector::new(s);
            let c = counts(&sel, &eps, 200, 0);
            assert_eq!(c[0] + c[3], 0, "{s}: {c:?}");
        }
        eps[1].state.cool_down(5_000);
        let sel = Selector::new(Strategy::RoundRobin);
        assert_eq!(counts(&sel, &eps, 10, 0), [0, 0, 10, 0]);
        eps[2].state.set_probe_result(0, false, "probe down");
        assert_eq!(counts(&sel, &eps, 10, 0), [10, 0, 0, 0]);
        // The cooldown ends by itself: tier 0 is back without any event.
        assert_eq!(counts(&sel, &eps, 10, 5_000), [0, 10, 0, 0]);
    }

    #[test]
    fn exclusion_is_respected() {
        let eps = tiered(&[(1, 0), (1, 0), (1, 1)]);
        for s in Strategy::ALL {
            let sel = Selector::new(s);
            let ctx = PickContext {
                now_ms: 0,
                excluded: &[0],
                affinity: None,
            };
            assert!((0..50).all(|_| sel.pick(&eps, &ctx).unwrap().index == 1), "{s}");
            // A whole tier excluded: the next tier serves the retry.
            let ctx = PickContext {
                now_ms: 0,
                excluded: &[0, 1],
                affinity: None,
            };
            assert_eq!(sel.pick(&eps, &ctx).unwrap().index, 2, "{s}");
            let ctx = PickContext {
                now_ms: 0,
                excluded: &[0, 1, 2],
                affinity: None,
            };
            assert_eq!(sel.pick(&eps, &ctx), None, "{s}");
        }
    }

    #[test]
    fn panic_mode_tries_the_soonest_once_per_period() {
        let eps = weighted(&[1, 1, 1]);
        eps[0].state.eject(100, "401");
        eps[1].state.eject(0, "401");
        eps[2].state.cool_down(5_000);
        let sel = Selector::new(Strategy::RoundRobin);
        assert_eq!(
            sel.pick(&eps, &at(200)),
            Some(Pick {
                index: 1,
                trial: true
            })
        );
        assert_eq!(sel.pick(&eps, &at(200)), None, "a burst gets one try, then 503");
        assert_eq!(sel.pick(&eps, &at(900)), None);
        // Excluding the soonest: the next soonest gets its own single try.
        let ctx = PickContext {
            now_ms: 900,
            excluded: &[1],
            affinity: None,
        };
        assert_eq!(
            sel.pick(&eps, &ctx),
            Some(Pick {
                index: 0,
                trial: true
            })
        );
        assert_eq!(sel.pick(&eps, &ctx), None);
        // Everything excluded: nothing, panic or not.
        let ctx = PickContext {
            now_ms: 900,
            excluded: &[0, 1, 2],
            affinity: None,
        };
        assert_eq!(sel.pick(&eps, &ctx), None);
        // Ejection over: the regular half-open trial.
        assert_eq!(
            sel.pick(&eps, &at(1_000)),
            Some(Pick {
                index: 1,
                trial: true
            })
        );
    }

    #[test]
    fn affinity_agrees_across_workers() {
        // Two workers: separate states, separate selectors, same names.
        let a = weighted(&[1, 1, 1, 1, 1]);
        let b = weighted(&[1, 1, 1, 1, 1]);
        let sa = Selector::new(Strategy::RoundRobin);
        let sb = Selector::new(Strategy::LeastConnections);
        let mut used = [0usize; 5];
        for key in 0..500u64 {
            let k = crate::balance::stable_hash(format!("session-{key}").as_bytes());
            let ctx = PickContext {
                now_ms: 0,
                excluded: &[],
                affinity: Some(k),
            };
            let pa = sa.pick(&a, &ctx).unwrap().index;
            assert_eq!(pa, sb.pick(&b, &ctx).unwrap().index);
            assert_eq!(pa, sa.pick(&a, &ctx).unwrap().index, "stable on repeat");
            used[pa] += 1;
        }
        assert!(used.iter().all(|&n| n > 50), "keys spread: {used:?}");
    }

    #[test]
    fn concurrent_round_robin_stays_exact() {
        let eps = weighted(&[1, 1, 1, 1]);
        let sel = Selector::new(Strategy::RoundRobin);
        let mut total = [0usize; 4];
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| counts(&sel, &eps, 1_000, 0)))
                .collect();
            for h in handles {
                for (t, c) in total.iter_mut().zip(h.join().unwrap()) {
                    *t += c;
                }
            }
        });
        assert_eq!(total, [1_000; 4]);
    }

    #[test]
    fn concurrent_pickers_get_one_trial() {
        let eps = weighted(&[1, 1]);
        for _ in 0..3 {
            eps[0].state.record_failure(0, "502");
        }
        let sel = Selector::new(Strategy::RoundRobin);
        let trials: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..200)
                            .filter(|_| sel.pick(&eps, &at(1_000)).unwrap().trial)
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(trials, 1);
    }

    #[test]
    fn selector_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Selector>();
        assert_send_sync::<EndpointState>();
        assert_send_sync::<crate::balance::RetryBudget>();
    }

    #[test]
    fn affinity_spreads_over_a_big_tier() {
        let eps = weighted(&vec![1; 100]);
        let sel = Selector::new(Strategy::RoundRobin);
        let keys: Vec<u64> = (0..20_000u64).map(crate::balance::mix64).collect();
        let mut used = vec![0usize; 100];
        for i in affinity_map(&sel, &eps, &keys, 0) {
            used[i] += 1;
        }
        // 200 keys each on average; sqrt(100) = 10 equal clusters keep it balanced.
        assert!(used.iter().all(|&n| (100..=320).contains(&n)), "{used:?}");
    }

    #[test]
    fn least_connections_windows_above_the_exact_limit() {
        let eps = weighted(&vec![1; 200]);
        let _busy: Vec<_> = eps
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 150)
            .map(|(_, e)| e.state.start())
            .collect();
        let sel = Selector::new(Strategy::LeastConnections);
        let c = counts(&sel, &eps, 200, 0);
        // The idle endpoint wins whenever the rotating window of 64 covers it.
        assert_eq!(c[150], 64);
    }

    fn affinity_map(sel: &Selector, eps: &[Endpoint], keys: &[u64], now: u64) -> Vec<usize> {
        keys.iter()
            .map(|&k| {
                let ctx = PickContext {
                    now_ms: now,
                    excluded: &[],
                    affinity: Some(k),
                };
                sel.pick(eps, &ctx).unwrap().index
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn affinity_moves_only_the_keys_of_removed_endpoints(
            // Above 64 endpoints the two-level scheme is used; up to 40 removals can
            // empty whole clusters.
            n in prop_oneof![2usize..12, 60usize..160],
            removed in proptest::collection::btree_set(0usize..160, 1..40),
            keys in proptest::collection::vec(any::<u64>(), 1..200),
            via_exclusion in any::<bool>(),
        ) {
            let removed: Vec<usize> = removed.into_iter().filter(|&r| r < n).collect();
            prop_assume!(!removed.is_empty() && removed.len() < n);
            let eps = weighted(&vec![1; n]);
            let sel = Selector::new(Strategy::Random);
            let before = affinity_map(&sel, &eps, &keys, 0);
            let after: Vec<usize> = if via_exclusion {
                keys.iter().map(|&k| {
                    let ctx = PickContext { now_ms: 0, excluded: &removed, affinity: Some(k) };
                    sel.pick(&eps, &ctx).unwrap().index
                }).collect()
            } else {
                for &r in &removed {
                    eps[r].state.eject(0, "gone");
                }
                affinity_map(&sel, &eps, &keys, 1)
            };
            // A second worker, built independently, agrees on the new placement.
            let other = weighted(&vec![1; n]);
            for &r in &removed {
                other[r].state.set_probe_result(0, false, "down");
            }
            prop_assert_eq!(&affinity_map(&Selector::new(Strategy::Failover), &other, &keys, 1), &after);
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(!removed.contains(a));
                if !removed.contains(b) {
                    prop_assert_eq!(a, b);
                }
            }
        }

        #[test]
        fn picks_are_always_available_and_in_the_best_tier(
            specs in proptest::collection::vec((1u32..5, 0i32..3, 0u8..4), 1..40),
            strategy in 0usize..7,
        ) {
            let eps = tiered(&specs.iter().map(|&(w, p, _)| (w, p)).collect::<Vec<_>>());
            for (e, &(_, _, fate)) in eps.iter().zip(&specs) {
                match fate {
                    1 => { e.state.eject(0, "x"); }
                    2 => e.state.cool_down(10_000),
                    _ => {}
                }
            }
            let best_tier = eps.iter().filter(|e| e.state.is_available(5)).map(|e| e.priority).min();
            let sel = Selector::new(Strategy::ALL[strategy]);
            for _ in 0..20 {
                match (sel.pick(&eps, &at(5)), best_tier) {
                    (Some(p), Some(t)) => {
                        prop_assert!(!p.trial);
                        prop_assert!(eps[p.index].state.is_available(5));
                        prop_assert_eq!(eps[p.index].priority, t);
                    }
                    (Some(p), None) => prop_assert!(p.trial, "panic pick"),
                    (None, Some(_)) => prop_assert!(false, "nothing picked with {:?}", best_tier),
                    (None, None) => {}
                }
            }
        }
    }
}
