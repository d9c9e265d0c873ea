//! Signed regional repositories against the attacks of the TUF specification. Each
//! test is named after the attack it defeats, builds its repository at test time with
//! the release tool's library, and asserts the typed error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::PathBuf;

use aws_lc_rs::rand::SystemRandom;
use jiff::{SignedDuration, Timestamp};
use molt_fetch::tuf::{
    LoadOptions, LoadedRegion, ReadError, RegionSource, TrustError, load_region, manifest_issues,
};
use molt_publish::tuf::Expirations;
use molt_publish::tuf::keys::{self, KeyDir};
use molt_publish::tuf::repo::{self, AddOptions};
use molt_schema::manifest::Status;
use molt_schema::{Platform, Region, Version};
use tough::FilesystemTransport;
use tough::editor::signed::SignedRole;
use tough::key_source::KeySource;
use tough::schema::{
    Hashes, KeyHolder, Metafile, Root, Signed, Snapshot, Timestamp as TufTimestamp,
};
use url::Url;

struct Fixture {
    _dir: tempfile::TempDir,
    base: PathBuf,
    keys: KeyDir,
    repo: PathBuf,
    state: PathBuf,
}

fn region(s: &str) -> Region {
    s.parse().unwrap()
}

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

impl Fixture {
    /// A us-east-1 repository with root threshold 2 of 3 and release 1.0.0.
    async fn new() -> Fixture {
        Fixture::at(Timestamp::now()).await
    }

    async fn at(now: Timestamp) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_owned();
        let keys = keys::generate(&base.join("keys"), 3, 2).unwrap();
        let repo = base.join("repo");
        repo::init(
            &repo,
            &region("us-east-1"),
            &keys,
            &Expirations::default(),
            now,
        )
        .await
        .unwrap();
        let f = Fixture {
            _dir: dir,
            state: base.join("state-tuf"),
            base,
            keys,
            repo,
        };
        f.release("1.0.0", now).await;
        f
    }

    async fn release(&self, version: &str, now: Timestamp) {
        let bin = self.base.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("agent"), format!("agent {version}")).unwrap();
        std::fs::write(bin.join("updater"), format!("updater {version}")).unwrap();
        let dist = self.base.join("dist");
        molt_archive::package::package(
            &v(version),
            Platform::LinuxAmd64,
            &bin.join("agent"),
            &bin.join("updater"),
            &dist,
        )
        .unwrap();
        let opts = AddOptions {
            version: v(version),
            status: Status::Active,
            rollout: None,
        };
        repo::add(
            &self.repo,
            &dist,
            &opts,
            &self.keys,
            &Expirations::default(),
            now,
        )
        .await
        .unwrap();
    }

    fn trusted_root(&self) -> Vec<u8> {
        std::fs::read(self.keys.dir.join("root.json")).unwrap()
    }

    fn url(&self) -> Url {
        Url::from_directory_path(&self.repo).unwrap()
    }

    /// Loads as a host of `host_region` would, with the persistent datastore.
    async fn load_as(&self, host_region: &str) -> Result<LoadedRegion, TrustError> {
        let root = self.trusted_root();
        let r = region(host_region);
        load_region(LoadOptions {
            source: RegionSource::new(self.url()),
            region: Some(&r),
            trusted_root: &root,
            datastore: Some(&self.state),
            transport: FilesystemTransport,
            retry: molt_fetch::retry::RetryPolicy::ONCE,
            commit: true,
        })
        .await
    }

    async fn load(&self) -> Result<LoadedRegion, TrustError> {
        self.load_as("us-east-1").await
    }

    /// Loads without any remembered state.
    async fn load_fresh(&self) -> Result<LoadedRegion, TrustError> {
        let root = self.trusted_root();
        let r = region("us-east-1");
        load_region(LoadOptions {
            source: RegionSource::new(self.url()),
            region: Some(&r),
            trusted_root: &root,
            datastore: None,
            transport: FilesystemTransport,
            retry: molt_fetch::retry::RetryPolicy::ONCE,
            commit: true,
        })
        .await
    }

    fn metadata(&self, name: &str) -> PathBuf {
        self.repo.join("metadata").join(name)
    }

    fn snapshot_copy(&self) -> HashMap<String, Vec<u8>> {
        std::fs::read_dir(self.repo.join("metadata"))
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    fn restore(&self, copy: &HashMap<String, Vec<u8>>) {
        for (name, bytes) in copy {
            std::fs::write(self.metadata(name), bytes).unwrap();
        }
    }

    fn target_file(&self, name: &str, loaded: &LoadedRegion) -> PathBuf {
        let t = loaded.target(name).unwrap();
        self.repo
            .join("targets")
            .join(format!("{}.{}", t.sha256, name))
    }

    fn online_keys(&self) -> Vec<Box<dyn KeySource>> {
        self.keys.online_keys()
    }

    fn root(&self) -> Root {
        let signed: Signed<Root> = serde_json::from_slice(&self.trusted_root()).unwrap();
        signed.signed
    }
}

