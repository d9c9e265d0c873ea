//! The host's side: load a region's repository through tough, check the manifest's
//! region, keep the datastore across runs, and read targets that TUF verifies.
//!
//! The datastore (`<state>/tuf/<region>`) is what makes rollback protection survive
//! between runs: tough records there the newest timestamp, snapshot, targets and root it
//! has accepted, and the latest time it has seen. A load works on a copy; the copy
//! replaces the datastore only after the whole load and the manifest's `Region` check have
//! passed, by renaming a fresh symlink over `<state>/tuf/<region>` (so a wrong-region or
//! failed load never poisons it, and a crash leaves either the old or the new one).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt as _;
use jiff::Timestamp;
use serde::Serialize;
use tough::schema::RoleType;
use tough::{
    ExpirationEnforcement, Repository, RepositoryLoader, TargetName, Transport, TransportErrorKind,
};
use url::Url;

use molt_schema::artifact::Sha256;

use crate::retry::{self, RetryPolicy};
use molt_schema::manifest::MANIFEST_TARGET;
use molt_schema::manifest::{Manifest, ManifestError};
use molt_schema::region::Region;

/// A cause kept as the source of a [`TrustError`], for the renderer's `caused by:` lines.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a region's repository could not be trusted or read. The security failures have
/// their own variants so callers and tests can match them; all of them exit 4.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{role} metadata has expired")]
    Expired { role: String },
    #[error(
        "rollback refused: {role} version {offered} is older than version {trusted}, which this host has already seen"
    )]
    Rollback {
        role: String,
        trusted: u64,
        offered: u64,
    },
    #[error("{role} metadata is not validly signed")]
    Signature {
        role: String,
        #[source]
        source: BoxError,
    },
    #[error(
        "{role} version {fetched} does not match version {expected} listed by the metadata above it (mix-and-match)"
    )]
    VersionMismatch {
        role: String,
        fetched: u64,
        expected: u64,
    },
    #[error("hash mismatch for {what}: expected {expected}, got {calculated}")]
    HashMismatch {
        what: String,
        expected: String,
        calculated: String,
    },
    #[error("{what} is larger than {max} bytes, {limit} (endless data)")]
    LengthExceeded {
        /// The file that was too long (its name in the repository).
        what: String,
        max: u64,
        /// Who set the limit: the length the role above lists, or this host's own.
        limit: String,
    },
    #[error("the repository offers more than {max} root.json updates in a row (endless data)")]
    TooManyRootUpdates { max: u64 },
    #[error("the manifest is for region {found}, but this host is in {expected}")]
    WrongRegion { expected: String, found: String },
    #[error(
        "the system clock went backwards: it reads {now}, but this host already saw {latest_known}; metadata expiry cannot be checked"
    )]
    ClockSteppedBack {
        now: Timestamp,
        latest_known: Timestamp,
    },
    #[error("the repository's signed metadata is inconsistent: {detail}")]
    Inconsistent { detail: String },
    #[error("{what} is malformed")]
    Malformed {
        what: String,
        #[source]
        source: BoxError,
    },
    #[error("manifest entry {target} disagrees with its signed TUF target: {detail}")]
    ChecksumDisagrees { target: String, detail: String },
    #[error("{url} was not found")]
    NotFound { url: String },
    #[error("the repository lists no target {name}")]
    NoTarget { name: String },
    #[error("cannot fetch {url}")]
    Transport {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("cannot {action} the datastore {path}")]
    Datastore {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the TUF client failed")]
    Other(#[source] BoxError),
}

impl TrustError {
    /// True for failures of verification (exit 4): signatures, hashes, lengths, expiry,
    /// rollback, mix-and-match, wrong region, malformed metadata. False for failures to
    /// reach the repository or to use local files (exit 1).
    pub fn is_verification(&self) -> bool {
        !matches!(
            self,
            TrustError::NotFound { .. }
                | TrustError::Transport { .. }
                | TrustError::Datastore { .. }
                | TrustError::Other(_)
        )
    }

    /// True when another attempt may succeed: the repository could not be reached, or
    /// answered with a 5xx, 408 or 429, or a transfer broke off ([`retry::is_transient`]).
    ///
    /// A transfer that hit its deadline or the throughput floor is not retried: metadata
    /// files are small, and a server that trickles them would otherwise hold the update
    /// lock for the whole deadline on every attempt.
    pub fn is_transient(&self) -> bool {
        use crate::transport::TransferError;
        match self {
            TrustError::Transport { source, .. } => source
                .downcast_ref::<tough::TransportError>()
                .is_some_and(|e| {
                    retry::is_transient(e)
                        && !matches!(
                            retry::transfer_error(e),
                            Some(TransferError::Deadline { .. } | TransferError::Throughput { .. })
                        )
                }),
            _ => false,
        }
    }

    /// A hint for the operator, when there is a fix to suggest.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            TrustError::ClockSteppedBack { .. } => Some(
                "fix the system clock (check NTP: `timedatectl status`, chrony or ntpd), then retry",
            ),
            TrustError::Expired { .. } => Some(
                "the publisher must run `release-manifest refresh`; if the clock is wrong, fix NTP",
            ),
            TrustError::WrongRegion { .. } => Some(
                "check `region` and `source` in /etc/molt/agent.toml: the source must be this region's repository",
            ),
            TrustError::Rollback { .. } => Some(
                "someone is serving old metadata (a mirror or cache that went stale, or an attack); do not delete the datastore to get past this",
            ),
            TrustError::NotFound { .. } => Some(
                "check the source URL and that the region's repository was created with `release-manifest repo init`",
            ),
            TrustError::Inconsistent { .. } => Some(
                "the repository is broken or was tampered with; the publisher must check it with `release-manifest verify` and publish again (this host keeps its version)",
            ),
            _ => None,
        }
    }

    /// Maps a tough error to the variant that names what went wrong.
    pub fn from_tough(err: tough::error::Error) -> TrustError {
        use tough::error::Error as E;
        match err {
            E::ExpiredMetadata { role, .. } => TrustError::Expired {
                role: role.to_string(),
            },
            E::OlderMetadata {
                role,
                current_version,
                new_version,
                ..
            } => TrustError::Rollback {
                role: role.to_string(),
                trusted: current_version,
                offered: new_version,
            },
            E::OlderSnapshotInTimestamp {
                snapshot_new,
                snapshot_old,
                ..
            } => TrustError::Rollback {
                role: "snapshot".into(),
                trusted: snapshot_old,
                offered: snapshot_new,
            },
            E::SnapshotRoleRollback {
                role,
                old_role_version,
                new_role_version,
                ..
            } => TrustError::Rollback {
                role,
                trusted: old_role_version,
                offered: new_role_version,
            },
            E::VerifyMetadata { role, source, .. } => TrustError::Signature {
                role: role.to_string(),
                source: source.into(),
            },
            E::VerifyRoleMetadata { role, source, .. } => TrustError::Signature {
                role,
                source: source.into(),
            },
            E::VerifyTrustedMetadata { source, .. } => TrustError::Signature {
                role: "trusted root".into(),
                source: source.into(),
            },
            E::VersionMismatch {
                role,
                fetched,
                expected,
                ..
            } => TrustError::VersionMismatch {
                role: role.to_string(),
                fetched,
                expected,
            },
            E::HashMismatch {
                context,
                calculated,
                expected,
                ..
            } => TrustError::HashMismatch {
                what: context,
                expected,
                calculated,
            },
            E::MaxSizeExceeded {
                max_size,
                specifier,
                ..
            } => length_exceeded("a file", max_size, specifier),
            E::MaxUpdatesExceeded {
                max_root_updates, ..
            } => TrustError::TooManyRootUpdates {
                max: max_root_updates,
            },
            E::SystemTimeSteppedBackward {
                sys_time,
                latest_known_time,
            } => TrustError::ClockSteppedBack {
                now: sys_time,
                latest_known: latest_known_time,
            },
            E::ParseMetadata { role, source, .. } => TrustError::Malformed {
                what: format!("{role} metadata"),
                source: source.into(),
            },
            E::ParseTrustedMetadata { source, .. } => TrustError::Malformed {
                what: "the trusted root".into(),
                source: source.into(),
            },
            E::Transport { url, source, .. } => {
                // tough reports a target's or a metadata file's hash and size failures
                // from inside the transport stream; surface them as what they are.
                let inner = std::error::Error::source(&source)
                    .and_then(|e| e.downcast_ref::<tough::error::Error>());
                if let Some(found) = inner.and_then(verification_in_stream) {
                    found.about(file_of(&url))
                } else if source.kind() == TransportErrorKind::FileNotFound {
                    TrustError::NotFound { url: redact(&url) }
                } else {
                    TrustError::Transport {
                        url: redact(&url),
                        source: source.into(),
                    }
                }
            }
            // Signed metadata that lacks what the roles above or below it need, or that
            // names a target no host may write: the repository's fault (exit 4), never a
            // local one.
            e @ (E::MetaMissing { .. }
            | E::TimestampMetaLength { .. }
            | E::MissingSnapshotMeta { .. }
            | E::SnapshotTargetsMetaMissing { .. }
            | E::SnapshotRoleMissing { .. }
            | E::SpecVersion { .. }
            | E::NoRoleKeysinRoot { .. }
            | E::InvalidTargetName { .. }
            | E::UnsafeTargetNameDotDot { .. }
            | E::UnsafeTargetNameEmpty { .. }
            | E::UnsafeTargetNameSlash { .. }
            | E::TargetNameResolve { .. }
            | E::TargetNameComponentsEmpty { .. }
            | E::TargetNameRootMissing { .. }) => TrustError::Inconsistent {
                detail: e.to_string(),
            },
            other => TrustError::Other(other.into()),
        }
    }
}

