//! Which message store `chat app` opens, chosen at one place: `--store redb:PATH` or
//! `--store fdb:CLUSTER_FILE`.
//!
//! - `redb:PATH`: the embedded store ([`chat_store::RedbKv`]), one file with ONE owner
//!   process, so one app server per file.
//! - `fdb:CLUSTER_FILE`: a FoundationDB cluster ([`chat_fdb::FdbKv`]), shared by any number of
//!   app servers. Only in a binary built with the `fdb` feature
//!   (`cargo build --release --features fdb -p chat`), which needs libclang to build and
//!   FoundationDB's client library, `libfdb_c` 7.3, to link and run.
//!
//! Parsing works in every build, the simulator's included. [`StoreSpec::open`] touches the
//! real filesystem or FoundationDB, so it is not built under `--cfg madsim` (the simulator
//! hands its nodes simulated stores itself).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

#[cfg(not(madsim))]
use anyhow::Context;
#[cfg(not(madsim))]
use chat_store::Kv;
#[cfg(not(madsim))]
use std::sync::Arc;

/// The forms `--store` accepts, for error messages.
const EXPECTED: &str = "expected redb:PATH or fdb:CLUSTER_FILE";

/// How to build a binary that can open `fdb:` stores, for the error a build without it gives.
pub const FDB_BUILD_HINT: &str = "build it with `cargo build --release --features fdb -p chat` \
     (needs libclang-dev to build and FoundationDB's client library libfdb_c 7.3 to link and run)";

/// A message store named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// `redb:PATH`: the embedded store in the redb file `PATH` (created, with its directory,
    /// if absent). One owner process per file.
    Redb(PathBuf),
    /// `fdb:CLUSTER_FILE`: the FoundationDB cluster that `CLUSTER_FILE` names.
    Fdb(PathBuf),
}

/// Why a `--store` value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseStoreError(String);

impl fmt::Display for ParseStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseStoreError {}

impl FromStr for StoreSpec {
    type Err = ParseStoreError;

    fn from_str(s: &str) -> Result<StoreSpec, ParseStoreError> {
        let refuse = |why: String| Err(ParseStoreError(why));
        if s.is_empty() {
            return refuse(format!("empty store: {EXPECTED}"));
        }
        // A kind is a plain word before the first ':'; anything else (a path, perhaps one
        // containing ':') has no kind.
        let kind_and_rest = s.split_once(':').filter(|(kind, _)| {
            !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphanumeric())
        });
        let Some((kind, rest)) = kind_and_rest else {
            return refuse(format!(
                "`{s}` names no store kind: {EXPECTED} (a redb file there is redb:{s})"
            ));
        };
        let (spec, what): (fn(PathBuf) -> StoreSpec, &str) = match kind {
            "redb" => (StoreSpec::Redb, "PATH, the redb file"),
            "fdb" => (
                StoreSpec::Fdb,
                "CLUSTER_FILE, the FoundationDB cluster file",
            ),
            _ => return refuse(format!("unknown store kind `{kind}`: {EXPECTED}")),
        };
        if rest.is_empty() {
            return refuse(format!("`{s}` lacks its {what}: {EXPECTED}"));
        }
        Ok(spec(PathBuf::from(rest)))
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Redb(path) => write!(f, "redb:{}", path.display()),
            StoreSpec::Fdb(path) => write!(f, "fdb:{}", path.display()),
        }
    }
}

/// What must outlive the opened store: FoundationDB's network thread, for `fdb:` (nothing
/// for `redb:`). Hold it until the app server has stopped and drop it before the process
/// exits: dropping it stops and joins the network thread, which FoundationDB requires before
/// exit (an abort is fine), and after which no FoundationDB call completes.
#[cfg(not(madsim))]
#[must_use = "dropping the guard stops FoundationDB's network, and with it the store"]
pub struct StoreGuard {
    #[cfg(feature = "fdb")]
    _network: Option<chat_fdb::NetworkGuard>,
}

