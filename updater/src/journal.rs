//! The journal (SPEC §6 step 8): every step of an update is written to
//! `state/journal.json` (temp file, fsync, rename, fsync of the directory) before it is
//! taken, so [`crate::recover`] can finish or undo an update that a crash or a kill
//! interrupted at any instant.

use jiff::Timestamp;
use molt_host::HostLayout;
use molt_host::state::{self, Journal, STATE_VERSION, Step};
use molt_schema::Version;

use crate::error::UpdateError;

/// Test hooks, compiled only with the `test-hooks` feature (the tests crate turns it on;
/// release builds never do), so tests can prove recovery from every step:
/// - `MOLT_TEST_KILL_AT=<checkpoint>`: the updater SIGKILLs itself there;
/// - `MOLT_TEST_FILL_AT=<checkpoint>`: it fills the filesystem of the file
///   `MOLT_TEST_FILL_FILE` names (a real tmpfs in the tests) until writes fail with ENOSPC;
/// - `MOLT_TEST_RO_AT=<checkpoint>`: it remounts `MOLT_TEST_RO_MOUNT` read-only (EROFS);
/// - `MOLT_TEST_STOP_AT=<checkpoint>`: it stops itself (SIGSTOP) there, so that a test can
///   kill it from outside (`systemctl kill`), pull the plug, or let it go on (SIGCONT).
#[cfg(feature = "test-hooks")]
pub fn checkpoint(name: &str) {
    let at = |var: &str| std::env::var(var).is_ok_and(|v| v == name);
    if at("MOLT_TEST_FILL_AT")
        && let Some(file) = std::env::var_os("MOLT_TEST_FILL_FILE")
    {
        fill_disk(std::path::Path::new(&file));
    }
    if at("MOLT_TEST_RO_AT")
        && let Some(mount) = std::env::var_os("MOLT_TEST_RO_MOUNT")
    {
        let status = std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&mount)
            .status();
        eprintln!(
            "test hook: remount {} read-only at {name}: {status:?}",
            mount.to_string_lossy()
        );
    }
    if at("MOLT_TEST_STOP_AT") {
        eprintln!("test hook: stopped at {name}");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::STOP);
    }
    if at("MOLT_TEST_KILL_AT") {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; this line is not reached.
        std::process::abort();
    }
}

/// Appends zeros to `file` until its filesystem refuses even one more byte.
#[cfg(feature = "test-hooks")]
fn fill_disk(file: &std::path::Path) {
    use std::io::Write as _;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
    else {
        eprintln!("test hook: cannot open {}", file.display());
        return;
    };
    for chunk in [1 << 20, 4096, 1] {
        let buf = vec![0u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
    eprintln!("test hook: filled the disk of {}", file.display());
}

/// Without the `test-hooks` feature a checkpoint does nothing.
#[cfg(not(feature = "test-hooks"))]
pub fn checkpoint(_name: &str) {}

/// A step's name, as the checkpoints call it.
fn step_name(step: Step) -> &'static str {
    match step {
        Step::Started => "started",
        Step::Installed => "installed",
        Step::Stopping => "stopping",
        Step::Switching => "switching",
        Step::Switched => "switched",
        Step::Committed => "committed",
        Step::RollingBack => "rolling_back",
        Step::RolledBack => "rolled_back",
        Step::Unknown => "unknown",
    }
}

/// Writes each step to the journal before it is taken.
pub(crate) struct JournalWriter<'a> {
    pub layout: &'a HostLayout,
    pub journal: Journal,
}

impl<'a> JournalWriter<'a> {
    /// A new update from `from` to `to`, with a fresh id; nothing is written yet.
    pub(crate) fn begin(
        layout: &'a HostLayout,
        from: Option<Version>,
        to: Version,
    ) -> JournalWriter<'a> {
        let now = Timestamp::now();
        JournalWriter {
            layout,
            journal: Journal {
                version: STATE_VERSION,
                id: format!(
                    "{}-{}",
                    now.strftime("%Y%m%dT%H%M%SZ"),
                    &molt_host::random_token()[..8]
                ),
                from,
                to,
                step: Step::Started,
                nonce: None,
                started_at: now,
                updated_at: now,
                stopped_at: None,
                reason: None,
                quarantine: None,
            },
        }
    }

    /// Records `step` durably, then passes its checkpoint.
    pub(crate) fn set(&mut self, step: Step) -> Result<(), UpdateError> {
        self.journal.step = step;
        self.journal.updated_at = Timestamp::now();
        state::write_json(&self.layout.journal(), &self.journal).map_err(UpdateError::state)?;
        checkpoint(step_name(step));
        Ok(())
    }
}
