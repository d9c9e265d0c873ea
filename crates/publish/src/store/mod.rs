//! Where a region's repository lives, for the publisher: an [`ObjectStore`] of keys and bytes
//! with conditional writes.
//!
//! - [`FsStore`]: a directory (the demo, tests, and repositories served as plain files).
//! - [`S3Store`] (cargo feature `s3`, on only for the release tool): a bucket and prefix,
//!   through aws-sdk-s3. [`bucket_for`] renders and checks a region's bucket name.
//!
//! Keys are relative to the store's root or prefix (`metadata/timestamp.json`,
//! `targets/<sha>.manifest.json`) and are checked by [`check_key`] on the way in and on the way
//! out (a listing is network input).
//!
//! **A failed read is never "not found".** [`ObjectStore::get`] and [`ObjectStore::head`]
//! answer `Ok(None)` only for a definite answer that the object does not exist (S3's
//! `NoSuchKey`, a HEAD 404 in a bucket known to exist, `ENOENT` under a root that exists).
//! Everything else (a missing bucket or directory, a refusal, a timeout, a 5xx) is an error,
//! because a publisher that took a failed read for an empty repository would write version 1
//! of every role over a live region.
//!
//! **ETags** are opaque, unquoted tokens, only meaningful to the store that gave them: the
//! hex SHA-256 of the bytes for [`FsStore`], S3's ETag without its quotes for [`S3Store`]
//! (an MD5 for simple uploads). [`Condition::IfMatch`] accepts them quoted or not.
//!
//! **Checksums.** Every write carries the SHA-256 of its bytes ([`Body`]), and the store
//! checks it: S3 verifies it against the bytes it received and keeps it with the object
//! (a mismatch is [`StoreError::BadDigest`] and stores nothing); [`FsStore`] checks a file
//! body's bytes as it reads them. [`ObjectStore::stat`] gives it back: the SHA-256 that the
//! store itself computed over the bytes it holds, when it has one.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;

use molt_fetch::s3::{MAX_KEY_LEN, S3Error, S3Location};
use molt_schema::artifact::{HashedFile, Sha256};
use molt_schema::region::{Region, Template, Var};

pub mod fs;
pub mod retrying;
pub mod s3;

pub use fs::FsStore;
pub use retrying::Retrying;
pub use s3::{S3Store, S3StoreConfig};

/// A boxed error from a lower layer (the AWS SDK), kept as the source of a [`StoreError`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Names beginning with this are the file-system store's own (temporary files, the lock);
/// keys may not use it in any segment, so a listing can never confuse the two.
pub const RESERVED_PREFIX: &str = ".molt-";

/// A place that holds one region's repository.
///
/// Implementations are cheap to share (`Arc<dyn ObjectStore>`) and safe to call from
/// several tasks at once.
#[async_trait]
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Where the store is, for messages: `s3://bucket/prefix/` or `file:///dir/`.
    fn describe(&self) -> String;

    /// The object at `key` with its ETag. `Ok(None)` only when the store says definitely
    /// that there is no such object; every other failure is an error.
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError>;

    /// The ETag of the object at `key`, without reading it; `Ok(None)` as for [`get`](Self::get).
    async fn head(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.stat(key).await?.map(|m| m.etag))
    }

    /// What the store says about the object at `key` without sending its bytes: ETag,
    /// length and, when the store keeps one, the SHA-256 it computed over the bytes it holds.
    /// `Ok(None)` as for [`get`](Self::get).
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError>;

    /// Writes `bytes` at `key` if `cond` holds; see [`put_body`](Self::put_body).
    async fn put(&self, key: &str, bytes: Vec<u8>, cond: Condition) -> Result<(), StoreError> {
        self.put_body(key, Body::from_bytes(bytes), cond).await
    }

    /// Writes `body` at `key` if `cond` holds, else fails with
    /// [`StoreError::PreconditionFailed`]. The write is atomic: a reader sees the old object
    /// or the new one, never a mix. The store checks the bytes against the body's SHA-256
    /// ([`StoreError::BadDigest`] when they differ; nothing is written then).
    ///
    /// After a retried attempt (a timeout whose first attempt did land), a
    /// `PreconditionFailed` for [`Condition::IfNoneMatch`] can be the echo of this very write:
    /// a caller that must tell the two apart reads the object back and compares.
    async fn put_body(&self, key: &str, body: Body, cond: Condition) -> Result<(), StoreError>;

    /// The keys that start with `prefix` (relative, like every key; `""` for all), sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .list_sized(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// [`list`](Self::list), with each object's length as the listing says it (S3's
    /// `Size`), so that a caller can skip an object too large to read without reading it.
    async fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError>;

    /// Removes `key`; removing a missing object succeeds. For tests and cleanup only: a
    /// publisher never deletes from a live repository.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// An object's bytes and its ETag (see the module documentation).
