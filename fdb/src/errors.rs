//! FoundationDB error codes and the [`KvError`] class each one maps to, in one place.
//!
//! Plain code over integers, so it builds and is tested without the client library. The
//! caller passes FoundationDB's own predicates (`fdb_error_predicate`, which needs
//! `libfdb_c`) for the codes not named here.

use chat_store::KvError;

/// The codes we map by name (FoundationDB's `error_definitions.h`).
pub mod code {
    pub const TRANSACTION_TOO_OLD: i32 = 1007;
    pub const NOT_COMMITTED: i32 = 1020;
    pub const COMMIT_UNKNOWN_RESULT: i32 = 1021;
    /// Raised when the transaction's `timeout` option fires (`TX_TIMEOUT`, feature `fdb`):
    /// the cluster did not answer in time.
    pub const TRANSACTION_TIMED_OUT: i32 = 1031;
    pub const PROCESS_BEHIND: i32 = 1037;
    pub const TRANSACTION_TOO_LARGE: i32 = 2101;
    pub const KEY_TOO_LARGE: i32 = 2102;
    pub const VALUE_TOO_LARGE: i32 = 2103;
}

/// Which call failed. A failed commit may hide an applied one; a failed read never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `get` or `get_range`.
    Read,
    Commit,
    /// Creating the database handle or a transaction.
    Open,
}

/// FoundationDB's own classification of an error code (`fdb_error_predicate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Predicates {
    /// `FDB_ERROR_PREDICATE_RETRYABLE`: `on_error` would retry it.
    pub retryable: bool,
    /// `FDB_ERROR_PREDICATE_MAYBE_COMMITTED`: the commit may have been applied.
    pub maybe_committed: bool,
}

/// The [`KvError`] for FoundationDB error `code` (with its `message`) raised by `phase`.
///
/// - 1020 → [`KvError::NotCommitted`], 1021 → [`KvError::CommitUnknownResult`],
///   1007 → [`KvError::TransactionTooOld`], 2101/2102/2103 → the size errors.
/// - A commit that failed with an error FoundationDB calls "maybe committed"
///   (1021, 1039 `cluster_version_changed`), or that timed out (1031: the commit was sent
///   and may have landed), → [`KvError::CommitUnknownResult`], so the run loop retries it
///   with `maybe_committed` set.
/// - 1031 and 1037 elsewhere, and every other code FoundationDB retries (1009
///   `future_version`, 1038 `database_locked`, throttling, ...) → [`KvError::Unavailable`].
/// - Anything else (a bad cluster file, `key_outside_legal_range`, ...) → [`KvError::Io`].
pub fn classify(code: i32, message: &str, phase: Phase, predicates: Predicates) -> KvError {
    match code {
        code::NOT_COMMITTED => KvError::NotCommitted,
        code::COMMIT_UNKNOWN_RESULT => KvError::CommitUnknownResult,
        code::TRANSACTION_TOO_OLD => KvError::TransactionTooOld,
        code::TRANSACTION_TOO_LARGE => KvError::TransactionTooLarge,
        code::KEY_TOO_LARGE => KvError::KeyTooLarge,
        code::VALUE_TOO_LARGE => KvError::ValueTooLarge,
        code::TRANSACTION_TIMED_OUT if phase == Phase::Commit => KvError::CommitUnknownResult,
        _ if phase == Phase::Commit && predicates.maybe_committed => KvError::CommitUnknownResult,
        code::TRANSACTION_TIMED_OUT | code::PROCESS_BEHIND => {
            KvError::Unavailable(format!("foundationdb error {code}: {message}"))
        }
        _ if predicates.retryable => {
            KvError::Unavailable(format!("foundationdb error {code}: {message}"))
        }
        _ => KvError::Io(format!("foundationdb error {code}: {message}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Predicates = Predicates {
        retryable: false,
        maybe_committed: false,
    };
    const RETRYABLE: Predicates = Predicates {
        retryable: true,
        maybe_committed: false,
    };
    const MAYBE: Predicates = Predicates {
        retryable: true,
        maybe_committed: true,
    };

    #[test]
    fn named_codes_map_to_their_classes_in_every_phase() {
        for phase in [Phase::Read, Phase::Commit, Phase::Open] {
            // FoundationDB calls 1020 and 1007 retryable and 1021 maybe-committed; the named
            // mapping wins over the predicates.
            assert_eq!(
                classify(1020, "not_committed", phase, RETRYABLE),
                KvError::NotCommitted
            );
            assert_eq!(
                classify(1021, "commit_unknown_result", phase, MAYBE),
                KvError::CommitUnknownResult
            );
            assert_eq!(
                classify(1007, "transaction_too_old", phase, RETRYABLE),
                KvError::TransactionTooOld
            );
            assert_eq!(
                classify(2101, "transaction_too_large", phase, NONE),
                KvError::TransactionTooLarge
            );
            assert_eq!(
                classify(2102, "key_too_large", phase, NONE),
                KvError::KeyTooLarge
            );
            assert_eq!(
                classify(2103, "value_too_large", phase, NONE),
                KvError::ValueTooLarge
            );
        }
    }

    #[test]
    fn a_commit_that_may_have_landed_is_an_unknown_result() {
        // cluster_version_changed: FoundationDB's maybe-committed predicate.
        assert_eq!(
            classify(1039, "cluster_version_changed", Phase::Commit, MAYBE),
            KvError::CommitUnknownResult
        );
        // A timed-out commit was sent and may have been applied.
        assert_eq!(
            classify(1031, "transaction_timed_out", Phase::Commit, NONE),
            KvError::CommitUnknownResult
        );
        assert!(classify(1031, "transaction_timed_out", Phase::Commit, NONE).maybe_committed());
    }

    #[test]
    fn transient_errors_outside_a_commit_are_unavailable_and_retryable() {
        for (code, predicates) in [
            (1031, NONE),
            (1037, RETRYABLE),
            (1009, RETRYABLE),
            (1038, RETRYABLE),
        ] {
            let error = classify(code, "x", Phase::Read, predicates);
            assert!(
                matches!(error, KvError::Unavailable(_)),
                "{code}: {error:?}"
            );
            assert!(error.is_retryable() && !error.maybe_committed(), "{code}");
        }
        assert!(matches!(
            classify(1039, "x", Phase::Read, MAYBE),
            KvError::Unavailable(_)
        ));
    }

    #[test]
    fn everything_else_is_io_and_not_retried() {
        // key_outside_legal_range, inverted_range, no_cluster_file_found.
        for code in [2004, 2005, 1515] {
            let error = classify(code, "message", Phase::Open, NONE);
            assert_eq!(
                error,
                KvError::Io(format!("foundationdb error {code}: message"))
            );
            assert!(!error.is_retryable());
        }
    }
}
