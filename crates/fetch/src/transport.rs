//! molt's own [`tough::Transport`]: `file://` through tough's [`FilesystemTransport`], and
//! `http://`/`https://` through one shared reqwest client.
//!
//! What it adds over tough's own HTTP transport (SPEC §6 step 3):
//!
//! - **No whole-request timeout.** A 200 MiB archive over a slow link may legitimately take
//!   many minutes, so instead of one timeout every transfer gets a total **deadline** and a
//!   **minimum-throughput floor**, both enforced while the body streams. The floor is averaged
//!   over [`HttpSettings::throughput_window`]; the response headers must arrive within one
//!   window, and the body's first window is grace (TCP slow start). A stalled server therefore
//!   ends the request by the floor (within about two windows), or at the latest by the
//!   deadline. The error says which limit was hit ([`TransferError::Deadline`],
//!   [`TransferError::Throughput`]).
//! - **Not found is not found**: HTTP 404 and 403 map to [`TransportErrorKind::FileNotFound`]
//!   (S3 answers 403 for a missing key to anonymous readers), which TUF needs to tell "no newer
//!   root" from a failure. Other statuses map to [`TransportErrorKind::Other`].
//! - **Resume**: [`MoltTransport::fetch_range`] asks for `bytes=<offset>-` and checks the
//!   answer: 206 with a `Content-Range` that starts at the offset is [`RangeResponse::Partial`];
//!   a server that ignores `Range` answers 200, which is [`RangeResponse::Full`] so the caller
//!   starts again from zero.
//! - **Proxies**: `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (and their
//!   lower-case forms) are honoured, read through [`ProxySettings::from_env`] so the rules are
//!   ours, explicit and tested (see [`ProxySettings::from_lookup`]).
//! - **Redirects**: at most [`MAX_REDIRECTS`], never to another scheme except `http` → `https`.
//! - **Signing** is the [`RequestSigner`]'s business (SigV4 for `s3://` sources, in
//!   [`crate::s3`]): the transport knows only that requests are signed, and asks the signer
//!   what a 403 to a signed request means.
//! - **No secrets in messages**: every URL in an error or a log line goes through
//!   [`display_url`], which drops the query, the fragment and any user info (pre-signed URLs
//!   carry credentials in the query).

use std::collections::VecDeque;
use std::error::Error as StdError;
use std::fmt;
use std::io::SeekFrom;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::time::{Instant, Sleep};

pub use tough::{
    FilesystemTransport, IntoVec, Transport, TransportError, TransportErrorKind, TransportStream,
};
pub use url::Url;

/// Redirects followed per request before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// How many slots the throughput window is divided into. The floor is checked over the last
/// `SLOTS` slots (between 9/10 of a window and a full window), at each slot boundary while the
/// body is stalled and on every chunk while it flows.
const SLOTS: u64 = 10;

/// The shortest slot: keeps the timer from firing absurdly often for tiny windows.
const MIN_SLOT: Duration = Duration::from_millis(1);

/// The size of the reads from a local file in [`MoltTransport::fetch_range`].
const FILE_CHUNK: usize = 64 * 1024;

// =====================================================================================
// Settings

/// Limits and identity for every request [`MoltTransport`] makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// Time allowed to establish the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// The total time one request may take, from sending it to the last byte of the body.
    pub deadline: Duration,
    /// The minimum throughput, in bytes per second, averaged over `throughput_window`.
    /// `0` disables the floor (the deadline still applies).
    pub min_throughput: u64,
    /// The window the floor is averaged over. The response headers must arrive within one
    /// window of sending the request; then the body's first window is grace: the floor is
    /// checked once one window has passed since the headers arrived, and from then on over
    /// the last window (on every chunk, and at least every tenth of a window while the body
    /// is stalled). A zero window disables the floor. Note that a consumer that stops polling
    /// the stream for longer than a window counts as a stall too.
    pub throughput_window: Duration,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Proxies. [`HttpSettings::default`] reads them from the environment.
    pub proxy: ProxySettings,
}

impl Default for HttpSettings {
    /// Connect within 10 s; at most 30 min per request; at least 1 KiB/s averaged over 30 s;
    /// `User-Agent: molt/<version>`; proxies from the environment.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(30 * 60),
            min_throughput: 1024,
            throughput_window: Duration::from_secs(30),
            user_agent: concat!("molt/", env!("CARGO_PKG_VERSION")).to_owned(),
            proxy: ProxySettings::from_env(),
        }
    }
}

/// Proxy settings in the shape of the conventional environment variables.
///
/// The default is no proxy at all. [`ProxySettings::from_env`] reads the environment with the
/// same precedence as curl and reqwest; [`HttpSettings::default`] uses it, so the transport
/// honours `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` out of the box.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// Proxy for `http://` URLs (`HTTP_PROXY`/`http_proxy`).
    pub http: Option<String>,
    /// Proxy for `https://` URLs (`HTTPS_PROXY`/`https_proxy`).
    pub https: Option<String>,
    /// Proxy for both, when the scheme's own is unset (`ALL_PROXY`/`all_proxy`).
    pub all: Option<String>,
    /// Hosts that bypass the proxies (`NO_PROXY`/`no_proxy`): comma-separated domains
    /// (matching subdomains too), IP addresses, CIDR ranges, or `*`.
    pub no_proxy: Option<String>,
}

