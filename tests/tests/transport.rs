//! molt's transport against a real (fault-injecting) HTTP server and real files: statuses,
//! Range resume, resets, truncation, stalls, proxies, `file://`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error as _;
use std::time::{Duration, Instant};

use futures::StreamExt;
use molt_fetch::transport::{
    HttpSettings, MoltTransport, ProxySettings, RangeResponse, TransferError, Transport,
    TransportError, TransportErrorKind, TransportStream, Url,
};
use molt_tests::http_server::{Fault, FileServer, Times};

const FILE: &str = "/pkg/molt-agent-linux-amd64.tar.gz";
const LEN: usize = 512 * 1024;

/// Deterministic, non-repeating-looking bytes.
fn payload(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A served directory holding [`FILE`] (`LEN` bytes of [`payload`]).
fn serve() -> (tempfile::TempDir, FileServer) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE.trim_start_matches('/'));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, payload(LEN)).unwrap();
    let server = FileServer::start(dir.path()).unwrap();
    (dir, server)
}

/// Defaults, but no proxy (the test runner's environment must not matter).
fn settings() -> HttpSettings {
    HttpSettings {
        proxy: ProxySettings::none(),
        ..HttpSettings::default()
    }
}

fn transport() -> MoltTransport {
    MoltTransport::new(settings()).unwrap()
}

fn url(server: &FileServer, path: &str) -> Url {
    Url::parse(&server.url(path)).unwrap()
}

/// Reads the stream to its end: the bytes received and the error that ended it, if any.
async fn drain(mut stream: TransportStream) -> (Vec<u8>, Option<TransportError>) {
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(error) => return (bytes, Some(error)),
        }
    }
    (bytes, None)
}

async fn fetch_all(transport: &MoltTransport, url: Url) -> Vec<u8> {
    let (bytes, error) = drain(transport.fetch(url).await.unwrap()).await;
    assert!(error.is_none(), "{error:?}");
    bytes
}

/// molt's own cause inside a transport error, if that is what it is.
fn cause(error: &TransportError) -> Option<&TransferError> {
    error.source()?.downcast_ref()
}

#[tokio::test]
async fn ok_gives_the_whole_body() {
    let (_dir, server) = serve();
    let body = fetch_all(&transport(), url(&server, FILE)).await;
    assert_eq!(body, payload(LEN));
    assert_eq!(server.requests(FILE), 1);
}

#[tokio::test]
async fn not_found_is_file_not_found() {
    let (_dir, server) = serve();
    let error = transport()
        .fetch(url(&server, "/metadata/2.root.json"))
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind(), TransportErrorKind::FileNotFound);
    assert_eq!(cause(&error), Some(&TransferError::Status { status: 404 }));
    assert_eq!(error.url(), server.url("/metadata/2.root.json"));
}

#[tokio::test]
async fn forbidden_is_file_not_found() {
    let (_dir, server) = serve();
    server
        .faults()
        .everywhere(Fault::ForbiddenForMissing, Times::Always);
    let error = transport()
        .fetch(url(&server, "/metadata/2.root.json"))
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind(), TransportErrorKind::FileNotFound);
    assert_eq!(cause(&error), Some(&TransferError::Status { status: 403 }));
}

#[tokio::test]
async fn server_errors_are_other_and_carry_the_status() {
    let (_dir, server) = serve();
    server
        .faults()
        .on_path(FILE, Fault::Status(500), Times::Once);
    server
        .faults()
        .on_path(FILE, Fault::Status(503), Times::Once);
    let transport = transport();
    for status in [500, 503] {
        let error = transport.fetch(url(&server, FILE)).await.err().unwrap();
        assert_eq!(error.kind(), TransportErrorKind::Other);
        assert_eq!(cause(&error), Some(&TransferError::Status { status }));
        let message = error.to_string();
        assert!(message.contains(&status.to_string()), "{message}");
        assert!(message.contains(&server.url(FILE)), "{message}");
    }
    // The faults are used up: the next request is served.
    assert_eq!(
        fetch_all(&transport, url(&server, FILE)).await,
        payload(LEN)
    );
    assert_eq!(server.requests(FILE), 3);
}

#[tokio::test]
async fn query_strings_stay_out_of_errors() {
    let (_dir, server) = serve();
    let signed = format!(
        "{}?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=s3cret",
        server.url("/missing")
    );
    let error = transport()
        .fetch(Url::parse(&signed).unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind(), TransportErrorKind::FileNotFound);
    let shown = format!("{error} {error:?}");
    assert!(
        !shown.contains("s3cret") && !shown.contains("AKIA"),
        "{shown}"
    );
}