/// The hash or size failure a tough stream carries, if that is what it is.
fn verification_in_stream(err: &tough::error::Error) -> Option<TrustError> {
    use tough::error::Error as E;
    match err {
        E::HashMismatch {
            context,
            calculated,
            expected,
            ..
        } => Some(TrustError::HashMismatch {
            what: context.clone(),
            expected: expected.clone(),
            calculated: calculated.clone(),
        }),
        E::MaxSizeExceeded {
            max_size,
            specifier,
            ..
        } => Some(length_exceeded("a file", *max_size, specifier)),
        _ => None,
    }
}

/// tough names the limit by who set it (`specifier`): a role that lists the file's length
/// (`timestamp.json` for the snapshot), or an argument of the client (`max_timestamp_size
/// argument`: this host's own limit). Its message named that as the file that was too long.
fn length_exceeded(what: &str, max: u64, specifier: &str) -> TrustError {
    let limit = if specifier.ends_with("argument") {
        "this host's limit for it".to_owned()
    } else {
        format!("the length {specifier} lists for it")
    };
    TrustError::LengthExceeded {
        what: what.to_owned(),
        max,
        limit,
    }
}

/// The last segment of a fetched URL's path: the file's name in the repository
/// (`snapshot.json`, `2.snapshot.json`, `<sha256>.molt-agent-linux-amd64.tar.gz`).
fn file_of(url: &Url) -> String {
    url.path_segments()
        .and_then(|mut s| s.next_back().map(str::to_owned))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| redact(url))
}

