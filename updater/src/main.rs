//! `updater`: molt's standalone updater.
//!
//! This build carries the command line and version stamping only; the update pipeline
//! arrives with the updater work (SPEC §6).

use std::process::ExitCode;

use clap::Parser;

/// molt's updater: moves this host to another version of molt-agent, safely.
#[derive(Debug, Parser)]
#[command(name = "updater", version = release_manifest::BUILD_VERSION, about)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!(
        "error: this updater build has no update pipeline yet; only --version and --help work"
    );
    ExitCode::from(2)
}
