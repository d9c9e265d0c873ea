//! The publisher's side of a region's repository: init, edits, refresh, expiry checks and
//! root rotation. Signing and metadata building are tough's; this module decides what
//! goes in, which versions and expirations the roles get, and writes the result so that a
//! reader never sees a half-written repository: targets first, then the new (immutable)
//! targets and snapshot metadata, and `timestamp.json` last, replaced by `rename(2)`.
//!
//! A repository on disk (`repo init`, `add`, `set-*`, `refresh`, `root rotate`) is written
//! durably: every file through a temporary file, fsync and rename. The publisher instead
//! renders each region's edit in a [`ScratchRepo`], a throwaway copy that it deletes
//! afterwards: there, metadata is written without fsync, and new targets are not copied in
//! at all but handed back ([`EditReport::targets`]) for the publisher to upload from where
//! they are. Each archive is hashed once ([`ReleaseFiles::scan`]), and that digest is the
//! one the manifest, the TUF target and the target's file name all use.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use aws_lc_rs::rand::SystemRandom;
use jiff::Timestamp;
use serde::Serialize;
use tough::editor::RepositoryEditor;
use tough::editor::signed::{SignedRepository, SignedRole};
use tough::key_source::KeySource;
use tough::schema::{
    Hashes, KeyHolder, Metafile, RoleKeys, RoleType, Root, Signed, Snapshot, Target,
};
use tough::{ExpirationEnforcement, Repository, RepositoryLoader, TargetName};
use url::Url;

use super::keys::{KeyDir, KeyError, public_key};
use super::{Expirations, MANIFEST_TARGET, expiry};
use crate::store::Body;
use molt_schema::artifact::{ArtifactName, HashedFile, PackageName};
use molt_schema::manifest::{FileEntry, Manifest, ManifestError, Package, Status, VersionEntry};
use molt_schema::region::Region;
use molt_schema::rollout::Rollout;
use molt_schema::version::Version;

const SPEC_VERSION: &str = "1.0.0";

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{path} already holds a repository; refusing to initialise it again")]
    Exists { path: PathBuf },
    #[error(
        "{path} holds no repository (no metadata/1.root.json); create one with `release-manifest repo init`"
    )]
    Missing { path: PathBuf },
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TUF operation failed: {action}")]
    Tuf {
        action: &'static str,
        source: Box<tough::error::Error>,
    },
    #[error("the repository's manifest.json is not usable")]
    Manifest(#[source] ManifestError),
    #[error("the repository lists no manifest.json target")]
    NoManifest,
    #[error("the root keys in {dir} give {have} signatures; the root role needs {need}")]
    RootThreshold {
        dir: PathBuf,
        have: usize,
        need: u64,
    },
    #[error("{path} is signed by other root keys than the ones in {dir}")]
    ForeignRoot { path: PathBuf, dir: PathBuf },
    #[error(
        "{dist} has no archives for {package} {version} (expected {dist}/{package}/{version}/{package}-<platform>.<ext>)"
    )]
    NothingToAdd {
        dist: PathBuf,
        package: PackageName,
        version: Version,
    },
    #[error(
        "{path} would be refused by every host, so it is not signed: {}",
        molt_schema::cli::one_line(source)
    )]
    HostsWouldRefuse {
        path: PathBuf,
        source: molt_archive::extract::ExtractError,
    },
    #[error("{path} changed while it was checked; nothing was signed, run the command again")]
    ChangedWhileRead { path: PathBuf },
    #[error("{path} is not a molt archive name (expected {package}-<platform>.<ext>)")]
    UnknownArchive { path: PathBuf, package: PackageName },
    #[error(
        "{file} {version} is already published with other bytes (sha256 {existing}); releases are immutable, publish a new version"
    )]
    VersionExists {
        file: String,
        version: Version,
        existing: String,
    },
    #[error("version {version} is not in the manifest")]
    UnknownVersion { version: Version },
    #[error("Stable must be an Active version; {version} is {status}")]
    StableNotActive { version: Version, status: String },
    #[error(
        "refusing to replace {path} with different bytes: published metadata and targets are immutable"
    )]
    Immutable { path: PathBuf },
    #[error("the version or expiry of {role} is out of range")]
    OutOfRange { role: &'static str },
    #[error(transparent)]
    State(molt_host::state::StateError),
    #[error("{0}")]
    Invalid(String),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RepoError + use<> {
    let path = path.to_owned();
    move |source| RepoError::Io {
        action,
        path,
        source,
    }
}

fn tuf(action: &'static str) -> impl FnOnce(tough::error::Error) -> RepoError {
    move |source| RepoError::Tuf {
        action,
        source: Box::new(source),
    }
}

pub(crate) fn file_url(path: &Path) -> Result<Url, RepoError> {
    let abs = std::path::absolute(path).map_err(io("resolve", path))?;
    Url::from_directory_path(&abs)
        .map_err(|()| RepoError::Invalid(format!("{} is not an absolute path", abs.display())))
}

fn next(v: NonZeroU64, role: &'static str) -> Result<NonZeroU64, RepoError> {
    v.checked_add(1).ok_or(RepoError::OutOfRange { role })
}

fn expires(
    now: Timestamp,
    d: std::time::Duration,
    role: &'static str,
) -> Result<Timestamp, RepoError> {
    expiry(now, d).ok_or(RepoError::OutOfRange { role })
}

/// How an edit writes its files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// A repository that lives on: temporary file, fsync, rename, fsync of the directory.
    Durable,
    /// A [`ScratchRepo`]: plain writes, no fsync (nobody reads it after a crash), and new
    /// targets are handed back instead of written.
    Scratch,
}

