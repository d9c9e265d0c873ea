//! Publishing a region's repository to its store (SPEC §8): pull → render → diff → guard
//! → apply → read back.
//!
//! - **Pull** the region's current metadata (root chain, timestamp, the snapshot and
//!   targets it names) and manifest into a scratch repository. A region without
//!   `metadata/timestamp.json` is an error naming `repo init`; a read that fails is an
//!   error, never an empty bucket (that would reset the region's metadata versions).
//! - **Render** the change there with the same editor as the local commands (tough), with
//!   role versions above every version already in the bucket, so the objects an
//!   interrupted publish left behind are never reused.
//! - **Diff** the scratch repository against what was pulled: the objects to create, and
//!   `timestamp.json` to replace. `--dry-run` stops here.
//! - **Guard**: an immutable object that exists with other bytes is refused (unless
//!   `--allow-clobber`); with the same bytes it is skipped.
//! - **Apply**: targets first, then targets and snapshot metadata, each created only if
//!   absent (If-None-Match), and `timestamp.json` last, only if it is still the one pulled
//!   (If-Match). A racing publisher therefore loses nothing: one of the two is refused.
//! - **Read back** the region as a host would (TUF from the trusted root: root chain,
//!   timestamp, snapshot, targets, manifest), and check every new target: by the SHA-256
//!   that the store computed over the bytes it holds and verified at upload, when it keeps
//!   one and it is the signed one; else by reading the target through TUF (see
//!   [`read_back`]).
//!
//! The edit is rendered in a [`ScratchRepo`] (metadata written without fsync; it is
//! deleted afterwards), and new targets are uploaded straight from their files, hashed
//! once per publish by the caller ([`crate::tuf::repo::ReleaseFiles`]). Every upload
//! carries its SHA-256, which the store verifies ([`crate::store::Body`]).
//!
//! A publisher killed at any point leaves the old `timestamp.json` in place, and with it
//! a repository that verifies; the objects it uploaded are unreferenced until a rerun.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::record::Record;
use crate::store::{Body, Condition, ObjectStore, StoreError};
use crate::tuf::repo::{EditReport, RepoError, ScratchRepo};
use molt_fetch::s3::S3Signer;
use molt_fetch::transport::{HttpSettings, MoltTransport, Url};
use molt_fetch::tuf::{LoadOptions, RegionSource, load_region};
use molt_schema::artifact::Sha256;
use molt_schema::manifest::Manifest;
use molt_schema::region::Region;

pub(crate) const TIMESTAMP: &str = "metadata/timestamp.json";

/// A region and where its repository lives.
#[derive(Clone, Debug)]
pub struct RegionStore {
    pub region: Region,
    pub store: Arc<dyn ObjectStore>,
    /// How hosts read it: the base URL, and a signer for private buckets.
    pub reader: Reader,
}

#[derive(Clone, Debug)]
pub struct Reader {
    pub url: Url,
    pub signer: Option<S3Signer>,
}

/// What a publish may do.
#[derive(Clone, Debug)]
pub struct Options {
    pub dry_run: bool,
    pub allow_clobber: bool,
    /// The root of trust the read-back starts from (`<keys>/root.json`).
    pub trusted_root: Vec<u8>,
    /// Release notes for the feed: (version, text).
    pub notes: Option<(String, String)>,
    /// The HTTP client of the read-back, shared by all regions (cheap to clone); `None`
    /// makes one for each read-back.
    pub transport: Option<MoltTransport>,
    /// The publisher's record of what it last signed for each region ([`crate::record`]),
    /// checked before anything is signed and updated after. `None` only for reads.
    pub record: Option<Record>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A new immutable object.
    Create,
    /// Already there with the same bytes (a rerun): nothing to upload.
    Same,
    /// Already there with other bytes, replaced because of `--allow-clobber`.
    Clobber,
    /// A target (named by its SHA-256) already there with other bytes: corrupt by
    /// definition (a flipped byte stored by a server that checks no checksum), so the
    /// right bytes are put back.
    Repair,
    /// `timestamp.json`, replaced if unchanged since the pull.
    Replace,
}

#[derive(Clone, Debug, Serialize)]
pub struct Change {
    pub key: String,
    pub action: Action,
    pub size: usize,
}

