//! `molt-s3`: a local S3-compatible server for molt's tests, built from the s3s (protocol,
//! SigV4 verification) and s3s-fs (storage: a bucket is a directory under `--root`)
//! libraries. Nothing here speaks S3 by hand; this binary only configures those libraries
//! for molt's needs (TOOLCHAIN.md, "Local S3-compatible servers").
//!
//! ```text
//! molt-s3 --root DIR --access-key K --secret-key S [--addr 127.0.0.1:0] [--exit-with-stdin]
//! ```
//!
//! It binds loopback only, prints exactly one line to stdout,
//! `listening on http://127.0.0.1:PORT`, and serves until it is killed (or, with
//! `--exit-with-stdin`, until its stdin closes: a test harness that dies without cleaning up
//! leaves no server behind). It logs to stderr only
//! when `MOLT_S3_LOG` is set (to a tracing filter such as `debug`, or empty for `info`).
//! `MOLT_S3_LATENCY_MS=N` delays every request by N ms before it is handled, a stand-in for
//! the round trip to a bucket in another region (the publishing benchmark's latency mode).
//!
//! What it adds to plain s3s-fs:
//! - **An access policy** (s3s's access-check hook): requests signed with the key may do
//!   anything; anonymous GetObject, HeadObject and ListObjects(V2) are allowed on public
//!   buckets; buckets whose name starts with `private-` refuse anonymous requests (403
//!   AccessDenied); anonymous writes are always refused. (Plain s3s-fs with keys set refuses
//!   every anonymous request.)
//! - **Conditional GET/HEAD**: `If-None-Match` matching the object's ETag (or `*`) answers
//!   304 Not Modified; `If-Match` not matching answers 412. s3s-fs ignores both on reads.
//!   (Conditional PUT, `If-None-Match: *` → 412 when the object exists, is s3s-fs's own.)
//! - **NoSuchBucket** for GetObject, PutObject, CopyObject and CreateMultipartUpload on a
//!   bucket that does not exist (s3s-fs answers NoSuchKey to the read and creates the
//!   bucket's directory for the writes).
//! - **1 MiB reads** when serving objects (s3s-fs reads 4 KiB at a time).
//! - **SHA-256 checksums checked before storing**: a PutObject with `x-amz-checksum-sha256`
//!   whose bytes have another SHA-256 is refused with 400 BadDigest and stores nothing, as
//!   on S3. (s3s-fs checks a checksum only after it has moved the new bytes into place, so
//!   on its own a refused PUT would still replace the object.) This server hashes the body
//!   as it streams to s3s-fs and fails the stream at its end on a mismatch, so s3s-fs
//!   drops its temporary file; s3s-fs is then not given the checksum (it would hash the
//!   body a second time), and the server adds it to s3s-fs's record of the object itself.
//! - **Checksums that describe the bytes**: HeadObject reports the checksums s3s-fs keeps
//!   for an object only if the object's file is not newer than s3s-fs's record of them, so
//!   a file a test wrote behind the server's back (into the bucket's directory) has no
//!   checksum rather than the one of the bytes it replaced. S3's stored checksum is always
//!   that of the bytes it serves.
//! - **Like S3's network behaviour**: `TCP_NODELAY` on every connection (a small answer is
//!   not held back waiting for the client's delayed ACK, ~40 ms on Linux), and connections
//!   served on a multi-thread runtime (one worker per core).

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper_util::rt::TokioIo;
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::SimpleAuth;
use s3s::dto::*;
use s3s::path::S3Path;
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};
use s3s_fs::FileSystem;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const USAGE: &str = "usage: molt-s3 --root DIR --access-key KEY --secret-key SECRET [--addr 127.0.0.1:0] [--exit-with-stdin]";

/// Buckets with this prefix refuse anonymous requests.
const PRIVATE_PREFIX: &str = "private-";

/// The read size when serving an object.
const READ_CHUNK: usize = 1 << 20;