/// A repository directory and how to write to it.
#[derive(Clone, Copy, Debug)]
struct RepoDir<'a> {
    path: &'a Path,
    durability: Durability,
}

impl<'a> RepoDir<'a> {
    fn durable(path: &'a Path) -> RepoDir<'a> {
        RepoDir {
            path,
            durability: Durability::Durable,
        }
    }
}

/// A throwaway copy of a region's repository (its metadata and manifest) that the publisher
/// renders one edit in and deletes afterwards (`publish::update_region`). Edits of it write
/// without fsync and leave new targets out (see the module documentation). Only the
/// publisher makes one, so a repository that lives on is always written durably.
#[derive(Debug)]
pub struct ScratchRepo {
    dir: PathBuf,
}

impl ScratchRepo {
    /// `dir` holds a private copy that is removed after the publish.
    pub(crate) fn new(dir: PathBuf) -> ScratchRepo {
        ScratchRepo { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn dir(&self) -> RepoDir<'_> {
        RepoDir {
            path: &self.dir,
            durability: Durability::Scratch,
        }
    }
}

/// Writes `bytes` to `path` atomically (the host state's writer: temporary file,
/// fsync, rename, fsync of the directory).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RepoError> {
    molt_host::state::write_atomic(path, bytes).map_err(RepoError::State)
}

/// Writes a file the way `durability` asks.
fn write_file(path: &Path, bytes: &[u8], durability: Durability) -> Result<(), RepoError> {
    match durability {
        Durability::Durable => write_atomic(path, bytes),
        Durability::Scratch => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            }
            std::fs::write(path, bytes).map_err(io("write", path))
        }
    }
}

