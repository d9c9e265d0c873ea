//! The up-to-date check: `updater --target-version latest` on a host already on latest.
//!
//! `cargo run --release -p molt-tests --example bench-uptodate -- [RUNS]` publishes 1.0.0
//! and 2.0.0 in a signed repository, serves it over loopback HTTP with the tests' file server
//! (`FileServer`), installs 2.0.0 on a direct-mode host, then runs, RUNS times (default 20)
//! and interleaved, the baseline `updater --version` (process start-up) and the check
//! `updater --target-version latest` (which must say there is nothing to do).
//! `scripts/bench-uptodate.sh` builds and runs it.
//!
//! Bytes fetched per run are counted from the server's request log: for every GET answered
//! 200 the size of the served file, for 206 the length of the range; 404 answers (e.g. the
//! probe for the next root version) count as requests with no payload. Response headers are
//! not counted.

use molt_tests::stats::median;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use molt_schema::manifest::Status;
use molt_tests::fixture::{TestHost, TestRepo, workspace_bin};
use molt_tests::http_server::{FileServer, RequestRecord};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(message.into().into())
}

/// Payload bytes of one answered request.
fn payload(root: &Path, r: &RequestRecord) -> u64 {
    if r.method != "GET" {
        return 0;
    }
    let size = std::fs::metadata(root.join(r.path.trim_start_matches('/')))
        .map(|m| m.len())
        .unwrap_or(0);
    match r.status {
        200 => size,
        206 => r
            .range
            .as_deref()
            .and_then(|h| h.strip_prefix("bytes="))
            .and_then(|spec| spec.split_once('-'))
            .map_or(0, |(a, b)| match (a.parse::<u64>(), b.parse::<u64>()) {
                (Ok(a), Ok(b)) => b.min(size.saturating_sub(1)) + 1 - a,
                (Ok(a), Err(_)) => size - a,
                (Err(_), Ok(n)) => n.min(size),
                _ => 0,
            }),
        _ => 0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(values: &[f64]) -> String {
    molt_tests::stats::summary(values, "ms", 2)
}

fn main() -> Result<()> {
    let runs: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|_| "RUNS must be a number")?,
        None => 20,
    };
    let repo = TestRepo::new("us-east-1");
    repo.publish("1.0.0", Status::Active);
    repo.publish("2.0.0", Status::Active);
    let server = FileServer::start(repo.path())?;
    let mut host = TestHost::new(&repo);
    host.source = server.base_url();
    let out = host.update("2.0.0", &[]);
    if !out.status.success() {
        return fail(format!(
            "install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    host.assert_healthy();
    let updater = workspace_bin("updater");

    // One unmeasured check first: the install itself left the trust datastore current, but
    // the first check may still differ (page cache, a first probe).
    let check = || -> Result<(Duration, Vec<RequestRecord>)> {
        let mark = server.request_log().len();
        let started = Instant::now();
        let out = host.update_cmd("latest", &[]).output()?;
        let elapsed = started.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || host.history().len() != 1 {
            return fail(format!(
                "the check did something: {}{stdout}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let log = server.request_log();
        Ok((elapsed, log.get(mark..).unwrap_or_default().to_vec()))
    };
    let (first, first_log) = check()?;

    let (mut checks, mut starts, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_log = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let out = Command::new(&updater).arg("--version").output()?;
        starts.push(ms(started.elapsed()));
        if !out.status.success() {
            return fail("updater --version failed");
        }
        let (elapsed, log) = check()?;
        checks.push(ms(elapsed));
        bytes.push(log.iter().map(|r| payload(server.root(), r)).sum::<u64>());
        last_log = log;
    }

    println!("{runs} runs each, interleaved, over loopback HTTP (FileServer)");
    println!(
        "first (unmeasured) check: {:.2} ms, {} requests, {} bytes",
        ms(first),
        first_log.len(),
        first_log
            .iter()
            .map(|r| payload(server.root(), r))
            .sum::<u64>()
    );
    println!("updater --version (baseline):      {}", summary(&starts));
    println!("updater --target-version latest:   {}", summary(&checks));
    let (c, s) = (median(&checks), median(&starts));
    println!(
        "ratio check/baseline (medians): {:.2}   check minus process start-up: {:.2} ms",
        c / s,
        c - s
    );
    bytes.sort_unstable();
    println!(
        "payload bytes fetched per check (request log, file sizes of 200 answers): min {} max {}",
        bytes.first().copied().unwrap_or(0),
        bytes.last().copied().unwrap_or(0)
    );
    println!("requests of the last check:");
    for r in &last_log {
        println!(
            "  {} {} {}{} -> {} bytes",
            r.method,
            r.path,
            r.status,
            r.range
                .as_deref()
                .map(|range| format!(" ({range})"))
                .unwrap_or_default(),
            payload(server.root(), r)
        );
    }
    Ok(())
}
