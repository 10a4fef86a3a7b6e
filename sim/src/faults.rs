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
    /// Traffic from the first node to the second is lost until the end; the other way works.
    OneWay(Node, Node),
    /// The node stops running (its state kept) until the end, then resumes.
    Pause(Node),
    /// Every packet takes `min..max` ms until the end.
    Latency { min_ms: u64, max_ms: u64 },
    /// The store answers with conflicts, unknown results and latency until the end.
    StoreFaults,
    /// Redis restarts without persistence (instant).
    FlushRegistry,
    /// A client device drops its connection (instant).
    Disconnect(usize),
    /// The single node's disk fails (until the end, when the node restarts to recover).
    DiskErrors(DiskError),
    /// A client device stops reading its socket (its app frozen or in the background): the
    /// server may write `window_bytes` more, then its writes wait. Until the end, or with
    /// `forever` until the server drops the connection (the end is then only a cap).
    Stall {
        device: usize,
        window_bytes: usize,
        forever: bool,
    },
}

/// How a disk fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskError {
    /// Writes and syncs fail with EIO.
    Eio,
    /// Writes that grow the file fail with ENOSPC.
    Enospc,
    /// Only syncs fail (EIO), after the writes went to the cache.
    SyncEio,
}

impl DiskError {
    fn name(self) -> &'static str {
        match self {
            DiskError::Eio => "eio",
            DiskError::Enospc => "enospc",
            DiskError::SyncEio => "sync-eio",
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Kill(n) => write!(f, "kill {n}"),
            Fault::Partition(a, b) => write!(f, "partition {a} {b}"),
            Fault::Isolate(n) => write!(f, "isolate {n}"),
            Fault::OneWay(a, b) => write!(f, "one-way {a} {b}"),
            Fault::Pause(n) => write!(f, "pause {n}"),
            Fault::Latency { min_ms, max_ms } => write!(f, "latency {min_ms}..{max_ms}ms"),
            Fault::StoreFaults => write!(f, "store-faults"),
            Fault::FlushRegistry => write!(f, "flush-registry"),
            Fault::Disconnect(d) => write!(f, "disconnect device {d}"),
            Fault::DiskErrors(kind) => write!(f, "disk-errors {}", kind.name()),
            Fault::Stall {
                device,
                window_bytes,
                forever,
            } => {
                write!(
                    f,
                    "stall device {device} window {window_bytes}{}",
                    if *forever { " forever" } else { "" }
                )
            }
        }
    }
}

/// Schedules are written in milliseconds (`--show-schedule`, `--schedule FILE`): a start
/// drawn finer than that would replay a little differently from its file.
fn whole_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// How long a device that stopped reading for good waits for the server to drop it.
pub const STALL_FOREVER_CAP: Duration = Duration::from_secs(150);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Episode {
    pub start: Duration,
    /// Zero for instant faults.
    pub duration: Duration,
    pub fault: Fault,
}

impl std::fmt::Display for Episode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>7.2}s +{:>5.2}s {}",
            self.start.as_secs_f64(),
            self.duration.as_secs_f64(),
            self.fault
        )
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
    pub pauses: bool,
    /// The single node's disk fails now and then.
    pub disk: bool,
    /// `buggify` fault points in the production code are live.
    pub buggify: bool,
    /// One app server stays down for 25-40 s (a machine slow to come back): long enough to
    /// judge that its conversations fail over (the `failover` checker).
    pub long_outage: bool,
    /// Devices stop reading their sockets for a while, one perhaps for good.
    pub slow_consumers: bool,
    /// Mean seconds between episodes.
    pub mean_gap_secs: u64,
}

impl Swarm {
    /// No fault of any kind.
    pub const CALM: Swarm = Swarm {
        kills: false,
        partitions: false,
        latency: false,
        store: false,
        registry_loss: false,
        disconnects: false,
        pauses: false,
        disk: false,
        buggify: false,
        long_outage: false,
        slow_consumers: false,
        mean_gap_secs: 0,
    };
}

