//! The one-pass download (SPEC §6 step 6) against the real fault-injecting HTTP server:
//! a real package, served, downloaded, hashed and extracted; resets, stalls, 5xx, truncation,
//! an ignored `Range`, 403, tampering, too many bytes, leftover partial files, a full disk.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use molt_archive::extract::{ExtractError, Limits};
use molt_archive::package::package;
use molt_fetch::retry::RetryPolicy;
use molt_fetch::transport::{HttpSettings, MoltTransport, ProxySettings, Url};
use molt_fetch::tuf::TargetInfo;
use molt_host::HostLayout;
use molt_schema::{PackageName, Platform, Sha256, Version};
use molt_tests::http_server::{Fault, FileServer, Times};
use molt_updater::download::{
    DownloadError, DownloadReport, DownloadRequest, check_free_space, download_and_stage,
};

const PLATFORM: Platform = Platform::LinuxAmd64;

/// Deterministic bytes that don't compress (so the archive is about as large as its inputs).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A packaged `molt-agent` archive, served; and a host directory to download into.
struct Fixture {
    /// Holds the inputs and the served tree.
    _dir: tempfile::TempDir,
    server: FileServer,
    /// The served path, e.g. `/molt-agent/1.4.0/molt-agent-linux-amd64.tar.gz`.
    path: String,
    /// The file on the server's disk.
    served: PathBuf,
    /// The archive's bytes as packaged (and signed).
    archive: Vec<u8>,
    target: TargetInfo,
    agent: Vec<u8>,
    updater: Vec<u8>,
    _host: tempfile::TempDir,
    layout: HostLayout,
    version: Version,
}

impl Fixture {
    /// Two fake programs of `size` bytes each.
    fn new(size: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let version: Version = "1.4.0".parse().unwrap();
        let agent = noise(1, size);
        let updater = noise(2, size);
        let agent_path = dir.path().join("agent");
        let updater_path = dir.path().join("updater");
        std::fs::write(&agent_path, &agent).unwrap();
        std::fs::write(&updater_path, &updater).unwrap();
        let out = dir.path().join("repo");
        let archives = package(&version, PLATFORM, &agent_path, &updater_path, &out).unwrap();
        let packaged = archives
            .into_iter()
            .find(|a| a.package == PackageName::Agent)
            .unwrap();
        let archive = std::fs::read(&packaged.path).unwrap();
        assert_eq!(archive.len() as u64, packaged.size);
        let target = TargetInfo {
            name: packaged.target_name.clone(),
            length: packaged.size,
            sha256: packaged.sha256,
        };
        let server = FileServer::start(&out).unwrap();
        let host = tempfile::tempdir().unwrap();
        let layout = HostLayout::new(host.path());
        Self {
            path: format!(
                "/{}",
                packaged.path.strip_prefix(&out).unwrap().to_str().unwrap()
            ),
            served: packaged.path,
            _dir: dir,
            server,
            archive,
            target,
            agent,
            updater,
            _host: host,
            layout,
            version,
        }
    }

    fn url(&self) -> Url {
        Url::parse(&self.server.url(&self.path)).unwrap()
    }

    fn staging(&self) -> PathBuf {
        self.layout.staging_dir(&self.version)
    }

    fn partial(&self) -> PathBuf {
        self.layout.partial(&self.target.sha256)
    }

    fn len(&self) -> u64 {
        self.target.length
    }

    async fn download(&self) -> Result<DownloadReport, DownloadError> {
        self.download_with(&transport(), self.url()).await
    }

    async fn download_with(
        &self,
        transport: &MoltTransport,
        url: Url,
    ) -> Result<DownloadReport, DownloadError> {
        let staging = self.staging();
        let partial = self.partial();
        let limits = Limits::default();
        let request = DownloadRequest {
            url,
            expected: &self.target,
            package: PackageName::Agent,
            platform: PLATFORM,
            staging: &staging,
            partial: &partial,
            limits: &limits,
            retry: fast_retries(5),
            progress: false,
        };
        download_and_stage(transport, &request).await
    }

