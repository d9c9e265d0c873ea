//! A private repository (`source = "s3://bucket/prefix/"`): the real updater reads it
//! from the local S3 server with SigV4 and the AWS default credentials chain, and fails
//! clearly, with nothing installed, when it has no credentials or the wrong ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use molt_schema::manifest::Status;
use molt_tests::fixture::{TestHost, TestRepo};
use molt_tests::s3::S3Server;

/// Copies the repository's files into `bucket` under `prefix` on the server.
fn mirror(repo: &Path, dest: &Path) {
    for entry in std::fs::read_dir(repo).unwrap() {
        let entry = entry.unwrap();
        let to = dest.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
            mirror(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

fn private_host(repo: &TestRepo, s3: &S3Server) -> TestHost {
    let bucket = s3.create_bucket("private-molt-us-east-1");
    let prefix = bucket.join("molt");
    std::fs::create_dir_all(&prefix).unwrap();
    mirror(&repo.path(), &prefix);
    let mut host = TestHost::new(repo);
    host.source = "s3://private-molt-us-east-1/molt/".into();
    host.env
        .push(("AWS_EC2_METADATA_DISABLED".into(), "true".into()));
    host.env.push((
        "AWS_SHARED_CREDENTIALS_FILE".into(),
        host.root.path().join("none").display().to_string(),
    ));
    host.env.push((
        "AWS_CONFIG_FILE".into(),
        host.root.path().join("none").display().to_string(),
    ));
    host.env
        .push(("AWS_ENDPOINT_URL_S3".into(), s3.endpoint().to_owned()));
    host
}

#[test]
fn updater_installs_from_a_private_bucket_with_sigv4() {
    let s3 = S3Server::start();
    let repo = TestRepo::new("us-east-1");
    repo.publish("1.0.0", Status::Active);
    let mut host = private_host(&repo, &s3);
    for (k, v) in s3.env_for_credentials() {
        host.env.push((k.into(), v));
    }
    let out = host.update("1.0.0", &[]);
    assert!(
        out.status.success(),
        "{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s3.log()
    );
    assert_eq!(host.assert_healthy().to_string(), "1.0.0");
    // the same source as people type it: no trailing slash, a doubled one, a bucket root
    // with the repository under it (each a fresh update: 2.0.0, then back to 1.0.0)
    repo.publish("2.0.0", Status::Active);
    mirror(
        &repo.path(),
        &s3.root().join("private-molt-us-east-1").join("molt"),
    );
    for (source, target) in [
        ("s3://private-molt-us-east-1/molt", "2.0.0"),
        ("s3://private-molt-us-east-1/molt//", "1.0.0"),
    ] {
        host.source = source.into();
        let out = host.update(target, &["--allow-downgrade"]);
        assert!(
            out.status.success(),
            "{source}: {}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            s3.log()
        );
        assert_eq!(host.assert_healthy().to_string(), target, "{source}");
    }
}

#[test]
fn private_bucket_without_credentials_fails_clearly_and_installs_nothing() {
    let s3 = S3Server::start();
    let repo = TestRepo::new("us-east-1");
    repo.publish("1.0.0", Status::Active);
    let host = private_host(&repo, &s3);
    let out = host
        .update_cmd("latest", &[])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no AWS credentials"), "{err}");
    assert!(host.current().is_none());
    assert!(!host.layout().updater_bin().exists());
}

#[test]
fn private_bucket_with_a_wrong_secret_is_refused_and_installs_nothing() {
    let s3 = S3Server::start();
    let repo = TestRepo::new("us-east-1");
    repo.publish("1.0.0", Status::Active);
    let mut host = private_host(&repo, &s3);
    host.env
        .push(("AWS_ACCESS_KEY_ID".into(), s3.access_key().into()));
    host.env
        .push(("AWS_SECRET_ACCESS_KEY".into(), "not-the-secret".into()));
    let out = host.update("latest", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(host.current().is_none());
    // The message must say the bucket refused the credentials, not "not found".
    assert!(
        err.contains("SignatureDoesNotMatch") && err.contains("AWS credentials are wrong"),
        "{err}"
    );
}
