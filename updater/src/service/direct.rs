//! Direct mode: the updater runs the agent itself (containers, hosts without systemd,
//! tests). The agent's pid is kept in `state/agent.pid`; the agent runs detached in its
//! own session, with stdin from /dev/null and its output appended to `state/agent.log`,
//! so it outlives the updater and holds none of the updater's descriptors.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use molt_host::HostLayout;
use molt_host::state;
use rustix::process::Signal;

use super::{
    NONCE_ENV, ROOT_ENV, ServiceError, ServiceManager, alive_non_child, have_procfs, proc_stat,
    to_pid,
};

/// How long to wait for the agent to disappear after SIGKILL before giving up.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often to look whether a signalled agent has exited.
const EXIT_POLL: Duration = Duration::from_millis(10);

/// Runs the agent as a detached process tracked by a pid file.
#[derive(Debug)]
pub struct DirectService {
    layout: HostLayout,
    grace: Duration,
    env: Vec<(OsString, OsString)>,
    /// The agent this service started, kept so it can be reaped and its exit seen.
    child: Option<Child>,
    last_exit: Option<ExitStatus>,
}

/// What the process a pid file names turns out to be.
#[derive(Debug, PartialEq, Eq)]
enum Identity {
    /// No such process, or a zombie: it has exited.
    Gone,
    /// An agent program under this root (its start time, when procfs tells it).
    Agent { start_time: Option<u64> },
    /// Some other program: the pid was reused. Never signal it.
    Other(String),
}

/// A process to stop.
#[derive(Debug)]
struct Target {
    pid: u32,
    /// Our own child: its pid cannot be reused before we reap it.
    own_child: bool,
    start_time: Option<u64>,
    /// A pidfd, so that a signal cannot reach another process that reused the pid.
    #[cfg(target_os = "linux")]
    pidfd: Option<rustix::fd::OwnedFd>,
}

impl DirectService {
    /// A direct-mode service for the install at `layout`; `stop` waits `grace` after
    /// SIGTERM before it sends SIGKILL.
    pub fn new(layout: HostLayout, grace: Duration) -> DirectService {
        DirectService {
            layout,
            grace,
            env: Vec::new(),
            child: None,
            last_exit: None,
        }
    }