/// One region's result.
#[derive(Clone, Debug, Serialize)]
pub struct RegionReport {
    pub region: Region,
    pub store: String,
    /// The new targets, snapshot and timestamp versions.
    pub versions: [u64; 3],
    pub changes: Vec<Change>,
    pub uploaded: usize,
    pub dry_run: bool,
    /// The targets added to the region (names), read back through TUF.
    pub added: Vec<String>,
    /// The edit changed nothing (an identical re-publish): no new metadata versions, and
    /// nothing written.
    pub unchanged: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{store} already holds a repository for {region}")]
    Exists { region: Region, store: String },
    #[error("{store} holds no repository for {region} (no metadata/timestamp.json)")]
    NoRepository { region: Region, store: String },
    #[error("cannot read {key} from {store}")]
    Pull {
        key: String,
        store: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("{key} in {store} is not valid metadata: {detail}")]
    BadMetadata {
        key: String,
        store: String,
        detail: String,
    },
    #[error(transparent)]
    Edit(#[from] RepoError),
    #[error("{key} already exists in {store} with other bytes; published objects are immutable")]
    Clobber { key: String, store: String },
    #[error("{store} changed while this publish ran ({key}): another publisher got there first")]
    Raced { key: String, store: String },
    #[error(
        "{key} in {store} does not hold the bytes uploaded, even after a second upload ({detail}); nothing went live"
    )]
    NotStored {
        key: String,
        store: String,
        detail: String,
    },
    #[error("cannot upload {key} to {store}")]
    Upload {
        key: String,
        store: String,
        #[source]
        source: Box<StoreError>,
    },
    #[error("the read-back of {region} failed: {detail}")]
    ReadBack { region: Region, detail: String },
    #[error("{store}'s metadata for {region} does not verify against the trusted root: {detail}")]
    Untrusted {
        region: Region,
        store: String,
        detail: String,
    },
    #[error(
        "there is no record of what this publisher last signed for {region} (in {record}); {store} holds timestamp version {timestamp_version}"
    )]
    NoRecord {
        region: Region,
        store: String,
        record: PathBuf,
        timestamp_version: u64,
    },
    #[error("refusing to sign {region} in {store}: {detail} (the record is {record})")]
    RolledBack {
        region: Region,
        store: String,
        record: PathBuf,
        detail: String,
    },
    #[error("cannot use the publisher's record {path}: {detail}")]
    Record { path: PathBuf, detail: String },
    #[error("{store} holds timestamp version {holds} for {region}, not the {named} named")]
    NotTheNamedState {
        region: Region,
        store: String,
        holds: u64,
        named: u64,
    },
    #[error("cannot use the scratch directory {path}")]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl PublishError {
    pub fn hint(&self) -> Option<String> {
        match self {
            PublishError::NoRepository { region, .. } => Some(format!(
                "create it with `release-manifest repo init --region {region} --out DIR`, then `release-manifest repo upload --region {region} --repo DIR`; or check the bucket template and prefix"
            )),
            PublishError::Exists { .. } => Some(
                "a region is created once; publish to it with `release-manifest publish`".into(),
            ),
            PublishError::Pull { source, .. } | PublishError::Upload { source, .. } => source.hint(),
            PublishError::Clobber { .. } => Some(
                "bump the version and package again; --allow-clobber replaces it (only for a release no host has fetched)".into(),
            ),
            PublishError::Raced { .. } => {
                Some("run the publish again: it starts from what the region holds now".into())
            }
            PublishError::NotStored { .. } => Some(
                "the store or the network corrupts uploads: check the endpoint (and any proxy before it), then publish again; the region still serves what it served before".into(),
            ),
            PublishError::Untrusted { region, .. } => Some(format!(
                "someone changed the region's metadata in the bucket, or --keys is another repository's (its root.json must be the one hosts trust); `release-manifest record restore --region {region}` puts back what this publisher last signed"
            )),
            PublishError::NoRecord {
                region,
                timestamp_version,
                ..
            } => Some(format!(
                "the publisher keeps what it last signed for each region (--record, by default `published/` beside the plan), so that no one who can only write the bucket can put back an older signed set; check the region with `release-manifest verify`, then name its state once: `release-manifest record adopt --region {region} --timestamp-version {timestamp_version}`; or point --record at the pipeline's record"
            )),
            PublishError::RolledBack { region, .. } => Some(format!(
                "nothing was signed; put the remembered files back with `release-manifest record restore --region {region}`, then find out who wrote the bucket"
            )),
            PublishError::Record { .. } => Some(
                "the record is a directory the pipeline keeps and commits (by default `published/` beside the rollout plan; --record names another)".into(),
            ),
            PublishError::NotTheNamedState { .. } => Some(
                "check the region with `release-manifest verify`, then name the version it holds".into(),
            ),
            PublishError::ReadBack { .. } => Some(
                "the region's timestamp.json was replaced but does not verify: run `release-manifest verify` on it and publish again"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// Maps a failed read of `key` to [`PublishError::Pull`].
fn pull_error(key: &str, store: &str) -> impl FnOnce(StoreError) -> PublishError + use<> {
    let (key, store) = (key.to_owned(), store.to_owned());
    move |source| PublishError::Pull {
        key,
        store,
        source: Box::new(source),
    }
}

fn json_u64(v: &serde_json::Value, path: &[&str]) -> Option<u64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p)?;
    }
    cur.as_u64()
}

/// The region's repository as pulled: keys and bytes, plus the timestamp's ETag.
pub(crate) struct Pulled {
    pub(crate) objects: BTreeMap<String, Vec<u8>>,
    pub(crate) timestamp_etag: String,
    /// The targets, snapshot and timestamp versions of the set.
    pub(crate) versions: [u64; 3],
    floor: [u64; 3],
}

async fn get_required(
    store: &dyn ObjectStore,
    key: &str,
    region: &Region,
) -> Result<Option<Vec<u8>>, PublishError> {
    match store.get(key).await {
        Ok(o) => Ok(o.map(|o| o.bytes)),
        Err(source) => Err(PublishError::Pull {
            key: key.to_owned(),
            store: store.describe(),
            source: Box::new(source),
        }),
    }
    .map_err(|e| {
        tracing::debug!(%region, "pull failed: {e}");
        e
    })
}

