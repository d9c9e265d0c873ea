//! SigV4 access to S3 objects over molt's transport, without the AWS SDK.
//!
//! Two users need it: the updater reading a private repository (`source = "s3://bucket/prefix"`)
//! and the agent uploading small report objects (`report = "s3://bucket/prefix"`). The release
//! tool, which lists and reads the reports back, uses the AWS SDK instead.
//!
//! - [`S3Location`]: a parsed `s3://bucket/prefix/`.
//! - [`S3Endpoint`]: where requests go. An explicit endpoint, else `AWS_ENDPOINT_URL_S3`, else
//!   `AWS_ENDPOINT_URL` (both path-style, `{endpoint}/{bucket}/{key}`, as the AWS SDKs honour
//!   them), else AWS itself, virtual-hosted: `https://{bucket}.s3.{region}.{domain}/{key}`.
//! - [`S3Signer`]: signs a request in place (SigV4, service `s3`) with credentials from a
//!   [`SharedCredentialsProvider`] (the default chain, through aws-config, in production). It
//!   is the transport's [`RequestSigner`], which also reads S3's refusals.
//! - [`put_object`]: the one write molt makes from a host, mapping S3's answers (403, 404
//!   `NoSuchBucket`, a bucket in another region, ...) to an [`S3Error`] that says what to fix.
//!
//! S3's XML error bodies are read with `aws-smithy-xml` (the tokenizer the AWS SDK uses,
//! already in the tree through aws-config), bounded to [`MAX_ERROR_BODY`] bytes.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_sigv4::http_request::{
    PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use url::Url;

use crate::transport::{MoltTransport, RequestSigner, TransportError, display_url};
use molt_schema::region::Region;

/// The longest object key S3 accepts, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// How much of an error answer is read to find `<Code>` and `<Message>`.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// How much of a server's `<Code>` or `<Message>` makes it into an error message.
const MAX_SHOWN: usize = 256;

/// The environment variables that name an S3 endpoint, in order of precedence.
pub const ENDPOINT_VARS: [&str; 2] = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"];

/// Set to `true`, the AWS SDKs ignore [`ENDPOINT_VARS`]; so does molt.
pub const IGNORE_ENDPOINT_VAR: &str = "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS";

const X_AMZ_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");
const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
const X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
const X_AMZ_BUCKET_REGION: &str = "x-amz-bucket-region";

/// Everything that can go wrong between molt and S3. URLs in messages never carry a query
/// (it may hold a continuation token) or user info.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("invalid S3 location {value:?}: {reason} (write s3://bucket/prefix/)")]
    BadLocation { value: String, reason: String },

    #[error("invalid S3 object key {key:?}: {reason}")]
    BadKey { key: String, reason: &'static str },

    #[error(
        "invalid S3 endpoint {value} from {from}: {reason} (an endpoint looks like http://127.0.0.1:9000 or https://s3.example.com)"
    )]
    BadEndpoint {
        /// The value, quoted, or a note when showing it would leak credentials.
        value: String,
        from: String,
        reason: &'static str,
    },

    #[error(
        "no AWS credentials found for {target}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or an instance profile"
    )]
    NoCredentials {
        target: String,
        #[source]
        source: CredentialsError,
    },

    #[error("could not load the AWS credentials for {target}")]
    Credentials {
        target: String,
        #[source]
        source: CredentialsError,
    },

    #[error("could not sign the request to {url}: {reason}")]
    Signing { url: String, reason: String },

    /// `request` is the method and the URL, as in `PUT https://…`.
    #[error("{request} failed")]
    Request {
        request: String,
        #[source]
        source: Box<TransportError>,
    },

    #[error("{request} was refused (HTTP 403 {code}: {message}); {hint}")]
    AccessDenied {
        request: String,
        code: String,
        message: String,
        hint: &'static str,
    },

    #[error(
        "{request}: the bucket does not exist (404 NoSuchBucket); check the bucket name, the region and the endpoint"
    )]
    NoSuchBucket { request: String },

    #[error("{request}: no such object (HTTP 404 {code})")]
    NotFound { request: String, code: String },

    #[error(
        "{request}: the bucket is in region {bucket_region} (HTTP {status}); use that region, or its endpoint"
    )]
    WrongRegion {
        request: String,
        status: u16,
        bucket_region: String,
    },

    #[error("{request}: HTTP {status} {code}: {message}")]
    Status {
        request: String,
        status: u16,
        code: String,
        message: String,
    },
}

// ------------------------------------------------------------------------------------------
// Locations

/// A bucket and a key prefix: `s3://bucket/prefix/`.
///
/// The bucket follows S3's naming rules. The prefix is stored without a leading slash and,
/// unless empty, with exactly one trailing slash, so `s3://b/reports` and `s3://b/reports/`
/// are the same location. A prefix with an empty (`//`), `.` or `..` segment is refused:
/// URLs cannot carry those faithfully.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct S3Location {
    bucket: String,
    prefix: String,
}

