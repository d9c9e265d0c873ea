//! A fault-injecting HTTP/1.1 file server for tests.
//!
//! [`FileServer::start`] serves a directory on `127.0.0.1` (an ephemeral port) from its own
//! thread and tokio runtime, so both sync and async tests can use it; dropping the server
//! stops it. It answers GET and HEAD with `Content-Length`, a single `Range: bytes=N-`,
//! `bytes=N-M` or `bytes=-N` with 206 and `Content-Range` (416 when unsatisfiable), 404 for
//! missing files, and 400 for paths that try to leave the directory.
//!
//! [`FileServer::proxy`] serves another server's objects instead of a directory: each
//! request is fetched from that upstream (the local S3 server, say) and answered with the
//! same faults, which makes it a fault-injecting proxy in front of a real server.
//!
//! [`Faults`] changes its behaviour while it runs: a [`Fault`] applies to one request path or
//! to every path, a given number of [`Times`]. The server also counts the requests it receives
//! per path ([`FileServer::requests`]) and keeps a log of them ([`FileServer::request_log`]).
//!
//! ```no_run
//! use molt_tests::http_server::{Fault, FileServer, Times};
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("a.bin"), b"hello").unwrap();
//! let server = FileServer::start(dir.path()).unwrap();
//! server.faults().on_path("/a.bin", Fault::Status(503), Times::N(2));
//! let url = server.url("a.bin"); // http://127.0.0.1:<port>/a.bin
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::background::Background;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The size of the body frames the server sends.
const CHUNK: usize = 16 * 1024;

/// How long a body pauses before an injected reset or truncation, so that hyper flushes the
/// bytes sent so far and the client really receives them.
const FLUSH_PAUSE: Duration = Duration::from_millis(20);

/// The request log keeps at most this many entries (the counters keep counting).
const LOG_LIMIT: usize = 10_000;

type Body = UnsyncBoxBody<Bytes, io::Error>;

// =====================================================================================
// Faults

/// A misbehaviour the server can be told to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and a short text body instead of serving (e.g. 500, 503).
    Status(u16),
    /// Send this many body bytes, then reset the connection (TCP RST). GET only.
    ResetAfter(u64),
    /// Send `after_bytes` body bytes, send nothing for `duration`, then send the rest.
    /// GET only.
    Stall {
        /// Bytes sent before the stall.
        after_bytes: u64,
        /// How long the stall lasts.
        duration: Duration,
    },
    /// Announce the full `Content-Length` but send only this many body bytes, then close the
    /// connection (FIN). GET only.
    Truncate(u64),
    /// Answer requests that carry `Range` with 200 and the whole body.
    IgnoreRange,
    /// Answer 403 instead of 404 for a missing file, as S3 does for anonymous readers.
    ForbiddenForMissing,
}

/// How many requests a [`Fault`] applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Times {
    /// The next matching request only.
    Once,
    /// The next `n` matching requests.
    N(u32),
    /// Every matching request until [`Faults::clear`].
    Always,
}

impl Times {
    fn uses(self) -> Option<u32> {
        match self {
            Self::Once => Some(1),
            Self::N(n) => Some(n),
            Self::Always => None,
        }
    }
}

/// The server's fault rules. A shared handle: clones control the same server, and changes
/// apply to the next request.
///
/// A request is matched against the rules in the order they were added. A [`Fault::Status`]
/// rule wins outright (the request gets that status, and no other rule is used up). Otherwise
/// the first body fault ([`Fault::ResetAfter`], [`Fault::Stall`], [`Fault::Truncate`]) applies
/// to a GET, [`Fault::IgnoreRange`] to a request with `Range`, and
/// [`Fault::ForbiddenForMissing`] to a request for a missing file. A rule is used up only by
/// requests it applied to.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    rules: Arc<Mutex<Vec<Rule>>>,
}

#[derive(Clone, Debug)]
struct Rule {
    /// `None` for every path.
    path: Option<String>,
    /// `path` is a prefix of the paths the rule applies to, not the whole path.
    prefix: bool,
    fault: Fault,
    /// `None` for [`Times::Always`].
    remaining: Option<u32>,
}

impl Rule {
    fn applies_to(&self, path: &str) -> bool {
        self.remaining != Some(0)
            && self.path.as_deref().is_none_or(|p| {
                if self.prefix {
                    path.starts_with(p)
                } else {
                    p == path
                }
            })
    }

