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
///
/// A rollback never depends on a journal or history write: on a full or read-only disk it
/// still puts the old agent back, and whatever it could not record, the journal's last
/// durable step makes the next `updater recover` finish. When no agent can be brought back
/// to health, an agent from a `.valid` version is left running all the same.
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
    jw.journal.quarantine = Some(quarantine);
    if let Err(e) = jw.set(Step::RollingBack) {
        warn_unrecorded(&e, "the rollback's start");
    }
    let _ = svc.stop();
    // The agent is down from the old agent's stop until the restored one reports ready
    // (the restored agent's soak runs while it already serves).
    let restore_began = Timestamp::now();
    let restored = match from.as_ref().filter(|f| layout.is_valid(f)) {
        None => Err(RestoreError::NoEarlierVersion),
        Some(f) => restore(settings, svc, f),
    };
    if quarantine {
        let mut q = Quarantine::load(&layout.quarantine()).unwrap_or_default();
        q.add(to.clone(), Timestamp::now(), reason.to_owned());
        if let Err(e) = state::write_json(&layout.quarantine(), &q) {
            warn_unrecorded(
                &UpdateError::state(e),
                "the quarantine of the failed version",
            );
        }
    }
    let since_stop = |until: Timestamp| {
        jw.journal
            .stopped_at
            .and_then(|t| until.duration_since(t).as_millis().try_into().ok())
    };
    let agent_downtime_ms = match &restored {
        Ok(ready_after) => {
            since_stop(restore_began).map(|ms: u64| ms.saturating_add(history::ms(*ready_after)))
        }
        Err(_) => since_stop(Timestamp::now()),
    };
    let timings = Timings {
        total_ms: history::ms(started.elapsed()),
        download_ms,
        agent_downtime_ms,
    };
    match restored {
        Ok(_) => {
            let record = history::record(&jw.journal, Outcome::RolledBack, reason, timings);
            if let Err(e) = jw.set(Step::RolledBack) {
                warn_unrecorded(&e, "the rollback's end");
            }
            if let Err(e) = finish(layout, &record, from.as_ref(), None) {
                warn_unrecorded(&e, "the rollback's history record");
            }
            let prefix = format!("{to} failed its health check: ");
            let why = reason.strip_prefix(&prefix).unwrap_or(reason).to_owned();
            UpdateError::RolledBack {
                to,
                from,
                reason: Why(why),
            }
        }
        Err(e) => failed(settings, svc, jw, reason, e, timings),
    }
}

/// No agent could be put back to health: leave one running all the same, record the
/// failure if the disk lets us, and return exit 7's error. The journal stays, so that
/// every later `updater recover` tries the rollback again.
pub(crate) fn failed(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
    jw: &JournalWriter<'_>,
    reason: &str,
    e: RestoreError,
    timings: Timings,
) -> UpdateError {
    ensure_agent_runs(settings, svc);
    let record = history::record(
        &jw.journal,
        Outcome::RollbackFailed,
        format!(
            "{reason}; rollback failed: {}",
            molt_schema::cli::one_line(&e)
        ),
        timings,
    );
    if let Err(e) = state::append_history(&settings.layout.history(), &record) {
        warn_unrecorded(
            &UpdateError::state(e),
            "the failed rollback's history record",
        );
    }
    UpdateError::RollbackFailed {
        to: jw.journal.to.clone(),
        from: jw.journal.from.clone(),
        reason: Box::new(e),
    }
}

/// A write a rollback goes on without (a full or read-only disk): say so.
fn warn_unrecorded(e: &UpdateError, what: &str) {
    tracing::warn!(
        "{}; {what} is not recorded, and `updater recover` completes it once the disk takes writes",
        molt_schema::cli::one_line(e)
    );
}