/// Reads the signed set that `store`'s `timestamp.json` names (the bucket, a scratch copy or
/// the publisher's record), without verifying it.
pub(crate) async fn pull(store: &dyn ObjectStore, region: &Region) -> Result<Pulled, PublishError> {
    let shown = store.describe();
    let bad = |key: &str, detail: String| PublishError::BadMetadata {
        key: key.to_owned(),
        store: shown.clone(),
        detail,
    };
    let ts = store
        .get(TIMESTAMP)
        .await
        .map_err(pull_error(TIMESTAMP, &shown))?;
    let Some(ts) = ts else {
        return Err(PublishError::NoRepository {
            region: region.clone(),
            store: shown,
        });
    };
    let mut objects = BTreeMap::new();
    let ts_json: serde_json::Value =
        serde_json::from_slice(&ts.bytes).map_err(|e| bad(TIMESTAMP, e.to_string()))?;
    let snapshot_v = json_u64(&ts_json, &["signed", "meta", "snapshot.json", "version"])
        .ok_or_else(|| bad(TIMESTAMP, "no snapshot version".into()))?;
    let timestamp_v = json_u64(&ts_json, &["signed", "version"])
        .ok_or_else(|| bad(TIMESTAMP, "no version".into()))?;
    objects.insert(TIMESTAMP.to_owned(), ts.bytes);
    let snapshot_key = format!("metadata/{snapshot_v}.snapshot.json");
    let snapshot = get_required(store, &snapshot_key, region)
        .await?
        .ok_or_else(|| bad(&snapshot_key, "missing, but timestamp.json names it".into()))?;
    let snap_json: serde_json::Value =
        serde_json::from_slice(&snapshot).map_err(|e| bad(&snapshot_key, e.to_string()))?;
    let targets_v = json_u64(&snap_json, &["signed", "meta", "targets.json", "version"])
        .ok_or_else(|| bad(&snapshot_key, "no targets version".into()))?;
    objects.insert(snapshot_key, snapshot);
    let targets_key = format!("metadata/{targets_v}.targets.json");
    let targets = get_required(store, &targets_key, region)
        .await?
        .ok_or_else(|| bad(&targets_key, "missing, but the snapshot names it".into()))?;
    let targets_json: serde_json::Value =
        serde_json::from_slice(&targets).map_err(|e| bad(&targets_key, e.to_string()))?;
    let manifest_sha =
        targets_json["signed"]["targets"][crate::tuf::MANIFEST_TARGET]["hashes"]["sha256"]
            .as_str()
            .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| bad(&targets_key, "no manifest.json target".into()))?
            .to_owned();
    objects.insert(targets_key, targets);
    let manifest_key = format!("targets/{manifest_sha}.{}", crate::tuf::MANIFEST_TARGET);
    let manifest = get_required(store, &manifest_key, region)
        .await?
        .ok_or_else(|| bad(&manifest_key, "missing, but targets.json names it".into()))?;
    objects.insert(manifest_key, manifest);
    // The root chain, from 1 up to the first version that is not there.
    for n in 1u64.. {
        let key = format!("metadata/{n}.root.json");
        match get_required(store, &key, region).await? {
            Some(bytes) => {
                objects.insert(key, bytes);
            }
            None if n == 1 => return Err(bad(&key, "missing: the root chain starts at 1".into())),
            None => break,
        }
    }
    // Versions above everything present, orphans of an interrupted publish included.
    let listed = store
        .list("metadata/")
        .await
        .map_err(pull_error("metadata/", &shown))?;
    let mut floor = [0u64; 3];
    for key in listed {
        let name = key.rsplit('/').next().unwrap_or(&key);
        let Some((n, role)) = name.split_once('.') else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        let slot = match role {
            "targets.json" => 0,
            "snapshot.json" => 1,
            _ => continue,
        };
        floor[slot] = floor[slot].max(n.saturating_add(1));
    }
    Ok(Pulled {
        objects,
        timestamp_etag: ts.etag,
        versions: [targets_v, snapshot_v, timestamp_v],
        floor,
    })
}

/// A private copy of `objects` in a temporary directory (`<tmp>/repo`), removed when the
/// returned guard is dropped.
fn scratch_copy(
    objects: &BTreeMap<String, Vec<u8>>,
) -> Result<(tempfile::TempDir, PathBuf), PublishError> {
    let scratch = tempfile::tempdir().map_err(|source| PublishError::Scratch {
        path: std::env::temp_dir(),
        source,
    })?;
    let dir = scratch.path().join("repo");
    write_scratch(&dir, objects)?;
    Ok((scratch, dir))
}

fn write_scratch(dir: &Path, objects: &BTreeMap<String, Vec<u8>>) -> Result<(), PublishError> {
    for (key, bytes) in objects {
        let path = dir.join(key);
        let scratch = |source| PublishError::Scratch {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(scratch)?;
        }
        std::fs::write(&path, bytes).map_err(scratch)?;
    }
    Ok(())
}

fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) -> Result<(), PublishError> {
    let entries = std::fs::read_dir(dir).map_err(|source| PublishError::Scratch {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, base, out)?;
        } else if let Ok(rel) = path.strip_prefix(base) {
            let key = rel.to_string_lossy().replace('\\', "/");
            if key.starts_with("metadata/") || key.starts_with("targets/") {
                out.push(key);
            }
        }
    }
    Ok(())
}

/// Upload order: targets, then root, targets and snapshot metadata, timestamp last.
fn rank(key: &str) -> u8 {
    if key.starts_with("targets/") {
        if key.ends_with(".manifest.json") {
            1
        } else {
            0
        }
    } else if key.ends_with(".root.json") {
        2
    } else if key.ends_with(".targets.json") {
        3
    } else if key.ends_with(".snapshot.json") {
        4
    } else {
        5
    }
}

/// Test hook, compiled only with the `test-hooks` feature (the tests crate turns it on;
/// release builds of the release tool never do): `MOLT_TEST_KILL_AFTER_PUTS=<n>` makes the
/// publisher SIGKILL itself right after its n-th successful upload (across all regions),
/// so tests can stop it between any two writes.
#[cfg(feature = "test-hooks")]
fn kill_point() {
    static PUTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let done = PUTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    if std::env::var("MOLT_TEST_KILL_AFTER_PUTS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        == Some(done)
    {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        std::process::abort();
    }
}

/// Without the `test-hooks` feature there is no kill point.
#[cfg(not(feature = "test-hooks"))]
fn kill_point() {}

/// Whether `key` holds `body`'s bytes (`None`: no object there). Decided by the length and
/// the SHA-256 the store keeps with the object; an object without one (uploaded by an
/// older publisher) is downloaded and hashed.
async fn holds(
    store: &dyn ObjectStore,
    key: &str,
    body: &Body,
) -> Result<Option<bool>, StoreError> {
    let Some(meta) = store.stat(key).await? else {
        return Ok(None);
    };
    if meta.len != body.len() {
        return Ok(Some(false));
    }
    if let Some(sha256) = meta.sha256 {
        return Ok(Some(sha256 == body.sha256()));
    }
    Ok(store
        .get(key)
        .await?
        .map(|o| o.bytes.len() as u64 == body.len() && Sha256::digest(&o.bytes) == body.sha256()))
}

/// Whether `key` is a target's object, which tough names `targets/<sha256>.<name>`: an
/// object there holding other bytes than `body`'s is corrupt by definition.
fn content_addressed(key: &str, body: &Body) -> bool {
    key.strip_prefix("targets/")
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(sha256, _)| sha256 == body.sha256().to_string())
}