impl ProxySettings {
    /// No proxy: connect directly.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads the process environment; see [`ProxySettings::from_lookup`].
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the proxy variables through `lookup` (the environment, or a map in tests).
    ///
    /// For each setting the upper-case variable wins over the lower-case one (`HTTPS_PROXY`,
    /// then `https_proxy`), and an empty value counts as unset. As in curl and reqwest,
    /// nothing is read when `REQUEST_METHOD` is set: under CGI, `HTTP_PROXY` comes from the
    /// client's `Proxy:` header (httpoxy).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        if lookup("REQUEST_METHOD").is_some() {
            return Self::none();
        }
        let first = |names: [&str; 2]| {
            names
                .into_iter()
                .filter_map(&lookup)
                .map(|value| value.trim().to_owned())
                .find(|value| !value.is_empty())
        };
        Self {
            http: first(["HTTP_PROXY", "http_proxy"]),
            https: first(["HTTPS_PROXY", "https_proxy"]),
            all: first(["ALL_PROXY", "all_proxy"]),
            no_proxy: first(["NO_PROXY", "no_proxy"]),
        }
    }

    /// The reqwest proxies these settings describe (none when nothing is set).
    fn to_proxies(&self) -> Result<Vec<reqwest::Proxy>, TransportSetupError> {
        let no_proxy = self
            .no_proxy
            .as_deref()
            .and_then(reqwest::NoProxy::from_string);
        let mut proxies = Vec::new();
        let http = self.http.as_deref().map(|v| (v, "HTTP_PROXY"));
        let https = self.https.as_deref().map(|v| (v, "HTTPS_PROXY"));
        let all = self.all.as_deref().map(|v| (v, "ALL_PROXY"));
        if let Some((value, setting)) = http.or(all) {
            let proxy = reqwest::Proxy::http(with_scheme(value))
                .map_err(|_| TransportSetupError::Proxy { setting })?;
            proxies.push(proxy.no_proxy(no_proxy.clone()));
        }
        if let Some((value, setting)) = https.or(all) {
            let proxy = reqwest::Proxy::https(with_scheme(value))
                .map_err(|_| TransportSetupError::Proxy { setting })?;
            proxies.push(proxy.no_proxy(no_proxy));
        }
        Ok(proxies)
    }
}

/// `proxy:3128` means `http://proxy:3128`, as in curl.
fn with_scheme(value: &str) -> String {
    if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    }
}

impl fmt::Debug for ProxySettings {
    // Proxy URLs may carry credentials (`http://user:pass@proxy:3128`): show only whether
    // each is set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = |value: &Option<String>| value.as_ref().map(|_| "<set>");
        f.debug_struct("ProxySettings")
            .field("http", &shown(&self.http))
            .field("https", &shown(&self.https))
            .field("all", &shown(&self.all))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

// =====================================================================================
// Errors

/// Why [`MoltTransport::new`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportSetupError {
    /// A proxy setting is not a usable URL. The value is not shown: it may hold credentials.
    #[error("the {setting} proxy setting is not a valid proxy URL (value not shown)")]
    Proxy {
        /// The variable (or setting) at fault, e.g. `HTTPS_PROXY`.
        setting: &'static str,
    },
    /// reqwest could not build its client (e.g. no TLS roots could be loaded).
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

/// The cause inside a [`TransportError`] when a transfer fails for a reason of molt's own.
/// Find it with `error.source()` and `downcast_ref::<TransferError>()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The request took longer than [`HttpSettings::deadline`].
    #[error("the transfer did not finish within its deadline of {}", to_millis(*.limit))]
    Deadline {
        /// The deadline.
        limit: Duration,
    },
    /// The body (or the response headers) arrived slower than [`HttpSettings::min_throughput`].
    #[error(
        "the transfer fell below the minimum throughput of {floor} bytes/s: \
         {received} bytes in the last {}",
        to_millis(*.over)
    )]
    Throughput {
        /// Bytes received in the span measured.
        received: u64,
        /// The span measured (about one throughput window).
        over: Duration,
        /// The floor, in bytes per second.
        floor: u64,
    },
    /// The server answered with an unexpected status (404 and 403 carry this too, with
    /// [`TransportErrorKind::FileNotFound`]).
    #[error("the server answered HTTP {status}")]
    Status {
        /// The status code.
        status: u16,
    },
    /// The bucket refused a signed request because of its credentials.
    #[error(
        "the bucket refused the signed request ({code}): the AWS credentials are wrong, expired or not allowed to read it"
    )]
    CredentialsRefused {
        /// S3's error code, e.g. `SignatureDoesNotMatch`.
        code: String,
    },
    /// The server answered 416 to `Range: bytes=<offset>-`, or the local file is shorter
    /// than the offset.
    #[error("range not satisfiable: asked for bytes from {offset}{}", match .total {
        Some(total) => format!(", but the file has {total} bytes"),
        None => String::new(),
    })]
    RangeNotSatisfiable {
        /// The offset asked for.
        offset: u64,
        /// The full length, when the server said (`Content-Range: bytes */<total>`).
        total: Option<u64>,
    },
    /// A 206 answer whose `Content-Range` is missing, malformed, does not start at the
    /// offset asked for, or does not run to the end of the file.
    #[error("206 Partial Content for bytes from {offset} with an unusable Content-Range: {}",
        .content_range.as_deref().unwrap_or("(missing)"))]
    BadContentRange {
        /// The offset asked for.
        offset: u64,
        /// The header as received (lossily decoded).
        content_range: Option<String>,
    },
    /// The body ended before (or ran past) the length the server announced.
    #[error("the body was {received} bytes, but the server announced {expected}")]
    LengthMismatch {
        /// The announced length.
        expected: u64,
        /// The bytes received.
        received: u64,
    },
    /// An `https://` request on a host whose system certificate store is empty or missing.
    #[error(
        "this host has no CA certificates to verify https:// servers with: install the ca-certificates package, or set SSL_CERT_FILE to a certificate bundle"
    )]
    NoCaCertificates,
    /// More than [`MAX_REDIRECTS`] redirects.
    #[error("more than {max} redirects")]
    TooManyRedirects {
        /// The limit.
        max: usize,
    },
    /// A redirect to another scheme (only `http` → `https` is followed).
    #[error("refusing to follow a redirect from {from} to {to}")]
    RedirectScheme {
        /// The scheme redirected from.
        from: String,
        /// The scheme redirected to.
        to: String,
    },
}

/// `duration` for messages, to the millisecond (`271ms`, not `271ms 285us 222ns`).
fn to_millis(duration: Duration) -> humantime::FormattedDuration {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(millis))
}

/// `url` as shown in errors and logs: without user info, query and fragment, which may hold
/// credentials (pre-signed URLs carry them in the query).
pub fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    // Both fail only for URLs that cannot have user info (e.g. `file:`), which have none.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

fn transport_error(
    kind: TransportErrorKind,
    shown_url: &str,
    cause: impl Into<Box<dyn StdError + Send + Sync>>,
) -> TransportError {
    TransportError::new_with_cause(kind, shown_url, cause)
}