    /// The staging directory holds exactly the package's files, with the right bytes.
    fn assert_staged(&self, report: &DownloadReport) {
        let staging = self.staging();
        assert_eq!(
            std::fs::read(staging.join("bin/agent")).unwrap(),
            self.agent
        );
        assert_eq!(
            std::fs::read(staging.join("bin/updater")).unwrap(),
            self.updater
        );
        assert_eq!(
            std::fs::read_to_string(staging.join("VERSION")).unwrap(),
            "1.4.0\n"
        );
        let names: Vec<_> = report
            .extracted
            .files
            .iter()
            .map(|f| f.name.as_str())
            .collect();
        assert_eq!(names, ["VERSION", "bin/agent", "bin/updater"]);
        assert_eq!(report.extracted.version.as_deref(), Some("1.4.0"));
        assert!(!self.partial().exists(), "the partial file is removed");
    }

    /// Nothing is left behind: no staging directory, no partial file.
    fn assert_clean(&self) {
        assert!(!self.staging().exists(), "staging left behind");
        assert!(!self.partial().exists(), "partial left behind");
    }

    /// `(range, status)` of each request for the package.
    fn log(&self) -> Vec<(Option<String>, u16)> {
        self.server
            .request_log()
            .into_iter()
            .filter(|r| r.path == self.path)
            .map(|r| (r.range, r.status))
            .collect()
    }
}

fn settings() -> HttpSettings {
    HttpSettings {
        proxy: ProxySettings::none(),
        ..HttpSettings::default()
    }
}

fn transport() -> MoltTransport {
    MoltTransport::new(settings()).unwrap()
}

fn fast_retries(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial: Duration::from_millis(10),
        factor: 2,
        max: Duration::from_millis(40),
    }
}

/// The error and its causes, one per line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str("\n  caused by: ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

const SIZE: usize = 300 * 1024;

#[tokio::test]
async fn downloads_hashes_and_extracts_in_one_pass() {
    let fx = Fixture::new(SIZE);
    let report = fx.download().await.unwrap();
    fx.assert_staged(&report);
    assert_eq!(report.bytes_fetched, fx.len());
    assert_eq!(report.attempts, 1);
    assert!(report.resumed_from.is_empty());
    assert_eq!(fx.log(), [(None, 200)]);
}

#[tokio::test]
async fn a_reset_mid_body_resumes_with_range() {
    let fx = Fixture::new(SIZE);
    fx.server
        .faults()
        .on_path(&fx.path, Fault::ResetAfter(200_000), Times::Once);
    let report = fx.download().await.unwrap();
    fx.assert_staged(&report);
    assert_eq!(report.attempts, 2);
    let [offset] = report.resumed_from[..] else {
        panic!("{:?}", report.resumed_from);
    };
    assert!(offset > 0 && offset <= 200_000, "{offset}");
    // Every byte was fetched once: the first part before the reset, the rest after.
    assert_eq!(report.bytes_fetched, fx.len());
    assert_eq!(
        fx.log(),
        [(None, 200), (Some(format!("bytes={offset}-")), 206)]
    );
}

#[tokio::test]
async fn a_server_that_ignores_range_after_a_reset_means_starting_again() {
    let fx = Fixture::new(SIZE);
    fx.server
        .faults()
        .on_path(&fx.path, Fault::ResetAfter(200_000), Times::Once);
    fx.server
        .faults()
        .on_path(&fx.path, Fault::IgnoreRange, Times::Once);
    let report = fx.download().await.unwrap();
    fx.assert_staged(&report);
    assert_eq!(report.attempts, 2);
    assert!(report.resumed_from.is_empty(), "{:?}", report.resumed_from);
    let log = fx.log();
    assert_eq!(log.len(), 2, "{log:?}");
    // The resume asked for a range, got the whole file, and used it from byte 0.
    assert!(log[1].0.is_some(), "{log:?}");
    assert_eq!(log[1].1, 200);
    assert!(report.bytes_fetched > fx.len());
}