/// Checks that `key` now holds `body`'s bytes (by the SHA-256 the store keeps, else by
/// reading it back), and uploads it once more if not: a target is verified before any
/// metadata that names it is written.
async fn verify_stored(
    store: &dyn ObjectStore,
    key: &str,
    body: &Body,
    shown: &str,
) -> Result<(), PublishError> {
    let upload_error = |source| PublishError::Upload {
        key: key.to_owned(),
        store: shown.to_owned(),
        source: Box::new(source),
    };
    for attempt in 0..2 {
        match holds(store, key, body)
            .await
            .map_err(pull_error(key, shown))?
        {
            Some(true) => return Ok(()),
            found if attempt == 1 => {
                return Err(PublishError::NotStored {
                    key: key.to_owned(),
                    store: shown.to_owned(),
                    detail: match found {
                        None => "the object is missing".to_owned(),
                        _ => format!(
                            "its length or SHA-256 is not {} bytes, sha256 {}",
                            body.len(),
                            body.sha256()
                        ),
                    },
                });
            }
            _ => {
                tracing::warn!(
                    "{key} in {shown} does not hold the bytes just uploaded; uploading it again"
                );
                store
                    .put_body(key, body.clone(), Condition::None)
                    .await
                    .map_err(upload_error)?;
            }
        }
    }
    Ok(())
}

/// One object to write: where, what, and how.
struct Upload {
    change: Change,
    body: Body,
}

/// Publishes one edit of one region: `edit` changes the scratch repository (it gets a
/// [`ScratchRepo`] over a copy of the region's metadata and manifest, and the version
/// floor) and reports what it did, new targets included.
pub async fn update_region<F, Fut>(
    rs: &RegionStore,
    opts: &Options,
    edit: F,
) -> Result<RegionReport, PublishError>
where
    F: FnOnce(ScratchRepo, [u64; 3]) -> Fut,
    Fut: std::future::Future<Output = Result<EditReport, RepoError>>,
{
    let store = rs.store.as_ref();
    let shown = store.describe();
    let pulled = pull(store, &rs.region).await?;
    let (scratch, dir) = scratch_copy(&pulled.objects)?;
    // Nothing is signed on top of a set that is not ours, or older than what we signed.
    verify_pulled(rs, &dir, opts).await?;
    if let Some(record) = &opts.record {
        check_record(rs, record, opts, &pulled).await?;
    }
    let report = edit(ScratchRepo::new(dir.clone()), pulled.floor).await?;

    // Diff: the metadata files of the scratch copy (small; their bytes are the bodies), and
    // the new targets the edit handed back (their digests say whether they are new).
    let mut keys = Vec::new();
    walk(&dir.join("metadata"), &dir, &mut keys)?;
    let mut writes = Vec::new();
    for key in keys {
        let path = dir.join(&key);
        let bytes = std::fs::read(&path).map_err(|source| PublishError::Scratch {
            path: path.clone(),
            source,
        })?;
        let action = match pulled.objects.get(&key) {
            Some(old) if *old == bytes => continue,
            Some(_) if key == TIMESTAMP => Action::Replace,
            _ => Action::Create,
        };
        writes.push(Upload {
            change: Change {
                key,
                action,
                size: bytes.len(),
            },
            body: Body::from_bytes(bytes),
        });
    }
    for t in &report.targets {
        if let Some(old) = pulled.objects.get(&t.key)
            && old.len() as u64 == t.body.len()
            && Sha256::digest(old) == t.body.sha256()
        {
            continue;
        }
        writes.push(Upload {
            change: Change {
                key: t.key.clone(),
                action: Action::Create,
                size: usize::try_from(t.body.len()).unwrap_or(usize::MAX),
            },
            body: t.body.clone(),
        });
    }
    writes.sort_by(|a, b| {
        (rank(&a.change.key), &a.change.key).cmp(&(rank(&b.change.key), &b.change.key))
    });

    // Guard: immutable objects that already exist.
    for w in writes
        .iter_mut()
        .filter(|w| w.change.action == Action::Create)
    {
        match holds(store, &w.change.key, &w.body)
            .await
            .map_err(pull_error(&w.change.key, &shown))?
        {
            None => {}
            Some(true) => w.change.action = Action::Same,
            Some(false) if content_addressed(&w.change.key, &w.body) => {
                w.change.action = Action::Repair;
            }
            Some(false) if opts.allow_clobber => w.change.action = Action::Clobber,
            // Metadata of a version above every one this publish pulled: another publisher
            // wrote it since.
            Some(false) if w.change.key.starts_with("metadata/") => {
                return Err(PublishError::Raced {
                    key: w.change.key.clone(),
                    store: shown,
                });
            }
            Some(false) => {
                return Err(PublishError::Clobber {
                    key: w.change.key.clone(),
                    store: shown,
                });
            }
        }
    }
    let mut out = RegionReport {
        region: rs.region.clone(),
        store: shown.clone(),
        versions: [
            report.targets_version,
            report.snapshot_version,
            report.timestamp_version,
        ],
        changes: writes.iter().map(|w| w.change.clone()).collect(),
        uploaded: 0,
        dry_run: opts.dry_run,
        added: report.added.clone(),
        unchanged: report.unchanged,
    };
    if opts.dry_run {
        return Ok(out);
    }

    out.uploaded = apply(store, &shown, &writes, Some(&pulled.timestamp_etag)).await?;
    // What is live now is what we signed: the record follows it before anything else can
    // fail (a record behind the bucket is safe; one ahead of it would not be).
    if let Some(record) = &opts.record {
        // The scratch copy has the new metadata; a new manifest was staged, not written.
        let manifest = format!(".{}", crate::tuf::MANIFEST_TARGET);
        for t in report.targets.iter().filter(|t| t.key.ends_with(&manifest)) {
            let path = dir.join(&t.key);
            let scratch_error = |source| PublishError::Scratch {
                path: path.clone(),
                source,
            };
            let bytes = t.body.read_blocking().map_err(scratch_error)?;
            std::fs::write(&path, &bytes).map_err(scratch_error)?;
        }
        let signed = pull(&crate::store::fs::FsStore::new(&dir), &rs.region).await?;
        record.remember(&rs.region, &signed.objects).await?;
    }
    drop(scratch);

    let manifest = read_back(rs, opts, &report.added).await?;
    // The feed follows the verified state; a feed that fails to update loses nothing (the
    // next publish rewrites it), so it is a warning, not an error. An edit that changed
    // nothing leaves it alone too, unless it brings release notes.
    if report.unchanged && opts.notes.is_none() {
        return Ok(out);
    }
    if let Err(e) = write_feed(rs, &manifest, opts).await {
        tracing::warn!("cannot update {FEED} in {shown}: {e}");
    }
    Ok(out)
}

