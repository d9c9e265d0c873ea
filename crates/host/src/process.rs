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

/// What a bounded run printed ([`run_bounded`]).
#[derive(Debug)]
pub struct Bounded {
    pub status: std::process::ExitStatus,
    /// The first [`KEPT_OUTPUT`] bytes of stdout, lossily decoded.
    pub stdout: String,
    /// The last [`KEPT_OUTPUT`] bytes of stderr, where a failing program's `error:` and
    /// `hint:` lines are (after any log lines).
    pub stderr: String,
}

/// How much of each output [`run_bounded`] keeps.
pub const KEPT_OUTPUT: usize = 4096;

/// Why a bounded run did not finish.
#[derive(Debug, thiserror::Error)]
pub enum BoundedError {
    #[error("`{command}` could not run")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {limit:?} and was killed")]
    Hung {
        command: String,
        limit: std::time::Duration,
    },
}

/// Runs `cmd` with no input and at most `limit` of time, killing it (SIGKILL) when the limit
/// passes: no child of molt (a binary's `--version` or `check-config`, a `systemctl` call) may
/// hold the update lock for ever. Both outputs are drained as the program writes (one that
/// writes more than a pipe holds would block until the limit otherwise), and the first
/// [`KEPT_OUTPUT`] bytes of each are kept.
pub fn run_bounded(cmd: &mut Command, limit: std::time::Duration) -> Result<Bounded, BoundedError> {
    use std::process::Stdio;
    let command = {
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "))
            .trim_end()
            .to_owned()
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| BoundedError::Spawn {
            command: command.clone(),
            source,
        })?;
    fn drain(
        pipe: Option<impl std::io::Read + Send + 'static>,
        tail: bool,
    ) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            if let Some(mut p) = pipe {
                let mut buf = [0u8; 8192];
                while let Ok(n) = p.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if tail {
                        kept.extend_from_slice(&buf[..n]);
                        if kept.len() > 2 * KEPT_OUTPUT {
                            kept.drain(..kept.len() - KEPT_OUTPUT);
                        }
                    } else {
                        let room = KEPT_OUTPUT.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
            if kept.len() > KEPT_OUTPUT {
                kept.drain(..kept.len() - KEPT_OUTPUT);
            }
            String::from_utf8_lossy(&kept).into_owned()
        })
    }
    let stdout = drain(child.stdout.take(), false);
    let stderr = drain(child.stderr.take(), true);
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < limit => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BoundedError::Hung { command, limit });
            }
            Err(source) => return Err(BoundedError::Spawn { command, source }),
        }
    };
    // A grandchild that kept the pipes open must not hold the caller: the output so far is
    // what there is once the program itself has exited.
    let join = |h: std::thread::JoinHandle<String>| {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while !h.is_finished() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if h.is_finished() {
            h.join().unwrap_or_default()
        } else {
            String::new()
        }
    };
    Ok(Bounded {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

/// Whether `program` is an updater that runs: a regular, executable, non-empty file whose
/// `--version` prints `updater <version>` within 10 s. The reason when it is not (missing,
/// empty, truncated, not executable, hung, another program).
pub fn runs_as_updater(program: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(program).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() == 0 {
        return Err("empty".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("not executable".into());
    }
    let ran = run_bounded(
        Command::new(program).arg("--version"),
        std::time::Duration::from_secs(10),
    )
    .map_err(|e| e.to_string())?;
    let printed = ran.stdout.trim();
    let ok = ran.status.success()
        && printed
            .strip_prefix("updater ")
            .is_some_and(|v| v.parse::<molt_schema::Version>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`--version` exited with {} and printed {:?}",
            ran.status,
            printed.chars().take(200).collect::<String>()
        ))
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
    fn bounded_runs_end_and_keep_what_was_printed() {
        use std::time::{Duration, Instant};
        let started = Instant::now();
        let e = run_bounded(
            Command::new("sh").args(["-c", "echo started; exec sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(e, BoundedError::Hung { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "`sh -c echo started; exec sleep 30` did not finish within 300ms and was killed"
        );

        // more than a pipe holds, on both outputs: drained, the first 4 KiB kept
        let ran = run_bounded(
            Command::new("sh").args([
                "-c",
                "head -c 200000 /dev/zero | tr '\\0' a; head -c 200000 /dev/zero >&2; echo error: the end >&2; exit 3",
            ]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(ran.status.code(), Some(3));
        assert_eq!(ran.stdout, "a".repeat(KEPT_OUTPUT));
        assert_eq!(ran.stderr.len(), KEPT_OUTPUT);
        assert!(
            ran.stderr.ends_with("error: the end\n"),
            "the tail of stderr is kept"
        );

        // a grandchild that keeps the pipes open does not hold the caller
        let started = Instant::now();
        let ran = run_bounded(
            Command::new("sh").args(["-c", "echo hi; sleep 30 & exit 0"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(ran.status.success());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        let e = run_bounded(
            &mut Command::new("/nonexistent/agent"),
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(e, BoundedError::Spawn { .. }), "{e:?}");
    }

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