    fn use_once(&mut self) {
        if let Some(n) = &mut self.remaining {
            *n = n.saturating_sub(1);
        }
    }
}

/// What the faults decided for one request.
#[derive(Debug, Default)]
struct Plan {
    status: Option<u16>,
    body: Option<BodyFault>,
    ignore_range: bool,
}

#[derive(Clone, Copy, Debug)]
enum BodyFault {
    Reset { at: u64 },
    Stall { at: u64, duration: Duration },
    Truncate { at: u64 },
}

impl BodyFault {
    fn at(self) -> u64 {
        match self {
            Self::Reset { at } | Self::Stall { at, .. } | Self::Truncate { at } => at,
        }
    }
}

impl Faults {
    /// No faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Injects `fault` into requests for `path` (`/a.bin` or `a.bin`; no query).
    pub fn on_path(&self, path: &str, fault: Fault, times: Times) {
        self.add(Some(normalize(path)), false, fault, times);
    }

    /// Injects `fault` into requests for every path that starts with `prefix`
    /// (`/bucket/targets/`).
    pub fn on_prefix(&self, prefix: &str, fault: Fault, times: Times) {
        self.add(Some(normalize(prefix)), true, fault, times);
    }

    /// Injects `fault` into requests for any path.
    pub fn everywhere(&self, fault: Fault, times: Times) {
        self.add(None, false, fault, times);
    }

