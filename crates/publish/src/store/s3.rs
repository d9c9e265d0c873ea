//! [`S3Store`]: a region's repository in an S3 bucket (and optional prefix), through
//! aws-sdk-s3. Only the release tool builds it (cargo feature `s3`).
//!
//! - Credentials: aws-config's default chain ([`molt_fetch::aws::credentials_provider`]), unless
//!   [`S3StoreConfig::credentials`] names a provider (tests).
//! - Endpoint: [`S3StoreConfig::endpoint_url`], else `AWS_ENDPOINT_URL_S3`, else
//!   `AWS_ENDPOINT_URL` (unless `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true`), the same rules as
//!   the hosts' [`molt_fetch::s3::S3Endpoint::resolve`]; an explicit endpoint is addressed
//!   path-style (`{endpoint}/{bucket}/{key}`). Else AWS itself, virtual-hosted.
//! - Retries and timeouts: none of the SDK's own. Each call is one attempt, bounded by a
//!   [`CONNECT_TIMEOUT`] and an [`ATTEMPT_TIMEOUT`], so a dead endpoint fails in bounded
//!   time; 5xx, throttling, timeouts and connection failures are a retryable
//!   [`StoreError::Transport`], which the caller retries under molt's one policy
//!   ([`super::Retrying`]) rather than on top of the SDK's; a download whose body stalls is cut by the SDK's stalled-stream
//!   protection (on with the latest behaviour version).
//! - Conditional writes: `If-None-Match: *` and `If-Match: "<etag>"` on PutObject. A 412
//!   is [`StoreError::PreconditionFailed`]; so is a `NoSuchKey` to an `If-Match` PUT (S3's
//!   answer when the object is gone).
//! - Integrity of writes: every PutObject carries `x-amz-checksum-sha256`, the SHA-256 of
//!   its body that the caller computed once ([`Body`]); S3 verifies the bytes it receives
//!   against it (400 BadDigest, [`StoreError::BadDigest`], and nothing is stored) and keeps
//!   it with the object, where [`ObjectStore::stat`] reads it back (HeadObject with
//!   `x-amz-checksum-mode: ENABLED`). The SDK then computes no checksum of its own, and the
//!   payload is not hashed a second time for SigV4 (see [`S3Store::put_body`]).
//!
//! Error mapping (the point of this module: a failed read must never look like "not found"):
//! GetObject `NoSuchKey` and a HEAD 404 in a bucket that exists (checked once with HeadBucket)
//! are `Ok(None)`; `NoSuchBucket` (or HeadBucket's 404) is [`StoreError::NoSuchBucket`]; 403 is
//! [`StoreError::AccessDenied`] naming the permission that is likely missing; a bucket in
//! another region is [`StoreError::WrongRegion`]; timeouts, connection failures, 5xx and
//! throttling are a retryable [`StoreError::Transport`]; missing
//! credentials are [`StoreError::Credentials`].

use std::error::Error as StdError;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{ChecksumMode, ChecksumType};

use super::{
    Body, Condition, Contents, Object, ObjectMeta, ObjectStore, Operation, StoreError, bare_etag,
    check_key, check_prefix,
};
use molt_fetch::s3::{MAX_KEY_LEN, S3Endpoint, S3Location, sanitize};
use molt_schema::artifact::Sha256;
use molt_schema::region::Region;

/// Time allowed to open a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Time allowed for one attempt of a request (the default of
/// [`S3StoreConfig::attempt_timeout`]).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The read size when a file is streamed into a PUT (the SDK's default is 64 KiB; each
/// read is a hop to a blocking thread).
const FILE_CHUNK: usize = 512 * 1024;

/// How much of a server's error code or message makes it into a message.
const MAX_SHOWN: usize = 256;

/// Where a region's repository is in S3.
#[derive(Clone)]
pub struct S3StoreConfig {
    pub bucket: String,
    /// A key prefix (`""`, or `repo/`); with or without the trailing slash.
    pub prefix: String,
    /// The bucket's region: requests are signed for it.
    pub region: Region,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`), addressed path-style. `None`:
    /// the environment's (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`), else AWS.
    pub endpoint_url: Option<String>,
    /// Credentials to use instead of aws-config's default chain.
    pub credentials: Option<SharedCredentialsProvider>,
    /// Time allowed for one attempt of a request until its answer's headers (a body that
    /// stalls is caught by the SDK's stalled-stream protection). [`ATTEMPT_TIMEOUT`] by
    /// default.
    pub attempt_timeout: Duration,
}