impl std::fmt::Display for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = |b: bool, name: &str| if b { format!(" {name}") } else { String::new() };
        write!(
            f,
            "swarm:{}{}{}{}{}{}{}{}{}{}{} every ~{}s",
            on(self.kills, "kills"),
            on(self.partitions, "partitions"),
            on(self.latency, "latency"),
            on(self.store, "store"),
            on(self.registry_loss, "registry-loss"),
            on(self.disconnects, "disconnects"),
            on(self.pauses, "pauses"),
            on(self.disk, "disk"),
            on(self.buggify, "buggify"),
            on(self.long_outage, "long-outage"),
            on(self.slow_consumers, "slow-consumers"),
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
    pub fn generate(
        seed: u64,
        cluster: &ClusterConfig,
        devices: usize,
        chaos: Duration,
    ) -> (Swarm, Schedule) {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17_u64);
        let mut swarm = Swarm {
            kills: rng.random_bool(0.6),
            partitions: rng.random_bool(0.5),
            latency: rng.random_bool(0.4),
            store: rng.random_bool(0.5),
            registry_loss: rng.random_bool(0.4),
            disconnects: rng.random_bool(0.5),
            pauses: rng.random_bool(0.3),
            disk: false,
            buggify: rng.random_bool(0.5),
            long_outage: false,
            slow_consumers: false,
            mean_gap_secs: rng.random_range(5..30),
        };
        if cluster.single {
            // Drawn only here, so the cluster's schedules stay those of their seeds.
            swarm.disk = rng.random_bool(0.6);
            // One node: nothing to partition it from but everyone; no registry to lose.
            swarm.partitions = false;
            swarm.store = false;
            swarm.registry_loss = false;
        }
        if !(swarm.kills
            || swarm.partitions
            || swarm.latency
            || swarm.store
            || swarm.registry_loss
            || swarm.disconnects
            || swarm.pauses
            || swarm.disk)
        {
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
            (swarm.pauses, 6),
            (swarm.disk, 7),
        ] {
            if on {
                kinds.push(kind);
            }
        }
        let servers = cluster.servers();
        let mut episodes = Vec::new();
        let mut t = Duration::from_secs(rng.random_range(1..=swarm.mean_gap_secs));
        // Faults start in the first 80% of the chaos phase; all end with it.
        while t < chaos.mul_f64(0.8) {
            let kind = kinds[rng.random_range(0..kinds.len())];
            let lasting = Duration::from_millis(rng.random_range(500..20_000));
            let pick = |rng: &mut StdRng| servers[rng.random_range(0..servers.len())];
            let (fault, duration) = match kind {
                0 => (Fault::Kill(pick(&mut rng)), lasting),
                1 if servers.len() > 1 => {
                    let a = pick(&mut rng);
                    let mut b = pick(&mut rng);
                    while b == a {
                        b = pick(&mut rng);
                    }
                    match rng.random_range(0..3) {
                        0 => (Fault::Partition(a, b), lasting),
                        1 => (Fault::OneWay(a, b), lasting),
                        _ => (Fault::Isolate(a), lasting),
                    }
                }
                2 => {
                    let min_ms = rng.random_range(5..100);
                    (
                        Fault::Latency {
                            min_ms,
                            max_ms: min_ms + rng.random_range(10..1000),
                        },
                        lasting,
                    )
                }
                3 => (Fault::StoreFaults, lasting),
                4 => (Fault::FlushRegistry, Duration::ZERO),
                5 => (
                    Fault::Disconnect(rng.random_range(0..devices.max(1))),
                    Duration::ZERO,
                ),
                7 => {
                    let kind = [DiskError::Eio, DiskError::Enospc, DiskError::SyncEio]
                        [rng.random_range(0..3)];
                    (
                        Fault::DiskErrors(kind),
                        Duration::from_millis(rng.random_range(200..5_000)),
                    )
                }
                // A stop-the-world pause (a long GC, a VM migration): up to 10 s, of any node.
                _ => (
                    Fault::Pause(pick(&mut rng)),
                    Duration::from_millis(rng.random_range(200..10_000)),
                ),
            };
            let duration = duration.min(chaos.saturating_sub(t));
            episodes.push(Episode {
                start: t,
                duration,
                fault,
            });
            t += Duration::from_millis(rng.random_range(100..=swarm.mean_gap_secs * 2000));
        }
        // Slow consumers, from a stream of their own (so the episodes above stay what each
        // seed made them before these existed), and before the long outage, which clears
        // the time around it.
        let mut slow = StdRng::seed_from_u64(seed ^ 0x736c_6f77_5f72_6561_u64);
        if devices > 0 && slow.random_bool(0.5) {
            swarm.slow_consumers = true;
            // Socket buffers from already full to 64 KiB; small ones fill within a ping or two.
            const WINDOWS_BYTES: [usize; 4] = [0, 1024, 16 * 1024, 64 * 1024];
            for _ in 0..slow.random_range(1..=3) {
                let start = whole_ms(chaos.mul_f64(slow.random_range(0.05..0.8)));
                let duration = Duration::from_millis(slow.random_range(1_000..20_000))
                    .min(chaos.saturating_sub(start));
                let fault = Fault::Stall {
                    device: slow.random_range(0..devices),
                    window_bytes: WINDOWS_BYTES[slow.random_range(0..4)],
                    forever: false,
                };
                episodes.push(Episode {
                    start,
                    duration,
                    fault,
                });
            }
            // One device stops for good, sometimes two (one may reach a connection server
            // straight, the other through a gateway: both must give up on it).
            let mut forever = vec![slow.random_range(0..devices)];
            if devices > 1 && slow.random_bool(0.5) {
                forever.push((forever[0] + 1 + slow.random_range(0..devices - 1)) % devices);
            }
            for device in forever {
                // Early enough that the server's give-up bound ends within the chaos phase.
                let start = whole_ms(chaos.mul_f64(slow.random_range(0.1..0.4)));
                let fault = Fault::Stall {
                    device,
                    window_bytes: WINDOWS_BYTES[slow.random_range(0..2)],
                    forever: true,
                };
                episodes.push(Episode {
                    start,
                    duration: STALL_FOREVER_CAP.min(chaos.saturating_sub(start)),
                    fault,
                });
            }
            episodes.sort_by_key(|e| e.start);
        }
        // Drawn from a stream of its own, so every other episode stays what the seed made it.
        let mut outage = StdRng::seed_from_u64(seed ^ 0x6c6f_6e67_5f6f_7574_u64);
        if !cluster.single && cluster.apps > 1 && outage.random_bool(0.3) {
            swarm.long_outage = true;
            let start = whole_ms(chaos.mul_f64(outage.random_range(0.2..0.6)));
            let duration = Duration::from_secs(outage.random_range(25..40));
            let app = outage.random_range(0..cluster.apps);
            // Alone, from 20 s before to its end: what the failover checker judges is that the
            // other app server takes over, so nothing else may be slowing sends down meanwhile.
            let quiet_from = start.saturating_sub(Duration::from_secs(20));
            episodes.retain(|e| e.start + e.duration < quiet_from || e.start > start + duration);
            episodes.push(Episode {
                start,
                duration,
                fault: Fault::Kill(Node::App(app)),
            });
            episodes.sort_by_key(|e| e.start);
        }
        (swarm, Schedule { episodes })
    }

    /// One episode a line, `<start ms> <duration ms> <fault>`: what `--schedule FILE` reads.
    pub fn to_text(&self) -> String {
        self.episodes
            .iter()
            .map(|e| {
                format!(
                    "{} {} {}\n",
                    e.start.as_millis(),
                    e.duration.as_millis(),
                    e.fault
                )
            })
            .collect()
    }

    /// Reads [`Schedule::to_text`]'s format; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let mut episodes = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| format!("schedule line {}: {why}: `{line}`", n + 1);
            let words: Vec<&str> = line.split_whitespace().collect();
            let [start, duration, fault @ ..] = words.as_slice() else {
                return Err(bad("expected `<start ms> <duration ms> <fault>`"));
            };
            let ms = |w: &str| {
                w.parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| bad("not a number of milliseconds"))
            };
            let fault = Fault::parse(fault).map_err(|why| bad(&why))?;
            episodes.push(Episode {
                start: ms(start)?,
                duration: ms(duration)?,
                fault,
            });
        }
        Ok(Schedule { episodes })
    }

    /// The same schedule without the episodes at `drop` (indices).
    pub fn without(&self, drop: &[usize]) -> Schedule {
        Schedule {
            episodes: self
                .episodes
                .iter()
                .enumerate()
                .filter(|(i, _)| !drop.contains(i))
                .map(|(_, e)| e.clone())
                .collect(),
        }
    }
}