/// Verifies the set pulled into `dir` from the publisher's trusted root (never the bucket's
/// own `1.root.json`), without enforcing expiry (`refresh` exists for expired regions).
async fn verify_pulled(rs: &RegionStore, dir: &Path, opts: &Options) -> Result<(), PublishError> {
    crate::tuf::repo::verify_signed(dir, &opts.trusted_root)
        .await
        .map(drop)
        .map_err(|e| PublishError::Untrusted {
            region: rs.region.clone(),
            store: rs.store.describe(),
            detail: molt_schema::cli::one_line(&e),
        })
}

/// Refuses a bucket that the record says is not the newest we signed, or that has no record.
async fn check_record(
    rs: &RegionStore,
    record: &Record,
    opts: &Options,
    pulled: &Pulled,
) -> Result<(), PublishError> {
    let Some(remembered) = record.read(&rs.region, &opts.trusted_root).await? else {
        return Err(PublishError::NoRecord {
            region: rs.region.clone(),
            store: rs.store.describe(),
            record: record.region_dir(&rs.region),
            timestamp_version: pulled.versions[2],
        });
    };
    if let Some(detail) = remembered.refuses(pulled) {
        return Err(PublishError::RolledBack {
            region: rs.region.clone(),
            store: rs.store.describe(),
            record: record.region_dir(&rs.region),
            detail,
        });
    }
    // A newer set than the record (signed by a holder of the keys whose record was not
    // kept) becomes the record now, not only once this command succeeds: a later failure
    // must not leave the record behind a state the bucket already served.
    if !opts.dry_run && pulled.versions[2] > remembered.pulled.versions[2] {
        record.remember(&rs.region, &pulled.objects).await?;
    }
    Ok(())
}

/// The publisher's record of one region, for the commands that manage it.
fn record_of(opts: &Options) -> Result<&Record, PublishError> {
    opts.record.as_ref().ok_or_else(|| PublishError::Record {
        path: PathBuf::new(),
        detail: "no record was given".into(),
    })
}

/// `record adopt`: makes the region's current state the record, once an operator has named
/// it by its timestamp version. Refused over a record that is newer (that is the rollback
/// the record exists to catch).
pub async fn adopt_region(
    rs: &RegionStore,
    opts: &Options,
    timestamp_version: u64,
) -> Result<RegionReport, PublishError> {
    let record = record_of(opts)?;
    let store = rs.store.as_ref();
    let pulled = pull(store, &rs.region).await?;
    if pulled.versions[2] != timestamp_version {
        return Err(PublishError::NotTheNamedState {
            region: rs.region.clone(),
            store: store.describe(),
            holds: pulled.versions[2],
            named: timestamp_version,
        });
    }
    let (_scratch, dir) = scratch_copy(&pulled.objects)?;
    verify_pulled(rs, &dir, opts).await?;
    if let Some(remembered) = record.read(&rs.region, &opts.trusted_root).await?
        && let Some(detail) = remembered.refuses(&pulled)
    {
        return Err(PublishError::RolledBack {
            region: rs.region.clone(),
            store: store.describe(),
            record: record.region_dir(&rs.region),
            detail,
        });
    }
    if !opts.dry_run {
        record.remember(&rs.region, &pulled.objects).await?;
    }
    Ok(RegionReport {
        region: rs.region.clone(),
        store: store.describe(),
        versions: pulled.versions,
        changes: Vec::new(),
        uploaded: 0,
        dry_run: opts.dry_run,
        added: Vec::new(),
        unchanged: true,
    })
}

