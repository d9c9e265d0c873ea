//! `refresh` and `check-expiry`: keeping a repository alive.

use std::path::PathBuf;
use std::time::Duration;

use release_manifest::cli::{Failure, exit};
use release_manifest::tuf::repo;

use crate::common::{open_keys, repo_failure, runtime};

#[derive(Debug, clap::Args)]
pub struct RefreshArgs {
    /// The repository and keys (snapshot and timestamp keys suffice).
    #[command(flatten)]
    target: crate::edit::Target,
}

#[derive(Debug, clap::Args)]
pub struct CheckExpiryArgs {
    /// The region's repository.
    #[arg(long)]
    repo: PathBuf,
    /// Fail when a role expires within this long (e.g. 12h, 2days).
    #[arg(long, value_parser = humantime::parse_duration)]
    within: Duration,
    /// Print the roles as JSON.
    #[arg(long)]
    json: bool,
}

pub fn refresh(args: RefreshArgs) -> Result<i32, Failure> {
    let args = args.target;
    let keys = open_keys(&args.keys)?;
    let r = runtime()?
        .block_on(repo::refresh(
            &args.repo,
            &keys,
            &args.expiry.expirations(),
            jiff::Timestamp::now(),
        ))
        .map_err(|e| repo_failure(e, format!("cannot refresh {}", args.repo.display())))?;
    if args.json {
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
    let roles = runtime()?
        .block_on(repo::check_expiry(
            &args.repo,
            args.within,
            jiff::Timestamp::now(),
        ))
        .map_err(|e| repo_failure(e, format!("cannot read {}", args.repo.display())))?;
    let soon: Vec<_> = roles.iter().filter(|r| r.expires_soon).collect();
    if args.json {
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
