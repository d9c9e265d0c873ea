//! molt's S3 code on the host side (`molt_fetch::s3`: the SigV4 signer as the transport's
//! [`RequestSigner`], and `put_object` for reports) against a real S3-compatible server
//! (`molt-s3`: s3s + s3s-fs) on 127.0.0.1, and the server's access policy. Reads go through
//! `MoltTransport`, as the updater's do; listings through aws-sdk-s3 (`S3Store`), as the
//! release tool's do.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use molt_fetch::retry::transfer_error;
use molt_fetch::s3::{S3Endpoint, S3Error, S3Location, S3Signer, put_object};
use molt_fetch::transport::{
    HttpSettings, IntoVec, MoltTransport, ProxySettings, TransferError, Transport, TransportError,
    TransportErrorKind, Url,
};
use molt_publish::store::{ObjectStore, S3Store, S3StoreConfig};
use molt_schema::Region;
use molt_tests::s3::{REGION, S3Server};
use reqwest::StatusCode;

const MIB: u64 = 1 << 20;

/// A client that goes straight to 127.0.0.1, whatever proxy the environment names.
fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn region() -> Region {
    REGION.parse().unwrap()
}

fn endpoint(server: &S3Server) -> S3Endpoint {
    S3Endpoint::path_style(&server.endpoint(), "the test server").unwrap()
}

/// An anonymous transport, as for a public bucket.
fn anonymous() -> MoltTransport {
    MoltTransport::new(HttpSettings {
        proxy: ProxySettings::none(),
        ..HttpSettings::default()
    })
    .unwrap()
}

/// A transport that signs with `signer`, as for `s3://` sources and report uploads.
fn signing(signer: S3Signer) -> MoltTransport {
    anonymous().with_signer(signer)
}

fn signed(server: &S3Server) -> MoltTransport {
    signing(S3Signer::new(server.credentials_provider(), region()))
}

fn signer_with(access_key: &str, secret_key: &str) -> S3Signer {
    let creds = Credentials::new(access_key, secret_key, None, None, "test");
    S3Signer::new(SharedCredentialsProvider::new(creds), region())
}

async fn read(transport: &MoltTransport, url: Url) -> Result<Vec<u8>, TransportError> {
    transport.fetch(url).await?.into_vec().await
}

/// The release tool's view of a bucket: aws-sdk-s3, with the server's credentials.
async fn sdk_store(server: &S3Server, bucket: &str, prefix: &str) -> S3Store {
    let mut config = S3StoreConfig::new(bucket, region());
    config.endpoint_url = Some(server.endpoint());
    config.credentials = Some(server.credentials_provider());
    config.prefix = prefix.to_owned();
    S3Store::new(config).await.unwrap()
}

#[tokio::test]
async fn signed_put_then_anonymous_get_returns_the_same_bytes() {
    let server = S3Server::start();
    server.create_bucket("molt-public");
    let e = endpoint(&server);
    let body: Vec<u8> = (0..3 * MIB as usize + 17)
        .map(|i| (i % 251) as u8)
        .collect();
    let url = e
        .object_url("molt-public", "repo/targets/a b+c&d.tar.gz")
        .unwrap();

    put_object(
        &signed(&server),
        url.clone(),
        body.clone(),
        "application/gzip",
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(server.object_path("molt-public", "repo/targets/a b+c&d.tar.gz")).unwrap(),
        body
    );

    // Anonymous, through the updater's transport and through a plain HTTP GET.
    let got = read(&anonymous(), url.clone()).await.unwrap();
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the bytes read back differ");
    let plain = client().get(url.clone()).send().await.unwrap();
    assert_eq!(plain.status(), StatusCode::OK);
    assert_eq!(plain.bytes().await.unwrap(), body);
    // And signed: a signature on a public object is fine.
    assert!(read(&signed(&server), url).await.unwrap() == body);
}

#[tokio::test]
async fn anonymous_writes_are_refused() {
    let server = S3Server::start();
    server.create_bucket("molt-public");
    let url = endpoint(&server)
        .object_url("molt-public", "x.json")
        .unwrap();
    let response = client()
        .put(url.clone())
        .body(b"{}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let text = response.text().await.unwrap();
    assert!(text.contains("<Code>AccessDenied</Code>"), "{text}");
    assert!(!server.object_path("molt-public", "x.json").exists());
    // Through molt's code without a signer: the hint says the bucket needs credentials.
    let e = put_object(&anonymous(), url, b"{}".to_vec(), "application/json")
        .await
        .unwrap_err();
    match &e {
        S3Error::AccessDenied { code, hint, .. } => {
            assert_eq!(code, "AccessDenied");
            assert!(hint.contains("credentials"), "{hint}");
        }
        other => panic!("expected AccessDenied, got {other:?}"),
    }
}

#[tokio::test]
async fn private_buckets_refuse_anonymous_reads_but_serve_signed_ones() {
    let server = S3Server::start();
    server.create_bucket("private-repo");
    let e = endpoint(&server);
    let url = e
        .object_url("private-repo", "metadata/timestamp.json")
        .unwrap();
    put_object(
        &signed(&server),
        url.clone(),
        b"{\"v\":1}".to_vec(),
        "application/json",
    )
    .await
    .unwrap();

    // Anonymous: S3's 403, which TUF must read as "not there" (it probes for newer roots).
    let refused = read(&anonymous(), url.clone()).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        TransportErrorKind::FileNotFound,
        "{refused:?}"
    );
    let listing = client()
        .get(format!("{}/private-repo?list-type=2", server.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), StatusCode::FORBIDDEN);

    let got = read(&signed(&server), url).await.unwrap();
    assert_eq!(&got[..], b"{\"v\":1}");
    let keys = sdk_store(&server, "private-repo", "")
        .await
        .list("metadata/")
        .await
        .unwrap();
    assert_eq!(keys, vec!["metadata/timestamp.json"]);
}