    /// Removes every rule.
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// The rules that still have uses left, as `fault on path (n left)`, for a test's
    /// message.
    pub fn pending_rules(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|r| r.remaining != Some(0))
            .map(|r| {
                format!(
                    "{:?} on {} ({} left)",
                    r.fault,
                    r.path.as_deref().unwrap_or("every path"),
                    r.remaining.map_or("always".to_owned(), |n| n.to_string())
                )
            })
            .collect()
    }

    /// How many rules still have uses left.
    pub fn pending(&self) -> usize {
        self.lock()
            .iter()
            .filter(|r| r.remaining != Some(0))
            .count()
    }

    fn add(&self, path: Option<String>, prefix: bool, fault: Fault, times: Times) {
        self.lock().push(Rule {
            path,
            prefix,
            fault,
            remaining: times.uses(),
        });
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Rule>> {
        // A test that panicked while holding the lock leaves the rules usable.
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn plan(&self, path: &str, is_get: bool, has_range: bool) -> Plan {
        let mut rules = self.lock();
        let mut plan = Plan::default();
        if let Some(rule) = rules
            .iter_mut()
            .filter(|r| r.applies_to(path))
            .find(|r| matches!(r.fault, Fault::Status(_)))
        {
            rule.use_once();
            if let Fault::Status(status) = rule.fault {
                plan.status = Some(status);
            }
        } else {
            for rule in rules.iter_mut().filter(|r| r.applies_to(path)) {
                let body = match rule.fault {
                    Fault::ResetAfter(at) => Some(BodyFault::Reset { at }),
                    Fault::Stall {
                        after_bytes,
                        duration,
                    } => Some(BodyFault::Stall {
                        at: after_bytes,
                        duration,
                    }),
                    Fault::Truncate(at) => Some(BodyFault::Truncate { at }),
                    Fault::IgnoreRange if has_range && !plan.ignore_range => {
                        plan.ignore_range = true;
                        rule.use_once();
                        None
                    }
                    _ => None,
                };
                if let Some(body) = body
                    && is_get
                    && plan.body.is_none()
                {
                    plan.body = Some(body);
                    rule.use_once();
                }
            }
        }
        rules.retain(|r| r.remaining != Some(0));
        plan
    }

    /// Whether a missing `path` gets 403 (using up the rule that says so).
    fn forbid_missing(&self, path: &str) -> bool {
        let mut rules = self.lock();
        let found = rules
            .iter_mut()
            .filter(|r| r.applies_to(path))
            .find(|r| r.fault == Fault::ForbiddenForMissing)
            .map(Rule::use_once)
            .is_some();
        rules.retain(|r| r.remaining != Some(0));
        found
    }
}

/// `a.bin` → `/a.bin`.
fn normalize(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

// =====================================================================================
// The server

/// One request as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The request path as sent (still percent-encoded, no query).
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The status answered.
    pub status: u16,
}

#[derive(Debug, Default)]
struct Stats {
    per_path: HashMap<String, usize>,
    total: usize,
    log: Vec<RequestRecord>,
}

/// Where the served bytes come from.
#[derive(Debug)]
enum Origin {
    /// Files under this directory (canonical).
    Dir(PathBuf),
    /// Objects of the HTTP server at this address, fetched with a GET per request.
    Upstream(SocketAddr),
}

#[derive(Debug)]
struct Shared {
    origin: Origin,
    faults: Faults,
    stats: Mutex<Stats>,
}

impl Shared {
    fn stats(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn record(&self, record: RequestRecord) {
        let mut stats = self.stats();
        *stats.per_path.entry(record.path.clone()).or_default() += 1;
        stats.total += 1;
        if stats.log.len() < LOG_LIMIT {
            stats.log.push(record);
        }
    }
}

/// A running file server; see the [module documentation](self). Stops when dropped.
#[derive(Debug)]
pub struct FileServer {
    server: Background,
    shared: Arc<Shared>,
}

impl FileServer {
    /// Serves the directory `root` on `127.0.0.1` at an ephemeral port.
    pub fn start(root: impl AsRef<Path>) -> io::Result<Self> {
        Self::serve(Origin::Dir(root.as_ref().canonicalize()?))
    }

    /// A fault-injecting proxy on `127.0.0.1` in front of the HTTP server at `upstream`:
    /// a GET or HEAD of a path is answered from a GET of the same path upstream (its 200
    /// body, 404 as missing, any other status passed on), with this server's faults and
    /// `Range` handling. Only anonymous reads pass: no request headers are forwarded.
    pub fn proxy(upstream: SocketAddr) -> io::Result<Self> {
        Self::serve(Origin::Upstream(upstream))
    }

    fn serve(origin: Origin) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            origin,
            faults: Faults::new(),
            stats: Mutex::default(),
        });
        let serving = Arc::clone(&shared);
        let server = Background::start("http", move |stream| {
            serve_connection(stream, Arc::clone(&serving))
        })?;
        Ok(Self { server, shared })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:<port>/`.
    pub fn base_url(&self) -> String {
        format!("http://{}/", self.server.addr())
    }

    /// The URL of `path` (relative to the served directory, with or without a leading `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.server.addr(), normalize(path))
    }

    /// The served directory (canonical); empty for a proxy.
    pub fn root(&self) -> &Path {
        match &self.shared.origin {
            Origin::Dir(root) => root,
            Origin::Upstream(_) => Path::new(""),
        }
    }

    /// The fault controls.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// How many requests arrived for `path` (`/a.bin` or `a.bin`), whatever their answer.
    pub fn requests(&self, path: &str) -> usize {
        self.shared
            .stats()
            .per_path
            .get(&normalize(path))
            .copied()
            .unwrap_or(0)
    }

    /// How many requests arrived in all.
    pub fn total_requests(&self) -> usize {
        self.shared.stats().total
    }

    /// The requests so far, oldest first (the first 10,000).
    pub fn request_log(&self) -> Vec<RequestRecord> {
        self.shared.stats().log.clone()
    }
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let reset = Arc::new(AtomicBool::new(false));
    let io = TokioIo::new(ResettableStream {
        inner: stream,
        reset: Arc::clone(&reset),
    });
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let reset = Arc::clone(&reset);
        async move { Ok::<_, Infallible>(handle(request, &shared, reset).await) }
    });
    // Errors here are the injected faults and clients going away.
    let _ = http1::Builder::new().serve_connection(io, service).await;
}

async fn handle(
    request: Request<Incoming>,
    shared: &Shared,
    reset: Arc<AtomicBool>,
) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let range = request
        .headers()
        .get(header::RANGE)
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let response = respond(shared, &method, &path, range.as_deref(), reset).await;
    shared.record(RequestRecord {
        method: method.to_string(),
        path,
        range,
        status: response.status().as_u16(),
    });
    response
}

