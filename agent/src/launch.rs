//! Launching the updater (SPEC §7): `<root>/bin/updater`, else `current/bin/updater`.
//!
//! - Under systemd, an agent that runs as its own user (the units of `agent/deploy/`) writes
//!   a request into `agent/requests/`, and root's `molt-update.service` runs the updater
//!   ([`molt_host::request`]). An agent that runs as root (an older unit) runs it through
//!   `systemd-run --unit molt-update-<id> --collect`, in a transient unit. Either way the
//!   update runs outside the agent's cgroup, so stopping the agent's unit never kills the
//!   update that is stopping it.
//! - In direct mode it runs detached (setsid), with its output appended to
//!   `agent/updater.log`. It never inherits the agent's stdout or stderr.
//!
//! Every launch is recorded in `agent/last-launch.json`, including a launch that failed. The
//! updater gets the launch's id in `MOLT_LAUNCH_ID` and writes how it ended under that id to
//! `state/last-run.json`, which is how the agent learns a result it cannot wait for.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use jiff::Timestamp;
use molt_host::config::ServiceKind;
use molt_host::state::{self, STATE_VERSION};
use serde::{Deserialize, Serialize};

use crate::settings::AgentSettings;

/// What the agent launched the updater for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LaunchKind {
    /// A scheduled update: `updater --target-version latest`.
    Update,
    /// `updater recover`, for an update the journal shows unfinished.
    Recover,
}

/// One launch, as recorded in `agent/last-launch.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Launch {
    pub version: u32,
    pub id: String,
    pub kind: LaunchKind,
    pub at: Timestamp,
    /// Why the schedule fired (scheduled, missed, boot), for updates.
    pub reason: Option<String>,
    pub program: Option<PathBuf>,
    pub args: Vec<String>,
    /// The transient unit (systemd) or the pid (direct).
    pub unit: Option<String>,
    pub pid: Option<u32>,
    /// Set when the launch itself failed.
    pub error: Option<String>,
}

/// The updater to run: the first that runs of `<root>/bin/updater`, `bin/updater.previous`
/// and the current version's (an empty, truncated, non-executable or failing `bin/updater`
/// is passed over with a warning; the updater that runs repairs it).
pub fn updater_program(settings: &AgentSettings) -> Option<PathBuf> {
    let (program, passed_over) = settings.layout.runnable_updater();
    for why in passed_over {
        tracing::warn!("not launching {why}; trying the next updater");
    }
    program
}

fn launch_id(now: Timestamp) -> String {
    format!(
        "{}-{}",
        now.strftime("%Y%m%dT%H%M%SZ"),
        &molt_host::random_token()[..6]
    )
}

/// The environment the updater needs: the root and the config the agent runs with, and
/// the launch id, under which the updater records its result (`state/last-run.json`).
fn updater_env(settings: &AgentSettings, id: &str) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "MOLT_ROOT".to_owned(),
            settings.layout.root().display().to_string(),
        ),
        (molt_host::attempt::LAUNCH_ID_ENV.to_owned(), id.to_owned()),
    ];
    if settings.config_exists {
        env.push((
            "MOLT_CONFIG".to_owned(),
            settings.config_path.display().to_string(),
        ));
    }
    env
}

