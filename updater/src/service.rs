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

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

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

/// What `/proc/<pid>/stat` says about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// The state letter: R, S, D, Z (zombie), X (dead), T, ...
    pub state: char,
    /// The session id.
    pub session: i64,
    /// Start time in clock ticks after boot: with the pid, it names one process.
    pub start_time: u64,
}

impl ProcStat {
    pub fn is_running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses the text of `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may hold spaces and parentheses itself, so the fields after it are counted from
/// the last `)`.
pub(crate) fn parse_proc_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 of proc(5): state; field 6 session; field 22 starttime
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// True when this system has a procfs we can read.
pub(crate) fn have_procfs() -> bool {
    Path::new("/proc/self/stat").is_file()
}

/// `/proc/<pid>/stat`, or `None` when the process does not exist (or procfs is missing).
pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

/// True when a process that is not our child is alive and not a zombie. Without procfs,
/// falls back to `kill(pid, 0)`, which cannot see zombies.
pub(crate) fn alive_non_child(pid: u32, start_time: Option<u64>) -> bool {
    if have_procfs() {
        match proc_stat(pid) {
            Some(st) => st.is_running() && start_time.is_none_or(|t| t == st.start_time),
            None => false,
        }
    } else {
        to_pid(pid).is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
    }
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
    fn parses_proc_stat_with_awkward_command_names() {
        let text =
            "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let st = parse_proc_stat(text).unwrap();
        assert_eq!(
            st,
            ProcStat {
                state: 'S',
                session: 4242,
                start_time: 987654
            }
        );
        assert!(st.is_running());
        let zombie = "7 (agent) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 55 0 0";
        assert!(!parse_proc_stat(zombie).unwrap().is_running());
        assert_eq!(parse_proc_stat("7 (agent) S 1"), None);
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_dead_child_is_not() {
        assert!(alive_non_child(std::process::id(), None));
        let own = proc_stat(std::process::id()).unwrap();
        assert!(alive_non_child(std::process::id(), Some(own.start_time)));
        assert!(
            !alive_non_child(std::process::id(), Some(own.start_time + 1)),
            "another start time means another process"
        );
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!alive_non_child(pid, None));
    }

    #[test]
    fn never_signals_init_or_the_process_group() {
        assert_eq!(to_pid(0), None);
        assert_eq!(to_pid(1), None);
        assert_eq!(to_pid(u32::MAX), None);
        assert_eq!(to_pid(42).map(|p| p.as_raw_pid()), Some(42));
    }
}