fn other(shown_url: &str, cause: impl Into<Box<dyn StdError + Send + Sync>>) -> TransportError {
    transport_error(TransportErrorKind::Other, shown_url, cause)
}

fn io_error(shown_url: &str, error: std::io::Error) -> TransportError {
    let kind = match error.kind() {
        std::io::ErrorKind::NotFound => TransportErrorKind::FileNotFound,
        _ => TransportErrorKind::Other,
    };
    transport_error(kind, shown_url, error)
}

// =====================================================================================
// The transport

/// The answer to [`MoltTransport::fetch_range`].
pub enum RangeResponse {
    /// The bytes from the offset asked for to the end (HTTP 206, or a local file).
    Partial(TransportStream),
    /// The whole file from byte 0: the server ignored `Range` (HTTP 200). Start again.
    Full(TransportStream),
}

impl RangeResponse {
    /// Whether the stream starts at the offset asked for.
    pub fn is_partial(&self) -> bool {
        matches!(self, Self::Partial(_))
    }

    /// The stream, whichever it is.
    pub fn into_stream(self) -> TransportStream {
        match self {
            Self::Partial(stream) | Self::Full(stream) => stream,
        }
    }
}

impl fmt::Debug for RangeResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Partial(_) => "RangeResponse::Partial(..)",
            Self::Full(_) => "RangeResponse::Full(..)",
        })
    }
}

/// molt's [`Transport`]: `file://` and `http(s)://`, with a deadline and a throughput floor
/// on every transfer. Cheap to clone (the HTTP client and its connection pool are shared).
#[derive(Clone, Debug)]
pub struct MoltTransport {
    client: reqwest::Client,
    /// The system's certificate store could not be loaded (a minimal image without
    /// ca-certificates): the client trusts no server, and an `https://` request fails
    /// with [`TransferError::NoCaCertificates`] before it is sent. `file://` and
    /// `http://` sources work as anywhere else.
    no_system_roots: bool,
    limits: Limits,
    /// Signs every HTTP request, for a private bucket (`s3://` sources).
    signer: Option<std::sync::Arc<dyn RequestSigner>>,
}

/// What signs a request in place before it is sent (SigV4 for S3, in the `s3` module).
#[async_trait]
pub trait RequestSigner: fmt::Debug + Send + Sync {
    /// Signs `request`, replacing any earlier signature (a retry signs again).
    async fn sign(
        &self,
        request: &mut reqwest::Request,
    ) -> Result<(), Box<dyn StdError + Send + Sync>>;

    /// What a 403 answer to a signed request means, from (the start of) its body: `Some`
    /// with the server's code when the credentials themselves were refused, `None` when the
    /// refusal may just mean "no such object" (S3 says 403 for a missing key to callers who
    /// may not list the bucket).
    fn credentials_refused(&self, body: &[u8]) -> Option<String>;
}

/// The per-transfer limits, from [`HttpSettings`].
#[derive(Clone, Copy, Debug)]
struct Limits {
    deadline: Duration,
    min_throughput: u64,
    throughput_window: Duration,
}

impl Limits {
    fn floor_enabled(&self) -> bool {
        self.min_throughput > 0 && !self.throughput_window.is_zero()
    }
}

/// The HTTP client's settings: connect timeout, user agent, proxies, redirect policy.
fn client_builder(settings: &HttpSettings) -> Result<reqwest::ClientBuilder, TransportSetupError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .user_agent(settings.user_agent.as_str())
        .redirect(redirect_policy())
        // The proxies are ours to choose (from the environment by default), not reqwest's.
        .no_proxy();
    for proxy in settings.proxy.to_proxies()? {
        builder = builder.proxy(proxy);
    }
    Ok(builder)
}

impl MoltTransport {
    /// Builds the HTTP client: connect timeout, user agent, proxies, redirect policy. There is
    /// deliberately no whole-request timeout (see the module documentation).
    pub fn new(settings: HttpSettings) -> Result<Self, TransportSetupError> {
        let (client, no_system_roots) = match client_builder(&settings)?.build() {
            Ok(client) => (client, false),
            // Most often an empty certificate store: a host installed from a minimal
            // image with a `file://` or `http://` source needs none. The same settings,
            // trusting no certificate at all (so nothing over TLS verifies, ever).
            Err(first) => match client_builder(&settings)?
                .tls_certs_only(std::iter::empty())
                .build()
            {
                Ok(client) => {
                    tracing::debug!(error = %first, "no system certificate store; https:// cannot be used");
                    (client, true)
                }
                Err(_) => return Err(TransportSetupError::Client(first)),
            },
        };
        Ok(Self {
            client,
            no_system_roots,
            limits: Limits {
                deadline: settings.deadline,
                min_throughput: settings.min_throughput,
                throughput_window: settings.throughput_window,
            },
            signer: None,
        })
    }

    /// Signs every request (a private bucket, `source = "s3://…"`).
    pub fn with_signer(mut self, signer: impl RequestSigner + 'static) -> Self {
        self.signer = Some(std::sync::Arc::new(signer));
        self
    }

