//! `release-manifest repo init`.

use std::path::PathBuf;

use molt_schema::Region;
use molt_schema::cli::Failure;

use crate::common::{ExpiryArgs, open_keys, repo_failure, runtime};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Create a region's signed repository with an empty manifest (needs the root keys).
    Init(InitArgs),
    /// Upload a repository made with `repo init` into its region's bucket (or directory),
    /// which must hold none yet.
    Upload(UploadArgs),
}

#[derive(Debug, clap::Args)]
pub struct UploadArgs {
    #[command(flatten)]
    plan: crate::publish::PlanArgs,
    /// The region.
    #[arg(long)]
    region: Region,
    /// The repository `repo init --out` wrote.
    #[arg(long)]
    repo: PathBuf,
    /// The keys directory (its root.json verifies the upload).
    #[arg(long)]
    keys: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The region this repository serves.
    #[arg(long)]
    region: Region,
    /// The keys directory (with root/ for the root keys).
    #[arg(long)]
    keys: PathBuf,
    /// Where to create the repository.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    expiry: ExpiryArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: Command) -> Result<i32, Failure> {
    let args = match cmd {
        Command::Init(args) => args,
        Command::Upload(args) => {
            return crate::publish::upload(args.plan, &args.region, &args.repo, &args.keys);
        }
    };
    let keys = open_keys(&args.keys)?;
    let report = runtime()?
        .block_on(molt_publish::tuf::repo::init(
            &args.out,
            &args.region,
            &keys,
            &args.expiry.expirations(),
            jiff::Timestamp::now(),
        ))
        .map_err(|e| {
            repo_failure(
                e,
                format!("cannot create a repository in {}", args.out.display()),
            )
        })?;
    if args.json {
        crate::print_json(&report)?;
    } else {
        println!(
            "created the {} repository in {} (root version {}); hosts trust {}",
            report.region,
            report.repo.display(),
            report.root_version,
            report.trusted_root.display()
        );
    }
    Ok(0)
}
