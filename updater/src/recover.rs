//! Recovery (SPEC §6): finish or undo an update that was interrupted.
//!
//! | journal step | what happened | recovery |
//! |---|---|---|
//! | none | nothing unfinished | start the agent if it is not running; remove version directories left without `.valid` |
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

use molt_host::state::{self, Journal, Outcome, STATE_VERSION, Step, Timings};
use serde::Serialize;

use crate::commit::{finish, place_standalone_updater};
use crate::error::UpdateError;
use crate::history;
use crate::journal::JournalWriter;
use crate::lock::{LockError, UpdateLock};
use crate::rollback::{RestoreError, ensure_agent_runs, failed, last_good, restore, roll_back};
use crate::service::ServiceManager;
use crate::settings::Settings;
use molt_host::config::ServiceKind;

/// What recovery did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recovered {
    /// An update holds the lock: not our business.
    UpdateInProgress,
    /// Nothing was unfinished (the agent was started if it was not running).
    Nothing { started_agent: bool },
    /// `current` was missing or named no valid version: it was pointed at `current`, the
    /// version the host itself shows to be good, and the agent was started.
    Repaired {
        current: String,
        started_agent: bool,
    },
    /// An update interrupted before the switch was cleaned up.
    CleanedUp { to: String, started_agent: bool },
    /// An update interrupted after the switch was rolled back.
    RolledBack { to: String },
    /// A finished update's record was completed.
    Finished { outcome: String },
    /// A journal from a newer updater was left alone (an agent runs all the same).
    LeftAlone { step: String },
}

/// `updater recover`: recover unless an update holds the lock.
pub fn recover(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
) -> Result<Recovered, UpdateError> {
    let layout = &settings.layout;
    if !layout.state_dir().exists() && layout.installed_versions().is_empty() {
        return Ok(Recovered::Nothing {
            started_agent: false,
        });
    }
    let before_start = settings.service == ServiceKind::Systemd
        && std::fs::read_to_string("/proc/self/cgroup")
            .is_ok_and(|c| in_unit_cgroup(&c, svc.unit_name()));
    let _lock = match UpdateLock::try_acquire(&layout.lock()) {
        Ok(l) => l,
        Err(LockError::Held { .. }) => return Ok(Recovered::UpdateInProgress),
        Err(_) if before_start => return Ok(before_the_start(settings)),
        Err(e) => {
            // A lock that cannot be opened (a read-only or broken state directory) must not
            // leave the host without an agent; no update can run either, so starting one
            // races with nothing.
            ensure_agent_runs(settings, svc);
            return Err(e.into());
        }
    };
    if before_start {
        return Ok(before_the_start(settings));
    }
    recover_locked(settings, svc)
}

/// True when `/proc/self/cgroup` (its `cgroup` text) puts this process in `<unit>.service`:
/// `updater recover` run by the agent unit's own `ExecStartPre`.
fn in_unit_cgroup(cgroup: &str, unit: Option<&str>) -> bool {
    let Some(unit) = unit else { return false };
    let wanted = format!("{unit}.service");
    cgroup
        .lines()
        .filter_map(|l| l.rsplit(':').next())
        .any(|path| path.trim_end().rsplit('/').next() == Some(wanted.as_str()))
}

/// Recovery from the agent unit's `ExecStartPre`: systemd is starting the unit and waits
/// for this process, so a `systemctl start` or `stop` of the unit now would wait on itself
/// (the start job cannot finish before `ExecStartPre` does). Only `current` is put right,
/// so that `ExecStart` runs a valid version: a missing or dangling `current` is repaired,
/// and one an unfinished switch left on the new version goes back to the old one. The
/// agent, once started, launches `updater recover` outside its unit for the rest.
pub(crate) fn before_the_start(settings: &Settings) -> Recovered {
    let layout = &settings.layout;
    let journal: Option<Journal> = state::read_json(&layout.journal()).ok().flatten();
    let back_to = journal
        .filter(|j| {
            j.version <= STATE_VERSION
                && matches!(j.step, Step::Switching | Step::Switched | Step::RollingBack)
        })
        .and_then(|j| j.from)
        .filter(|f| layout.is_valid(f));
    let target = back_to.or_else(|| {
        if layout.current_version().is_some() {
            None
        } else {
            crate::rollback::repair_target(layout)
        }
    });
    match target {
        Some(v) if layout.current_version().as_ref() != Some(&v) => {
            match crate::switch::point_current(layout, &v) {
                Ok(()) => {
                    tracing::warn!("before the agent starts: pointed current at {v}");
                    Recovered::Repaired {
                        current: v.to_string(),
                        started_agent: false,
                    }
                }
                Err(e) => {
                    tracing::error!("{}", molt_schema::cli::one_line(&e));
                    Recovered::Nothing {
                        started_agent: false,
                    }
                }
            }
        }
        _ => Recovered::Nothing {
            started_agent: false,
        },
    }
}