#[cfg(not(madsim))]
impl StoreSpec {
    /// Opens the store: the redb file (creating its directory), or, with the `fdb` feature,
    /// FoundationDB's client network (once per process) and the cluster.
    ///
    /// Without the `fdb` feature, `fdb:` is refused with a message saying how to build a
    /// binary that has it.
    pub fn open(&self) -> anyhow::Result<(Arc<dyn Kv>, StoreGuard)> {
        match self {
            StoreSpec::Redb(path) => {
                let kv = open_redb(path)?;
                let guard = StoreGuard {
                    #[cfg(feature = "fdb")]
                    _network: None,
                };
                Ok((Arc::new(kv), guard))
            }
            StoreSpec::Fdb(cluster_file) => open_fdb(cluster_file),
        }
    }
}

/// Opens (or creates) the redb file at `path`, readable by its owner only: its directory
/// 0700 (created if missing), the file 0600. Messages and password hashes are in it.
#[cfg(not(madsim))]
pub fn open_redb(path: &std::path::Path) -> anyhow::Result<chat_store::RedbKv> {
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        private_dir(dir)?;
    }
    let kv = chat_store::RedbKv::open(path)
        .with_context(|| format!("opening the redb store {}", path.display()))?;
    // redb creates the file with the process's umask; the directory kept it private meanwhile.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    Ok(kv)
}

/// Creates `dir` (and its parents) if missing and makes it accessible to its owner only.
#[cfg(not(madsim))]
pub fn private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        // An existing directory too: it holds the store and the token secret.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
    }
    #[cfg(not(unix))]
    builder
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    Ok(())
}

#[cfg(all(not(madsim), feature = "fdb"))]
fn open_fdb(cluster_file: &std::path::Path) -> anyhow::Result<(Arc<dyn Kv>, StoreGuard)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    // FoundationDB's network starts once per process; a second `boot` panics.
    static BOOTED: AtomicBool = AtomicBool::new(false);

    // The client would fail lazily and less clearly (no_cluster_file_found); say it here.
    anyhow::ensure!(
        cluster_file.is_file(),
        "the FoundationDB cluster file {} does not exist (--store fdb:CLUSTER_FILE)",
        cluster_file.display()
    );
    anyhow::ensure!(
        !BOOTED.swap(true, Ordering::SeqCst),
        "FoundationDB's network was already started in this process; it can be started once"
    );
    // SAFETY: `boot`'s contract is that the guard is dropped before the process exits, after
    // the database. It goes into the returned `StoreGuard`, whose documentation passes that
    // contract on; its one holder, `chat app` (`run_app` in main.rs), drops it once the app
    // server has stopped, before `main` returns.
    let network = unsafe { chat_fdb::FdbKv::boot() };
    let kv = chat_fdb::FdbKv::open(Some(cluster_file)).with_context(|| {
        format!(
            "opening the FoundationDB cluster of {}",
            cluster_file.display()
        )
    })?;
    tracing::info!(cluster_file = %cluster_file.display(), "opened FoundationDB store");
    Ok((
        Arc::new(kv),
        StoreGuard {
            _network: Some(network),
        },
    ))
}