/// `record restore`: puts the signed set the publisher last published back into a bucket
/// that holds an older one (or another one of the same version, or none, or metadata that
/// does not verify): every file of it created where missing and replaced where it holds
/// other bytes, `timestamp.json` last and only over the one found; then read back as a host
/// reads it. A bucket that already holds the record's set, or a newer one, is left alone.
pub async fn restore_region(
    rs: &RegionStore,
    opts: &Options,
) -> Result<RegionReport, PublishError> {
    let record = record_of(opts)?;
    let store = rs.store.as_ref();
    let shown = store.describe();
    let Some(remembered) = record.read(&rs.region, &opts.trusted_root).await? else {
        return Err(PublishError::Record {
            path: record.region_dir(&rs.region),
            detail: "there is no record of this region to restore".into(),
        });
    };
    let mine = &remembered.pulled;
    // The timestamp's ETag before anything is decided: the replacement below goes only over
    // the one this decision was made on (a publish that lands in between wins).
    let etag_before = store
        .head(TIMESTAMP)
        .await
        .map_err(pull_error(TIMESTAMP, &shown))?;
    let (current, verified) = match pull(store, &rs.region).await {
        Ok(p) => {
            let (_scratch, dir) = scratch_copy(&p.objects)?;
            let verified = verify_pulled(rs, &dir, opts).await.is_ok();
            (Some(p), verified)
        }
        Err(PublishError::NoRepository { .. } | PublishError::BadMetadata { .. }) => (None, false),
        Err(e) => return Err(e),
    };
    let mut out = RegionReport {
        region: rs.region.clone(),
        store: shown.clone(),
        versions: mine.versions,
        changes: Vec::new(),
        uploaded: 0,
        dry_run: opts.dry_run,
        added: Vec::new(),
        unchanged: false,
    };
    if let Some(current) = &current
        && verified
        && !remembered.ahead_of(current)
    {
        out.versions = current.versions;
        out.unchanged = true;
        return Ok(out);
    }
    let etag = match &current {
        Some(p) => Some(p.timestamp_etag.clone()),
        None => etag_before,
    };
    let mut writes = Vec::new();
    for (key, bytes) in &mine.objects {
        let body = Body::from_bytes(bytes.clone());
        let action = match holds(store, key, &body)
            .await
            .map_err(pull_error(key, &shown))?
        {
            Some(true) => Action::Same,
            _ if key == TIMESTAMP => Action::Replace,
            None => Action::Create,
            Some(false) => Action::Repair,
        };
        writes.push(Upload {
            change: Change {
                key: key.clone(),
                action,
                size: bytes.len(),
            },
            body,
        });
    }
    writes.sort_by(|a, b| {
        (rank(&a.change.key), &a.change.key).cmp(&(rank(&b.change.key), &b.change.key))
    });
    out.changes = writes.iter().map(|w| w.change.clone()).collect();
    if opts.dry_run {
        return Ok(out);
    }
    out.uploaded = apply(store, &shown, &writes, etag.as_deref()).await?;
    read_back(rs, opts, &[]).await?;
    Ok(out)
}

/// Writes `writes` in their order, each as its action says; `timestamp.json` (last) only over
/// the one with `timestamp_etag` (or only if absent, for `None`). Each object but the
/// timestamp is checked in the store before the next is written. Returns how many were
/// uploaded.
async fn apply(
    store: &dyn ObjectStore,
    shown: &str,
    writes: &[Upload],
    timestamp_etag: Option<&str>,
) -> Result<usize, PublishError> {
    let mut uploaded = 0;
    for w in writes {
        let c = &w.change;
        let cond = match c.action {
            Action::Same => continue,
            Action::Create => Condition::IfNoneMatch,
            Action::Clobber | Action::Repair => Condition::None,
            Action::Replace => match timestamp_etag {
                Some(etag) => Condition::IfMatch(etag.to_owned()),
                None => Condition::IfNoneMatch,
            },
        };
        let result = store.put_body(&c.key, w.body.clone(), cond.clone()).await;
        match result {
            Ok(()) => {
                uploaded += 1;
                kill_point();
            }
            Err(StoreError::PreconditionFailed { .. })
                if c.action == Action::Create && content_addressed(&c.key, &w.body) =>
            {
                // Someone created it since the guard: with the same bytes, or corrupt ones,
                // which the check below puts right.
            }
            Err(StoreError::PreconditionFailed { .. }) if c.action == Action::Create => {
                // Someone created it since the guard: fine only with the very same bytes.
                let same = holds(store, &c.key, &w.body).await;
                if !matches!(same, Ok(Some(true))) {
                    return Err(PublishError::Raced {
                        key: c.key.clone(),
                        store: shown.to_owned(),
                    });
                }
            }
            Err(StoreError::PreconditionFailed { .. }) => {
                // The timestamp changed since the pull. When it now holds our very bytes,
                // that change was this write's own first attempt, which landed although its
                // answer was lost (the store's retry met it); anything else is a race.
                let same = holds(store, &c.key, &w.body).await;
                if !matches!(same, Ok(Some(true))) {
                    return Err(PublishError::Raced {
                        key: c.key.clone(),
                        store: shown.to_owned(),
                    });
                }
            }
            Err(source) => {
                return Err(PublishError::Upload {
                    key: c.key.clone(),
                    store: shown.to_owned(),
                    source: Box::new(source),
                });
            }
        }
        // Nothing goes live unverified: each target (the archives, then the manifest), then
        // the targets and snapshot metadata, is checked in the store before what names it
        // is written, and `timestamp.json` last.
        if c.key != TIMESTAMP {
            verify_stored(store, &c.key, &w.body, shown).await?;
        }
    }
    Ok(uploaded)
}

/// The region's release feed, beside its repository.
pub const FEED: &str = "feed.json";

/// One version in the feed.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct FeedEntry {
    pub version: String,
    pub status: String,
    #[serde(default)]
    pub published: Option<jiff::Timestamp>,
    #[serde(default)]
    pub halted: Option<String>,
    #[serde(default)]
    pub platforms: Vec<String>,
    #[serde(default)]
    pub notes: Option<String>,
}

/// `feed.json`: the versions a region offers, newest first, with their dates, status and
/// release notes, for operators to subscribe to (as SSM users subscribe to release
/// notes). Informational: hosts never read it; TUF-signed metadata decides.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Feed {
    pub schema: u32,
    pub region: String,
    pub updated: jiff::Timestamp,
    pub versions: Vec<FeedEntry>,
}