/// Starts the agent if none runs; a missing or dangling `current` is repaired first.
fn agent_running(settings: &Settings, svc: &mut dyn ServiceManager) -> Recovered {
    let before = settings.layout.current_version();
    let started_agent = ensure_agent_runs(settings, svc);
    match settings.layout.current_version() {
        Some(now) if before.as_ref() != Some(&now) => Recovered::Repaired {
            current: now.to_string(),
            started_agent,
        },
        _ => Recovered::Nothing { started_agent },
    }
}

/// A newer updater's journal (a fallback to an older updater ran us) is never rewritten.
/// The safe action for any step: an agent from a valid version runs.
fn leave_alone(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
    version: u32,
    step: &str,
) -> Recovered {
    tracing::warn!(
        "{} was written by a newer updater (state version {version}, step {step}); leaving it for that updater",
        settings.layout.journal().display(),
    );
    ensure_agent_runs(settings, svc);
    Recovered::LeftAlone {
        step: step.to_owned(),
    }
}

/// For a journal this updater cannot parse: its state version and step, when it is a JSON
/// object whose `version` is above this updater's.
fn newer_shape(path: &std::path::Path) -> Option<(u32, String)> {
    let bytes = std::fs::read(path).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let version = u32::try_from(value.get("version")?.as_u64()?).ok()?;
    let step = value
        .get("step")
        .and_then(|s| s.as_str())
        .unwrap_or("unknown")
        .chars()
        .take(64)
        .collect();
    (version > STATE_VERSION).then_some((version, step))
}

/// Removes the version directories without `.valid` that `current` does not name: the
/// leftovers of an install or a removal that a kill interrupted. Nothing uses them; with
/// the lock held and no journal, nothing is writing them either.
fn remove_incomplete(layout: &molt_host::HostLayout) {
    let linked = std::fs::read_link(layout.current_link()).ok();
    for v in layout.installed_versions() {
        let named = linked
            .as_ref()
            .is_some_and(|l| l.file_name() == layout.version_dir(&v).file_name());
        if !layout.is_valid(&v) && !named {
            let _ = crate::install::remove_version(layout, &v);
        }
    }
}

/// Recovery with the lock already held (the start of every update).
pub fn recover_locked(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
) -> Result<Recovered, UpdateError> {
    let layout = &settings.layout;
    crate::commit::repair_standalone_updater(layout);
    let journal: Option<Journal> = match state::read_json(&layout.journal()) {
        Ok(j) => j,
        Err(state::StateError::Corrupt { path, detail }) => {
            // A newer updater may have changed the journal's shape as well as its version:
            // its `version` alone decides that it is not ours to touch.
            if let Some((version, step)) = newer_shape(&path) {
                return Ok(leave_alone(settings, svc, version, &step));
            }
            return from_the_host(settings, svc, &path, &detail);
        }
        Err(e) => {
            // The journal cannot be read at all (an I/O error): whatever it says, an agent
            // must run.
            ensure_agent_runs(settings, svc);
            return Err(e.into());
        }
    };
    let Some(journal) = journal else {
        let recovered = agent_running(settings, svc);
        remove_incomplete(layout);
        return Ok(recovered);
    };
    if journal.version > STATE_VERSION || journal.step == Step::Unknown {
        let step = format!("{:?}", journal.step).to_lowercase();
        return Ok(leave_alone(settings, svc, journal.version, &step));
    }
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
                let _ = crate::install::remove_version(layout, &journal.to);
            }
            let started_agent = ensure_agent_runs(settings, svc);
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
            let mut jw = JournalWriter {
                layout,
                journal: journal.clone(),
            };
            if journal.from.as_ref().is_none_or(|f| !layout.is_valid(f)) {
                return first_install(settings, svc, &mut jw, started);
            }
            // A version that failed its health check is quarantined (the journal says so; an
            // older updater's journal, by recording a reason); one whose update was merely
            // interrupted (a crash, a kill), or whose rollback did not blame it, is not.
            let failed_health = journal.quarantine.unwrap_or(journal.reason.is_some());
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
            ensure_agent_runs(settings, svc);
            let rec = record(Outcome::Success, "committed; record completed by recovery");
            finish(layout, &rec, Some(&journal.to), journal.from.as_ref())?;
            place_standalone_updater(layout, &journal.to);
            Ok(Recovered::Finished {
                outcome: "success".into(),
            })
        }
        Step::RolledBack => {
            ensure_agent_runs(settings, svc);
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
        Step::Unknown => unreachable_step(settings, svc),
    }
}