#[cfg(all(not(madsim), not(feature = "fdb")))]
fn open_fdb(_cluster_file: &std::path::Path) -> anyhow::Result<(Arc<dyn Kv>, StoreGuard)> {
    anyhow::bail!(
        "this chat binary was built without the `fdb` feature, so it has no FoundationDB \
         client; {FDB_BUILD_HINT}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(s: &str) -> String {
        match s.parse::<StoreSpec>() {
            Ok(spec) => panic!("{s:?} parsed as {spec:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_redb_and_fdb() {
        assert_eq!(
            "redb:/x/y".parse::<StoreSpec>(),
            Ok(StoreSpec::Redb("/x/y".into()))
        );
        assert_eq!(
            "redb:./chat-data/messages.redb".parse::<StoreSpec>(),
            Ok(StoreSpec::Redb("./chat-data/messages.redb".into()))
        );
        assert_eq!(
            "fdb:/etc/foundationdb/fdb.cluster".parse::<StoreSpec>(),
            Ok(StoreSpec::Fdb("/etc/foundationdb/fdb.cluster".into()))
        );
        // Only the first ':' separates the kind.
        assert_eq!(
            "redb:/x:y".parse::<StoreSpec>(),
            Ok(StoreSpec::Redb("/x:y".into()))
        );
    }

    #[test]
    fn displays_as_it_parses() {
        for s in ["redb:/x/y", "fdb:/etc/foundationdb/fdb.cluster"] {
            assert_eq!(s.parse::<StoreSpec>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn refuses_anything_else_clearly() {
        assert_eq!(
            refused(""),
            "empty store: expected redb:PATH or fdb:CLUSTER_FILE"
        );
        assert_eq!(
            refused("redb:"),
            "`redb:` lacks its PATH, the redb file: expected redb:PATH or fdb:CLUSTER_FILE"
        );
        assert_eq!(
            refused("fdb:"),
            "`fdb:` lacks its CLUSTER_FILE, the FoundationDB cluster file: expected redb:PATH or \
             fdb:CLUSTER_FILE"
        );
        assert_eq!(
            refused("mysql:x"),
            "unknown store kind `mysql`: expected redb:PATH or fdb:CLUSTER_FILE"
        );
        assert_eq!(
            refused("/plain/path"),
            "`/plain/path` names no store kind: expected redb:PATH or fdb:CLUSTER_FILE \
             (a redb file there is redb:/plain/path)"
        );
        assert!(refused("./a:b").contains("names no store kind"));
        assert!(refused(":x").contains("names no store kind"));
        // Kinds are case-sensitive, like the flag's documentation.
        assert!(refused("REDB:/x").contains("unknown store kind `REDB`"));
    }

    #[test]
    fn clap_takes_the_flag_through_from_str() {
        use clap::Parser;
        #[derive(Parser, Debug)]
        struct Args {
            #[arg(long, default_value = "redb:./chat-data/messages.redb")]
            store: StoreSpec,
        }
        let args = Args::try_parse_from(["chat", "--store", "fdb:/etc/fdb.cluster"]).unwrap();
        assert_eq!(args.store, StoreSpec::Fdb("/etc/fdb.cluster".into()));
        let args = Args::try_parse_from(["chat"]).unwrap();
        assert_eq!(
            args.store,
            StoreSpec::Redb("./chat-data/messages.redb".into())
        );
        let error = Args::try_parse_from(["chat", "--store", "/var/lib/chat"]).unwrap_err();
        assert!(error.to_string().contains(EXPECTED), "{error}");
    }

    #[cfg(not(madsim))]
    #[tokio::test]
    async fn opens_redb_creating_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/messages.redb");
        let spec: StoreSpec = format!("redb:{}", path.display()).parse().unwrap();
        {
            let (kv, _guard) = spec.open().unwrap();
            let tx = kv.begin().await.unwrap();
            tx.set(b"k", b"v");
            tx.commit().await.unwrap();
        }
        assert!(path.is_file());
        // Durable: a second open reads it back.
        let (kv, _guard) = spec.open().unwrap();
        let tx = kv.begin().await.unwrap();
        assert_eq!(tx.get(b"k").await.unwrap(), Some(b"v".to_vec()));
    }

    #[cfg(all(not(madsim), not(feature = "fdb")))]
    #[test]
    fn fdb_without_the_feature_says_how_to_build_it() {
        let spec: StoreSpec = "fdb:/etc/foundationdb/fdb.cluster".parse().unwrap();
        let error = match spec.open() {
            Ok(_) => panic!("opened fdb: without the fdb feature"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains("built without the `fdb` feature"), "{error}");
        assert!(
            error.contains("cargo build --release --features fdb -p chat"),
            "{error}"
        );
        assert!(
            error.contains("libclang-dev") && error.contains("libfdb_c"),
            "{error}"
        );
    }

    #[cfg(all(not(madsim), feature = "fdb"))]
    #[test]
    fn fdb_with_a_missing_cluster_file_is_refused_before_booting() {
        let dir = tempfile::tempdir().unwrap();
        let spec = StoreSpec::Fdb(dir.path().join("absent.cluster"));
        let error = match spec.open() {
            Ok(_) => panic!("opened a missing cluster file"),
            Err(e) => format!("{e:#}"),
        };
        assert!(error.contains("does not exist"), "{error}");
    }
}
