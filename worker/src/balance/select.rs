//! Picking one endpoint: enabled and not excluded → available (not ejected, not cooling
//! down; half-open trial admitted once) → lowest priority tier → strategy (or affinity
//! rendezvous) → panic mode (soonest-ending ejection, once) when nothing is available.
use std::sync::Arc;

use super::endpoint::EndpointState;

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

/// One selectable endpoint, in declaration order.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub weight: u32,
    pub priority: i32,
    /// `stable_hash` of the endpoint's name; rendezvous hashing input.
    pub id_hash: u64,
    pub state: Arc<EndpointState>,
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

#[derive(Debug)]
pub struct Selector {
    pub strategy: Strategy,
}