#[derive(Clone, PartialEq, Eq)]
pub struct Object {
    pub bytes: Vec<u8>,
    pub etag: String,
}

impl fmt::Debug for Object {
    // The bytes may be a 200 MiB archive: show their length only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Object")
            .field("len", &self.bytes.len())
            .field("etag", &self.etag)
            .finish()
    }
}

/// What [`ObjectStore::stat`] tells about an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    pub etag: String,
    /// The length of the object's bytes.
    pub len: u64,
    /// The SHA-256 of the object's bytes, computed by the store over the bytes it holds (S3
    /// keeps the one it verified at upload; [`FsStore`] hashes the file). `None` when the
    /// store has none: an S3 object uploaded without a SHA-256 checksum, or in parts.
    pub sha256: Option<Sha256>,
}

/// The bytes of a write, with their length and SHA-256: in memory, or a file that was
/// hashed before ([`HashedFile`]). The constructors compute or take the digest, so a body
/// never carries the digest of other bytes; a file that changed after it was hashed is
/// caught by the store ([`StoreError::BadDigest`]).
///
/// Cheap to clone (shared bytes, or a path), so each attempt of a retried write sends the
/// same body without copying it.
#[derive(Clone)]
pub struct Body {
    source: Source,
    len: u64,
    sha256: Sha256,
}

#[derive(Clone)]
enum Source {
    Memory(Bytes),
    File(HashedFile),
}

/// Where a [`Body`]'s bytes are.
#[derive(Clone, Copy, Debug)]
pub enum Contents<'a> {
    Memory(&'a Bytes),
    File(&'a HashedFile),
}

impl Body {
    /// Bytes in memory; hashes them.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Body {
        let bytes = bytes.into();
        Body {
            len: bytes.len() as u64,
            sha256: Sha256::digest(&bytes),
            source: Source::Memory(bytes),
        }
    }

    /// A file, with the length and digest it was hashed with.
    pub fn from_file(file: HashedFile) -> Body {
        Body {
            len: file.len(),
            sha256: file.sha256(),
            source: Source::File(file),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn sha256(&self) -> Sha256 {
        self.sha256
    }

    /// Where the bytes are.
    pub fn contents(&self) -> Contents<'_> {
        match &self.source {
            Source::Memory(b) => Contents::Memory(b),
            Source::File(f) => Contents::File(f),
        }
    }

    /// The bytes, read from the file if need be and then checked against the length and the
    /// digest (an `InvalidData` error when the file changed). Blocking: call it off the async
    /// threads.
    pub fn read_blocking(&self) -> std::io::Result<Bytes> {
        match &self.source {
            Source::Memory(b) => Ok(b.clone()),
            Source::File(f) => f.read_verified().map(Bytes::from),
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Body {
        Body::from_bytes(bytes)
    }
}

impl fmt::Debug for Body {
    // The bytes may be a 200 MiB archive: show where they are, their length and digest.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Body");
        if let Source::File(file) = &self.source {
            d.field("path", &file.path());
        }
        d.field("len", &self.len)
            .field("sha256", &format_args!("{}", self.sha256))
            .finish()
    }
}

/// When a [`ObjectStore::put_body`] may write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// Always (an atomic replace).
    None,
    /// Only if no object exists at the key (create only; S3's `If-None-Match: *`).
    IfNoneMatch,
    /// Only if the current object has this ETag (replace only the version that was read;
    /// S3's `If-Match`). A missing object fails the condition.
    IfMatch(String),
}

impl Condition {
    /// What the condition asked for, for messages.
    fn describe(&self) -> &'static str {
        match self {
            Condition::None => "none",
            Condition::IfNoneMatch => "the object must not exist yet",
            Condition::IfMatch(_) => {
                "the object must still be the version read before (If-Match); it changed or was removed"
            }
        }
    }
}