impl Fault {
    /// Reads the words of [`Fault`]'s `Display` form (`kill app0`, `latency 5..100ms`, ...).
    pub fn parse(words: &[&str]) -> Result<Fault, String> {
        let node = |w: &str| Node::parse(w).ok_or_else(|| format!("no node `{w}`"));
        Ok(match words {
            ["kill", n] => Fault::Kill(node(n)?),
            ["partition", a, b] => Fault::Partition(node(a)?, node(b)?),
            ["isolate", n] => Fault::Isolate(node(n)?),
            ["one-way", a, b] => Fault::OneWay(node(a)?, node(b)?),
            ["pause", n] => Fault::Pause(node(n)?),
            ["latency", range] => {
                let (min, max) = range
                    .strip_suffix("ms")
                    .and_then(|r| r.split_once(".."))
                    .ok_or("latency is `<min>..<max>ms`")?;
                let number = |v: &str| {
                    v.parse::<u64>()
                        .map_err(|_| format!("`{v}` is not a number"))
                };
                Fault::Latency {
                    min_ms: number(min)?,
                    max_ms: number(max)?,
                }
            }
            ["store-faults"] => Fault::StoreFaults,
            ["flush-registry"] => Fault::FlushRegistry,
            ["disconnect", "device", d] => Fault::Disconnect(
                d.parse()
                    .map_err(|_| format!("`{d}` is not a device number"))?,
            ),
            ["stall", "device", d, "window", w, rest @ ..]
                if rest.is_empty() || rest == ["forever"] =>
            {
                Fault::Stall {
                    device: d
                        .parse()
                        .map_err(|_| format!("`{d}` is not a device number"))?,
                    window_bytes: w
                        .parse()
                        .map_err(|_| format!("`{w}` is not a number of bytes"))?,
                    forever: !rest.is_empty(),
                }
            }
            ["disk-errors", kind] => Fault::DiskErrors(match *kind {
                "eio" => DiskError::Eio,
                "enospc" => DiskError::Enospc,
                "sync-eio" => DiskError::SyncEio,
                other => return Err(format!("unknown disk error `{other}`")),
            }),
            _ => return Err(format!("unknown fault `{}`", words.join(" "))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_reads_back_what_it_writes() {
        let (_, schedule) =
            Schedule::generate(7, &ClusterConfig::default(), 50, Duration::from_secs(300));
        assert!(!schedule.episodes.is_empty());
        assert_eq!(Schedule::parse(&schedule.to_text()), Ok(schedule));
        assert!(Schedule::parse("12 0 explode app0").is_err());
    }
}