#[tokio::test]
async fn a_wrong_secret_or_an_unknown_key_is_refused() {
    let server = S3Server::start();
    server.create_bucket("private-repo");
    let url = endpoint(&server)
        .object_url("private-repo", "x.json")
        .unwrap();
    put_object(
        &signed(&server),
        url.clone(),
        b"{}".to_vec(),
        "application/json",
    )
    .await
    .unwrap();

    let wrong = signing(signer_with(server.access_key(), "not-the-secret"));
    let e = put_object(&wrong, url.clone(), b"[]".to_vec(), "application/json")
        .await
        .unwrap_err();
    match &e {
        S3Error::AccessDenied { code, hint, .. } => {
            assert_eq!(code, "SignatureDoesNotMatch");
            assert!(hint.contains("secret key"), "{hint}");
        }
        other => panic!("expected AccessDenied, got {other:?}"),
    }
    assert!(!e.to_string().contains("not-the-secret"), "{e}");
    // A read with the wrong secret is not "not found": the transport asks the signer what
    // the refusal means, and it names the credentials.
    let e = read(&wrong, url.clone()).await.unwrap_err();
    assert_eq!(e.kind(), TransportErrorKind::Other, "{e:?}");
    match transfer_error(&e) {
        Some(TransferError::CredentialsRefused { code }) => {
            assert_eq!(code, "SignatureDoesNotMatch");
        }
        other => panic!("expected CredentialsRefused, got {other:?}"),
    }

    let unknown = signing(signer_with("AKIAUNKNOWNKEY000000", server.secret_key()));
    let e = put_object(&unknown, url.clone(), b"[]".to_vec(), "application/json")
        .await
        .unwrap_err();
    assert!(matches!(e, S3Error::AccessDenied { .. }), "{e:?}");
    let e = read(&unknown, url).await.unwrap_err();
    assert!(
        matches!(
            transfer_error(&e),
            Some(TransferError::CredentialsRefused { .. })
        ),
        "{e:?}"
    );
    assert_eq!(
        std::fs::read(server.object_path("private-repo", "x.json")).unwrap(),
        b"{}"
    );
}

#[tokio::test]
async fn conditional_and_ranged_reads() {
    let server = S3Server::start();
    server.create_bucket("molt-public");
    let url = endpoint(&server)
        .object_url("molt-public", "file.bin")
        .unwrap();
    let client = client();
    put_object(
        &signed(&server),
        url.clone(),
        b"0123456789".to_vec(),
        "application/octet-stream",
    )
    .await
    .unwrap();
    let first = client.get(url.clone()).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();

    let again = client
        .get(url.clone())
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
    assert!(again.bytes().await.unwrap().is_empty());

    let other = client
        .get(url.clone())
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);

    let head = client
        .head(url.clone())
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::NOT_MODIFIED);

    let wrong_match = client
        .get(url.clone())
        .header("if-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_match.status(), StatusCode::PRECONDITION_FAILED);

    let ranged = client
        .get(url.clone())
        .header("range", "bytes=3-")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(ranged.headers()["content-range"], "bytes 3-9/10");
    assert_eq!(ranged.bytes().await.unwrap(), &b"3456789"[..]);
}

#[tokio::test]
async fn missing_objects_and_buckets_are_told_apart() {
    let server = S3Server::start();
    server.create_bucket("molt-public");
    let e = endpoint(&server);
    let signed = signed(&server);

    let missing = e.object_url("molt-public", "nothing-here.json").unwrap();
    let err = read(&signed, missing).await.unwrap_err();
    assert_eq!(err.kind(), TransportErrorKind::FileNotFound, "{err:?}");

    let no_bucket = e.object_url("molt-nowhere", "x.json").unwrap();
    let err = put_object(&signed, no_bucket, b"{}".to_vec(), "application/json")
        .await
        .unwrap_err();
    assert!(matches!(err, S3Error::NoSuchBucket { .. }), "{err:?}");
    assert!(err.to_string().contains("molt-nowhere"), "{err}");
    assert!(!server.root().join("molt-nowhere").exists());

    // Nothing listening: the request's failure, not an S3 answer.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let url: Url = format!("http://127.0.0.1:{port}/molt-public/x.json")
        .parse()
        .unwrap();
    let err = put_object(&signed, url, b"{}".to_vec(), "application/json")
        .await
        .unwrap_err();
    assert!(matches!(err, S3Error::Request { .. }), "{err:?}");
}

