//! `refresh` and `check-expiry`: keeping a repository alive.

use std::path::PathBuf;
use std::time::Duration;

use molt_publish::tuf::repo;
use molt_schema::Region;
use molt_schema::cli::{Failure, exit};

use crate::common::{ExpiryArgs, open_keys, repo_failure, runtime};
use crate::publish::PlanArgs;

#[derive(Debug, clap::Args)]
pub struct RefreshArgs {
    /// A local repository; without it, the plan's regions in their buckets.
    #[arg(long)]
    repo: Option<PathBuf>,
    #[command(flatten)]
    plan: PlanArgs,
    /// Only these regions of the plan (comma-separated).
    #[arg(long, value_delimiter = ',')]
    regions: Vec<Region>,
    /// The keys directory (the online keys suffice).
    #[arg(long)]
    keys: PathBuf,
    #[command(flatten)]
    expiry: ExpiryArgs,
}

#[derive(Debug, clap::Args)]
pub struct CheckExpiryArgs {
    /// A local repository; without it, the plan's regions in their buckets.
    #[arg(long)]
    repo: Option<PathBuf>,
    #[command(flatten)]
    plan: PlanArgs,
    /// Only these regions of the plan (comma-separated).
    #[arg(long, value_delimiter = ',')]
    regions: Vec<Region>,
    /// Fail when a role expires within this long (e.g. 12h, 2days).
    #[arg(long, value_parser = humantime::parse_duration)]
    within: Duration,
}

pub fn refresh(args: RefreshArgs) -> Result<i32, Failure> {
    let Some(repo_dir) = &args.repo else {
        return crate::publish::refresh_regions(
            &args.plan,
            &args.regions,
            &args.keys,
            &args.expiry,
        );
    };
    let keys = open_keys(&args.keys)?;
    let r = runtime()?
        .block_on(repo::refresh(
            repo_dir,
            &keys,
            &args.expiry.expirations(),
            jiff::Timestamp::now(),
        ))
        .map_err(|e| repo_failure(e, format!("cannot refresh {}", repo_dir.display())))?;
    if args.plan.json {
        crate::print_json(&r)?;
    } else {
        println!(
            "snapshot  version {} expires {}",
            r.snapshot_version, r.snapshot_expires
        );
        println!(
            "timestamp version {} expires {}",
            r.timestamp_version, r.timestamp_expires
        );
    }
    Ok(exit::OK)
}

pub fn check_expiry(args: CheckExpiryArgs) -> Result<i32, Failure> {
    let Some(repo_dir) = &args.repo else {
        return crate::publish::check_expiry_regions(&args.plan, &args.regions, args.within);
    };
    let roles = runtime()?
        .block_on(repo::check_expiry(
            repo_dir,
            args.within,
            jiff::Timestamp::now(),
        ))
        .map_err(|e| repo_failure(e, format!("cannot read {}", repo_dir.display())))?;
    let soon: Vec<_> = roles.iter().filter(|r| r.expires_soon).collect();
    if args.plan.json {
        crate::print_json(&roles)?;
    } else {
        for r in &roles {
            let mark = if r.expires_soon { "EXPIRES SOON" } else { "ok" };
            println!(
                "{:<10} version {:<5} expires {}  {mark}",
                r.role, r.version, r.expires
            );
        }
    }
    if soon.is_empty() {
        return Ok(exit::OK);
    }
    let names: Vec<&str> = soon.iter().map(|r| r.role.as_str()).collect();
    Err(Failure::new(
        exit::FAILED,
        anyhow::anyhow!(
            "{} expire{} within {}",
            names.join(", "),
            if names.len() == 1 { "s" } else { "" },
            humantime::format_duration(args.within)
        ),
    )
    .with_hint("run `release-manifest refresh` (timestamp, snapshot) or re-sign with `add`/`set-*` (targets) or `root rotate` (root)"))
}
