//! Fault schedules: what goes wrong, and when, drawn from the seed.
//!
//! Swarm testing: each seed first chooses which kinds of fault are on and how often they
//! strike, then draws episodes of those kinds. An episode has a start and (for lasting
//! faults) an end: a node killed is restarted, a partition healed, a latency spike or a
//! store brownout ends. The schedule is drawn from its own RNG seeded by the seed, outside
//! the simulator, so it is explicit data: printed in the trace, and shrunk by running the
//! same seed with a subset of it ([`crate::shrink`]).

use crate::cluster::{ClusterConfig, Node};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The node crashes, and restarts at the episode's end.
    Kill(Node),
    /// No traffic between the two nodes until the end.
    Partition(Node, Node),
    /// No traffic to or from the node until the end.
    Isolate(Node),
    /// Every packet takes `min..max` ms until the end.
    Latency { min_ms: u64, max_ms: u64 },
    /// The store answers with conflicts, unknown results and latency until the end.
    StoreFaults,
    /// Redis restarts without persistence (instant).
    FlushRegistry,
    /// A client device drops its connection (instant).
    Disconnect(usize),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Kill(n) => write!(f, "kill {n}"),
            Fault::Partition(a, b) => write!(f, "partition {a} {b}"),
            Fault::Isolate(n) => write!(f, "isolate {n}"),
            Fault::Latency { min_ms, max_ms } => write!(f, "latency {min_ms}..{max_ms}ms"),
            Fault::StoreFaults => write!(f, "store-faults"),
            Fault::FlushRegistry => write!(f, "flush-registry"),
            Fault::Disconnect(d) => write!(f, "disconnect device {d}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub start: Duration,
    /// Zero for instant faults.
    pub duration: Duration,
    pub fault: Fault,
}

impl std::fmt::Display for Episode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>7.2}s +{:>5.2}s {}", self.start.as_secs_f64(), self.duration.as_secs_f64(), self.fault)
    }
}

/// Which kinds of fault a seed turns on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Swarm {
    pub kills: bool,
    pub partitions: bool,
    pub latency: bool,
    pub store: bool,
    pub registry_loss: bool,
    pub disconnects: bool,
    /// `buggify` fault points in the production code are live.
    pub buggify: bool,
    /// Mean seconds between episodes.
    pub mean_gap_secs: u64,
}

impl Swarm {
    /// No fault of any kind.
    pub const CALM: Swarm = Swarm { kills: false, partitions: false, latency: false, store: false, registry_loss: false, disconnects: false, buggify: false, mean_gap_secs: 0 };
}

impl std::fmt::Display for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = |b: bool, name: &str| if b { format!(" {name}") } else { String::new() };
        write!(
            f,
            "swarm:{}{}{}{}{}{}{} every ~{}s",
            on(self.kills, "kills"),
            on(self.partitions, "partitions"),
            on(self.latency, "latency"),
            on(self.store, "store"),
            on(self.registry_loss, "registry-loss"),
            on(self.disconnects, "disconnects"),
            on(self.buggify, "buggify"),
            self.mean_gap_secs
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    pub episodes: Vec<Episode>,
}

impl Schedule {
    /// Draws the swarm and the schedule for `seed`.
    pub fn generate(seed: u64, cluster: &ClusterConfig, devices: usize, chaos: Duration) -> (Swarm, Schedule) {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17_u64);
        let mut swarm = Swarm {
            kills: rng.random_bool(0.6),
            partitions: rng.random_bool(0.5),
            latency: rng.random_bool(0.4),
            store: rng.random_bool(0.5),
            registry_loss: rng.random_bool(0.4),
            disconnects: rng.random_bool(0.5),
            buggify: rng.random_bool(0.5),
            mean_gap_secs: rng.random_range(5..30),
        };
        if !(swarm.kills || swarm.partitions || swarm.latency || swarm.store || swarm.registry_loss || swarm.disconnects) {
            swarm.kills = true;
        }
        let mut kinds = Vec::new();
        for (on, kind) in [
            (swarm.kills, 0),
            (swarm.partitions, 1),
            (swarm.latency, 2),
            (swarm.store, 3),
            (swarm.registry_loss, 4),
            (swarm.disconnects, 5),
        ] {
            if on {
                kinds.push(kind);
            }
        }
        let mut servers = vec![Node::Fdb, Node::Redis];
        servers.extend((0..cluster.apps).map(Node::App));
        servers.extend((0..cluster.conns).map(Node::Conn));
        servers.extend((0..cluster.gateways).map(Node::Gateway));
        let mut episodes = Vec::new();
        let mut t = Duration::from_secs(rng.random_range(1..=swarm.mean_gap_secs));
        // Faults start in the first 80% of the chaos phase; all end with it.
        while t < chaos.mul_f64(0.8) {
            let kind = kinds[rng.random_range(0..kinds.len())];
            let lasting = Duration::from_millis(rng.random_range(500..20_000));
            let pick = |rng: &mut StdRng| servers[rng.random_range(0..servers.len())];
            let (fault, duration) = match kind {
                0 => (Fault::Kill(pick(&mut rng)), lasting),
                1 => {
                    let a = pick(&mut rng);
                    let mut b = pick(&mut rng);
                    while b == a {
                        b = pick(&mut rng);
                    }
                    if rng.random_bool(0.5) { (Fault::Partition(a, b), lasting) } else { (Fault::Isolate(a), lasting) }
                }
                2 => {
                    let min_ms = rng.random_range(5..100);
                    (Fault::Latency { min_ms, max_ms: min_ms + rng.random_range(10..1000) }, lasting)
                }
                3 => (Fault::StoreFaults, lasting),
                4 => (Fault::FlushRegistry, Duration::ZERO),
                _ => (Fault::Disconnect(rng.random_range(0..devices.max(1))), Duration::ZERO),
            };
            let duration = duration.min(chaos.saturating_sub(t));
            episodes.push(Episode { start: t, duration, fault });
            t += Duration::from_millis(rng.random_range(100..=swarm.mean_gap_secs * 2000));
        }
        (swarm, Schedule { episodes })
    }

    /// The same schedule without the episodes at `drop` (indices).
    pub fn without(&self, drop: &[usize]) -> Schedule {
        Schedule { episodes: self.episodes.iter().enumerate().filter(|(i, _)| !drop.contains(i)).map(|(_, e)| e.clone()).collect() }
    }
}