async fn respond(
    shared: &Shared,
    method: &Method,
    path: &str,
    range: Option<&str>,
    reset: Arc<AtomicBool>,
) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "GET and HEAD only\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let is_get = method == Method::GET;
    let plan = shared.faults.plan(path, is_get, range.is_some());
    if let Some(status) = plan.status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return text(
            status,
            &format!("injected fault: HTTP {}\n", status.as_u16()),
        );
    }

    let read = match &shared.origin {
        Origin::Dir(root) => match resolve(root, path) {
            Some(file) => read_file(root, &file).await,
            None => Err(ReadError::OutsideRoot),
        },
        Origin::Upstream(addr) => fetch(*addr, path).await,
    };
    let data = match read {
        Ok(Some(data)) => data,
        Ok(None) if shared.faults.forbid_missing(path) => {
            return text(StatusCode::FORBIDDEN, "AccessDenied\n");
        }
        Ok(None) => return text(StatusCode::NOT_FOUND, "not found\n"),
        Err(ReadError::OutsideRoot) => return text(StatusCode::BAD_REQUEST, "bad path\n"),
        Err(ReadError::Io(e)) => {
            return text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n"));
        }
        Err(ReadError::Upstream(status)) => {
            return text(status, &format!("upstream answered {status}\n"));
        }
    };

    let len = data.len() as u64;
    let requested = range
        .filter(|_| !plan.ignore_range)
        .and_then(|r| parse_range(r, len));
    let (status, data, content_range) = match requested {
        None => (StatusCode::OK, data, None),
        Some(Ok((start, end))) => match (usize::try_from(start), usize::try_from(end)) {
            (Ok(s), Ok(e)) => (
                StatusCode::PARTIAL_CONTENT,
                data.slice(s..=e),
                Some(format!("bytes {start}-{end}/{len}")),
            ),
            _ => (StatusCode::OK, data, None),
        },
        Some(Err(())) => {
            let mut response = text(StatusCode::RANGE_NOT_SATISFIABLE, "");
            insert(
                &mut response,
                header::CONTENT_RANGE,
                format!("bytes */{len}"),
            );
            return response;
        }
    };

    let content_length = data.len() as u64;
    let body = if is_get {
        faulted_body(data, plan.body, reset)
    } else {
        faulted_body(Bytes::new(), None, reset)
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(content_length));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if !plan.ignore_range {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    if let Some(content_range) = content_range {
        insert(&mut response, header::CONTENT_RANGE, content_range);
    }
    response
}

fn insert(response: &mut Response<Body>, name: header::HeaderName, value: String) {
    if let Ok(value) = HeaderValue::try_from(value) {
        response.headers_mut().insert(name, value);
    }
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let bytes = Bytes::copy_from_slice(body.as_bytes());
    let len = bytes.len() as u64;
    let mut response = Response::new(faulted_body(bytes, None, Arc::default()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The file under `root` that the request path names, or `None` when the path tries to
/// leave `root` (`..`, `.`, encoded slashes or backslashes, NUL, bad percent-encoding).
fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let mut file = root.to_path_buf();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        let segment = percent_decode(segment)?;
        if segment == "." || segment == ".." || segment.contains(['/', '\\', '\0']) {
            return None;
        }
        file.push(segment);
    }
    Some(file)
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

enum ReadError {
    OutsideRoot,
    Io(io::Error),
    /// The upstream's answer, other than 200 and 404 (or 502 when it could not be asked).
    Upstream(StatusCode),
}

/// The body of `GET path` from the server at `upstream`; `None` on 404.
async fn fetch(upstream: SocketAddr, path: &str) -> Result<Option<Bytes>, ReadError> {
    let bad_gateway = |_| ReadError::Upstream(StatusCode::BAD_GATEWAY);
    let stream = TcpStream::connect(upstream).await.map_err(ReadError::Io)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(bad_gateway)?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(header::HOST, upstream.to_string())
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|_| ReadError::Upstream(StatusCode::BAD_REQUEST))?;
    let response = sender.send_request(request).await.map_err(bad_gateway)?;
    match response.status() {
        StatusCode::OK => {
            let body = response.into_body().collect().await.map_err(bad_gateway)?;
            Ok(Some(body.to_bytes()))
        }
        StatusCode::NOT_FOUND => Ok(None),
        status => Err(ReadError::Upstream(status)),
    }
}

/// The file's bytes; `None` when it is missing or not a regular file. A symlink that leads
/// out of `root` is refused.
async fn read_file(root: &Path, file: &Path) -> Result<Option<Bytes>, ReadError> {
    let real = match tokio::fs::canonicalize(file).await {
        Ok(real) => real,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReadError::Io(e)),
    };
    if !real.starts_with(root) {
        return Err(ReadError::OutsideRoot);
    }
    match tokio::fs::metadata(&real).await {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ReadError::Io(e)),
    }
    match tokio::fs::read(&real).await {
        Ok(data) => Ok(Some(Bytes::from(data))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ReadError::Io(e)),
    }
}