/// Report objects the agents write (keys that need encoding, from many hosts) are what the
/// release tool lists, through aws-sdk-s3 and across the server's pages.
#[tokio::test]
async fn agent_written_keys_are_listed_by_the_sdk_across_pages() {
    let server = S3Server::start();
    server.create_bucket("molt-reports");
    let e = endpoint(&server);
    let signed = signed(&server);

    let mut expected = Vec::new();
    for name in ["a b.json", "c+d.json", "e&f.json", "ü.json"] {
        let key = format!("reports/us-east-1/{name}");
        let url = e.object_url("molt-reports", &key).unwrap();
        put_object(&signed, url, b"{}".to_vec(), "application/json")
            .await
            .unwrap();
        expected.push(key);
    }
    // More than one page (s3s-fs answers 1000 keys a page), written straight to disk.
    let many = server
        .create_bucket("molt-reports")
        .join("reports/us-west-2");
    std::fs::create_dir_all(&many).unwrap();
    for i in 0..1100 {
        std::fs::write(many.join(format!("{i:05}.json")), b"{}").unwrap();
        expected.push(format!("reports/us-west-2/{i:05}.json"));
    }
    // Outside the prefix.
    for key in ["other/x.json", "reportsx.json"] {
        let url = e.object_url("molt-reports", key).unwrap();
        put_object(&signed, url, b"{}".to_vec(), "application/json")
            .await
            .unwrap();
    }
    expected.sort();

    let store = sdk_store(&server, "molt-reports", "").await;
    let mut keys = store.list("reports/").await.unwrap();
    keys.sort();
    assert_eq!(keys, expected);
    assert!(store.list("nothing/").await.unwrap().is_empty());
}

#[tokio::test]
async fn the_environment_names_the_endpoint() {
    let server = S3Server::start();
    server.create_bucket("molt-public");
    let env = server.env_for_credentials();
    let lookup = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    let location: S3Location = "s3://molt-public/repo/".parse().unwrap();
    let base = location.base_url(&region(), &lookup).unwrap();
    assert_eq!(
        base.as_str(),
        format!("{}/molt-public/repo/", server.endpoint())
    );
    let url = location
        .object_url(&location.key("VERSION"), &region(), &lookup)
        .unwrap();
    put_object(&signed(&server), url, b"1.0.0\n".to_vec(), "text/plain")
        .await
        .unwrap();
    let joined = base.join("VERSION").unwrap();
    let got = read(&anonymous(), joined).await.unwrap();
    assert_eq!(&got[..], b"1.0.0\n");
}

/// The fault-injecting proxy in front of the real server: the same bytes, its faults, its
/// `Range` handling, and the server's own 404 and 403 passed on.
#[tokio::test]
async fn the_fault_proxy_serves_the_servers_objects_with_faults() {
    use molt_tests::http_server::{Fault, FileServer, Times};
    let server = S3Server::start();
    server.create_bucket("molt-public");
    server.create_bucket("private-molt");
    let e = endpoint(&server);
    let client = client();
    let body: Vec<u8> = (0..MIB as usize).map(|i| (i % 253) as u8).collect();
    for bucket in ["molt-public", "private-molt"] {
        let url = e.object_url(bucket, "repo/targets/a.tar.gz").unwrap();
        put_object(&signed(&server), url, body.clone(), "application/gzip")
            .await
            .unwrap();
    }
    let upstream = server.endpoint();
    let upstream = upstream.trim_start_matches("http://").trim_end_matches('/');
    let proxy = FileServer::proxy(upstream.parse().unwrap()).unwrap();
    let object = "/molt-public/repo/targets/a.tar.gz";
    let get = |path: &str| client.get(proxy.url(path)).send();

    let r = get(object).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
    let r = client
        .get(proxy.url(object))
        .header("Range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[1000..2000]);
    assert_eq!(
        get("/molt-public/repo/missing").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get("/private-molt/repo/targets/a.tar.gz")
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN,
        "the proxy forwards no credentials, and passes the server's refusal on"
    );

    proxy.faults().on_prefix(
        "/molt-public/repo/targets/",
        Fault::Status(503),
        Times::Once,
    );
    proxy.faults().on_prefix(
        "/molt-public/repo/targets/",
        Fault::Truncate(4096),
        Times::Once,
    );
    assert_eq!(
        get(object).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let truncated = get(object).await.unwrap().bytes().await;
    assert!(truncated.is_err(), "a truncated body is an error");
    assert_eq!(
        get(object).await.unwrap().bytes().await.unwrap().len(),
        body.len()
    );
    assert_eq!(proxy.faults().pending(), 0);
    // prefix rules leave other paths alone
    proxy.faults().on_prefix(
        "/molt-public/repo/targets/",
        Fault::Status(500),
        Times::Always,
    );
    assert_eq!(
        get(object).await.unwrap().status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get("/molt-public/repo/missing").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
}