impl TrustError {
    /// Names the file a length failure was about, when tough's error did not.
    fn about(self, file: String) -> TrustError {
        match self {
            TrustError::LengthExceeded { max, limit, .. } => TrustError::LengthExceeded {
                what: file,
                max,
                limit,
            },
            other => other,
        }
    }
}

/// Every way `manifest` disagrees with the signed `targets`: an entry whose archive is
/// not a TUF target, or whose `Checksum` or `Size` differ from TUF's (TUF decides; a
/// disagreement is a verification failure).
pub fn manifest_issues(manifest: &Manifest, targets: &[TargetInfo]) -> Vec<TrustError> {
    let mut issues = Vec::new();
    for p in &manifest.packages {
        for f in &p.files {
            for v in &f.available_versions {
                let name = molt_schema::artifact::target_name(&p.name, &v.version, &f.name);
                let Some(t) = targets.iter().find(|t| t.name == name) else {
                    issues.push(TrustError::ChecksumDisagrees {
                        target: name,
                        detail: "the manifest lists it, but it is not a signed target".into(),
                    });
                    continue;
                };
                if let Some(c) = v.checksum.filter(|c| *c != t.sha256) {
                    issues.push(TrustError::ChecksumDisagrees {
                        target: name.clone(),
                        detail: format!("Checksum {c} but TUF says {}", t.sha256),
                    });
                }
                if let Some(size) = v.size.filter(|s| *s != t.length) {
                    issues.push(TrustError::ChecksumDisagrees {
                        target: name,
                        detail: format!("Size {size} but TUF says {}", t.length),
                    });
                }
            }
        }
    }
    issues
}

