//! Roll back (SPEC §6 step 10): the new version failed, or an update was interrupted after
//! the switch. Put the previous version back, quarantine the failed one when its health
//! check failed, and record the outcome.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use molt_host::state::{self, Outcome, Quarantine, StateError, Step, Timings};
use molt_schema::Version;

use crate::commit::finish;
use crate::error::{UpdateError, Why};
use crate::health::{HealthCheck, HealthFailure, wait_healthy};
use crate::history;
use crate::journal::JournalWriter;
use crate::service::{ServiceError, ServiceManager};
use crate::settings::Settings;
use crate::switch;

/// Puts `from` back after the new version failed; returns the error to exit with (5, or 7
/// when the rollback itself failed).
pub(crate) fn roll_back(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
    jw: &mut JournalWriter<'_>,
    reason: &str,
    quarantine: bool,
    started: Instant,
    download_ms: Option<u64>,
) -> UpdateError {
    let layout = &settings.layout;
    let to = jw.journal.to.clone();
    let from = jw.journal.from.clone();
    jw.journal.reason = Some(reason.to_owned());
    if let Err(e) = jw.set(Step::RollingBack) {
        return e;
    }
    let _ = svc.stop();
    let restored = match from.as_ref().filter(|f| layout.is_valid(f)) {
        None => Err(RestoreError::NoEarlierVersion),
        Some(f) => restore(settings, svc, f),
    };
    if quarantine {
        let mut q = Quarantine::load(&layout.quarantine()).unwrap_or_default();
        q.add(to.clone(), Timestamp::now(), reason.to_owned());
        let _ = state::write_json(&layout.quarantine(), &q);
    }
    let timings = Timings {
        total_ms: history::ms(started.elapsed()),
        download_ms,
        agent_downtime_ms: jw.journal.stopped_at.and_then(|t| {
            Timestamp::now()
                .duration_since(t)
                .as_millis()
                .try_into()
                .ok()
        }),
    };
    match restored {
        Ok(()) => {
            let record = history::record(&jw.journal, Outcome::RolledBack, reason, timings);
            if let Err(e) = jw.set(Step::RolledBack) {
                return e;
            }
            if let Err(e) = finish(layout, &record, from.as_ref(), None) {
                return e;
            }
            let prefix = format!("{to} failed its health check: ");
            let why = reason.strip_prefix(&prefix).unwrap_or(reason).to_owned();
            UpdateError::RolledBack {
                to,
                from,
                reason: Why(why),
            }
        }
        Err(e) => {
            let record = history::record(
                &jw.journal,
                Outcome::RollbackFailed,
                format!(
                    "{reason}; rollback failed: {}",
                    molt_schema::cli::one_line(&e)
                ),
                timings,
            );
            let _ = state::append_history(&layout.history(), &record);
            UpdateError::RollbackFailed {
                to,
                from,
                reason: Box::new(e),
            }
        }
    }
}

/// Why the previous version could not be put back (the source of
/// [`UpdateError::RollbackFailed`], exit 7).
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("there is no earlier version to go back to (first install)")]
    NoEarlierVersion,
    #[error("cannot point current back at {from}")]
    Link {
        from: Version,
        #[source]
        source: StateError,
    },
    #[error("could not start {from}")]
    Start {
        from: Version,
        #[source]
        source: ServiceError,
    },
    #[error("{from} did not come back healthy")]
    Unhealthy {
        from: Version,
        #[source]
        source: Box<HealthFailure>,
    },
}

/// Points `current` back at `from` and starts it; it must report healthy.
pub(crate) fn restore(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
    from: &Version,
) -> Result<(), RestoreError> {
    let layout = &settings.layout;
    switch::point_current(layout, from).map_err(|source| RestoreError::Link {
        from: from.clone(),
        source,
    })?;
    let nonce = molt_host::random_token();
    svc.start(&nonce).map_err(|source| RestoreError::Start {
        from: from.clone(),
        source,
    })?;
    let check = HealthCheck {
        expected_version: from.clone(),
        nonce,
        timeout: settings.health_timeout,
        soak: settings.soak.min(Duration::from_secs(5)),
        poll: Duration::from_millis(50),
    };
    wait_healthy(layout, svc, &check)
        .map(|_| ())
        .map_err(|source| RestoreError::Unhealthy {
            from: from.clone(),
            source: Box::new(source),
        })
}
