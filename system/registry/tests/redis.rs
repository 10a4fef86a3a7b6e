//! `RedisRegistry` against a real `redis-server`: the conformance suite, the key layout,
//! defensive reads, and failures (Redis killed and restarted empty, Redis unreachable).
//!
//! Each test starts its own `redis-server` on a free port of 127.0.0.1 (port 6379 may be
//! someone else's) and kills it when done. Without `redis-server` the tests fail and say so.

use chat_registry::testing::{self, RedisBackend, RedisServer, addr, lookup_sorted};
use chat_registry::{RedisConfig, RedisRegistry, Registry, RegistryError};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn start_redis() -> RedisServer {
    RedisServer::start_retrying().unwrap_or_else(|e| panic!("{e}"))
}

/// A plain blocking client for looking at (and corrupting) what the registry wrote.
fn raw(server: &RedisServer) -> redis::Connection {
    redis::Client::open(format!("redis://{}/", server.addr()))
        .unwrap()
        .get_connection()
        .unwrap()
}

fn test_config(server_addr: String) -> RedisConfig {
    let mut config = RedisConfig::new(server_addr);
    config.key_prefix = "test:".to_owned();
    config.request_timeout = Duration::from_millis(1000);
    config.reconnect_backoff_min = Duration::from_millis(20);
    config.reconnect_backoff_max = Duration::from_millis(200);
    config
}

fn assert_unavailable<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, RegistryError>,
    started: Instant,
    bound: Duration,
) {
    let took = started.elapsed();
    assert!(
        matches!(result, Err(RegistryError::Unavailable(_))),
        "{what}: expected Unavailable, got {result:?}"
    );
    assert!(
        took <= bound,
        "{what}: failed after {took:?}, more than {bound:?}"
    );
}

#[tokio::test]
async fn redis_registry_passes_the_conformance_suite() {
    let server = start_redis();
    testing::conformance(&RedisBackend::new(server.addr(), Duration::from_secs(1))).await;
}

#[tokio::test]
async fn keys_follow_the_documented_layout() {
    let server = start_redis();
    let config = test_config(server.addr());
    let registry = RedisRegistry::new(config.clone());
    let before_ms = chat_proto::model::now_ms();
    registry.register("alice", addr(7, 42)).await.unwrap();
    let mut con = raw(&server);

    let key = "test:u:alice";
    assert_eq!(registry.user_key("alice"), key);
    let kind: String = redis::cmd("TYPE").arg(key).query(&mut con).unwrap();
    assert_eq!(kind, "hash");
    let fields: Vec<(String, String)> = redis::cmd("HGETALL").arg(key).query(&mut con).unwrap();
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].0, "7:42", "field is {{server}}:{{conn}}");
    let expiry_ms: u64 = fields[0].1.parse().expect("value is the expiry in ms");
    let ttl_ms = config.entry_ttl.as_millis() as u64;
    assert!(
        expiry_ms >= before_ms + ttl_ms && expiry_ms <= chat_proto::model::now_ms() + ttl_ms,
        "expiry {expiry_ms}"
    );
    let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap();
    assert!(
        pttl > 0 && pttl as u64 <= ttl_ms,
        "the key expires with the entry: PTTL {pttl}"
    );

    // The last connection's unregister leaves no key behind.
    registry.unregister("alice", addr(7, 42)).await.unwrap();
    let exists: i64 = redis::cmd("EXISTS").arg(key).query(&mut con).unwrap();
    assert_eq!(exists, 0);
}

