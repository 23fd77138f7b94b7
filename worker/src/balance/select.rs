//! TEMPORARY local fallback for the balance contract (replaced by the `balance` branch on merge).
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

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

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        Some(match s {
            "round_robin" => Self::RoundRobin,
            "random" => Self::Random,
            "weighted_random" => Self::WeightedRandom,
            "weighted_round_robin" => Self::WeightedRoundRobin,
            "least_connections" => Self::LeastConnections,
            "least_latency" => Self::LeastLatency,
            "failover" => Self::Failover,
            _ => return None,
        })
    }
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::Random => "random",
            Self::WeightedRandom => "weighted_random",
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::LeastConnections => "least_connections",
            Self::LeastLatency => "least_latency",
            Self::Failover => "failover",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub weight: u32,
    pub priority: i32,
    pub id_hash: u64,
    pub state: Arc<EndpointState>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext<'a> {
    pub now_ms: u64,
    pub excluded: &'a [usize],
    pub affinity: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub trial: bool,
}

#[derive(Debug)]
pub struct Selector {
    pub strategy: Strategy,
    rr: AtomicUsize,
}

impl Selector {
    pub fn new(strategy: Strategy) -> Self {
        Self {
            strategy,
            rr: AtomicUsize::new(0),
        }
    }
    pub fn pick(&self, eps: &[Endpoint], ctx: &PickContext) -> Option<Pick> {
        let ok = |i: usize| !ctx.excluded.contains(&i) && eps[i].state.is_available(ctx.now_ms);
        let tier = (0..eps.len()).filter(|&i| ok(i)).map(|i| eps[i].priority).min()?;
        let cands: Vec<usize> = (0..eps.len())
            .filter(|&i| ok(i) && eps[i].priority == tier)
            .collect();
        if let Some(a) = ctx.affinity {
            let best = cands.iter().max_by_key(|&&i| super::mix64(a ^ eps[i].id_hash))?;
            return Some(Pick {
                index: *best,
                trial: false,
            });
        }
        let n = self.rr.fetch_add(1, Ordering::Relaxed);
        Some(Pick {
            index: cands[n % cands.len()],
            trial: false,
        })
    }
}
