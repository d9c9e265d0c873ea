//! The switch (SPEC §6 step 8), as one unit: stop the old agent, point `current` at the
//! new version, start the new agent with a fresh health nonce, journalling each step
//! before it is taken.
//!
//! `current` is replaced by renaming a fresh symlink over it, then the root directory is
//! fsynced. A reader sees the old or the new target, never neither; after a crash the
//! rename either happened or it did not.

use std::path::Path;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use molt_host::HostLayout;
use molt_host::state::{StateError, Step, sync_dir};
use molt_schema::Version;

use crate::error::UpdateError;
use crate::journal::{JournalWriter, checkpoint};
use crate::service::{ServiceError, ServiceManager};

/// How the switch went, once the old agent was stopped.
#[derive(Debug)]
pub(crate) struct Switched {
    /// The nonce the new agent must report in its health file.
    pub nonce: String,
    /// From the old agent's exit to the new agent's start.
    pub before_start: Duration,
    /// Whether the new agent could be started at all.
    pub started: Result<(), ServiceError>,
}

/// Why the switch did not happen.
#[derive(Debug)]
pub(crate) enum NotSwitched {
    /// The old agent could not be stopped: nothing switched, and it runs again.
    NotStopped(ServiceError),
    /// The journal could not be written before the old agent was stopped.
    Failed(UpdateError),
    /// The old agent was stopped, then a journal write or the link failed before
    /// `current` moved: the old agent was started again (`restarted` says how that went).
    Restarted {
        error: Box<UpdateError>,
        restarted: Result<(), ServiceError>,
    },
}

impl From<UpdateError> for NotSwitched {
    fn from(e: UpdateError) -> NotSwitched {
        NotSwitched::Failed(e)
    }
}

/// Stops the old agent, points `current` at `to`, and starts the new agent.
///
/// From the moment the old agent is stopped, every path ends with an agent started: the
/// old one again when `current` did not move, the new one when it did. A journal write
/// that fails after `current` moved does not stop the switch: the journal still says an
/// earlier step, from which recovery rolls back, and the health check decides the rest.
pub(crate) fn switch_to(
    jw: &mut JournalWriter<'_>,
    svc: &mut dyn ServiceManager,
    to: &Version,
) -> Result<Switched, NotSwitched> {
    jw.journal.stopped_at = Some(Timestamp::now());
    jw.set(Step::Stopping)?;
    if let Err(e) = svc.stop() {
        // Nothing has switched yet: keep the old agent running.
        if matches!(svc.main_pid(), Ok(None)) {
            let _ = svc.start(&molt_host::random_token());
        }
        return Err(NotSwitched::NotStopped(e));
    }
    // The old agent has exited: the downtime starts here.
    let stopped = Instant::now();
    let restart_old = |svc: &mut dyn ServiceManager, error: UpdateError| {
        tracing::warn!(
            "{}; starting the old agent again",
            molt_schema::cli::one_line(&error)
        );
        NotSwitched::Restarted {
            error: Box::new(error),
            restarted: svc.start(&molt_host::random_token()).map(|_| ()),
        }
    };
    if let Err(e) = jw.set(Step::Switching) {
        return Err(restart_old(svc, e));
    }
    if let Err(e) = point_current(jw.layout, to) {
        // The rename is atomic: unless it happened before the directory's fsync failed,
        // `current` still names the old version.
        if jw.layout.current_version().as_ref() != Some(to) {
            return Err(restart_old(svc, UpdateError::state(e)));
        }
        tracing::warn!(
            "{}; current points at {to} all the same",
            molt_schema::cli::one_line(&e)
        );
    }
    checkpoint("switched_link");
    let nonce = molt_host::random_token();
    jw.journal.nonce = Some(nonce.clone());
    if let Err(e) = jw.set(Step::Switched) {
        tracing::warn!(
            "{}; the switch goes on (recovery rolls it back if it is interrupted)",
            molt_schema::cli::one_line(&e)
        );
    }
    let before_start = stopped.elapsed();
    let started = svc.start(&nonce).map(|_| ());
    Ok(Switched {
        nonce,
        before_start,
        started,
    })
}

/// Points `current` at `versions/<v>` atomically and durably.
pub fn point_current(layout: &HostLayout, v: &Version) -> Result<(), StateError> {
    let root = layout.root();
    let tmp = root.join(format!(".current.{}.tmp", std::process::id()));
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| StateError::Io {
            action,
            path,
            source,
        }
    };
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(Path::new("versions").join(v.to_string()), &tmp)
        .map_err(io("create the symlink", &tmp))?;
    std::fs::rename(&tmp, layout.current_link())
        .map_err(io("rename over", &layout.current_link()))?;
    sync_dir(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_atomically_and_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = HostLayout::new(dir.path());
        let (a, b): (Version, Version) = ("1.0.0".parse().unwrap(), "2.0.0".parse().unwrap());
        for v in [&a, &b] {
            std::fs::create_dir_all(layout.version_dir(v)).unwrap();
            std::fs::write(layout.valid_marker(v), b"").unwrap();
        }
        point_current(&layout, &a).unwrap();
        assert_eq!(layout.current_version(), Some(a.clone()));
        point_current(&layout, &b).unwrap();
        assert_eq!(layout.current_version(), Some(b));
        point_current(&layout, &a).unwrap();
        assert_eq!(layout.current_version(), Some(a));
        // no temporary links left behind
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
    }
}
