//! `release-manifest root rotate`.

use std::path::PathBuf;

use molt_schema::cli::Failure;

use crate::common::{ExpiryArgs, open_keys, repo_failure, runtime};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write a new root version signed by the old and the new root keys, and re-sign each
    /// repository's online roles with the new keys.
    Rotate(RotateArgs),
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// The current keys directory (its root.json and root keys sign the new root).
    #[arg(long)]
    keys: PathBuf,
    /// The new keys directory (from `keys generate`); may be the same as --keys.
    #[arg(long)]
    new_keys: PathBuf,
    /// A region repository to move to the new root (repeatable).
    #[arg(long = "repo")]
    repos: Vec<PathBuf>,
    #[command(flatten)]
    expiry: ExpiryArgs,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: Command) -> Result<i32, Failure> {
    let Command::Rotate(args) = cmd;
    let old = open_keys(&args.keys)?;
    let new = open_keys(&args.new_keys)?;
    let r = runtime()?
        .block_on(molt_publish::tuf::repo::rotate_root(
            &old,
            &new,
            &args.repos,
            &args.expiry.expirations(),
            jiff::Timestamp::now(),
        ))
        .map_err(|e| repo_failure(e, "cannot rotate the root".to_owned()))?;
    if args.json {
        crate::print_json(&r)?;
    } else {
        println!(
            "root version {} written to {}",
            r.root_version,
            r.trusted_root.display()
        );
        for repo in &r.repos {
            println!("re-signed {}", repo.display());
        }
    }
    Ok(0)
}