/// Renders the feed from a verified manifest, keeping the notes the previous feed had and
/// adding `opts.notes` to the versions this publish added.
pub fn render_feed(
    manifest: &Manifest,
    region: &Region,
    previous: Option<&Feed>,
    notes: Option<(&str, &str)>,
    now: jiff::Timestamp,
) -> Feed {
    let mut versions: BTreeMap<molt_schema::version::Version, FeedEntry> = BTreeMap::new();
    for p in manifest
        .packages
        .iter()
        .filter(|p| p.name == molt_schema::PackageName::Agent.as_str())
    {
        for f in &p.files {
            let platform = molt_schema::PackageName::Agent
                .platform_of_file(&f.name)
                .map(|pl| pl.to_string());
            for e in &f.available_versions {
                let entry = versions
                    .entry(e.version.clone())
                    .or_insert_with(|| FeedEntry {
                        version: e.version.to_string(),
                        status: e.status.as_str().to_owned(),
                        published: e.published,
                        halted: e.halted.as_ref().map(|h| h.reason.clone()),
                        platforms: Vec::new(),
                        notes: previous
                            .and_then(|p| {
                                p.versions
                                    .iter()
                                    .find(|x| x.version == e.version.to_string())
                            })
                            .and_then(|x| x.notes.clone()),
                    });
                if let Some(pl) = &platform
                    && !entry.platforms.contains(pl)
                {
                    entry.platforms.push(pl.clone());
                }
                if let Some((v, text)) = notes
                    && v == entry.version
                {
                    entry.notes = Some(text.to_owned());
                }
            }
        }
    }
    Feed {
        schema: 1,
        region: region.to_string(),
        updated: now,
        versions: versions.into_values().rev().collect(),
    }
}

async fn write_feed(
    rs: &RegionStore,
    manifest: &Manifest,
    opts: &Options,
) -> Result<(), StoreError> {
    let store = rs.store.as_ref();
    let previous: Option<Feed> = store
        .get(FEED)
        .await?
        .and_then(|o| serde_json::from_slice(&o.bytes).ok());
    let notes = opts.notes.as_ref().map(|(v, t)| (v.as_str(), t.as_str()));
    let feed = render_feed(
        manifest,
        &rs.region,
        previous.as_ref(),
        notes,
        jiff::Timestamp::now(),
    );
    let mut bytes = serde_json::to_vec_pretty(&feed).unwrap_or_default();
    bytes.push(b'\n');
    let body = Body::from_bytes(bytes);
    store.put_body(FEED, body.clone(), Condition::None).await
}

/// Loads the region as a host would, from the trusted root (root chain, timestamp,
/// snapshot, targets, manifest, all verified through TUF), then checks every added target
/// against its signed length and SHA-256.
///
/// A target is checked by the length and SHA-256 that the store keeps with the object
/// ([`ObjectStore::stat`]): S3 computed that checksum over the bytes it received, verified it
/// against the one this publish sent, and stores it with exactly those bytes; the directory
/// store hashes the file. When they are the signed ones, the bytes a host will download are
/// the signed bytes, without downloading them again from every region. When the store has
/// no checksum for the object (uploaded by an older publisher, or by a server that keeps
/// none) or cannot be asked, the target is read through TUF and hashed, as a host reads it.
/// A checksum that differs from the signed one fails the read-back.
pub async fn read_back(
    rs: &RegionStore,
    opts: &Options,
    added: &[String],
) -> Result<Manifest, PublishError> {
    let fail = |detail: String| PublishError::ReadBack {
        region: rs.region.clone(),
        detail,
    };
    let mut transport = match &opts.transport {
        Some(t) => t.clone(),
        None => MoltTransport::new(HttpSettings::default()).map_err(|e| fail(e.to_string()))?,
    };
    if let Some(signer) = &rs.reader.signer {
        transport = transport.with_signer(signer.clone());
    }
    let loaded = load_region(LoadOptions {
        source: RegionSource::new(rs.reader.url.clone()),
        region: Some(&rs.region),
        trusted_root: &opts.trusted_root,
        datastore: None,
        transport,
        retry: molt_fetch::retry::RetryPolicy::PUBLISH,
        commit: false,
    })
    .await
    .map_err(|e| fail(molt_schema::cli::one_line(&e)))?;
    for name in added {
        if name == crate::tuf::MANIFEST_TARGET {
            continue;
        }
        let Some(signed) = loaded.target(name) else {
            return Err(fail(format!("{name} is not among the signed targets")));
        };
        let key = tough::TargetName::new(name)
            .map(|t| format!("targets/{}.{}", signed.sha256, t.resolved()))
            .map_err(|e| fail(format!("{name}: {e}")))?;
        let stored = rs.store.stat(&key).await;
        match stored {
            Ok(Some(meta)) if meta.sha256.is_some() => {
                if meta.sha256 == Some(signed.sha256) && meta.len == signed.length {
                    continue;
                }
                return Err(fail(format!(
                    "{name}: {key} holds {} bytes with SHA-256 {}, but the signed target has {} bytes with SHA-256 {}",
                    meta.len,
                    meta.sha256.map(|s| s.to_string()).unwrap_or_default(),
                    signed.length,
                    signed.sha256
                )));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(region = %rs.region, "cannot ask for the checksum of {key}: {e}");
            }
        }
        let read = loaded
            .read_target_with(name, |r| std::io::copy(r, &mut std::io::sink()))
            .await;
        match read {
            Ok(_) => {}
            Err(molt_fetch::tuf::ReadError::Trust(e)) => {
                return Err(fail(format!("{name}: {}", molt_schema::cli::one_line(&e))));
            }
            Err(molt_fetch::tuf::ReadError::Consumer(e)) => {
                return Err(fail(format!("{name}: {}", molt_schema::cli::one_line(&e))));
            }
        }
    }
    Ok(loaded.manifest)
}

/// The manifest changes of `rollout halt`, `resume` and `recall`, for
/// [`crate::tuf::repo::edit_manifest_above`].
pub mod edits {
    use jiff::Timestamp;

    use crate::tuf::repo::RepoError;
    use molt_schema::manifest::{Halt, Manifest, Status, VersionEntry};
    use molt_schema::version::Version;

