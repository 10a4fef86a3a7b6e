//! The connection registry: which connections (devices) each online user has, and on which
//! connection server.
//!
//! # Layout
//! - [`Registry`]: the seam. Connection servers register and unregister connections and
//!   refresh them on every heartbeat; app servers look recipients up.
//! - [`LocalRegistry`]: in-process implementation for `chat serve`, tests and the simulator.
//! - [`redis`]: [`RedisRegistry`], the registry in Redis shared by all servers; its module
//!   doc holds the key layout and the list of Redis commands it sends.
//! - `testing` (cargo feature `testing`, off by default): the conformance suite every
//!   implementation passes (against a real `redis-server` and the simulator's Redis model
//!   too), and a `redis-server` launcher. The feature also enables the Redis introspection
//!   calls of [`RedisRegistry`] that only tests use (`flush_all`, `dbsize`, `info`,
//!   `used_memory_bytes`).
//!
//! The trait is shaped for Redis: batched lookups (one round trip per message, not per
//! member), removal only of the exact entry (a stale unregister after a reconnect must not
//! remove the new connection), and `refresh` so entries can carry a TTL and be rebuilt after
//! the registry loses its data.

pub mod redis;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use crate::redis::{RedisConfig, RedisRegistry};

use chat_proto::{ConnAddr, ServerId};
use std::collections::HashMap;
use std::sync::Mutex;

/// Devices one user may have connected at once; more are refused.
pub const CONNS_PER_USER_MAX: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    #[error("user has {CONNS_PER_USER_MAX} connections already")]
    TooManyConnections,
}

impl RegistryError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, RegistryError::Unavailable(_))
    }
}

#[async_trait::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Records that `user` is connected at `addr`.
    async fn register(&self, user: &str, addr: ConnAddr) -> Result<(), RegistryError>;
    /// Forgets `addr` for `user`, if it is still recorded; other connections stay.
    async fn unregister(&self, user: &str, addr: ConnAddr) -> Result<(), RegistryError>;
    /// The connections of each user, in the order of `users`.
    async fn lookup(&self, users: &[String]) -> Result<Vec<Vec<ConnAddr>>, RegistryError>;
    /// Re-asserts every connection `server` holds (its heartbeat): extends their lifetime
    /// where entries expire, and restores entries the registry lost.
    async fn refresh(
        &self,
        server: ServerId,
        entries: &[(String, ConnAddr)],
    ) -> Result<(), RegistryError>;
    /// How long an entry lives without a [`Registry::refresh`]; `None` where entries never
    /// expire. A connection server must refresh well within it (checked when it starts).
    fn entry_ttl(&self) -> Option<std::time::Duration>;
}

/// A registry in this process's memory. Entries never expire: the process that holds the
/// connections is the process that holds the registry.
#[derive(Debug, Default)]
pub struct LocalRegistry {
    // A std Mutex: held for a map operation only, never across an await.
    users: Mutex<HashMap<String, Vec<ConnAddr>>>,
}

impl LocalRegistry {
    pub fn new() -> LocalRegistry {
        LocalRegistry::default()
    }

    /// Entries across all users (for metrics and tests).
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<ConnAddr>>> {
        // A panic while holding the lock cannot leave the map half-updated (each operation
        // is one push or retain), so a poisoned lock is still consistent.
        self.users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl Registry for LocalRegistry {
    fn entry_ttl(&self) -> Option<std::time::Duration> {
        None
    }

    async fn register(&self, user: &str, addr: ConnAddr) -> Result<(), RegistryError> {
        let mut users = self.lock();
        let conns = users.entry(user.to_owned()).or_default();
        if conns.contains(&addr) {
            return Ok(());
        }
        if conns.len() >= CONNS_PER_USER_MAX {
            return Err(RegistryError::TooManyConnections);
        }
        conns.push(addr);
        Ok(())
    }

    async fn unregister(&self, user: &str, addr: ConnAddr) -> Result<(), RegistryError> {
        let mut users = self.lock();
        if let Some(conns) = users.get_mut(user) {
            conns.retain(|c| *c != addr);
            if conns.is_empty() {
                users.remove(user);
            }
        }
        Ok(())
    }

    async fn lookup(&self, users: &[String]) -> Result<Vec<Vec<ConnAddr>>, RegistryError> {
        let map = self.lock();
        Ok(users
            .iter()
            .map(|u| map.get(u).cloned().unwrap_or_default())
            .collect())
    }

    async fn refresh(
        &self,
        _server: ServerId,
        entries: &[(String, ConnAddr)],
    ) -> Result<(), RegistryError> {
        let mut users = self.lock();
        for (user, addr) in entries {
            let conns = users.entry(user.clone()).or_default();
            if !conns.contains(addr) && conns.len() < CONNS_PER_USER_MAX {
                conns.push(*addr);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_registry_passes_the_conformance_suite() {
        testing::conformance(&testing::LocalBackend).await;
    }

    fn addr(server: u32, conn: u64) -> ConnAddr {
        ConnAddr { server, conn }
    }

    #[tokio::test]
    async fn multi_device_and_exact_removal() {
        let r = LocalRegistry::new();
        r.register("alice", addr(1, 1)).await.unwrap();
        r.register("alice", addr(2, 7)).await.unwrap();
        r.register("alice", addr(2, 7)).await.unwrap();
        r.register("bob", addr(1, 2)).await.unwrap();
        let found = r
            .lookup(&["alice".into(), "carol".into(), "bob".into()])
            .await
            .unwrap();
        assert_eq!(
            found,
            vec![vec![addr(1, 1), addr(2, 7)], vec![], vec![addr(1, 2)]]
        );

        // A stale unregister of a connection that is gone leaves the others alone.
        r.unregister("alice", addr(9, 9)).await.unwrap();
        r.unregister("alice", addr(1, 1)).await.unwrap();
        assert_eq!(
            r.lookup(&["alice".into()]).await.unwrap(),
            vec![vec![addr(2, 7)]]
        );
        r.unregister("alice", addr(2, 7)).await.unwrap();
        assert_eq!(r.len(), 1);
    }

    #[tokio::test]
    async fn refresh_restores_and_caps() {
        let r = LocalRegistry::new();
        r.refresh(
            1,
            &[("alice".into(), addr(1, 1)), ("alice".into(), addr(1, 1))],
        )
        .await
        .unwrap();
        assert_eq!(
            r.lookup(&["alice".into()]).await.unwrap(),
            vec![vec![addr(1, 1)]]
        );
        for i in 0..CONNS_PER_USER_MAX as u64 {
            r.register("bob", addr(1, 100 + i)).await.unwrap();
        }
        assert_eq!(
            r.register("bob", addr(1, 1000)).await,
            Err(RegistryError::TooManyConnections)
        );
    }
}
