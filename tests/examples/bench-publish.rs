//! Publishing one release to 16 regions against publishing it to 1 region, on the same
//! local S3 server.
//!
//! `cargo run --release -p molt-tests --example bench-publish -- [RUNS]` starts one
//! `molt-s3` server (`S3Server`), creates 16 buckets `acme-molt-{region}` for 16 AWS region
//! names, generates keys, and initialises and uploads the 16 repositories with the real
//! `release-manifest` (as the `Fleet` fixture of `tests/tests/publish.rs` does). None of that
//! is timed. After one unmeasured publish to all 16 regions, it runs RUNS times (default 5),
//! interleaved:
//!
//! - `publish --version 1.N.0 --regions us-east-1` (the baseline: one region);
//! - `publish --version 2.N.0 --regions <all 16>` with a plan of `concurrency = 16`;
//! - `publish --version 3.N.0 --regions <all 16>` with a plan without `concurrency`
//!   (the default, 4 regions at a time).
//!
//! Every publish is a new version, packaged beforehand (the test agent and the real
//! updater, as `release-manifest package` makes them), so each one uploads and reads back
//! real archives. Each publish is timed as a whole process, from spawn to exit. It prints
//! medians and min–max, and the ratios 16 regions / 1 region of the medians (the goal is
//! ≤ 2 with `concurrency = 16`). `scripts/bench-publish.sh` builds and runs it.
//!
//! CPU time is read from `/proc`: the publisher's user + system time as the bench's
//! waited-for children (`cutime` + `cstime` of `/proc/self/stat`), the server's from its
//! `/proc/<pid>/stat`, both in clock ticks of 10 ms (USER_HZ = 100).
//!
//! Requests are counted from the server's log when the server logs s3s's routing
//! (`MOLT_S3_LOG=s3s::ops=debug`, which the script sets): one `resolved route op=…` line
//! per request, the read-back's GETs included.
//!
//! Latency mode: with `MOLT_S3_LATENCY_MS=N` in the environment, the server (which inherits
//! it) delays every request by N ms, a stand-in for the round trip to a bucket in another
//! region. Without it, the server answers on loopback at once, and the figure measures CPU.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use molt_schema::Platform;
use molt_tests::fixture::workspace_bin;
use molt_tests::s3::S3Server;
use molt_tests::stats::median;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(message.into().into())
}

/// 16 AWS regions; the first is the one-region baseline.
const REGIONS: [&str; 16] = [
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "ca-central-1",
    "sa-east-1",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "ap-south-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "ap-northeast-2",
];

/// The server, the keys, the plans and the packaged releases.
struct Bench {
    s3: S3Server,
    dir: tempfile::TempDir,
    tool: PathBuf,
}

impl Bench {
    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// The plan with `concurrency = N`, or without the key (the default) for `None`.
    fn plan(&self, concurrency: Option<usize>) -> Result<PathBuf> {
        let path = match concurrency {
            Some(n) => self.dir.path().join(format!("rollout-c{n}.toml")),
            None => self.dir.path().join("rollout-default.toml"),
        };
        if !path.exists() {
            let regions = REGIONS.map(|r| format!("\"{r}\"")).join(", ");
            let line = concurrency.map_or_else(String::new, |n| format!("concurrency = {n}\n"));
            std::fs::write(
                &path,
                format!(
                    "bucket = \"acme-molt-{{region}}\"\nendpoint_url = \"{}\"\n{line}\n\
                     [[wave]]\nregions = [{regions}]\nbake = \"0s\"\n",
                    self.s3.endpoint()
                ),
            )?;
        }
        Ok(path)
    }

    fn tool(&self) -> Command {
        let mut c = Command::new(&self.tool);
        c.envs(self.s3.env_for_credentials())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("MOLT_LOG")
            .stdin(Stdio::null());
        c
    }

