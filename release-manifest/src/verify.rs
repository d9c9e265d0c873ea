//! `release-manifest verify SOURCE`: load a region's repository the way a host does and
//! read every target through TUF, then report.

use std::path::PathBuf;

use anyhow::Context as _;
use molt_fetch::s3::{S3Endpoint, S3Location, S3Signer};
use molt_fetch::transport::{HttpSettings, MoltTransport};
use molt_fetch::tuf::{LoadOptions, ReadError, RegionSource, TrustError, load_region, redact};
use molt_schema::Region;
use molt_schema::cli::{Failure, exit};
use serde::Serialize;
use url::Url;

use crate::common::runtime;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The repository: a directory, a file:// URL, an http(s):// base URL, or
    /// s3://bucket/prefix/ (a private bucket, read with SigV4 and the AWS credentials chain;
    /// needs --region).
    source: String,
    /// The region the repository must be for (and, for s3://, the bucket's region).
    #[arg(long)]
    region: Option<Region>,
    /// For s3://: an S3-compatible endpoint (path-style) instead of AWS.
    #[arg(long)]
    endpoint_url: Option<String>,
    /// Remember what was verified in DIR (a datastore per region, as hosts keep one), and
    /// refuse metadata older than what was seen before: a rollback passes a verifier that
    /// remembers nothing. Needs --region and --trusted-root (a root taken from the source
    /// each time would let the source start a new chain).
    #[arg(long, value_name = "DIR", requires_all = ["region", "trusted_root"])]
    state: Option<PathBuf>,
    /// The trusted root metadata (the keys directory's root.json). Without it, the
    /// source's own 1.root.json is trusted, which checks consistency but not origin.
    #[arg(long)]
    trusted_root: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct TargetReport {
    name: String,
    length: u64,
    sha256: String,
    ok: bool,
    error: Option<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    source: String,
    trusted_root: String,
    region: Option<String>,
    ok: bool,
    error: Option<String>,
    versions: Option<Versions>,
    earliest_expiry: Option<String>,
    targets: Vec<TargetReport>,
    issues: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Versions {
    root: u64,
    targets: u64,
    snapshot: u64,
    timestamp: u64,
}

fn source_url(source: &str) -> Result<Url, Failure> {
    if source.contains("://") {
        return Url::parse(source)
            .with_context(|| format!("{source:?} is not a URL"))
            .map_err(|e| Failure::new(exit::USAGE, e));
    }
    let abs = std::path::absolute(source).with_context(|| format!("cannot resolve {source}"))?;
    Url::from_directory_path(&abs).map_err(|()| {
        Failure::new(
            exit::USAGE,
            anyhow::anyhow!("{} is not a directory path", abs.display()),
        )
    })
}

/// An `s3://bucket/prefix/` source: its URL at the endpoint, and the signer for it.
fn s3_source(args: &Args, rt: &tokio::runtime::Runtime) -> Result<(Url, S3Signer), Failure> {
    let location: S3Location = args
        .source
        .parse()
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    let Some(region) = &args.region else {
        return Err(Failure::new(
            exit::USAGE,
            anyhow::anyhow!(
                "verifying {} needs --region: the bucket's region signs the requests",
                args.source
            ),
        ));
    };
    let url = S3Endpoint::resolve(args.endpoint_url.as_deref(), region, None, |k| {
        std::env::var(k).ok()
    })
    .and_then(|e| e.prefix_url(&location))
    .map_err(|e| Failure::new(exit::USAGE, e))?;
    let provider = rt.block_on(molt_fetch::aws::credentials_provider(region));
    Ok((
        url,
        S3Signer::new(provider, region.clone()).for_location(&location),
    ))
}

pub fn run(args: Args) -> Result<i32, Failure> {
    let rt = runtime()?;
    let mut transport =
        MoltTransport::new(HttpSettings::default()).context("cannot set up HTTP")?;
    let is_s3 = args.source.starts_with("s3://");
    let url = if is_s3 {
        let (url, signer) = s3_source(&args, &rt)?;
        transport = transport.with_signer(signer);
        url
    } else {
        source_url(&args.source)?
    };
    let is_http = matches!(url.scheme(), "http" | "https") && !is_s3;
    let source = RegionSource::new(url);
    let (root_bytes, root_desc) = match &args.trusted_root {
        Some(p) => (
            std::fs::read(p)
                .with_context(|| format!("cannot read the trusted root {}", p.display()))?,
            p.display().to_string(),
        ),
        None => {
            let root_url = source
                .base
                .join("metadata/1.root.json")
                .context("bad source URL")?;
            let bytes = rt
                .block_on(fetch_all(&transport, root_url.clone()))
                .map_err(|e| {
                    let f = Failure::new(exit::FAILED, e);
                    if is_http {
                        f.with_hint(PRIVATE_BUCKET)
                    } else {
                        f
                    }
                })?;
            (
                bytes,
                format!("{} (from the source itself)", redact(&root_url)),
            )
        }
    };
    let mut report = Report {
        source: redact(&source.base),
        trusted_root: root_desc,
        region: None,
        ok: true,
        error: None,
        versions: None,
        earliest_expiry: None,
        targets: Vec::new(),
        issues: Vec::new(),
    };
    let source_for_roots = source.clone();
    if let Some(dir) = &args.state {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    }
    let loaded = rt.block_on(load_region(LoadOptions {
        source,
        region: args.region.as_ref(),
        trusted_root: &root_bytes,
        datastore: args.state.as_deref(),
        transport: transport.clone(),
        retry: molt_fetch::retry::RetryPolicy::DOWNLOAD,
        commit: args.state.is_some(),
    }));
    let mut worst = exit::OK;
    match loaded {
        Err(e) => {
            report.ok = false;
            worst = if e.is_verification() {
                exit::VERIFICATION
            } else {
                exit::FAILED
            };
            report.error = Some(molt_schema::cli::one_line(&e));
        }
        Ok(region) => {
            let [root, targets, snapshot, timestamp] = region.versions();
            report.versions = Some(Versions {
                root,
                targets,
                snapshot,
                timestamp,
            });
            report.region = region.manifest.region.as_ref().map(ToString::to_string);
            let (role, at) = region.earliest_expiry();
            report.earliest_expiry = Some(format!("{at} ({role})"));
            for t in region.targets() {
                let result = rt.block_on(
                    region.read_target_with(&t.name, |r| std::io::copy(r, &mut std::io::sink())),
                );
                let error = match result {
                    Ok(_) => None,
                    Err(ReadError::Trust(e)) => {
                        worst = worst.max(if e.is_verification() {
                            exit::VERIFICATION
                        } else {
                            exit::FAILED
                        });
                        Some(molt_schema::cli::one_line(&e))
                    }
                    Err(ReadError::Consumer(e)) => {
                        worst = worst.max(exit::FAILED);
                        Some(molt_schema::cli::one_line(&e))
                    }
                };
                report.targets.push(TargetReport {
                    name: t.name,
                    length: t.length,
                    sha256: t.sha256.to_string(),
                    ok: error.is_none(),
                    error,
                });
            }
            if args.trusted_root.is_some()
                && let Some(issue) = rt.block_on(check_published_root(
                    &transport,
                    &source_for_roots,
                    &root_bytes,
                ))
            {
                worst = worst.max(exit::VERIFICATION);
                report.issues.push(issue);
            }
            if let Ok(dir) = source_for_roots.base.to_file_path() {
                for issue in molt_publish::tuf::audit::audit(&dir) {
                    worst = worst.max(exit::VERIFICATION);
                    report
                        .issues
                        .push(format!("{}: {}", issue.file, issue.reason));
                }
            }
            for issue in region.consistency_issues() {
                worst = worst.max(exit::VERIFICATION);
                report.issues.push(issue.to_string());
            }
            report.ok = worst == exit::OK;
        }
    }
    if args.json {
        crate::print_json(&report)?;
    } else {
        print_human(&report);
    }
    if worst == exit::OK {
        Ok(exit::OK)
    } else {
        let what = report.error.clone().unwrap_or_else(|| {
            report
                .targets
                .iter()
                .filter_map(|t| t.error.as_ref().map(|e| format!("target {}: {e}", t.name)))
                .chain(report.issues.iter().cloned())
                .collect::<Vec<_>>()
                .join("; ")
        });
        let f = Failure::new(
            worst,
            anyhow::anyhow!("verification of {} failed: {what}", report.source),
        );
        Err(if is_http && what.contains("was not found") {
            f.with_hint(PRIVATE_BUCKET)
        } else {
            f
        })
    }
}

/// A 403 reads as not found (SPEC §6: hosts probe for the next root version that way), so
/// a private bucket read over plain HTTP looks empty.
const PRIVATE_BUCKET: &str = "a private bucket answers 403 to unsigned reads, which reads as not found: verify s3://<bucket>/<prefix>/ --region <region> instead, signed with the AWS credentials chain; or check the URL";

fn print_human(r: &Report) {
    println!("source:        {}", r.source);
    println!("trusted root:  {}", r.trusted_root);
    if let Some(v) = &r.versions {
        println!(
            "metadata:      root v{} · targets v{} · snapshot v{} · timestamp v{}",
            v.root, v.targets, v.snapshot, v.timestamp
        );
    }
    if let Some(region) = &r.region {
        println!("region:        {region}");
    }
    if let Some(e) = &r.earliest_expiry {
        println!("expires first: {e}");
    }
    for t in &r.targets {
        match &t.error {
            None => println!("ok      {:>10}  {}  {}", t.length, t.sha256, t.name),
            Some(e) => println!("FAILED  {:>10}  {}  {}: {e}", t.length, t.sha256, t.name),
        }
    }
    for issue in &r.issues {
        println!("FAILED  {issue}");
    }
    if let Some(e) = &r.error {
        println!("FAILED  {e}");
    }
    println!("{}", if r.ok { "verified" } else { "NOT verified" });
}

/// The repository publishes the root chain from version 1; the file for the trusted
/// root's own version must hold that same root, or hosts installed from the repository
/// would trust something else.
async fn check_published_root(
    transport: &MoltTransport,
    source: &RegionSource,
    trusted: &[u8],
) -> Option<String> {
    let trusted: serde_json::Value = serde_json::from_slice(trusted).ok()?;
    let version = trusted.get("signed")?.get("version")?.as_u64()?;
    let name = format!("metadata/{version}.root.json");
    let url = source.base.join(&name).ok()?;
    match fetch_all(transport, url).await {
        Err(e) => Some(format!("{name}: cannot be read: {e:#}")),
        Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Err(e) => Some(format!("{name} is malformed: {e}")),
            Ok(published) if published != trusted => {
                Some(format!("{name} differs from the trusted root"))
            }
            Ok(_) => None,
        },
    }
}

async fn fetch_all(transport: &MoltTransport, url: Url) -> anyhow::Result<Vec<u8>> {
    use futures::StreamExt as _;
    use tough::Transport as _;
    let mut stream = transport.fetch(url.clone()).await.map_err(|e| {
        anyhow::Error::new(TrustError::Transport {
            url: redact(&url),
            source: e.into(),
        })
    })?;
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("reading {}", redact(&url)))?;
        if out.len() + chunk.len() > 1024 * 1024 {
            anyhow::bail!(
                "{} is larger than 1 MiB; not a root metadata file",
                redact(&url)
            );
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