    fn entries<'a>(
        m: &'a mut Manifest,
        version: &'a Version,
    ) -> impl Iterator<Item = &'a mut VersionEntry> + 'a {
        m.packages
            .iter_mut()
            .flat_map(|p| p.files.iter_mut())
            .flat_map(|f| f.available_versions.iter_mut())
            .filter(move |e| &e.version == version)
    }

    fn missing(version: &Version) -> RepoError {
        RepoError::Invalid(format!(
            "version {version} is not in this region's manifest"
        ))
    }

    /// Halts `version`: no host moves to it until it is resumed.
    pub fn halt(
        m: &mut Manifest,
        version: &Version,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), RepoError> {
        let mut seen = false;
        for e in entries(m, version) {
            seen = true;
            if e.halted.is_none() {
                e.halted = Some(Halt {
                    at: now,
                    reason: reason.to_owned(),
                });
            }
        }
        if seen { Ok(()) } else { Err(missing(version)) }
    }

    /// Resumes `version`: the halt goes, and its in-region waves start later by as long as
    /// the halt lasted, so hosts whose wave time passed during the halt do not all move at
    /// once.
    pub fn resume(m: &mut Manifest, version: &Version, now: Timestamp) -> Result<(), RepoError> {
        let mut seen = false;
        for e in entries(m, version) {
            seen = true;
            if let Some(h) = e.halted.take()
                && let Some(r) = &e.rollout
            {
                let paused = now.duration_since(h.at).max(jiff::SignedDuration::ZERO);
                e.rollout = Some(r.delayed(paused));
            }
        }
        if seen { Ok(()) } else { Err(missing(version)) }
    }

    /// Recalls `version`: Deprecated everywhere in the manifest, and `MaxVersion` set to the
    /// highest Active version below it, so hosts above the ceiling move down.
    pub fn recall(m: &mut Manifest, version: &Version) -> Result<Version, RepoError> {
        let mut seen = false;
        for e in entries(m, version) {
            seen = true;
            e.status = Status::Deprecated;
        }
        if !seen {
            return Err(missing(version));
        }
        let below = m
            .packages
            .iter()
            .filter(|p| p.name == molt_schema::PackageName::Agent.as_str())
            .flat_map(|p| p.files.iter())
            .flat_map(|f| f.available_versions.iter())
            .filter(|e| e.status == Status::Active && &e.version < version)
            .map(|e| e.version.clone())
            .max()
            .ok_or_else(|| {
                RepoError::Invalid(format!(
                    "no Active version below {version} to fall back to; publish a fixed release instead"
                ))
            })?;
        if m.max_version.as_ref().is_none_or(|cur| cur > &below) {
            m.max_version = Some(below.clone());
        }
        Ok(below)
    }
}

/// Uploads a repository made locally (`repo init`) into a store that holds none yet:
/// every object created only if absent, `timestamp.json` last. Refuses a store that
/// already has a repository.
pub async fn upload_new(
    rs: &RegionStore,
    dir: &Path,
    opts: &Options,
) -> Result<usize, PublishError> {
    let store = rs.store.as_ref();
    let shown = store.describe();
    let existing = store
        .head(TIMESTAMP)
        .await
        .map_err(pull_error(TIMESTAMP, &shown))?;
    if existing.is_some() {
        return Err(PublishError::Exists {
            region: rs.region.clone(),
            store: shown,
        });
    }
    // A new region starts the record; one whose record is newer than this repository was
    // emptied, and uploading an older set would roll its hosts back. What is uploaded (and
    // remembered) must be ours.
    let local = pull(&crate::store::fs::FsStore::new(dir), &rs.region).await?;
    verify_pulled(rs, dir, opts).await?;
    if let Some(record) = &opts.record
        && let Some(remembered) = record.read(&rs.region, &opts.trusted_root).await?
        && let Some(detail) = remembered.refuses(&local)
    {
        return Err(PublishError::RolledBack {
            region: rs.region.clone(),
            store: shown,
            record: record.region_dir(&rs.region),
            detail: detail.replace("the bucket holds", "this repository holds"),
        });
    }
    let mut keys = Vec::new();
    walk(dir, dir, &mut keys)?;
    keys.sort_by_key(|k| (rank(k), k.clone()));
    let mut uploaded = 0;
    for key in keys {
        let path = dir.join(&key);
        let bytes = std::fs::read(&path).map_err(|source| PublishError::Scratch {
            path: path.clone(),
            source,
        })?;
        let body = Body::from_bytes(bytes);
        let result = store
            .put_body(&key, body.clone(), Condition::IfNoneMatch)
            .await;
        match result {
            Ok(()) => uploaded += 1,
            Err(StoreError::PreconditionFailed { .. }) => {
                // Already there: fine with the very same bytes (an earlier run, or this
                // write's own first attempt that landed), a race otherwise.
                if !matches!(holds(store, &key, &body).await, Ok(Some(true))) {
                    return Err(PublishError::Raced { key, store: shown });
                }
            }
            Err(source) => {
                return Err(PublishError::Upload {
                    key,
                    store: shown,
                    source: Box::new(source),
                });
            }
        }
    }
    if let Some(record) = &opts.record {
        record.remember(&rs.region, &local.objects).await?;
    }
    read_back(rs, opts, &[]).await?;
    Ok(uploaded)
}

/// The expiry of each role of a region's repository as it is in its store (read without
/// enforcing expiry, so an expired region still reports).
pub async fn remote_expiry(
    rs: &RegionStore,
    within: Duration,
    now: jiff::Timestamp,
) -> Result<Vec<crate::tuf::repo::RoleExpiry>, PublishError> {
    let pulled = pull(rs.store.as_ref(), &rs.region).await?;
    let (_scratch, dir) = scratch_copy(&pulled.objects)?;
    Ok(crate::tuf::repo::check_expiry(&dir, within, now).await?)
}
