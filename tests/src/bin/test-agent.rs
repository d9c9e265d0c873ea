//! `test-agent`: a stand-in for molt-agent in the updater's tests. It follows the health
//! protocol (SPEC §6 step 9) and misbehaves on demand.
//!
//! It is packaged as `bin/agent` in test packages of any version, so it takes its version
//! from the `VERSION` file of its install (`<dir of the exe>/../VERSION`).
//!
//! - `test-agent --version` prints `agent <version>`. Installed as `bin/updater`, it stands in
//!   for a new updater: `--version` prints `updater <version>`, and a re-exec records its
//!   arguments in the file `MOLT_TEST_REEXEC_MARKER` names.
//! - `test-agent run` reads `MOLT_ROOT`, `MOLT_HEALTH_NONCE`, and its behaviour from
//!   `MOLT_TEST_AGENT_<version with '.' and '-' as '_'>` (default `ok`):
//!   - `ok`: writes `agent/health.json` at once (again every 200 ms while the disk refuses
//!     it), runs until SIGTERM, exits 0;
//!   - `exit-at-start`: exits 3 at once;
//!   - `never-healthy`: never writes health.json, runs until SIGTERM;
//!   - `wrong-version`: reports version `0.0.0-wrong`;
//!   - `wrong-nonce`: reports a nonce that is not the one it was given;
//!   - `crash-in-soak`: reports ready, then exits 1 after 300 ms;
//!   - `slow-start`: reports ready after 1 s;
//!   - `ignore-term`: reports ready and ignores SIGTERM (only SIGKILL stops it);
//!   - `bad-version-output`: runs as `ok`, but `--version` prints `agent 9.9.9`;
//!   - `rejects-config`: stands in for an older agent that does not know a key of the
//!     host's config: `check-config` and `run` exit 2 with a config error;
//!   - `no-check-config`: runs as `ok`, but knows no `check-config` (an agent that
//!     predates it; clap's usage error, exit 2).
//! - `test-agent [--config FILE] check-config` reads the config (`--config`, else
//!   `MOLT_CONFIG`) as molt-agent does and exits 0, or 2 with its error.