/// The metadata entry for a file's bytes at `version`.
fn metafile(bytes: &[u8], version: u64) -> Metafile {
    Metafile {
        length: Some(bytes.len() as u64),
        hashes: Some(Hashes {
            sha256: molt_schema::Sha256::digest(bytes)
                .as_bytes()
                .to_vec()
                .into(),
            _extra: HashMap::new(),
        }),
        version: NonZeroU64::new(version).unwrap(),
        _extra: HashMap::new(),
    }
}

/// Signs and writes a timestamp that lists `snapshot_file` at `snapshot_version`, as an
/// attacker holding the timestamp key would.
async fn forge_timestamp(f: &Fixture, version: u64, snapshot_file: &str, snapshot_version: u64) {
    let bytes = std::fs::read(f.metadata(snapshot_file)).unwrap();
    let mut ts = TufTimestamp::new(
        "1.0.0".into(),
        NonZeroU64::new(version).unwrap(),
        Timestamp::now() + SignedDuration::from_hours(24),
    );
    ts.meta
        .insert("snapshot.json".into(), metafile(&bytes, snapshot_version));
    let signed = SignedRole::new(
        ts,
        &KeyHolder::Root(f.root()),
        &f.online_keys(),
        &SystemRandom::new(),
    )
    .await
    .unwrap();
    std::fs::write(f.metadata("timestamp.json"), signed.buffer()).unwrap();
}

/// Signs and writes snapshot `version` listing targets metadata at `targets_version`.
async fn forge_snapshot(f: &Fixture, version: u64, targets_version: u64) -> String {
    let targets_file = format!("{targets_version}.targets.json");
    let bytes = std::fs::read(f.metadata(&targets_file)).unwrap();
    let mut snap = Snapshot::new(
        "1.0.0".into(),
        NonZeroU64::new(version).unwrap(),
        Timestamp::now() + SignedDuration::from_hours(24),
    );
    snap.meta
        .insert("targets.json".into(), metafile(&bytes, targets_version));
    let signed = SignedRole::new(
        snap,
        &KeyHolder::Root(f.root()),
        &f.online_keys(),
        &SystemRandom::new(),
    )
    .await
    .unwrap();
    let name = format!("{version}.snapshot.json");
    std::fs::write(f.metadata(&name), signed.buffer()).unwrap();
    name
}

async fn read_agent(
    loaded: &LoadedRegion,
    version: &str,
) -> Result<u64, ReadError<std::io::Error>> {
    let name = format!("molt-agent-{version}-linux-amd64.tar.gz");
    loaded
        .read_target_with(&name, |r| std::io::copy(r, &mut std::io::sink()))
        .await
        .map(|verified| verified.into_inner())
}