impl S3StoreConfig {
    /// The bucket's root, in `region`, at AWS (or the environment's endpoint), with the
    /// default credentials chain.
    pub fn new(bucket: impl Into<String>, region: Region) -> S3StoreConfig {
        S3StoreConfig {
            bucket: bucket.into(),
            prefix: String::new(),
            region,
            endpoint_url: None,
            credentials: None,
            attempt_timeout: ATTEMPT_TIMEOUT,
        }
    }
}

impl fmt::Debug for S3StoreConfig {
    // Whatever a credentials provider holds stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3StoreConfig")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint_url", &self.endpoint_url)
            .field(
                "credentials",
                &if self.credentials.is_some() {
                    "given"
                } else {
                    "default chain"
                },
            )
            .field("attempt_timeout", &self.attempt_timeout)
            .finish()
    }
}

/// A bucket and prefix, through aws-sdk-s3. See the module documentation.
pub struct S3Store {
    client: Client,
    location: S3Location,
    region: Region,
    /// Shown in `Debug`: the explicit or environment endpoint, if any.
    endpoint: Option<String>,
    /// Set once the bucket is known to exist, so a HEAD 404 can mean "no such object".
    bucket_exists: AtomicBool,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.location.to_string())
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Checks the configuration and builds the client. Makes no request (credentials are
    /// looked up at the first one).
    pub async fn new(config: S3StoreConfig) -> Result<S3Store, StoreError> {
        let location = S3Location::new(&config.bucket, &config.prefix)
            .map_err(|source| StoreError::Config { source })?;
        let endpoint = S3Endpoint::resolve(
            config.endpoint_url.as_deref(),
            &config.region,
            None,
            |var| std::env::var(var).ok(),
        )
        .map_err(|source| StoreError::Config { source })?;
        let endpoint_url = match &endpoint {
            S3Endpoint::PathStyle { base, .. } => {
                Some(base.as_str().trim_end_matches('/').to_owned())
            }
            S3Endpoint::Aws { .. } => None,
        };
        let credentials = match config.credentials {
            Some(provider) => provider,
            None => molt_fetch::aws::credentials_provider(&config.region).await,
        };
        let sdk_config = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.as_str().to_owned()))
            .credentials_provider(credentials)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(config.attempt_timeout)
                    .build(),
            )
            .load()
            .await;
        let mut builder =
            aws_sdk_s3::config::Builder::from(&sdk_config).force_path_style(endpoint_url.is_some());
        if let Some(url) = &endpoint_url {
            builder = builder.endpoint_url(url);
        }
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            location,
            region: config.region,
            endpoint: endpoint_url,
            bucket_exists: AtomicBool::new(false),
        })
    }

    /// The bucket and prefix.
    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// `s3://bucket/prefix/key`, for messages.
    fn object(&self, key: &str) -> String {
        format!("{}{key}", self.location)
    }

    /// The full key of `key` under the prefix, after checking it.
    fn full_key(&self, key: &str) -> Result<String, StoreError> {
        check_key(key)?;
        let full = self.location.key(key);
        if full.len() > MAX_KEY_LEN {
            return Err(StoreError::BadKey {
                key: key.to_owned(),
                reason: "with the prefix, it is longer than 1024 bytes",
            });
        }
        Ok(full)
    }

    /// After a HEAD 404 (which has no body to tell a missing key from a missing bucket):
    /// `Ok` if the bucket exists, else the error that says why it does not.
    async fn check_bucket(&self, operation: Operation, key: &str) -> Result<(), StoreError> {
        if self.bucket_exists.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self
            .client
            .head_bucket()
            .bucket(self.location.bucket())
            .send()
            .await
        {
            Ok(_) => {
                self.bucket_exists.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(SdkError::ServiceError(e)) if e.raw().status().as_u16() == 404 => {
                Err(StoreError::NoSuchBucket {
                    bucket: self.location.bucket().to_owned(),
                    region: self.region.clone(),
                })
            }
            Err(e) => Err(match self.error(operation, key, e) {
                // HeadBucket needs s3:ListBucket, which a HEAD 404 suggests we have.
                StoreError::AccessDenied {
                    operation,
                    object,
                    code,
                    message,
                    ..
                } => StoreError::AccessDenied {
                    operation,
                    object,
                    code,
                    message,
                    hint: "check that the IAM policy of these credentials allows s3:ListBucket on the bucket (to tell a missing object from a missing bucket), and that no bucket policy denies it",
                },
                other => other,
            }),
        }
    }

    /// Maps an SDK error to a [`StoreError`]; the callers have handled the answers that mean
    /// "no such object" or "precondition failed" for their operation.
    fn error<E>(
        &self,
        operation: Operation,
        key: &str,
        err: SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
    {
        let object = self.object(key);
        if is_credentials_error(&err) {
            return StoreError::Credentials {
                object,
                source: Box::new(err),
            };
        }
        let transport = |retryable, err: SdkError<E, HttpResponse>| StoreError::Transport {
            operation,
            object: object.clone(),
            retryable,
            source: Box::new(err),
        };
        match &err {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = shown(service.err().code());
                let message = shown(service.err().message());
                let bucket_region = service
                    .raw()
                    .headers()
                    .get("x-amz-bucket-region")
                    .map(|r| sanitize(r, 64))
                    .filter(|r| !r.is_empty() && r != self.region.as_str());
                if let Some(bucket_region) = bucket_region
                    && (matches!(status, 301 | 307)
                        || matches!(
                            code.as_str(),
                            "PermanentRedirect"
                                | "AuthorizationHeaderMalformed"
                                | "IllegalLocationConstraintException"
                        ))
                {
                    return StoreError::WrongRegion {
                        bucket: self.location.bucket().to_owned(),
                        region: self.region.clone(),
                        bucket_region,
                    };
                }
                match (status, code.as_str()) {
                    (_, "NoSuchBucket") => StoreError::NoSuchBucket {
                        bucket: self.location.bucket().to_owned(),
                        region: self.region.clone(),
                    },
                    (403, _) => StoreError::AccessDenied {
                        hint: forbidden_hint(&code, operation),
                        operation,
                        object,
                        code: or(code, "AccessDenied"),
                        message: or(message, "(no message)"),
                    },
                    (409, "ConditionalRequestConflict") => StoreError::Conflict { object },
                    (500..=599 | 429, _)
                    | (_, "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable") => {
                        transport(true, err)
                    }
                    _ => StoreError::Status {
                        operation,
                        object,
                        status,
                        code: or(code, "(no code)"),
                        message: or(message, "(no message)"),
                    },
                }
            }
            SdkError::TimeoutError(_) => transport(true, err),
            SdkError::DispatchFailure(failure) => transport(!failure.is_user(), err),
            SdkError::ResponseError(response) => {
                let status = response.raw().status().as_u16();
                if status >= 500 || status == 429 || (200..300).contains(&status) {
                    // A 5xx or a throttle; or an answer cut short (the status looked fine,
                    // the body did not arrive whole): worth another try.
                    transport(true, err)
                } else {
                    // An answer the SDK could not read: not S3, or cut short.
                    StoreError::BadResponse {
                        operation,
                        object,
                        detail: format!(
                            "HTTP {status}: {}",
                            sanitize(&DisplayErrorContext(&err).to_string(), 1000)
                        ),
                    }
                }
            }
            // A request that could not be built, and whatever later SDKs add.
            _ => transport(false, err),
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        self.location.to_string()
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let full = self.full_key(key)?;
        let output = match self
            .client
            .get_object()
            .bucket(self.location.bucket())
            .key(&full)
            .send()
            .await
        {
            Ok(output) => output,
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => {
                self.bucket_exists.store(true, Ordering::Relaxed);
                return Ok(None);
            }
            Err(e) => return Err(self.error(Operation::Get, key, e)),
        };
        self.bucket_exists.store(true, Ordering::Relaxed);
        let etag = etag_of(output.e_tag()).ok_or_else(|| StoreError::BadResponse {
            operation: Operation::Get,
            object: self.object(key),
            detail: "the answer has no ETag".to_owned(),
        })?;
        let bytes = output
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Transport {
                operation: Operation::Get,
                object: self.object(key),
                retryable: true,
                source: Box::new(e),
            })?
            .to_vec();
        Ok(Some(Object { bytes, etag }))
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        let full = self.full_key(key)?;
        let bad = |detail: &str| StoreError::BadResponse {
            operation: Operation::Head,
            object: self.object(key),
            detail: detail.to_owned(),
        };
        match self
            .client
            .head_object()
            .bucket(self.location.bucket())
            .key(&full)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
        {
            Ok(output) => {
                self.bucket_exists.store(true, Ordering::Relaxed);
                let etag = etag_of(output.e_tag()).ok_or_else(|| bad("the answer has no ETag"))?;
                let len = output
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| bad("the answer has no Content-Length"))?;
                // A checksum of the whole object only: one of an upload in parts is a
                // checksum of checksums (`…-N`, COMPOSITE), which says nothing here.
                let sha256 = match output.checksum_type() {
                    Some(ChecksumType::Composite) => None,
                    _ => output.checksum_sha256().and_then(sha256_from_base64),
                };
                Ok(Some(ObjectMeta { etag, len, sha256 }))
            }
            Err(SdkError::ServiceError(e))
                if e.err().is_not_found() || e.raw().status().as_u16() == 404 =>
            {
                self.check_bucket(Operation::Head, key).await?;
                Ok(None)
            }
            Err(e) => Err(self.error(Operation::Head, key, e)),
        }
    }

    /// Sends the body with its SHA-256 as `x-amz-checksum-sha256`, which S3 verifies over
    /// the bytes it receives before it stores them (400 BadDigest otherwise) and keeps with
    /// the object. A file body is streamed from disk, not read into memory.
    ///
    /// The payload is sent unsigned (`x-amz-content-sha256: UNSIGNED-PAYLOAD`, the SDK's
    /// `disable_payload_signing`), which saves hashing every body a second time for SigV4.
    /// Integrity stays end to end: the checksum header, `Content-Length` and the conditions
    /// are among the signed headers, so nobody on the way can change them without breaking
    /// the signature, and S3 refuses a body whose SHA-256 is not the signed one. A file that
    /// changed after it was hashed is refused the same way.
    async fn put_body(&self, key: &str, body: Body, cond: Condition) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        let stream = match body.contents() {
            Contents::Memory(bytes) => ByteStream::from(bytes.clone()),
            Contents::File(file) => ByteStream::read_from()
                .path(file.path())
                .buffer_size(FILE_CHUNK)
                .length(Length::Exact(body.len()))
                .build()
                .await
                .map_err(|e| StoreError::Io {
                    action: "read",
                    path: file.path().to_owned(),
                    source: std::io::Error::other(e),
                })?,
        };
        let length = i64::try_from(body.len()).map_err(|_| StoreError::BadKey {
            key: key.to_owned(),
            reason: "the object is too large",
        })?;
        let mut request = self
            .client
            .put_object()
            .bucket(self.location.bucket())
            .key(&full)
            .content_type(content_type(key))
            .content_length(length)
            .checksum_sha256(sha256_to_base64(&body.sha256()))
            .body(stream);
        request = match &cond {
            Condition::None => request,
            Condition::IfNoneMatch => request.if_none_match("*"),
            Condition::IfMatch(etag) => request.if_match(format!("\"{}\"", bare_etag(etag))),
        };
        match request.customize().disable_payload_signing().send().await {
            Ok(_) => {
                self.bucket_exists.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(SdkError::ServiceError(e))
                if e.raw().status().as_u16() == 412
                    || (matches!(cond, Condition::IfMatch(_))
                        && e.err().code() == Some("NoSuchKey")) =>
            {
                Err(StoreError::PreconditionFailed {
                    object: self.object(key),
                    condition: cond.describe(),
                })
            }
            Err(SdkError::ServiceError(e)) if e.err().code() == Some("BadDigest") => {
                Err(StoreError::BadDigest {
                    object: self.object(key),
                    source: None,
                })
            }
            Err(e) => Err(self.error(Operation::Put, key, e)),
        }
    }

    async fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        check_prefix(prefix)?;
        let root = self.location.prefix();
        let full_prefix = format!("{root}{prefix}");
        let bad = |detail: String| StoreError::BadResponse {
            operation: Operation::List,
            object: self.object(prefix),
            detail,
        };
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(self.location.bucket())
                .prefix(&full_prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| self.error(Operation::List, prefix, e))?;
            self.bucket_exists.store(true, Ordering::Relaxed);
            for object in page.contents() {
                let Some(full) = object.key() else {
                    return Err(bad("a listed object has no key".to_owned()));
                };
                let Some(key) = full.strip_prefix(root).filter(|k| k.starts_with(prefix)) else {
                    return Err(bad(format!(
                        "the server listed {:?}, which is outside the prefix",
                        sanitize(full, MAX_SHOWN)
                    )));
                };
                // A "folder" made in the console: a zero-byte `dir/` object, not a key of ours.
                if key.is_empty() || key.ends_with('/') {
                    tracing::debug!(key = full, "skipping a folder marker in the listing");
                    continue;
                }
                check_key(key)?;
                let size = object
                    .size()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(u64::MAX);
                keys.push((key.to_owned(), size));
            }
            match (
                page.is_truncated() == Some(true),
                page.next_continuation_token(),
            ) {
                (false, _) => break,
                (true, None) => {
                    return Err(bad(
                        "the listing is truncated but has no NextContinuationToken".to_owned(),
                    ));
                }
                (true, Some(next)) if token.as_deref() == Some(next) => {
                    return Err(bad("the server repeated its continuation token".to_owned()));
                }
                (true, Some(next)) => token = Some(next.to_owned()),
            }
        }
        keys.sort();
        keys.dedup_by(|a, b| a.0 == b.0);
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let full = self.full_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(self.location.bucket())
            .key(&full)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(SdkError::ServiceError(e)) if e.err().code() == Some("NoSuchKey") => Ok(()),
            Err(e) => Err(self.error(Operation::Delete, key, e)),
        }
    }
}