    /// Whether requests are signed.
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// A request of any method on the shared client (its proxies, user agent and redirect
    /// policy), for [`MoltTransport::execute`].
    pub fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.client.request(method, url)
    }

    /// Signs `request` (when the transport has a signer) and sends it within the deadline
    /// and the first throughput window, as every transfer is. The response comes back
    /// whatever its status: the caller decodes the protocol's errors (S3's XML, say).
    pub async fn execute(
        &self,
        mut request: reqwest::Request,
    ) -> Result<reqwest::Response, TransportError> {
        let started = Instant::now();
        let shown = display_url(request.url());
        if let Some(signer) = &self.signer {
            signer
                .sign(&mut request)
                .await
                .map_err(|e| other(&shown, e))?;
        }
        self.send(request, started, &shown).await
    }

    /// Fetches `url` from byte `offset` on, to resume an interrupted download.
    ///
    /// Over HTTP this sends `Range: bytes=<offset>-`. A 206 answer must carry a
    /// `Content-Range` that starts at `offset` and runs to the end of the file; it gives
    /// [`RangeResponse::Partial`]. A 200 answer (the server ignored `Range`) gives
    /// [`RangeResponse::Full`], and the caller must start again from byte 0. A 416 answer is
    /// an error with [`TransferError::RangeNotSatisfiable`]. A `file://` URL is opened and
    /// read from `offset` (always `Partial`). The deadline and the throughput floor apply as
    /// for [`Transport::fetch`].
    pub async fn fetch_range(
        &self,
        url: Url,
        offset: u64,
    ) -> Result<RangeResponse, TransportError> {
        match url.scheme() {
            "file" => self.file_range(url, offset).await,
            "http" | "https" => self.http(url, Some(offset)).await,
            _ => Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                display_url(&url),
            )),
        }
    }

    async fn file(&self, url: Url) -> Result<TransportStream, TransportError> {
        let started = Instant::now();
        let shown = display_url(&url);
        let stream = FilesystemTransport.fetch(url).await?;
        Ok(Box::pin(Guarded::new(
            stream,
            self.limits,
            started,
            shown,
            None,
        )))
    }

    async fn file_range(&self, url: Url, offset: u64) -> Result<RangeResponse, TransportError> {
        let started = Instant::now();
        let shown = display_url(&url);
        let path = url.to_file_path().map_err(|()| {
            TransportError::new_with_cause(
                TransportErrorKind::Other,
                &shown,
                "not a local file path",
            )
        })?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_error(&shown, e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| io_error(&shown, e))?
            .len();
        // As in HTTP: a range is satisfiable when it starts inside the file.
        if offset > 0 && offset >= len {
            return Err(other(
                &shown,
                TransferError::RangeNotSatisfiable {
                    offset,
                    total: Some(len),
                },
            ));
        }
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(|e| io_error(&shown, e))?;
        let error_url = shown.clone();
        let chunks = futures::stream::try_unfold(file, |mut file| async move {
            let mut buffer = BytesMut::with_capacity(FILE_CHUNK);
            let read = file.read_buf(&mut buffer).await?;
            Ok::<_, std::io::Error>((read > 0).then(|| (buffer.freeze(), file)))
        })
        .map_err(move |e| io_error(&error_url, e));
        let expected = len.checked_sub(offset);
        Ok(RangeResponse::Partial(Box::pin(Guarded::new(
            Box::pin(chunks),
            self.limits,
            started,
            shown,
            expected,
        ))))
    }

    /// One HTTP GET; `range` is `Some(offset)` for [`MoltTransport::fetch_range`].
    async fn http(&self, url: Url, range: Option<u64>) -> Result<RangeResponse, TransportError> {
        let started = Instant::now();
        let shown = display_url(&url);
        tracing::debug!(url = %shown, range_from = ?range, "fetching");

        let mut request = self.client.get(url);
        if let Some(offset) = range {
            request = request.header(RANGE, format!("bytes={offset}-"));
        }
        let mut request = request
            .build()
            .map_err(|e| other(&shown, e.without_url()))?;
        if let Some(signer) = &self.signer {
            signer
                .sign(&mut request)
                .await
                .map_err(|e| other(&shown, e))?;
        }
        let response = self.send(request, started, &shown).await?;

        let status = response.status();
        let content_length = response.content_length();
        let partial = match (status, range) {
            (StatusCode::PARTIAL_CONTENT, Some(offset)) => {
                let header = response.headers().get(CONTENT_RANGE);
                let shown_header =
                    header.map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
                let bad = || {
                    other(
                        &shown,
                        TransferError::BadContentRange {
                            offset,
                            content_range: shown_header.clone(),
                        },
                    )
                };
                let range = header
                    .and_then(|value| value.to_str().ok())
                    .and_then(ContentRange::parse)
                    .ok_or_else(bad)?;
                let runs_to_end = range.total.is_none_or(|total| range.end + 1 == total);
                let length_agrees = content_length.is_none_or(|len| len == range.len());
                if range.start != offset || !runs_to_end || !length_agrees {
                    return Err(bad());
                }
                Some(range.len())
            }
            (StatusCode::RANGE_NOT_SATISFIABLE, Some(offset)) => {
                let total = response
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|value| value.to_str().ok())
                    .and_then(unsatisfied_range_total);
                return Err(other(
                    &shown,
                    TransferError::RangeNotSatisfiable { offset, total },
                ));
            }
            // 206 to a request without Range is as wrong as any other surprise.
            (StatusCode::PARTIAL_CONTENT, None) => return Err(status_error(status, &shown)),
            (status, _) if status.is_success() => None,
            (StatusCode::FORBIDDEN, _) => {
                if let Some(signer) = &self.signer {
                    return Err(signed_refusal(signer.as_ref(), response, &shown).await);
                }
                return Err(status_error(status, &shown));
            }
            (status, _) => return Err(status_error(status, &shown)),
        };

        let error_url = shown.clone();
        let body = response
            .bytes_stream()
            .map_err(move |e| other(&error_url, e.without_url()));
        let expected = content_length.or(partial);
        let stream: TransportStream = Box::pin(Guarded::new(
            Box::pin(body),
            self.limits,
            started,
            shown,
            expected,
        ));
        Ok(if partial.is_some() {
            RangeResponse::Partial(stream)
        } else {
            RangeResponse::Full(stream)
        })
    }

    /// Sends `request` and waits for the response headers, within the deadline and (when the
    /// floor is on) within the first throughput window.
    async fn send(
        &self,
        request: reqwest::Request,
        started: Instant,
        shown: &str,
    ) -> Result<reqwest::Response, TransportError> {
        if self.no_system_roots && request.url().scheme() == "https" {
            return Err(other(shown, TransferError::NoCaCertificates));
        }
        let limits = self.limits;
        let deadline = started.checked_add(limits.deadline);
        let first_window = limits
            .floor_enabled()
            .then(|| started.checked_add(limits.throughput_window))
            .flatten();
        let limit = match (deadline, first_window) {
            (Some(deadline), Some(window)) if window < deadline => Some((
                window,
                TransferError::Throughput {
                    received: 0,
                    over: limits.throughput_window,
                    floor: limits.min_throughput,
                },
            )),
            (Some(deadline), _) => Some((
                deadline,
                TransferError::Deadline {
                    limit: limits.deadline,
                },
            )),
            (None, Some(window)) => Some((
                window,
                TransferError::Throughput {
                    received: 0,
                    over: limits.throughput_window,
                    floor: limits.min_throughput,
                },
            )),
            (None, None) => None,
        };
        let sent = match limit {
            Some((at, why)) => {
                match tokio::time::timeout_at(at, self.client.execute(request)).await {
                    Ok(sent) => sent,
                    Err(_elapsed) => {
                        tracing::debug!(url = %shown, error = %why, "no response in time");
                        return Err(other(shown, why));
                    }
                }
            }
            None => self.client.execute(request).await,
        };
        sent.map_err(|e| other(shown, e.without_url()))
    }
}