/// Handled above with the newer journals; kept as a function so the match stays total.
fn unreachable_step(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
) -> Result<Recovered, UpdateError> {
    ensure_agent_runs(settings, svc);
    Ok(Recovered::LeftAlone {
        step: "unknown".into(),
    })
}

/// A first install interrupted after its switch: there is nothing to go back to, so the
/// new version gets its health check now, and is recorded as a success only if it passes.
fn first_install(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
    jw: &mut JournalWriter<'_>,
    started: Instant,
) -> Result<Recovered, UpdateError> {
    let layout = &settings.layout;
    let to = jw.journal.to.clone();
    let timings = || Timings {
        total_ms: history::ms(started.elapsed()),
        ..Timings::default()
    };
    if !layout.is_valid(&to) {
        let reason = format!("the first install of {to} was interrupted and {to} is not valid");
        return Err(failed(
            settings,
            svc,
            jw,
            &reason,
            RestoreError::NoEarlierVersion,
            timings(),
        ));
    }
    let _ = svc.stop();
    match restore(settings, svc, &to) {
        Ok(_) => {
            let rec = history::record(
                &jw.journal,
                Outcome::Success,
                "first install interrupted after the switch; completed by recovery after its health check",
                timings(),
            );
            finish(layout, &rec, Some(&to), None)?;
            place_standalone_updater(layout, &to);
            Ok(Recovered::Finished {
                outcome: "success".into(),
            })
        }
        Err(e) => {
            let reason = format!("the first install of {to} was interrupted after the switch");
            Err(failed(settings, svc, jw, &reason, e, timings()))
        }
    }
}

/// The journal is corrupt (torn by a crash while it was written, or damaged): decide from
/// the host itself. Its copy is kept as `journal.json.corrupt`.
///
/// - `current` names the last version history records as good, or history names none:
///   nothing to undo; an agent runs.
/// - `current` names another valid version, and the last good one is still installed: an
///   update to `current` was under way and never committed, so it is rolled back (not
///   quarantined: nothing says it failed).
/// - `current` is missing or dangling: it is repaired (see [`ensure_agent_runs`]).
fn from_the_host(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
    path: &std::path::Path,
    detail: &str,
) -> Result<Recovered, UpdateError> {
    let layout = &settings.layout;
    let kept = path.with_extension("json.corrupt");
    tracing::warn!(
        "{} is corrupt ({detail}); deciding from current, the .valid markers and history (the damaged copy is {})",
        path.display(),
        kept.display()
    );
    if std::fs::rename(path, &kept).is_err()
        && let Err(e) = state::remove(path)
    {
        // A read-only disk (ext4 remounts itself so after errors, which is also when
        // journals get damaged): nothing can be decided durably, but an agent must run.
        ensure_agent_runs(settings, svc);
        return Err(e.into());
    }
    let current = layout.current_version();
    let good = last_good(layout).filter(|g| layout.is_valid(g));
    match (current, good) {
        (Some(current), Some(good)) if current != good => {
            let mut jw = JournalWriter::begin(layout, Some(good), current.clone());
            jw.journal.step = Step::Switched;
            let reason = format!(
                "the journal was corrupt and {current} was never recorded as good; rolled back by recovery"
            );
            match roll_back(settings, svc, &mut jw, &reason, false, Instant::now(), None) {
                UpdateError::RolledBack { .. } => Ok(Recovered::RolledBack {
                    to: current.to_string(),
                }),
                other => Err(other),
            }
        }
        _ => Ok(agent_running(settings, svc)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_unit_s_own_cgroup_is_recognised() {
        let pre = "0::/system.slice/molt-agent.service\n";
        assert!(in_unit_cgroup(pre, Some("molt-agent")));
        // cgroup v1 lines, one per controller
        let v1 = "12:pids:/system.slice/molt-agent.service\n1:name=systemd:/system.slice/molt-agent.service\n";
        assert!(in_unit_cgroup(v1, Some("molt-agent")));
        // the transient unit an update or the timer runs in, a shell, another unit
        for other in [
            "0::/system.slice/molt-update-20261203T101306Z.service\n",
            "0::/system.slice/molt-recover.service\n",
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/system.slice/not-molt-agent.service\n",
            "0::/\n",
        ] {
            assert!(!in_unit_cgroup(other, Some("molt-agent")), "{other}");
        }
        assert!(!in_unit_cgroup(pre, None), "direct mode has no unit");
    }
}