#[derive(Debug)]
struct Options {
    root: PathBuf,
    access_key: String,
    secret_key: String,
    addr: SocketAddr,
    exit_with_stdin: bool,
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(message) => {
            eprintln!("molt-s3: error: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(filter) = std::env::var_os("MOLT_S3_LOG") {
        let filter = filter.to_string_lossy();
        let filter = if filter.trim().is_empty() {
            "info"
        } else {
            filter.as_ref()
        };
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    if options.exit_with_stdin {
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            std::process::exit(0);
        });
    }
    let workers = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("molt-s3: error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let latency = match std::env::var("MOLT_S3_LATENCY_MS") {
        Err(_) => std::time::Duration::ZERO,
        Ok(ms) => match ms.trim().parse::<u64>() {
            Ok(ms) => std::time::Duration::from_millis(ms),
            Err(_) => {
                eprintln!(
                    "molt-s3: error: MOLT_S3_LATENCY_MS={ms:?} is not a number of milliseconds"
                );
                return ExitCode::from(2);
            }
        },
    };
    match runtime.block_on(serve(options, latency)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("molt-s3: error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut root = None;
    let mut access_key = None;
    let mut secret_key = None;
    let mut addr = None;
    let mut exit_with_stdin = false;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--root" => root = Some(PathBuf::from(value("--root")?)),
            "--access-key" => access_key = Some(value("--access-key")?),
            "--secret-key" => secret_key = Some(value("--secret-key")?),
            "--addr" => {
                let text = value("--addr")?;
                addr =
                    Some(text.parse::<SocketAddr>().map_err(|_| {
                        format!("--addr {text:?} is not an address like 127.0.0.1:0")
                    })?);
            }
            "--exit-with-stdin" => exit_with_stdin = true,
            "-h" | "--help" => return Err("help requested".to_owned()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let addr = addr.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)));
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--addr {addr} is not a loopback address; this test server binds 127.0.0.1 or ::1 only"
        ));
    }
    let (Some(access_key), Some(secret_key)) = (access_key, secret_key) else {
        return Err("--access-key and --secret-key are required".to_owned());
    };
    if access_key.is_empty() || secret_key.is_empty() {
        return Err("--access-key and --secret-key must not be empty".to_owned());
    }
    Ok(Options {
        root: root.ok_or("--root is required")?,
        access_key,
        secret_key,
        addr,
        exit_with_stdin,
    })
}

async fn serve(options: Options, latency: std::time::Duration) -> Result<(), String> {
    let root = options
        .root
        .canonicalize()
        .map_err(|e| format!("--root {}: {e}", options.root.display()))?;
    let fs = FileSystem::new(&root).map_err(|e| format!("--root {}: {e:?}", root.display()))?;
    let mut builder = S3ServiceBuilder::new(Store(Arc::new(StoreInner {
        fs,
        root,
        writing: std::sync::Mutex::default(),
    })));
    builder.set_auth(SimpleAuth::from_single(
        options.access_key,
        options.secret_key,
    ));
    builder.set_access(Policy);
    let service = builder.build();

    let listener = tokio::net::TcpListener::bind(options.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.addr))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{local}")
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }

    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        // S3 does not hold back small answers until the client ACKs (Nagle's algorithm
        // against a delayed ACK stalls each small response on a kept-alive connection by
        // ~40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let service = service.clone();
        let delayed = hyper::service::service_fn(move |request| {
            let service = service.clone();
            async move {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                hyper::service::Service::call(&service, request).await
            }
        });
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), delayed)
                .await;
            if let Err(e) = served {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

/// The access policy; see the module documentation.
#[derive(Debug)]
struct Policy;

#[async_trait::async_trait]
impl S3Access for Policy {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        if cx.credentials().is_some() {
            return Ok(());
        }
        let read = matches!(
            cx.s3_op().name(),
            "GetObject" | "HeadObject" | "ListObjects" | "ListObjectsV2"
        );
        let bucket = match cx.s3_path() {
            S3Path::Root => None,
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(&**bucket),
        };
        match bucket {
            Some(b) if read && !b.starts_with(PRIVATE_PREFIX) => Ok(()),
            Some(b) if read => Err(S3Error::with_message(
                S3ErrorCode::AccessDenied,
                format!("bucket {b} is private: sign the request"),
            )),
            _ => Err(S3Error::with_message(
                S3ErrorCode::AccessDenied,
                "anonymous requests may only read public buckets",
            )),
        }
    }
}