#[async_trait]
impl Transport for MoltTransport {
    async fn fetch(&self, url: Url) -> Result<TransportStream, TransportError> {
        match url.scheme() {
            "file" => self.file(url).await,
            "http" | "https" => Ok(self.http(url, None).await?.into_stream()),
            _ => Err(TransportError::new(
                TransportErrorKind::UnsupportedUrlScheme,
                display_url(&url),
            )),
        }
    }
}

/// The answer to a signed request that was refused. A missing key reads as 403 when the
/// caller may not list the bucket, so that stays "not found" (TUF probes for files that may
/// not exist); refused credentials are an error of their own that names the server's code,
/// so the operator fixes the credentials instead of the repository.
async fn signed_refusal(
    signer: &dyn RequestSigner,
    response: reqwest::Response,
    shown: &str,
) -> TransportError {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() > 16 * 1024 {
            break;
        }
    }
    match signer.credentials_refused(&body) {
        Some(code) => {
            tracing::debug!(url = %shown, %code, "the server refused the signed request");
            other(shown, TransferError::CredentialsRefused { code })
        }
        None => status_error(StatusCode::FORBIDDEN, shown),
    }
}

fn status_error(status: StatusCode, shown: &str) -> TransportError {
    let kind = match status {
        StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => TransportErrorKind::FileNotFound,
        _ => TransportErrorKind::Other,
    };
    tracing::debug!(url = %shown, %status, "unsuccessful status");
    transport_error(
        kind,
        shown,
        TransferError::Status {
            status: status.as_u16(),
        },
    )
}

fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        // `previous` holds every URL requested so far, the original one first.
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(TransferError::TooManyRedirects { max: MAX_REDIRECTS });
        }
        let from = attempt
            .previous()
            .last()
            .map(|url| url.scheme().to_owned())
            .unwrap_or_default();
        let to = attempt.url().scheme().to_owned();
        if from == to || (from == "http" && to == "https") {
            attempt.follow()
        } else {
            attempt.error(TransferError::RedirectScheme { from, to })
        }
    })
}

/// A parsed `Content-Range: bytes <start>-<end>/<total|*>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ContentRange {
    start: u64,
    end: u64,
    total: Option<u64>,
}

impl ContentRange {
    fn parse(value: &str) -> Option<Self> {
        let rest = value.trim().strip_prefix("bytes ")?;
        let (range, total) = rest.split_once('/')?;
        let (start, end) = range.split_once('-')?;
        let start = parse_digits(start)?;
        let end = parse_digits(end)?;
        let total = match total {
            "*" => None,
            total => Some(parse_digits(total)?),
        };
        let valid = start <= end && total.is_none_or(|total| end < total);
        valid.then_some(Self { start, end, total })
    }

    fn len(&self) -> u64 {
        // `parse` guarantees start <= end, and end < u64::MAX whenever a total exists; the
        // saturation only matters for `bytes 0-18446744073709551615/*`.
        (self.end - self.start).saturating_add(1)
    }
}

/// The total in a 416's `Content-Range: bytes */<total>`.
fn unsatisfied_range_total(value: &str) -> Option<u64> {
    parse_digits(value.trim().strip_prefix("bytes */")?)
}

/// Digits only: `u64::from_str` would also take a leading `+`.
fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

// =====================================================================================
// Deadline and throughput floor

/// The throughput over the last window, kept in [`SLOTS`] buckets.
#[derive(Debug)]
struct ThroughputWindow {
    start: Instant,
    window: Duration,
    slot_nanos: u64,
    floor: u64,
    /// `(slot number, bytes)`, oldest first; at most `SLOTS + 1` entries.
    buckets: VecDeque<(u64, u64)>,
}

impl ThroughputWindow {
    fn new(start: Instant, limits: Limits) -> Option<Self> {
        if !limits.floor_enabled() {
            return None;
        }
        let window = limits.throughput_window;
        let slot = (window / 10).max(MIN_SLOT);
        Some(Self {
            start,
            window,
            slot_nanos: u64::try_from(slot.as_nanos()).unwrap_or(u64::MAX),
            floor: limits.min_throughput,
            buckets: VecDeque::with_capacity(usize::try_from(SLOTS + 1).unwrap_or(0)),
        })
    }

    fn slot_of(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        u64::try_from(elapsed / u128::from(self.slot_nanos)).unwrap_or(u64::MAX)
    }

    /// When slot `slot` starts (`None` if that is beyond what an `Instant` can hold).
    fn slot_start(&self, slot: u64) -> Option<Instant> {
        let offset = u128::from(slot) * u128::from(self.slot_nanos);
        self.start
            .checked_add(Duration::from_nanos(u64::try_from(offset).ok()?))
    }

    fn record(&mut self, now: Instant, bytes: u64) {
        let slot = self.slot_of(now);
        match self.buckets.back_mut() {
            Some((last, total)) if *last == slot => *total = total.saturating_add(bytes),
            _ => self.buckets.push_back((slot, bytes)),
        }
        self.evict(slot);
    }