#[tokio::test]
async fn range_resumes_from_the_offset() {
    let (_dir, server) = serve();
    let offset = 200_000;
    let response = transport()
        .fetch_range(url(&server, FILE), offset)
        .await
        .unwrap();
    let RangeResponse::Partial(stream) = response else {
        panic!("expected 206, got {response:?}");
    };
    let (bytes, error) = drain(stream).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(bytes, payload(LEN)[200_000..]);
    let log = server.request_log();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].range.as_deref(), Some("bytes=200000-"));
    assert_eq!(log[0].status, 206);
}

#[tokio::test]
async fn range_ignored_gives_the_full_body() {
    let (_dir, server) = serve();
    server
        .faults()
        .on_path(FILE, Fault::IgnoreRange, Times::Once);
    let response = transport()
        .fetch_range(url(&server, FILE), 1000)
        .await
        .unwrap();
    let RangeResponse::Full(stream) = response else {
        panic!("expected 200, got {response:?}");
    };
    let (bytes, error) = drain(stream).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(bytes, payload(LEN));
    assert_eq!(server.request_log()[0].status, 200);
}

#[tokio::test]
async fn range_beyond_the_end_is_a_clear_error() {
    let (_dir, server) = serve();
    let offset = u64::try_from(LEN).unwrap();
    let error = transport()
        .fetch_range(url(&server, FILE), offset)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), TransportErrorKind::Other);
    assert_eq!(
        cause(&error),
        Some(&TransferError::RangeNotSatisfiable {
            offset,
            total: Some(offset)
        })
    );
    assert!(
        error.to_string().contains("range not satisfiable"),
        "{error}"
    );
}

#[tokio::test]
async fn reset_mid_body_is_an_error_and_resume_completes_it() {
    let (_dir, server) = serve();
    server
        .faults()
        .on_path(FILE, Fault::ResetAfter(100_000), Times::Once);
    let transport = transport();
    let (first, error) = drain(transport.fetch(url(&server, FILE)).await.unwrap()).await;
    let error = error.expect("a reset must end the stream with an error, not a short body");
    assert_eq!(error.kind(), TransportErrorKind::Other);
    assert!(first.len() <= 100_000, "{}", first.len());
    assert_eq!(first, payload(LEN)[..first.len()]);

    // What the updater does next: resume from what it has.
    let offset = u64::try_from(first.len()).unwrap();
    let response = transport
        .fetch_range(url(&server, FILE), offset)
        .await
        .unwrap();
    assert!(response.is_partial(), "{response:?}");
    let (rest, error) = drain(response.into_stream()).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!([first, rest].concat(), payload(LEN));
    assert_eq!(server.requests(FILE), 2);
}

#[tokio::test]
async fn truncated_body_is_an_error() {
    let (_dir, server) = serve();
    server
        .faults()
        .on_path(FILE, Fault::Truncate(50_000), Times::Once);
    let (bytes, error) = drain(transport().fetch(url(&server, FILE)).await.unwrap()).await;
    let error = error.expect("a truncated body must be an error");
    assert_eq!(error.kind(), TransportErrorKind::Other);
    assert!(bytes.len() <= 50_000, "{}", bytes.len());
}

#[tokio::test]
async fn truncated_range_body_is_an_error() {
    let (_dir, server) = serve();
    server
        .faults()
        .on_path(FILE, Fault::Truncate(10_000), Times::Once);
    let response = transport()
        .fetch_range(url(&server, FILE), 100_000)
        .await
        .unwrap();
    assert!(response.is_partial());
    let (bytes, error) = drain(response.into_stream()).await;
    assert!(error.is_some(), "a short 206 body must be an error");
    assert!(bytes.len() <= 10_000);
}