/// A lock per object (bucket, key) being written.
type WriteLocks =
    std::collections::HashMap<(String, String), std::sync::Arc<tokio::sync::Mutex<()>>>;

/// s3s-fs's file system, with conditional reads and larger read chunks on top. Cloned
/// into the task that finishes each PUT.
#[derive(Clone, Debug)]
struct Store(Arc<StoreInner>);

impl std::ops::Deref for Store {
    type Target = StoreInner;
    fn deref(&self) -> &StoreInner {
        &self.0
    }
}

#[derive(Debug)]
struct StoreInner {
    fs: FileSystem,
    /// The canonical root, as s3s-fs resolves it.
    root: PathBuf,
    /// One lock per object being written. s3s-fs checks a PUT's conditions, then writes:
    /// without the lock two racing `If-None-Match: *` PUTs would both succeed, where S3
    /// lets exactly one win.
    writing: std::sync::Mutex<WriteLocks>,
}

impl Store {
    /// The write of a PUT, under its object's lock (see [`StoreInner::writing`]).
    async fn put_locked(
        &self,
        req: S3Request<PutObjectInput>,
        checked: Option<String>,
        mismatch: Arc<AtomicBool>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let id = (req.input.bucket.clone(), req.input.key.clone());
        let lock = {
            let mut writing = self
                .writing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::sync::Arc::clone(writing.entry(id.clone()).or_default())
        };
        let result = {
            let _held = lock.lock().await;
            match (self.fs.put_object(req).await, checked) {
                (Ok(mut response), Some(sha256)) => {
                    self.record_sha256(&id.0, &id.1, &sha256).await.map(|()| {
                        response.output.checksum_sha256 = Some(sha256);
                        response
                    })
                }
                (result, _) => result,
            }
        };
        let result = if mismatch.load(Ordering::SeqCst) {
            Err(S3Error::with_message(
                S3ErrorCode::BadDigest,
                "The SHA256 you specified did not match the calculated checksum.",
            ))
        } else {
            result
        };
        let mut writing = self
            .writing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if std::sync::Arc::strong_count(&lock) <= 2 {
            writing.remove(&id);
        }
        result
    }
}

impl StoreInner {
    /// NoSuchBucket unless `bucket` is a directory under the root (s3s has checked the
    /// name against S3's rules, so it is a plain directory name).
    fn bucket_exists(&self, bucket: &str) -> S3Result<()> {
        if self.root.join(bucket).is_dir() {
            Ok(())
        } else {
            Err(S3Error::with_message(
                S3ErrorCode::NoSuchBucket,
                "The specified bucket does not exist",
            ))
        }
    }

    /// Where s3s-fs keeps `key` of `bucket`, if the key is a plain relative path.
    fn object_path(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        let key_path = Path::new(key);
        let plain = |p: &Path| p.components().all(|c| matches!(c, Component::Normal(_)));
        (plain(Path::new(bucket)) && plain(key_path)).then(|| self.root.join(bucket).join(key_path))
    }