fn target_info(name: &TargetName, t: &tough::schema::Target) -> Option<TargetInfo> {
    let bytes: [u8; 32] = t.hashes.sha256.as_ref().try_into().ok()?;
    Some(TargetInfo {
        name: name.raw().to_owned(),
        length: t.length,
        sha256: Sha256::from_bytes(bytes),
    })
}

/// A URL for messages: no credentials, no query string.
pub fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

/// Where a region's repository is: `<base>/metadata/` and `<base>/targets/`.
#[derive(Clone, Debug)]
pub struct RegionSource {
    pub base: Url,
}

impl RegionSource {
    /// The repository at `base`, written with or without its trailing slash: the base is
    /// kept as a directory, so that `metadata/`, `targets/` and every target's URL are joined
    /// below it (`Url::join` would replace a last segment that has no slash after it).
    pub fn new(mut base: Url) -> RegionSource {
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        RegionSource { base }
    }

    /// The base URL, ending in `/`.
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// Where a target is stored: `targets/<sha256>.<name>` below the base (TUF's
    /// consistent snapshots).
    pub fn target_url(&self, sha256: &Sha256, name: &str) -> Result<Url, TrustError> {
        self.join(&format!("targets/{sha256}.{name}"))
    }

    fn join(&self, part: &str) -> Result<Url, TrustError> {
        self.base.join(part).map_err(|e| {
            TrustError::Other(format!("bad source URL {}: {e}", redact(&self.base)).into())
        })
    }
}

/// Everything a load needs.
#[derive(Debug)]
pub struct LoadOptions<'a, T> {
    pub source: RegionSource,
    /// The host's region; the manifest must name it. `None` (for `verify` only) accepts
    /// the manifest's own region, which must still be present.
    pub region: Option<&'a Region>,
    /// The trusted root metadata the host was installed with.
    pub trusted_root: &'a [u8],
    /// `<state>/tuf`: the per-region datastore lives below it. `None` keeps no state
    /// (a one-off `verify`).
    pub datastore: Option<&'a Path>,
    pub transport: T,
    /// How a load that could not reach the repository (a 5xx, 408 or 429, a reset, a
    /// timeout) is tried again: the whole load runs again from the metadata verified so far,
    /// so one 503 on `timestamp.json` costs a second, not the host's schedule slot. A
    /// verification failure or a missing file is never retried.
    pub retry: RetryPolicy,
    /// Whether a successful load becomes the live datastore. `false` (a dry run) loads from a
    /// copy of it in the system's temporary directory, with the same rollback protection,
    /// and leaves `state/tuf` exactly as it was.
    pub commit: bool,
}

/// A region whose metadata and manifest have been verified.
#[derive(Debug)]
pub struct LoadedRegion {
    repo: Repository,
    pub manifest: Manifest,
    _scratch: Option<tempfile::TempDir>,
}

/// The signed length and sha256 of a target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetInfo {
    pub name: String,
    pub length: u64,
    pub sha256: Sha256,
}

/// Bytes whose TUF length and hashes were checked: only [`LoadedRegion::read_target_with`]
/// makes one, and only after the target's stream was read to its end without error.
#[derive(Debug)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

/// A failed read: the repository's verification, or the caller's consumer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Trust(TrustError),
    #[error(transparent)]
    Consumer(E),
}

/// The region's manifest as last verified, in the live datastore.
pub const CACHED_MANIFEST: &str = "molt-manifest.json";

