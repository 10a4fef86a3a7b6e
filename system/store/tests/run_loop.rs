//! The `run` retry loop's contract, over the in-memory backend.

use chat_store::{Kv, KvError, MemoryKv, RunOptions, TxError, run_with};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

fn quick() -> RunOptions {
    RunOptions {
        retries_max: 5,
        backoff_initial: Duration::from_millis(1),
        backoff_max: Duration::from_millis(2),
        run_duration_max: Duration::from_secs(10),
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
enum AppError {
    #[error("refused")]
    Refused,
    #[error(transparent)]
    Kv(#[from] KvError),
}

impl TxError for AppError {
    fn as_kv(&self) -> Option<&KvError> {
        match self {
            AppError::Kv(e) => Some(e),
            AppError::Refused => None,
        }
    }
}

#[tokio::test]
async fn an_application_error_ends_the_loop_without_committing() {
    let kv = MemoryKv::new();
    let attempts = AtomicU32::new(0);
    let result: Result<(), AppError> = run_with(&kv, &quick(), |tx, _| {
        let attempts = &attempts;
        async move {
            attempts.fetch_add(1, Ordering::Relaxed);
            tx.set(b"k", b"v");
            Err(AppError::Refused)
        }
    })
    .await;
    assert_eq!(result, Err(AppError::Refused));
    assert_eq!(attempts.load(Ordering::Relaxed), 1);
    assert!(kv.is_empty(), "the failed attempt's writes were discarded");
}

#[tokio::test]
async fn a_non_retryable_store_error_is_not_retried() {
    let kv = MemoryKv::new();
    let attempts = AtomicU32::new(0);
    let result: Result<(), KvError> = run_with(&kv, &quick(), |tx, _| {
        let attempts = &attempts;
        async move {
            attempts.fetch_add(1, Ordering::Relaxed);
            tx.set(&vec![0; 10_001], b"v");
            Ok(())
        }
    })
    .await;
    assert_eq!(result, Err(KvError::KeyTooLarge));
    assert_eq!(attempts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn retries_stop_at_the_limit_with_the_last_error() {
    let kv = MemoryKv::new();
    let attempts = AtomicU32::new(0);
    let result: Result<(), KvError> = run_with(&kv, &quick(), |_, _| {
        let attempts = &attempts;
        async move {
            attempts.fetch_add(1, Ordering::Relaxed);
            Err(KvError::NotCommitted)
        }
    })
    .await;
    assert_eq!(result, Err(KvError::NotCommitted));
    assert_eq!(attempts.load(Ordering::Relaxed), quick().retries_max + 1);
}

#[tokio::test]
async fn retries_stop_at_the_deadline() {
    let kv = MemoryKv::new();
    let attempts = AtomicU32::new(0);
    // The deadline leaves room for a retry even after a long pause of this thread (with
    // 100 ms, a pause of 80 ms before the first retry ended the run after one attempt).
    let options = RunOptions {
        retries_max: 1000,
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(20),
        run_duration_max: Duration::from_millis(500),
    };
    let result: Result<(), KvError> = run_with(&kv, &options, |_, _| {
        let attempts = &attempts;
        async move {
            attempts.fetch_add(1, Ordering::Relaxed);
            Err(KvError::Unavailable("down".into()))
        }
    })
    .await;
    assert_eq!(result, Err(KvError::Unavailable("down".into())));
    let attempts = attempts.load(Ordering::Relaxed);
    // Every back-off sleeps at least 10 ms and all of them fit in the 500 ms: at most 50.
    assert!(
        (2..=51).contains(&attempts),
        "{attempts} attempts in 500 ms with 10-20 ms back-off"
    );
}

#[tokio::test]
async fn maybe_committed_is_set_after_an_unknown_result_and_stays_set() {
    let kv = MemoryKv::new();
    let seen = Mutex::new(Vec::new());
    let result: Result<u32, KvError> = run_with(&kv, &quick(), |_, maybe_committed| {
        let seen = &seen;
        async move {
            let attempt = {
                let mut seen = seen.lock().expect("lock");
                seen.push(maybe_committed);
                seen.len()
            };
            match attempt {
                1 => Err(KvError::CommitUnknownResult),
                2 => Err(KvError::NotCommitted),
                _ => Ok(7),
            }
        }
    })
    .await;
    assert_eq!(result, Ok(7));
    assert_eq!(*seen.lock().expect("lock"), vec![false, true, true]);
}

#[tokio::test]
async fn a_successful_run_commits_its_writes() {
    let kv = MemoryKv::new();
    let value: Result<&str, KvError> = run_with(&kv, &quick(), |tx, _| async move {
        tx.set(b"k", b"v");
        Ok("done")
    })
    .await;
    assert_eq!(value, Ok("done"));
    let tx = kv.begin().await.expect("begin");
    assert_eq!(tx.get(b"k").await, Ok(Some(b"v".to_vec())));
}
