//! A region's repository served over HTTP, loaded through molt's transport the way a
//! host does, with S3's habit of answering 403 for a missing key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use assert_cmd::Command;
use jiff::Timestamp;
use molt_fetch::retry::RetryPolicy;
use molt_fetch::transport::{HttpSettings, MoltTransport, Url};
use molt_fetch::tuf::{LoadOptions, RegionSource, TrustError, load_region};
use molt_publish::tuf::Expirations;
use molt_publish::tuf::keys;
use molt_publish::tuf::repo::{self, AddOptions};
use molt_schema::manifest::Status;
use molt_schema::{Platform, Region};
use molt_tests::http_server::{Fault, FileServer, Times};

async fn build_repo(dir: &Path) -> Vec<u8> {
    let keys = keys::generate(&dir.join("keys"), 1, 1).unwrap();
    let region: Region = "us-west-2".parse().unwrap();
    repo::init(
        &dir.join("repo"),
        &region,
        &keys,
        &Expirations::default(),
        Timestamp::now(),
    )
    .await
    .unwrap();
    std::fs::write(dir.join("agent"), "agent").unwrap();
    std::fs::write(dir.join("updater"), "updater").unwrap();
    let v = "1.0.0".parse().unwrap();
    molt_archive::package::package(
        &v,
        Platform::LinuxAmd64,
        &dir.join("agent"),
        &dir.join("updater"),
        &dir.join("dist"),
    )
    .unwrap();
    let opts = AddOptions {
        version: v,
        status: Status::Active,
        rollout: None,
    };
    repo::add(
        &dir.join("repo"),
        &dir.join("dist"),
        &opts,
        &keys,
        &Expirations::default(),
        Timestamp::now(),
    )
    .await
    .unwrap();
    std::fs::read(dir.join("keys/root.json")).unwrap()
}

#[tokio::test]
async fn loads_over_http_with_403_for_missing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let root = build_repo(dir.path()).await;
    let server = FileServer::start(dir.path().join("repo")).unwrap();
    // Like S3 to an anonymous reader: a missing key is 403. TUF probes 2.root.json, which
    // does not exist; that must read as "no newer root", not as a failure.
    server
        .faults()
        .everywhere(Fault::ForbiddenForMissing, Times::Always);
    let region: Region = "us-west-2".parse().unwrap();
    let state = dir.path().join("state");
    let loaded = load_region(LoadOptions {
        source: RegionSource::new(Url::parse(&server.base_url()).unwrap()),
        region: Some(&region),
        trusted_root: &root,
        datastore: Some(&state),
        transport: MoltTransport::new(HttpSettings::default()).unwrap(),
        retry: RetryPolicy::ONCE,
        commit: true,
    })
    .await
    .unwrap();
    assert_eq!(loaded.root_version(), 1);
    assert!(
        server
            .request_log()
            .iter()
            .any(|r| r.path.ends_with("2.root.json") && r.status == 403)
    );
    let n = loaded
        .read_target_with("molt-agent-1.0.0-linux-amd64.tar.gz", |r| {
            std::io::copy(r, &mut std::io::sink())
        })
        .await
        .unwrap()
        .into_inner();
    assert!(n > 0);
}

/// Three attempts, a few milliseconds apart.
const FAST: RetryPolicy = RetryPolicy {
    attempts: 3,
    initial: std::time::Duration::from_millis(5),
    factor: 2,
    max: std::time::Duration::from_millis(20),
};

async fn load_from(
    server: &FileServer,
    root: &[u8],
    state: Option<&Path>,
) -> Result<molt_fetch::tuf::LoadedRegion, TrustError> {
    let region: Region = "us-west-2".parse().unwrap();
    load_region(LoadOptions {
        source: RegionSource::new(Url::parse(&server.base_url()).unwrap()),
        region: Some(&region),
        trusted_root: root,
        datastore: state,
        transport: MoltTransport::new(HttpSettings::default()).unwrap(),
        retry: FAST,
        commit: true,
    })
    .await
}

#[tokio::test]
async fn a_server_error_is_not_a_verification_failure() {
    let dir = tempfile::tempdir().unwrap();
    let root = build_repo(dir.path()).await;
    let server = FileServer::start(dir.path().join("repo")).unwrap();
    server.faults().on_path(
        "/metadata/timestamp.json",
        Fault::Status(503),
        Times::Always,
    );
    let err = load_from(&server, &root, None).await.unwrap_err();
    assert!(matches!(err, TrustError::Transport { .. }), "{err:?}");
    assert!(!err.is_verification());
    assert!(err.is_transient());
    // every attempt the policy allows was made, and no more
    assert_eq!(server.requests("/metadata/timestamp.json"), 3);
}