/// The last resort, when no agent could be brought back to health: make sure an agent
/// process from a `.valid` version runs, even one whose health nobody can confirm yet (a
/// full disk keeps it from writing its health file). `current` is used when it names a
/// valid version; otherwise it is pointed, if it can be, at the version
/// [`repair_target`] picks. Never stops anything.
pub(crate) fn ensure_agent_runs(settings: &Settings, svc: &mut dyn ServiceManager) -> bool {
    let layout = &settings.layout;
    let running = svc
        .main_pid()
        .ok()
        .flatten()
        .filter(|pid| svc.is_alive(*pid));
    if layout.current_version().is_none() {
        if layout.installed_versions().is_empty()
            && layout.current_link().symlink_metadata().is_err()
        {
            // A host before its first install: nothing to run, nothing to say.
            return false;
        }
        // An agent that runs keeps running; `current` is pointed at the version its program
        // is from (`/proc/<pid>/exe`, not what the agent itself writes), when that is
        // installed, so that the next start starts the same.
        let reported = running
            .and_then(|pid| program_version(layout, pid))
            .filter(|v| layout.is_valid(v));
        let Some(v) = reported.or_else(|| repair_target(layout)) else {
            tracing::error!(
                "no installed version under {} is valid: no agent can be started",
                layout.versions_dir().display()
            );
            return false;
        };
        if let Err(e) = switch::point_current(layout, &v) {
            tracing::error!(
                "{}: no agent can be started",
                molt_schema::cli::one_line(&e)
            );
            return false;
        }
        tracing::warn!("current named no valid version; pointed it at {v}");
    }
    if running.is_some() {
        return false;
    }
    match svc.start(&molt_host::random_token()) {
        Ok(pid) => {
            tracing::info!(
                pid,
                "started an agent so that the host is not left without one"
            );
            true
        }
        Err(e) => {
            tracing::error!("{}", molt_schema::cli::one_line(&e));
            false
        }
    }
}

/// The version whose `bin/agent` process `pid` runs: `<root>/versions/<v>/bin/agent`.
fn program_version(layout: &molt_host::HostLayout, pid: u32) -> Option<Version> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let versions = layout.versions_dir().canonicalize().ok()?;
    let rel = exe.strip_prefix(&versions).ok()?;
    let mut parts = rel.components();
    let v: Version = parts.next()?.as_os_str().to_str()?.parse().ok()?;
    let rest: Vec<_> = parts.map(|c| c.as_os_str().to_string_lossy()).collect();
    (rest == ["bin", "agent"]).then_some(v)
}

/// The last version history shows running healthy: the target of the last success, or
/// what the last rollback put back.
pub(crate) fn last_good(layout: &molt_host::HostLayout) -> Option<Version> {
    state::read_history(&layout.history())
        .unwrap_or_default()
        .into_iter()
        .rev()
        .find_map(|r| match r.result {
            Outcome::Success => Some(r.to),
            Outcome::RolledBack => r.from,
            _ => None,
        })
}

/// The version to point a missing or dangling `current` at, from the host itself, in this
/// order of preference: the last version history records as good, then the newest
/// installed version that is not quarantined, then the quarantined ones. The first whose
/// files still hash as `.valid` recorded wins; failing that (a host installed by an older
/// updater, or tampered with), the first that has a `bin/agent` at all, because an agent
/// that may run beats none.
pub(crate) fn repair_target(layout: &molt_host::HostLayout) -> Option<Version> {
    let quarantined = Quarantine::load(&layout.quarantine())
        .map(|q| q.versions())
        .unwrap_or_default();
    let installed: Vec<Version> = layout
        .installed_versions()
        .into_iter()
        .filter(|v| layout.is_valid(v))
        .collect();
    let (held, free): (Vec<Version>, Vec<Version>) = installed
        .into_iter()
        .rev()
        .partition(|v| quarantined.contains(v));
    let candidates: Vec<Version> = last_good(layout)
        .filter(|v| layout.is_valid(v))
        .into_iter()
        .chain(free)
        .chain(held)
        .collect();
    candidates
        .iter()
        .find(|v| molt_host::installed::check(layout, v).is_ok())
        .or_else(|| {
            candidates
                .iter()
                .find(|v| layout.version_dir(v).join("bin/agent").is_file())
        })
        .cloned()
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

/// Points `current` back at `from` and starts it; it must report healthy. Returns how
/// long it took to report ready.
pub(crate) fn restore(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
    from: &Version,
) -> Result<Duration, RestoreError> {
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
        .map(|report| report.ready_after)
        .map_err(|source| RestoreError::Unhealthy {
            from: from.clone(),
            source: Box::new(source),
        })
}
