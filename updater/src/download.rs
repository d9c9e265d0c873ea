//! Download and stage a package in one pass (SPEC §6 step 6).
//!
//! [`download_and_stage`] streams a TUF target from the network and, as the bytes arrive,
//! appends them to `cache/<sha256>.partial`, hashes them, and feeds them to the safe
//! extractor ([`molt_archive::extract::extract`]), which writes the staging directory.
//! Nothing is buffered in memory beyond a few chunks, and the archive is read once.
//!
//! ```text
//!  network ──► pump (async) ──bounded channel──► Tee (blocking thread) ──► extractor ──► staging/
//!                                                 │  ├─ append to cache/<sha256>.partial
//!                                                 │  └─ sha256 + length, against the signed ones
//!  cache/<sha256>.partial (an earlier run's bytes) ┘  re-fed first, then the network resumes
//! ```
//!
//! The verifying reader (the [`Tee`]) is the trust boundary. It never hands the extractor
//! more than the signed length, and it reports end-of-file only once the stream has ended
//! (the server has nothing more to send) with exactly the signed length and the signed
//! sha256. On a mismatch it returns an error instead, so the extractor fails and removes what
//! it wrote. The extractor reads its source to end-of-file before it succeeds, and if it ever
//! did not, the stage reads the rest itself before anything is returned: a staging directory
//! is only ever handed back for bytes that matched the TUF metadata. When the extractor
//! refuses the archive early (say, a corrupt gzip stream), the rest is still read and hashed,
//! to tell a tampered download ([`DownloadError::HashMismatch`], exit 4) from a signed but
//! malformed package ([`DownloadError::Extract`]).
//!
//! Resuming: bytes already in the `.partial` file (from an interrupted attempt or an earlier
//! run) are re-fed to the hash and the extractor from disk, then the network continues from
//! there with `Range` ([`MoltTransport::fetch_range`]). A server that ignores `Range` sends
//! the whole file again: the partial file is truncated and the extractor restarts from byte
//! 0 on that same response. A partial file longer than the signed length is discarded; one
//! whose bytes fail the hash is discarded and the download starts once more from zero (an
//! earlier run may have kept bytes that a misbehaving mirror sent); a fresh download that
//! fails the hash is a verification failure.
//!
//! Retries: a transport failure (connection reset, truncated body, 5xx, the deadline or
//! the throughput floor) removes the half-written staging directory, keeps the partial
//! file, and retries after a capped exponential backoff with jitter ([`RetryPolicy::DOWNLOAD`], the shared policy). 404
//! and 403 are not retried ([`DownloadError::NotFound`]), nor are verification failures, nor
//! extraction errors. When this function returns an error, the staging directory does not
//! exist; the partial file is kept only after a transport failure, so that the next run
//! resumes. After a success it is removed: the staging directory holds the result.
//!
//! Free space is checked separately, before the download, with [`check_free_space`].

use std::fs::{File, OpenOptions};
use std::io::{self, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use molt_archive::extract::{self, ExtractError, Extracted, Limits};
use molt_fetch::retry::{RetryPolicy, is_transient, transfer_error};
use molt_fetch::transport::{
    MoltTransport, RangeResponse, TransferError, Transport, TransportError, TransportErrorKind,
    display_url,
};
use molt_fetch::tuf::TargetInfo;
use molt_schema::{PackageName, Platform, Sha256};
use sha2::Digest;
use tokio::sync::{mpsc, oneshot};
use url::Url;

/// Room kept free beyond three times the package size (the partial file, the staged files,
/// the installed copy).
pub const FREE_SPACE_MARGIN: u64 = 64 * 1024 * 1024;

/// Chunks in flight between the network and the extractor.
const CHANNEL_DEPTH: usize = 32;

/// The size of the reads that re-feed a partial file, and of the scratch buffer that reads a
/// stream to its end.
const READ_CHUNK: usize = 64 * 1024;

// =====================================================================================
// Public types

/// What to download and where to stage it.
#[derive(Debug)]
pub struct DownloadRequest<'a> {
    /// The target file's URL.
    pub url: Url,
    /// The signed length and sha256, from verified TUF metadata. These, and nothing the
    /// server says, decide what is accepted.
    pub expected: &'a TargetInfo,
    pub package: PackageName,
    pub platform: Platform,
    /// The staging directory (`versions/.staging-<v>`). It must not exist: the extractor creates
    /// it. Its parent is created if needed.
    pub staging: &'a Path,
    /// The partial file (`cache/<sha256>.partial`), resumed if it exists.
    pub partial: &'a Path,
    pub limits: &'a Limits,
    pub retry: RetryPolicy,
    /// Show a progress bar on stderr (only if stderr is a terminal).
    pub progress: bool,
}

