//! The service-manager seam (SPEC §6 "Service control"): how the updater stops the
//! running agent, starts the new one with a health nonce, and finds its main pid.
//!
//! - [`DirectService`]: a pid file, SIGTERM then SIGKILL after a grace period, the agent
//!   started detached in its own session with its output in `state/agent.log`. For
//!   containers and tests.
//! - [`SystemdService`]: `systemctl stop|start <unit>`, the nonce passed through the
//!   manager's environment, the pid from `MainPID`.

mod direct;
mod systemd;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

pub(crate) use molt_host::process::{alive_non_child, have_procfs, proc_stat};
use molt_host::state::StateError;

pub use direct::DirectService;
pub use systemd::SystemdService;

/// The environment variable that carries the health nonce to the agent.
pub const NONCE_ENV: &str = "MOLT_HEALTH_NONCE";
/// The environment variable that tells the agent its install root.
pub const ROOT_ENV: &str = "MOLT_ROOT";

/// Controls the agent's process. One implementation per service manager.
pub trait ServiceManager: std::fmt::Debug {
    /// Stops the running agent, if any, and returns once it has exited.
    fn stop(&mut self) -> Result<(), ServiceError>;
    /// Starts `<root>/current/bin/agent run` with `MOLT_HEALTH_NONCE=<nonce>` (and
    /// `MOLT_ROOT=<root>`); returns the agent's pid.
    fn start(&mut self, nonce: &str) -> Result<u32, ServiceError>;
    /// The agent's main pid now, if one is running.
    fn main_pid(&mut self) -> Result<Option<u32>, ServiceError>;
    /// True when `pid` is alive and not a zombie (own children are reaped).
    fn is_alive(&mut self, pid: u32) -> bool;
    /// How the agent this manager started last has exited, when it has exited and the
    /// manager knows (direct mode knows its own children; systemd does not say here).
    fn last_exit(&mut self) -> Option<ExitStatus> {
        None
    }
    /// The systemd unit the agent runs as, when a service manager runs it as one.
    fn unit_name(&self) -> Option<&str> {
        None
    }
    /// How many times the service manager has restarted the agent on its own (systemd's
    /// `NRestarts`, which counts `Restart=` restarts only), when it keeps count.
    fn restarts(&mut self) -> Option<u64> {
        None
    }
    /// After the agent `pid` went away or was replaced: when the service manager says it
    /// exited cleanly and was started again by someone else (its own restart count is
    /// still `restarts_before`), the new main pid, once that process runs (waiting up to
    /// `within`). `None` for a crash, an agent that stays stopped, or a manager that
    /// cannot tell.
    fn restarted_by_hand(
        &mut self,
        _pid: u32,
        _restarts_before: u64,
        _within: Duration,
    ) -> Option<u32> {
        None
    }
}

/// A failure to control the agent's process. Each variant names what was being done.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot read the agent's pid file {path}")]
    ReadPidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent's pid file {path} holds {content:?}, not a process id")]
    CorruptPidFile { path: PathBuf, content: String },
    #[error("cannot write the agent's pid file")]
    WritePidFile(#[source] StateError),
    #[error("cannot remove the agent's pid file")]
    RemovePidFile(#[source] StateError),
    #[error("cannot open the agent's log {path}")]
    OpenLog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the agent {program}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("an agent is already running under {root} (pid {pid}); stop it first")]
    AlreadyRunning { root: PathBuf, pid: u32 },
    #[error("cannot send {signal} to the agent (pid {pid})")]
    Signal {
        pid: u32,
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent (pid {pid}) is still running {waited:?} after SIGKILL")]
    StillRunning { pid: u32, waited: Duration },
    #[error("cannot run `{command}`")]
    RunCommand {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("`{command}` printed {output:?}, not a process id")]
    BadMainPid { command: String, output: String },
    #[error("`{command}` succeeded but {unit} has no main process: the agent exited at once")]
    NoMainPid { command: String, unit: String },
}

/// A rustix `Pid` for a pid that may be signalled: never 0 (our process group) or 1
/// (init), never a value that does not fit.
pub(crate) fn to_pid(pid: u32) -> Option<rustix::process::Pid> {
    if pid <= 1 {
        return None;
    }
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_signals_init_or_the_process_group() {
        assert_eq!(to_pid(0), None);
        assert_eq!(to_pid(1), None);
        assert_eq!(to_pid(u32::MAX), None);
        assert_eq!(to_pid(42).map(|p| p.as_raw_pid()), Some(42));
    }
}