// Like molt-agent, the stand-in never panics on output it cannot write: its stderr is
// `state/agent.log` in direct mode, on a disk that may be full.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use molt_host::HostLayout;
use molt_host::state::{self, Health, HealthStatus, STATE_VERSION};
use molt_schema::Version;

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("test-agent: error: {message}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> Result<ExitCode, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if invoked_as_updater() {
        return as_updater(&args);
    }
    let version = own_version()?;
    let behaviour = behaviour(&version);
    match args.first().map(String::as_str) {
        Some("--version") => {
            if behaviour == "bad-version-output" {
                println!("agent 9.9.9");
            } else {
                println!("agent {version}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Some("run") if behaviour == "rejects-config" => Err(refused_config()),
        Some("run") => run(&version, &behaviour),
        _ if args.iter().any(|a| a == "check-config") => check_config(&args, &behaviour),
        _ => Err("usage: test-agent --version | test-agent run | test-agent check-config".into()),
    }
}

/// What `rejects-config` prints: an older agent's strict reading of a newer key.
fn refused_config() -> String {
    "invalid config file: unknown field `log_format`, expected one of `schedule`, `hold`".into()
}

/// `check-config`: the config as molt-agent reads it.
fn check_config(args: &[String], behaviour: &str) -> Result<ExitCode, String> {
    match behaviour {
        "rejects-config" => return Err(refused_config()),
        "no-check-config" => {
            eprintln!("error: unrecognized subcommand 'check-config'");
            return Ok(ExitCode::from(2));
        }
        _ => {}
    }
    let path = args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("MOLT_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(molt_host::config::DEFAULT_CONFIG));
    molt_host::config::Config::load_optional(&path).map_err(|e| e.to_string())?;
    println!("{} is valid", path.display());
    Ok(ExitCode::SUCCESS)
}

/// Installed as `bin/updater` (a stand-in new updater for the self-update tests).
fn invoked_as_updater() -> bool {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n == "updater"))
        .unwrap_or(false)
}

/// As `updater`: `--version` prints `updater <version>`; any other invocation (the
/// re-exec after a self-update) writes its arguments to `MOLT_TEST_REEXEC_MARKER` and
/// exits 0.
fn as_updater(args: &[String]) -> Result<ExitCode, String> {
    if args.first().map(String::as_str) == Some("--version") {
        println!("updater {}", own_version()?);
        return Ok(ExitCode::SUCCESS);
    }
    if let Ok(marker) = std::env::var("MOLT_TEST_REEXEC_MARKER") {
        let reexec = std::env::var("MOLT_UPDATER_REEXEC").unwrap_or_default();
        std::fs::write(
            &marker,
            format!("reexec={reexec} args={}\n", args.join(" ")),
        )
        .map_err(|e| e.to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `<dir of the canonical exe>/../VERSION`, trimmed.
fn own_version() -> Result<Version, String> {
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .map_err(|e| format!("cannot find my own executable: {e}"))?;
    let file = exe
        .parent()
        .and_then(|bin| bin.parent())
        .map(|dir| dir.join("VERSION"))
        .ok_or_else(|| format!("{} has no install directory", exe.display()))?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    text.trim()
        .parse()
        .map_err(|e| format!("{} holds no version: {e}", file.display()))
}

/// The behaviour for this version, from `MOLT_TEST_AGENT_<version>`.
fn behaviour(version: &Version) -> String {
    let key = format!(
        "MOLT_TEST_AGENT_{}",
        version.to_string().replace(['.', '-'], "_")
    );
    std::env::var(key).unwrap_or_else(|_| "ok".into())
}

fn run(version: &Version, behaviour: &str) -> Result<ExitCode, String> {
    let root = std::env::var_os("MOLT_ROOT").ok_or("MOLT_ROOT is not set")?;
    let layout = HostLayout::new(PathBuf::from(root));
    let nonce = std::env::var("MOLT_HEALTH_NONCE").unwrap_or_default();
    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&term))
        .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    eprintln!(
        "test-agent {version}: pid {}, behaviour {behaviour}",
        std::process::id()
    );

    let report = |version: Version, nonce: &str| {
        let health = Health {
            schema: STATE_VERSION,
            version,
            pid: std::process::id(),
            nonce: nonce.to_owned(),
            started_at: jiff::Timestamp::now(),
            status: HealthStatus::Ready,
        };
        state::write_json(&layout.health(), &health).map_err(|e| format!("{e}"))
    };

    match behaviour {
        "ok" | "bad-version-output" | "no-check-config" => {
            // Like molt-agent: a full or read-only disk does not stop it; it keeps trying.
            while let Err(e) = report(version.clone(), &nonce) {
                eprintln!("test-agent {version}: {e}; trying again");
                if sleep_unless(&term, Duration::from_millis(200)) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
        "exit-at-start" => return Ok(ExitCode::from(3)),
        "never-healthy" => {}
        "wrong-version" => report("0.0.0-wrong".parse().map_err(|e| format!("{e}"))?, &nonce)?,
        "wrong-nonce" => report(version.clone(), &format!("not-{nonce}"))?,
        "crash-in-soak" => {
            report(version.clone(), &nonce)?;
            if !sleep_unless(&term, Duration::from_millis(300)) {
                eprintln!("test-agent {version}: crashing");
                return Ok(ExitCode::from(1));
            }
        }
        "slow-start" => {
            if sleep_unless(&term, Duration::from_secs(1)) {
                return Ok(ExitCode::SUCCESS);
            }
            report(version.clone(), &nonce)?;
        }
        "ignore-term" => {
            report(version.clone(), &nonce)?;
            loop {
                // SIGTERM only sets the flag, which nobody reads.
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        other => return Err(format!("unknown behaviour {other:?}")),
    }
    while !sleep_unless(&term, Duration::from_secs(3600)) {}
    eprintln!("test-agent {version}: SIGTERM, exiting");
    Ok(ExitCode::SUCCESS)
}

/// Sleeps for `d` or until SIGTERM; true when SIGTERM came.
fn sleep_unless(term: &AtomicBool, d: Duration) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if term.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(
            Duration::from_millis(10).min(end.saturating_duration_since(Instant::now())),
        );
    }
    term.load(Ordering::Relaxed)
}
