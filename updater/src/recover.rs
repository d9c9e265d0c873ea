//! Recovery (SPEC §6): finish or undo an update that was interrupted.
//!
//! | journal step | what happened | recovery |
//! |---|---|---|
//! | none | nothing unfinished | start the agent if it is not running |
//! | `started`, `installed` | interrupted before the switch | remove the half-installed version; the old one is untouched |
//! | `stopping` | the old agent may be stopped; `current` is still old | start the old agent |
//! | `switching`, `switched`, `rolling_back` | `current` may point at the new version | roll back to `from`, quarantine `to` |
//! | `committed` | the update succeeded | record it, clean up |
//! | `rolled_back` | the rollback succeeded | record it, clean up |
//! | unknown (a newer updater's step) | | leave the journal; make sure an agent runs |
//!
//! `updater recover` takes the lock without waiting: when an update holds it, recovery
//! is not needed and it exits 0 having done nothing.

use std::time::Instant;

use molt_host::state::{self, Journal, Outcome, Step, Timings};
use serde::Serialize;

use crate::commit::finish;
use crate::error::UpdateError;
use crate::history;
use crate::journal::JournalWriter;
use crate::lock::{LockError, UpdateLock};
use crate::rollback::roll_back;
use crate::service::ServiceManager;
use crate::settings::Settings;

/// What recovery did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovered {
    /// An update holds the lock: not our business.
    UpdateInProgress,
    /// Nothing was unfinished (the agent was started if it was not running).
    Nothing { started_agent: bool },
    /// An update interrupted before the switch was cleaned up.
    CleanedUp { to: String, started_agent: bool },
    /// An update interrupted after the switch was rolled back.
    RolledBack { to: String },
    /// A finished update's record was completed.
    Finished { outcome: String },
    /// A journal from a newer updater was left alone.
    LeftAlone { step: String },
}

/// `updater recover`: recover unless an update holds the lock.
pub fn recover(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
) -> Result<Recovered, UpdateError> {
    let layout = &settings.layout;
    if !layout.state_dir().exists() {
        return Ok(Recovered::Nothing {
            started_agent: false,
        });
    }
    let _lock = match UpdateLock::try_acquire(&layout.lock()) {
        Ok(l) => l,
        Err(LockError::Held { .. }) => return Ok(Recovered::UpdateInProgress),
        Err(e) => return Err(e.into()),
    };
    recover_locked(settings, svc)
}

fn start_if_stopped(settings: &Settings, svc: &mut dyn ServiceManager) -> bool {
    if settings.layout.current_version().is_none() {
        return false;
    }
    match svc.main_pid() {
        Ok(Some(pid)) if svc.is_alive(pid) => false,
        _ => svc.start(&molt_host::random_token()).is_ok(),
    }
}

/// Recovery with the lock already held (the start of every update).
pub fn recover_locked(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
) -> Result<Recovered, UpdateError> {
    let layout = &settings.layout;
    let journal: Option<Journal> = match state::read_json(&layout.journal()) {
        Ok(j) => j,
        Err(state::StateError::Corrupt { path, detail }) => {
            // A torn journal can only come from a crash while writing it, and it is
            // written before each step: treat it as the most cautious case, after the switch.
            tracing::warn!(
                "{} is corrupt ({detail}); recovering from the current version",
                path.display()
            );
            let _ = state::remove(&path);
            return Ok(Recovered::Nothing {
                started_agent: start_if_stopped(settings, svc),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let Some(journal) = journal else {
        return Ok(Recovered::Nothing {
            started_agent: start_if_stopped(settings, svc),
        });
    };
    let to = journal.to.to_string();
    let started = Instant::now();
    let record = |result: Outcome, reason: &str| {
        history::record(&journal, result, reason, Timings::default())
    };
    match journal.step {
        Step::Started | Step::Installed | Step::Stopping => {
            // Before the switch: `current` still points at the old version.
            let _ = std::fs::remove_dir_all(layout.staging_dir(&journal.to));
            if layout.current_version().as_ref() != Some(&journal.to)
                && journal.from.as_ref() != Some(&journal.to)
            {
                let _ = std::fs::remove_dir_all(layout.version_dir(&journal.to));
            }
            let started_agent = start_if_stopped(settings, svc);
            let rec = record(
                Outcome::Failed,
                "interrupted before the switch; cleaned up, the previous version was untouched",
            );
            finish(
                layout,
                &rec,
                layout.current_version().as_ref(),
                journal.from.as_ref(),
            )?;
            Ok(Recovered::CleanedUp { to, started_agent })
        }
        Step::Switching | Step::Switched | Step::RollingBack => {
            if journal.from.as_ref().is_none_or(|f| !layout.is_valid(f)) {
                // A first install interrupted after its switch: there is nothing to go
                // back to, so finish it instead and let the agent start.
                let started_agent = start_if_stopped(settings, svc);
                let rec = record(
                    Outcome::Success,
                    "first install interrupted after the switch; completed by recovery",
                );
                finish(layout, &rec, layout.current_version().as_ref(), None)?;
                return Ok(Recovered::CleanedUp { to, started_agent });
            }
            let mut jw = JournalWriter {
                layout,
                journal: journal.clone(),
            };
            // A version that failed its health check (a reason is recorded) is quarantined;
            // one whose update was merely interrupted (a crash, a kill) is not.
            let failed_health = journal.reason.is_some();
            let reason = journal.reason.clone().unwrap_or_else(|| {
                format!(
                    "the update to {to} was interrupted after the switch; rolled back by recovery"
                )
            });
            match roll_back(
                settings,
                svc,
                &mut jw,
                &reason,
                failed_health,
                started,
                None,
            ) {
                UpdateError::RolledBack { .. } => Ok(Recovered::RolledBack { to }),
                other => Err(other),
            }
        }
        Step::Committed => {
            start_if_stopped(settings, svc);
            let rec = record(Outcome::Success, "committed; record completed by recovery");
            finish(layout, &rec, Some(&journal.to), journal.from.as_ref())?;
            Ok(Recovered::Finished {
                outcome: "success".into(),
            })
        }
        Step::RolledBack => {
            start_if_stopped(settings, svc);
            let reason = journal
                .reason
                .clone()
                .unwrap_or_else(|| "rolled back".into());
            let rec = record(Outcome::RolledBack, &reason);
            finish(layout, &rec, journal.from.as_ref(), None)?;
            Ok(Recovered::Finished {
                outcome: "rolled_back".into(),
            })
        }
        Step::Unknown => {
            start_if_stopped(settings, svc);
            Ok(Recovered::LeftAlone {
                step: "unknown".into(),
            })
        }
    }
}