    /// Where s3s-fs 0.14 records an object's ETag and checksums (`FileSystem::
    /// get_internal_info_path`: the bucket and key in URL-safe base64 without padding).
    fn record_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root.join(format!(
            ".bucket-{}.object-{}.internal.json",
            URL_SAFE_NO_PAD.encode(bucket.as_bytes()),
            URL_SAFE_NO_PAD.encode(key.as_bytes())
        ))
    }

    /// Adds a SHA-256 checksum (base64) to s3s-fs's record of the object (a JSON object;
    /// written beside it and renamed over it, so a reader sees the old record or the new).
    async fn record_sha256(&self, bucket: &str, key: &str, sha256: &str) -> S3Result<()> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let path = self.record_path(bucket, key);
        let failed = |e: &dyn std::fmt::Display| {
            S3Error::with_message(
                S3ErrorCode::InternalError,
                format!("cannot record the checksum of {key}: {e}"),
            )
        };
        let mut record: serde_json::Map<String, serde_json::Value> =
            match tokio::fs::read(&path).await {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| failed(&e))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Map::new(),
                Err(e) => return Err(failed(&e)),
            };
        record.insert(
            "checksum_sha256".to_owned(),
            serde_json::Value::String(sha256.to_owned()),
        );
        let bytes = serde_json::to_vec(&record).map_err(|e| failed(&e))?;
        let tmp = self.root.join(format!(
            ".molt-s3-record.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        tokio::fs::write(&tmp, &bytes)
            .await
            .map_err(|e| failed(&e))?;
        tokio::fs::rename(&tmp, &path).await.map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            failed(&e)
        })
    }

    /// True when the object's file changed after s3s-fs recorded its checksums: written
    /// into the bucket's directory behind the server's back.
    async fn record_is_stale(&self, bucket: &str, key: &str) -> bool {
        let Some(object) = self.object_path(bucket, key) else {
            return true;
        };
        let modified = |p: PathBuf| async move { tokio::fs::metadata(p).await?.modified() };
        match (
            modified(object).await,
            modified(self.record_path(bucket, key)).await,
        ) {
            (Ok(object), Ok(record)) => object > record,
            _ => true,
        }
    }

    /// Serves the same bytes as s3s-fs's body, read 1 MiB at a time, when the file on disk
    /// is still the one s3s-fs opened (same length and modification time). Otherwise keeps
    /// s3s-fs's own body.
    async fn faster_body(
        &self,
        bucket: &str,
        key: &str,
        range: Option<&Range>,
        out: &mut GetObjectOutput,
    ) {
        let Some(path) = self.object_path(bucket, key) else {
            return;
        };
        let Ok(mut file) = tokio::fs::File::open(&path).await else {
            return;
        };
        let Ok(meta) = file.metadata().await else {
            return;
        };
        let Ok(modified) = meta.modified() else {
            return;
        };
        let len = meta.len();
        let total = match &out.content_range {
            Some(cr) => cr.rsplit('/').next().and_then(|t| t.parse::<u64>().ok()),
            None => out.content_length.and_then(|n| u64::try_from(n).ok()),
        };
        if total != Some(len) || out.last_modified.as_ref() != Some(&Timestamp::from(modified)) {
            return;
        }
        let span = match range {
            None => 0..len,
            Some(r) => match r.check(len) {
                Ok(span) => span,
                Err(_) => return,
            },
        };
        if file
            .seek(std::io::SeekFrom::Start(span.start))
            .await
            .is_err()
        {
            return;
        }
        let reader = file.take(span.end - span.start);
        let stream = chunked_stream(reader);
        out.body = Some(StreamingBlob::wrap(stream));
    }
}