    fn evict(&mut self, current: u64) {
        while let Some(&(slot, _)) = self.buckets.front() {
            if slot.saturating_add(SLOTS) <= current {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// Checks the floor over the last window; the first window is grace.
    fn check(&mut self, now: Instant) -> Result<(), TransferError> {
        if now.saturating_duration_since(self.start) < self.window {
            return Ok(());
        }
        let current = self.slot_of(now);
        self.evict(current);
        let first = current.saturating_add(1).saturating_sub(SLOTS);
        let Some(span_start) = self.slot_start(first) else {
            return Ok(());
        };
        let over = now.saturating_duration_since(span_start);
        let received: u64 = self
            .buckets
            .iter()
            .filter(|(slot, _)| *slot >= first)
            .map(|(_, bytes)| *bytes)
            .fold(0, u64::saturating_add);
        let required = u128::from(self.floor) * over.as_nanos() / 1_000_000_000;
        if u128::from(received) < required {
            Err(TransferError::Throughput {
                received,
                over,
                floor: self.floor,
            })
        } else {
            Ok(())
        }
    }

    /// When the next check is due if no bytes arrive: the next slot boundary.
    fn next_check(&self, now: Instant) -> Option<Instant> {
        self.slot_start(self.slot_of(now).saturating_add(1))
    }
}

/// A body stream under the deadline and the throughput floor, which also checks the length
/// the server announced. After its first error it ends.
struct Guarded {
    inner: TransportStream,
    url: String,
    deadline: Option<Instant>,
    deadline_limit: Duration,
    window: Option<ThroughputWindow>,
    timer: Pin<Box<Sleep>>,
    expected: Option<u64>,
    received: u64,
    done: bool,
}

impl Guarded {
    /// `started` is when the request was sent: the deadline counts from there.
    fn new(
        inner: TransportStream,
        limits: Limits,
        started: Instant,
        url: String,
        expected: Option<u64>,
    ) -> Self {
        let deadline = started.checked_add(limits.deadline);
        Self {
            inner,
            url,
            deadline,
            deadline_limit: limits.deadline,
            // The body's throughput is measured from now: the headers have just arrived
            // (`send` bounded their wait by one window).
            window: ThroughputWindow::new(Instant::now(), limits),
            // Re-armed before every `Pending`; never polled before that.
            timer: Box::pin(tokio::time::sleep_until(started)),
            expected,
            received: 0,
            done: false,
        }
    }

    fn check(&mut self, now: Instant) -> Result<(), TransferError> {
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            return Err(TransferError::Deadline {
                limit: self.deadline_limit,
            });
        }
        match &mut self.window {
            Some(window) => window.check(now),
            None => Ok(()),
        }
    }

    fn fail(&mut self, error: TransferError) -> Poll<Option<Result<Bytes, TransportError>>> {
        self.done = true;
        tracing::debug!(url = %self.url, received = self.received, %error, "transfer aborted");
        Poll::Ready(Some(Err(other(&self.url, error))))
    }
}

impl Stream for Guarded {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let now = Instant::now();
        if let Err(error) = this.check(now) {
            return this.fail(error);
        }
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
                this.received = this.received.saturating_add(len);
                if let Some(expected) = this.expected
                    && this.received > expected
                {
                    let received = this.received;
                    return this.fail(TransferError::LengthMismatch { expected, received });
                }
                if let Some(window) = &mut this.window {
                    window.record(now, len);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.done = true;
                tracing::debug!(url = %this.url, received = this.received, %error, "transfer failed");
                Poll::Ready(Some(Err(error)))
            }
            Poll::Ready(None) => {
                if let Some(expected) = this.expected
                    && this.received != expected
                {
                    let received = this.received;
                    return this.fail(TransferError::LengthMismatch { expected, received });
                }
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let next_check = this.window.as_ref().and_then(|w| w.next_check(now));
                let wake_at = match (this.deadline, next_check) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if let Some(at) = wake_at {
                    if this.timer.deadline() != at {
                        this.timer.as_mut().reset(at);
                    }
                    if this.timer.as_mut().poll(cx).is_ready() {
                        // Already due: come back at once to run the checks.
                        cx.waker().wake_by_ref();
                    }
                }
                Poll::Pending
            }
        }
    }
}