/// Loads and verifies a region's repository (SPEC §6 step 3).
pub async fn load_region<T>(opts: LoadOptions<'_, T>) -> Result<LoadedRegion, TrustError>
where
    T: Transport + Clone + Send + Sync + 'static,
{
    let metadata_url = opts.source.join("metadata/")?;
    let targets_url = opts.source.join("targets/")?;
    let (scratch, live) = match (opts.datastore, opts.region) {
        (Some(base), Some(region)) if opts.commit => {
            let (dir, live) = prepare_datastore(base, region)?;
            (dir, Some(live))
        }
        (Some(base), Some(region)) => (copy_datastore(&base.join(region.as_str()))?, None),
        (Some(base), None) => {
            return Err(TrustError::Datastore {
                action: "name (no region given for)",
                path: base.to_owned(),
                source: std::io::Error::other("a datastore needs the host's region"),
            });
        }
        (None, _) => (
            tempfile::tempdir().map_err(|source| TrustError::Datastore {
                action: "create",
                path: std::env::temp_dir(),
                source,
            })?,
            None,
        ),
    };
    let what = format!("load {}", redact(&metadata_url));
    // Retries stop after this much time in all, whatever the policy would still allow.
    const BUDGET: std::time::Duration = std::time::Duration::from_secs(300);
    let started = std::time::Instant::now();
    let retryable = |e: &TrustError| e.is_transient() && started.elapsed() < BUDGET;
    // What the copy was made from: each retry starts from it again, not from what a failed
    // attempt accepted (a newer timestamp, then a 503 on the snapshot, then a stale edge
    // serving the older timestamp would read as a rollback attack).
    let copied_from = opts
        .datastore
        .zip(opts.region)
        .map(|(base, region)| base.join(region.as_str()));
    let attempt = std::sync::atomic::AtomicU32::new(0);
    let (repo, manifest_bytes) = retry::run(&opts.retry, &what, retryable, || {
        let (metadata_url, targets_url) = (metadata_url.clone(), targets_url.clone());
        let (transport, scratch) = (opts.transport.clone(), scratch.path());
        let again = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed) > 0;
        let copied_from = copied_from.clone();
        async move {
            if again {
                refresh_copy(scratch, copied_from.as_deref())?;
            }
            // Again on each attempt: an earlier one may have accepted a newer root.
            let trusted_root = newest_root(opts.trusted_root, scratch);
            let repo = RepositoryLoader::new(&trusted_root, metadata_url, targets_url)
                .transport(transport)
                .datastore(scratch)
                .expiration_enforcement(ExpirationEnforcement::Safe)
                .load()
                .await
                .map_err(TrustError::from_tough)?;
            let manifest_bytes = read_all(&repo, MANIFEST_TARGET).await?;
            Ok::<_, TrustError>((repo, manifest_bytes))
        }
    })
    .await?;
    let manifest =
        Manifest::parse(&manifest_bytes).map_err(|e: ManifestError| TrustError::Malformed {
            what: MANIFEST_TARGET.into(),
            source: e.into(),
        })?;
    match (&manifest.region, opts.region) {
        (Some(found), Some(expected)) if found == expected => {}
        (Some(_), None) => {}
        (found, expected) => {
            return Err(TrustError::WrongRegion {
                expected: expected.map_or_else(|| "(any)".to_owned(), ToString::to_string),
                found: found
                    .as_ref()
                    .map_or_else(|| "(none)".to_owned(), ToString::to_string),
            });
        }
    }
    let scratch = match live {
        Some(live) => {
            // Kept beside the metadata it was verified with, for `agent status` (wave times)
            // to read offline. Informational only: updates always load and verify afresh.
            let cached = scratch.path().join(CACHED_MANIFEST);
            std::fs::write(&cached, &manifest_bytes).map_err(ds_err("write", &cached))?;
            commit_datastore(scratch, &live)?;
            None
        }
        None => Some(scratch),
    };
    Ok(LoadedRegion {
        repo,
        manifest,
        _scratch: scratch,
    })
}

/// Picks the newer of the installed trusted root and the root the datastore accepted
/// last, so a host never walks the root chain again from a version whose keys were
/// since revoked.
fn newest_root(installed: &[u8], datastore: &Path) -> Vec<u8> {
    fn version(bytes: &[u8]) -> Option<u64> {
        let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
        v.get("signed")?.get("version")?.as_u64()
    }
    match std::fs::read(datastore.join("root.json")) {
        Ok(stored) if version(&stored) > version(installed) => stored,
        _ => installed.to_vec(),
    }
}

async fn read_all(repo: &Repository, name: &str) -> Result<Vec<u8>, TrustError> {
    use tough::IntoVec as _;
    let target = TargetName::new(name).map_err(|e| TrustError::Other(e.into()))?;
    let stream = repo
        .read_target(&target)
        .await
        .map_err(TrustError::from_tough)?
        .ok_or_else(|| TrustError::NoTarget {
            name: name.to_owned(),
        })?;
    stream.into_vec().await.map_err(TrustError::from_tough)
}

fn ds_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TrustError + use<> {
    let path = path.to_owned();
    move |source| TrustError::Datastore {
        action,
        path,
        source,
    }
}