/// `body`, passed through unchanged, hashed on the way; at its end, if its SHA-256 (in
/// base64) is not `expected`, an error instead of the end, so that s3s-fs drops what it
/// wrote instead of moving it into place, and `mismatch` set.
fn verified_body(
    body: StreamingBlob,
    expected: String,
    mismatch: Arc<AtomicBool>,
) -> StreamingBlob {
    let stream = futures::stream::unfold(Some((body, sha2::Sha256::new())), move |state| {
        let (expected, mismatch) = (expected.clone(), Arc::clone(&mismatch));
        async move {
            let (mut body, mut hasher) = state?;
            match futures::StreamExt::next(&mut body).await {
                Some(Ok(bytes)) => {
                    hasher.update(&bytes);
                    Some((Ok(bytes), Some((body, hasher))))
                }
                Some(Err(e)) => Some((Err(std::io::Error::other(e)), None)),
                None if STANDARD.encode(hasher.finalize()) == expected.trim() => None,
                None => {
                    mismatch.store(true, Ordering::SeqCst);
                    Some((
                        Err(std::io::Error::other("x-amz-checksum-sha256 mismatch")),
                        None,
                    ))
                }
            }
        }
    });
    StreamingBlob::wrap(stream)
}

/// A byte stream over `reader`, [`READ_CHUNK`] bytes per read.
fn chunked_stream(
    reader: impl tokio::io::AsyncRead + Send + Sync + Unpin + 'static,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + Sync + 'static {
    futures::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        let mut buf = bytes::BytesMut::with_capacity(READ_CHUNK);
        loop {
            match reader.read_buf(&mut buf).await {
                Ok(0) if buf.is_empty() => return None,
                Ok(0) => return Some((Ok(buf.freeze()), None)),
                Ok(_) if buf.len() < READ_CHUNK => continue,
                Ok(_) => return Some((Ok(buf.freeze()), Some(reader))),
                Err(e) => return Some((Err(e), None)),
            }
        }
    })
}

/// 304 for `If-None-Match` that matches `etag` (or is `*`); 412 for `If-Match` that does not.
fn check_conditions(
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    etag: Option<&ETag>,
) -> S3Result<()> {
    let matches = |c: &ETagCondition, strong: bool| match (c, etag) {
        (ETagCondition::Any, _) => true,
        (ETagCondition::ETag(want), Some(have)) if strong => have.strong_cmp(want),
        (ETagCondition::ETag(want), Some(have)) => have.weak_cmp(want),
        (ETagCondition::ETag(_), None) => false,
    };
    if let Some(c) = if_match
        && !matches(c, true)
    {
        return Err(S3Error::with_message(
            S3ErrorCode::PreconditionFailed,
            "At least one of the pre-conditions you specified did not hold",
        ));
    }
    if let Some(c) = if_none_match
        && matches(c, false)
    {
        let mut e = S3Error::new(S3ErrorCode::NotModified);
        if let Some(value) = etag.and_then(|t| t.to_http_header().ok()) {
            let mut headers = hyper::HeaderMap::new();
            headers.insert(hyper::header::ETAG, value);
            e.set_headers(headers);
        }
        return Err(e);
    }
    Ok(())
}

/// Implements [`S3`] for [`Store`]: the listed operations go straight to s3s-fs, then the
/// items given after them.
macro_rules! store_impl {
    (
        delegate { $($op:ident($input:ty) -> $output:ty;)* }
        in_existing_bucket { $($bop:ident($binput:ty) -> $boutput:ty;)* }
        $($custom:item)*
    ) => {
        #[async_trait::async_trait]
        impl S3 for Store {
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.fs.$op(req).await
                }
            )*
            $(
                async fn $bop(&self, req: S3Request<$binput>) -> S3Result<S3Response<$boutput>> {
                    self.bucket_exists(&req.input.bucket)?;
                    self.fs.$bop(req).await
                }
            )*
            $($custom)*
        }
    };
}

