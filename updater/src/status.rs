//! `updater status` and `updater history`.

use molt_host::state::{self, Journal, Outcome, Quarantine};
use serde::Serialize;

use crate::error::UpdateError;
use crate::lock::{LockError, UpdateLock};
use crate::recover::Recovered;
use crate::settings::Settings;

#[derive(Debug, Serialize)]
struct Status {
    root: String,
    current: Option<String>,
    installed: Vec<String>,
    update_in_progress: bool,
    journal: Option<Journal>,
    quarantined: Vec<String>,
    last_update: Option<state::HistoryRecord>,
}

pub fn print_status(settings: &Settings, json: bool) -> Result<(), UpdateError> {
    let layout = &settings.layout;
    let journal: Option<Journal> = state::read_json(&layout.journal()).unwrap_or(None);
    let update_in_progress = layout.state_dir().exists()
        && matches!(
            UpdateLock::try_acquire(&layout.lock()),
            Err(LockError::Held { .. })
        );
    let quarantine = Quarantine::load(&layout.quarantine()).unwrap_or_default();
    let s = Status {
        root: layout.root().display().to_string(),
        current: layout.current_version().map(|v| v.to_string()),
        installed: layout
            .installed_versions()
            .iter()
            .map(ToString::to_string)
            .collect(),
        update_in_progress,
        journal,
        quarantined: quarantine
            .entries
            .iter()
            .map(|e| e.version.to_string())
            .collect(),
        last_update: state::read_history(&layout.history())?.pop(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
        return Ok(());
    }
    println!("root:        {}", s.root);
    println!("current:     {}", s.current.as_deref().unwrap_or("(none)"));
    println!(
        "installed:   {}",
        if s.installed.is_empty() {
            "(none)".to_owned()
        } else {
            s.installed.join(", ")
        }
    );
    println!(
        "in progress: {}",
        match (&s.journal, s.update_in_progress) {
            (Some(j), true) =>
                format!("yes: {} -> {} at step {:?}", fmt_opt(&j.from), j.to, j.step),
            (Some(j), false) => format!(
                "interrupted: {} -> {} at step {:?} (run `updater recover`)",
                fmt_opt(&j.from),
                j.to,
                j.step
            ),
            (None, true) => "yes".to_owned(),
            (None, false) => "no".to_owned(),
        }
    );
    if !s.quarantined.is_empty() {
        println!("quarantined: {}", s.quarantined.join(", "));
    }
    match &s.last_update {
        Some(r) => println!("last update: {}", describe(r)),
        None => println!("last update: (none)"),
    }
    Ok(())
}

fn fmt_opt(v: &Option<molt_schema::Version>) -> String {
    v.as_ref()
        .map_or_else(|| "(nothing)".to_owned(), ToString::to_string)
}

fn describe(r: &state::HistoryRecord) -> String {
    let result = match r.result {
        Outcome::Success => "success",
        Outcome::RolledBack => "rolled back",
        Outcome::Failed => "failed",
        Outcome::RollbackFailed => "ROLLBACK FAILED",
        Outcome::Unknown => "unknown",
    };
    format!(
        "{} {} -> {} {result}{}",
        r.finished_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        fmt_opt(&r.from),
        r.to,
        r.reason
            .as_ref()
            .map(|s| format!(": {s}"))
            .unwrap_or_default()
    )
}

pub fn print_history(settings: &Settings, count: usize, json: bool) -> Result<(), UpdateError> {
    let all = state::read_history(&settings.layout.history())?;
    let tail = &all[all.len().saturating_sub(count)..];
    if json {
        println!("{}", serde_json::to_string_pretty(tail).unwrap_or_default());
    } else if tail.is_empty() {
        println!(
            "no updates recorded in {}",
            settings.layout.history().display()
        );
    } else {
        for r in tail {
            println!("{}", describe(r));
        }
    }
    Ok(())
}

pub fn describe_recovery(r: &Recovered) -> String {
    match r {
        Recovered::UpdateInProgress => "an update is in progress; nothing to recover".into(),
        Recovered::Nothing {
            started_agent: true,
        } => "nothing to recover; started the agent, which was not running".into(),
        Recovered::Nothing {
            started_agent: false,
        } => "nothing to recover".into(),
        Recovered::Repaired {
            current,
            started_agent,
        } => format!(
            "current named no valid version; pointed it at {current}{}",
            if *started_agent {
                ", the last good version installed, and started the agent"
            } else {
                ", the version the running agent runs from (or the last good one installed)"
            }
        ),
        Recovered::CleanedUp { to, .. } => {
            format!("cleaned up the interrupted update to {to}; the previous version was untouched")
        }
        Recovered::RolledBack { to } => format!("rolled back the interrupted update to {to}"),
        Recovered::Finished { outcome } => {
            format!("completed the record of a finished update ({outcome})")
        }
        Recovered::LeftAlone { step } => {
            format!("left an unfinished update at step {step} (written by a newer updater) alone")
        }
    }
}