// =====================================================================================

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    fn direct() -> HttpSettings {
        HttpSettings {
            proxy: ProxySettings::none(),
            ..HttpSettings::default()
        }
    }

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// A one-thread HTTP responder: answers each of `responses` to one connection in turn
    /// (reading the request head first) and sends each request head back on the channel.
    fn canned_server(responses: Vec<String>) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for response in responses {
                let Ok((mut stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                let _ = tx.send(head);
                let _ = stream.write_all(response.as_bytes());
            }
        });
        (format!("http://{addr}"), rx)
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn proxy_settings_follow_the_environment_conventions() {
        let settings = ProxySettings::from_lookup(lookup(&[
            ("HTTPS_PROXY", "http://upper:3128"),
            ("https_proxy", "http://lower:3128"),
            ("HTTP_PROXY", ""),
            ("http_proxy", "http://lower-http:3128"),
            ("no_proxy", "169.254.169.254,.internal"),
        ]));
        assert_eq!(settings.https.as_deref(), Some("http://upper:3128"));
        assert_eq!(settings.http.as_deref(), Some("http://lower-http:3128"));
        assert_eq!(settings.all, None);
        assert_eq!(
            settings.no_proxy.as_deref(),
            Some("169.254.169.254,.internal")
        );
        assert_eq!(
            ProxySettings::from_lookup(lookup(&[])),
            ProxySettings::none()
        );
    }

    #[test]
    fn proxy_settings_are_ignored_under_cgi() {
        let settings = ProxySettings::from_lookup(lookup(&[
            ("REQUEST_METHOD", "GET"),
            ("HTTP_PROXY", "http://attacker:8080"),
        ]));
        assert_eq!(settings, ProxySettings::none());
    }

    #[test]
    fn proxy_credentials_stay_out_of_debug_and_errors() {
        let settings = ProxySettings {
            https: Some("http://user:s3cret@proxy:3128".into()),
            ..ProxySettings::none()
        };
        assert!(!format!("{settings:?}").contains("s3cret"));

        let bad = HttpSettings {
            proxy: ProxySettings {
                https: Some("http://user:s3cret@[not a host".into()),
                ..ProxySettings::none()
            },
            ..direct()
        };
        let error = MoltTransport::new(bad).unwrap_err();
        assert!(matches!(
            error,
            TransportSetupError::Proxy {
                setting: "HTTPS_PROXY"
            }
        ));
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }

    /// The environment's `HTTP_PROXY`, read through `from_lookup`, really routes requests:
    /// the proxy sees the absolute-form request for a host that does not even resolve.
    #[tokio::test]
    async fn http_proxy_from_the_environment_is_used() {
        let (proxy, requests) = canned_server(vec![ok("via proxy")]);
        let settings = HttpSettings {
            proxy: ProxySettings::from_lookup(lookup(&[("HTTP_PROXY", &proxy)])),
            ..direct()
        };
        let transport = MoltTransport::new(settings).unwrap();
        let url = Url::parse("http://molt-proxy-test.invalid/metadata/timestamp.json").unwrap();
        let body = transport
            .fetch(url)
            .await
            .unwrap()
            .into_vec()
            .await
            .unwrap();
        assert_eq!(body, b"via proxy");
        let head = requests.recv().unwrap();
        assert!(
            head.starts_with("GET http://molt-proxy-test.invalid/metadata/timestamp.json HTTP/1.1"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn no_proxy_bypasses_the_proxy() {
        let (origin, requests) = canned_server(vec![ok("direct")]);
        let settings = HttpSettings {
            // Nothing listens on port 9 (discard) here; going through it would fail.
            proxy: ProxySettings::from_lookup(lookup(&[
                ("HTTP_PROXY", "http://127.0.0.1:9"),
                ("NO_PROXY", "localhost,127.0.0.1"),
            ])),
            ..direct()
        };
        let transport = MoltTransport::new(settings).unwrap();
        let url = Url::parse(&format!("{origin}/a")).unwrap();
        let body = transport
            .fetch(url)
            .await
            .unwrap()
            .into_vec()
            .await
            .unwrap();
        assert_eq!(body, b"direct");
        assert!(requests.recv().unwrap().starts_with("GET /a HTTP/1.1"));
    }

    #[tokio::test]
    async fn redirects_are_limited() {
        // A server that redirects to itself forever.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..=MAX_REDIRECTS + 1 {
                let Ok((mut stream, _)) = listener.accept() else {
                    return;
                };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 && !line.ends_with("\r\n\r\n") {}
                let _ = tx.send(());
                let _ = stream.write_all(
                    format!(
                        "HTTP/1.1 302 Found\r\nLocation: http://{addr}/again\r\n\
                         Content-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .as_bytes(),
                );
            }
        });
        let transport = MoltTransport::new(direct()).unwrap();
        let url = Url::parse(&format!("http://{addr}/start?X-Amz-Signature=s3cret")).unwrap();
        let error = transport.fetch(url).await.err().unwrap();
        assert_eq!(error.kind(), TransportErrorKind::Other);
        assert!(!error.to_string().contains("s3cret"), "{error}");
        let chain = std::iter::successors(error.source(), |&e| e.source())
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        assert!(
            chain.iter().any(|e| e.contains("more than 5 redirects")),
            "{chain:?}"
        );
        assert_eq!(rx.try_iter().count(), MAX_REDIRECTS + 1);
    }

    #[tokio::test]
    async fn unsupported_schemes_are_refused() {
        let transport = MoltTransport::new(direct()).unwrap();
        for url in ["ftp://example.com/a", "s3://bucket/key"] {
            let url = Url::parse(url).unwrap();
            let error = transport.fetch(url.clone()).await.err().unwrap();
            assert_eq!(error.kind(), TransportErrorKind::UnsupportedUrlScheme);
            let error = transport.fetch_range(url, 3).await.unwrap_err();
            assert_eq!(error.kind(), TransportErrorKind::UnsupportedUrlScheme);
        }
    }

    #[test]
    fn display_url_drops_credentials() {
        let url = Url::parse(
            "https://user:pw@bucket.s3.amazonaws.com/targets/a.json?X-Amz-Signature=abc#frag",
        )
        .unwrap();
        assert_eq!(
            display_url(&url),
            "https://bucket.s3.amazonaws.com/targets/a.json"
        );
        let file = Url::parse("file:///opt/molt/repo/metadata/1.root.json").unwrap();
        assert_eq!(display_url(&file), file.as_str());
    }

    #[test]
    fn content_range_parsing() {
        let parse = ContentRange::parse;
        assert_eq!(
            parse("bytes 100-999/1000"),
            Some(ContentRange {
                start: 100,
                end: 999,
                total: Some(1000)
            })
        );
        assert_eq!(
            parse("bytes 0-9/*"),
            Some(ContentRange {
                start: 0,
                end: 9,
                total: None
            })
        );
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes +1-4/10",
            "bytes 1-/10",
            "bytes */10",
            "items 0-1/2",
            "bytes 0-1",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        assert_eq!(unsatisfied_range_total("bytes */1000"), Some(1000));
        assert_eq!(unsatisfied_range_total("bytes 0-1/2"), None);
    }

    fn limits(floor: u64, window_ms: u64) -> Limits {
        Limits {
            deadline: Duration::from_secs(60),
            min_throughput: floor,
            throughput_window: Duration::from_millis(window_ms),
        }
    }

    #[test]
    fn throughput_first_window_is_grace() {
        let t0 = Instant::now();
        let mut window = ThroughputWindow::new(t0, limits(1000, 1000)).unwrap();
        assert_eq!(window.check(t0 + Duration::from_millis(999)), Ok(()));
        assert!(matches!(
            window.check(t0 + Duration::from_millis(1000)),
            Err(TransferError::Throughput { received: 0, .. })
        ));
    }

    #[test]
    fn throughput_is_averaged_over_the_window() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut window = ThroughputWindow::new(t0, limits(1000, 1000)).unwrap();
        // 1000 bytes/s exactly, in 100-byte chunks every 100 ms, for 3 s: never below.
        for step in 0..30 {
            window.record(t0 + ms(step * 100), 100);
            assert_eq!(
                window.check(t0 + ms(step * 100 + 50)),
                Ok(()),
                "step {step}"
            );
        }
        // A burst then silence: fine while the burst is inside the window, not after.
        window.record(t0 + ms(3000), 2000);
        assert_eq!(window.check(t0 + ms(3900)), Ok(()));
        assert!(window.check(t0 + ms(4100)).is_err());
        // Old buckets are evicted: memory stays bounded.
        assert!(window.buckets.len() <= usize::try_from(SLOTS + 1).unwrap());
    }

    #[test]
    fn throughput_floor_can_be_disabled() {
        assert!(ThroughputWindow::new(Instant::now(), limits(0, 1000)).is_none());
        assert!(ThroughputWindow::new(Instant::now(), limits(1000, 0)).is_none());
    }

    #[test]
    fn transfer_errors_name_the_limit() {
        let deadline = TransferError::Deadline {
            limit: Duration::from_secs(2),
        };
        assert_eq!(
            deadline.to_string(),
            "the transfer did not finish within its deadline of 2s"
        );
        let floor = TransferError::Throughput {
            received: 10,
            over: Duration::from_millis(300),
            floor: 1024,
        };
        assert_eq!(
            floor.to_string(),
            "the transfer fell below the minimum throughput of 1024 bytes/s: 10 bytes in the last 300ms"
        );
        let rounded = TransferError::Throughput {
            received: 0,
            over: Duration::from_nanos(271_285_222),
            floor: 1,
        };
        assert!(
            rounded.to_string().ends_with("in the last 271ms"),
            "{rounded}"
        );
    }

    fn partial(content_range: Option<&str>, body: &str) -> String {
        let header = content_range
            .map(|value| format!("Content-Range: {value}\r\n"))
            .unwrap_or_default();
        format!(
            "HTTP/1.1 206 Partial Content\r\n{header}Content-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn partial_answers_must_match_the_range_asked_for() {
        let cases = [
            // Starts elsewhere than the offset.
            Some("bytes 0-4/10"),
            // Stops short of the end.
            Some("bytes 5-7/10"),
            // Disagrees with Content-Length.
            Some("bytes 5-9/*"),
            // Malformed, or missing (e.g. a multipart answer).
            Some("bytes five-nine/10"),
            None,
        ];
        let responses = cases
            .iter()
            .map(|range| {
                partial(
                    *range,
                    if *range == Some("bytes 5-9/*") {
                        "567"
                    } else {
                        "56789"
                    },
                )
            })
            .collect();
        let (origin, _requests) = canned_server(responses);
        let transport = MoltTransport::new(direct()).unwrap();
        for range in cases {
            let url = Url::parse(&format!("{origin}/a")).unwrap();
            let error = transport.fetch_range(url, 5).await.unwrap_err();
            let cause = error
                .source()
                .and_then(|e| e.downcast_ref::<TransferError>());
            assert_eq!(
                cause,
                Some(&TransferError::BadContentRange {
                    offset: 5,
                    content_range: range.map(str::to_owned),
                }),
                "{range:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_good_partial_answer_is_partial() {
        let (origin, requests) = canned_server(vec![partial(Some("bytes 5-9/10"), "56789")]);
        let transport = MoltTransport::new(direct()).unwrap();
        let url = Url::parse(&format!("{origin}/a")).unwrap();
        let response = transport.fetch_range(url, 5).await.unwrap();
        assert!(response.is_partial());
        assert_eq!(response.into_stream().into_vec().await.unwrap(), b"56789");
        assert!(requests.recv().unwrap().contains("range: bytes=5-\r\n"));
    }

    #[tokio::test]
    async fn redirects_to_other_schemes_are_refused() {
        let redirect = |location: &str| {
            format!(
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\n\
                 Content-Length: 0\r\nConnection: close\r\n\r\n"
            )
        };
        let (origin, requests) = canned_server(vec![
            redirect("ftp://127.0.0.1:9/a"),
            // Not even an HTTP URI: never followed, so the 302 itself is the answer.
            redirect("file:///etc/passwd"),
        ]);
        let transport = MoltTransport::new(direct()).unwrap();
        let url = Url::parse(&format!("{origin}/a")).unwrap();

        let error = transport.fetch(url.clone()).await.err().unwrap();
        let chain = std::iter::successors(error.source(), |&e| e.source())
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        assert!(
            chain
                .iter()
                .any(|e| e.contains("refusing to follow a redirect from http to ftp")),
            "{chain:?}"
        );

        let error = transport.fetch(url).await.err().unwrap();
        let cause = error
            .source()
            .and_then(|e| e.downcast_ref::<TransferError>());
        assert_eq!(cause, Some(&TransferError::Status { status: 302 }));
        assert_eq!(requests.try_iter().count(), 2);
    }

    fn chunks(parts: &[&'static [u8]]) -> TransportStream {
        let parts: Vec<Result<Bytes, TransportError>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Box::pin(futures::stream::iter(parts))
    }

    #[tokio::test]
    async fn the_announced_length_is_checked() {
        let limits = limits(0, 0);
        for (parts, expected, received) in [
            (&[b"01234".as_slice()][..], 10, 5),
            (&[b"01234".as_slice(), b"56789ab".as_slice()][..], 10, 12),
        ] {
            let guarded = Guarded::new(
                chunks(parts),
                limits,
                Instant::now(),
                "http://example.com/a".into(),
                Some(expected),
            );
            let error = guarded.into_vec().await.unwrap_err();
            let cause = error
                .source()
                .and_then(|e| e.downcast_ref::<TransferError>());
            assert_eq!(
                cause,
                Some(&TransferError::LengthMismatch { expected, received })
            );
        }
        let exact = Guarded::new(
            chunks(&[b"0123456789"]),
            limits,
            Instant::now(),
            "http://example.com/a".into(),
            Some(10),
        );
        assert_eq!(exact.into_vec().await.unwrap(), b"0123456789");
    }

    #[tokio::test]
    async fn huge_limits_do_not_overflow() {
        let settings = HttpSettings {
            deadline: Duration::MAX,
            throughput_window: Duration::MAX,
            ..direct()
        };
        let transport = MoltTransport::new(settings).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"0123456789").unwrap();
        let url = Url::from_file_path(&path).unwrap();
        let body = transport
            .fetch(url.clone())
            .await
            .unwrap()
            .into_vec()
            .await
            .unwrap();
        assert_eq!(body, b"0123456789");
        let partial = transport.fetch_range(url, 4).await.unwrap();
        assert!(partial.is_partial());
        assert_eq!(partial.into_stream().into_vec().await.unwrap(), b"456789");
    }
}