/// What [`download_and_stage`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadReport {
    /// Bytes received from the network, over all attempts.
    pub bytes_fetched: u64,
    /// The offsets that transfers resumed from (answered with 206), in order.
    pub resumed_from: Vec<u64>,
    /// Attempts made, the successful one included.
    pub attempts: u32,
    /// What was written into the staging directory.
    pub extracted: Extracted,
    pub elapsed: Duration,
}

/// Why a download failed. URLs are shown without query strings (they may carry
/// credentials), through [`display_url`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// Not enough free space; see [`check_free_space`].
    #[error(
        "not enough free disk space in {}: the download needs {} (3 × the package size + 64 MiB) \
         but only {} is available; free at least {} on that file system (old versions, logs, \
         stale files in the download cache) and try again",
        path.display(), human(*need), human(*available), human(need.saturating_sub(*available))
    )]
    DiskSpace {
        path: PathBuf,
        /// Bytes needed.
        need: u64,
        /// Bytes available to this user.
        available: u64,
    },
    /// The server answered 404 or 403 (S3's answer for a missing key). Not retried.
    #[error(
        "{url} was not found on the server (HTTP 404 or 403); the repository lists it, so \
         the targets may not have been uploaded yet, or the bucket policy denies reading them"
    )]
    NotFound { url: String },
    /// The bytes do not have the signed sha256.
    #[error(
        "{url} does not match its signed sha256 (expected {expected}, got {actual}); the \
         file on the server, or a proxy or cache in between, is not the signed one"
    )]
    HashMismatch {
        url: String,
        expected: Sha256,
        actual: Sha256,
    },
    /// The stream ended before the signed length.
    #[error("{url} is {actual} bytes long, but its signed length is {expected} bytes")]
    LengthMismatch {
        url: String,
        expected: u64,
        actual: u64,
    },
    /// The server sent more than the signed length; the excess was refused.
    #[error("{url}: the server sent more than the signed length of {limit} bytes")]
    TooLong { url: String, limit: u64 },
    /// The transfer kept failing; `source` is the last failure.
    #[error(
        "downloading {url} failed after {attempts} {}",
        if *attempts == 1 { "attempt" } else { "attempts" }
    )]
    Transport {
        url: String,
        attempts: u32,
        #[source]
        source: TransportError,
    },
    /// The package could not be extracted into the staging directory: a signed but malformed
    /// archive, or a local error (disk full, permissions).
    #[error("the package could not be staged")]
    Extract(#[from] ExtractError),
    /// The partial file or a directory could not be created, read or written.
    #[error("cannot read or write {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl DownloadError {
    /// True for hash and length failures (the updater exits 4 for these, 1 for the rest).
    pub fn is_verification(&self) -> bool {
        matches!(
            self,
            Self::HashMismatch { .. } | Self::LengthMismatch { .. } | Self::TooLong { .. }
        )
    }
}

/// `n` bytes for messages: `1.5 GiB`, `64.0 MiB`, `512 B`.
fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    // Precision loss is fine for a message.
    #[allow(clippy::cast_precision_loss)]
    let mut value = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    format!("{value:.1} {unit}")
}