/// Parses a single-range `Range` header against a body of `len` bytes:
/// `None` to ignore it (not `bytes=`, several ranges, malformed; RFC 9110 lets a server
/// ignore those), `Some(Ok((first, last)))` inclusive, `Some(Err(()))` when unsatisfiable.
fn parse_range(header: &str, len: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    let number = |text: &str| -> Option<u64> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    if first.is_empty() {
        // bytes=-N: the last N bytes.
        let suffix = number(last)?;
        if suffix == 0 || len == 0 {
            return Some(Err(()));
        }
        return Some(Ok((len.saturating_sub(suffix), len - 1)));
    }
    let first = number(first)?;
    let last = if last.is_empty() {
        None
    } else {
        Some(number(last)?)
    };
    if last.is_some_and(|last| last < first) {
        return None;
    }
    if first >= len {
        return Some(Err(()));
    }
    Some(Ok((first, last.map_or(len - 1, |last| last.min(len - 1)))))
}

// =====================================================================================
// Bodies with faults

struct BodyState {
    data: Bytes,
    sent: usize,
    fault: Option<BodyFault>,
    reset: Arc<AtomicBool>,
}

impl BodyState {
    /// Where the pending fault strikes, if it strikes inside this body.
    fn fault_at(&self) -> Option<usize> {
        let at = usize::try_from(self.fault?.at()).ok()?;
        (at < self.data.len()).then_some(at)
    }
}

/// `data` as a body of [`CHUNK`]-sized frames, with `fault` applied.
fn faulted_body(data: Bytes, fault: Option<BodyFault>, reset: Arc<AtomicBool>) -> Body {
    let state = BodyState {
        data,
        sent: 0,
        fault,
        reset,
    };
    let frames = futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        if state.fault_at() == Some(state.sent) {
            match state.fault.take() {
                Some(BodyFault::Stall { duration, .. }) => tokio::time::sleep(duration).await,
                Some(BodyFault::Reset { .. }) => {
                    tokio::time::sleep(FLUSH_PAUSE).await;
                    state.reset.store(true, Ordering::SeqCst);
                    let error = io::Error::new(io::ErrorKind::ConnectionReset, "injected reset");
                    return Some((Err(error), None));
                }
                Some(BodyFault::Truncate { .. }) => {
                    tokio::time::sleep(FLUSH_PAUSE).await;
                    return None;
                }
                None => {}
            }
        }
        let stop = state.fault_at().unwrap_or(state.data.len());
        if state.sent >= stop {
            return None;
        }
        let end = stop.min(state.sent + CHUNK);
        let frame = state.data.slice(state.sent..end);
        state.sent = end;
        Some((Ok(Frame::data(frame)), Some(state)))
    });
    StreamBody::new(frames).boxed_unsync()
}

/// A TCP stream that closes with a reset (RST) instead of a FIN once `reset` is set.
struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl AsyncRead for ResettableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.reset.load(Ordering::SeqCst) {
            // No FIN: the reset is sent when the stream is dropped.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::SeqCst) {
            // SO_LINGER 0: close(2) sends RST and drops unsent data.
            let _ = self.inner.set_zero_linger();
        }
    }
}

