//! `add`, `set-status`, `set-max-version`, `set-stable`: edits that re-sign targets,
//! snapshot and timestamp with the online keys.

use std::path::PathBuf;

use anyhow::Context as _;
use molt_publish::tuf::repo::{self, AddOptions, EditReport};
use molt_schema::Version;
use molt_schema::cli::{Failure, exit};
use molt_schema::manifest::Status;
use molt_schema::rollout::{Rollout, Wave};

use crate::common::{ExpiryArgs, open_keys, repo_failure, runtime};

/// The repository an edit applies to, the keys that sign it and how long the result lives.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The region's repository.
    #[arg(long)]
    pub repo: PathBuf,
    /// The keys directory (targets, snapshot and timestamp keys; no root key needed).
    #[arg(long)]
    pub keys: PathBuf,
    #[command(flatten)]
    pub expiry: ExpiryArgs,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    #[command(flatten)]
    target: Target,
    /// The directory `release-manifest package --out` wrote.
    #[arg(long)]
    dist: PathBuf,
    /// The version to add.
    #[arg(long)]
    version: Version,
    /// Its status: Active, Inactive or Deprecated.
    #[arg(long, default_value = "Active", value_parser = parse_status)]
    status: Status,
    /// A JSON file with the in-region rollout: {"Start": RFC3339 (default: now), "Waves": [{"Percent": 5, "After": "0s"}, …]}.
    #[arg(long)]
    rollout: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SetStatusArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    version: Version,
    /// Active, Inactive or Deprecated (a recall).
    #[arg(long, value_parser = parse_status)]
    status: Status,
}

#[derive(Debug, clap::Args)]
pub struct SetMaxArgs {
    #[command(flatten)]
    target: Target,
    /// The fleet-wide ceiling.
    #[arg(long, required_unless_present = "clear")]
    version: Option<Version>,
    /// Remove the ceiling.
    #[arg(long, conflicts_with = "version")]
    clear: bool,
}

#[derive(Debug, clap::Args)]
pub struct SetStableArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long)]
    version: Version,
}

fn parse_status(s: &str) -> Result<Status, String> {
    match s {
        "Active" | "Inactive" | "Deprecated" => {
            let Ok(status) = s.parse();
            Ok(status)
        }
        other => Err(format!(
            "unknown status {other:?}; use Active, Inactive or Deprecated"
        )),
    }
}

fn read_rollout(path: &PathBuf) -> Result<Rollout, Failure> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(rename = "Start")]
        start: Option<jiff::Timestamp>,
        #[serde(rename = "Waves")]
        waves: Vec<Wave>,
    }
    let text = std::fs::read(path)
        .with_context(|| format!("cannot read the rollout file {}", path.display()))?;
    let file: File = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a rollout", path.display()))?;
    Rollout::new(file.start.unwrap_or_else(jiff::Timestamp::now), file.waves)
        .with_context(|| format!("{} is not a valid rollout", path.display()))
        .map_err(Failure::from)
}

fn report(r: &EditReport, json: bool) -> Result<i32, Failure> {
    if json {
        crate::print_json(r)?;
    } else {
        if r.unchanged {
            println!(
                "unchanged: the repository already holds exactly this (the same bytes, status and rollout); nothing was signed (set-status changes a published version's status)"
            );
        }
        for name in &r.added {
            println!("signed   {name}");
        }
        println!(
            "versions targets {} · snapshot {} · timestamp {}",
            r.targets_version, r.snapshot_version, r.timestamp_version
        );
    }
    Ok(exit::OK)
}

pub fn add(args: AddArgs) -> Result<i32, Failure> {
    let t = &args.target;
    let keys = open_keys(&t.keys)?;
    let rollout = args.rollout.as_ref().map(read_rollout).transpose()?;
    let opts = AddOptions {
        version: args.version.clone(),
        status: args.status.clone(),
        rollout,
    };
    let r = runtime()?
        .block_on(repo::add(
            &t.repo,
            &args.dist,
            &opts,
            &keys,
            &t.expiry.expirations(),
            jiff::Timestamp::now(),
        ))
        .map_err(|e| {
            repo_failure(
                e,
                format!("cannot add {} to {}", args.version, t.repo.display()),
            )
        })?;
    report(&r, t.json)
}

pub fn set_status(args: SetStatusArgs) -> Result<i32, Failure> {
    let t = &args.target;
    let keys = open_keys(&t.keys)?;
    let r = runtime()?
        .block_on(repo::set_status(
            &t.repo,
            &args.version,
            args.status.clone(),
            &keys,
            &t.expiry.expirations(),
            jiff::Timestamp::now(),
        ))
        .map_err(|e| {
            repo_failure(
                e,
                format!(
                    "cannot set the status of {} in {}",
                    args.version,
                    t.repo.display()
                ),
            )
        })?;
    report(&r, t.json)
}

pub fn set_max_version(args: SetMaxArgs) -> Result<i32, Failure> {
    let t = &args.target;
    let keys = open_keys(&t.keys)?;
    let max = if args.clear {
        None
    } else {
        args.version.clone()
    };
    let r = runtime()?
        .block_on(repo::set_max_version(
            &t.repo,
            max,
            &keys,
            &t.expiry.expirations(),
            jiff::Timestamp::now(),
        ))
        .map_err(|e| repo_failure(e, format!("cannot set MaxVersion in {}", t.repo.display())))?;
    report(&r, t.json)
}

pub fn set_stable(args: SetStableArgs) -> Result<i32, Failure> {
    let t = &args.target;
    let keys = open_keys(&t.keys)?;
    let r = runtime()?
        .block_on(repo::set_stable(
            &t.repo,
            &args.version,
            &keys,
            &t.expiry.expirations(),
            jiff::Timestamp::now(),
        ))
        .map_err(|e| repo_failure(e, format!("cannot set Stable in {}", t.repo.display())))?;
    report(&r, t.json)
}