    /// Adds environment variables for the agents this service starts (on top of the
    /// updater's own environment; `MOLT_ROOT` and `MOLT_HEALTH_NONCE` always win).
    pub fn with_env<K, V>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env
            .extend(vars.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    pub fn layout(&self) -> &HostLayout {
        &self.layout
    }

    /// The pid file's pid: `None` when there is no pid file.
    fn read_pid_file(&self) -> Result<Option<u32>, ServiceError> {
        let path = self.layout.agent_pid();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ServiceError::ReadPidFile { path, source }),
        };
        match text.trim().parse::<u32>() {
            Ok(pid) => Ok(Some(pid)),
            Err(_) => Err(ServiceError::CorruptPidFile {
                path,
                content: text.chars().take(64).collect(),
            }),
        }
    }

    /// Our child's pid while it runs. Reaps it (and keeps its exit status) once it has
    /// exited.
    fn running_child(&mut self) -> Option<u32> {
        let child = self.child.as_mut()?;
        let pid = child.id();
        match child.try_wait() {
            Ok(None) => return Some(pid),
            Ok(Some(status)) => self.last_exit = Some(status),
            // Reaped elsewhere (SIGCHLD ignored?): fall back to procfs.
            Err(_) if alive_non_child(pid, None) => return Some(pid),
            Err(_) => {}
        }
        self.child = None;
        None
    }

    /// Whether `pid` is an agent under this root. The pid file may be stale and its pid
    /// reused by any process; only an agent program under this root counts.
    fn identify(&self, pid: u32) -> Identity {
        if to_pid(pid).is_none() {
            return Identity::Other(format!("pid {pid} is never an agent"));
        }
        if !have_procfs() {
            // Nothing to check against (macOS): trust the pid file while the pid lives.
            return if alive_non_child(pid, None) {
                Identity::Agent { start_time: None }
            } else {
                Identity::Gone
            };
        }
        let Some(stat) = proc_stat(pid) else {
            return Identity::Gone;
        };
        if !stat.is_running() {
            return Identity::Gone;
        }
        let program = match std::fs::read_link(format!("/proc/{pid}/exe")) {
            Ok(exe) => strip_deleted(exe),
            // Not ours to inspect, or exiting: its argv[0] says how it was started.
            Err(_) => match std::fs::read(format!("/proc/{pid}/cmdline")) {
                Ok(cmdline) => {
                    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
                    PathBuf::from(String::from_utf8_lossy(argv0).into_owned())
                }
                Err(_) => return Identity::Gone,
            },
        };
        if self.is_agent_program(&program) {
            Identity::Agent {
                start_time: Some(stat.start_time),
            }
        } else {
            Identity::Other(program.display().to_string())
        }
    }

    /// Pids of running processes (other than `known`) whose program is an agent under
    /// this root, found by a scan of /proc (empty without procfs).
    fn untracked_agents(&self, known: &[u32]) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
            .filter(|pid| !known.contains(pid) && *pid != std::process::id())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/exe"))
                    .map(strip_deleted)
                    .is_ok_and(|exe| self.is_agent_program(&exe))
            })
            .collect()
    }

    /// `<root>/.../agent`, by the root as given or as resolved.
    fn is_agent_program(&self, program: &Path) -> bool {
        let root = self.layout.root();
        let roots = [
            std::path::absolute(root).ok(),
            std::fs::canonicalize(root).ok(),
        ];
        program.file_name().is_some_and(|n| n == "agent")
            && roots.iter().flatten().any(|r| program.starts_with(r))
    }

    fn target(&self, pid: u32, own_child: bool, start_time: Option<u64>) -> Target {
        #[cfg(target_os = "linux")]
        let pidfd = if own_child {
            None
        } else {
            to_pid(pid)
                .and_then(|p| {
                    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
                })
                // Opened after the check: make sure the pid still names that process.
                .filter(|_| alive_non_child(pid, start_time))
        };
        Target {
            pid,
            own_child,
            start_time,
            #[cfg(target_os = "linux")]
            pidfd,
        }
    }

    /// Sends `signal`. A process that is already gone is fine.
    fn send(&self, t: &Target, signal: Signal, name: &'static str) -> Result<(), ServiceError> {
        let result = {
            #[cfg(target_os = "linux")]
            {
                match &t.pidfd {
                    Some(fd) => rustix::process::pidfd_send_signal(fd, signal),
                    None => self.kill(t, signal),
                }
            }
            #[cfg(not(target_os = "linux"))]
            {
                self.kill(t, signal)
            }
        };
        match result {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(ServiceError::Signal {
                pid: t.pid,
                signal: name,
                source: e.into(),
            }),
        }
    }

    /// `kill(2)`: safe for our own unreaped child; for another process, only right after
    /// checking that the pid still names the process we identified.
    fn kill(&self, t: &Target, signal: Signal) -> rustix::io::Result<()> {
        if !t.own_child && !alive_non_child(t.pid, t.start_time) {
            return Err(rustix::io::Errno::SRCH);
        }
        match to_pid(t.pid) {
            Some(pid) => rustix::process::kill_process(pid, signal),
            None => Err(rustix::io::Errno::SRCH),
        }
    }

    fn target_alive(&mut self, t: &Target) -> bool {
        if t.own_child {
            self.running_child().is_some()
        } else {
            alive_non_child(t.pid, t.start_time)
        }
    }

    /// Polls until `t` has exited (true) or `deadline` passes (false).
    fn wait_gone(&mut self, t: &Target, deadline: Instant) -> bool {
        loop {
            if !self.target_alive(t) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(EXIT_POLL);
        }
    }

    /// SIGTERM, up to `grace` for it to exit, then SIGKILL.
    fn terminate(&mut self, t: &Target) -> Result<(), ServiceError> {
        tracing::debug!(pid = t.pid, "stopping the agent (SIGTERM)");
        self.send(t, Signal::TERM, "SIGTERM")?;
        if self.wait_gone(t, Instant::now() + self.grace) {
            return Ok(());
        }
        tracing::warn!(
            pid = t.pid,
            grace = ?self.grace,
            "the agent did not exit after SIGTERM; sending SIGKILL"
        );
        self.send(t, Signal::KILL, "SIGKILL")?;
        if self.wait_gone(t, Instant::now() + KILL_WAIT) {
            Ok(())
        } else {
            Err(ServiceError::StillRunning {
                pid: t.pid,
                waited: KILL_WAIT,
            })
        }
    }
}

/// `/proc/<pid>/exe` of a program whose file was replaced or removed ends in " (deleted)".
fn strip_deleted(exe: PathBuf) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    match exe.as_os_str().as_bytes().strip_suffix(b" (deleted)") {
        Some(b) => PathBuf::from(std::ffi::OsStr::from_bytes(b)),
        None => exe,
    }
}

