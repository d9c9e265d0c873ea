//! The history record (SPEC §6 step 10): one line of `state/history.jsonl` per update,
//! built here and nowhere else.

use std::time::Duration;

use jiff::Timestamp;
use molt_host::state::{HistoryRecord, Journal, Outcome, STATE_VERSION, Timings};

/// The record of the update `journal` describes, finished now.
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
    }
}

/// Milliseconds, saturating.
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
