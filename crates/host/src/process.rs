//! Starting programs that must outlive their parent: the updater starts the agent, and
//! the agent starts the updater, each detached from the other; and what procfs says of a
//! process (alive, a zombie, which one).

use std::path::Path;
use std::process::Command;

/// Makes the child the leader of a new session (setsid), detached from the caller's
/// terminal and process group, so it outlives its parent and its parent's signals.
#[cfg(unix)]
#[allow(unsafe_code)]
pub fn detach(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe operations are allowed. It makes one system call, setsid(2)
    // (rustix calls it directly), takes no lock and allocates nothing: converting an
    // `Errno` into an `io::Error` stores the raw code without allocating.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
}

/// What `/proc/<pid>/stat` says about a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
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
pub fn parse_proc_stat(text: &str) -> Option<ProcStat> {
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
pub fn have_procfs() -> bool {
    Path::new("/proc/self/stat").is_file()
}

/// `/proc/<pid>/stat`, or `None` when the process does not exist (or procfs is missing).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&text)
}

/// True when a process (not our own unreaped child) is alive and not a zombie; with
/// `start_time`, only if it is still the process that started then. Without procfs,
/// falls back to `kill(pid, 0)`, which cannot see zombies.
pub fn alive_non_child(pid: u32, start_time: Option<u64>) -> bool {
    if have_procfs() {
        match proc_stat(pid) {
            Some(st) => st.is_running() && start_time.is_none_or(|t| t == st.start_time),
            None => false,
        }
    } else {
        i32::try_from(pid)
            .ok()
            .filter(|p| *p > 0)
            .and_then(rustix::process::Pid::from_raw)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
    }
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
}
