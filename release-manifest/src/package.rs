//! `release-manifest package`: reproducible archives of one build for one platform.

use std::path::PathBuf;

use anyhow::Context as _;
use molt_schema::cli::Failure;
use molt_schema::{Platform, Version};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The version these binaries report (`agent --version`).
    #[arg(long)]
    version: Version,
    /// The platform the binaries were built for.
    #[arg(long)]
    platform: Platform,
    /// The agent binary.
    #[arg(long)]
    agent: PathBuf,
    /// The updater binary.
    #[arg(long)]
    updater: PathBuf,
    /// Output directory; archives go to DIR/<package>/<version>/<package>-<platform>.<ext>.
    #[arg(long)]
    out: PathBuf,
    /// Print a JSON array on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<i32, Failure> {
    let archives = molt_archive::package::package(
        &args.version,
        args.platform,
        &args.agent,
        &args.updater,
        &args.out,
    )
    .with_context(|| format!("cannot package {} for {}", args.version, args.platform))?;
    if args.json {
        crate::print_json(&archives)?;
    } else {
        for a in &archives {
            println!("{}  {:>10}  {}", a.sha256, a.size, a.target_name);
        }
    }
    Ok(0)
}