#[tokio::test]
async fn lookups_skip_garbage_foreign_keys_and_expired_fields() {
    let server = start_redis();
    let registry = RedisRegistry::new(test_config(server.addr()));
    registry.register("alice", addr(1, 1)).await.unwrap();
    let mut con = raw(&server);
    let far_future = (chat_proto::model::now_ms() + 60_000).to_string();
    // Fields that are not connections, values that are not expiries, an expired entry.
    let _: i64 = redis::cmd("HSET")
        .arg("test:u:alice")
        .arg("garbage")
        .arg(&far_future)
        .arg("2:x")
        .arg(&far_future)
        .arg("3:3")
        .arg("not-a-number")
        .arg("4:4")
        .arg("1000")
        .query(&mut con)
        .unwrap();
    // A key of another type where a user's hash would be.
    let _: () = redis::cmd("SET")
        .arg("test:u:mallory")
        .arg("not a hash")
        .query(&mut con)
        .unwrap();

    let found = lookup_sorted(&registry, &["mallory", "alice", "bob"]).await;
    assert_eq!(found, vec![vec![], vec![addr(1, 1)], vec![]]);

    // The lookup deletes the expired field in the background; garbage stays (not ours).
    // The deadline only guards against hanging: generous for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let exists: bool = redis::cmd("HEXISTS")
            .arg("test:u:alice")
            .arg("4:4")
            .query(&mut con)
            .unwrap();
        if !exists {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "expired field 4:4 was not pruned"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let len: i64 = redis::cmd("HLEN")
        .arg("test:u:alice")
        .query(&mut con)
        .unwrap();
    assert_eq!(len, 4);

    // Writes to a foreign key fail as Unavailable, and do not break the connection.
    assert!(matches!(
        registry.register("mallory", addr(1, 2)).await,
        Err(RegistryError::Unavailable(_))
    ));
    assert_eq!(
        lookup_sorted(&registry, &["alice"]).await,
        vec![vec![addr(1, 1)]]
    );
}

#[tokio::test]
async fn concurrent_callers_share_one_connection() {
    let server = start_redis();
    let registry = Arc::new(RedisRegistry::new(test_config(server.addr())));
    let calls: Vec<_> = (0..64u64)
        .map(|i| {
            let registry = registry.clone();
            tokio::spawn(async move { registry.register(&format!("user{i}"), addr(1, i)).await })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let info = registry.info("clients").await.unwrap();
    assert!(
        info.lines().any(|l| l.trim() == "connected_clients:1"),
        "one connection expected:\n{info}"
    );
    assert_eq!(registry.dbsize().await.unwrap(), 64);
}

#[tokio::test]
async fn redis_crash_gives_unavailable_fast_and_refresh_restores_entries() {
    let mut server = start_redis();
    let config = test_config(server.addr());
    let bound = config.request_timeout + Duration::from_millis(250);
    let registry = RedisRegistry::new(config);
    let held = vec![
        ("alice".to_owned(), addr(1, 1)),
        ("bob".to_owned(), addr(1, 2)),
    ];
    for (user, a) in &held {
        registry.register(user, *a).await.unwrap();
    }
    registry.ping().await.unwrap();

    // Killed: every call fails, quickly, as Unavailable, and keeps failing while Redis is down.
    server.kill();
    for round in 0..5 {
        let started = Instant::now();
        assert_unavailable(
            &format!("lookup #{round}"),
            registry.lookup(&["alice".to_owned()]).await,
            started,
            bound,
        );
        let started = Instant::now();
        assert_unavailable(
            &format!("register #{round}"),
            registry.register("carol", addr(1, 3)).await,
            started,
            bound,
        );
        let started = Instant::now();
        assert_unavailable(
            &format!("refresh #{round}"),
            registry.refresh(1, &held).await,
            started,
            bound,
        );
        let started = Instant::now();
        assert_unavailable(
            &format!("unregister #{round}"),
            registry.unregister("alice", addr(1, 1)).await,
            started,
            bound,
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Restarted empty: the next heartbeat's refresh brings every entry back.
    server.restart().unwrap();
    // Only a guard against hanging: generous for a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match registry.refresh(1, &held).await {
            Ok(()) => break,
            Err(e) => {
                assert!(e.is_retryable());
                assert!(
                    Instant::now() < deadline,
                    "refresh still failing after restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(
        lookup_sorted(&registry, &["alice", "bob", "carol"]).await,
        vec![vec![addr(1, 1)], vec![addr(1, 2)], vec![]]
    );
}

#[tokio::test]
async fn unreachable_redis_gives_unavailable_within_the_timeout() {
    // Nobody listens on a port that was just free: refused at once.
    let closed = format!("127.0.0.1:{}", testing::free_port().unwrap());
    // TEST-NET-1 is never routed: the connect hangs (or fails at once), bounded by our timeout.
    let black_hole = "192.0.2.1:6379".to_owned();
    for target in [closed, black_hole] {
        let mut config = test_config(target.clone());
        config.request_timeout = Duration::from_millis(500);
        // Against the black hole every call waits out its timeout, so the slack is all the
        // machine has to fire the timer and run the task: 250 ms was tight for a loaded one.
        // Without our bound a connect hangs for minutes.
        let bound = config.request_timeout + Duration::from_secs(1);
        let registry = RedisRegistry::new(config);
        for round in 0..3 {
            let started = Instant::now();
            assert_unavailable(
                &format!("{target} lookup #{round}"),
                registry.lookup(&["alice".to_owned()]).await,
                started,
                bound,
            );
            let started = Instant::now();
            assert_unavailable(
                &format!("{target} register #{round}"),
                registry.register("alice", addr(1, 1)).await,
                started,
                bound,
            );
        }
    }
}