/// An ETag from an answer, unquoted; `None` if missing or empty.
fn etag_of(etag: Option<&str>) -> Option<String> {
    etag.map(bare_etag)
        .filter(|e| !e.is_empty())
        .map(|e| sanitize(e, MAX_SHOWN))
}

/// A SHA-256 in standard, padded base64, as S3's checksum headers write it (44 characters).
fn sha256_to_base64(sha256: &Sha256) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(sha256.as_bytes())
}

/// The SHA-256 in an S3 checksum header, or `None` if it is not one (a composite checksum
/// `…-N`, other characters, another length).
fn sha256_from_base64(text: &str) -> Option<Sha256> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    let bytes: [u8; 32] = bytes.try_into().ok()?;
    Some(Sha256::from_bytes(bytes))
}

/// A server's code or message, cleaned for a terminal.
fn shown(value: Option<&str>) -> String {
    value.map(|v| sanitize(v, MAX_SHOWN)).unwrap_or_default()
}

fn or(value: String, default: &str) -> String {
    if value.is_empty() {
        default.to_owned()
    } else {
        value
    }
}

/// True when the failure was loading credentials (none found, or a provider failed).
fn is_credentials_error(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<CredentialsError>().is_some() {
            return true;
        }
        next = e.source();
    }
    false
}