/// A scratch copy of the region's datastore, next to it, and the live path.
fn prepare_datastore(
    base: &Path,
    region: &Region,
) -> Result<(tempfile::TempDir, PathBuf), TrustError> {
    std::fs::create_dir_all(base).map_err(ds_err("create", base))?;
    let live = base.join(region.as_str());
    remove_stale_copies(base, region, &live);
    let scratch = tempfile::Builder::new()
        .prefix(&format!(".{region}."))
        .tempdir_in(base)
        .map_err(ds_err("create a copy of", &live))?;
    copy_files(&live, scratch.path())?;
    Ok((scratch, live))
}

/// A copy of the live datastore in the system's temporary directory, for a load that must
/// change nothing on the host (a dry run).
fn copy_datastore(live: &Path) -> Result<tempfile::TempDir, TrustError> {
    let scratch = tempfile::tempdir().map_err(ds_err("create a copy of", live))?;
    copy_files(live, scratch.path())?;
    Ok(scratch)
}

/// Empties `scratch` and copies the datastore at `from` into it again (nothing for a load
/// without a datastore).
fn refresh_copy(scratch: &Path, from: Option<&Path>) -> Result<(), TrustError> {
    for entry in std::fs::read_dir(scratch)
        .map_err(ds_err("list", scratch))?
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if path.is_file() {
            std::fs::remove_file(&path).map_err(ds_err("remove", &path))?;
        }
    }
    match from {
        Some(from) => copy_files(from, scratch),
        None => Ok(()),
    }
}

fn copy_files(from_dir: &Path, to_dir: &Path) -> Result<(), TrustError> {
    if let Ok(entries) = std::fs::read_dir(from_dir) {
        for entry in entries.filter_map(Result::ok) {
            let from = entry.path();
            if from.is_file() {
                std::fs::copy(&from, to_dir.join(entry.file_name()))
                    .map_err(ds_err("copy", &from))?;
            }
        }
    }
    Ok(())
}

/// Removes what killed loads left in `base` for `region`: copies (`.<region>.XXXXXX`) that
/// the live link does not name, and their half-made links (`.<region>.XXXXXX.link`). Loads
/// with a datastore run under the update lock, so no other load is using them.
fn remove_stale_copies(base: &Path, region: &Region, live: &Path) {
    // The copy the live link names, by its name (a link written as `./.<region>.X` or as an
    // absolute path names it too); a live link that cannot be read keeps every copy.
    let Ok(current) = std::fs::read_link(live) else {
        return;
    };
    let Some(current) = current.file_name().map(|n| n.to_owned()) else {
        return;
    };
    let prefix = format!(".{region}.");
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let text = name.to_string_lossy();
        if !text.starts_with(&prefix) || name == current {
            continue;
        }
        let path = entry.path();
        let removed = if text.ends_with(".link") {
            std::fs::remove_file(&path)
        } else if text.ends_with(".old") {
            continue;
        } else {
            std::fs::remove_dir_all(&path)
        };
        match removed {
            Ok(()) => tracing::info!("removed {}, left by an interrupted run", path.display()),
            Err(e) => tracing::debug!("cannot remove {}: {e}", path.display()),
        }
    }
}

