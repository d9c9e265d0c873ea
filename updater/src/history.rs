//! The history record (SPEC §6 step 10): one line of `state/history.jsonl` per update,
//! built here and nowhere else.

use std::time::Duration;

use crate::error::UpdateError;

use jiff::Timestamp;
use molt_host::HostLayout;
use molt_host::attempt::{FailureClass, RunResult};
use molt_host::state::{self, HistoryRecord, Journal, Outcome, STATE_VERSION, Timings};

/// The record of the update `journal` describes, finished now. Its failure class follows
/// from the outcome (a failure before the switch is [`FailureClass::Failed`] unless the
/// caller sets a closer one).
pub(crate) fn record(
    journal: &Journal,
    result: Outcome,
    reason: impl Into<String>,
    timings: Timings,
) -> HistoryRecord {
    HistoryRecord {
        version: STATE_VERSION,
        id: journal.id.clone(),
        from: journal.from.clone(),
        to: journal.to.clone(),
        result,
        reason: Some(reason.into()),
        started_at: journal.started_at,
        finished_at: Timestamp::now(),
        timings,
        // a rollback that quarantines nothing blamed no health check: a commit that could
        // not be written, or a journal that could not be read
        failure: if result == Outcome::RolledBack && journal.quarantine == Some(false) {
            Some(FailureClass::NotCommitted)
        } else {
            FailureClass::from_outcome(result)
        },
    }
}

/// Records how a run the agent launched (`launch`, its `MOLT_LAUNCH_ID`) ended, in
/// `state/last-run.json`, for the agent's retry rule. Best effort: a run whose result
/// cannot be written is seen by the agent as one that left no result (retried the same),
/// and the run's own outcome, already decided, is never changed by this write.
pub fn record_launched_run(
    layout: &HostLayout,
    launch: String,
    started_at: Timestamp,
    result: Result<(), &UpdateError>,
) {
    let (exit_code, failure, message) = match result {
        Ok(()) => (molt_schema::cli::exit::OK, None, None),
        Err(e) => (
            e.exit_code(),
            Some(e.failure_class()),
            Some(molt_host::attempt::clean_message(
                &molt_schema::cli::one_line(e),
            )),
        ),
    };
    let run = RunResult {
        version: STATE_VERSION,
        launch,
        started_at,
        finished_at: Timestamp::now(),
        exit_code,
        failure,
        message,
    };
    if let Err(e) = state::write_json(&layout.last_run(), &run) {
        tracing::warn!(
            "cannot record this run's result for the agent: {}; it retries as after a run that left none",
            molt_schema::cli::one_line(&e)
        );
    }
}

/// Milliseconds, saturating.
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