impl ServiceManager for DirectService {
    fn stop(&mut self) -> Result<(), ServiceError> {
        let mut targets = Vec::new();
        if let Some(pid) = self.running_child() {
            targets.push(self.target(pid, true, None));
        }
        let from_file = self.read_pid_file()?;
        match from_file.filter(|pid| !targets.iter().any(|t| t.pid == *pid)) {
            None => {}
            Some(pid) => match self.identify(pid) {
                Identity::Agent { start_time } => targets.push(self.target(pid, false, start_time)),
                Identity::Gone => {
                    tracing::debug!(pid, "the agent's pid file is stale: no such process")
                }
                Identity::Other(program) => tracing::warn!(
                    pid,
                    %program,
                    "the agent's pid file names a process that is not an agent under {}; \
                     leaving it alone",
                    self.layout.root().display()
                ),
            },
        }
        // An updater killed between starting an agent and writing the pid file leaves an
        // agent nobody tracks: stop every agent program under this root, not only the
        // recorded one, so two agents never run side by side.
        for pid in self.untracked_agents(&targets.iter().map(|t| t.pid).collect::<Vec<_>>()) {
            if let Identity::Agent { start_time } = self.identify(pid) {
                tracing::warn!(
                    pid,
                    "stopping an agent under {} that no pid file recorded",
                    self.layout.root().display()
                );
                targets.push(self.target(pid, false, start_time));
            }
        }
        for t in &targets {
            self.terminate(t)?;
        }
        state::remove(&self.layout.agent_pid()).map_err(ServiceError::RemovePidFile)
    }

    fn start(&mut self, nonce: &str) -> Result<u32, ServiceError> {
        if let Some(pid) = self.main_pid()? {
            return Err(ServiceError::AlreadyRunning {
                root: self.layout.root().to_owned(),
                pid,
            });
        }
        // The agent runs from "/", so it gets absolute paths.
        let root = std::path::absolute(self.layout.root())
            .unwrap_or_else(|_| self.layout.root().to_owned());
        let layout = HostLayout::new(&root);
        let program = layout.current_agent();
        let log_path = layout.agent_log();
        let open_log = || {
            std::fs::create_dir_all(layout.state_dir())?;
            molt_host::state::rotate_log(&log_path, molt_host::state::LOG_ROTATE_BYTES);
            let out = molt_host::state::open_append(&log_path, false)?;
            let err = out.try_clone()?;
            Ok::<_, std::io::Error>((out, err))
        };
        // A full or read-only disk must not keep an agent from running: without its log
        // file, its output is dropped (and said so here, on the updater's stderr).
        let (out, err): (Stdio, Stdio) = match open_log() {
            Ok((out, err)) => (out.into(), err.into()),
            Err(source) => {
                tracing::warn!(
                    "{}; the agent's output is discarded",
                    molt_schema::cli::one_line(&ServiceError::OpenLog {
                        path: log_path.clone(),
                        source,
                    })
                );
                (Stdio::null(), Stdio::null())
            }
        };

        let mut cmd = Command::new(&program);
        cmd.arg("run")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(ROOT_ENV, &root)
            .env(NONCE_ENV, nonce)
            // A re-exec'd updater (self-update) carries this; the agent must not pass it on
            // to the updaters it launches, or they would never self-update again.
            .env_remove(crate::self_update::REEXEC_ENV)
            // the agent gives each updater it launches an id of its own
            .env_remove(molt_host::attempt::LAUNCH_ID_ENV)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .current_dir("/");
        molt_host::process::detach(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|source| ServiceError::Spawn { program, source })?;
        let pid = child.id();
        tracing::info!(pid, log = %log_path.display(), "started the agent");
        self.child = Some(child);
        self.last_exit = None;

        if let Err(e) = state::write_atomic(&self.layout.agent_pid(), format!("{pid}\n").as_bytes())
        {
            // A full or read-only disk: the agent runs anyway (a host without an agent is
            // worse than one without a pid file). The next updater finds it by its program
            // (`main_pid` and `stop` scan /proc for agents under this root), and a stale pid
            // file is removed so that it names no other process.
            let _ = std::fs::remove_file(self.layout.agent_pid());
            tracing::warn!(
                pid,
                "{}; the agent runs without one",
                molt_schema::cli::one_line(&ServiceError::WritePidFile(e))
            );
        }
        Ok(pid)
    }