store_impl! {
    delegate {
        create_bucket(CreateBucketInput) -> CreateBucketOutput;
        delete_bucket(DeleteBucketInput) -> DeleteBucketOutput;
        delete_object(DeleteObjectInput) -> DeleteObjectOutput;
        delete_objects(DeleteObjectsInput) -> DeleteObjectsOutput;
        get_bucket_location(GetBucketLocationInput) -> GetBucketLocationOutput;
        head_bucket(HeadBucketInput) -> HeadBucketOutput;
        list_buckets(ListBucketsInput) -> ListBucketsOutput;
        list_objects(ListObjectsInput) -> ListObjectsOutput;
        list_objects_v2(ListObjectsV2Input) -> ListObjectsV2Output;
        upload_part(UploadPartInput) -> UploadPartOutput;
        upload_part_copy(UploadPartCopyInput) -> UploadPartCopyOutput;
        list_parts(ListPartsInput) -> ListPartsOutput;
        complete_multipart_upload(CompleteMultipartUploadInput) -> CompleteMultipartUploadOutput;
        abort_multipart_upload(AbortMultipartUploadInput) -> AbortMultipartUploadOutput;
    }

    // s3s-fs creates the directories a write needs, bucket included; S3 answers NoSuchBucket.
    in_existing_bucket {
        copy_object(CopyObjectInput) -> CopyObjectOutput;
        create_multipart_upload(CreateMultipartUploadInput) -> CreateMultipartUploadOutput;
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let bucket = req.input.bucket.clone();
        let key = req.input.key.clone();
        let range = req.input.range;
        let if_match = req.input.if_match.clone();
        let if_none_match = req.input.if_none_match.clone();
        self.bucket_exists(&bucket)?;
        let mut response = self.fs.get_object(req).await?;
        check_conditions(
            if_match.as_ref(),
            if_none_match.as_ref(),
            response.output.e_tag.as_ref(),
        )?;
        self.faster_body(&bucket, &key, range.as_ref(), &mut response.output)
            .await;
        Ok(response)
    }

    async fn put_object(
        &self,
        mut req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.bucket_exists(&req.input.bucket)?;
        let mismatch = Arc::new(AtomicBool::new(false));
        // The SHA-256 this server checks and records itself (see the module documentation).
        let mut checked = None;
        let sha256_only = req
            .input
            .checksum_algorithm
            .as_ref()
            .is_none_or(|a| a.as_str() == ChecksumAlgorithm::SHA256);
        if let Some(expected) = req.input.checksum_sha256.clone()
            && let Some(body) = req.input.body.take()
        {
            req.input.body = Some(verified_body(
                body,
                expected.clone(),
                Arc::clone(&mismatch),
            ));
            if sha256_only {
                req.input.checksum_sha256 = None;
                req.input.checksum_algorithm = None;
                checked = Some(expected);
            }
        }
        // The rest runs in a task of its own: hyper drops this future when the client goes
        // away, and a PUT cut off between s3s-fs renaming the object into place and the
        // checksum being recorded would leave the old checksum on the new bytes. S3's
        // PUTs are atomic; this one finishes once its body has arrived.
        let store = self.clone();
        let task = tokio::spawn(async move { store.put_locked(req, checked, mismatch).await });
        task.await.unwrap_or_else(|e| {
            Err(S3Error::with_message(
                S3ErrorCode::InternalError,
                format!("the PUT task failed: {e}"),
            ))
        })
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let if_match = req.input.if_match.clone();
        let if_none_match = req.input.if_none_match.clone();
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let mut response = self.fs.head_object(req).await?;
        check_conditions(
            if_match.as_ref(),
            if_none_match.as_ref(),
            response.output.e_tag.as_ref(),
        )?;
        let out = &mut response.output;
        let has_checksum = out.checksum_crc32.is_some()
            || out.checksum_crc32c.is_some()
            || out.checksum_crc64nvme.is_some()
            || out.checksum_sha1.is_some()
            || out.checksum_sha256.is_some();
        if has_checksum && self.record_is_stale(&bucket, &key).await {
            out.checksum_crc32 = None;
            out.checksum_crc32c = None;
            out.checksum_crc64nvme = None;
            out.checksum_sha1 = None;
            out.checksum_sha256 = None;
        }
        Ok(response)
    }
}