/// The `Content-Type` for a key, so objects read well over plain HTTPS too.
fn content_type(key: &str) -> &'static str {
    if key.ends_with(".json") {
        "application/json"
    } else if key.ends_with(".tar.gz") || key.ends_with(".tgz") {
        "application/gzip"
    } else if key.ends_with(".zip") {
        "application/zip"
    } else {
        "application/octet-stream"
    }
}

/// What to do about a 403, by S3's error code and the operation.
fn forbidden_hint(code: &str, operation: Operation) -> &'static str {
    match (code, operation) {
        ("SignatureDoesNotMatch", _) => {
            "the secret key does not match the access key ID; check AWS_SECRET_ACCESS_KEY or the profile"
        }
        ("InvalidAccessKeyId" | "NotSignedUp", _) => {
            "the endpoint does not know the access key ID; check the credentials and the endpoint"
        }
        ("RequestTimeTooSkewed", _) => {
            "this machine's clock is more than 15 minutes off; fix the time (NTP)"
        }
        ("ExpiredToken" | "TokenRefreshRequired" | "InvalidToken", _) => {
            "the session token has expired or is invalid; refresh the credentials"
        }
        (_, Operation::Get | Operation::Head) => {
            "check that the IAM policy of these credentials allows s3:GetObject here (and s3:ListBucket, without which S3 answers 403 for a missing object), and that no bucket policy denies it"
        }
        (_, Operation::Put) => {
            "check that the IAM policy of these credentials allows s3:PutObject here, and that no bucket policy denies it"
        }
        (_, Operation::List) => {
            "check that the IAM policy of these credentials allows s3:ListBucket on the bucket, and that no bucket policy denies it"
        }
        (_, Operation::Delete) => {
            "check that the IAM policy of these credentials allows s3:DeleteObject here, and that no bucket policy denies it"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(content_type("metadata/timestamp.json"), "application/json");
        assert_eq!(
            content_type("targets/molt-agent-linux-amd64.tar.gz"),
            "application/gzip"
        );
        assert_eq!(content_type("x.zip"), "application/zip");
        assert_eq!(content_type("VERSION"), "application/octet-stream");
    }

    #[test]
    fn sha256_checksums_in_base64() {
        // echo -n abc | openssl dgst -sha256 -binary | base64
        let abc = Sha256::digest(b"abc");
        let text = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";
        assert_eq!(sha256_to_base64(&abc), text);
        assert_eq!(sha256_from_base64(text), Some(abc));
        let empty = Sha256::digest(b"");
        assert_eq!(
            sha256_to_base64(&empty),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        for n in 0..=255u8 {
            let d = Sha256::digest(&[n]);
            assert_eq!(sha256_from_base64(&sha256_to_base64(&d)), Some(d));
        }
        for bad in [
            "",
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0",
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=-2",
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa1=",
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0=",
            "AAAAAAAA",
        ] {
            assert_eq!(sha256_from_base64(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn forbidden_hints_name_the_permission() {
        for (operation, permission) in [
            (Operation::Get, "s3:GetObject"),
            (Operation::Head, "s3:GetObject"),
            (Operation::Put, "s3:PutObject"),
            (Operation::List, "s3:ListBucket"),
            (Operation::Delete, "s3:DeleteObject"),
        ] {
            assert!(
                forbidden_hint("AccessDenied", operation).contains(permission),
                "{operation}"
            );
            assert_eq!(operation.permission(), permission);
        }
        assert!(forbidden_hint("SignatureDoesNotMatch", Operation::Get).contains("secret key"));
    }

    #[test]
    fn etags_from_answers() {
        assert_eq!(etag_of(Some("\"d41d8\"")).as_deref(), Some("d41d8"));
        assert_eq!(etag_of(Some("\"\"")), None);
        assert_eq!(etag_of(None), None);
    }

    #[test]
    fn credentials_errors_are_found_in_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] CredentialsError);
        let outer = Outer(CredentialsError::not_loaded("nothing"));
        assert!(is_credentials_error(&outer));
        assert!(!is_credentials_error(&std::io::Error::other("x")));
    }

    #[tokio::test]
    async fn config_debug_hides_credentials_and_bad_settings_are_refused() {
        let provider = SharedCredentialsProvider::new(aws_credential_types::Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI-do-not-show",
            None,
            None,
            "test",
        ));
        let mut config = S3StoreConfig::new("acme-molt-us-east-1", "us-east-1".parse().unwrap());
        config.credentials = Some(provider);
        config.endpoint_url = Some("http://127.0.0.1:1".to_owned());
        let shown = format!("{config:?}");
        assert!(!shown.contains("wJalr"), "{shown}");
        assert!(!shown.contains("AKIDEXAMPLE"), "{shown}");
        let store = S3Store::new(config.clone()).await.unwrap();
        assert_eq!(store.describe(), "s3://acme-molt-us-east-1/");
        let shown = format!("{store:?}");
        assert!(!shown.contains("wJalr"), "{shown}");

        let mut bad = config.clone();
        bad.bucket = "Not_A_Bucket".to_owned();
        assert!(matches!(
            S3Store::new(bad).await,
            Err(StoreError::Config { .. })
        ));
        let mut bad = config.clone();
        bad.endpoint_url = Some("http://user:pass@127.0.0.1:9000".to_owned());
        let e = S3Store::new(bad).await.unwrap_err();
        assert!(!format!("{e:?}").contains("pass"), "{e:?}");

        let mut prefixed = config;
        prefixed.prefix = "/repo/us-east-1".to_owned();
        let store = S3Store::new(prefixed).await.unwrap();
        assert_eq!(store.describe(), "s3://acme-molt-us-east-1/repo/us-east-1/");
        assert!(matches!(
            store.get("../x").await,
            Err(StoreError::BadKey { .. })
        ));
    }
}