    fn ok(&self, c: &mut Command) -> Result<Output> {
        let out = c.output()?;
        if !out.status.success() {
            return fail(format!(
                "{c:?} failed ({})\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(out)
    }

    /// Packages `version`: the test agent and the real updater.
    fn dist(&self, version: &str) -> Result<PathBuf> {
        let dist = self.dir.path().join(format!("dist-{version}"));
        if !dist.exists() {
            let platform = Platform::detect().unwrap_or(Platform::LinuxAmd64);
            self.ok(self
                .tool()
                .args(["package", "--version", version, "--platform"])
                .arg(platform.to_string())
                .arg("--agent")
                .arg(workspace_bin("test-agent"))
                .arg("--updater")
                .arg(workspace_bin("updater"))
                .arg("--out")
                .arg(&dist))?;
        }
        Ok(dist)
    }

    /// Publishes `version` to `regions` with `plan`; returns the wall time of the process.
    fn publish(&self, plan: &Path, version: &str, regions: &[&str]) -> Result<Duration> {
        let dist = self.dist(version)?;
        let mut cmd = self.tool();
        cmd.args(["publish", "--json", "--version", version, "--regions"])
            .arg(regions.join(","))
            .arg("--plan")
            .arg(plan)
            .arg("--keys")
            .arg(self.keys())
            .arg("--dist")
            .arg(&dist);
        let started = Instant::now();
        let out = cmd.output()?;
        let elapsed = started.elapsed();
        let text = || {
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        if !out.status.success() {
            return fail(format!("publish {version} failed: {}", text()));
        }
        // Every region must have taken the release with real uploads.
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let rows = rows.as_array().map(Vec::as_slice).unwrap_or_default();
        let uploaded = |r: &serde_json::Value| r["report"]["uploaded"].as_u64().unwrap_or(0);
        if rows.len() != regions.len() || !rows.iter().all(|r| r["ok"] == true && uploaded(r) > 0) {
            return fail(format!(
                "publish {version} uploaded nothing somewhere: {}",
                text()
            ));
        }
        Ok(elapsed)
    }

    /// The server's requests so far, by operation (empty unless it logs s3s's routing).
    fn requests(&self) -> BTreeMap<String, usize> {
        let mut ops = BTreeMap::new();
        for line in self.s3.log().lines() {
            let Some((_, rest)) = line.split_once("resolved route") else {
                continue;
            };
            let op = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("op="))
                .unwrap_or("?");
            *ops.entry(op.to_owned()).or_insert(0) += 1;
        }
        ops
    }
}

/// User + system seconds from the fields after the command name of a `/proc/…/stat` line
/// (`first` is the index of utime or cutime there, counted from the state field).
fn stat_cpu(path: &Path, first: usize) -> f64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let fields: Vec<u64> = text
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default();
    let ticks = fields.get(first).unwrap_or(&0) + fields.get(first + 1).unwrap_or(&0);
    ticks as f64 / 100.0
}

/// CPU seconds of the publishers that have exited so far (cutime + cstime).
fn children_cpu() -> f64 {
    stat_cpu(Path::new("/proc/self/stat"), 13)
}

/// The pid of the `molt-s3` child, to read its CPU time.
fn server_pid() -> Option<u32> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    tasks
        .filter_map(|t| t.ok())
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "molt-s3")
        })
}

/// CPU seconds of the server so far (utime + stime, all its threads).
fn server_cpu(pid: Option<u32>) -> f64 {
    pid.map_or(f64::NAN, |pid| {
        stat_cpu(Path::new(&format!("/proc/{pid}/stat")), 11)
    })
}