/// One failed request on any metadata file, or on the manifest, costs a retry, not the
/// run: each fault a load balancer or S3 shows now and then, on each file a load reads.
#[tokio::test]
async fn one_failed_metadata_request_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let root = build_repo(dir.path()).await;
    let server = FileServer::start(dir.path().join("repo")).unwrap();
    // the files a load reads, learned from a clean one: the metadata and the manifest
    let state = dir.path().join("state");
    load_from(&server, &root, Some(&state)).await.unwrap();
    let mut read: Vec<String> = server
        .request_log()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.path.clone())
        .collect();
    read.dedup();
    assert!(
        read.iter().any(|p| p.ends_with("timestamp.json")),
        "{read:?}"
    );
    assert!(
        read.iter().any(|p| p.ends_with(".manifest.json")),
        "{read:?}"
    );
    assert!(read.len() >= 4, "{read:?}");
    for fault in [
        Fault::Status(503),
        Fault::Status(500),
        Fault::Status(429),
        Fault::ResetAfter(0),
        Fault::ResetAfter(40),
        Fault::Truncate(40),
    ] {
        for path in &read {
            server.faults().clear();
            server.faults().on_path(path, fault.clone(), Times::Once);
            let before = server.requests(path);
            let loaded = load_from(&server, &root, Some(&state)).await;
            assert!(loaded.is_ok(), "{fault:?} on {path}: {:?}", loaded.err());
            assert_eq!(
                server.faults().pending(),
                0,
                "{fault:?} on {path} was served"
            );
            assert!(server.requests(path) >= before + 2, "{fault:?} on {path}");
        }
    }
}

/// What will fail the same way again is not retried: a missing file, refused access and a
/// verification failure each cost one attempt.
#[tokio::test]
async fn what_fails_the_same_way_again_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let root = build_repo(dir.path()).await;
    let server = FileServer::start(dir.path().join("repo")).unwrap();
    for (status, path) in [
        (404, "/metadata/timestamp.json"),
        (403, "/metadata/timestamp.json"),
        (400, "/metadata/2.snapshot.json"),
    ] {
        server.faults().clear();
        server
            .faults()
            .on_path(path, Fault::Status(status), Times::Always);
        let before = server.requests(path);
        let err = load_from(&server, &root, None).await.unwrap_err();
        assert!(!err.is_transient(), "{status}: {err:?}");
        assert_eq!(server.requests(path), before + 1, "{status} on {path}");
    }
    server.faults().clear();
    // a tampered snapshot: a verification failure, tried once
    let snapshot = dir.path().join("repo/metadata/2.snapshot.json");
    let mut bytes = std::fs::read(&snapshot).unwrap();
    let at = bytes.iter().rposition(|b| b.is_ascii_digit()).unwrap();
    bytes[at] = if bytes[at] == b'9' {
        b'8'
    } else {
        bytes[at] + 1
    };
    std::fs::write(&snapshot, bytes).unwrap();
    let before = server.requests("/metadata/2.snapshot.json");
    let err = load_from(&server, &root, None).await.unwrap_err();
    assert!(err.is_verification(), "{err:?}");
    assert_eq!(server.requests("/metadata/2.snapshot.json"), before + 1);
}

#[test]
fn verify_cli_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(build_repo(dir.path()));
    let server = FileServer::start(dir.path().join("repo")).unwrap();
    let out = Command::cargo_bin("release-manifest")
        .unwrap()
        .args([
            "verify",
            &server.base_url(),
            "--region",
            "us-west-2",
            "--trusted-root",
        ])
        .arg(dir.path().join("keys/root.json"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified"));
    // a tampered target served over HTTP: exit 4, naming the target
    let target = walk(&dir.path().join("repo/targets"))
        .into_iter()
        .find(|p| {
            p.to_string_lossy()
                .ends_with("molt-agent-1.0.0-linux-amd64.tar.gz")
        })
        .unwrap();
    let mut bytes = std::fs::read(&target).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&target, bytes).unwrap();
    let out = Command::cargo_bin("release-manifest")
        .unwrap()
        .args(["verify", &server.base_url(), "--trusted-root"])
        .arg(dir.path().join("keys/root.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("molt-agent-1.0.0-linux-amd64.tar.gz") && stderr.contains("hash mismatch"),
        "{stderr}"
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