#[tokio::test]
async fn stall_ends_by_the_throughput_floor() {
    let (_dir, server) = serve();
    server.faults().on_path(
        FILE,
        Fault::Stall {
            after_bytes: 64 * 1024,
            duration: Duration::from_secs(30),
        },
        Times::Once,
    );
    let transport = MoltTransport::new(HttpSettings {
        min_throughput: 1024 * 1024,
        throughput_window: Duration::from_millis(300),
        deadline: Duration::from_secs(2),
        ..settings()
    })
    .unwrap();
    let started = Instant::now();
    let (bytes, error) = drain(transport.fetch(url(&server, FILE)).await.unwrap()).await;
    let elapsed = started.elapsed();
    let error = error.expect("a stall must end the transfer");
    assert!(
        matches!(cause(&error), Some(TransferError::Throughput { .. })),
        "{error}"
    );
    assert!(error.to_string().contains("minimum throughput"), "{error}");
    assert_eq!(bytes.len(), 64 * 1024);
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn stall_ends_by_the_deadline() {
    let (_dir, server) = serve();
    server.faults().on_path(
        FILE,
        Fault::Stall {
            after_bytes: 1000,
            duration: Duration::from_secs(30),
        },
        Times::Once,
    );
    let transport = MoltTransport::new(HttpSettings {
        min_throughput: 0,
        deadline: Duration::from_millis(500),
        ..settings()
    })
    .unwrap();
    let started = Instant::now();
    let (_, error) = drain(transport.fetch(url(&server, FILE)).await.unwrap()).await;
    let elapsed = started.elapsed();
    let error = error.expect("a stall must end the transfer");
    assert_eq!(
        cause(&error),
        Some(&TransferError::Deadline {
            limit: Duration::from_millis(500)
        })
    );
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn a_stall_shorter_than_the_window_is_tolerated() {
    let (_dir, server) = serve();
    // The first window is grace: a slow start inside it is fine.
    server.faults().on_path(
        FILE,
        Fault::Stall {
            after_bytes: 1000,
            duration: Duration::from_millis(100),
        },
        Times::Once,
    );
    let transport = MoltTransport::new(HttpSettings {
        min_throughput: 1024 * 1024,
        throughput_window: Duration::from_millis(300),
        deadline: Duration::from_secs(2),
        ..settings()
    })
    .unwrap();
    assert_eq!(
        fetch_all(&transport, url(&server, FILE)).await,
        payload(LEN)
    );
}

#[tokio::test]
async fn a_server_that_never_answers_ends_by_the_floor() {
    // Accepts connections and never says a word.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let transport = MoltTransport::new(HttpSettings {
        min_throughput: 1024,
        throughput_window: Duration::from_millis(300),
        deadline: Duration::from_secs(2),
        ..settings()
    })
    .unwrap();
    let started = Instant::now();
    let url = Url::parse(&format!("http://{addr}/metadata/timestamp.json")).unwrap();
    let error = transport.fetch(url).await.err().unwrap();
    let elapsed = started.elapsed();
    assert!(
        matches!(
            cause(&error),
            Some(TransferError::Throughput { received: 0, .. })
        ),
        "{error}"
    );
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    drop(listener);
}

#[tokio::test]
async fn proxy_from_the_environment_values_is_used() {
    let (_dir, server) = serve();
    // The file server acts as the proxy: it serves the path of an absolute-form request,
    // for a host that does not even resolve.
    let proxy = ProxySettings::from_lookup(|name| {
        (name == "http_proxy").then(|| format!("http://{}", server.addr()))
    });
    let transport = MoltTransport::new(HttpSettings {
        proxy,
        ..settings()
    })
    .unwrap();
    let url = Url::parse(&format!("http://molt-repo.invalid{FILE}")).unwrap();
    assert_eq!(fetch_all(&transport, url).await, payload(LEN));
    assert_eq!(server.requests(FILE), 1);
}

#[tokio::test]
async fn file_urls_fetch_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("targets").join("a.bin");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, payload(LEN)).unwrap();
    let url = Url::from_file_path(&path).unwrap();
    let transport = transport();

    assert_eq!(fetch_all(&transport, url.clone()).await, payload(LEN));

    let response = transport.fetch_range(url.clone(), 300_000).await.unwrap();
    let RangeResponse::Partial(stream) = response else {
        panic!("file:// ranges are always partial, got {response:?}");
    };
    let (bytes, error) = drain(stream).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(bytes, payload(LEN)[300_000..]);

    let response = transport.fetch_range(url.clone(), 0).await.unwrap();
    let (bytes, _) = drain(response.into_stream()).await;
    assert_eq!(bytes, payload(LEN));

    let offset = u64::try_from(LEN).unwrap();
    let error = transport.fetch_range(url, offset).await.unwrap_err();
    assert_eq!(
        cause(&error),
        Some(&TransferError::RangeNotSatisfiable {
            offset,
            total: Some(offset)
        })
    );

    let missing = Url::from_file_path(dir.path().join("missing")).unwrap();
    let error = transport.fetch(missing.clone()).await.err().unwrap();
    assert_eq!(error.kind(), TransportErrorKind::FileNotFound);
    let error = transport.fetch_range(missing, 10).await.unwrap_err();
    assert_eq!(error.kind(), TransportErrorKind::FileNotFound);
}