/// A store operation, for messages and for the permission it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Get,
    Head,
    Put,
    List,
    Delete,
}

impl Operation {
    /// The IAM action an S3 request of this kind needs.
    pub fn permission(self) -> &'static str {
        match self {
            Operation::Get | Operation::Head => "s3:GetObject",
            Operation::Put => "s3:PutObject",
            Operation::List => "s3:ListBucket",
            Operation::Delete => "s3:DeleteObject",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Get => "GET",
            Operation::Head => "HEAD",
            Operation::Put => "PUT",
            Operation::List => "LIST",
            Operation::Delete => "DELETE",
        })
    }
}

/// Everything that can go wrong with an [`ObjectStore`]. `object` fields name the full
/// location (`s3://bucket/prefix/key`, `file:///dir/key`). [`StoreError::hint`] says what to
/// do; [`StoreError::is_retryable`] whether trying again later may help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key that molt does not accept (ours, or one that a listing returned).
    #[error("invalid object key {key:?}: {reason}")]
    BadKey { key: String, reason: &'static str },

    /// The bucket template could not be rendered for a region.
    #[error("bucket template {template:?}: {reason}")]
    BucketTemplate { template: String, reason: String },

    /// A bucket name that S3 would refuse.
    #[error("invalid bucket name {name:?}: {reason}")]
    BadBucket { name: String, reason: String },

    /// The S3 location or endpoint in the configuration is not usable.
    #[error("cannot set up S3 access")]
    Config {
        #[source]
        source: S3Error,
    },

    /// The write's [`Condition`] did not hold (HTTP 412).
    #[error("{object} was not written: {condition}")]
    PreconditionFailed {
        object: String,
        condition: &'static str,
    },

    /// The store computed another SHA-256 over the bytes it received than the one the write
    /// carried (S3's 400 BadDigest; for [`FsStore`], a file that changed after it was
    /// hashed). Nothing was written.
    #[error(
        "{object} was not written: the bytes that arrived do not have the SHA-256 sent with them (BadDigest)"
    )]
    BadDigest {
        object: String,
        #[source]
        source: Option<std::io::Error>,
    },

    /// S3 was busy with another conditional write of the same key (409
    /// ConditionalRequestConflict).
    #[error("{object} was not written: another conditional write of it was in progress (409)")]
    Conflict { object: String },

    /// HTTP 403.
    #[error("{operation} {object} was refused (HTTP 403 {code}: {message})")]
    AccessDenied {
        operation: Operation,
        object: String,
        code: String,
        message: String,
        hint: &'static str,
    },

    #[error("the bucket {bucket} does not exist (NoSuchBucket; looked in {region})")]
    NoSuchBucket { bucket: String, region: Region },

    /// The bucket answered from another region.
    #[error("the bucket {bucket} is in region {bucket_region}, not {region}")]
    WrongRegion {
        bucket: String,
        region: Region,
        bucket_region: String,
    },

    /// The file-system store's root directory does not exist.
    #[error("the repository directory {dir} does not exist")]
    NoSuchDirectory { dir: PathBuf },

    /// No usable AWS credentials.
    #[error("no usable AWS credentials for {object}")]
    Credentials {
        object: String,
        #[source]
        source: BoxError,
    },

    /// A file-system operation failed. `action` is a verb phrase (`read`, `create`, ...).
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The request did not get an answer (connection refused or reset, DNS, timeout, a 5xx
    /// or a throttle, a body cut short). The stores do not retry; [`Retrying`] does.
    #[error("{operation} {object} failed{}", if *retryable { " (retryable)" } else { "" })]
    Transport {
        operation: Operation,
        object: String,
        retryable: bool,
        #[source]
        source: BoxError,
    },

    /// Any other error answer from S3.
    #[error("{operation} {object}: HTTP {status} {code}: {message}")]
    Status {
        operation: Operation,
        object: String,
        status: u16,
        code: String,
        message: String,
    },

    /// An answer that does not make sense (no ETag, a listed key outside the prefix, ...).
    #[error("{operation} {object}: unexpected answer: {detail}")]
    BadResponse {
        operation: Operation,
        object: String,
        detail: String,
    },

    /// A background file-system task ended without an answer (it panicked or the runtime is
    /// shutting down).
    #[error("the file-system task for {object} did not finish: {detail}")]
    Task { object: String, detail: String },
}

