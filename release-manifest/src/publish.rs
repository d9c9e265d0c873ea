//! `publish` and `rollout status|advance|halt|resume|recall`: regions' repositories in
//! their buckets (or directories), following `ci/rollout.toml` (SPEC §8).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::anyhow;
use futures::StreamExt as _;
use jiff::Timestamp;
use molt_fetch::aws;
use molt_fetch::retry::RetryPolicy;
use molt_fetch::s3::{S3Endpoint, S3Location, S3Signer};
use molt_fetch::transport::{HttpSettings, MoltTransport};
use molt_publish::plan::{self, Plan, RegionFacts, ReportCounts};
use molt_publish::publish::{self, Options, Reader, RegionReport, RegionStore, edits};
use molt_publish::store::fs::FsStore;
use molt_publish::store::s3::{S3Store, S3StoreConfig};
use molt_publish::store::{ObjectStore, Retrying, bucket_for};
use molt_publish::tuf::Expirations;
use molt_publish::tuf::keys::KeyDir;
use molt_publish::tuf::repo::{self, AddOptions, ReleaseFiles};
use molt_schema::Version;
use molt_schema::cli::{Failure, exit};
use molt_schema::manifest::{Manifest, Status};
use molt_schema::region::Region;
use serde::Serialize;

use crate::common::{ExpiryArgs, open_keys, regions_runtime, repo_failure};