// =====================================================================================

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// One raw request; the whole answer, read until the server closes.
    fn raw(server: &FileServer, request: &str) -> String {
        let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    }

    fn get(server: &FileServer, path: &str, extra: &str) -> String {
        raw(
            server,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n"),
        )
    }

    fn fixture() -> (tempfile::TempDir, FileServer) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), b"0123456789").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b c.txt"), b"spaced").unwrap();
        let server = FileServer::start(dir.path()).unwrap();
        (dir, server)
    }

    #[test]
    fn serves_files_ranges_and_head() {
        let (_dir, server) = fixture();
        let answer = get(&server, "/a.txt", "");
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("content-length: 10"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n0123456789"), "{answer}");

        let answer = get(&server, "/a.txt", "Range: bytes=3-\r\n");
        assert!(answer.starts_with("HTTP/1.1 206"), "{answer}");
        assert!(answer.contains("content-range: bytes 3-9/10"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n3456789"), "{answer}");

        let answer = get(&server, "/a.txt", "Range: bytes=2-4\r\n");
        assert!(answer.ends_with("\r\n\r\n234"), "{answer}");
        let answer = get(&server, "/a.txt", "Range: bytes=-2\r\n");
        assert!(answer.ends_with("\r\n\r\n89"), "{answer}");

        let answer = get(&server, "/a.txt", "Range: bytes=10-\r\n");
        assert!(answer.starts_with("HTTP/1.1 416"), "{answer}");
        assert!(answer.contains("content-range: bytes */10"), "{answer}");

        let answer = get(&server, "/sub/b%20c.txt", "");
        assert!(answer.ends_with("\r\n\r\nspaced"), "{answer}");

        let answer = raw(
            &server,
            "HEAD /a.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("content-length: 10"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n"), "{answer}");

        assert_eq!(server.requests("/a.txt"), 6);
        assert_eq!(server.requests("sub/b%20c.txt"), 1);
        assert_eq!(server.total_requests(), 7);
        let log = server.request_log();
        assert_eq!(log[1].range.as_deref(), Some("bytes=3-"));
        assert_eq!(log[1].status, 206);
    }

    #[test]
    fn refuses_paths_that_leave_the_root() {
        // Serve `<tmp>/root`, next to a file `<tmp>/secret` that must stay out of reach.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(dir.path().join("secret"), b"x").unwrap();
        let server = FileServer::start(&root).unwrap();
        for path in [
            "/../secret",
            "/sub/../../secret",
            "/%2e%2e/secret",
            "/sub%2f..%2f..%2fsecret",
            "/a%zz",
        ] {
            let answer = get(&server, path, "");
            assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
            let answer = get(&server, "/up/secret", "");
            assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        }
        assert!(get(&server, "/sub", "").starts_with("HTTP/1.1 404"));
        assert!(get(&server, "/missing", "").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn faults_are_used_up_per_path() {
        let (_dir, server) = fixture();
        server
            .faults()
            .on_path("a.txt", Fault::Status(503), Times::N(2));
        server
            .faults()
            .everywhere(Fault::ForbiddenForMissing, Times::Once);
        assert!(get(&server, "/a.txt", "").starts_with("HTTP/1.1 503"));
        assert!(get(&server, "/a.txt", "").starts_with("HTTP/1.1 503"));
        assert!(get(&server, "/a.txt", "").starts_with("HTTP/1.1 200"));
        assert!(get(&server, "/missing", "").starts_with("HTTP/1.1 403"));
        assert!(get(&server, "/missing", "").starts_with("HTTP/1.1 404"));
        assert_eq!(server.faults().pending(), 0);

        server
            .faults()
            .on_path("/a.txt", Fault::IgnoreRange, Times::Always);
        let answer = get(&server, "/a.txt", "Range: bytes=3-\r\n");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n0123456789"), "{answer}");
        server.faults().clear();
        assert!(get(&server, "/a.txt", "Range: bytes=3-\r\n").starts_with("HTTP/1.1 206"));
    }

    #[test]
    fn truncation_sends_the_announced_length_but_fewer_bytes() {
        let (_dir, server) = fixture();
        server
            .faults()
            .on_path("/a.txt", Fault::Truncate(4), Times::Once);
        let answer = get(&server, "/a.txt", "");
        assert!(answer.contains("content-length: 10"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n0123"), "{answer}");
    }

    #[test]
    fn range_parsing() {
        assert_eq!(parse_range("bytes=0-", 10), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=5-100", 10), Some(Ok((5, 9))));
        assert_eq!(parse_range("bytes=-3", 10), Some(Ok((7, 9))));
        assert_eq!(parse_range("bytes=-30", 10), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=10-", 10), Some(Err(())));
        assert_eq!(parse_range("bytes=-0", 10), Some(Err(())));
        assert_eq!(parse_range("bytes=0-", 0), Some(Err(())));
        assert_eq!(parse_range("bytes=5-4", 10), None);
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
        assert_eq!(parse_range("bytes=+1-", 10), None);
    }
}
