//! Times molt's one-pass download (stream → sha256 → extract) against
//! `curl | tee >(sha256sum) | tar -xz`, both from the same loopback server.
//!
//! `cargo run --release -p molt-tests --example bench-download -- AGENT UPDATER [RUNS]`
//! packages the two programs as a `molt-agent` archive, serves it with the test file server,
//! and runs, interleaved, molt's download, the shell pipeline and the floor: decompressing
//! the archive file alone (`pigz -dc FILE > /dev/null`, or the program named by
//! `MOLT_BENCH_GUNZIP`). It prints the best and the median time of each and the ratios of
//! the medians, molt/shell and molt/floor. `scripts/bench-install.sh` makes the inputs and
//! runs it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use molt_archive::extract::Limits;
use molt_archive::package::package;
use molt_fetch::retry::RetryPolicy;
use molt_fetch::transport::{HttpSettings, MoltTransport, ProxySettings, Url};
use molt_fetch::tuf::TargetInfo;
use molt_schema::{PackageName, Platform, Version};
use molt_tests::http_server::FileServer;
use molt_updater::download::{DownloadRequest, download_and_stage};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Fails `main` with a message.
fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(message.into().into())
}

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(agent), Some(updater)) = (args.next(), args.next()) else {
        return fail("usage: bench-download AGENT UPDATER [RUNS]");
    };
    let runs: usize = match args.next() {
        Some(runs) => runs
            .to_str()
            .and_then(|r| r.parse().ok())
            .ok_or("RUNS must be a number")?,
        None => 5,
    };
    let work = tempfile::tempdir()?;
    let version: Version = "1.0.0".parse()?;
    let platform = Platform::LinuxAmd64;
    let repo = work.path().join("repo");
    let archive = package(
        &version,
        platform,
        Path::new(&agent),
        Path::new(&updater),
        &repo,
    )?
    .into_iter()
    .find(|a| a.package == PackageName::Agent)
    .ok_or("no molt-agent archive")?;
    let target = TargetInfo {
        name: archive.target_name.clone(),
        length: archive.size,
        sha256: archive.sha256,
    };
    let server = FileServer::start(&repo)?;
    // Served from the package's own layout (`<out>/<package>/<version>/<file>`).
    let served = archive
        .package
        .dist_path(&archive.version, archive.platform);
    let url = server.url(&served);
    println!(
        "archive: {} ({:.1} MiB), {runs} runs each",
        archive.target_name,
        mib(archive.size)
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let transport = MoltTransport::new(HttpSettings {
        proxy: ProxySettings::none(),
        ..HttpSettings::default()
    })?;
    let limits = Limits::default();
    let gunzip = std::env::var("MOLT_BENCH_GUNZIP").unwrap_or_else(|_| "pigz".into());
    let archive_file = repo.join(&served);
    // The runs are interleaved (molt, shell, floor, molt, …) so that the machine's noise
    // falls on all three alike.
    let (mut molt, mut shell, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    let mut unpacked = (0, 0);
    for run in 0..runs {
        let staging = work.path().join(format!("molt-{run}"));
        let partial = work.path().join(format!("molt-{run}.partial"));
        let request = DownloadRequest {
            url: Url::parse(&url)?,
            expected: &target,
            package: PackageName::Agent,
            platform,
            staging: &staging,
            partial: &partial,
            limits: &limits,
            retry: RetryPolicy::DOWNLOAD,
            progress: false,
        };
        let started = Instant::now();
        runtime.block_on(download_and_stage(&transport, &request))?;
        molt.push(started.elapsed());
        let molt_tree = tree(&staging)?;
        let _ = std::fs::remove_file(&partial);

        let dir = work.path().join(format!("shell-{run}"));
        std::fs::create_dir_all(dir.join("x"))?;
        let started = Instant::now();
        let status = Command::new("bash")
            .args([
                "-c",
                r#"set -o pipefail; curl -sf "$1" | tee >(sha256sum >"$2/sum") | tar -xzf - -C "$2/x""#,
                "bench",
            ])
            .arg(&url)
            .arg(&dir)
            .status()?;
        let elapsed = started.elapsed();
        if !status.success() {
            return fail(format!("curl | tar failed: {status}"));
        }
        // `tee` may still be writing the sum when the pipeline returns; wait for it.
        let sum = wait_for_sum(&dir.join("sum"))?;
        if !sum.starts_with(&target.sha256.to_string()) {
            return fail(format!("curl | tar: sha256 {sum} is not {}", target.sha256));
        }
        shell.push(elapsed);
        // Both must have produced the same files, whole.
        let shell_tree = tree(&dir.join("x"))?;
        if molt_tree != shell_tree {
            return fail(format!(
                "molt staged {molt_tree:?} (files, bytes) but tar extracted {shell_tree:?}"
            ));
        }
        unpacked = molt_tree;
        std::fs::remove_dir_all(&staging)?;
        std::fs::remove_dir_all(&dir)?;

        // The floor: decompressing the archive, from the page cache, to nowhere.
        let started = Instant::now();
        let status = Command::new(&gunzip)
            .arg("-dc")
            .arg(&archive_file)
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            return fail(format!("{gunzip} -dc failed: {status}"));
        }
        floor.push(started.elapsed());
    }

    println!(
        "each run unpacks {} files, {:.1} MiB (molt's staging and tar's output agree)",
        unpacked.0,
        mib(unpacked.1)
    );
    let molt = report("molt download_and_stage", &mut molt, archive.size);
    let shell = report(
        "curl | tee >(sha256sum) | tar -xz",
        &mut shell,
        archive.size,
    );
    let floor = report(
        &format!("{gunzip} -dc FILE > /dev/null (floor)"),
        &mut floor,
        archive.size,
    );
    println!(
        "ratio molt/shell (medians): {:.2} (goal <= 0.6: {})   molt/{gunzip}-floor: {:.2}",
        molt / shell,
        if molt / shell <= 0.6 {
            "met"
        } else {
            "NOT met"
        },
        molt / floor
    );
    Ok(())
}

/// The number of regular files under `dir` and their total size.
fn tree(dir: &Path) -> Result<(u64, u64)> {
    let (mut files, mut bytes) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                files += 1;
                bytes += meta.len();
            }
        }
    }
    Ok((files, bytes))
}

fn wait_for_sum(path: &Path) -> Result<String> {
    for _ in 0..100 {
        if let Ok(sum) = std::fs::read_to_string(path)
            && sum.len() >= 64
        {
            return Ok(sum);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    fail(format!("sha256sum wrote nothing to {}", path.display()))
}

#[allow(clippy::cast_precision_loss)]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Prints the best and the median time; returns the median in seconds.
fn report(name: &str, times: &mut [Duration], size: u64) -> f64 {
    times.sort();
    let (Some(best), Some(median)) = (times.first(), times.get(times.len() / 2)) else {
        return f64::NAN;
    };
    println!(
        "{name:<36} best {:>7.3} s  median {:>7.3} s  ({:.0} MiB/s at best)",
        best.as_secs_f64(),
        median.as_secs_f64(),
        mib(size) / best.as_secs_f64()
    );
    median.as_secs_f64()
}