#[tokio::test]
async fn a_stall_is_ended_by_the_throughput_floor_and_retried() {
    let fx = Fixture::new(SIZE);
    fx.server.faults().on_path(
        &fx.path,
        Fault::Stall {
            after_bytes: 100_000,
            duration: Duration::from_secs(20),
        },
        Times::Once,
    );
    let transport = MoltTransport::new(HttpSettings {
        min_throughput: 256 * 1024,
        throughput_window: Duration::from_millis(200),
        deadline: Duration::from_secs(2),
        ..settings()
    })
    .unwrap();
    let started = Instant::now();
    let report = fx.download_with(&transport, fx.url()).await.unwrap();
    let elapsed = started.elapsed();
    fx.assert_staged(&report);
    assert_eq!(report.attempts, 2);
    assert_eq!(report.resumed_from.len(), 1, "{:?}", report.resumed_from);
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[tokio::test]
async fn a_stall_is_ended_by_the_deadline_and_retried() {
    let fx = Fixture::new(SIZE);
    fx.server.faults().on_path(
        &fx.path,
        Fault::Stall {
            after_bytes: 100_000,
            duration: Duration::from_secs(20),
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
    let report = fx.download_with(&transport, fx.url()).await.unwrap();
    let elapsed = started.elapsed();
    fx.assert_staged(&report);
    assert_eq!(report.attempts, 2);
    assert_eq!(report.resumed_from.len(), 1);
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn server_errors_are_retried() {
    let fx = Fixture::new(SIZE);
    fx.server
        .faults()
        .on_path(&fx.path, Fault::Status(503), Times::N(2));
    let report = fx.download().await.unwrap();
    fx.assert_staged(&report);
    assert_eq!(report.attempts, 3);
    assert_eq!(report.bytes_fetched, fx.len());
    assert_eq!(fx.log(), [(None, 503), (None, 503), (None, 200)]);
}

#[tokio::test]
async fn a_truncated_body_is_resumed() {
    let fx = Fixture::new(SIZE);
    fx.server
        .faults()
        .on_path(&fx.path, Fault::Truncate(150_000), Times::Once);
    let report = fx.download().await.unwrap();
    fx.assert_staged(&report);
    assert_eq!(report.attempts, 2);
    assert_eq!(report.resumed_from, [150_000]);
    assert_eq!(
        fx.log(),
        [(None, 200), (Some("bytes=150000-".to_owned()), 206)]
    );
}

#[tokio::test]
async fn retries_give_up_and_keep_the_partial_file_for_the_next_run() {
    let fx = Fixture::new(SIZE);
    // Every response is cut after 100,000 bytes: each attempt gets further, but five are
    // not enough for the whole archive.
    assert!(fx.len() > 5 * 100_000);
    fx.server
        .faults()
        .on_path(&fx.path, Fault::ResetAfter(100_000), Times::Always);
    let error = fx.download().await.unwrap_err();
    let DownloadError::Transport { attempts, .. } = &error else {
        panic!("{}", chain(&error));
    };
    assert_eq!(*attempts, 5);
    assert!(!error.is_verification());
    let text = chain(&error);
    assert!(text.contains("failed after 5 attempts"), "{text}");
    assert!(!fx.staging().exists());
    let kept = std::fs::metadata(fx.partial()).unwrap().len();
    assert!(kept > 100_000 && kept <= 500_000, "{kept}");
    let log = fx.log();
    assert_eq!(log.len(), 5);
    assert!(
        log[1..]
            .iter()
            .all(|(range, status)| range.is_some() && *status == 206),
        "{log:?}"
    );

    // The next run resumes from there.
    fx.server.faults().clear();
    let report = fx.download().await.unwrap();
    fx.assert_staged(&report);
    assert_eq!(report.resumed_from, [kept]);
    assert_eq!(report.bytes_fetched, fx.len() - kept);
}

#[tokio::test]
async fn forbidden_for_a_missing_file_is_not_found_without_retries() {
    let fx = Fixture::new(16 * 1024);
    fx.server
        .faults()
        .everywhere(Fault::ForbiddenForMissing, Times::Always);
    let url = Url::parse(&format!(
        "{}?X-Amz-Signature=s3cret",
        fx.server.url("/molt-agent/9.9.9/missing.tar.gz")
    ))
    .unwrap();
    let error = fx.download_with(&transport(), url).await.unwrap_err();
    let DownloadError::NotFound { url } = &error else {
        panic!("{}", chain(&error));
    };
    assert_eq!(url, &fx.server.url("/molt-agent/9.9.9/missing.tar.gz"));
    let text = chain(&error);
    assert!(!text.contains("s3cret"), "{text}");
    assert!(text.contains("was not found on the server"), "{text}");
    assert!(!error.is_verification());
    let log = fx.server.request_log();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].status, 403);
    fx.assert_clean();
}

#[tokio::test]
async fn tampered_bytes_fail_the_hash_and_leave_nothing_behind() {
    let fx = Fixture::new(SIZE);
    let mut tampered = fx.archive.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    std::fs::write(&fx.served, &tampered).unwrap();
    let error = fx.download().await.unwrap_err();
    let DownloadError::HashMismatch {
        expected, actual, ..
    } = &error
    else {
        panic!("{}", chain(&error));
    };
    assert_eq!(*expected, fx.target.sha256);
    assert_eq!(*actual, Sha256::digest(&tampered));
    assert!(error.is_verification());
    // Not retried.
    assert_eq!(fx.log().len(), 1);
    fx.assert_clean();
}

#[tokio::test]
async fn tampering_the_extractor_cannot_see_fails_the_hash() {
    // Byte 4 of a gzip header is the modification time, which no decoder checks: the archive
    // still extracts perfectly, so only the hash at the end of the stream can refuse it.
    let fx = Fixture::new(SIZE);
    let mut tampered = fx.archive.clone();
    tampered[4] ^= 0x01;
    std::fs::write(&fx.served, &tampered).unwrap();
    let error = fx.download().await.unwrap_err();
    assert!(
        matches!(error, DownloadError::HashMismatch { .. }),
        "{}",
        chain(&error)
    );
    fx.assert_clean();
}

#[tokio::test]
async fn more_bytes_than_signed_are_refused() {
    let fx = Fixture::new(SIZE);
    let mut longer = fx.archive.clone();
    longer.extend(noise(3, 256 * 1024));
    std::fs::write(&fx.served, &longer).unwrap();
    let error = fx.download().await.unwrap_err();
    let DownloadError::TooLong { limit, .. } = &error else {
        panic!("{}", chain(&error));
    };
    assert_eq!(*limit, fx.len());
    assert!(error.is_verification());
    assert_eq!(fx.log().len(), 1);
    fx.assert_clean();
}

#[tokio::test]
async fn fewer_bytes_than_signed_are_a_length_mismatch() {
    let fx = Fixture::new(SIZE);
    std::fs::write(&fx.served, &fx.archive[..fx.archive.len() - 1000]).unwrap();
    let error = fx.download().await.unwrap_err();
    let DownloadError::LengthMismatch {
        expected, actual, ..
    } = &error
    else {
        panic!("{}", chain(&error));
    };
    assert_eq!((*expected, *actual), (fx.len(), fx.len() - 1000));
    assert!(error.is_verification());
    fx.assert_clean();
}

#[tokio::test]
async fn a_signed_but_malformed_package_is_an_extraction_error() {
    let fx = Fixture::new(16 * 1024);
    // Not an archive at all, but exactly what the (hypothetical) metadata signed.
    let junk = noise(4, 50_000);
    std::fs::write(&fx.served, &junk).unwrap();
    let target = TargetInfo {
        name: fx.target.name.clone(),
        length: junk.len() as u64,
        sha256: Sha256::digest(&junk),
    };
    let staging = fx.staging();
    let partial = fx.layout.partial(&target.sha256);
    let limits = Limits::default();
    let request = DownloadRequest {
        url: fx.url(),
        expected: &target,
        package: PackageName::Agent,
        platform: PLATFORM,
        staging: &staging,
        partial: &partial,
        limits: &limits,
        retry: fast_retries(5),
        progress: false,
    };
    let error = download_and_stage(&transport(), &request)
        .await
        .unwrap_err();
    assert!(
        matches!(error, DownloadError::Extract(ExtractError::Corrupt { .. })),
        "{}",
        chain(&error)
    );
    assert!(!error.is_verification());
    assert_eq!(fx.log().len(), 1);
    assert!(!staging.exists());
    assert!(!partial.exists());
}

#[tokio::test]
async fn a_leftover_partial_file_is_resumed() {
    let fx = Fixture::new(SIZE);
    std::fs::create_dir_all(fx.layout.cache_dir()).unwrap();
    std::fs::write(fx.partial(), &fx.archive[..100_000]).unwrap();
    let report = fx.download().await.unwrap();
    fx.assert_staged(&report);
    assert_eq!(report.attempts, 1);
    assert_eq!(report.resumed_from, [100_000]);
    assert_eq!(report.bytes_fetched, fx.len() - 100_000);
    assert_eq!(fx.log(), [(Some("bytes=100000-".to_owned()), 206)]);
}

#[tokio::test]
async fn a_complete_leftover_partial_file_needs_no_network() {
    let fx = Fixture::new(SIZE);
    std::fs::create_dir_all(fx.layout.cache_dir()).unwrap();
    std::fs::write(fx.partial(), &fx.archive).unwrap();
    let report = fx.download().await.unwrap();
    fx.assert_staged(&report);
    assert_eq!(report.bytes_fetched, 0);
    assert_eq!(fx.server.total_requests(), 0);
}

#[tokio::test]
async fn a_corrupt_leftover_partial_file_is_discarded_and_downloaded_again() {
    let fx = Fixture::new(SIZE);
    std::fs::create_dir_all(fx.layout.cache_dir()).unwrap();
    let mut bad = fx.archive[..100_000].to_vec();
    bad[50_000] ^= 0x01;
    std::fs::write(fx.partial(), &bad).unwrap();
    let report = fx.download().await.unwrap();
    fx.assert_staged(&report);
    assert_eq!(report.attempts, 2);
    assert_eq!(report.resumed_from, [100_000]);
    // The resume, then everything again from the start.
    assert_eq!(
        fx.log(),
        [(Some("bytes=100000-".to_owned()), 206), (None, 200)]
    );
}

#[tokio::test]
async fn a_leftover_partial_file_longer_than_the_target_is_discarded() {
    let fx = Fixture::new(SIZE);
    std::fs::create_dir_all(fx.layout.cache_dir()).unwrap();
    let mut longer = fx.archive.clone();
    longer.extend_from_slice(b"more");
    std::fs::write(fx.partial(), &longer).unwrap();
    let report = fx.download().await.unwrap();
    fx.assert_staged(&report);
    assert_eq!(report.attempts, 1);
    assert_eq!(report.bytes_fetched, fx.len());
    assert_eq!(fx.log(), [(None, 200)]);
}

#[tokio::test]
async fn an_existing_staging_directory_is_refused_and_left_alone() {
    let fx = Fixture::new(16 * 1024);
    std::fs::create_dir_all(fx.staging()).unwrap();
    std::fs::write(fx.staging().join("keep"), b"not ours").unwrap();
    let error = fx.download().await.unwrap_err();
    assert!(
        matches!(
            error,
            DownloadError::Extract(ExtractError::DestinationExists { .. })
        ),
        "{}",
        chain(&error)
    );
    assert_eq!(
        std::fs::read(fx.staging().join("keep")).unwrap(),
        b"not ours"
    );
    assert_eq!(fx.server.total_requests(), 0);
}

#[test]
fn free_space_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    check_free_space(dir.path(), 1024).unwrap();
    // A cache directory that does not exist yet is measured on its nearest ancestor.
    check_free_space(&dir.path().join("state/cache"), 1024).unwrap();

    let error = check_free_space(dir.path(), u64::MAX / 2).unwrap_err();
    let DownloadError::DiskSpace {
        path,
        need,
        available,
    } = &error
    else {
        panic!("{}", chain(&error));
    };
    assert_eq!(path, dir.path());
    assert_eq!(*need, u64::MAX);
    assert!(*available < *need);
    let text = error.to_string();
    assert!(text.contains(&dir.path().display().to_string()), "{text}");
    assert!(text.contains("free at least"), "{text}");
}

/// A 1 MiB tmpfs, unmounted when dropped.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    /// `None` (with a note) when mounting is not permitted here.
    fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => Some(Self { dir }),
            _ => {
                eprintln!(
                    "note: cannot mount a tmpfs here (not root?); skipping the disk-full test"
                );
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_is_a_clean_error_that_leaves_nothing_behind() {
    let Some(tiny) = TinyFs::mount() else {
        return;
    };
    // About 1.5 MiB of archive: it can't fit, as a partial file or as staged files.
    let fx = Fixture::new(768 * 1024);
    let layout = HostLayout::new(tiny.path());
    let staging = layout.staging_dir(&fx.version);
    let partial = layout.partial(&fx.target.sha256);
    let limits = Limits::default();
    let request = DownloadRequest {
        url: fx.url(),
        expected: &fx.target,
        package: PackageName::Agent,
        platform: PLATFORM,
        staging: &staging,
        partial: &partial,
        limits: &limits,
        retry: fast_retries(5),
        progress: false,
    };
    let error = download_and_stage(&transport(), &request)
        .await
        .unwrap_err();
    let text = chain(&error);
    assert!(
        matches!(
            error,
            DownloadError::Io { .. }
                | DownloadError::Extract(
                    ExtractError::WriteFile { .. } | ExtractError::CreateFile { .. }
                )
        ),
        "{text}"
    );
    assert!(text.contains("No space left on device"), "{text}");
    assert!(!error.is_verification());
    // Not retried: a full disk does not empty itself.
    assert_eq!(fx.log().len(), 1);
    // Nothing left behind: the cache directory is empty.
    let left: Vec<_> = std::fs::read_dir(layout.cache_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
