//! Starting programs that must outlive their parent: the updater starts the agent, and
//! the agent starts the updater, each detached from the other.

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