/// Places an immutable file: absent → written (see [`write_file`]); present with the same
/// bytes → nothing to do; present with other bytes → refused.
fn place_immutable(path: &Path, bytes: &[u8], durability: Durability) -> Result<(), RepoError> {
    match std::fs::read(path) {
        Ok(existing) if existing == bytes => Ok(()),
        Ok(_) => Err(RepoError::Immutable {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_file(path, bytes, durability),
        Err(e) => Err(io("read", path)(e)),
    }
}

/// A new target: its name and its bytes (in memory, or a hashed file), whose length and
/// SHA-256 were computed once, when the [`Body`] was made.
pub(crate) struct NewTarget {
    name: TargetName,
    body: Body,
}

impl NewTarget {
    fn new(name: &str, body: Body) -> Result<NewTarget, RepoError> {
        Ok(NewTarget {
            name: TargetName::new(name).map_err(tuf("name a target"))?,
            body,
        })
    }

    fn tuf_target(&self) -> Target {
        Target {
            length: self.body.len(),
            hashes: Hashes {
                sha256: self.body.sha256().as_bytes().to_vec().into(),
                _extra: HashMap::new(),
            },
            custom: HashMap::new(),
            _extra: HashMap::new(),
        }
    }

    /// `targets/<sha256>.<name>`, as tough's consistent snapshots name target files.
    fn key(&self) -> String {
        format!("targets/{}.{}", self.body.sha256(), self.name.resolved())
    }

    /// Copies the target into a repository that lives on, checking a file's bytes against
    /// the digest it was hashed with.
    fn place_in(&self, repo: &Path) -> Result<(), RepoError> {
        let path = repo.join(self.key());
        let bytes = match self.body.contents() {
            crate::store::Contents::Memory(bytes) => bytes.clone(),
            crate::store::Contents::File(file) => file
                .read_verified()
                .map(bytes::Bytes::from)
                .map_err(io("read", file.path()))?,
        };
        place_immutable(&path, &bytes, Durability::Durable)
    }
}

/// A new target that an edit of a [`ScratchRepo`] did not write: where it goes in the
/// repository and its bytes, for the publisher to upload.
#[derive(Clone, Debug)]
pub struct StagedTarget {
    /// `targets/<sha256>.<name>`.
    pub key: String,
    pub body: Body,
}

/// Writes a signed repository and its new targets in the order a reader can follow at
/// every instant: targets, root, targets metadata, snapshot, then `timestamp.json`. In a
/// [`ScratchRepo`] the new targets are returned instead of written.
async fn write_repository(
    repo: RepoDir<'_>,
    signed: &SignedRepository,
    targets: &[NewTarget],
) -> Result<Vec<StagedTarget>, RepoError> {
    let mut staged = Vec::new();
    for t in targets {
        match repo.durability {
            Durability::Durable => t.place_in(repo.path)?,
            Durability::Scratch => staged.push(StagedTarget {
                key: t.key(),
                body: t.body.clone(),
            }),
        }
    }
    let staging =
        tempfile::tempdir_in(repo.path).map_err(io("create a staging directory in", repo.path))?;
    signed
        .write(staging.path())
        .await
        .map_err(tuf("write signed metadata"))?;
    let metadata = repo.path.join("metadata");
    std::fs::create_dir_all(&metadata).map_err(io("create", &metadata))?;
    let mut names: Vec<String> = std::fs::read_dir(staging.path())
        .map_err(io("list", staging.path()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let rank = |n: &str| {
        if n.ends_with(".root.json") {
            0
        } else if n.ends_with(".targets.json") {
            1
        } else if n.ends_with(".snapshot.json") {
            2
        } else {
            3
        }
    };
    names.sort_by_key(|n| rank(n));
    for name in names {
        let from = staging.path().join(&name);
        let bytes = std::fs::read(&from).map_err(io("read", &from))?;
        let to = metadata.join(&name);
        if name == "timestamp.json" {
            write_file(&to, &bytes, repo.durability)?;
        } else {
            place_immutable(&to, &bytes, repo.durability)?;
        }
    }
    Ok(staged)
}

/// Builds a root for `keys`: all its root keys (with its threshold) and its online keys.
fn build_root(keys: &KeyDir, version: NonZeroU64, expires: Timestamp) -> Result<Root, RepoError> {
    let mut root = Root {
        spec_version: SPEC_VERSION.to_owned(),
        consistent_snapshot: true,
        version,
        expires,
        keys: HashMap::new(),
        roles: HashMap::new(),
        _extra: HashMap::new(),
    };
    let mut add = |role: RoleType, paths: Vec<PathBuf>, threshold: u64| -> Result<(), RepoError> {
        let mut keyids = Vec::new();
        for p in paths {
            let key = public_key(&p)?;
            let id = key
                .key_id()
                .map_err(|e| RepoError::Invalid(format!("key id of {}: {e}", p.display())))?;
            root.keys.insert(id.clone(), key);
            keyids.push(id);
        }
        let threshold = NonZeroU64::new(threshold).ok_or(RepoError::OutOfRange {
            role: "root threshold",
        })?;
        root.roles.insert(
            role,
            RoleKeys {
                keyids,
                threshold,
                _extra: HashMap::new(),
            },
        );
        Ok(())
    };
    add(
        RoleType::Root,
        keys.root_key_paths()?,
        keys.info.root_threshold,
    )?;
    add(RoleType::Targets, vec![keys.role_path("targets")], 1)?;
    add(RoleType::Snapshot, vec![keys.role_path("snapshot")], 1)?;
    add(RoleType::Timestamp, vec![keys.role_path("timestamp")], 1)?;
    Ok(root)
}

/// Signs `root` with the keys in `signers` as they are listed in `holder` (a root), and
/// returns the signatures made.
async fn sign_root(
    root: &Root,
    holder: &Root,
    signers: &[Box<dyn KeySource>],
) -> Result<SignedRole<Root>, RepoError> {
    SignedRole::new(
        root.clone(),
        &KeyHolder::Root(holder.clone()),
        signers,
        &SystemRandom::new(),
    )
    .await
    .map_err(tuf("sign root metadata"))
}

fn count_sigs_by(signed: &Signed<Root>, holder: &Root) -> usize {
    let ids = holder
        .roles
        .get(&RoleType::Root)
        .map(|r| r.keyids.clone())
        .unwrap_or_default();
    signed
        .signatures
        .iter()
        .filter(|s| ids.contains(&s.keyid))
        .count()
}

fn root_threshold(root: &Root) -> u64 {
    root.roles
        .get(&RoleType::Root)
        .map_or(1, |r| r.threshold.get())
}

/// The shared root of trust for every region: `<keys>/root.json`, created (version 1) on
/// first use. Hosts get this file as their trusted root.
async fn ensure_root(
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
) -> Result<Vec<u8>, RepoError> {
    let path = keys.dir.join("root.json");
    if let Ok(bytes) = std::fs::read(&path) {
        let signed: Signed<Root> = serde_json::from_slice(&bytes)
            .map_err(|e| RepoError::Invalid(format!("{}: {e}", path.display())))?;
        let mine = build_root(keys, signed.signed.version, signed.signed.expires)?;
        if mine.roles.get(&RoleType::Root).map(|r| &r.keyids)
            != signed.signed.roles.get(&RoleType::Root).map(|r| &r.keyids)
        {
            return Err(RepoError::ForeignRoot {
                path,
                dir: keys.dir.clone(),
            });
        }
        return Ok(bytes);
    }
    let root = build_root(keys, NonZeroU64::MIN, expires(now, exp.root, "root")?)?;
    let signed = sign_root(&root, &root, &keys.root_keys()?).await?;
    let have = count_sigs_by(signed.signed(), &root);
    if (have as u64) < root_threshold(&root) {
        return Err(RepoError::RootThreshold {
            dir: keys.dir.clone(),
            have,
            need: root_threshold(&root),
        });
    }
    write_atomic(&path, signed.buffer())?;
    Ok(signed.buffer().clone())
}

/// What `repo init` made.
#[derive(Clone, Debug, Serialize)]
pub struct InitReport {
    pub repo: PathBuf,
    pub region: Region,
    pub root_version: u64,
    pub trusted_root: PathBuf,
}

/// `repo init`: a new repository for `region` with an empty manifest, signed with the
/// shared root (created in the keys directory on first use).
pub async fn init(
    repo: &Path,
    region: &Region,
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
) -> Result<InitReport, RepoError> {
    if repo.join("metadata").exists() {
        return Err(RepoError::Exists {
            path: repo.to_owned(),
        });
    }
    std::fs::create_dir_all(repo.join("targets")).map_err(io("create", repo))?;
    let root_bytes = ensure_root(keys, exp, now).await?;
    let root: Signed<Root> =
        serde_json::from_slice(&root_bytes).map_err(|e| RepoError::Invalid(e.to_string()))?;
    let root_version = root.signed.version.get();
    place_immutable(
        &repo
            .join("metadata")
            .join(format!("{root_version}.root.json")),
        &root_bytes,
        Durability::Durable,
    )?;
    if root_version != 1 {
        // A region created after a rotation still needs the whole chain from version 1.
        copy_root_chain(keys, repo, root_version)?;
    }
    let mut editor = RepositoryEditor::new(keys.dir.join("root.json"))
        .await
        .map_err(tuf("open the root"))?;
    let manifest = NewTarget::new(
        MANIFEST_TARGET,
        Body::from_bytes(Manifest::new(region.clone()).to_json()),
    )?;
    editor
        .add_target(manifest.name.clone(), manifest.tuf_target())
        .map_err(tuf("add manifest.json"))?;
    set_versions(&mut editor, [NonZeroU64::MIN; 3], exp, now)?;
    let signed = editor
        .sign(&keys.online_keys())
        .await
        .map_err(tuf("sign the repository"))?;
    write_repository(RepoDir::durable(repo), &signed, &[manifest]).await?;
    Ok(InitReport {
        repo: repo.to_owned(),
        region: region.clone(),
        root_version,
        trusted_root: keys.dir.join("root.json"),
    })
}

fn copy_root_chain(keys: &KeyDir, repo: &Path, upto: u64) -> Result<(), RepoError> {
    for v in 1..upto {
        let from = keys.dir.join("root-history").join(format!("{v}.root.json"));
        let bytes = std::fs::read(&from).map_err(io("read", &from))?;
        place_immutable(
            &repo.join("metadata").join(format!("{v}.root.json")),
            &bytes,
            Durability::Durable,
        )?;
    }
    Ok(())
}

fn set_versions(
    editor: &mut RepositoryEditor,
    [targets, snapshot, timestamp]: [NonZeroU64; 3],
    exp: &Expirations,
    now: Timestamp,
) -> Result<(), RepoError> {
    editor
        .targets_version(targets)
        .map_err(tuf("set the targets version"))?
        .targets_expires(expires(now, exp.targets, "targets")?)
        .map_err(tuf("set the targets expiry"))?;
    editor
        .snapshot_version(snapshot)
        .snapshot_expires(expires(now, exp.snapshot, "snapshot")?)
        .timestamp_version(timestamp)
        .timestamp_expires(expires(now, exp.timestamp, "timestamp")?);
    Ok(())
}

/// Loads a local repository for editing, trusting its own `1.root.json` and ignoring
/// expiry (an edit re-signs, and `refresh` exists for expired repositories).
pub(crate) async fn load_local(repo: &Path) -> Result<Repository, RepoError> {
    let root_path = repo.join("metadata").join("1.root.json");
    let root = std::fs::read(&root_path).map_err(|_| RepoError::Missing {
        path: repo.to_owned(),
    })?;
    load_from(repo, &root, "load the repository").await
}

/// Loads the repository in `repo` from `root`, without enforcing expiry.
async fn load_from(
    repo: &Path,
    root: &[u8],
    action: &'static str,
) -> Result<Repository, RepoError> {
    RepositoryLoader::new(
        &root,
        file_url(&repo.join("metadata"))?,
        file_url(&repo.join("targets"))?,
    )
    .expiration_enforcement(ExpirationEnforcement::Unsafe)
    .load()
    .await
    .map_err(tuf(action))
}

/// Verifies a repository copied from a store (or the publisher's record) from `trusted_root`,
/// not from its own `1.root.json`, and without enforcing expiry; returns its targets,
/// snapshot and timestamp versions.
pub(crate) async fn verify_signed(repo: &Path, trusted_root: &[u8]) -> Result<[u64; 3], RepoError> {
    let repository = load_from(repo, trusted_root, "verify the repository").await?;
    Ok([
        repository.targets().signed.version.get(),
        repository.snapshot().signed.version.get(),
        repository.timestamp().signed.version.get(),
    ])
}

/// Reads a target of a loaded repository into memory (small targets only: the manifest).
pub(crate) async fn read_small_target(
    repo: &Repository,
    name: &str,
) -> Result<Option<Vec<u8>>, RepoError> {
    use tough::IntoVec as _;
    let name = TargetName::new(name).map_err(tuf("name a target"))?;
    match repo
        .read_target(&name)
        .await
        .map_err(tuf("read a target"))?
    {
        Some(stream) => Ok(Some(stream.into_vec().await.map_err(tuf("read a target"))?)),
        None => Ok(None),
    }
}

async fn read_manifest(repo: &Repository) -> Result<Manifest, RepoError> {
    let bytes = read_small_target(repo, MANIFEST_TARGET)
        .await?
        .ok_or(RepoError::NoManifest)?;
    Manifest::parse(&bytes).map_err(RepoError::Manifest)
}

/// Applies `change` to the manifest (and any new targets it stages), then re-signs
/// targets, snapshot and timestamp with the online keys and writes the result.
async fn edit<F>(
    repo: &Path,
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
    change: F,
) -> Result<EditReport, RepoError>
where
    F: FnOnce(&mut Manifest, &mut Vec<NewTarget>) -> Result<(), RepoError>,
{
    edit_with_root(RepoDir::durable(repo), keys, exp, now, None, [0; 3], change).await
}

/// Changes the manifest only (status, halt, ceiling) in a publisher's scratch copy,
/// re-signing with role versions at least `floor` (see [`add_above`]).
pub async fn edit_manifest_above<F>(
    scratch: &ScratchRepo,
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
    floor: [u64; 3],
    change: F,
) -> Result<EditReport, RepoError>
where
    F: FnOnce(&mut Manifest) -> Result<(), RepoError>,
{
    edit_with_root(scratch.dir(), keys, exp, now, None, floor, |m, _| change(m)).await
}

/// [`edit`], signing under `new_root` (a root not yet in the repository) when given, with
/// the new targets, snapshot and timestamp versions at least `floor`.
async fn edit_with_root<F>(
    repo: RepoDir<'_>,
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
    new_root: Option<&Path>,
    floor: [u64; 3],
    change: F,
) -> Result<EditReport, RepoError>
where
    F: FnOnce(&mut Manifest, &mut Vec<NewTarget>) -> Result<(), RepoError>,
{
    let repository = load_local(repo.path).await?;
    let mut manifest = read_manifest(&repository).await?;
    let before = manifest.to_json();
    let mut new_targets = Vec::new();
    change(&mut manifest, &mut new_targets)?;
    // Nothing to sign when the manifest is as it was and every target is already signed
    // with these bytes (a pipeline run again, a status set to what it is): no new metadata
    // versions, nothing written.
    let signed_targets = &repository.targets().signed.targets;
    let unchanged = new_root.is_none()
        && manifest.to_json() == before
        && new_targets.iter().all(|t| {
            signed_targets.get(&t.name).is_some_and(|have| {
                let want = t.tuf_target();
                have.length == want.length && have.hashes.sha256 == want.hashes.sha256
            })
        });
    if unchanged {
        // A publisher still checks that the store holds these targets' bytes (and puts
        // right one that does not), so running a publish again repairs a damaged archive.
        let targets = match repo.durability {
            Durability::Scratch => new_targets
                .iter()
                .map(|t| StagedTarget {
                    key: t.key(),
                    body: t.body.clone(),
                })
                .collect(),
            Durability::Durable => Vec::new(),
        };
        return Ok(EditReport {
            targets_version: repository.targets().signed.version.get(),
            snapshot_version: repository.snapshot().signed.version.get(),
            timestamp_version: repository.timestamp().signed.version.get(),
            added: Vec::new(),
            targets,
            unchanged: true,
        });
    }
    let at_least = |v: NonZeroU64, floor: u64| NonZeroU64::new(floor).map_or(v, |f| v.max(f));
    let versions = [
        at_least(
            next(repository.targets().signed.version, "targets")?,
            floor[0],
        ),
        at_least(
            next(repository.snapshot().signed.version, "snapshot")?,
            floor[1],
        ),
        at_least(
            next(repository.timestamp().signed.version, "timestamp")?,
            floor[2],
        ),
    ];
    let root_path = match new_root {
        Some(p) => p.to_owned(),
        None => repo
            .path
            .join("metadata")
            .join(format!("{}.root.json", repository.root().signed.version)),
    };
    let mut editor = RepositoryEditor::from_repo(&root_path, repository)
        .await
        .map_err(tuf("open the repository for editing"))?;
    new_targets.push(NewTarget::new(
        MANIFEST_TARGET,
        Body::from_bytes(manifest.to_json()),
    )?);
    for t in &new_targets {
        editor
            .add_target(t.name.clone(), t.tuf_target())
            .map_err(tuf("add a target"))?;
    }
    set_versions(&mut editor, versions, exp, now)?;
    let signed = editor
        .sign(&keys.online_keys())
        .await
        .map_err(tuf("sign the repository"))?;
    let staged = write_repository(repo, &signed, &new_targets).await?;
    Ok(EditReport {
        targets_version: versions[0].get(),
        snapshot_version: versions[1].get(),
        timestamp_version: versions[2].get(),
        added: new_targets
            .iter()
            .map(|t| t.name.raw().to_owned())
            .collect(),
        targets: staged,
        unchanged: false,
    })
}

/// What an edit wrote.
#[derive(Clone, Debug, Serialize)]
pub struct EditReport {
    pub targets_version: u64,
    pub snapshot_version: u64,
    pub timestamp_version: u64,
    pub added: Vec<String>,
    /// The new targets an edit of a [`ScratchRepo`] left for the publisher to upload
    /// (empty for a repository on disk, which has them written).
    #[serde(skip)]
    pub targets: Vec<StagedTarget>,
    /// Nothing changed, and nothing was signed or written: the versions are the ones the
    /// repository had.
    pub unchanged: bool,
}

/// Options for `add`.
#[derive(Clone, Debug)]
pub struct AddOptions {
    pub version: Version,
    pub status: Status,
    pub rollout: Option<Rollout>,
}

/// The archives of one version in a dist directory (as `package` writes them:
/// `<dist>/<package>/<version>/<package>-<platform>.<ext>`), each hashed once.
#[derive(Clone, Debug)]
pub struct ReleaseFiles {
    version: Version,
    files: Vec<(PackageName, String, HashedFile)>,
}

impl ReleaseFiles {
    /// Finds the archives of `version` in `dist` and hashes them, each on its own thread.
    /// Blocking. Refuses a file that is not a molt archive name, and a release without an
    /// agent archive.
    pub fn scan(dist: &Path, version: &Version) -> Result<ReleaseFiles, RepoError> {
        let mut found: Vec<(PackageName, String, PathBuf)> = Vec::new();
        for package in PackageName::ALL {
            let dir = dist.join(package.as_str()).join(version.to_string());
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> =
                entries.filter_map(Result::ok).map(|e| e.path()).collect();
            files.sort();
            for path in files {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if package.platform_of_file(&name).is_none() {
                    return Err(RepoError::UnknownArchive { path, package });
                }
                found.push((package, name, path));
            }
        }
        if !found.iter().any(|(p, _, _)| *p == PackageName::Agent) {
            return Err(RepoError::NothingToAdd {
                dist: dist.to_owned(),
                package: PackageName::Agent,
                version: version.clone(),
            });
        }
        let hashed: Vec<Result<HashedFile, RepoError>> = std::thread::scope(|scope| {
            let jobs: Vec<_> = found
                .iter()
                .map(|(package, name, path)| {
                    scope.spawn(move || {
                        let file = HashedFile::hash(path).map_err(io("read", path))?;
                        check_as_a_host_would(*package, name, &file)?;
                        Ok(file)
                    })
                })
                .collect();
            jobs.into_iter()
                .zip(&found)
                .map(|(job, (_, _, path))| {
                    job.join().unwrap_or_else(|_| {
                        Err(RepoError::Invalid(format!(
                            "hashing {} failed",
                            path.display()
                        )))
                    })
                })
                .collect()
        });
        let mut files = Vec::with_capacity(found.len());
        for ((package, name, _), file) in found.into_iter().zip(hashed) {
            files.push((package, name, file?));
        }
        Ok(ReleaseFiles {
            version: version.clone(),
            files,
        })
    }

    pub fn version(&self) -> &Version {
        &self.version
    }

    /// The archives: package, file name, and the hashed file.
    pub fn files(&self) -> impl Iterator<Item = (PackageName, &str, &HashedFile)> {
        self.files.iter().map(|(p, n, f)| (*p, n.as_str(), f))
    }
}

/// Runs the hosts' own extractor over an archive before it is signed (into a temporary
/// directory, with the hosts' limits): what every host would refuse (a path out of the
/// directory, a link, a device, a bomb, a duplicate, a missing or extra file) is never
/// signed. The bytes checked are the bytes hashed: they are hashed again on the way through
/// and must match `file`.
fn check_as_a_host_would(
    package: PackageName,
    name: &str,
    file: &HashedFile,
) -> Result<(), RepoError> {
    use std::io::Read as _;
    let path = file.path();
    let Some(platform) = package.platform_of_file(name) else {
        return Err(RepoError::UnknownArchive {
            path: path.to_owned(),
            package,
        });
    };
    let scratch = tempfile::tempdir().map_err(io("create a temporary directory for", path))?;
    let reader = std::fs::File::open(path).map_err(io("read", path))?;
    let mut hashing = molt_schema::artifact::HashingReader::new(reader);
    molt_archive::extract::extract(
        &mut hashing,
        package,
        platform,
        &scratch.path().join("x"),
        &molt_archive::extract::Limits::default(),
    )
    .map_err(|source| RepoError::HostsWouldRefuse {
        path: path.to_owned(),
        source,
    })?;
    // what the extractor left unread (a tar's end padding) is part of the signed bytes too
    std::io::copy(&mut hashing.by_ref(), &mut std::io::sink()).map_err(io("read", path))?;
    if hashing.finish() != (file.len(), file.sha256()) {
        return Err(RepoError::ChangedWhileRead {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// `add`: adds every archive of `version` found in `dist` (as `package` writes them) and
/// lists it in the manifest with its checksum, size, status and rollout.
pub async fn add(
    repo: &Path,
    dist: &Path,
    opts: &AddOptions,
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
) -> Result<EditReport, RepoError> {
    let release = ReleaseFiles::scan(dist, &opts.version)?;
    add_in(
        RepoDir::durable(repo),
        &release,
        opts,
        keys,
        exp,
        now,
        [0; 3],
    )
    .await
}

/// [`add`] in a publisher's scratch copy, from archives hashed once for every region, with
/// the new targets, snapshot and timestamp versions at least `floor`. The publisher passes
/// one above every version present in the bucket, so an edit never reuses the version of
/// an object that an interrupted publish left behind.
pub async fn add_above(
    scratch: &ScratchRepo,
    release: &ReleaseFiles,
    opts: &AddOptions,
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
    floor: [u64; 3],
) -> Result<EditReport, RepoError> {
    add_in(scratch.dir(), release, opts, keys, exp, now, floor).await
}

async fn add_in(
    repo: RepoDir<'_>,
    release: &ReleaseFiles,
    opts: &AddOptions,
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
    floor: [u64; 3],
) -> Result<EditReport, RepoError> {
    if release.version != opts.version {
        return Err(RepoError::Invalid(format!(
            "the archives found are for version {}, not {}",
            release.version, opts.version
        )));
    }
    edit_with_root(
        repo,
        keys,
        exp,
        now,
        None,
        floor,
        |manifest, new_targets| {
            for (package, file_name, file) in release.files() {
                let target_name =
                    molt_schema::artifact::target_name(package.as_str(), &opts.version, file_name);
                target_name
                    .parse::<ArtifactName>()
                    .map_err(|e| RepoError::Invalid(e.to_string()))?;
                let entry = VersionEntry {
                    version: opts.version.clone(),
                    checksum: Some(file.sha256()),
                    size: Some(file.len()),
                    status: opts.status.clone(),
                    rollout: opts.rollout.clone(),
                    published: Some(now),
                    halted: None,
                    extra: Default::default(),
                };
                upsert(manifest, package.as_str(), file_name, entry)?;
                new_targets.push(NewTarget::new(&target_name, Body::from_file(file.clone()))?);
            }
            Ok(())
        },
    )
    .await
}

fn upsert(
    manifest: &mut Manifest,
    package: &str,
    file_name: &str,
    entry: VersionEntry,
) -> Result<(), RepoError> {
    if manifest.package(package).is_none() {
        manifest.packages.push(Package {
            name: package.to_owned(),
            files: Vec::new(),
            extra: Default::default(),
        });
    }
    let pkg = manifest
        .packages
        .iter_mut()
        .find(|p| p.name == package)
        .ok_or(RepoError::NoManifest)?;
    if !pkg.files.iter().any(|f| f.name == file_name) {
        pkg.files.push(FileEntry {
            name: file_name.to_owned(),
            available_versions: Vec::new(),
            extra: Default::default(),
        });
    }
    let file = pkg
        .files
        .iter_mut()
        .find(|f| f.name == file_name)
        .ok_or(RepoError::NoManifest)?;
    match file
        .available_versions
        .iter_mut()
        .find(|v| v.version == entry.version)
    {
        // The same bytes again (a pipeline run again): the entry stays as it is, with when
        // it was first published, its status and its rollout. A recall, a halt or a
        // rollout's start is never undone by publishing again; `set-status` changes a status.
        Some(existing) if existing.checksum == entry.checksum => Ok(()),
        Some(existing) => Err(RepoError::VersionExists {
            file: file_name.to_owned(),
            version: entry.version,
            existing: existing.checksum.map(|c| c.to_string()).unwrap_or_default(),
        }),
        None => {
            file.available_versions.push(entry);
            Ok(())
        }
    }
}

/// `set-status`: the status of `version` in every file of every package.
pub async fn set_status(
    repo: &Path,
    version: &Version,
    status: Status,
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
) -> Result<EditReport, RepoError> {
    edit(repo, keys, exp, now, |m, _| {
        let mut seen = false;
        for entry in m
            .packages
            .iter_mut()
            .flat_map(|p| p.files.iter_mut())
            .flat_map(|f| f.available_versions.iter_mut())
            .filter(|e| &e.version == version)
        {
            entry.status = status.clone();
            seen = true;
        }
        if !seen {
            return Err(RepoError::UnknownVersion {
                version: version.clone(),
            });
        }
        if m.stable.as_ref() == Some(version) && status != Status::Active {
            m.stable = None;
        }
        Ok(())
    })
    .await
}

/// `set-max-version`: the fleet-wide ceiling (`None` clears it).
pub async fn set_max_version(
    repo: &Path,
    max: Option<Version>,
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
) -> Result<EditReport, RepoError> {
    edit(repo, keys, exp, now, |m, _| {
        m.max_version = max;
        Ok(())
    })
    .await
}

/// `set-stable`: the version `--target-version stable` resolves to; it must be Active.
pub async fn set_stable(
    repo: &Path,
    version: &Version,
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
) -> Result<EditReport, RepoError> {
    edit(repo, keys, exp, now, |m, _| {
        let status = m
            .packages
            .iter()
            .flat_map(|p| p.files.iter())
            .flat_map(|f| f.available_versions.iter())
            .find(|e| &e.version == version)
            .map(|e| e.status.clone())
            .ok_or(RepoError::UnknownVersion {
                version: version.clone(),
            })?;
        if status != Status::Active {
            return Err(RepoError::StableNotActive {
                version: version.clone(),
                status: status.to_string(),
            });
        }
        m.stable = Some(version.clone());
        Ok(())
    })
    .await
}

/// What `refresh` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct RefreshReport {
    /// Unchanged by a refresh.
    pub targets_version: u64,
    pub snapshot_version: u64,
    pub snapshot_expires: Timestamp,
    pub timestamp_version: u64,
    pub timestamp_expires: Timestamp,
}

/// `refresh`: re-signs snapshot and timestamp with new versions and expirations; the
/// targets metadata and every target stay exactly as they are. Needs only the snapshot
/// and timestamp keys.
pub async fn refresh(
    repo: &Path,
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
) -> Result<RefreshReport, RepoError> {
    refresh_in(RepoDir::durable(repo), keys, exp, now, [0; 3]).await
}

/// [`refresh`] in a publisher's scratch copy, with the new snapshot version at least
/// `floor[1]` (see [`add_above`]).
pub async fn refresh_above(
    scratch: &ScratchRepo,
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
    floor: [u64; 3],
) -> Result<RefreshReport, RepoError> {
    refresh_in(scratch.dir(), keys, exp, now, floor).await
}

async fn refresh_in(
    repo: RepoDir<'_>,
    keys: &KeyDir,
    exp: &Expirations,
    now: Timestamp,
    floor: [u64; 3],
) -> Result<RefreshReport, RepoError> {
    let repository = load_local(repo.path).await?;
    let root = repository.root().signed.clone();
    let old = repository.snapshot().signed.clone();
    let snapshot_version = next(old.version, "snapshot")?;
    let snapshot_version =
        NonZeroU64::new(floor[1]).map_or(snapshot_version, |f| snapshot_version.max(f));
    let snapshot_expires = expires(now, exp.snapshot, "snapshot")?;
    let mut snapshot = Snapshot::new(SPEC_VERSION.to_owned(), snapshot_version, snapshot_expires);
    snapshot.meta = old.meta.clone();
    snapshot._extra = old._extra.clone();
    let signers = keys.online_keys();
    let rng = SystemRandom::new();
    let holder = KeyHolder::Root(root);
    let signed_snapshot = SignedRole::new(snapshot, &holder, &signers, &rng)
        .await
        .map_err(tuf("sign the snapshot"))?;
    let timestamp_version = next(repository.timestamp().signed.version, "timestamp")?;
    let timestamp_expires = expires(now, exp.timestamp, "timestamp")?;
    let mut timestamp = tough::schema::Timestamp::new(
        SPEC_VERSION.to_owned(),
        timestamp_version,
        timestamp_expires,
    );
    timestamp.meta.insert(
        "snapshot.json".to_owned(),
        Metafile {
            length: Some(*signed_snapshot.length()),
            hashes: Some(Hashes {
                sha256: signed_snapshot.sha256().to_vec().into(),
                _extra: HashMap::new(),
            }),
            version: snapshot_version,
            _extra: HashMap::new(),
        },
    );
    let signed_timestamp = SignedRole::new(timestamp, &holder, &signers, &rng)
        .await
        .map_err(tuf("sign the timestamp"))?;
    let metadata = repo.path.join("metadata");
    place_immutable(
        &metadata.join(format!("{snapshot_version}.snapshot.json")),
        signed_snapshot.buffer(),
        repo.durability,
    )?;
    write_file(
        &metadata.join("timestamp.json"),
        signed_timestamp.buffer(),
        repo.durability,
    )?;
    Ok(RefreshReport {
        targets_version: repository.targets().signed.version.get(),
        snapshot_version: snapshot_version.get(),
        snapshot_expires,
        timestamp_version: timestamp_version.get(),
        timestamp_expires,
    })
}

/// One role's expiry.
#[derive(Clone, Debug, Serialize)]
pub struct RoleExpiry {
    pub role: String,
    pub version: u64,
    pub expires: Timestamp,
    pub expires_soon: bool,
}

/// `check-expiry`: each top-level role's expiry, and whether it falls before `now + within`.
pub async fn check_expiry(
    repo: &Path,
    within: std::time::Duration,
    now: Timestamp,
) -> Result<Vec<RoleExpiry>, RepoError> {
    let repository = load_local(repo).await?;
    let horizon = expires(now, within, "--within")?;
    let role = |role: &str, version: NonZeroU64, expires: Timestamp| RoleExpiry {
        role: role.to_owned(),
        version: version.get(),
        expires,
        expires_soon: expires <= horizon,
    };
    Ok(vec![
        role(
            "root",
            repository.root().signed.version,
            repository.root().signed.expires,
        ),
        role(
            "targets",
            repository.targets().signed.version,
            repository.targets().signed.expires,
        ),
        role(
            "snapshot",
            repository.snapshot().signed.version,
            repository.snapshot().signed.expires,
        ),
        role(
            "timestamp",
            repository.timestamp().signed.version,
            repository.timestamp().signed.expires,
        ),
    ])
}

/// What `root rotate` wrote.
#[derive(Clone, Debug, Serialize)]
pub struct RotateReport {
    pub root_version: u64,
    pub trusted_root: PathBuf,
    pub repos: Vec<PathBuf>,
}

/// `root rotate`: a new root version with the keys of `new_keys`, signed by the old root's
/// threshold of old root keys and the new root's threshold of new root keys. The new root
/// goes to `<new_keys>/root.json` (older versions to `<new_keys>/root-history/`) and to
/// each repository, whose online roles are then re-signed with the new online keys.
pub async fn rotate_root(
    old_keys: &KeyDir,
    new_keys: &KeyDir,
    repos: &[PathBuf],
    exp: &Expirations,
    now: Timestamp,
) -> Result<RotateReport, RepoError> {
    let old_path = old_keys.dir.join("root.json");
    let old_bytes = std::fs::read(&old_path).map_err(io("read", &old_path))?;
    let old: Signed<Root> = serde_json::from_slice(&old_bytes)
        .map_err(|e| RepoError::Invalid(format!("{}: {e}", old_path.display())))?;
    let version = next(old.signed.version, "root")?;
    let new_root = build_root(new_keys, version, expires(now, exp.root, "root")?)?;
    let by_new = sign_root(&new_root, &new_root, &new_keys.root_keys()?).await?;
    let by_old = sign_root(&new_root, &old.signed, &old_keys.root_keys()?).await?;
    let (have_new, have_old) = (
        count_sigs_by(by_new.signed(), &new_root),
        count_sigs_by(by_old.signed(), &old.signed),
    );
    if (have_new as u64) < root_threshold(&new_root) {
        return Err(RepoError::RootThreshold {
            dir: new_keys.dir.clone(),
            have: have_new,
            need: root_threshold(&new_root),
        });
    }
    if (have_old as u64) < root_threshold(&old.signed) {
        return Err(RepoError::RootThreshold {
            dir: old_keys.dir.clone(),
            have: have_old,
            need: root_threshold(&old.signed),
        });
    }
    let old_sigs: Vec<_> = by_old
        .signed()
        .signatures
        .iter()
        .filter(|s| {
            !by_new
                .signed()
                .signatures
                .iter()
                .any(|n| n.keyid == s.keyid)
        })
        .cloned()
        .collect();
    let combined = by_new
        .add_old_signatures(old_sigs)
        .map_err(tuf("combine root signatures"))?;
    // keep the chain next to the new root, so later `repo init`s can publish it whole
    let history = new_keys.dir.join("root-history");
    for v in 1..version.get() {
        let src = old_keys
            .dir
            .join("root-history")
            .join(format!("{v}.root.json"));
        let bytes = if v == old.signed.version.get() {
            old_bytes.clone()
        } else {
            std::fs::read(&src).map_err(io("read", &src))?
        };
        place_immutable(
            &history.join(format!("{v}.root.json")),
            &bytes,
            Durability::Durable,
        )?;
    }
    write_atomic(&new_keys.dir.join("root.json"), combined.buffer())?;
    for repo in repos {
        // Re-sign the online roles with the new keys (and new versions); the new root is
        // written with them, before the timestamp that needs it.
        edit_with_root(
            RepoDir::durable(repo),
            new_keys,
            exp,
            now,
            Some(&new_keys.dir.join("root.json")),
            [0; 3],
            |_, _| Ok(()),
        )
        .await?;
    }
    Ok(RotateReport {
        root_version: version.get(),
        trusted_root: new_keys.dir.join("root.json"),
        repos: repos.to_vec(),
    })
}