// =====================================================================================
// Free space

/// Checks that the file system holding `dir` has room for a package of `package_size`
/// bytes: `package_size × 3 +` [`FREE_SPACE_MARGIN`], counting only the space available to
/// this user. `dir` need not exist yet: its nearest existing ancestor is measured.
pub fn check_free_space(dir: &Path, package_size: u64) -> Result<(), DownloadError> {
    let need = package_size
        .saturating_mul(3)
        .saturating_add(FREE_SPACE_MARGIN);
    let probe = dir
        .ancestors()
        .find(|candidate| candidate.exists())
        .unwrap_or(dir);
    let stat = rustix::fs::statvfs(probe).map_err(|errno| DownloadError::Io {
        path: probe.to_owned(),
        source: errno.into(),
    })?;
    let available = stat.f_bavail.saturating_mul(stat.f_frsize);
    if available < need {
        return Err(DownloadError::DiskSpace {
            path: dir.to_owned(),
            need,
            available,
        });
    }
    Ok(())
}

// =====================================================================================
// The download

/// Downloads `req.url` and extracts it into `req.staging` in one pass; see the module
/// documentation. Call [`check_free_space`] first.
///
/// On success the staging directory holds exactly the package's files, from bytes whose
/// length and sha256 matched `req.expected`. On error it does not exist, with one exception:
/// a staging directory that already existed is refused
/// ([`ExtractError::DestinationExists`]) and left alone, because it is not ours.
pub async fn download_and_stage(
    transport: &MoltTransport,
    req: &DownloadRequest<'_>,
) -> Result<DownloadReport, DownloadError> {
    let started = Instant::now();
    let shown = display_url(&req.url);
    prepare(req)?;
    let progress = Progress::new(req.progress, req.expected.length);
    let max_attempts = req.retry.max_attempts();
    let mut run = Run::default();
    let mut fresh_retry_used = false;

    let result = loop {
        run.attempts += 1;
        let error = match attempt(transport, req, &mut run, &progress).await {
            Outcome::Staged(extracted) => break Ok(extracted),
            Outcome::Failed(error) => break Err(error),
            Outcome::ResumedHashMismatch(actual) => {
                let error = DownloadError::HashMismatch {
                    url: shown.clone(),
                    expected: req.expected.sha256,
                    actual,
                };
                if fresh_retry_used || run.attempts >= max_attempts {
                    break Err(error);
                }
                // The bytes kept from an earlier transfer may be the bad ones: one more try,
                // all from the network.
                fresh_retry_used = true;
                tracing::warn!(url = %shown, %error, "discarding the partial download and starting again");
                if let Err(source) = remove_file_if_exists(req.partial) {
                    break Err(DownloadError::Io {
                        path: req.partial.to_owned(),
                        source,
                    });
                }
                continue;
            }
            Outcome::Retry(error) => error,
        };
        if error.kind() == TransportErrorKind::FileNotFound {
            break Err(DownloadError::NotFound { url: shown.clone() });
        }
        if !is_transient(&error) || !req.retry.allows_another(run.attempts) {
            break Err(DownloadError::Transport {
                url: shown.clone(),
                attempts: run.attempts,
                source: error,
            });
        }
        if matches!(
            transfer_error(&error),
            Some(TransferError::RangeNotSatisfiable { .. })
        ) {
            // The server's file is not longer than what we have: start again from zero (the
            // length check then says what is wrong).
            if let Err(source) = remove_file_if_exists(req.partial) {
                break Err(DownloadError::Io {
                    path: req.partial.to_owned(),
                    source,
                });
            }
        }
        let delay = req.retry.delay(run.attempts);
        tracing::warn!(
            url = %shown,
            attempt = run.attempts,
            of = max_attempts,
            retry_in = ?delay,
            error = %molt_schema::cli::one_line(&error),
            "download interrupted; retrying"
        );
        tokio::time::sleep(delay).await;
    };
    progress.finish();

    match result {
        Ok(extracted) => {
            if let Err(error) = remove_file_if_exists(req.partial) {
                // Harmless: the next download of this target starts by checking it.
                tracing::warn!(path = %req.partial.display(), %error, "cannot remove the finished partial download");
            }
            Ok(DownloadReport {
                bytes_fetched: run.bytes_fetched,
                resumed_from: run.resumed_from,
                attempts: run.attempts,
                extracted,
                elapsed: started.elapsed(),
            })
        }
        Err(error) => {
            if let Err(cleanup) = remove_dir_if_exists(req.staging) {
                tracing::error!(
                    path = %req.staging.display(),
                    error = %cleanup,
                    "cannot remove the staging directory after a failed download; remove it by hand"
                );
            }
            // The partial file is worth keeping only to resume after a transport failure.
            let keep_partial = matches!(error, DownloadError::Transport { .. })
                && std::fs::metadata(req.partial).is_ok_and(|m| m.len() > 0);
            if !keep_partial && let Err(cleanup) = remove_file_if_exists(req.partial) {
                tracing::warn!(path = %req.partial.display(), error = %cleanup, "cannot remove the partial download");
            }
            Err(error)
        }
    }
}

