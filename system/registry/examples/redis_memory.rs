//! Redis memory per registry entry, measured.
//!
//! ```text
//! cargo run --release -p chat-registry --example redis_memory -- [--entries 1000000] [--servers 200]
//! ```
//!
//! Starts its own `redis-server` on a free port (no persistence), reads `used_memory` from
//! `INFO memory`, writes N entries (N users with one connection each: usernames of 8 to 12
//! characters, server ids below `--servers`, random 64-bit connection ids) through
//! [`RedisRegistry::refresh`], one call per server as the heartbeats would, reads
//! `used_memory` again and prints the bytes per entry against the capacity plan's
//! assumption of 50 bytes per entry.

use chat_proto::ConnAddr;
use chat_registry::testing::RedisServer;
use chat_registry::{RedisConfig, RedisRegistry, Registry};
use std::time::{Duration, Instant};

/// The capacity plan's seed assumption.
const ASSUMED_BYTES_PER_ENTRY: f64 = 50.0;

struct Args {
    entries: u64,
    servers: u32,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        entries: 1_000_000,
        servers: 200,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--entries" => {
                args.entries = value("--entries")?
                    .parse()
                    .map_err(|e| format!("--entries: {e}"))?
            }
            "--servers" => {
                args.servers = value("--servers")?
                    .parse()
                    .map_err(|e| format!("--servers: {e}"))?
            }
            "-h" | "--help" => {
                return Err("usage: redis_memory [--entries N] [--servers S]".to_owned());
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: redis_memory [--entries N] [--servers S]"
                ));
            }
        }
    }
    if args.entries == 0 || args.servers == 0 {
        return Err("--entries and --servers must be positive".to_owned());
    }
    Ok(args)
}

/// SplitMix64: a fixed, seedless sequence, so every run writes the same data.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A unique username of 8 to 12 characters (for up to 36^4 users): random letters, then `i`
/// in base 36 with a fixed width `width`, so two users never share a name.
fn username(i: u64, width: usize) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut h = mix(i);
    let len = 8 + (h % 5) as usize;
    let prefix_len = len.saturating_sub(width).max(1);
    let mut name = String::with_capacity(prefix_len + width);
    for _ in 0..prefix_len {
        h = mix(h);
        name.push(LETTERS[(h % 26) as usize] as char);
    }
    let mut suffix = vec![b'0'; width];
    let mut n = i;
    for slot in suffix.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    name.push_str(std::str::from_utf8(&suffix).expect("ascii"));
    name
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let mut width = 1;
    while 36u64.saturating_pow(width as u32) < args.entries {
        width += 1;
    }
    let width = width.max(4);

    let server = RedisServer::start()?;
    let version = std::process::Command::new(
        std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned()),
    )
    .arg("--version")
    .output()
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    .unwrap_or_default();
    println!("{version}");
    println!("redis-server on {} (no persistence)", server.addr());

    let mut config = RedisConfig::new(server.addr());
    // Long enough that nothing expires while we measure.
    config.entry_ttl = Duration::from_secs(3600);
    config.request_timeout = Duration::from_secs(10);
    let registry = RedisRegistry::new(config.clone());
    let before = registry
        .used_memory_bytes()
        .await
        .map_err(|e| e.to_string())?;

    // The entries each server holds, as its heartbeat would re-assert them.
    let mut by_server: Vec<Vec<(String, ConnAddr)>> = vec![Vec::new(); args.servers as usize];
    let mut name_bytes = 0u64;
    for i in 0..args.entries {
        let user = username(i, width);
        name_bytes += user.len() as u64;
        let server = (mix(i ^ 0x5EED) % u64::from(args.servers)) as u32;
        let conn = mix(i.wrapping_add(1) << 1);
        by_server[server as usize].push((user, ConnAddr { server, conn }));
    }
    let example = by_server
        .iter()
        .flatten()
        .next()
        .map(|(u, a)| format!("{}u:{u} -> {a}", config.key_prefix))
        .unwrap_or_default();

    let started = Instant::now();
    for (server, entries) in by_server.iter().enumerate() {
        registry
            .refresh(server as u32, entries)
            .await
            .map_err(|e| format!("refresh of server {server}: {e}"))?;
    }
    let took = started.elapsed();

    let keys = registry.dbsize().await.map_err(|e| e.to_string())?;
    let after = registry
        .used_memory_bytes()
        .await
        .map_err(|e| e.to_string())?;
    let per_entry = after.saturating_sub(before) as f64 / args.entries as f64;
    println!(
        "entries:          {} ({} users x 1 connection, {} servers)",
        args.entries, args.entries, args.servers
    );
    println!("example:          {example}");
    println!(
        "mean username:    {:.1} chars",
        name_bytes as f64 / args.entries as f64
    );
    println!("keys in redis:    {keys}");
    println!(
        "refresh:          {:.2} s ({:.0} entries/s)",
        took.as_secs_f64(),
        args.entries as f64 / took.as_secs_f64()
    );
    println!("used_memory:      {before} -> {after} bytes");
    println!("bytes per entry:  {per_entry:.1}");
    println!(
        "vs assumption:    {:.2}x the {ASSUMED_BYTES_PER_ENTRY} bytes/entry seed assumption",
        per_entry / ASSUMED_BYTES_PER_ENTRY
    );
    if keys != args.entries {
        return Err(format!("expected {} keys, found {keys}", args.entries));
    }
    Ok(())
}
