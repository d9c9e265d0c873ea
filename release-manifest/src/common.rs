//! Arguments and helpers shared by the repository commands.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use molt_publish::tuf::Expirations;
use molt_publish::tuf::keys::KeyDir;
use molt_publish::tuf::repo::RepoError;
use molt_schema::cli::{Failure, exit};

/// How long newly signed metadata stays valid.
#[derive(Debug, Clone, clap::Args)]
pub struct ExpiryArgs {
    /// Root metadata lifetime (e.g. 365d).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "365days")]
    pub root_expires: Duration,
    /// Targets metadata lifetime.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "90days")]
    pub targets_expires: Duration,
    /// Snapshot metadata lifetime.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "7days")]
    pub snapshot_expires: Duration,
    /// Timestamp metadata lifetime.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1day")]
    pub timestamp_expires: Duration,
}

impl ExpiryArgs {
    pub fn expirations(&self) -> Expirations {
        Expirations {
            root: self.root_expires,
            targets: self.targets_expires,
            snapshot: self.snapshot_expires,
            timestamp: self.timestamp_expires,
        }
    }
}

pub fn open_keys(dir: &Path) -> Result<KeyDir, Failure> {
    KeyDir::open(dir)
        .with_context(|| format!("cannot use the keys directory {}", dir.display()))
        .map_err(|e| {
            Failure::new(exit::FAILED, e)
                .with_hint("create one with `release-manifest keys generate --out DIR`")
        })
}

/// A runtime for the async repository code.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::FAILED, e))
}

/// Most worker threads of [`regions_runtime`].
const MAX_WORKERS: usize = 8;

/// A runtime for the commands that work on many regions at once (`publish`, `rollout`,
/// `refresh --plan`, `repo upload`): every region is a task, and one worker thread per core
/// (at least 2, at most [`MAX_WORKERS`]) runs them, so that the signing, hashing and
/// verifying of different regions use every core instead of taking turns on one thread.
pub fn regions_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    let workers = std::thread::available_parallelism()
        .map_or(2, std::num::NonZeroUsize::get)
        .clamp(2, MAX_WORKERS);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("publish")
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::FAILED, e))
}

/// A repository error on its way out, with a hint where there is one.
pub fn repo_failure(err: RepoError, what: String) -> Failure {
    let hint = match &err {
        RepoError::Missing { .. } => {
            Some("create the region's repository with `release-manifest repo init`")
        }
        RepoError::VersionExists { .. } => {
            Some("published releases never change; bump the version and package again")
        }
        RepoError::Key(_) => Some(
            "check --keys; `add`, `set-*` and `refresh` need targets.pem, snapshot.pem and timestamp.pem",
        ),
        RepoError::RootThreshold { .. } => {
            Some("bring enough root keys (DIR/root/*.pem) to meet the root threshold")
        }
        RepoError::Tuf { .. } => Some(
            "the `caused by:` lines say why; most often --keys holds keys that this repository's root.json does not name (another repository's keys, or keys from before a rotation): use the keys directory the repository was made or last rotated with",
        ),
        _ => None,
    };
    let failure = Failure::new(exit::FAILED, anyhow::Error::new(err).context(what));
    match hint {
        Some(h) => failure.with_hint(h),
        None => failure,
    }
}
