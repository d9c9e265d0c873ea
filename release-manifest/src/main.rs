//! `release-manifest`: molt's release tool.

mod build_info;
mod common;
mod edit;
mod keys;
mod package;
mod publish;
mod refresh;
mod repo;
mod resolve;
mod root;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use molt_schema::cli::{self, Failure};

/// Packages molt builds, and inspects and edits regions' signed repositories.
#[derive(Debug, Parser)]
#[command(name = "release-manifest", version = crate::build_info::BUILD_VERSION, about)]
struct Cli {
    /// More logging (-v info, -vv debug); MOLT_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Errors only.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Package agent and updater binaries into reproducible archives.
    Package(package::Args),
    /// Show which version a host would move to, and why (exit 3 when a rule refuses).
    Resolve(resolve::Args),
    /// Generate signing keys.
    #[command(subcommand)]
    Keys(keys::Command),
    /// Create a region's repository.
    #[command(subcommand)]
    Repo(repo::Command),
    /// Add a packaged release to a region's repository.
    Add(edit::AddArgs),
    /// Set a version's status (Active, Inactive, or Deprecated to recall it).
    SetStatus(edit::SetStatusArgs),
    /// Set or clear the fleet-wide MaxVersion.
    SetMaxVersion(edit::SetMaxArgs),
    /// Set the version `stable` resolves to.
    SetStable(edit::SetStableArgs),
    /// Re-sign snapshot and timestamp with new expirations (run it on a schedule).
    Refresh(refresh::RefreshArgs),
    /// Fail when a role of a repository expires soon.
    CheckExpiry(refresh::CheckExpiryArgs),
    /// Rotate the root of trust.
    #[command(subcommand)]
    Root(root::Command),
    /// Verify a region's repository as a host would, reading every target.
    Verify(verify::Args),
    /// Publish a release to regions' buckets (or a wave of the rollout plan).
    Publish(publish::PublishArgs),
    /// Follow, advance, halt, resume or recall a release across regions.
    #[command(subcommand)]
    Rollout(publish::RolloutCommand),
    /// Adopt or restore the publisher's record of what it last signed for each region.
    #[command(subcommand)]
    Record(publish::RecordCommand),
}

fn main() -> ExitCode {
    let args = Cli::parse();
    let format = std::env::var("MOLT_LOG_FORMAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    cli::init_logging(args.verbose, args.quiet, format);
    let result = match args.command {
        Command::Package(a) => package::run(a),
        Command::Resolve(a) => resolve::run(a),
        Command::Keys(c) => keys::run(c),
        Command::Repo(c) => repo::run(c),
        Command::Add(a) => edit::add(a),
        Command::SetStatus(a) => edit::set_status(a),
        Command::SetMaxVersion(a) => edit::set_max_version(a),
        Command::SetStable(a) => edit::set_stable(a),
        Command::Refresh(a) => refresh::refresh(a),
        Command::CheckExpiry(a) => refresh::check_expiry(a),
        Command::Root(c) => root::run(c),
        Command::Verify(a) => verify::run(a),
        Command::Publish(a) => publish::publish(a),
        Command::Rollout(c) => publish::rollout(c),
        Command::Record(c) => publish::record(c),
    };
    match result {
        Ok(code) => exit_code(code),
        Err(failure) => {
            eprint!("{}", cli::render(&failure));
            exit_code(failure.code)
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Prints a value as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<(), Failure> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Failure::new(cli::exit::FAILED, e))?;
    println!("{text}");
    Ok(())
}