impl StoreError {
    /// True when the same call may succeed later: a transport failure (after the S3 SDK's
    /// own retries) or a conditional-write conflict. A refusal, a missing bucket or a failed
    /// precondition will not go away by itself.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Transport { retryable, .. } => *retryable,
            StoreError::Conflict { .. } => true,
            _ => false,
        }
    }

    /// What the operator can do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            StoreError::BadKey { .. } => {
                "keys are relative paths without empty, '.' or '..' segments; if a listing returned it, remove that object from the repository".to_owned()
            }
            StoreError::BucketTemplate { .. } => {
                "write the bucket template with {region}, e.g. bucket = \"acme-molt-{region}\"".to_owned()
            }
            StoreError::BadBucket { .. } => {
                "bucket names are 3 to 63 lower-case letters, digits, '.' and '-'; fix the bucket template".to_owned()
            }
            StoreError::Config { .. } => return None,
            StoreError::PreconditionFailed { .. } => {
                "another publisher changed the repository (or an earlier attempt of this one landed): read it again and retry, and make sure only one publisher runs per region".to_owned()
            }
            StoreError::Conflict { .. } => "retry the write".to_owned(),
            StoreError::BadDigest { .. } => {
                "a file changed after it was hashed, or the bytes were damaged on the way: make sure nothing rewrites the dist directory during a publish, then publish again".to_owned()
            }
            StoreError::AccessDenied { hint, .. } => (*hint).to_owned(),
            StoreError::NoSuchBucket { bucket, region } => format!(
                "create the bucket (`aws s3 mb s3://{bucket} --region {region}`) and the region's repository (`release-manifest repo init`), or fix the bucket template, the region or the endpoint"
            ),
            StoreError::WrongRegion { bucket_region, .. } => format!(
                "publish this region's repository to a bucket in that region, or use region {bucket_region}; check the bucket template"
            ),
            StoreError::NoSuchDirectory { .. } => {
                "create the directory and the repository (`release-manifest repo init`), or fix the path".to_owned()
            }
            StoreError::Credentials { .. } => {
                "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or run with a role (instance profile, web identity)".to_owned()
            }
            StoreError::Io { .. } => {
                "check that the path exists and that this user may write to it".to_owned()
            }
            StoreError::Transport { .. } => {
                "check the network and the endpoint, then retry; nothing was changed unless the error says otherwise".to_owned()
            }
            StoreError::Status { .. } | StoreError::BadResponse { .. } => {
                "check that the endpoint is S3 (or S3-compatible) and retry; run with MOLT_LOG=aws_smithy_runtime=debug for the exchange".to_owned()
            }
            StoreError::Task { .. } => return None,
        })
    }
}