/// Launches the updater and records the launch. Never fails: a failure to launch is
/// logged and recorded, and the agent keeps serving.
pub fn launch(settings: &AgentSettings, kind: LaunchKind, reason: Option<String>) -> Launch {
    let at = Timestamp::now();
    let id = launch_id(at);
    let args: Vec<String> = match kind {
        LaunchKind::Update => vec!["--target-version".into(), "latest".into()],
        LaunchKind::Recover => vec!["recover".into()],
    };
    let mut record = Launch {
        version: STATE_VERSION,
        id: id.clone(),
        kind,
        at,
        reason,
        program: updater_program(settings),
        args: args.clone(),
        unit: None,
        pid: None,
        error: None,
    };
    let result = match &record.program {
        None => Err(format!(
            "no updater to launch: none of {}, {} and {} runs; reinstall with the install script",
            settings.layout.updater_bin().display(),
            settings.layout.updater_previous().display(),
            settings.layout.current_link().join("bin/updater").display()
        )),
        Some(program) => match settings.service {
            // An unprivileged agent cannot start a unit: it asks root's molt-update.service
            // through molt-update.path (docs/architecture.md).
            ServiceKind::Systemd if !rustix::process::geteuid().is_root() => {
                let request_kind = match kind {
                    LaunchKind::Update => molt_host::request::RequestKind::Update,
                    LaunchKind::Recover => molt_host::request::RequestKind::Recover,
                };
                molt_host::request::submit(&settings.layout, &id, request_kind)
                    .map(|path| {
                        record.unit =
                            Some(format!("molt-update.service (request {})", path.display()));
                    })
                    .map_err(|e| {
                        format!("cannot ask for a run: {}", molt_schema::cli::one_line(&e))
                    })
            }
            ServiceKind::Systemd => {
                let unit = format!("molt-update-{id}");
                systemd_run(settings, &unit, &id, program, &args).map(|()| {
                    record.unit = Some(unit);
                })
            }
            ServiceKind::Direct => spawn_detached(settings, &id, program, &args).map(|pid| {
                record.pid = Some(pid);
            }),
        },
    };
    match result {
        Ok(()) => tracing::info!(
            "launched `updater {}` ({})",
            args.join(" "),
            record
                .unit
                .clone()
                .or(record.pid.map(|p| format!("pid {p}")))
                .unwrap_or_default()
        ),
        Err(e) => {
            tracing::error!("cannot launch the updater: {e}");
            record.error = Some(e);
        }
    }
    if let Err(e) = state::write_json(&settings.last_launch(), &record) {
        tracing::warn!("cannot record the launch: {e}");
    }
    record
}

/// `systemd-run --unit <unit> --collect`: a transient service outside the agent's cgroup.
fn systemd_run(
    settings: &AgentSettings,
    unit: &str,
    id: &str,
    program: &std::path::Path,
    args: &[String],
) -> Result<(), String> {
    let mut cmd = Command::new("systemd-run");
    cmd.arg(format!("--unit={unit}"))
        .arg("--collect")
        .arg("--quiet")
        .arg("--description=molt update");
    for (k, v) in updater_env(settings, id) {
        cmd.arg(format!("--setenv={k}={v}"));
    }
    cmd.arg("--").arg(program).args(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run systemd-run: {e}"))?;
    let out = wait_output(child, Duration::from_secs(30))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "systemd-run --unit={unit} failed ({}): {}",
            out.status,
            stderr.trim()
        ))
    }
}

/// Waits for a short-lived helper, killing it after `limit`.
fn wait_output(
    mut child: std::process::Child,
    limit: Duration,
) -> Result<std::process::Output, String> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => {
                return child
                    .wait_with_output()
                    .map_err(|e| format!("cannot read systemd-run's output: {e}"));
            }
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "systemd-run did not finish within {} s",
                    limit.as_secs()
                ));
            }
            Err(e) => return Err(format!("cannot wait for systemd-run: {e}")),
        }
    }
}

/// Direct mode: a new session, stdin from /dev/null, output appended to
/// `agent/updater.log`. A thread reaps the child so it never lingers as a zombie.
fn spawn_detached(
    settings: &AgentSettings,
    id: &str,
    program: &std::path::Path,
    args: &[String],
) -> Result<u32, String> {
    let log_path = settings.updater_log();
    molt_host::state::rotate_log(&log_path, molt_host::state::LOG_ROTATE_BYTES);
    let log = molt_host::state::open_append(&log_path, false)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let log2 = log
        .try_clone()
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(updater_env(settings, id))
        .env_remove("MOLT_HEALTH_NONCE")
        // Set only on an updater that re-exec'd itself after a self-update; one this agent
        // inherited must not stop every later updater from self-updating.
        .env_remove("MOLT_UPDATER_REEXEC")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    molt_host::process::detach(&mut cmd);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    let pid = child.id();
    std::thread::spawn(move || match child.wait() {
        Ok(status) => tracing::info!("the updater (pid {pid}) finished: {status}"),
        Err(e) => tracing::warn!("cannot wait for the updater (pid {pid}): {e}"),
    });
    Ok(pid)
}
