//! `updater`: moves this host to another version of molt-agent, safely (SPEC §6).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use molt_host::config::{Config, DEFAULT_CONFIG, ServiceKind};
use molt_schema::cli::{self, Failure, exit};
use molt_schema::resolve::Target;
use molt_schema::{Platform, Region};
use molt_updater::error::UpdateError;
use molt_updater::settings::{Overrides, Settings};
use molt_updater::update::{UpdateOptions, UpdateReport};
use molt_updater::{history, recover, status, update};

/// The version stamped into this build: `MOLT_BUILD_VERSION` at compile time, else the
/// crate version. Only this file reads the variable, so a re-stamp recompiles only it
/// (`molt_host::build`).
const BUILD_VERSION: &str = match option_env!("MOLT_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

/// Moves this host to another version of molt-agent: verified, atomic, rolled back by itself
/// when the new version is unhealthy.
///
/// Exit codes: 0 done or nothing to do · 1 failed, nothing changed · 2 usage · 3 refused by
/// a rule · 4 verification failed · 5 new version failed health, rolled back · 6 another
/// update in progress · 7 rollback failed.
#[derive(Debug, Parser)]
#[command(name = "updater", version = BUILD_VERSION, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    update: UpdateArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The install root (default /opt/molt, or `root` in the config).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// The config file.
    #[arg(long, global = true, env = "MOLT_CONFIG")]
    config: Option<PathBuf>,
    /// How the agent service is controlled.
    #[arg(long, global = true, value_parser = parse_service)]
    service: Option<ServiceKind>,
    /// One JSON object on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// More logging (-v info, -vv debug); MOLT_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Errors only.
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Debug, clap::Args)]
struct UpdateArgs {
    /// latest, stable, or a version.
    #[arg(long)]
    target_version: Option<Target>,
    /// Allow moving to an older version.
    #[arg(long)]
    allow_downgrade: bool,
    /// Take latest/stable now, whatever this host's rollout wave says.
    #[arg(long)]
    ignore_waves: bool,
    /// Reinstall the current version, or retry a quarantined one.
    #[arg(long)]
    force: bool,
    /// The host's region.
    #[arg(long)]
    region: Option<Region>,
    /// The repository: a URL or a template with {bucket}, {region} and {domain}.
    #[arg(long)]
    source: Option<String>,
    /// The platform to install for (default: detected).
    #[arg(long)]
    platform: Option<Platform>,
    /// The trusted root metadata (needed for a first install).
    #[arg(long)]
    trusted_root: Option<PathBuf>,
    /// How long the new agent must stay healthy before the update commits.
    #[arg(long, value_parser = humantime_duration)]
    soak: Option<Duration>,
    /// How long the new agent has to report healthy.
    #[arg(long, value_parser = humantime_duration)]
    health_timeout: Option<Duration>,
    /// Show the plan and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What is installed, running and in progress.
    Status,
    /// Past updates, newest last.
    History {
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
    },
    /// Finish or undo an interrupted update; does nothing while an update runs.
    Recover,
    /// Take the agent's requests (agent/requests/) and run the one they ask for: what
    /// root's molt-update.service runs. At most one run a minute.
    Requests,
    /// Install the molt-agent version an OS package (.deb, .rpm) carries, as the package's
    /// scripts do: over nothing or an older version, through the same switch, health check
    /// and rollback as an update; the package steps aside when molt has the same or newer.
    Bootstrap {
        /// The package's directory, holding bootstrap.json and the archive.
        #[arg(long, default_value = molt_updater::bootstrap::DEFAULT_DIR)]
        package_dir: PathBuf,
        /// Install for the next boot: point `current` at the version and start nothing, as
        /// when no service manager runs (an image being built).
        #[arg(long)]
        offline: bool,
    },
}

/// `println!` that never panics: the updater's stdout is `agent/updater.log` when the agent
/// launches it in direct mode, on the disk that may be full, and the exit code must stay
/// the one the outcome chose.
macro_rules! out {
    ($($arg:tt)*) => {
        cli::write_stdout(&format!("{}\n", format_args!($($arg)*)))
    };
}