/// Checks a key: relative (`metadata/1.root.json`), at most [`MAX_KEY_LEN`] bytes, no empty,
/// `.` or `..` segment, no control character or backslash, and no segment beginning with
/// [`RESERVED_PREFIX`].
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |reason| StoreError::BadKey {
        key: molt_fetch::s3::sanitize(key, 256),
        reason,
    };
    if key.is_empty() {
        return Err(bad("it is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(bad("it is longer than 1024 bytes"));
    }
    if key.chars().any(char::is_control) {
        return Err(bad("it holds a control character"));
    }
    if key.contains('\\') {
        return Err(bad("it holds a backslash"));
    }
    if key.starts_with('/') {
        return Err(bad("it starts with '/' (keys are relative)"));
    }
    for segment in key.split('/') {
        match segment {
            "" => return Err(bad("it has an empty segment ('//' or a trailing '/')")),
            "." | ".." => return Err(bad("it has a '.' or '..' segment")),
            s if s.starts_with(RESERVED_PREFIX) => {
                return Err(bad(
                    "a segment starts with '.molt-', which the store reserves",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a listing prefix: empty, or a key (see [`check_key`]) optionally ending in `/`.
pub fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_key(prefix.strip_suffix('/').unwrap_or(prefix))
}

/// Strips the quotes (and a weak `W/` mark) from an ETag.
pub(crate) fn bare_etag(etag: &str) -> &str {
    let etag = etag.trim();
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    etag.strip_prefix('"')
        .and_then(|e| e.strip_suffix('"'))
        .unwrap_or(etag)
}

/// The bucket for `region`: `template` (e.g. `acme-molt-{region}`) filled in, then checked
/// against S3's naming rules. The template must use `{region}` (or SSM's `{Region}`): one
/// bucket serves one region, and a template without the region would put every region's
/// metadata in the same place. There is no default template.
pub fn bucket_for(template: &Template, region: &Region) -> Result<String, StoreError> {
    let vars = template.vars();
    if !vars.contains(&Var::Region) && !vars.contains(&Var::SsmRegion) {
        return Err(StoreError::BucketTemplate {
            template: template.as_str().to_owned(),
            reason: "it does not use {region}, so every region would share one bucket".to_owned(),
        });
    }
    let values = BTreeMap::from([
        (Var::Region, region.to_string()),
        (Var::SsmRegion, region.to_string()),
    ]);
    let name = template
        .render(&values)
        .map_err(|e| StoreError::BucketTemplate {
            template: template.as_str().to_owned(),
            reason: match e {
                molt_schema::region::TemplateError::MissingValue { name, .. } => {
                    format!("a bucket name may use only {{region}}, not {{{name}}}")
                }
                other => other.to_string(),
            },
        })?;
    match S3Location::new(&name, "") {
        Ok(_) => Ok(name),
        Err(S3Error::BadLocation { reason, .. }) => Err(StoreError::BadBucket {
            // S3Location's reason repeats the quoted name first: keep only the rule.
            reason: reason
                .strip_prefix(&format!("bucket {name:?} "))
                .unwrap_or(&reason)
                .to_owned(),
            name,
        }),
        Err(other) => Err(StoreError::BadBucket {
            name,
            reason: other.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(s: &str) -> Region {
        s.parse().unwrap()
    }

    #[test]
    fn keys() {
        for good in [
            "metadata/timestamp.json",
            "targets/0123abcd.manifest.json",
            "molt-agent/1.2.3/molt-agent-linux-amd64.tar.gz",
            "a",
            ".hidden",
            "x/.molt/y",
        ] {
            check_key(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        for (bad, why) in [
            ("", "empty"),
            ("/metadata/x", "starts with '/'"),
            ("metadata//x", "empty segment"),
            ("metadata/", "empty segment"),
            ("metadata/../x", "'..'"),
            ("./x", "'.'"),
            ("..", "'..'"),
            ("a\\b", "backslash"),
            ("a\nb", "control"),
            ("a/.molt-tmp-1", "reserves"),
            (".molt-store.lock", "reserves"),
        ] {
            let e = check_key(bad).unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
        }
        assert!(check_key(&"a".repeat(1025)).is_err());
        assert!(check_key(&"a".repeat(1024)).is_ok());
    }

    #[test]
    fn prefixes() {
        for good in ["", "metadata/", "metadata", "targets/ab", "a/b/"] {
            check_prefix(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        for bad in ["/", "//", "/metadata", "a//", "../", "a/../b/"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn etags() {
        assert_eq!(bare_etag("\"abc\""), "abc");
        assert_eq!(bare_etag("W/\"abc\""), "abc");
        assert_eq!(bare_etag("abc"), "abc");
        assert_eq!(bare_etag(" \"abc-3\" "), "abc-3");
        assert_eq!(bare_etag("\""), "\"");
    }

    #[test]
    fn buckets_from_templates() {
        let t = Template::parse("acme-molt-{region}").unwrap();
        assert_eq!(
            bucket_for(&t, &region("eu-west-2")).unwrap(),
            "acme-molt-eu-west-2"
        );
        let ssm = Template::parse("acme-{Region}-repo").unwrap();
        assert_eq!(
            bucket_for(&ssm, &region("cn-north-1")).unwrap(),
            "acme-cn-north-1-repo"
        );

        let global = Template::parse("acme-molt").unwrap();
        let e = bucket_for(&global, &region("us-east-1")).unwrap_err();
        assert!(matches!(e, StoreError::BucketTemplate { .. }), "{e:?}");
        assert!(e.to_string().contains("{region}"), "{e}");
        assert!(e.hint().unwrap().contains("acme-molt-{region}"));

        let domain = Template::parse("acme-{region}.{domain}").unwrap();
        let e = bucket_for(&domain, &region("us-east-1")).unwrap_err();
        assert!(e.to_string().contains("not {domain}"), "{e}");

        let upper = Template::parse("Acme-{region}").unwrap();
        let e = bucket_for(&upper, &region("us-east-1")).unwrap_err();
        match &e {
            StoreError::BadBucket { name, reason } => {
                assert_eq!(name, "Acme-us-east-1");
                assert!(reason.contains("lower-case"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        let long = Template::parse(&format!("{}-{{region}}", "a".repeat(60))).unwrap();
        assert!(matches!(
            bucket_for(&long, &region("us-east-1")),
            Err(StoreError::BadBucket { .. })
        ));
        let reserved = Template::parse("xn--{region}").unwrap();
        assert!(bucket_for(&reserved, &region("us-east-1")).is_err());
    }

    #[test]
    fn retryable_and_hints() {
        let transport = StoreError::Transport {
            operation: Operation::Get,
            object: "s3://b/k".to_owned(),
            retryable: true,
            source: "connection refused".into(),
        };
        assert!(transport.is_retryable());
        assert_eq!(transport.to_string(), "GET s3://b/k failed (retryable)");
        let missing = StoreError::NoSuchBucket {
            bucket: "acme-molt-eu-west-1".to_owned(),
            region: region("eu-west-1"),
        };
        assert!(!missing.is_retryable());
        assert!(
            missing
                .hint()
                .unwrap()
                .contains("aws s3 mb s3://acme-molt-eu-west-1 --region eu-west-1")
        );
        let pre = StoreError::PreconditionFailed {
            object: "file:///r/k".to_owned(),
            condition: Condition::IfNoneMatch.describe(),
        };
        assert!(!pre.is_retryable());
        assert_eq!(
            pre.to_string(),
            "file:///r/k was not written: the object must not exist yet"
        );
    }

    /// Callers embed `StoreError` in their own errors; keep it under clippy's
    /// `result_large_err` threshold (128 bytes).
    #[test]
    fn the_error_stays_small() {
        assert!(
            std::mem::size_of::<StoreError>() <= 96,
            "{}",
            std::mem::size_of::<StoreError>()
        );
    }
}
