//! `agent`: molt's host agent.
//!
//! This build carries the command line and version stamping only; the service, its
//! schedule and status arrive with the agent work (SPEC §7).

use std::process::ExitCode;

use clap::Parser;

/// molt's host agent: runs as a service and keeps this host's molt up to date.
#[derive(Debug, Parser)]
#[command(name = "agent", version = release_manifest::BUILD_VERSION, about)]
struct Cli {}

fn main() -> ExitCode {
    let _cli = Cli::parse();
    eprintln!("error: this agent build has no service yet; only --version and --help work");
    ExitCode::from(2)
}
