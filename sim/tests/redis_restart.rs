//! The registry recovers after the simulated Redis node restarts (empty) several times.

#![cfg(madsim)]

use chat_registry::Registry;
use chat_sim::resp::{RespServer, RespState};
use chat_sim::seeds::run_seed;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn registry_recovers_after_redis_node_restarts() {
    for seed in 1..=5 {
        let outcome = run_seed(seed, Duration::from_secs(600), |_trace| async move {
            let handle = madsim::runtime::Handle::current();
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3));
            let state = Arc::new(RespState::new());
            let server_state = state.clone();
            let redis = handle
                .create_node()
                .name("redis")
                .ip(ip)
                .init(move || {
                    let state = server_state.clone();
                    async move {
                        let listener = loop {
                            match tokio::net::TcpListener::bind("0.0.0.0:6379").await {
                                Ok(l) => break l,
                                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                            }
                        };
                        RespServer::serve(listener, state).await
                    }
                })
                .build();
            let client = handle
                .create_node()
                .name("client")
                .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)))
                .build();
            let addr = SocketAddr::new(ip, 6379);
            let result = client
                .spawn(async move {
                    let registry = chat_registry::RedisRegistry::new(
                        chat_registry::RedisConfig::new(addr.to_string()),
                    );
                    let conn = chat_proto::ConnAddr { server: 1, conn: 7 };
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    registry
                        .register("alice", conn)
                        .await
                        .map_err(|e| format!("first register: {e}"))?;
                    for round in 0..3 {
                        // As the cluster's `restart` verb does: kill first, so the old
                        // incarnation's listener is closed (madsim's restart alone keeps it).
                        madsim::runtime::Handle::current().kill(redis.id());
                        madsim::runtime::Handle::current().restart(redis.id());
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        let mut ok = false;
                        for _ in 0..50 {
                            if registry.refresh(1, &[("alice".into(), conn)]).await.is_ok() {
                                ok = true;
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        if !ok {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            let raw = match tokio::net::TcpStream::connect(addr).await {
                                Ok(mut s) => {
                                    let w = s.write_all(b"PING\r\n").await.and(s.flush().await);
                                    let mut buf = [0u8; 64];
                                    let r = tokio::time::timeout(
                                        Duration::from_secs(1),
                                        s.read(&mut buf),
                                    )
                                    .await;
                                    format!(
                                        "raw connect ok, write {w:?}, read {r:?} {:?}",
                                        String::from_utf8_lossy(&buf[..8])
                                    )
                                }
                                Err(e) => format!("raw connect failed: {e}"),
                            };
                            let err = registry.refresh(1, &[("alice".into(), conn)]).await;
                            return Err(format!(
                                "round {round}: refresh never succeeded ({err:?}); {raw}"
                            ));
                        }
                        let found = registry
                            .lookup(&["alice".into()])
                            .await
                            .map_err(|e| e.to_string())?;
                        if found != vec![vec![conn]] {
                            return Err(format!("round {round}: lookup {found:?}"));
                        }
                    }
                    Ok::<(), String>(())
                })
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            result.map_err(|e| anyhow::anyhow!(e))
        });
        assert_eq!(outcome.result, Ok(()), "seed {seed}");
    }
}
