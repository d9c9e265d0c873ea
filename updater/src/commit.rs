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
    finish(layout, &record, Some(&to), from.as_ref())?;
    install_standalone_updater(layout, &to)?;
    let mut q = Quarantine::load(&layout.quarantine()).map_err(UpdateError::state)?;
    if q.versions().contains(&to) {
        q.remove(&to);
        state::write_json(&layout.quarantine(), &q).map_err(UpdateError::state)?;
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
        .any(|r| r.id == record.id);
    if !already {
        state::append_history(&layout.history(), record).map_err(UpdateError::state)?;
    }
    state::remove(&layout.journal()).map_err(UpdateError::state)?;
    for v in layout.installed_versions() {
        if Some(&v) != keep_a && Some(&v) != keep_b {
            let _ = std::fs::remove_dir_all(layout.version_dir(&v));
        }
    }
    if let Ok(entries) = std::fs::read_dir(layout.cache_dir()) {
        for e in entries.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with("staging-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
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
    state::write_atomic(&dest, &bytes).map_err(UpdateError::state)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| UpdateError::io("chmod", &dest, e))
}
