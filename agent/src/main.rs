//! `agent`: molt's host agent.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use clap::{Parser, Subcommand};
use molt_agent::settings::AgentSettings;
use molt_agent::{diagnose, hold, run, status};
use molt_schema::cli::{self, Failure, exit};

/// The version stamped into this build: `MOLT_BUILD_VERSION` at compile time, else the
/// crate version. Only this file reads the variable, so a re-stamp recompiles only it
/// (`molt_host::build`).
const BUILD_VERSION: &str = match option_env!("MOLT_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// molt's host agent: runs as a service and keeps this host's molt up to date.
#[derive(Debug, Parser)]
#[command(name = "agent", version = BUILD_VERSION, about)]
struct Cli {
    /// The config file [default: $MOLT_CONFIG, else /etc/molt/agent.toml].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// More log output (-v info, -vv debug); MOLT_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the service: health, the update schedule, recovery and reports.
    Run,
    /// Show version, region, credentials, trust, schedule, wave and the last update.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check everything the agent depends on, with a hint for each problem.
    Diagnose {
        #[arg(long)]
        json: bool,
    },
    /// Stop scheduled updates on this host until `agent unhold`.
    Hold {
        /// Why (shown by `agent status`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Let scheduled updates run again.
    Unhold,
    /// Check the config file as this version reads it, without doing anything else; exits
    /// 2 when it would refuse it. The updater runs this before it switches to a version.
    CheckConfig,
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn load(config: Option<&std::path::Path>) -> Result<AgentSettings, Failure> {
    AgentSettings::load(config, env).map_err(|e| {
        let hint = e.hint();
        Failure::new(exit::USAGE, e).with_hint(hint)
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::FAILED, anyhow!("cannot start the runtime: {e}")))
}

fn main() -> ExitCode {
    molt_host::build::set_version(BUILD_VERSION);
    let cli = Cli::parse();
    let default_verbosity = u8::from(matches!(cli.command, Cmd::Run));
    let (config_path, _) = molt_agent::settings::config_path(cli.config.as_deref(), &env);
    let format = molt_host::config::Config::peek_log_format(&config_path, env);
    cli::init_logging(cli.verbose.max(default_verbosity), false, format);
    match real_main(cli) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            cli::write_stderr(&cli::render(&failure));
            ExitCode::from(u8::try_from(failure.code).unwrap_or(1))
        }
    }
}

fn real_main(cli: Cli) -> Result<u8, Failure> {
    let config = cli.config.clone();
    let settings = load(config.as_deref())?;
    match cli.command {
        Cmd::Run => {
            let reload =
                move || load(config.as_deref()).map_err(|f| cli::render(&f).trim().to_owned());
            runtime()?
                .block_on(run::run(settings, reload))
                .map_err(|e| Failure::new(exit::FAILED, e))?;
            Ok(0)
        }
        Cmd::Status { json } => {
            let s = runtime()?.block_on(status::gather(&settings));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).map_err(|e| Failure::new(exit::FAILED, e))?
                );
            } else {
                println!("{}", status::render(&s));
            }
            Ok(0)
        }
        Cmd::Diagnose { json } => {
            let checks = runtime()?.block_on(diagnose::diagnose(&settings));
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&checks)
                        .map_err(|e| Failure::new(exit::FAILED, e))?
                );
            } else {
                print!("{}", diagnose::render(&checks));
            }
            Ok(u8::from(
                checks.iter().any(|c| c.level == diagnose::Level::Fail),
            ))
        }
        Cmd::Hold { reason } => {
            hold::hold(&settings, reason).map_err(|e| Failure::new(exit::FAILED, e))?;
            println!(
                "scheduled updates are on hold on this host; `agent unhold` lets them run again"
            );
            Ok(0)
        }
        Cmd::CheckConfig => {
            let ignored = settings.config.ignored.len();
            let how = if !settings.config_exists {
                "does not exist; the defaults apply".to_owned()
            } else if ignored == 0 {
                "is valid".to_owned()
            } else {
                format!("is valid; {ignored} key(s) this version does not know are ignored")
            };
            println!(
                "{} {how} (agent {BUILD_VERSION})",
                settings.config_path.display()
            );
            Ok(0)
        }
        Cmd::Unhold => {
            let had = hold::unhold(&settings).map_err(|e| Failure::new(exit::FAILED, e))?;
            if settings.hold {
                println!(
                    "removed `agent hold`, but `hold = true` in {} still holds this host",
                    settings.config_path.display()
                );
            } else if had {
                println!("scheduled updates run again on this host");
            } else {
                println!("this host was not on hold");
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn build_version_parses() {
        let parsed: molt_schema::Version = super::BUILD_VERSION
            .parse()
            .expect("MOLT_BUILD_VERSION must be a valid molt version");
        assert_eq!(parsed.to_string(), super::BUILD_VERSION);
    }
}