fn parse_service(s: &str) -> Result<ServiceKind, String> {
    match s {
        "systemd" => Ok(ServiceKind::Systemd),
        "direct" => Ok(ServiceKind::Direct),
        other => Err(format!(
            "unknown service manager {other:?}; use systemd or direct"
        )),
    }
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("bad duration {s:?} ({e}); write e.g. 30s, 500ms, 2m"))
}

fn main() -> ExitCode {
    molt_host::build::set_version(BUILD_VERSION);
    let cli = Cli::parse();
    let config_path = cli
        .common
        .config
        .as_deref()
        .unwrap_or(Path::new(DEFAULT_CONFIG));
    let format = Config::peek_log_format(config_path, |k| std::env::var(k).ok());
    cli::init_logging(cli.common.verbose, cli.common.quiet, format);
    let json = cli.common.json;
    let result = run(cli);
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(failure) => {
            if json {
                let v = serde_json::json!({
                    "result": "error",
                    "exit_code": failure.code,
                    "message": format!("{:#}", failure.error),
                    "hint": failure.hint,
                });
                out!("{v}");
            }
            cli::write_stderr(&cli::render(&failure));
            ExitCode::from(u8::try_from(failure.code).unwrap_or(1))
        }
    }
}

fn failure(e: UpdateError) -> Failure {
    let code = e.exit_code();
    let hint = e.hint();
    let f = Failure::new(code, e);
    match hint {
        Some(h) => f.with_hint(h),
        None => f,
    }
}

