//! A region's repository served over HTTP, loaded through molt's transport the way a
//! host does, with S3's habit of answering 403 for a missing key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use assert_cmd::Command;
use jiff::Timestamp;
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
        .read_target_with("molt-agent/1.0.0/molt-agent-linux-amd64.tar.gz", |r| {
            std::io::copy(r, &mut std::io::sink())
        })
        .await
        .unwrap()
        .into_inner();
    assert!(n > 0);
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
    let region: Region = "us-west-2".parse().unwrap();
    let err = load_region(LoadOptions {
        source: RegionSource::new(Url::parse(&server.base_url()).unwrap()),
        region: Some(&region),
        trusted_root: &root,
        datastore: None,
        transport: MoltTransport::new(HttpSettings::default()).unwrap(),
    })
    .await
    .unwrap_err();
    assert!(matches!(err, TrustError::Transport { .. }), "{err:?}");
    assert!(!err.is_verification());
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
                .ends_with("molt-agent-linux-amd64.tar.gz")
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
        stderr.contains("molt-agent/1.0.0/molt-agent-linux-amd64.tar.gz")
            && stderr.contains("hash mismatch"),
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