/// The requests between two counts, as `N (GetObject a, PutObject b, …)`.
fn delta(before: &BTreeMap<String, usize>, after: &BTreeMap<String, usize>) -> (usize, String) {
    let mut total = 0;
    let mut parts = Vec::new();
    for (op, n) in after {
        let d = n - before.get(op).copied().unwrap_or(0);
        if d > 0 {
            total += d;
            parts.push(format!("{op} {d}"));
        }
    }
    (total, parts.join(", "))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn summary(values: &[f64]) -> String {
    molt_tests::stats::summary(values, "s", 3)
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

fn main() -> Result<()> {
    let runs: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|_| "RUNS must be a number")?,
        None => 5,
    };
    let bench = Bench {
        s3: S3Server::start(),
        dir: tempfile::tempdir()?,
        tool: workspace_bin("release-manifest"),
    };
    for r in REGIONS {
        bench.s3.create_bucket(&format!("acme-molt-{r}"));
    }
    let (plan16, plan4) = (bench.plan(Some(16))?, bench.plan(None)?);
    bench.ok(bench
        .tool()
        .args(["keys", "generate", "--out"])
        .arg(bench.keys()))?;
    for r in REGIONS {
        let local = bench.dir.path().join(format!("init-{r}"));
        bench.ok(bench
            .tool()
            .args(["repo", "init", "--region", r, "--keys"])
            .arg(bench.keys())
            .arg("--out")
            .arg(&local))?;
        bench.ok(bench
            .tool()
            .args(["repo", "upload", "--region", r, "--repo"])
            .arg(&local)
            .arg("--plan")
            .arg(&plan16)
            .arg("--keys")
            .arg(bench.keys()))?;
    }
    // Package every version first: packaging is not part of a publish.
    let version = |major: u32, n: usize| format!("{major}.{n}.0");
    bench.dist("0.1.0")?;
    for n in 0..runs {
        for major in 1..=3 {
            bench.dist(&version(major, n))?;
        }
    }
    let archives = dir_size(&bench.dist("0.1.0")?);

    let before = bench.requests();
    let warm = bench.publish(&plan16, "0.1.0", &REGIONS)?;
    let (warm_requests, _) = delta(&before, &bench.requests());

    let server = server_pid();
    // Wall time, publisher CPU and server CPU of each publish.
    let measure = |plan: &Path, version: &str, regions: &[&str], into: &mut [Vec<f64>; 3]| {
        let (c0, s0) = (children_cpu(), server_cpu(server));
        let wall = bench.publish(plan, version, regions)?;
        into[0].push(secs(wall));
        into[1].push(children_cpu() - c0);
        into[2].push(server_cpu(server) - s0);
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    let mut one: [Vec<f64>; 3] = Default::default();
    let mut all16: [Vec<f64>; 3] = Default::default();
    let mut all4: [Vec<f64>; 3] = Default::default();
    let (mut req_one, mut req16, mut req4) = (None, None, None);
    for n in 0..runs {
        let r0 = bench.requests();
        measure(&plan16, &version(1, n), &REGIONS[..1], &mut one)?;
        let r1 = bench.requests();
        measure(&plan16, &version(2, n), &REGIONS, &mut all16)?;
        let r2 = bench.requests();
        measure(&plan4, &version(3, n), &REGIONS, &mut all4)?;
        let r3 = bench.requests();
        req_one = Some(delta(&r0, &r1));
        req16 = Some(delta(&r1, &r2));
        req4 = Some(delta(&r2, &r3));
    }

    println!(
        "{runs} runs of each, interleaved, on one local molt-s3 server (loopback); \
         {:.1} MiB of archives per release (test agent + updater)",
        archives as f64 / (1024.0 * 1024.0)
    );
    match std::env::var("MOLT_S3_LATENCY_MS") {
        Ok(ms) => println!("latency mode: the server delays every request by {ms} ms"),
        Err(_) => println!("no added latency (set MOLT_S3_LATENCY_MS=N for N ms per request)"),
    }
    println!(
        "unmeasured first publish of 0.1.0 to 16 regions (concurrency 16): {:.3} s",
        secs(warm)
    );
    println!(
        "publish to 1 region (us-east-1):           {}",
        summary(&one[0])
    );
    println!(
        "publish to 16 regions, concurrency = 16:   {}",
        summary(&all16[0])
    );
    println!(
        "publish to 16 regions, concurrency = 4:    {}",
        summary(&all4[0])
    );
    let (m1, m16, m4) = (median(&one[0]), median(&all16[0]), median(&all4[0]));
    let verdict = if m16 / m1 <= 2.0 { "met" } else { "MISSED" };
    println!(
        "ratio 16 regions / 1 region (medians): concurrency 16: {:.2} (goal <= 2: {verdict}); \
         concurrency 4 (default): {:.2}",
        m16 / m1,
        m4 / m1
    );
    println!(
        "per region: 16 regions at concurrency 16 take {:.3} s per region, 1 region {m1:.3} s",
        m16 / 16.0
    );
    println!("CPU per publish, medians (user + system; 10 ms ticks):");
    for (what, v) in [
        ("1 region", &one),
        ("16 regions, concurrency 16", &all16),
        ("16 regions, concurrency 4", &all4),
    ] {
        println!(
            "  {what:<28} publisher {:.2} s   server {:.2} s",
            median(&v[1]),
            median(&v[2])
        );
    }
    match (req_one, req16, req4) {
        (Some((n1, ops1)), Some((n16, ops16)), Some((n4, ops4))) if n1 > 0 => {
            println!("server requests of the last run's publishes (server log):");
            println!("  1 region:                 {n1:>5}  ({ops1})");
            println!("  16 regions, concurrency 16: {n16:>3}  ({ops16})");
            println!("  16 regions, concurrency 4:  {n4:>3}  ({ops4})");
            println!("  first publish to 16 regions: {warm_requests}");
        }
        _ => println!(
            "(requests not counted: set MOLT_S3_LOG=s3s::ops=debug for the server's routing log)"
        ),
    }
    Ok(())
}
