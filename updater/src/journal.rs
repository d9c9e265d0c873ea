//! The journal (SPEC §6 step 8): every step of an update is written to
//! `state/journal.json` (temp file, fsync, rename, fsync of the directory) before it is
//! taken, so [`crate::recover`] can finish or undo an update that a crash or a kill
//! interrupted at any instant.

use jiff::Timestamp;
use molt_host::HostLayout;
use molt_host::state::{self, Journal, STATE_VERSION, Step};
use molt_schema::Version;

use crate::error::UpdateError;

/// Test hook, compiled only with the `test-hooks` feature (the tests crate turns it on;
/// release builds never do): `MOLT_TEST_KILL_AT=<checkpoint>` makes the updater SIGKILL
/// itself at that checkpoint, so tests can prove recovery from every step.
#[cfg(feature = "test-hooks")]
pub fn checkpoint(name: &str) {
    if std::env::var("MOLT_TEST_KILL_AT").is_ok_and(|v| v == name) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; this line is not reached.
        std::process::abort();
    }
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