fn run(cli: Cli) -> Result<i32, Failure> {
    let config_path = cli
        .common
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
    let mut config = if cli.common.config.is_some() {
        Config::load(&config_path)
    } else {
        Config::load_optional(&config_path)
    }
    .map_err(|e| {
        Failure::new(exit::USAGE, e)
            .with_hint("fix the config file; every key is listed in docs/operations.md")
    })?;
    config
        .apply_env(|k| std::env::var(k).ok())
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    let u = &cli.update;
    let overrides = Overrides {
        root: cli.common.root.clone(),
        region: u.region.clone(),
        source: u.source.clone(),
        platform: u.platform,
        trusted_root: u.trusted_root.clone(),
        service: cli.common.service,
        soak: u.soak,
        health_timeout: u.health_timeout,
    };
    let mut settings = Settings::resolve(
        &config,
        config_path.exists().then_some(config_path),
        overrides,
        |k| std::env::var(k).ok(),
    )
    .map_err(|e| failure(e.into()))?;
    let mut svc = molt_updater::settings::service_for(&settings);
    let json = cli.common.json;
    // agent/ exists before an agent starts, and an older layout's agent files are in it.
    let changes_things = match &cli.command {
        Some(Command::Recover | Command::Requests | Command::Bootstrap { .. }) => true,
        Some(_) => false,
        None => !u.dry_run && u.target_version.is_some(),
    };
    if changes_things {
        if let Err(e) = molt_host::agent_dir::prepare(&settings.layout) {
            tracing::warn!("{}", molt_schema::cli::one_line(&e));
        }
        molt_host::agent_dir::open_state_to_agent(&settings.layout);
    }
    match cli.command {
        Some(Command::Requests) => {
            use molt_updater::requests::{self, Decision};
            match requests::decide(&settings.layout, jiff::Timestamp::now()) {
                Decision::Nothing => {
                    out!("no request to run");
                    Ok(exit::OK)
                }
                Decision::TooSoon(r) => {
                    requests::answer_busy(&settings.layout, &r);
                    out!(
                        "an update began less than {} s ago; request {} is answered as busy",
                        requests::MIN_INTERVAL.as_secs(),
                        r.launch_id
                    );
                    Ok(exit::OK)
                }
                Decision::Run(r) => {
                    let program =
                        std::env::current_exe().map_err(|e| Failure::new(exit::FAILED, e))?;
                    let mut global = Vec::new();
                    if let Some(root) = &cli.common.root {
                        global.push("--root".into());
                        global.push(root.clone().into_os_string());
                    }
                    if let Some(config) = &cli.common.config {
                        global.push("--config".into());
                        global.push(config.clone().into_os_string());
                    }
                    out!(
                        "running `updater {}` for the agent's request {}",
                        requests::arguments(&r).join(" "),
                        r.launch_id
                    );
                    let e = requests::exec(&program, &global, &r);
                    Err(Failure::new(
                        exit::FAILED,
                        anyhow::anyhow!("cannot run {}: {e}", program.display()),
                    ))
                }
            }
        }
        Some(Command::Status) => status::print_status(&settings, json)
            .map(|()| exit::OK)
            .map_err(failure),
        Some(Command::History { count }) => status::print_history(&settings, count, json)
            .map(|()| exit::OK)
            .map_err(failure),
        Some(Command::Recover) => {
            let r = recover::recover(&settings, svc.as_mut()).map_err(failure)?;
            if json {
                out!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                out!("{}", status::describe_recovery(&r));
            }
            Ok(exit::OK)
        }
        Some(Command::Bootstrap {
            package_dir,
            offline,
        }) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::new(exit::FAILED, e))?;
            let progress = !json && !cli.common.quiet;
            let report = rt
                .block_on(molt_updater::bootstrap::run(
                    &settings,
                    &package_dir,
                    svc.as_mut(),
                    progress,
                    offline,
                ))
                .map_err(failure)?;
            if json {
                out!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print_report(&report);
            }
            Ok(exit::OK)
        }
        None => {
            let Some(target) = u.target_version.clone() else {
                return Err(Failure::new(
                    exit::USAGE,
                    anyhow::anyhow!("nothing to do: pass --target-version <VERSION|latest|stable>"),
                )
                .with_hint("see `updater --help`"));
            };
            let opts = UpdateOptions {
                target,
                allow_downgrade: u.allow_downgrade,
                force: u.force,
                ignore_waves: u.ignore_waves,
                dry_run: u.dry_run,
                progress: !json && !cli.common.quiet,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Failure::new(exit::FAILED, e))?;
            // A run the agent launched records its result for the agent's retry rule.
            let launched = molt_host::attempt::launch_id_from(
                std::env::var(molt_host::attempt::LAUNCH_ID_ENV).ok(),
            )
            .filter(|_| !opts.dry_run);
            let started_at = jiff::Timestamp::now();
            let result = rt.block_on(async {
                settings.resolve_region().await?;
                update::run(&settings, &opts, svc.as_mut()).await
            });
            if let Some(launch) = launched {
                history::record_launched_run(
                    &settings.layout,
                    launch,
                    started_at,
                    result.as_ref().map(|_| ()),
                );
            }
            let report = result.map_err(failure)?;
            if json {
                out!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print_report(&report);
            }
            Ok(exit::OK)
        }
    }
}

fn print_report(r: &UpdateReport) {
    match r {
        UpdateReport::Skipped { message, .. } => out!("{message}"),
        UpdateReport::Plan {
            plan,
            download_url,
            download_size,
            seed,
        } => {
            out!("plan (dry run; nothing changed):");
            out!(
                "  from:      {}",
                plan.from
                    .as_ref()
                    .map_or_else(|| "(nothing installed)".to_owned(), ToString::to_string)
            );
            out!("  to:        {}", plan.to);
            out!("  why:       {}", plan.reason);
            out!("  download:  {download_url} ({download_size} bytes)");
            out!(
                "  wave time: {} (host seed {seed})",
                plan.wave_time.map_or_else(
                    || "no rollout: eligible now".to_owned(),
                    |t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
                )
            );
        }
        UpdateReport::Updated { record } => {
            out!(
                "updated molt-agent {} -> {} in {:.1} s (agent downtime {} ms)",
                record
                    .from
                    .as_ref()
                    .map_or_else(|| "(nothing)".to_owned(), ToString::to_string),
                record.to,
                record.timings.total_ms as f64 / 1000.0,
                record.timings.agent_downtime_ms.unwrap_or_default()
            );
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