/// Makes the scratch copy the live datastore: fsync its files, point a fresh symlink at
/// it, rename the symlink over `live`, fsync the directory, remove the old copy.
fn commit_datastore(scratch: tempfile::TempDir, live: &Path) -> Result<(), TrustError> {
    let dir = scratch.keep();
    for entry in std::fs::read_dir(&dir)
        .map_err(ds_err("list", &dir))?
        .filter_map(Result::ok)
    {
        std::fs::File::open(entry.path())
            .and_then(|f| f.sync_all())
            .map_err(ds_err("sync", &entry.path()))?;
    }
    let base = live.parent().unwrap_or(Path::new("."));
    let old_target = std::fs::read_link(live).ok();
    if old_target.is_none() && live.is_dir() {
        // a datastore from before the symlink layout: move it aside first
        let aside = base.join(format!(
            ".{}.old",
            live.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let _ = std::fs::remove_dir_all(&aside);
        std::fs::rename(live, &aside).map_err(ds_err("move aside", live))?;
    }
    let name = dir.file_name().map(|n| n.to_owned()).unwrap_or_default();
    let link_tmp = base.join(format!(".{}.link", name.to_string_lossy()));
    let _ = std::fs::remove_file(&link_tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(&name, &link_tmp).map_err(ds_err("link", &link_tmp))?;
    std::fs::rename(&link_tmp, live).map_err(ds_err("replace", live))?;
    std::fs::File::open(base)
        .and_then(|d| d.sync_all())
        .map_err(ds_err("sync", base))?;
    if let Some(old) = old_target {
        let old = base.join(old);
        if old != dir {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(())
}

impl LoadedRegion {
    pub fn root_version(&self) -> u64 {
        self.repo.root().signed.version.get()
    }

    /// The earliest expiry of the four top-level roles, and which role it is.
    pub fn earliest_expiry(&self) -> (RoleType, Timestamp) {
        let roles = [
            (RoleType::Root, self.repo.root().signed.expires),
            (RoleType::Targets, self.repo.targets().signed.expires),
            (RoleType::Snapshot, self.repo.snapshot().signed.expires),
            (RoleType::Timestamp, self.repo.timestamp().signed.expires),
        ];
        roles
            .into_iter()
            .min_by_key(|(_, t)| *t)
            .unwrap_or((RoleType::Timestamp, self.repo.timestamp().signed.expires))
    }

    /// Versions of the top-level roles: root, targets, snapshot, timestamp.
    pub fn versions(&self) -> [u64; 4] {
        [
            self.repo.root().signed.version.get(),
            self.repo.targets().signed.version.get(),
            self.repo.snapshot().signed.version.get(),
            self.repo.timestamp().signed.version.get(),
        ]
    }

    /// Every target TUF lists, sorted by name.
    pub fn targets(&self) -> Vec<TargetInfo> {
        let mut out: Vec<TargetInfo> = self
            .repo
            .all_targets()
            .filter_map(|(name, t)| target_info(name, t))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn target(&self, name: &str) -> Option<TargetInfo> {
        self.repo
            .all_targets()
            .find(|(n, _)| n.raw() == name)
            .and_then(|(n, t)| target_info(n, t))
    }

    /// Every way the manifest disagrees with the signed targets; see [`manifest_issues`].
    pub fn consistency_issues(&self) -> Vec<TrustError> {
        manifest_issues(&self.manifest, &self.targets())
    }

    /// Streams target `name` into `consume` (on a blocking thread, as a `std::io::Read`),
    /// then reads whatever `consume` left to the end, so tough checks length and hashes.
    /// The result comes back wrapped in [`Verified`] only when that check passed; a
    /// verification failure wins over the consumer's own error.
    pub async fn read_target_with<T, E, F>(
        &self,
        name: &str,
        consume: F,
    ) -> Result<Verified<T>, ReadError<E>>
    where
        T: Send + 'static,
        E: std::error::Error + From<std::io::Error> + Send + 'static,
        F: FnOnce(&mut dyn Read) -> Result<T, E> + Send + 'static,
    {
        let target =
            TargetName::new(name).map_err(|e| ReadError::Trust(TrustError::Other(e.into())))?;
        let stream = self
            .repo
            .read_target(&target)
            .await
            .map_err(|e| ReadError::Trust(TrustError::from_tough(e)))?
            .ok_or_else(|| {
                ReadError::Trust(TrustError::NoTarget {
                    name: name.to_owned(),
                })
            })?;
        let failure: Arc<Mutex<Option<tough::error::Error>>> = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&failure);
        let mapped = stream.map(move |item| {
            item.map_err(|e| {
                let msg = e.to_string();
                if let Ok(mut guard) = slot.lock() {
                    guard.get_or_insert(e);
                }
                std::io::Error::other(msg)
            })
        });
        let reader = tokio_util::io::StreamReader::new(Box::pin(mapped));
        let mut bridge = tokio_util::io::SyncIoBridge::new(reader);
        let outcome = tokio::task::spawn_blocking(move || -> Result<T, E> {
            let value = consume(&mut bridge)?;
            std::io::copy(&mut bridge, &mut std::io::sink())?;
            Ok(value)
        })
        .await
        .map_err(|e| {
            ReadError::Trust(TrustError::Other(format!("reader task failed: {e}").into()))
        })?;
        let stream_failure = failure.lock().ok().and_then(|mut g| g.take());
        match (stream_failure, outcome) {
            (Some(e), _) => Err(ReadError::Trust(
                TrustError::from_tough(e).about(name.to_owned()),
            )),
            (None, Err(e)) => Err(ReadError::Consumer(e)),
            (None, Ok(value)) => Ok(Verified(value)),
        }
    }
}