/// Checks the staging directory is absent and creates the parents of both paths.
fn prepare(req: &DownloadRequest<'_>) -> Result<(), DownloadError> {
    // Refuse before touching anything: a directory we did not create is not ours to remove.
    if std::fs::symlink_metadata(req.staging).is_ok() {
        return Err(ExtractError::DestinationExists {
            path: req.staging.to_owned(),
        }
        .into());
    }
    for path in [req.staging, req.partial] {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| DownloadError::Io {
                path: parent.to_owned(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Counters over all attempts.
#[derive(Debug, Default)]
struct Run {
    bytes_fetched: u64,
    resumed_from: Vec<u64>,
    attempts: u32,
}

/// How one attempt ended.
#[derive(Debug)]
enum Outcome {
    Staged(Extracted),
    /// A transport failure: the staging directory is gone, the partial file kept.
    Retry(TransportError),
    /// Bytes kept from an earlier transfer were part of a download that failed the hash.
    ResumedHashMismatch(Sha256),
    /// Final.
    Failed(DownloadError),
}

/// One attempt: start the extractor on a blocking thread, pump the network into it, and
/// combine what both sides saw.
async fn attempt(
    transport: &MoltTransport,
    req: &DownloadRequest<'_>,
    run: &mut Run,
    progress: &Progress,
) -> Outcome {
    let shown = display_url(&req.url);
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let (ready_tx, ready_rx) = oneshot::channel();
    let job = StageJob {
        rx,
        ready: ready_tx,
        partial: req.partial.to_owned(),
        staging: req.staging.to_owned(),
        expected_len: req.expected.length,
        expected_sha: req.expected.sha256,
        package: req.package,
        platform: req.platform,
        limits: req.limits.clone(),
    };
    let worker = tokio::task::spawn_blocking(move || job.run());
    let network = pump(
        transport,
        &req.url,
        req.expected.length,
        tx,
        ready_rx,
        run,
        progress,
    )
    .await;
    let staged = match worker.await {
        Ok(staged) => staged,
        Err(join) => match join.try_into_panic() {
            // The extractor panicked: a bug, not a download failure. Pass it on.
            Ok(payload) => {
                let _ = remove_dir_if_exists(req.staging);
                std::panic::resume_unwind(payload)
            }
            Err(join) => {
                return Outcome::Failed(DownloadError::Io {
                    path: req.staging.to_owned(),
                    source: io::Error::other(join),
                });
            }
        },
    };
    match staged {
        Staged::Done(extracted) => Outcome::Staged(extracted),
        Staged::Extract(error) => Outcome::Failed(DownloadError::Extract(error)),
        Staged::Stopped { stop, mixed } => match stop {
            Stop::Interrupted | Stop::Restart => Outcome::Retry(match network {
                Err(error) => error,
                // The pump ended cleanly, yet the stream did not: should not happen, and is
                // worth another attempt if it does.
                Ok(()) => TransportError::new_with_cause(
                    TransportErrorKind::Other,
                    &shown,
                    "the download stopped before its end",
                ),
            }),
            Stop::TooLong => Outcome::Failed(DownloadError::TooLong {
                url: shown,
                limit: req.expected.length,
            }),
            Stop::Short { received } => Outcome::Failed(DownloadError::LengthMismatch {
                url: shown,
                expected: req.expected.length,
                actual: received,
            }),
            Stop::HashMismatch { actual } if mixed => Outcome::ResumedHashMismatch(actual),
            Stop::HashMismatch { actual } => Outcome::Failed(DownloadError::HashMismatch {
                url: shown,
                expected: req.expected.sha256,
                actual,
            }),
            Stop::Partial(source) => Outcome::Failed(DownloadError::Io {
                path: req.partial.to_owned(),
                source,
            }),
        },
    }
}

/// A message from the network to the [`Tee`].
#[derive(Debug)]
enum Msg {
    Data(Bytes),
    /// The server ignored `Range`: the data that follows starts at byte 0.
    Restart,
    /// The stream ended cleanly. (Dropping the sender without this means it failed.)
    End,
}

/// Moves the network's bytes into the channel. Waits until the worker has re-fed the
/// partial file (it says how many bytes that was), then fetches the rest. Returns the
/// transport's error, if that is what ended the transfer; it stops quietly when the worker
/// hangs up (the worker says why).
async fn pump(
    transport: &MoltTransport,
    url: &Url,
    expected_len: u64,
    tx: mpsc::Sender<Msg>,
    ready: oneshot::Receiver<u64>,
    run: &mut Run,
    progress: &Progress,
) -> Result<(), TransportError> {
    let Ok(have) = ready.await else {
        return Ok(());
    };
    progress.set_position(have);
    if have == expected_len {
        let _ = tx.send(Msg::End).await;
        return Ok(());
    }
    let request = async {
        if have == 0 {
            transport.fetch(url.clone()).await
        } else {
            match transport.fetch_range(url.clone(), have).await? {
                RangeResponse::Partial(stream) => {
                    tracing::info!(url = %display_url(url), offset = have, "resuming the download");
                    run.resumed_from.push(have);
                    Ok(stream)
                }
                RangeResponse::Full(stream) => {
                    tracing::warn!(
                        url = %display_url(url),
                        offset = have,
                        "the server ignored Range; downloading again from the start"
                    );
                    progress.set_position(0);
                    // If the worker has gone, the loop below notices.
                    let _ = tx.send(Msg::Restart).await;
                    Ok(stream)
                }
            }
        }
    };
    let mut stream = tokio::select! {
        stream = request => stream?,
        () = tx.closed() => return Ok(()),
    };
    loop {
        let chunk = tokio::select! {
            chunk = stream.next() => chunk,
            () = tx.closed() => return Ok(()),
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk?;
        let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        run.bytes_fetched = run.bytes_fetched.saturating_add(len);
        progress.inc(len);
        if chunk.is_empty() {
            continue;
        }
        if tx.send(Msg::Data(chunk)).await.is_err() {
            return Ok(());
        }
    }
    let _ = tx.send(Msg::End).await;
    Ok(())
}

fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn remove_dir_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

// =====================================================================================
// The blocking side

/// Everything the blocking thread needs for one attempt.
struct StageJob {
    rx: mpsc::Receiver<Msg>,
    ready: oneshot::Sender<u64>,
    partial: PathBuf,
    staging: PathBuf,
    expected_len: u64,
    expected_sha: Sha256,
    package: PackageName,
    platform: Platform,
    limits: Limits,
}

/// How the blocking side ended.
#[derive(Debug)]
enum Staged {
    /// Extracted from verified bytes.
    Done(Extracted),
    /// The extractor failed on its own: a local error, or verified bytes it refused. The
    /// staging directory is gone.
    Extract(ExtractError),
    /// The stream failed or failed verification. The staging directory is gone.
    Stopped {
        stop: Stop,
        /// Some of the bytes came from the partial file of an earlier transfer.
        mixed: bool,
    },
}

impl StageJob {
    fn run(self) -> Staged {
        let StageJob {
            rx,
            ready,
            partial,
            staging,
            expected_len,
            expected_sha,
            package,
            platform,
            limits,
        } = self;
        let mixed_failure = |source| Staged::Stopped {
            stop: Stop::Partial(source),
            mixed: false,
        };
        let file = match open_partial(&partial) {
            Ok(file) => file,
            Err(source) => return mixed_failure(source),
        };
        let mut have = match file.metadata() {
            Ok(metadata) => metadata.len(),
            Err(source) => return mixed_failure(source),
        };
        if have > expected_len {
            tracing::warn!(
                path = %partial.display(),
                have,
                expected = expected_len,
                "the partial download is longer than the file; discarding it"
            );
            if let Err(source) = file.set_len(0) {
                return mixed_failure(source);
            }
            have = 0;
        }
        let mut tee = Tee::new(file, have, rx, ready, expected_len, expected_sha);
        loop {
            let error = match extract::extract(&mut tee, package, platform, &staging, &limits) {
                Ok(extracted) => {
                    // The extractor reads to end-of-file, which the tee gives only once the
                    // bytes are verified. Make sure of it rather than trust it.
                    if !tee.is_verified() {
                        tee.drain();
                    }
                    if tee.is_verified() {
                        return Staged::Done(extracted);
                    }
                    let _ = remove_dir_if_exists(&staging);
                    None
                }
                Err(error) => Some(error),
            };
            // After a failure the extractor has removed the directory, or says it could not.
            let _ = remove_dir_if_exists(&staging);
            if let Some(error) = error
                && !tee.has_failed()
            {
                // The extractor stopped on its own.
                if is_local(&error) {
                    return Staged::Extract(error);
                }
                // It refused the archive: read the rest, to tell tampering (a hash mismatch)
                // from a signed package that is malformed.
                tee.drain();
                if tee.is_verified() || !tee.has_failed() {
                    return Staged::Extract(error);
                }
            }
            match tee.take_failure() {
                Some(Stop::Restart) => {
                    if let Err(source) = tee.restart() {
                        return mixed_failure(source);
                    }
                }
                Some(stop) => {
                    return Staged::Stopped {
                        stop,
                        mixed: tee.mixed,
                    };
                }
                // Not reached: `drain` ends verified or failed.
                None => {
                    return Staged::Stopped {
                        stop: Stop::Interrupted,
                        mixed: tee.mixed,
                    };
                }
            }
        }
    }
}

/// Errors of the local system rather than of the archive's contents.
fn is_local(error: &ExtractError) -> bool {
    matches!(
        error,
        ExtractError::DestinationExists { .. }
            | ExtractError::CreateDir { .. }
            | ExtractError::CreateFile { .. }
            | ExtractError::WriteFile { .. }
            | ExtractError::Sync { .. }
            | ExtractError::Spool { .. }
            | ExtractError::Cleanup { .. }
    )
}

/// Opens (or creates) the partial file for reading and appending, without following a
/// symbolic link.
fn open_partial(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let nofollow = rustix::fs::OFlags::NOFOLLOW.bits();
        options.custom_flags(i32::try_from(nofollow).unwrap_or(0));
    }
    options.open(path)
}

/// Why the [`Tee`] stopped giving bytes.
#[derive(Debug)]
enum Stop {
    /// The network side went away without ending the stream (a transport failure).
    Interrupted,
    /// The server ignored `Range`: start again from byte 0.
    Restart,
    /// More bytes than the signed length.
    TooLong,
    /// The stream ended before the signed length.
    Short {
        received: u64,
    },
    HashMismatch {
        actual: Sha256,
    },
    /// The partial file could not be read or written.
    Partial(io::Error),
}

impl Stop {
    fn describe(&self) -> &'static str {
        match self {
            Stop::Interrupted => "the download was interrupted",
            Stop::Restart => "the download restarts from the beginning",
            Stop::TooLong => "the download is longer than its signed length",
            Stop::Short { .. } => "the download is shorter than its signed length",
            Stop::HashMismatch { .. } => "the download does not match its signed sha256",
            Stop::Partial(_) => "the partial download file cannot be read or written",
        }
    }
}

/// The verifying reader the extractor reads from: first the partial file's bytes, then the
/// network's (each appended to the partial file). Every byte is counted and hashed; it gives
/// end-of-file only after the stream has ended with the signed length and sha256, and it
/// never gives more than the signed length.
struct Tee {
    file: File,
    /// Bytes of the partial file still to re-feed.
    refeed_left: u64,
    /// Told the partial file's length once it has been re-fed, so the network can resume.
    ready: Option<oneshot::Sender<u64>>,
    rx: mpsc::Receiver<Msg>,
    /// Network bytes received but not yet read.
    pending: Bytes,
    hasher: sha2::Sha256,
    total: u64,
    expected_len: u64,
    expected_sha: Sha256,
    /// Some bytes came from the partial file.
    mixed: bool,
    verified: bool,
    failure: Option<Stop>,
}

impl Tee {
    fn new(
        file: File,
        have: u64,
        rx: mpsc::Receiver<Msg>,
        ready: oneshot::Sender<u64>,
        expected_len: u64,
        expected_sha: Sha256,
    ) -> Self {
        let mut tee = Self {
            file,
            refeed_left: have,
            ready: Some(ready),
            rx,
            pending: Bytes::new(),
            hasher: sha2::Sha256::new(),
            total: 0,
            expected_len,
            expected_sha,
            mixed: have > 0,
            verified: false,
            failure: None,
        };
        if have == 0 {
            tee.signal_ready();
        }
        tee
    }

    fn is_verified(&self) -> bool {
        self.verified
    }

    fn has_failed(&self) -> bool {
        self.failure.is_some()
    }

    fn take_failure(&mut self) -> Option<Stop> {
        self.failure.take()
    }

    fn signal_ready(&mut self) {
        if let Some(ready) = self.ready.take() {
            // The receiver is gone only if the attempt is over.
            let _ = ready.send(self.total);
        }
    }

    /// Truncates the partial file and starts counting and hashing from zero.
    fn restart(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.refeed_left = 0;
        self.pending = Bytes::new();
        self.hasher = sha2::Sha256::new();
        self.total = 0;
        self.mixed = false;
        self.verified = false;
        self.failure = None;
        self.signal_ready();
        Ok(())
    }

    /// Reads to the end (or the first failure), for the hash.
    fn drain(&mut self) {
        let mut scratch = vec![0; READ_CHUNK];
        while let Ok(n) = self.read(&mut scratch) {
            if n == 0 {
                break;
            }
        }
    }

    fn fail(&mut self, stop: Stop) -> io::Error {
        let error = io::Error::other(stop.describe());
        self.failure = Some(stop);
        error
    }

    /// Gets the next bytes into `pending`. `Ok(false)` at a verified end.
    fn fill(&mut self) -> Result<bool, Stop> {
        loop {
            let message = self.rx.blocking_recv();
            match message {
                Some(Msg::Data(chunk)) => {
                    let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
                    if len == 0 {
                        continue;
                    }
                    if self
                        .total
                        .checked_add(len)
                        .is_none_or(|after| after > self.expected_len)
                    {
                        return Err(Stop::TooLong);
                    }
                    self.file.write_all(&chunk).map_err(Stop::Partial)?;
                    self.hasher.update(&chunk);
                    self.total += len;
                    self.pending = chunk;
                    return Ok(true);
                }
                Some(Msg::End) => {
                    if self.total < self.expected_len {
                        return Err(Stop::Short {
                            received: self.total,
                        });
                    }
                    let actual =
                        Sha256::from_bytes(std::mem::take(&mut self.hasher).finalize().into());
                    if actual != self.expected_sha {
                        return Err(Stop::HashMismatch { actual });
                    }
                    self.verified = true;
                    return Ok(false);
                }
                Some(Msg::Restart) => return Err(Stop::Restart),
                None => return Err(Stop::Interrupted),
            }
        }
    }

    /// Re-feeds the partial file into `buf`.
    fn refeed(&mut self, buf: &mut [u8]) -> Result<usize, Stop> {
        let want = usize::try_from(self.refeed_left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = loop {
            match self.file.read(&mut buf[..want]) {
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                other => break other.map_err(Stop::Partial)?,
            }
        };
        if n == 0 {
            return Err(Stop::Partial(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the partial download file shrank while it was read",
            )));
        }
        self.hasher.update(&buf[..n]);
        self.total += n as u64;
        self.refeed_left -= n as u64;
        if self.refeed_left == 0 {
            self.signal_ready();
        }
        Ok(n)
    }
}

impl Read for Tee {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(stop) = &self.failure {
            return Err(io::Error::other(stop.describe()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.refeed_left > 0 {
            return self.refeed(buf).map_err(|stop| self.fail(stop));
        }
        if self.pending.is_empty() {
            if self.verified {
                return Ok(0);
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(stop) => return Err(self.fail(stop)),
            }
        }
        let n = self.pending.len().min(buf.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.advance(n);
        Ok(n)
    }
}

// =====================================================================================
// Progress

/// A progress bar on stderr when asked for and stderr is a terminal; nothing otherwise.
#[derive(Debug)]
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new(wanted: bool, len: u64) -> Self {
        let bar = (wanted && io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "{bytes:>10}/{total_bytes} [{wide_bar}] {bytes_per_sec:>12} {eta:>4}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        Self { bar }
    }

    fn set_position(&self, position: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(position);
        }
    }

    fn inc(&self, delta: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(delta);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

// =====================================================================================

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_errors_are_told_apart() {
        let sha = Sha256::digest(b"x");
        let url = "https://example.com/a.tar.gz".to_owned();
        assert!(
            DownloadError::HashMismatch {
                url: url.clone(),
                expected: sha,
                actual: sha
            }
            .is_verification()
        );
        assert!(
            DownloadError::LengthMismatch {
                url: url.clone(),
                expected: 2,
                actual: 1
            }
            .is_verification()
        );
        assert!(
            DownloadError::TooLong {
                url: url.clone(),
                limit: 1
            }
            .is_verification()
        );
        assert!(!DownloadError::NotFound { url }.is_verification());
        assert!(
            !DownloadError::DiskSpace {
                path: "/x".into(),
                need: 2,
                available: 1
            }
            .is_verification()
        );
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(64 * 1024 * 1024), "64.0 MiB");
        assert_eq!(human(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(human(u64::MAX), "16777216.0 TiB");
    }

    #[test]
    fn disk_space_message_names_need_available_and_what_to_do() {
        let error = DownloadError::DiskSpace {
            path: "/opt/molt/state/cache".into(),
            need: 3 * 200 * 1024 * 1024 + FREE_SPACE_MARGIN,
            available: 100 * 1024 * 1024,
        };
        assert_eq!(
            error.to_string(),
            "not enough free disk space in /opt/molt/state/cache: the download needs 664.0 MiB \
             (3 × the package size + 64 MiB) but only 100.0 MiB is available; free at least \
             564.0 MiB on that file system (old versions, logs, stale files in the download \
             cache) and try again"
        );
    }
}
