//! Commit (SPEC §6 step 10): the new version passed its health check and soak. Record it,
//! put the standalone updater in place on a first install, lift a quarantine, and keep
//! only `current` and the last known-good version.

use molt_host::HostLayout;
use molt_host::state::{self, HistoryRecord, Outcome, Quarantine, Step, Timings};
use molt_schema::Version;

use crate::error::UpdateError;
use crate::history;
use crate::journal::JournalWriter;

/// Commits the update `jw` describes: `to` is running and healthy.
///
/// The commit is the durable `committed` step in the journal. Only that write failing
/// fails the commit (the caller then rolls back: recovery would). After it, the update
/// has succeeded whatever else fails: the history record, the clean-up, the standalone
/// updater and the quarantine are each warned about and left for recovery or the next
/// update to complete.
pub(crate) fn commit(
    jw: &mut JournalWriter<'_>,
    reason: &str,
    timings: Timings,
) -> Result<HistoryRecord, UpdateError> {
    let layout = jw.layout;
    let to = jw.journal.to.clone();
    let from = jw.journal.from.clone();
    jw.set(Step::Committed)?;
    let record = history::record(&jw.journal, Outcome::Success, reason, timings);
    let after_commit = |what: &str, e: UpdateError| {
        tracing::warn!(
            "{to} is committed, but {what} failed: {}; the next `updater recover` or update completes it",
            molt_schema::cli::one_line(&e)
        );
    };
    if let Err(e) = finish(layout, &record, Some(&to), from.as_ref()) {
        after_commit("recording it", e);
    }
    if let Err(e) = install_standalone_updater(layout, &to) {
        after_commit("installing the standalone updater", e);
    }
    let lift = Quarantine::load(&layout.quarantine())
        .map_err(UpdateError::state)
        .and_then(|mut q| {
            if q.versions().contains(&to) {
                q.remove(&to);
                state::write_json(&layout.quarantine(), &q).map_err(UpdateError::state)?;
            }
            Ok(())
        });
    if let Err(e) = lift {
        after_commit("lifting its quarantine", e);
    }
    Ok(record)
}

/// Appends the history record (once: recovery may finish an update whose record is
/// already there), clears the journal, and removes every version but `keep_a` and `keep_b`
/// (current and the last known-good), plus stale staging.
pub(crate) fn finish(
    layout: &HostLayout,
    record: &HistoryRecord,
    keep_a: Option<&Version>,
    keep_b: Option<&Version>,
) -> Result<(), UpdateError> {
    let already = state::read_history(&layout.history())
        .map_err(UpdateError::state)?
        .iter()
        // The same update may have an earlier record of another outcome: a rollback that
        // failed and then succeeded under recovery has both.
        .any(|r| r.id == record.id && r.result == record.result);
    if !already {
        state::append_history(&layout.history(), record).map_err(UpdateError::state)?;
    }
    state::remove(&layout.journal()).map_err(UpdateError::state)?;
    for v in layout.installed_versions() {
        if Some(&v) != keep_a && Some(&v) != keep_b {
            let _ = crate::install::remove_version(layout, &v);
        }
    }
    // What killed runs left: staging (versions/.staging-*, and cache/staging-* of older
    // updaters, which staged there) and partial downloads of other targets (a killed run's
    // partial of the target is resumed by the next run, until an update finishes).
    let leftover = |dir: &std::path::Path, name: &str| {
        (dir == layout.versions_dir() && name.starts_with(".staging-"))
            || (dir == layout.cache_dir()
                && (name.starts_with("staging-") || name.ends_with(".partial")))
    };
    for dir in [layout.versions_dir(), layout.cache_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            if leftover(&dir, &e.file_name().to_string_lossy()) {
                let path = e.path();
                let _ = match e.file_type() {
                    Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                    _ => std::fs::remove_file(&path),
                };
            }
        }
    }
    Ok(())
}

/// For recovery, which completes a committed update or an interrupted first install: puts
/// the standalone updater in place as [`commit`] does, warning (not failing) when it cannot.
pub(crate) fn place_standalone_updater(layout: &HostLayout, to: &Version) {
    if let Err(e) = install_standalone_updater(layout, to) {
        let what = "installing the standalone updater";
        tracing::warn!(
            "{to} is committed, but {what} failed: {}; the next `updater recover` or update completes it",
            molt_schema::cli::one_line(&e)
        );
    }
}

/// The first install puts the standalone updater in place: `<root>/bin/updater`, a real
/// file (never a link into `versions/`, which self-replace would overwrite in place),
/// copied from the installed version. Later updates leave it to self-update.
fn install_standalone_updater(layout: &HostLayout, v: &Version) -> Result<(), UpdateError> {
    let dest = layout.updater_bin();
    if dest.exists() {
        return Ok(());
    }
    let src = layout.version_dir(v).join("bin").join("updater");
    let bytes = std::fs::read(&src).map_err(|e| UpdateError::io("read", &src, e))?;
    state::write_atomic_mode(&dest, &bytes, 0o755).map_err(UpdateError::state)
}

/// Puts a runnable `bin/updater` back when it does not run (empty, truncated, not
/// executable, failing `--version`): this updater, which does run, copies itself there. The
/// agent's launcher, `ExecStartPre` and the recover timer fall back to `bin/updater.previous`
/// or the current version's updater meanwhile; the repair happens here, on the updater's
/// side, which may be the only side allowed to write `bin/`. A `bin/updater` that is missing
/// is left to the first install (or the commit) that puts it in place.
pub fn repair_standalone_updater(layout: &HostLayout) {
    let dest = layout.updater_bin();
    if std::fs::symlink_metadata(&dest).is_err() {
        return;
    }
    let Ok(me) = std::env::current_exe() else {
        return;
    };
    if std::fs::canonicalize(&me).ok() == std::fs::canonicalize(&dest).ok() {
        return; // this is bin/updater, and it runs
    }
    let Err(why) = molt_host::process::runs_as_updater(&dest) else {
        return;
    };
    let repaired = std::fs::read(&me)
        .map_err(|e| UpdateError::io("read", &me, e))
        .and_then(|bytes| {
            state::write_atomic_mode(&dest, &bytes, 0o755).map_err(UpdateError::state)
        });
    match repaired {
        Ok(()) => tracing::warn!(
            "{} did not run ({why}); replaced it with this updater ({})",
            dest.display(),
            me.display()
        ),
        Err(e) => tracing::warn!(
            "{} does not run ({why}), and cannot be repaired: {}",
            dest.display(),
            molt_schema::cli::one_line(&e)
        ),
    }
}
