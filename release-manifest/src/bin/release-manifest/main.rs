//! `release-manifest`: molt's release tool.

mod package;
mod resolve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use release_manifest::cli::{self, Failure};

/// Packages molt builds, and inspects and edits regions' signed repositories.
#[derive(Debug, Parser)]
#[command(name = "release-manifest", version = release_manifest::BUILD_VERSION, about)]
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
}

fn main() -> ExitCode {
    let args = Cli::parse();
    cli::init_logging(args.verbose, args.quiet);
    let result = match args.command {
        Command::Package(a) => package::run(a),
        Command::Resolve(a) => resolve::run(a),
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