    fn main_pid(&mut self) -> Result<Option<u32>, ServiceError> {
        if let Some(pid) = self.running_child() {
            return Ok(Some(pid));
        }
        let recorded = match self.read_pid_file()? {
            Some(pid) => match self.identify(pid) {
                Identity::Agent { .. } => Some(pid),
                Identity::Gone | Identity::Other(_) => None,
            },
            None => None,
        };
        // An agent started while the pid file could not be written (a full disk), or by an
        // updater killed before it wrote it: found by its program.
        if recorded.is_some() {
            return Ok(recorded);
        }
        let found = self
            .untracked_agents(&[])
            .into_iter()
            .filter(|pid| is_service_agent(*pid))
            .find(|pid| matches!(self.identify(*pid), Identity::Agent { .. }));
        if let Some(pid) = found {
            // Record it again, now that the disk may take the write.
            if state::write_atomic(&self.layout.agent_pid(), format!("{pid}\n").as_bytes()).is_ok()
            {
                tracing::info!(pid, "found an agent no pid file named; recorded it");
            }
        }
        Ok(found)
    }

    fn is_alive(&mut self, pid: u32) -> bool {
        if self.child.as_ref().is_some_and(|c| c.id() == pid) {
            return self.running_child().is_some();
        }
        alive_non_child(pid, None)
    }

    fn last_exit(&mut self) -> Option<ExitStatus> {
        self.running_child();
        self.last_exit
    }
}

/// True when `pid` is an agent as this module starts one: `agent run`, leading a session of
/// its own (setsid). An operator's `agent status` or `agent check-config` under the same
/// root is neither, and must never be taken for the service.
fn is_service_agent(pid: u32) -> bool {
    let Some(stat) = proc_stat(pid) else {
        return false;
    };
    let leads_session = i64::from(pid) == stat.session;
    let runs = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.get(1) == Some(&&b"run"[..])
    });
    leads_session && runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_process_is_not_an_agent() {
        let dir = tempfile::tempdir().unwrap();
        let svc = DirectService::new(HostLayout::new(dir.path()), Duration::from_millis(10));
        assert!(matches!(
            svc.identify(std::process::id()),
            Identity::Other(_)
        ));
        assert!(matches!(svc.identify(1), Identity::Other(_)));
    }

    #[test]
    fn agent_programs_are_recognised_under_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let svc = DirectService::new(HostLayout::new(&root), Duration::from_millis(10));
        assert!(svc.is_agent_program(&root.join("versions/1.0.0/bin/agent")));
        assert!(svc.is_agent_program(&root.join("current/bin/agent")));
        assert!(!svc.is_agent_program(&root.join("versions/1.0.0/bin/updater")));
        assert!(!svc.is_agent_program(Path::new("/usr/bin/agent")));
        assert_eq!(
            strip_deleted(PathBuf::from(
                "/opt/molt/versions/1.0.0/bin/agent (deleted)"
            )),
            PathBuf::from("/opt/molt/versions/1.0.0/bin/agent")
        );
    }

    #[test]
    fn stale_and_corrupt_pid_files() {
        let dir = tempfile::tempdir().unwrap();
        let layout = HostLayout::new(dir.path());
        let mut svc = DirectService::new(layout.clone(), Duration::from_millis(10));
        assert_eq!(svc.main_pid().unwrap(), None);
        svc.stop().unwrap();

        // the test process itself: a reused pid that must never be signalled
        state::write_atomic(
            &layout.agent_pid(),
            format!("{}\n", std::process::id()).as_bytes(),
        )
        .unwrap();
        assert_eq!(svc.main_pid().unwrap(), None);
        svc.stop().unwrap();
        assert!(!layout.agent_pid().exists(), "a stale pid file is removed");

        state::write_atomic(&layout.agent_pid(), b"twelve\n").unwrap();
        assert!(matches!(
            svc.main_pid(),
            Err(ServiceError::CorruptPidFile { .. })
        ));
        assert!(matches!(
            svc.stop(),
            Err(ServiceError::CorruptPidFile { .. })
        ));
    }

    #[test]
    fn a_missing_agent_program_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut svc = DirectService::new(HostLayout::new(dir.path()), Duration::from_millis(10));
        match svc.start("n") {
            Err(ServiceError::Spawn { program, .. }) => {
                assert!(program.ends_with("current/bin/agent"), "{program:?}")
            }
            other => panic!("{other:?}"),
        }
    }
}