impl S3Location {
    /// A location from its parts, checked as [`FromStr`] checks them.
    pub fn new(bucket: &str, prefix: &str) -> Result<S3Location, S3Error> {
        let shown = format!("s3://{bucket}/{prefix}");
        let bad = |reason: String| S3Error::BadLocation {
            value: shown.clone(),
            reason,
        };
        check_bucket(bucket).map_err(|r| bad(format!("bucket {bucket:?} {r}")))?;
        let trimmed = prefix.trim_start_matches('/');
        let body = trimmed.strip_suffix('/').unwrap_or(trimmed);
        let prefix = if body.is_empty() {
            String::new()
        } else {
            check_key(body).map_err(|r| bad(format!("prefix {body:?}: {r}")))?;
            format!("{body}/")
        };
        Ok(S3Location {
            bucket: bucket.to_owned(),
            prefix,
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The key prefix: empty, or ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full key of `name` under this prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{}", self.prefix, name.trim_start_matches('/'))
    }

    /// The URL of the object with the full key `key` (see [`S3Location::key`]), at the endpoint
    /// the environment names, else at AWS in `region` (see [`S3Endpoint::resolve`]).
    pub fn object_url(
        &self,
        key: &str,
        region: &Region,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Url, S3Error> {
        S3Endpoint::resolve(None, region, None, lookup)?.object_url(&self.bucket, key)
    }

    /// The base URL of this prefix (ending in `/`), at the endpoint the environment names,
    /// else at AWS in `region`. Relative names join onto it.
    pub fn base_url(
        &self,
        region: &Region,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Url, S3Error> {
        S3Endpoint::resolve(None, region, None, lookup)?.prefix_url(self)
    }
}

impl FromStr for S3Location {
    type Err = S3Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| S3Error::BadLocation {
            value: s.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it must start with s3://"))?;
        if rest.contains(['?', '#']) {
            return Err(bad("an s3:// location has no query or fragment"));
        }
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is missing"));
        }
        S3Location::new(bucket, prefix).map_err(|e| match e {
            S3Error::BadLocation { reason, .. } => S3Error::BadLocation {
                value: s.to_owned(),
                reason,
            },
            other => other,
        })
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// S3's bucket naming rules (general purpose buckets).
fn check_bucket(name: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&name.len()) {
        return Err("must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err("may hold only lower-case letters, digits, '.' and '-'");
    }
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !alnum(name.bytes().next()) || !alnum(name.bytes().last()) {
        return Err("must begin and end with a letter or a digit");
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return Err("must not hold '..', '.-' or '-.'");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("must not look like an IP address");
    }
    for prefix in ["xn--", "sthree-", "amzn-s3-demo-"] {
        if name.starts_with(prefix) {
            return Err("uses a prefix that S3 reserves (xn--, sthree-, amzn-s3-demo-)");
        }
    }
    for suffix in ["-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"] {
        if name.ends_with(suffix) {
            return Err(
                "uses a suffix that S3 reserves (-s3alias, --ol-s3, .mrap, --x-s3, --table-s3)",
            );
        }
    }
    Ok(())
}

/// What molt accepts as an object key (or a prefix without its trailing slash).
fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("is empty");
    }
    if key.len() > MAX_KEY_LEN {
        return Err("is longer than 1024 bytes");
    }
    if key.chars().any(char::is_control) {
        return Err("holds a control character");
    }
    if key.starts_with('/') {
        return Err("starts with '/'");
    }
    // A trailing slash ("folder/") is a key like any other; an empty segment elsewhere is not.
    let body = key.strip_suffix('/').unwrap_or(key);
    for segment in body.split('/') {
        match segment {
            "" => return Err("has an empty segment ('//')"),
            "." | ".." => return Err("has a '.' or '..' segment, which URLs cannot carry"),
            _ => {}
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Endpoints and URLs

/// Where S3 requests go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum S3Endpoint {
    /// Path-style at an explicit endpoint (a local server, MinIO, a VPC endpoint):
    /// `{base}/{bucket}/{key}`.
    PathStyle {
        /// `http(s)://host[:port][/path]`, without a trailing slash.
        base: Url,
        /// Where the endpoint came from: `"the endpoint setting"` or an environment variable.
        from: String,
    },
    /// AWS itself, virtual-hosted: `https://{bucket}.s3.{region}.{domain}/{key}`. Buckets
    /// with a dot in their name do not match the wildcard certificate, so they go
    /// path-style to `https://s3.{region}.{domain}/{bucket}/{key}`, as the SDKs do.
    Aws { region: Region, domain: String },
}

impl S3Endpoint {
    /// The explicit endpoint if given, else `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`
    /// (unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`), else AWS in `region`, with the
    /// partition's domain or `domain_override`. Empty values count as unset.
    pub fn resolve(
        explicit: Option<&str>,
        region: &Region,
        domain_override: Option<&str>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<S3Endpoint, S3Error> {
        if let Some(value) = explicit.filter(|v| !v.is_empty()) {
            return S3Endpoint::path_style(value, "the endpoint setting");
        }
        let ignore =
            lookup(IGNORE_ENDPOINT_VAR).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        if !ignore {
            for var in ENDPOINT_VARS {
                if let Some(value) = lookup(var).filter(|v| !v.trim().is_empty()) {
                    return S3Endpoint::path_style(value.trim(), var);
                }
            }
        }
        Ok(S3Endpoint::Aws {
            region: region.clone(),
            domain: region.domain(domain_override).to_owned(),
        })
    }

    /// A path-style endpoint from its URL; `from` names the setting, for messages.
    pub fn path_style(value: &str, from: &str) -> Result<S3Endpoint, S3Error> {
        let bad = |shown: String, reason| S3Error::BadEndpoint {
            value: shown,
            from: from.to_owned(),
            reason,
        };
        let quoted = format!("{value:?}");
        let url = Url::parse(value).map_err(|_| bad(quoted.clone(), "not a URL"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "(not shown: it holds credentials)".to_owned(),
                "credentials do not belong in the endpoint URL; use the AWS credential chain",
            ));
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(quoted, "the scheme must be http or https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad(quoted, "the host is missing"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad(quoted, "an endpoint has no query or fragment"));
        }
        let mut base = url;
        let path = base.path().trim_end_matches('/').to_owned();
        base.set_path(&path);
        Ok(S3Endpoint::PathStyle {
            base,
            from: from.to_owned(),
        })
    }

    /// The URL of `key` in `bucket`. Each segment of the key is percent-encoded as SigV4's
    /// canonical URI expects (everything but `A-Z a-z 0-9 - . _ ~`).
    pub fn object_url(&self, bucket: &str, key: &str) -> Result<Url, S3Error> {
        check_bucket(bucket).map_err(|reason| S3Error::BadLocation {
            value: format!("s3://{bucket}/{key}"),
            reason: format!("bucket {bucket:?} {reason}"),
        })?;
        check_key(key).map_err(|reason| S3Error::BadKey {
            key: key.to_owned(),
            reason,
        })?;
        self.url(bucket, &encode_key(key))
    }

    /// The base URL of a location's prefix, ending in `/`.
    pub fn prefix_url(&self, location: &S3Location) -> Result<Url, S3Error> {
        self.url(&location.bucket, &encode_key(&location.prefix))
    }

    /// `encoded_key` is already percent-encoded.
    fn url(&self, bucket: &str, encoded_key: &str) -> Result<Url, S3Error> {
        let text = match self {
            S3Endpoint::PathStyle { base, .. } => {
                let mut root = base.clone();
                root.set_path("");
                let root = root.as_str().trim_end_matches('/').to_owned();
                let path = base.path().trim_end_matches('/');
                format!("{root}{path}/{bucket}/{encoded_key}")
            }
            S3Endpoint::Aws { region, domain } if bucket.contains('.') => {
                format!("https://s3.{region}.{domain}/{bucket}/{encoded_key}")
            }
            S3Endpoint::Aws { region, domain } => {
                format!("https://{bucket}.s3.{region}.{domain}/{encoded_key}")
            }
        };
        Url::parse(&text).map_err(|e| S3Error::BadLocation {
            value: format!("s3://{bucket}/"),
            reason: format!("cannot form a URL from it ({e})"),
        })
    }
}

impl fmt::Display for S3Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            S3Endpoint::PathStyle { base, from } => {
                write!(f, "{} (path-style, from {from})", base.as_str())
            }
            S3Endpoint::Aws { region, domain } => {
                write!(f, "https://{{bucket}}.s3.{region}.{domain}/ (AWS)")
            }
        }
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// A key for a URL path as SigV4 wants it: all but the unreserved characters and the
/// slashes percent-encoded.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// Signing

/// Signs requests with SigV4 for S3, with credentials from a provider.
///
/// aws-config's default chain does not cache (the SDK clients do), and an instance profile
/// costs two IMDS round trips per lookup, so the signer keeps the last credentials it got:
/// temporary ones until [`REFRESH_BEFORE_EXPIRY`] before they expire, long-term ones for
/// [`REREAD_AFTER`] (so a rotated key in a profile is picked up). Clones share the cache.
#[derive(Clone)]
pub struct S3Signer {
    credentials: SharedCredentialsProvider,
    region: Region,
    /// What errors name: an `s3://` location, else the request's URL.
    target: Option<String>,
    cache: Arc<Mutex<Option<Cached>>>,
}

/// Temporary credentials are fetched again this long before they expire.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// Credentials without an expiry are looked up again after this long.
pub const REREAD_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Clone)]
struct Cached {
    credentials: Credentials,
    fetched: Instant,
}

impl fmt::Debug for S3Signer {
    // The provider is left out on purpose: what it holds is nobody's business in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Signer")
            .field("region", &self.region)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl S3Signer {
    pub fn new(credentials: SharedCredentialsProvider, region: Region) -> S3Signer {
        S3Signer {
            credentials,
            region,
            target: None,
            cache: Arc::new(Mutex::new(None)),
        }
    }

    /// The cached credentials if they are still good, else fresh ones from the provider.
    async fn credentials(&self) -> Result<Credentials, CredentialsError> {
        let now = SystemTime::now();
        let cached = self.cache.lock().ok().and_then(|slot| {
            slot.as_ref()
                .filter(|c| match c.credentials.expiry() {
                    Some(expiry) => expiry > now + REFRESH_BEFORE_EXPIRY,
                    None => c.fetched.elapsed() < REREAD_AFTER,
                })
                .map(|c| c.credentials.clone())
        });
        if let Some(credentials) = cached {
            return Ok(credentials);
        }
        let fresh = self.credentials.provide_credentials().await?;
        if let Ok(mut slot) = self.cache.lock() {
            *slot = Some(Cached {
                credentials: fresh.clone(),
                fetched: Instant::now(),
            });
        }
        Ok(fresh)
    }

    /// Names `location` (rather than each request's URL) in credential errors.
    pub fn for_location(mut self, location: &S3Location) -> S3Signer {
        self.target = Some(location.to_string());
        self
    }

    /// Signs a GET, HEAD or PUT in place: adds `authorization`, `x-amz-date`,
    /// `x-amz-content-sha256` (the hex SHA-256 of an in-memory body, else `UNSIGNED-PAYLOAD`)
    /// and, with temporary credentials, `x-amz-security-token`. Signing again replaces an
    /// earlier signature.
    pub async fn sign(&self, request: &mut reqwest::Request) -> Result<(), S3Error> {
        self.sign_at(request, SystemTime::now()).await
    }

    /// [`S3Signer::sign`] at a given time (tests, and callers with an injected clock).
    pub async fn sign_at(
        &self,
        request: &mut reqwest::Request,
        time: SystemTime,
    ) -> Result<(), S3Error> {
        let target = self
            .target
            .clone()
            .unwrap_or_else(|| display_url(request.url()));
        let credentials = match self.credentials().await {
            Ok(c) => c,
            Err(source @ CredentialsError::CredentialsNotLoaded(_)) => {
                return Err(S3Error::NoCredentials { target, source });
            }
            Err(source) => return Err(S3Error::Credentials { target, source }),
        };
        let url = display_url(request.url());
        let failed = |reason: String| S3Error::Signing {
            url: url.clone(),
            reason,
        };
        if request.url().host_str().is_none_or(str::is_empty) {
            return Err(failed("the URL has no host".to_owned()));
        }
        for stale in [
            AUTHORIZATION,
            X_AMZ_DATE,
            X_AMZ_CONTENT_SHA256,
            X_AMZ_SECURITY_TOKEN,
        ] {
            request.headers_mut().remove(stale);
        }

        let identity = credentials.into();
        let mut settings = SigningSettings::default();
        // S3 wants the path as sent (encoded once) and not normalised, and the payload hash
        // in `x-amz-content-sha256`.
        settings.percent_encoding_mode = PercentEncodingMode::Single;
        settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(self.region.as_str())
            .name("s3")
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| failed(e.to_string()))?
            .into();

        let instructions = {
            let mut headers = Vec::with_capacity(request.headers().len());
            for (name, value) in request.headers() {
                let value = value
                    .to_str()
                    .map_err(|_| failed(format!("the {name} header is not visible ASCII")))?;
                headers.push((name.as_str(), value));
            }
            let body = match request.body() {
                None => SignableBody::Bytes(&[]),
                Some(body) => match body.as_bytes() {
                    Some(bytes) => SignableBody::Bytes(bytes),
                    None => SignableBody::UnsignedPayload,
                },
            };
            let signable = SignableRequest::new(
                request.method().as_str(),
                request.url().as_str(),
                headers.into_iter(),
                body,
            )
            .map_err(|e| failed(e.to_string()))?;
            let (instructions, _signature) = aws_sigv4::http_request::sign(signable, &params)
                .map_err(|e| failed(e.to_string()))?
                .into_parts();
            instructions
        };
        let (headers, _query) = instructions.into_parts();
        for header in headers {
            let mut value = HeaderValue::from_str(header.value())
                .map_err(|_| failed(format!("the {} header is not valid", header.name())))?;
            value.set_sensitive(header.sensitive() || header.name() == AUTHORIZATION.as_str());
            request.headers_mut().insert(header.name(), value);
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// Requests

/// Uploads `body` to `url` (from [`S3Endpoint::object_url`]), replacing any object there,
/// through `transport` (which signs it: build it [`MoltTransport::with_signer`]).
pub async fn put_object(
    transport: &MoltTransport,
    url: Url,
    body: Vec<u8>,
    content_type: &str,
) -> Result<(), S3Error> {
    let shown = format!("PUT {}", display_url(&url));
    let mut builder = transport.request(Method::PUT, url).body(body);
    if let Ok(value) = HeaderValue::from_str(content_type) {
        builder = builder.header(CONTENT_TYPE, value);
    }
    let failed = |source: TransportError| S3Error::Request {
        request: shown.clone(),
        source: Box::new(source),
    };
    let request = builder.build().map_err(|e| {
        failed(TransportError::new_with_cause(
            crate::transport::TransportErrorKind::Other,
            shown.clone(),
            e.without_url(),
        ))
    })?;
    let response = transport.execute(request).await.map_err(failed)?;
    if response.status().is_success() {
        return Ok(());
    }
    Err(status_error(response, &Method::PUT, shown, transport.signs()).await)
}

/// Turns a non-2xx answer to `request` (`PUT https://…`) into an error, reading at most
/// [`MAX_ERROR_BODY`] bytes of it.
async fn status_error(
    mut response: reqwest::Response,
    method: &Method,
    request: String,
    signed: bool,
) -> S3Error {
    let status = response.status();
    let bucket_region = response
        .headers()
        .get(X_AMZ_BUCKET_REGION)
        .and_then(|v| v.to_str().ok())
        .map(|v| sanitize(v, 64));
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_ERROR_BODY - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    let fields = error_fields(&body);
    let code = sanitize(&fields.code.unwrap_or_default(), MAX_SHOWN);
    let message = sanitize(&fields.message.unwrap_or_default(), MAX_SHOWN);
    let or = |s: String, default: &str| {
        if s.is_empty() { default.to_owned() } else { s }
    };

    if let Some(bucket_region) = bucket_region.filter(|r| !r.is_empty())
        && (status.is_redirection()
            || code == "AuthorizationHeaderMalformed"
            || code == "PermanentRedirect"
            || code == "IllegalLocationConstraintException")
    {
        return S3Error::WrongRegion {
            request,
            status: status.as_u16(),
            bucket_region,
        };
    }
    match status {
        StatusCode::FORBIDDEN => {
            let hint = forbidden_hint(&code, method, signed);
            S3Error::AccessDenied {
                request,
                code: or(code, "AccessDenied"),
                message: or(message, "(no message)"),
                hint,
            }
        }
        StatusCode::NOT_FOUND if code == "NoSuchBucket" => S3Error::NoSuchBucket { request },
        StatusCode::NOT_FOUND => S3Error::NotFound {
            request,
            code: or(code, "NoSuchKey"),
        },
        _ => S3Error::Status {
            request,
            status: status.as_u16(),
            code: or(code, status.canonical_reason().unwrap_or("error")),
            message: or(message, "(no message)"),
        },
    }
}

/// What to do about a 403, by S3's error code.
fn forbidden_hint(code: &str, method: &Method, signed: bool) -> &'static str {
    match code {
        "SignatureDoesNotMatch" => {
            "the secret key does not match the access key ID; check AWS_SECRET_ACCESS_KEY or the profile"
        }
        "InvalidAccessKeyId" | "NotSignedUp" => {
            "this endpoint does not know the access key ID; check the credentials and the endpoint"
        }
        "RequestTimeTooSkewed" => {
            "the host's clock is more than 15 minutes off; fix the time (NTP)"
        }
        "ExpiredToken" | "TokenRefreshRequired" | "InvalidToken" => {
            "the session token has expired or is invalid; refresh the credentials"
        }
        _ if !signed => "the bucket is not public: give molt AWS credentials that may read it",
        _ if *method == Method::PUT => {
            "check that the IAM policy of these credentials allows s3:PutObject here, and that no bucket policy denies it"
        }
        _ => {
            "check that the IAM policy of these credentials allows s3:GetObject (s3:ListBucket for listings) here, and that no bucket policy denies it"
        }
    }
}

// ------------------------------------------------------------------------------------------
// S3's answers

/// The codes S3 gives a signed request whose credentials it refused (as opposed to a
/// refusal that may only mean "no such key"). `NotSignedUp` is what some S3-compatible
/// servers (s3s among them) say for an unknown access key where AWS says
/// `InvalidAccessKeyId`.
const CREDENTIAL_CODES: [&str; 6] = [
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "NotSignedUp",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
];

#[async_trait::async_trait]
impl RequestSigner for S3Signer {
    async fn sign(
        &self,
        request: &mut reqwest::Request,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        S3Signer::sign(self, request).await.map_err(Into::into)
    }

    fn credentials_refused(&self, body: &[u8]) -> Option<String> {
        let code = error_fields(body).code?;
        CREDENTIAL_CODES
            .contains(&code.as_str())
            .then(|| sanitize(&code, 64))
    }
}

/// `<Code>` and `<Message>` of an S3 `<Error>` document.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorFields {
    pub code: Option<String>,
    pub message: Option<String>,
}

/// Reads `<Error><Code>…</Code><Message>…</Message></Error>` from (at most
/// [`MAX_ERROR_BODY`] bytes of) an error body. Anything else (not UTF-8, not XML, another
/// root element, a body cut short) yields what was read before the problem, often nothing:
/// the status code still says what happened.
pub fn error_fields(body: &[u8]) -> ErrorFields {
    use aws_smithy_xml::decode::{Document, try_data};
    let mut fields = ErrorFields::default();
    let body = &body[..body.len().min(MAX_ERROR_BODY)];
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        // Cut inside a character: keep the valid start.
        Err(e) => match std::str::from_utf8(&body[..e.valid_up_to()]) {
            Ok(text) => text,
            Err(_) => return fields,
        },
    };
    let mut doc = Document::new(text);
    let Ok(mut root) = doc.root_element() else {
        return fields;
    };
    if !root.start_el().matches("Error") {
        return fields;
    }
    while let Some(mut tag) = root.next_tag() {
        let slot = if tag.start_el().matches("Code") {
            &mut fields.code
        } else if tag.start_el().matches("Message") {
            &mut fields.message
        } else {
            continue;
        };
        match try_data(&mut tag) {
            Ok(text) if slot.is_none() => *slot = Some(text.into_owned()),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    fields
}

/// Server text made fit for a message: control characters replaced, at most `max`
/// characters.
pub fn sanitize(s: &str, max: usize) -> String {
    let mut out: String = s
        .trim()
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.trim().chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;
    use std::collections::HashMap;

    fn region(s: &str) -> Region {
        s.parse().unwrap()
    }

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn locations_parse_and_normalise() {
        let cases = [
            (
                "s3://acme-molt/reports",
                "acme-molt",
                "reports/",
                "s3://acme-molt/reports/",
            ),
            (
                "s3://acme-molt/reports/",
                "acme-molt",
                "reports/",
                "s3://acme-molt/reports/",
            ),
            (
                "s3://acme-molt//a/b",
                "acme-molt",
                "a/b/",
                "s3://acme-molt/a/b/",
            ),
            ("s3://acme-molt", "acme-molt", "", "s3://acme-molt/"),
            ("s3://acme-molt/", "acme-molt", "", "s3://acme-molt/"),
            (
                "s3://my.bucket.1/x y/ü",
                "my.bucket.1",
                "x y/ü/",
                "s3://my.bucket.1/x y/ü/",
            ),
        ];
        for (text, bucket, prefix, shown) in cases {
            let l: S3Location = text.parse().unwrap();
            assert_eq!(l.bucket(), bucket, "{text}");
            assert_eq!(l.prefix(), prefix, "{text}");
            assert_eq!(l.to_string(), shown, "{text}");
            assert_eq!(l.to_string().parse::<S3Location>().unwrap(), l);
        }
        let l: S3Location = "s3://acme-molt/reports".parse().unwrap();
        assert_eq!(l.key("a/b.json"), "reports/a/b.json");
    }

    #[test]
    fn bad_locations_name_the_value() {
        let bad = [
            ("https://acme-molt/x", "must start with s3://"),
            ("s3:///x", "bucket name is missing"),
            ("s3://ab/x", "3 to 63"),
            ("s3://Acme/x", "lower-case"),
            ("s3://acme_molt/x", "lower-case"),
            ("s3://-acme/x", "begin and end"),
            ("s3://acme-/x", "begin and end"),
            ("s3://a..b/x", "'..'"),
            ("s3://192.168.1.1/x", "IP address"),
            ("s3://xn--acme/x", "reserves"),
            ("s3://acme-s3alias/x", "reserves"),
            ("s3://acme/a//b", "empty segment"),
            ("s3://acme/a/../b", "'..'"),
            ("s3://acme/./b", "'.'"),
            ("s3://acme/a?x=1", "no query"),
            ("s3://acme/a\nb", "control"),
        ];
        for (text, reason) in bad {
            let e = text.parse::<S3Location>().unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(reason), "{text}: {msg}");
            assert!(msg.contains(&format!("{text:?}")), "{text}: {msg}");
        }
        let long = format!("s3://{}/x", "a".repeat(64));
        assert!(long.parse::<S3Location>().is_err());
    }

    #[test]
    fn virtual_hosted_urls_by_partition() {
        let l: S3Location = "s3://acme-molt/repo/".parse().unwrap();
        let e = S3Endpoint::resolve(None, &region("us-east-1"), None, no_env).unwrap();
        assert_eq!(
            e.prefix_url(&l).unwrap().as_str(),
            "https://acme-molt.s3.us-east-1.amazonaws.com/repo/"
        );
        assert_eq!(
            e.object_url("acme-molt", "repo/metadata/1.root.json")
                .unwrap()
                .as_str(),
            "https://acme-molt.s3.us-east-1.amazonaws.com/repo/metadata/1.root.json"
        );
        let cn = S3Endpoint::resolve(None, &region("cn-north-1"), None, no_env).unwrap();
        assert_eq!(
            cn.object_url("acme-molt", "k").unwrap().as_str(),
            "https://acme-molt.s3.cn-north-1.amazonaws.com.cn/k"
        );
        let custom =
            S3Endpoint::resolve(None, &region("us-east-1"), Some("example.test"), no_env).unwrap();
        assert_eq!(
            custom.object_url("acme-molt", "k").unwrap().as_str(),
            "https://acme-molt.s3.us-east-1.example.test/k"
        );
        // A dotted bucket would not match the wildcard certificate: path-style instead.
        assert_eq!(
            e.object_url("my.bucket", "k").unwrap().as_str(),
            "https://s3.us-east-1.amazonaws.com/my.bucket/k"
        );
        let root: S3Location = "s3://acme-molt".parse().unwrap();
        assert_eq!(
            e.prefix_url(&root).unwrap().as_str(),
            "https://acme-molt.s3.us-east-1.amazonaws.com/"
        );
    }

    #[test]
    fn keys_are_encoded_per_segment() {
        let e = S3Endpoint::resolve(None, &region("us-east-1"), None, no_env).unwrap();
        let url = e
            .object_url("acme-molt", "a b/c+d/ü~x_y-z.json/%41&=?#")
            .unwrap();
        assert_eq!(
            url.as_str(),
            "https://acme-molt.s3.us-east-1.amazonaws.com/a%20b/c%2Bd/%C3%BC~x_y-z.json/%2541%26%3D%3F%23"
        );
        for bad in ["", "a/../b", "./a", "a//b", "/a"] {
            assert!(e.object_url("acme-molt", bad).is_err(), "{bad:?}");
        }
        let l: S3Location = "s3://acme-molt/my reports/".parse().unwrap();
        assert_eq!(
            e.prefix_url(&l).unwrap().as_str(),
            "https://acme-molt.s3.us-east-1.amazonaws.com/my%20reports/"
        );
    }

    #[test]
    fn endpoint_precedence() {
        let r = region("eu-west-1");
        let both = env(&[
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9999"),
        ]);
        // The explicit endpoint wins over both variables.
        let e = S3Endpoint::resolve(Some("http://localhost:1234/s3/"), &r, None, &both).unwrap();
        assert_eq!(
            e.object_url("acme", "a/b").unwrap().as_str(),
            "http://localhost:1234/s3/acme/a/b"
        );
        // The S3-specific variable wins over the general one.
        let e = S3Endpoint::resolve(None, &r, None, &both).unwrap();
        assert_eq!(
            e.object_url("acme", "a/b").unwrap().as_str(),
            "http://127.0.0.1:9000/acme/a/b"
        );
        assert!(e.to_string().contains("AWS_ENDPOINT_URL_S3"), "{e}");
        let l: S3Location = "s3://acme/p".parse().unwrap();
        assert_eq!(
            e.prefix_url(&l).unwrap().as_str(),
            "http://127.0.0.1:9000/acme/p/"
        );
        // The general one alone; an empty S3 one counts as unset.
        let general = env(&[
            ("AWS_ENDPOINT_URL_S3", ""),
            ("AWS_ENDPOINT_URL", "https://s3.internal.example"),
        ]);
        let e = S3Endpoint::resolve(None, &r, None, &general).unwrap();
        assert_eq!(
            e.object_url("acme", "k").unwrap().as_str(),
            "https://s3.internal.example/acme/k"
        );
        // The SDKs' switch to ignore them.
        let ignored = env(&[
            ("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000"),
            ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
        ]);
        let e = S3Endpoint::resolve(None, &r, None, &ignored).unwrap();
        assert!(matches!(e, S3Endpoint::Aws { .. }));
        // The convenience methods on a location use the same rules.
        let local = env(&[("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")]);
        assert_eq!(
            l.base_url(&r, &local).unwrap().as_str(),
            "http://127.0.0.1:9000/acme/p/"
        );
        assert_eq!(
            l.object_url(&l.key("x.json"), &r, &local).unwrap().as_str(),
            "http://127.0.0.1:9000/acme/p/x.json"
        );
    }

    #[test]
    fn bad_endpoints_are_named_and_never_show_credentials() {
        let r = region("us-east-1");
        for (value, reason) in [
            ("127.0.0.1:9000", "not a URL"),
            ("ftp://host", "http or https"),
            ("http://host/?x=1", "no query"),
        ] {
            let lookup = env(&[("AWS_ENDPOINT_URL_S3", value)]);
            let msg = S3Endpoint::resolve(None, &r, None, lookup)
                .unwrap_err()
                .to_string();
            assert!(msg.contains(reason), "{msg}");
            assert!(msg.contains("AWS_ENDPOINT_URL_S3"), "{msg}");
        }
        let msg = S3Endpoint::resolve(Some("http://user:hunter2@host"), &r, None, no_env)
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(msg.contains("credentials"), "{msg}");
    }

    fn signer(token: Option<&str>) -> S3Signer {
        let creds = Credentials::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            token.map(str::to_owned),
            None,
            "test",
        );
        S3Signer::new(SharedCredentialsProvider::new(creds), region("us-east-1"))
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn header<'a>(r: &'a reqwest::Request, name: &str) -> &'a str {
        r.headers().get(name).unwrap().to_str().unwrap()
    }

    /// The worked example from AWS's S3 documentation ("Signature Calculations for the
    /// Authorization Header: Transferring Payload in a Single Chunk", GET Object).
    #[tokio::test]
    async fn signs_the_documented_get_example() {
        let url = Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        let mut request = reqwest::Request::new(Method::GET, url);
        request
            .headers_mut()
            .insert("range", HeaderValue::from_static("bytes=0-9"));
        // 2013-05-24T00:00:00Z
        signer(None)
            .sign_at(&mut request, at(1_369_353_600))
            .await
            .unwrap();
        assert_eq!(
            header(&request, "authorization"),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert_eq!(
            header(&request, "x-amz-content-sha256"),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(header(&request, "x-amz-date"), "20130524T000000Z");
        assert!(
            request
                .headers()
                .get("authorization")
                .unwrap()
                .is_sensitive()
        );
    }

    #[tokio::test]
    async fn signs_a_put_with_the_body_hash_and_the_session_token() {
        let url = Url::parse("http://127.0.0.1:9000/acme/reports/a%20b.json").unwrap();
        let body = b"{\"ok\":true}".to_vec();
        let client = reqwest::Client::new();
        let mut request = client
            .put(url)
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone())
            .build()
            .unwrap();
        signer(Some("SESSION-TOKEN"))
            .sign_at(&mut request, at(1_700_000_000))
            .await
            .unwrap();
        let auth = header(&request, "authorization");
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20231114/us-east-1/s3/aws4_request, "
            ),
            "{auth}"
        );
        assert!(
            auth.contains(
                "SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"
            ),
            "{auth}"
        );
        assert_eq!(
            header(&request, "x-amz-content-sha256"),
            hex::encode(sha2::Sha256::digest(&body))
        );
        assert_eq!(header(&request, "x-amz-security-token"), "SESSION-TOKEN");
        assert!(!auth.contains("wJalr"), "{auth}");

        // Signing again (a retry) replaces the signature rather than stacking one.
        let first = auth.to_owned();
        signer(None)
            .sign_at(&mut request, at(1_700_000_060))
            .await
            .unwrap();
        assert_ne!(header(&request, "authorization"), first);
        assert!(request.headers().get("x-amz-security-token").is_none());
        assert_eq!(request.headers().get_all("authorization").iter().count(), 1);
    }

    #[tokio::test]
    async fn a_streamed_body_is_unsigned_payload() {
        let url = Url::parse("http://127.0.0.1:9000/acme/big").unwrap();
        let mut request = reqwest::Request::new(Method::PUT, url);
        let stream =
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x"))]);
        *request.body_mut() = Some(reqwest::Body::wrap_stream(stream));
        signer(None)
            .sign_at(&mut request, at(1_700_000_000))
            .await
            .unwrap();
        assert_eq!(header(&request, "x-amz-content-sha256"), "UNSIGNED-PAYLOAD");
    }

    #[tokio::test]
    async fn missing_credentials_say_what_to_set() {
        use aws_credential_types::provider::future;
        #[derive(Debug)]
        struct Nothing;
        impl ProvideCredentials for Nothing {
            fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
            where
                Self: 'a,
            {
                future::ProvideCredentials::ready(Err(CredentialsError::not_loaded("no provider")))
            }
        }
        let location: S3Location = "s3://acme-reports/hosts".parse().unwrap();
        let signer = S3Signer::new(SharedCredentialsProvider::new(Nothing), region("us-east-1"))
            .for_location(&location);
        let url = Url::parse("https://acme-reports.s3.us-east-1.amazonaws.com/hosts/x").unwrap();
        let mut request = reqwest::Request::new(Method::PUT, url);
        let e = signer.sign(&mut request).await.unwrap_err();
        assert!(matches!(e, S3Error::NoCredentials { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "no AWS credentials found for s3://acme-reports/hosts/: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or an instance profile"
        );
    }

    /// A provider that counts its calls and hands out credentials expiring at `expiry`.
    #[derive(Debug)]
    struct Counting {
        calls: std::sync::atomic::AtomicUsize,
        expiry: Option<SystemTime>,
    }

    impl ProvideCredentials for Counting {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            aws_credential_types::provider::future::ProvideCredentials::ready(Ok(Credentials::new(
                "AKID",
                "SECRET",
                None,
                self.expiry,
                "counting",
            )))
        }
    }

    #[tokio::test]
    async fn credentials_are_cached_until_near_expiry() {
        let url = Url::parse("http://127.0.0.1:9000/acme/k").unwrap();
        for (expiry, expected_calls) in [
            (None, 1),
            (Some(SystemTime::now() + Duration::from_secs(3600)), 1),
            // Expiring within the refresh margin: looked up every time.
            (Some(SystemTime::now() + Duration::from_secs(60)), 3),
        ] {
            let provider = Arc::new(Counting {
                calls: std::sync::atomic::AtomicUsize::new(0),
                expiry,
            });
            let signer = S3Signer::new(
                SharedCredentialsProvider::new(ArcProvider(provider.clone())),
                region("us-east-1"),
            );
            let clone = signer.clone();
            for s in [&signer, &clone, &signer] {
                let mut request = reqwest::Request::new(Method::GET, url.clone());
                s.sign(&mut request).await.unwrap();
                assert!(header(&request, "authorization").contains("Credential=AKID/"));
            }
            assert_eq!(
                provider.calls.load(std::sync::atomic::Ordering::SeqCst),
                expected_calls,
                "{expiry:?}"
            );
        }
    }

    #[derive(Debug)]
    struct ArcProvider(Arc<Counting>);

    impl ProvideCredentials for ArcProvider {
        fn provide_credentials<'a>(
            &'a self,
        ) -> aws_credential_types::provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            self.0.provide_credentials()
        }
    }