/// Where the plan's repositories are.
#[derive(Debug, Clone, clap::Args)]
pub struct PlanArgs {
    /// The rollout plan.
    #[arg(long, default_value = "ci/rollout.toml")]
    pub plan: PathBuf,
    /// Use directories `<DIR>/<bucket>/<prefix>` instead of S3 (tests, demos, mirrors).
    #[arg(long, value_name = "DIR")]
    pub directory: Option<PathBuf>,
    /// An S3-compatible endpoint (path-style); overrides the plan's `endpoint_url`.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// The publisher's record of what it last signed for each region, which every command
    /// that signs checks the buckets against (default: `published/` beside the plan; with
    /// --directory, `DIR/.molt-record/`, since those are other repositories of the regions).
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// Print results as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    #[command(flatten)]
    plan: PlanArgs,
    /// These regions (comma-separated), with no wave guards.
    #[arg(
        long,
        value_delimiter = ',',
        conflicts_with = "wave",
        required_unless_present = "wave"
    )]
    regions: Vec<Region>,
    /// Wave N of the plan (1-based), after its guards pass.
    #[arg(long)]
    wave: Option<usize>,
    /// The directory `release-manifest package --out` wrote.
    #[arg(long)]
    dist: PathBuf,
    #[arg(long)]
    version: Version,
    /// The keys directory (targets, snapshot and timestamp keys; no root key).
    #[arg(long)]
    keys: PathBuf,
    #[command(flatten)]
    expiry: ExpiryArgs,
    /// Show the diff per region and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace immutable objects that exist with other bytes.
    #[arg(long)]
    allow_clobber: bool,
    /// Release notes for each region's feed.json (a text or Markdown file).
    #[arg(long)]
    notes: Option<PathBuf>,
    /// Let the wave go with fewer hosts' reports than the plan's `min_reports` (the failure
    /// rate of the reports there still counts).
    #[arg(long, requires = "wave")]
    allow_few_reports: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Per region: versions, status, halts, wave, when published and the next allowed advance.
    Status {
        #[command(flatten)]
        plan: PlanArgs,
        /// The version whose progress to show (default: the newest published anywhere).
        #[arg(long)]
        version: Option<Version>,
        /// The root of trust to verify the regions with (the keys directory's root.json).
        #[arg(long)]
        trusted_root: PathBuf,
    },
    /// Publish the version to the next wave, if the guards allow it.
    Advance {
        #[command(flatten)]
        plan: PlanArgs,
        #[arg(long)]
        version: Version,
        #[arg(long)]
        dist: PathBuf,
        #[arg(long)]
        keys: PathBuf,
        #[command(flatten)]
        expiry: ExpiryArgs,
        #[arg(long)]
        dry_run: bool,
        /// Let the wave go with fewer hosts' reports than the plan's `min_reports` (the
        /// failure rate of the reports there still counts).
        #[arg(long)]
        allow_few_reports: bool,
    },
    /// Halt the version everywhere it is published: no more hosts move to it.
    Halt {
        #[command(flatten)]
        plan: PlanArgs,
        #[arg(long)]
        version: Version,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        keys: PathBuf,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Undo a halt; the in-region waves continue where they stopped.
    Resume {
        #[command(flatten)]
        plan: PlanArgs,
        #[arg(long)]
        version: Version,
        #[arg(long)]
        keys: PathBuf,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
    /// Recall the version: Deprecated, and MaxVersion below it, everywhere it is published.
    Recall {
        #[command(flatten)]
        plan: PlanArgs,
        version: Version,
        #[arg(long)]
        keys: PathBuf,
        #[command(flatten)]
        expiry: ExpiryArgs,
    },
}

/// `record adopt|restore`: the publisher's record of what it last signed for each region.
#[derive(Debug, clap::Subcommand)]
pub enum RecordCommand {
    /// Name a region's state in its bucket as the one to trust, once, when there is no
    /// record of it (check it with `verify` first).
    Adopt {
        #[command(flatten)]
        plan: PlanArgs,
        #[arg(long)]
        region: Region,
        /// The timestamp version the bucket holds now (the refusal names it).
        #[arg(long)]
        timestamp_version: u64,
        /// The keys directory (its root.json verifies the bucket).
        #[arg(long)]
        keys: PathBuf,
    },
    /// Put what the publisher last signed back into buckets that hold older metadata (or
    /// none); a bucket that holds it already, or newer, is left alone.
    Restore {
        #[command(flatten)]
        plan: PlanArgs,
        /// Only these regions of the plan (comma-separated; default: all).
        #[arg(long, value_delimiter = ',')]
        regions: Vec<Region>,
        #[arg(long)]
        keys: PathBuf,
        /// Show what would be written, and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn record(c: RecordCommand) -> Result<i32, Failure> {
    let (args, keys, regions, dry_run, adopt) = match c {
        RecordCommand::Adopt {
            plan,
            region,
            timestamp_version,
            keys,
        } => (plan, keys, vec![region], false, Some(timestamp_version)),
        RecordCommand::Restore {
            plan,
            regions,
            keys,
            dry_run,
        } => (plan, keys, regions, dry_run, None),
    };
    let plan = load_plan(&args)?;
    let keys = open_keys(&keys)?;
    let opts = Arc::new(options(&args, &keys, dry_run, false)?);
    let regions = selected(&plan, &regions);
    regions_runtime()?.block_on(async {
        let rows = fan_out(&plan, &args, &regions, move |rs| {
            let opts = Arc::clone(&opts);
            async move {
                match adopt {
                    Some(n) => publish::adopt_region(&rs, &opts, n).await,
                    None => publish::restore_region(&rs, &opts).await,
                }
            }
        })
        .await;
        print_rows(&rows, args.json)
    })
}

fn fail(e: impl Into<anyhow::Error>) -> Failure {
    Failure::new(exit::FAILED, e)
}

impl PlanArgs {
    /// The record's directory: `--record`; else, for `--directory DIR` (mirrors, tests,
    /// demos: other repositories of the same regions than the plan's buckets),
    /// `DIR/.molt-record/`; else `published/` beside the plan.
    pub fn record(&self) -> molt_publish::record::Record {
        molt_publish::record::Record::new(self.record.clone().unwrap_or_else(|| {
            match &self.directory {
                Some(dir) => dir.join(".molt-record"),
                None => self
                    .plan
                    .parent()
                    .unwrap_or_else(|| std::path::Path::new(""))
                    .join("published"),
            }
        }))
    }
}

fn load_plan(args: &PlanArgs) -> Result<Plan, Failure> {
    Plan::load(&args.plan).map_err(|e| {
        fail(e).with_hint("see ci/rollout.toml and docs/operations.md for the plan's keys")
    })
}

/// The store and reader of one region.
pub async fn region_store(
    plan: &Plan,
    args: &PlanArgs,
    region: &Region,
) -> Result<RegionStore, Failure> {
    let bucket = bucket_for(&plan.bucket, region).map_err(|e| {
        let hint = e.hint();
        let f = fail(e);
        match hint {
            Some(h) => f.with_hint(h),
            None => f,
        }
    })?;
    if let Some(dir) = &args.directory {
        let path = dir.join(&bucket).join(plan.prefix.trim_matches('/'));
        let url = molt_fetch::transport::Url::from_directory_path(
            std::path::absolute(&path).map_err(fail)?,
        )
        .map_err(|()| fail(anyhow!("{} cannot be a file URL", path.display())))?;
        return Ok(RegionStore {
            region: region.clone(),
            store: retrying(Arc::new(FsStore::new(path))),
            reader: Reader { url, signer: None },
        });
    }
    let endpoint = args
        .endpoint_url
        .clone()
        .or_else(|| plan.endpoint_url.clone());
    let mut config = S3StoreConfig::new(bucket.clone(), region.clone());
    config.prefix = plan.prefix.clone();
    config.endpoint_url = endpoint.clone();
    let store = S3Store::new(config).await.map_err(fail)?;
    let location = S3Location::new(&bucket, &plan.prefix).map_err(fail)?;
    let url = S3Endpoint::resolve(endpoint.as_deref(), region, None, |k| std::env::var(k).ok())
        .and_then(|e| e.prefix_url(&location))
        .map_err(fail)?;
    let signer = S3Signer::new(aws::credentials_provider(region).await, region.clone());
    Ok(RegionStore {
        region: region.clone(),
        store: retrying(Arc::new(store)),
        reader: Reader {
            url,
            signer: Some(signer),
        },
    })
}

/// Every store call the release tool makes is retried under the one policy (the stores
/// themselves do not retry).
fn retrying(store: Arc<dyn ObjectStore>) -> Arc<dyn ObjectStore> {
    Arc::new(Retrying::new(store, RetryPolicy::PUBLISH))
}

fn options(
    args: &PlanArgs,
    keys: &KeyDir,
    dry_run: bool,
    allow_clobber: bool,
) -> Result<Options, Failure> {
    let root = keys.dir.join("root.json");
    let trusted_root = std::fs::read(&root).map_err(|e| {
        fail(anyhow!(
            "cannot read the trusted root {}: {e}",
            root.display()
        ))
    })?;
    Ok(Options {
        dry_run,
        allow_clobber,
        trusted_root,
        notes: None,
        transport: Some(reader_transport()?),
        record: Some(args.record()),
    })
}

/// The HTTP client that every region's read-back shares.
fn reader_transport() -> Result<MoltTransport, Failure> {
    MoltTransport::new(HttpSettings::default())
        .map_err(|e| fail(anyhow::Error::new(e).context("cannot set up HTTP")))
}

/// One region's line in the result table.
#[derive(Debug, Serialize)]
struct Row {
    region: Region,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<RegionReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

/// What a region's row says when the edit changed nothing.
const UNCHANGED: &str = "unchanged: the region already holds exactly this (the same bytes, status and rollout); nothing was signed or written";

fn print_rows(rows: &[Row], json: bool) -> Result<i32, Failure> {
    if json {
        crate::print_json(&rows)?;
    } else {
        println!(
            "{:<16} {:<8} {:<18} {:>8}  detail",
            "region", "result", "versions t/s/ts", "uploads"
        );
        for r in rows {
            match (&r.report, &r.error) {
                (Some(rep), _) => println!(
                    "{:<16} {:<8} {:<18} {:>8}  {}",
                    r.region.to_string(),
                    if rep.dry_run { "dry-run" } else { "ok" },
                    format!(
                        "{}/{}/{}",
                        rep.versions[0], rep.versions[1], rep.versions[2]
                    ),
                    rep.uploaded,
                    if rep.unchanged {
                        UNCHANGED.to_owned()
                    } else {
                        rep.changes
                            .iter()
                            .map(|c| format!("{:?} {}", c.action, c.key))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
                (None, e) => {
                    println!(
                        "{:<16} {:<8} {:<18} {:>8}  {}",
                        r.region.to_string(),
                        "FAILED",
                        "-",
                        "-",
                        e.clone().unwrap_or_default()
                    );
                    if let Some(h) = &r.hint {
                        println!("{:<16} {:<8} {:<18} {:>8}  hint: {h}", "", "", "", "");
                    }
                }
            }
        }
    }
    Ok(if rows.iter().all(|r| r.ok) {
        exit::OK
    } else {
        exit::FAILED
    })
}

/// One region's row: its store, then `edit` on it.
async fn region_row<F, Fut>(plan: &Plan, args: &PlanArgs, region: Region, edit: &F) -> Row
where
    F: Fn(RegionStore) -> Fut,
    Fut: std::future::Future<Output = Result<RegionReport, publish::PublishError>>,
{
    let rs = match region_store(plan, args, &region).await {
        Ok(rs) => rs,
        Err(f) => {
            return Row {
                region,
                ok: false,
                report: None,
                error: Some(format!("{:#}", f.error)),
                hint: f.hint,
            };
        }
    };
    match edit(rs).await {
        Ok(report) => Row {
            region,
            ok: true,
            report: Some(report),
            error: None,
            hint: None,
        },
        Err(e) => Row {
            region,
            ok: false,
            report: None,
            hint: e.hint(),
            error: Some(format!("{:#}", anyhow::Error::new(e))),
        },
    }
}

/// Runs `edit` on every region, each region a task of its own on the multi-thread runtime
/// ([`regions_runtime`]), at most the plan's `concurrency` at a time. The rows come back
/// sorted by region, however the tasks finished.
async fn fan_out<F, Fut>(plan: &Plan, args: &PlanArgs, regions: &[Region], edit: F) -> Vec<Row>
where
    F: Fn(RegionStore) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<RegionReport, publish::PublishError>> + Send + 'static,
{
    let shared = Arc::new((plan.clone(), args.clone(), edit));
    // `buffer_unordered` pulls the next region, which spawns its task, only when fewer than
    // `concurrency` are running.
    let jobs = regions.iter().cloned().map(|region| {
        let shared = Arc::clone(&shared);
        let task = tokio::spawn({
            let region = region.clone();
            async move {
                let (plan, args, edit) = &*shared;
                region_row(plan, args, region, edit).await
            }
        });
        async move {
            task.await.unwrap_or_else(|e| Row {
                error: Some(format!("the task publishing {region} ended early: {e}")),
                region,
                ok: false,
                report: None,
                hint: None,
            })
        }
    });
    let mut rows: Vec<Row> = futures::stream::iter(jobs)
        .buffer_unordered(plan.concurrency.max(1))
        .collect()
        .await;
    rows.sort_by(|a, b| a.region.cmp(&b.region));
    rows
}

/// A region's manifest, read and verified as a host would, or why it cannot be.
async fn read_region(
    plan: &Plan,
    args: &PlanArgs,
    region: &Region,
    trusted_root: &[u8],
    transport: Option<MoltTransport>,
) -> Result<Manifest, String> {
    let rs = region_store(plan, args, region)
        .await
        .map_err(|e| format!("{:#}", e.error))?;
    let opts = Options {
        dry_run: true,
        allow_clobber: false,
        trusted_root: trusted_root.to_vec(),
        notes: None,
        transport,
        record: None,
    };
    publish::read_back(&rs, &opts, &[])
        .await
        .map_err(|e| molt_schema::cli::one_line(&e))
}

/// What a region's manifest says about `version`.
fn facts_from(
    region: &Region,
    manifest: &Result<Manifest, String>,
    version: &Version,
) -> RegionFacts {
    let mut f = RegionFacts {
        region: region.clone(),
        published: None,
        status: None,
        halted: None,
        verified: Ok(()),
    };
    match manifest {
        Ok(m) => {
            let entry = m
                .packages
                .iter()
                .flat_map(|p| p.files.iter())
                .flat_map(|fe| fe.available_versions.iter())
                .find(|e| &e.version == version);
            if let Some(e) = entry {
                f.published = e.published.or(Some(Timestamp::UNIX_EPOCH));
                f.status = Some(e.status.as_str().to_owned());
                f.halted = e.halted.as_ref().map(|h| h.reason.clone());
            }
        }
        Err(e) => f.verified = Err(e.clone()),
    }
    f
}

/// Every region of the plan, read once.
async fn read_all(
    plan: &Plan,
    args: &PlanArgs,
    trusted_root: &[u8],
) -> Vec<(Region, Result<Manifest, String>)> {
    // One HTTP client for every region; without one, each read makes its own.
    let transport = MoltTransport::new(HttpSettings::default()).ok();
    let jobs = plan.regions().into_iter().map(|region| {
        let transport = transport.clone();
        async move {
            let m = read_region(plan, args, &region, trusted_root, transport).await;
            (region, m)
        }
    });
    futures::stream::iter(jobs)
        .buffered(plan.concurrency)
        .collect()
        .await
}

async fn all_facts(
    plan: &Plan,
    args: &PlanArgs,
    version: &Version,
    trusted_root: &[u8],
) -> Vec<RegionFacts> {
    read_all(plan, args, trusted_root)
        .await
        .iter()
        .map(|(r, m)| facts_from(r, m, version))
        .collect()
}

/// The largest report object the guard reads (a report is about 1 KB); a larger one is
/// skipped unread, so a host that can write the sink cannot make the publisher download
/// gigabytes.
const MAX_REPORT_BYTES: u64 = 64 * 1024;

/// Reports read at once from the sink.
const REPORT_FETCHES: usize = 16;

/// One host's latest report: when it finished, its record id (the tie-break) and whether
/// it succeeded.
type Latest = (Timestamp, String, bool);

/// Counts the hosts that reported on `version` in `regions`, from the plan's results sink:
/// each host (the `<host-id>` of `<region>/<version>/<host-id>/<record-id>.json`) once, by
/// its latest report, so one host that fails and then succeeds counts as one success, and
/// one host that writes many reports counts once. A report larger than
/// [`MAX_REPORT_BYTES`], unreadable, or naming another host than its key is skipped with a
/// warning. Reports are read [`REPORT_FETCHES`] at a time.
async fn report_counts(
    plan: &Plan,
    args: &PlanArgs,
    regions: &[Region],
    version: &Version,
) -> Result<ReportCounts, Failure> {
    let Some(sink) = &plan.reports else {
        return Ok(ReportCounts::default());
    };
    let location: S3Location = sink.parse().map_err(fail)?;
    let mut latest: std::collections::BTreeMap<(Region, String), Latest> =
        std::collections::BTreeMap::new();
    for region in regions {
        let store: Arc<dyn ObjectStore> = retrying(match &args.directory {
            Some(dir) => Arc::new(FsStore::new(
                dir.join(location.bucket())
                    .join(location.prefix().trim_matches('/')),
            )),
            None => {
                let mut config = S3StoreConfig::new(location.bucket(), region.clone());
                config.prefix = location.prefix().to_owned();
                config.endpoint_url = args
                    .endpoint_url
                    .clone()
                    .or_else(|| plan.endpoint_url.clone());
                Arc::new(S3Store::new(config).await.map_err(fail)?)
            }
        });
        let prefix = format!("{region}/{version}/");
        let listed = store.list_sized(&prefix).await.map_err(|e| {
            fail(e).with_hint(
                "the plan's `reports` sink must be readable (s3:ListBucket, s3:GetObject)",
            )
        })?;
        let mut wanted = Vec::new();
        for (key, size) in listed {
            let Some(host) = key
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once('/'))
                .filter(|(host, id)| !host.is_empty() && id.ends_with(".json") && !id.contains('/'))
                .map(|(host, _)| host.to_owned())
            else {
                tracing::warn!(
                    "skipping {key} in the reports sink: not <host-id>/<record-id>.json"
                );
                continue;
            };
            if size > MAX_REPORT_BYTES {
                tracing::warn!(
                    "skipping the report {key}: {size} bytes, more than a report can be ({MAX_REPORT_BYTES})"
                );
                continue;
            }
            wanted.push((key, host));
        }
        let store = &store;
        let mut fetched = futures::stream::iter(wanted.into_iter().map(|(key, host)| async move {
            let got = store.get(&key).await;
            (key, host, got)
        }))
        .buffer_unordered(REPORT_FETCHES);
        while let Some((key, host, got)) = fetched.next().await {
            let Some(obj) = got.map_err(fail)? else {
                continue;
            };
            let Some((finished, id, success)) = read_report(&obj.bytes, &host) else {
                tracing::warn!("skipping the unreadable report {key}");
                continue;
            };
            let slot = latest
                .entry((region.clone(), host))
                .or_insert_with(|| (finished, id.clone(), success));
            if (finished, &id) > (slot.0, &slot.1) {
                *slot = (finished, id, success);
            }
        }
    }
    let total = u32::try_from(latest.len()).unwrap_or(u32::MAX);
    let failed = latest.values().filter(|(_, _, ok)| !ok).count();
    Ok(ReportCounts {
        total,
        failed: u32::try_from(failed).unwrap_or(u32::MAX),
    })
}

/// A report's finish time, record id and success, if it is one and is `host`'s own.
fn read_report(bytes: &[u8], host: &str) -> Option<Latest> {
    if bytes.len() as u64 > MAX_REPORT_BYTES {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    if v["host"].as_str() != Some(host) {
        return None;
    }
    let record = &v["record"];
    let finished: Timestamp = record["finished_at"].as_str()?.parse().ok()?;
    let id = record["id"].as_str()?.to_owned();
    Some((finished, id, record["result"].as_str() == Some("success")))
}

/// The guards of wave `wave` for `version`; an error listing every refusal.
async fn guard_wave(
    plan: &Plan,
    args: &PlanArgs,
    wave: usize,
    version: &Version,
    trusted_root: &[u8],
    allow_few_reports: bool,
) -> Result<(), Failure> {
    let all = all_facts(plan, args, version, trusted_root).await;
    let earlier: Vec<Region> = plan
        .waves
        .iter()
        .take(wave.saturating_sub(1))
        .flat_map(|w| w.regions.clone())
        .collect();
    let reports = report_counts(plan, args, &earlier, version).await?;
    let refused = plan::check_wave(
        plan,
        wave,
        &version.to_string(),
        &all,
        reports,
        Timestamp::now(),
        allow_few_reports,
    );
    if refused.is_empty() {
        return Ok(());
    }
    let list = refused
        .iter()
        .map(|r| format!("  - {r}"))
        .collect::<Vec<_>>()
        .join("\n");
    Err(Failure::new(
        exit::REFUSED,
        anyhow!("wave {wave} of {version} may not go out yet:\n{list}"),
    )
    .with_hint("wait for the bake time, fix or resume what is named, then run it again"))
}

/// A packaged release, hashed once, and what signs it.
struct Release {
    files: ReleaseFiles,
    keys: KeyDir,
    exp: Expirations,
    opts: Options,
}

/// Reads and hashes the release's archives once for every region (on a blocking thread;
/// each archive on its own).
async fn hash_release(dist: &std::path::Path, version: &Version) -> Result<ReleaseFiles, Failure> {
    let (dist, version) = (dist.to_owned(), version.clone());
    tokio::task::spawn_blocking(move || {
        ReleaseFiles::scan(&dist, &version).map_err(|e| {
            repo_failure(
                e,
                format!("cannot read the release {version} in {}", dist.display()),
            )
        })
    })
    .await
    .map_err(|e| fail(anyhow!("hashing the release's archives failed: {e}")))?
}

async fn publish_regions(
    plan: &Plan,
    args: &PlanArgs,
    regions: &[Region],
    wave_index: Option<usize>,
    release: Release,
) -> Vec<Row> {
    let release = Arc::new(release);
    let waves = plan.clone();
    fan_out(plan, args, regions, move |rs| {
        let rollout_wave = wave_index
            .or_else(|| waves.wave_of(&rs.region))
            .and_then(|i| waves.waves.get(i))
            .cloned();
        let release = Arc::clone(&release);
        async move {
            let now = Timestamp::now();
            let rollout = match rollout_wave.map(|w| w.in_region(now)) {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    return Err(publish::PublishError::Edit(repo::RepoError::Invalid(
                        e.to_string(),
                    )));
                }
                None => None,
            };
            let add = AddOptions {
                version: release.files.version().clone(),
                status: Status::Active,
                rollout,
            };
            let r = &*release;
            publish::update_region(&rs, &r.opts, |scratch, floor| async move {
                repo::add_above(&scratch, &r.files, &add, &r.keys, &r.exp, now, floor).await
            })
            .await
        }
    })
    .await
}

pub fn publish(a: PublishArgs) -> Result<i32, Failure> {
    let plan = load_plan(&a.plan)?;
    let keys = open_keys(&a.keys)?;
    let mut opts = options(&a.plan, &keys, a.dry_run, a.allow_clobber)?;
    if let Some(path) = &a.notes {
        let text = std::fs::read_to_string(path).map_err(|e| {
            fail(anyhow!(
                "cannot read the release notes {}: {e}",
                path.display()
            ))
        })?;
        opts.notes = Some((a.version.to_string(), text));
    }
    let rt = regions_runtime()?;
    rt.block_on(async {
        let (regions, wave_index) = match a.wave {
            Some(n) => {
                if n == 0 || n > plan.waves.len() {
                    return Err(Failure::new(
                        exit::USAGE,
                        anyhow!("the plan has waves 1 to {}, not {n}", plan.waves.len()),
                    ));
                }
                if !a.dry_run {
                    guard_wave(
                        &plan,
                        &a.plan,
                        n,
                        &a.version,
                        &opts.trusted_root,
                        a.allow_few_reports,
                    )
                    .await?;
                }
                (plan.waves[n - 1].regions.clone(), Some(n - 1))
            }
            None => (a.regions.clone(), None),
        };
        let release = Release {
            files: hash_release(&a.dist, &a.version).await?,
            keys,
            exp: a.expiry.expirations(),
            opts,
        };
        let rows = publish_regions(&plan, &a.plan, &regions, wave_index, release).await;
        print_rows(&rows, a.plan.json)
    })
}

/// A change to a region's manifest at a time.
type ManifestChange =
    Arc<dyn Fn(&mut Manifest, Timestamp) -> Result<(), repo::RepoError> + Send + Sync>;

fn edit_everywhere(
    args: &PlanArgs,
    keys: &std::path::Path,
    expiry: &ExpiryArgs,
    version: &Version,
    change: ManifestChange,
) -> Result<i32, Failure> {
    let plan = load_plan(args)?;
    let keys = open_keys(keys)?;
    let opts = options(args, &keys, false, false)?;
    let exp = expiry.expirations();
    regions_runtime()?.block_on(async {
        let mut published = Vec::new();
        for f in all_facts(&plan, args, version, &opts.trusted_root).await {
            let region = f.region.clone();
            if f.published.is_some() {
                published.push(region);
            } else if let Err(e) = f.verified {
                return Err(fail(anyhow!("{region} cannot be read: {e}")).with_hint("fix the region first; a halt or recall must reach every region that has the version"));
            }
        }
        if published.is_empty() {
            return Err(fail(anyhow!("{version} is published in no region of the plan")));
        }
        let shared = Arc::new((keys, opts));
        let rows = fan_out(&plan, args, &published, move |rs| {
            let (shared, change) = (Arc::clone(&shared), Arc::clone(&change));
            async move {
                let now = Timestamp::now();
                let (keys, opts) = &*shared;
                publish::update_region(&rs, opts, |scratch, floor| async move {
                    repo::edit_manifest_above(&scratch, keys, &exp, now, floor, |m| change(m, now)).await
                })
                .await
            }
        })
        .await;
        print_rows(&rows, args.json)
    })
}

#[derive(Debug, Serialize)]
struct StatusRow {
    region: Region,
    wave: Option<usize>,
    versions: Vec<String>,
    #[serde(flatten)]
    facts: RegionFacts,
    next_allowed: Option<Timestamp>,
}

pub fn rollout(c: RolloutCommand) -> Result<i32, Failure> {
    match c {
        RolloutCommand::Status {
            plan: args,
            version,
            trusted_root,
        } => {
            let plan = load_plan(&args)?;
            let trusted = std::fs::read(&trusted_root).map_err(|e| {
                fail(anyhow!(
                    "cannot read the trusted root {}: {e}",
                    trusted_root.display()
                ))
            })?;
            regions_runtime()?.block_on(async {
                let manifests = read_all(&plan, &args, &trusted).await;
                let newest = manifests
                    .iter()
                    .filter_map(|(_, m)| m.as_ref().ok())
                    .flat_map(|m| m.packages.iter().flat_map(|p| p.files.iter()))
                    .flat_map(|fe| fe.available_versions.iter())
                    .map(|e| e.version.clone())
                    .max();
                let Some(version) = version.or(newest) else {
                    return Err(fail(anyhow!("no version is published in any region of the plan")));
                };
                let all: Vec<RegionFacts> = manifests.iter().map(|(r, m)| facts_from(r, m, &version)).collect();
                let mut rows = Vec::new();
                for ((region, m), f) in manifests.iter().zip(all.iter()) {
                    let wave = plan.wave_of(region).map(|i| i + 1);
                    let mut versions = std::collections::BTreeMap::new();
                    for e in m.iter().flat_map(|m| m.packages.iter()).filter(|p| p.name == "molt-agent").flat_map(|p| p.files.iter()).flat_map(|fe| fe.available_versions.iter()) {
                        let halted = if e.halted.is_some() { ", halted" } else { "" };
                        versions.insert(e.version.clone(), format!("{} {}{halted}", e.version, e.status.as_str()));
                    }
                    rows.push(StatusRow {
                        region: region.clone(),
                        wave,
                        versions: versions.into_values().collect(),
                        facts: f.clone(),
                        next_allowed: wave.and_then(|w| plan::next_allowed(&plan, w, &all)),
                    });
                }
                let next = plan::next_wave(&plan, &all);
                if args.json {
                    crate::print_json(&serde_json::json!({ "version": version.to_string(), "next_wave": next, "regions": rows }))?;
                } else {
                    println!("rollout of {version}; next wave: {}", next.map_or_else(|| "none (every wave has it)".into(), |w| w.to_string()));
                    for r in &rows {
                        println!(
                            "{:<16} wave {:<3} {:<28} {}{}{}",
                            r.region.to_string(),
                            r.wave.map_or_else(|| "-".into(), |w| w.to_string()),
                            r.facts.published.map_or_else(|| "not published".into(), |t| format!("published {}", t.strftime("%Y-%m-%dT%H:%MZ"))),
                            r.facts.halted.as_ref().map_or_else(String::new, |h| format!("HALTED ({h}) ")),
                            r.versions.join("; "),
                            match (&r.facts.verified, r.next_allowed) {
                                (Err(e), _) => format!("  UNVERIFIED: {e}"),
                                (Ok(()), Some(t)) => format!("  next wave allowed from {}", t.strftime("%Y-%m-%dT%H:%MZ")),
                                _ => String::new(),
                            }
                        );
                    }
                }
                Ok(exit::OK)
            })
        }
        RolloutCommand::Advance {
            plan: args,
            version,
            dist,
            keys,
            expiry,
            dry_run,
            allow_few_reports,
        } => {
            let plan = load_plan(&args)?;
            let keys = open_keys(&keys)?;
            let opts = options(&args, &keys, dry_run, false)?;
            regions_runtime()?.block_on(async {
                let all = all_facts(&plan, &args, &version, &opts.trusted_root).await;
                let Some(wave) = plan::next_wave(&plan, &all) else {
                    println!("every wave already has {version}");
                    return Ok(exit::OK);
                };
                guard_wave(
                    &plan,
                    &args,
                    wave,
                    &version,
                    &opts.trusted_root,
                    allow_few_reports,
                )
                .await?;
                let regions = plan.waves[wave - 1].regions.clone();
                let release = Release {
                    files: hash_release(&dist, &version).await?,
                    keys,
                    exp: expiry.expirations(),
                    opts,
                };
                let rows = publish_regions(&plan, &args, &regions, Some(wave - 1), release).await;
                print_rows(&rows, args.json)
            })
        }
        RolloutCommand::Halt {
            plan,
            version,
            reason,
            keys,
            expiry,
        } => {
            let v = version.clone();
            edit_everywhere(
                &plan,
                &keys,
                &expiry,
                &version,
                Arc::new(move |m, now| edits::halt(m, &v, &reason, now)),
            )
        }
        RolloutCommand::Resume {
            plan,
            version,
            keys,
            expiry,
        } => {
            let v = version.clone();
            edit_everywhere(
                &plan,
                &keys,
                &expiry,
                &version,
                Arc::new(move |m, now| edits::resume(m, &v, now)),
            )
        }
        RolloutCommand::Recall {
            plan,
            version,
            keys,
            expiry,
        } => {
            let v = version.clone();
            edit_everywhere(
                &plan,
                &keys,
                &expiry,
                &version,
                Arc::new(move |m, _| edits::recall(m, &v).map(drop)),
            )
        }
    }
}

/// `repo upload`.
pub fn upload(
    args: PlanArgs,
    region: &Region,
    repo_dir: &std::path::Path,
    keys: &std::path::Path,
) -> Result<i32, Failure> {
    let plan = load_plan(&args)?;
    let keys = open_keys(keys)?;
    let opts = options(&args, &keys, false, false)?;
    regions_runtime()?.block_on(async {
        let rs = region_store(&plan, &args, region).await?;
        let n = publish::upload_new(&rs, repo_dir, &opts)
            .await
            .map_err(|e| {
                let hint = e.hint();
                let f = fail(e);
                match hint {
                    Some(h) => f.with_hint(h),
                    None => f,
                }
            })?;
        println!(
            "uploaded {n} objects to {} and read them back",
            rs.store.describe()
        );
        Ok(exit::OK)
    })
}

fn selected(plan: &Plan, regions: &[Region]) -> Vec<Region> {
    if regions.is_empty() {
        plan.regions()
    } else {
        regions.to_vec()
    }
}

/// `refresh --plan`: re-sign snapshot and timestamp in each region's bucket.
pub fn refresh_regions(
    args: &PlanArgs,
    regions: &[Region],
    keys: &std::path::Path,
    expiry: &ExpiryArgs,
) -> Result<i32, Failure> {
    let plan = load_plan(args)?;
    let keys = open_keys(keys)?;
    let opts = options(args, &keys, false, false)?;
    let exp = expiry.expirations();
    let regions = selected(&plan, regions);
    regions_runtime()?.block_on(async {
        let shared = Arc::new((keys, opts));
        let rows = fan_out(&plan, args, &regions, move |rs| {
            let shared = Arc::clone(&shared);
            async move {
                let now = Timestamp::now();
                let (keys, opts) = &*shared;
                publish::update_region(&rs, opts, |scratch, floor| async move {
                    let r = repo::refresh_above(&scratch, keys, &exp, now, floor).await?;
                    Ok(repo::EditReport {
                        targets_version: r.targets_version,
                        snapshot_version: r.snapshot_version,
                        timestamp_version: r.timestamp_version,
                        added: Vec::new(),
                        targets: Vec::new(),
                        unchanged: false,
                    })
                })
                .await
            }
        })
        .await;
        print_rows(&rows, args.json)
    })
}

#[derive(Debug, Serialize)]
struct ExpiryRow {
    region: Region,
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<Vec<repo::RoleExpiry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `check-expiry --plan`: exit 1 when a role of any region expires within `within`, or a
/// region cannot be read.
pub fn check_expiry_regions(
    args: &PlanArgs,
    regions: &[Region],
    within: std::time::Duration,
) -> Result<i32, Failure> {
    let plan = load_plan(args)?;
    let regions = selected(&plan, regions);
    regions_runtime()?.block_on(async {
        let now = Timestamp::now();
        let mut rows = Vec::new();
        for region in &regions {
            let row = match region_store(&plan, args, region).await {
                Err(f) => ExpiryRow {
                    region: region.clone(),
                    roles: None,
                    error: Some(format!("{:#}", f.error)),
                },
                Ok(rs) => match publish::remote_expiry(&rs, within, now).await {
                    Ok(roles) => ExpiryRow {
                        region: region.clone(),
                        roles: Some(roles),
                        error: None,
                    },
                    Err(e) => ExpiryRow {
                        region: region.clone(),
                        roles: None,
                        error: Some(format!("{:#}", anyhow::Error::new(e))),
                    },
                },
            };
            rows.push(row);
        }
        let bad: Vec<String> = rows
            .iter()
            .filter_map(|r| match (&r.roles, &r.error) {
                (_, Some(e)) => Some(format!("{}: {e}", r.region)),
                (Some(roles), None) => {
                    let soon: Vec<&str> = roles.iter().filter(|x| x.expires_soon).map(|x| x.role.as_str()).collect();
                    (!soon.is_empty()).then(|| format!("{}: {} expire(s) within {}", r.region, soon.join(", "), humantime::format_duration(within)))
                }
                _ => None,
            })
            .collect();
        if args.json {
            crate::print_json(&rows)?;
        } else {
            for r in &rows {
                match (&r.roles, &r.error) {
                    (Some(roles), None) => {
                        for x in roles {
                            let mark = if x.expires_soon { "EXPIRES SOON" } else { "ok" };
                            println!("{:<16} {:<10} version {:<5} expires {}  {mark}", r.region.to_string(), x.role, x.version, x.expires);
                        }
                    }
                    (_, e) => println!("{:<16} FAILED: {}", r.region.to_string(), e.clone().unwrap_or_default()),
                }
            }
        }
        if bad.is_empty() {
            return Ok(exit::OK);
        }
        Err(Failure::new(exit::FAILED, anyhow!("{}", bad.join("; "))).with_hint(
            "run `release-manifest refresh --plan …` (timestamp, snapshot), re-sign targets with a publish, or `root rotate`; an expired timestamp stops every host's updates",
        ))
    })
}
