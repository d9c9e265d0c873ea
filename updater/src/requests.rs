//! `updater requests`: what root's `molt-update.service` runs when an unprivileged agent
//! has asked for a run ([`molt_host::request`]).
//!
//! Every request is taken (and removed) at once; one run follows at most, and at most one
//! update every [`MIN_INTERVAL`]: a flood of requests costs one check, not one per file.
//! (A recovery reads local files only, and is not limited.) The run is
//! this same updater, exec'd with root's own arguments (`--target-version latest`, or
//! `recover`) and the request's launch id, so that its result reaches the agent through
//! `state/last-run.json` as a launched run's does. Nothing else from the request is used.

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use molt_host::HostLayout;
use molt_host::lock::LockError;
use molt_host::request::{self, Request, RequestKind};
use molt_host::state;

use crate::error::UpdateError;

/// The shortest time between two runs that requests start.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);

/// `state/last-request`: when the last update a request started began (root's own record).
fn last_request(layout: &HostLayout) -> std::path::PathBuf {
    layout.state_dir().join("last-request")
}

/// What to do about the requests now in `agent/requests/`.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// No valid request.
    Nothing,
    /// An update began less than [`MIN_INTERVAL`] ago: the request is answered as busy (the
    /// agent retries it later, as after a run that found the update lock held).
    TooSoon(Request),
    /// Run it.
    Run(Request),
}

/// Takes every request and decides; records the time of a run it lets through.
pub fn decide(layout: &HostLayout, now: Timestamp) -> Decision {
    let taken = request::take_all(layout);
    // A flood would flood the journal too: the first few, then how many more.
    const SHOWN: usize = 10;
    for why in taken.refused.iter().take(SHOWN) {
        tracing::warn!(
            "refused a request in {}: {why}",
            layout.requests_dir().display()
        );
    }
    if taken.refused.len() > SHOWN {
        tracing::warn!(
            "refused {} more requests in {}",
            taken.refused.len() - SHOWN,
            layout.requests_dir().display()
        );
    }
    let Some(run) = taken.run else {
        return Decision::Nothing;
    };
    if run.kind == RequestKind::Recover {
        return Decision::Run(run);
    }
    let path = last_request(layout);
    let last = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<Timestamp>().ok());
    if let Some(last) = last
        && let Ok(since) = Duration::try_from(now.duration_since(last))
        && since < MIN_INTERVAL
    {
        return Decision::TooSoon(run);
    }
    if let Err(e) = state::write_atomic(&path, format!("{now}\n").as_bytes()) {
        tracing::warn!("{}", molt_schema::cli::one_line(&e));
    }
    Decision::Run(run)
}

/// Answers a request that is not run now, so the agent's retry rule sees a busy run.
pub fn answer_busy(layout: &HostLayout, request: &Request) {
    let busy = UpdateError::Lock(LockError::Held {
        path: layout.lock(),
    });
    crate::history::record_launched_run(
        layout,
        request.launch_id.clone(),
        Timestamp::now(),
        Err(&busy),
    );
}

/// The updater's arguments for a request (root's own; the request only says which).
pub fn arguments(request: &Request) -> Vec<&'static str> {
    match request.kind {
        RequestKind::Update => vec!["--target-version", "latest"],
        RequestKind::Recover => vec!["recover"],
    }
}

/// Replaces this process with `program <global args> <arguments>`, with the request's
/// launch id; returns only if that fails.
pub fn exec(program: &Path, global: &[std::ffi::OsString], request: &Request) -> std::io::Error {
    use std::os::unix::process::CommandExt as _;
    std::process::Command::new(program)
        .args(global)
        .args(arguments(request))
        .env(molt_host::attempt::LAUNCH_ID_ENV, &request.launch_id)
        .exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_per_interval_and_the_rest_are_busy() {
        let dir = tempfile::tempdir().unwrap();
        let layout = HostLayout::new(dir.path());
        let now = Timestamp::now();
        assert_eq!(decide(&layout, now), Decision::Nothing);
        request::submit(&layout, "20261204T020000Z-aaaaaa", RequestKind::Update).unwrap();
        assert!(matches!(decide(&layout, now), Decision::Run(r) if r.kind == RequestKind::Update));
        request::submit(&layout, "20261204T020001Z-bbbbbb", RequestKind::Update).unwrap();
        let soon = now + jiff::SignedDuration::from_secs(10);
        let Decision::TooSoon(r) = decide(&layout, soon) else {
            panic!("a second run within a minute")
        };
        answer_busy(&layout, &r);
        let result: molt_host::attempt::RunResult =
            state::read_json(&layout.last_run()).unwrap().unwrap();
        assert_eq!(result.launch, "20261204T020001Z-bbbbbb");
        assert_eq!(result.failure, Some(molt_host::attempt::FailureClass::Busy));
        // A recovery is never held back; an update is again once the minute is over.
        request::submit(&layout, "20261204T020002Z-cccccc", RequestKind::Recover).unwrap();
        assert!(matches!(decide(&layout, soon), Decision::Run(r) if arguments(&r) == ["recover"]));
        request::submit(&layout, "20261204T020200Z-dddddd", RequestKind::Update).unwrap();
        let later = now + jiff::SignedDuration::from_secs(61);
        assert!(
            matches!(decide(&layout, later), Decision::Run(r) if r.kind == RequestKind::Update)
        );
    }
}