    /// Callers embed `S3Error` in their own errors; keep it well under clippy's
    /// `result_large_err` threshold (128 bytes).
    #[test]
    fn the_error_stays_small() {
        assert!(
            std::mem::size_of::<S3Error>() <= 96,
            "{}",
            std::mem::size_of::<S3Error>()
        );
    }

    #[test]
    fn signer_debug_shows_no_secret() {
        let shown = format!("{:?}", signer(Some("TOKEN-VALUE")));
        assert!(!shown.contains("wJalr"), "{shown}");
        assert!(!shown.contains("TOKEN-VALUE"), "{shown}");
        assert!(shown.contains("us-east-1"), "{shown}");
    }

    #[test]
    fn error_bodies_are_read_with_the_xml_tokenizer() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message><BucketName>acme</BucketName></Error>";
        assert_eq!(
            error_fields(body),
            ErrorFields {
                code: Some("NoSuchBucket".into()),
                message: Some("The specified bucket does not exist".into()),
            }
        );
        // Entities and character references, attributes on the root, nested elements.
        let body = br#"<Error xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Details><Code>not this</Code></Details><Code>A&amp;B</Code><Message>&lt;x&gt; &#65;&#x42;</Message></Error>"#;
        let f = error_fields(body);
        assert_eq!(f.code.as_deref(), Some("A&B"));
        assert_eq!(f.message.as_deref(), Some("<x> AB"));
        // What an attacker or a broken proxy may send: nothing usable, and no panic.
        for bad in [
            &b""[..],
            b"not xml",
            b"<Code>unterminated",
            b"<ListBucketResult><Code>AccessDenied</Code></ListBucketResult>",
            b"<Error><Code>a&bogus;</Code></Error>",
            b"\xff\xfe<Error>",
            b"<html><body>503 Service Unavailable</body></html>",
        ] {
            assert_eq!(error_fields(bad).code, None, "{bad:?}");
        }
        // A body cut inside a UTF-8 character keeps what came before.
        let mut cut = "<Error><Code>Tëst</Code><Message>é".as_bytes().to_vec();
        cut.pop();
        assert_eq!(error_fields(&cut).code.as_deref(), Some("Tëst"));
        // Only the first MAX_ERROR_BODY bytes are looked at.
        let mut long = b"<Error><Message>".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_ERROR_BODY));
        long.extend(b"</Message><Code>Late</Code></Error>");
        assert_eq!(error_fields(&long).code, None);
    }

    #[test]
    fn credential_refusals_are_told_from_missing_keys() {
        let s = signer(None);
        let refused = b"<Error><Code>SignatureDoesNotMatch</Code></Error>";
        assert_eq!(
            s.credentials_refused(refused).as_deref(),
            Some("SignatureDoesNotMatch")
        );
        assert_eq!(
            s.credentials_refused(b"<Error><Code>AccessDenied</Code></Error>"),
            None
        );
        assert_eq!(s.credentials_refused(b"garbage"), None);
    }

    #[test]
    fn sanitising() {
        assert_eq!(sanitize("a\u{1b}[31mb", 100), "a?[31mb");
        assert_eq!(sanitize(&"x".repeat(300), 5), "xxxxx…");
    }

    #[test]
    fn forbidden_hints_name_the_fix() {
        assert!(forbidden_hint("SignatureDoesNotMatch", &Method::PUT, true).contains("secret key"));
        assert!(forbidden_hint("RequestTimeTooSkewed", &Method::GET, true).contains("clock"));
        assert!(forbidden_hint("AccessDenied", &Method::GET, false).contains("credentials"));
        assert!(forbidden_hint("AccessDenied", &Method::PUT, true).contains("s3:PutObject"));
    }
}