#[tokio::test]
async fn a_clean_repository_loads_and_every_target_verifies() {
    let f = Fixture::new().await;
    let loaded = f.load().await.unwrap();
    assert_eq!(loaded.manifest.region, Some(region("us-east-1")));
    assert!(loaded.consistency_issues().is_empty());
    let len = read_agent(&loaded, "1.0.0").await.unwrap();
    assert_eq!(
        len,
        loaded
            .target("molt-agent-1.0.0-linux-amd64.tar.gz")
            .unwrap()
            .length
    );
    // the datastore persisted, as a symlink to a directory holding tough's state
    let live = f.state.join("us-east-1");
    assert!(
        std::fs::symlink_metadata(&live)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(live.join("timestamp.json").exists());
}

#[tokio::test]
async fn arbitrary_package_modified_archive_is_refused() {
    let f = Fixture::new().await;
    let loaded = f.load().await.unwrap();
    let file = f.target_file("molt-agent-1.0.0-linux-amd64.tar.gz", &loaded);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let err = read_agent(&loaded, "1.0.0").await.unwrap_err();
    assert!(
        matches!(err, ReadError::Trust(TrustError::HashMismatch { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn arbitrary_package_consumer_never_gets_unverified_bytes() {
    // The consumer's result only comes back once the stream passed TUF's check: a
    // consumer that stops early still has the rest read and checked.
    let f = Fixture::new().await;
    let loaded = f.load().await.unwrap();
    let file = f.target_file("molt-agent-1.0.0-linux-amd64.tar.gz", &loaded);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let name = "molt-agent-1.0.0-linux-amd64.tar.gz";
    let err = loaded
        .read_target_with(name, |r| {
            let mut first = [0u8; 16];
            std::io::Read::read_exact(r, &mut first)?;
            Ok::<_, std::io::Error>(first)
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReadError::Trust(TrustError::HashMismatch { .. })),
        "{err:?}"
    );
}

#[tokio::test]
async fn rollback_attack_older_timestamp_is_refused_because_the_datastore_remembers() {
    let f = Fixture::new().await;
    let old = f.snapshot_copy();
    f.release("1.1.0", Timestamp::now()).await;
    // run 1 sees the newer metadata
    f.load().await.unwrap();
    // an attacker (or a stale mirror) serves the older, validly signed metadata
    f.restore(&old);
    let err = f.load().await.unwrap_err();
    assert!(
        matches!(&err, TrustError::Rollback { role, trusted: 3, offered: 2 } if role == "timestamp"),
        "{err:?}"
    );
    assert!(err.is_verification());
    // without the datastore the replay would have been accepted: the datastore is what
    // defeats it across runs
    f.load_fresh().await.unwrap();
}

/// Validly signed metadata that leaves out what the role below it needs: a timestamp that
/// lists no snapshot, a snapshot that lists no targets. A verification failure (exit 4) with
/// the publisher's fix; before, these fell into "the TUF client failed" (exit 1), which reads
/// as a problem of the host.
#[tokio::test]
async fn metadata_that_leaves_out_a_role_is_a_verification_failure() {
    async fn sign_and_write<T: tough::schema::Role + serde::Serialize>(
        f: &Fixture,
        role: T,
        name: &str,
    ) {
        let signed = SignedRole::new(
            role,
            &KeyHolder::Root(f.root()),
            &f.online_keys(),
            &SystemRandom::new(),
        )
        .await
        .unwrap();
        std::fs::write(f.metadata(name), signed.buffer()).unwrap();
    }
    let expires = Timestamp::now() + SignedDuration::from_hours(24);
    let f = Fixture::new().await;
    let good = f.snapshot_copy();

    let snapshot = std::fs::read(f.metadata("2.snapshot.json")).unwrap();
    let mut ts = TufTimestamp::new("1.0.0".into(), NonZeroU64::new(10).unwrap(), expires);
    ts.meta
        .insert("snapshot-elsewhere.json".into(), metafile(&snapshot, 2));
    sign_and_write(&f, ts, "timestamp.json").await;
    let err = f.load_fresh().await.unwrap_err();
    assert!(matches!(&err, TrustError::Inconsistent { .. }), "{err:?}");
    assert!(err.is_verification());
    assert!(err.to_string().contains("snapshot"), "{err}");
    assert!(err.hint().unwrap().contains("release-manifest verify"));

    f.restore(&good);
    let mut snap = Snapshot::new("1.0.0".into(), NonZeroU64::new(10).unwrap(), expires);
    let targets = std::fs::read(f.metadata("2.targets.json")).unwrap();
    snap.meta.insert("other.json".into(), metafile(&targets, 2));
    sign_and_write(&f, snap, "10.snapshot.json").await;
    let forged = std::fs::read(f.metadata("10.snapshot.json")).unwrap();
    let mut ts = TufTimestamp::new("1.0.0".into(), NonZeroU64::new(10).unwrap(), expires);
    ts.meta
        .insert("snapshot.json".into(), metafile(&forged, 10));
    sign_and_write(&f, ts, "timestamp.json").await;
    let err = f.load_fresh().await.unwrap_err();
    assert!(matches!(&err, TrustError::Inconsistent { .. }), "{err:?}");
    assert!(err.to_string().contains("targets"), "{err}");
}

#[tokio::test]
async fn rollback_attack_older_snapshot_is_refused() {
    let f = Fixture::new().await;
    f.release("1.1.0", Timestamp::now()).await; // snapshot 3
    f.load().await.unwrap();
    // a timestamp-key holder points a new timestamp at the old snapshot 2
    forge_timestamp(&f, 10, "2.snapshot.json", 2).await;
    let err = f.load().await.unwrap_err();
    assert!(
        matches!(&err, TrustError::Rollback { role, .. } if role == "snapshot"),
        "{err:?}"
    );
}

#[tokio::test]
async fn rollback_attack_older_targets_is_refused() {
    let f = Fixture::new().await;
    f.release("1.1.0", Timestamp::now()).await; // targets 3
    f.load().await.unwrap();
    // snapshot- and timestamp-key holders list the old targets 2 in a new snapshot
    let snap = forge_snapshot(&f, 10, 2).await;
    forge_timestamp(&f, 10, &snap, 10).await;
    let err = f.load().await.unwrap_err();
    assert!(matches!(&err, TrustError::Rollback { .. }), "{err:?}");
}

#[tokio::test]
async fn indefinite_freeze_expired_timestamp_is_refused() {
    // signed two days ago with a one-day timestamp: it has expired
    let f = Fixture::at(Timestamp::now() - SignedDuration::from_hours(48)).await;
    let err = f.load().await.unwrap_err();
    assert!(
        matches!(&err, TrustError::Expired { role } if role == "timestamp"),
        "{err:?}"
    );
    assert!(err.hint().unwrap().contains("refresh"));
    // refresh fixes it without touching targets
    let before = std::fs::read(f.metadata("2.targets.json")).unwrap();
    repo::refresh(&f.repo, &f.keys, &Expirations::default(), Timestamp::now())
        .await
        .unwrap();
    assert_eq!(std::fs::read(f.metadata("2.targets.json")).unwrap(), before);
    f.load().await.unwrap();
}

#[tokio::test]
async fn mix_and_match_snapshot_from_another_version_is_refused() {
    let f = Fixture::new().await;
    // the current timestamp names 2.snapshot.json; serve version 1's bytes under that name
    let other = std::fs::read(f.metadata("1.snapshot.json")).unwrap();
    std::fs::write(f.metadata("2.snapshot.json"), other).unwrap();
    let err = f.load().await.unwrap_err();
    assert!(
        matches!(&err, TrustError::HashMismatch { what, .. } if what.contains("2.snapshot.json")),
        "{err:?}"
    );
}

#[tokio::test]
async fn endless_data_oversized_target_is_cut_off() {
    let f = Fixture::new().await;
    let loaded = f.load().await.unwrap();
    let file = f.target_file("molt-agent-1.0.0-linux-amd64.tar.gz", &loaded);
    let mut bytes = std::fs::read(&file).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 1 << 20));
    std::fs::write(&file, &bytes).unwrap();
    let err = read_agent(&loaded, "1.0.0").await.unwrap_err();
    assert!(
        matches!(err, ReadError::Trust(TrustError::LengthExceeded { .. })),
        "{err:?}"
    );
    // the message names the package, and the role that set its length
    let said = err.to_string();
    assert!(
        said.starts_with("molt-agent-1.0.0-linux-amd64.tar.gz is larger than")
            && said.contains("the length targets.json lists for it"),
        "{said}"
    );
}

#[tokio::test]
async fn endless_data_oversized_metadata_is_cut_off() {
    let f = Fixture::new().await;
    let mut ts = std::fs::read(f.metadata("timestamp.json")).unwrap();
    ts.extend(std::iter::repeat_n(b' ', 2 << 20));
    std::fs::write(f.metadata("timestamp.json"), ts).unwrap();
    let err = f.load().await.unwrap_err();
    assert!(matches!(err, TrustError::LengthExceeded { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("timestamp.json is larger than")
            && err.to_string().contains("this host's limit for it"),
        "{err}"
    );
    // an oversized snapshot is named as the snapshot, limited by what timestamp.json lists
    // (tough's message named timestamp.json as the file that was too long)
    let f = Fixture::new().await;
    let mut snap = std::fs::read(f.metadata("2.snapshot.json")).unwrap();
    snap.extend(std::iter::repeat_n(b' ', 4096));
    std::fs::write(f.metadata("2.snapshot.json"), snap).unwrap();
    let err = f.load().await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("2.snapshot.json is larger than")
            && err
                .to_string()
                .contains("the length timestamp.json lists for it"),
        "{err}"
    );
}

#[tokio::test]
async fn wrong_region_manifest_is_refused_and_never_poisons_the_datastore() {
    let f = Fixture::new().await;
    let err = f.load_as("eu-west-1").await.unwrap_err();
    assert!(
        matches!(&err, TrustError::WrongRegion { expected, found } if expected == "eu-west-1" && found == "us-east-1"),
        "{err:?}"
    );
    // nothing was committed for eu-west-1, and no scratch copies are left behind
    assert!(!f.state.join("eu-west-1").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&f.state).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn a_failed_load_leaves_the_previous_datastore_in_place() {
    let f = Fixture::new().await;
    f.load().await.unwrap();
    let live = f.state.join("us-east-1");
    let before = std::fs::read(live.join("timestamp.json")).unwrap();
    std::fs::write(f.metadata("timestamp.json"), b"{ not json").unwrap();
    let err = f.load().await.unwrap_err();
    assert!(matches!(err, TrustError::Malformed { .. }), "{err:?}");
    assert_eq!(std::fs::read(live.join("timestamp.json")).unwrap(), before);
}

#[tokio::test]
async fn key_compromise_below_threshold_root_is_refused() {
    let f = Fixture::new().await;
    // An attacker holding one of the three root keys (threshold 2) writes root v2 that
    // hands the online roles to keys of their own.
    let evil = keys::generate(&f.base.join("evil"), 1, 1).unwrap();
    let old_root = f.root();
    let mut new_root = old_root.clone();
    new_root.version = NonZeroU64::new(2).unwrap();
    for role in ["targets", "snapshot", "timestamp"] {
        let key = keys::public_key(&evil.role_path(role)).unwrap();
        let id = key.key_id().unwrap();
        new_root.keys.insert(id.clone(), key);
        let role_type: tough::schema::RoleType = role.parse().unwrap();
        new_root.roles.get_mut(&role_type).unwrap().keyids = vec![id];
    }
    let one_key: Vec<Box<dyn KeySource>> = vec![Box::new(keys::PemKey {
        path: f.keys.root_key_paths().unwrap()[0].clone(),
    })];
    let signed = SignedRole::new(
        new_root,
        &KeyHolder::Root(old_root),
        &one_key,
        &SystemRandom::new(),
    )
    .await
    .unwrap();
    assert_eq!(signed.signed().signatures.len(), 1);
    std::fs::write(f.metadata("2.root.json"), signed.buffer()).unwrap();
    let err = f.load().await.unwrap_err();
    assert!(
        matches!(&err, TrustError::Signature { role, .. } if role == "root"),
        "{err:?}"
    );
}

#[tokio::test]
async fn root_rotation_host_holding_root_v1_follows_to_v2() {
    let f = Fixture::new().await;
    f.load().await.unwrap();
    let new_keys = keys::generate(&f.base.join("keys2"), 3, 2).unwrap();
    let report = repo::rotate_root(
        &f.keys,
        &new_keys,
        std::slice::from_ref(&f.repo),
        &Expirations::default(),
        Timestamp::now(),
    )
    .await
    .unwrap();
    assert_eq!(report.root_version, 2);
    // the host still holds root v1 (f.trusted_root() reads the old keys dir)
    let loaded = f.load().await.unwrap();
    assert_eq!(loaded.root_version(), 2);
    read_agent(&loaded, "1.0.0").await.unwrap();
    // and the next release, signed only with the new online keys, verifies too
    let f2 = Fixture {
        keys: new_keys,
        _dir: tempfile::tempdir().unwrap(),
        base: f.base.clone(),
        repo: f.repo.clone(),
        state: f.state.clone(),
    };
    f2.release("1.1.0", Timestamp::now()).await;
    let loaded = f.load().await.unwrap();
    read_agent(&loaded, "1.1.0").await.unwrap();
    // the old online keys no longer count: a timestamp they sign is refused
    forge_timestamp(&f, 99, "4.snapshot.json", 4).await;
    let err = f.load().await.unwrap_err();
    assert!(
        matches!(&err, TrustError::Signature { role, .. } if role == "timestamp"),
        "{err:?}"
    );
}

#[tokio::test]
async fn fast_forward_recovery_after_timestamp_key_rotation() {
    let f = Fixture::new().await;
    // an attacker with the timestamp key fast-forwards hosts to timestamp version 1000
    let copy = f.snapshot_copy();
    forge_timestamp(&f, 1000, "2.snapshot.json", 2).await;
    f.load().await.unwrap();
    f.restore(&copy);
    // the owner rotates the keys (timestamp 3 after the rotation, far below 1000)
    let new_keys = keys::generate(&f.base.join("keys2"), 3, 2).unwrap();
    repo::rotate_root(
        &f.keys,
        &new_keys,
        std::slice::from_ref(&f.repo),
        &Expirations::default(),
        Timestamp::now(),
    )
    .await
    .unwrap();
    // the host recovers: a new timestamp key resets what it must have seen
    let loaded = f.load().await.unwrap();
    assert_eq!(loaded.versions()[3], 3);
}

#[tokio::test]
async fn clock_stepped_back_is_named_with_an_ntp_hint() {
    let f = Fixture::new().await;
    f.load().await.unwrap();
    let future = Timestamp::now() + SignedDuration::from_hours(24 * 30);
    std::fs::write(
        f.state.join("us-east-1").join("latest_known_time.json"),
        serde_json::to_vec(&future).unwrap(),
    )
    .unwrap();
    let err = f.load().await.unwrap_err();
    assert!(
        matches!(err, TrustError::ClockSteppedBack { .. }),
        "{err:?}"
    );
    assert!(err.hint().unwrap().contains("NTP"));
}

#[tokio::test]
async fn manifest_checksum_that_disagrees_with_tuf_is_a_verification_failure() {
    let f = Fixture::new().await;
    let loaded = f.load().await.unwrap();
    assert!(loaded.consistency_issues().is_empty());
    let targets = loaded.targets();
    let mut tampered = loaded.manifest.clone();
    let agent = tampered
        .packages
        .iter_mut()
        .find(|p| p.name == "molt-agent")
        .unwrap();
    agent.files[0].available_versions[0].checksum = Some(molt_schema::Sha256::digest(b"other"));
    let issues = manifest_issues(&tampered, &targets);
    assert!(
        matches!(issues.as_slice(), [TrustError::ChecksumDisagrees { target, .. }] if target == "molt-agent-1.0.0-linux-amd64.tar.gz"),
        "{issues:?}"
    );
    assert!(issues[0].is_verification());
    // an entry with no signed target at all
    let mut extra = loaded.manifest.clone();
    let agent = extra
        .packages
        .iter_mut()
        .find(|p| p.name == "molt-agent")
        .unwrap();
    let mut ghost = agent.files[0].available_versions[0].clone();
    ghost.version = v("9.9.9");
    agent.files[0].available_versions.push(ghost);
    let issues = manifest_issues(&extra, &targets);
    assert!(
        matches!(issues.as_slice(), [TrustError::ChecksumDisagrees { target, .. }] if target.contains("9.9.9")),
        "{issues:?}"
    );
}
