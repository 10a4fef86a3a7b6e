//! The conformance suite against every local backend.

use chat_store::{MemoryKv, testing};
use std::sync::Arc;

#[tokio::test]
async fn memory_kv_conforms() {
    testing::conformance(Arc::new(MemoryKv::new())).await;
}

#[tokio::test]
async fn memory_kv_enforces_the_transaction_lifetime() {
    testing::tx_lifetime(Arc::new(MemoryKv::new())).await;
}

#[cfg(not(madsim))]
mod redb {
    use super::*;
    use chat_store::{Kv, RedbKv};

    fn open() -> (Arc<dyn Kv>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = RedbKv::open(dir.path().join("store.redb")).expect("open redb");
        (Arc::new(kv), dir)
    }

    #[tokio::test]
    async fn redb_kv_conforms() {
        let (kv, _dir) = open();
        testing::conformance(kv).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redb_kv_conforms_on_a_multi_thread_runtime() {
        let (kv, _dir) = open();
        testing::conformance(kv).await;
    }

    #[tokio::test]
    async fn redb_kv_enforces_the_transaction_lifetime() {
        let (kv, _dir) = open();
        testing::tx_lifetime(kv).await;
    }
}
