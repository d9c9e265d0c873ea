//! `agent/`, the agent's own directory, and moving an older host's agent files into it.
//!
//! Before the split, the agent kept its files in `state/`, beside root's journal, history,
//! `tuf/` and the lock. They now live in `agent/`, which the agent's user owns (when the
//! agent runs unprivileged, docs/architecture.md): [`prepare`] creates the directory when it
//! is missing and moves the files of an older layout into it. The updater calls it as root
//! before it starts an agent; it never follows a link in either directory.

use std::path::Path;

use crate::HostLayout;
use crate::state::{self, StateError};

/// The files the agent keeps (in `agent/`; in `state/` before the split). `health.json`
/// is not moved: each start of the agent writes a new one.
pub const AGENT_FILES: [&str; 5] = [
    crate::schedule::STATE_FILE,
    "hold.json",
    "last-launch.json",
    "reported.json",
    "host-id",
];

/// The largest agent file moved; the agent's files are a few hundred bytes.
const MOVE_LIMIT: u64 = 1 << 20;

/// Creates `agent/` when it is missing (owned by whoever runs this, mode 0755) and moves
/// each of [`AGENT_FILES`] that `state/` still holds and `agent/` does not into it, owned
/// like `agent/`. A file that cannot be moved is left where it is, with a warning: the
/// agent then starts that file afresh (a schedule's anchor, a report marker), which is
/// never unsafe.
pub fn prepare(layout: &HostLayout) -> Result<(), StateError> {
    let dir = layout.agent_dir();
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(StateError::Corrupt {
                path: dir,
                detail: "it is not a directory (a link or a file is in its place)".into(),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
                action: "create",
                path: dir.clone(),
                source,
            })?;
        }
        Err(source) => {
            return Err(StateError::Io {
                action: "read",
                path: dir,
                source,
            });
        }
    }
    for name in AGENT_FILES {
        let old = layout.state_dir().join(name);
        let new = dir.join(name);
        if std::fs::symlink_metadata(&old).is_err() || std::fs::symlink_metadata(&new).is_ok() {
            continue;
        }
        if let Err(e) = move_file(&old, &new, &dir) {
            tracing::warn!("cannot move {} to {}: {e}", old.display(), new.display());
        }
    }
    Ok(())
}

/// Root's state files that the agent reads (the journal, the history, the last run's
/// result, the quarantines, the seed). molt before the split wrote them readable by root
/// alone; they are opened to all here (never through a link). Nothing in them is secret,
/// and the agent cannot write any of them.
pub const READ_BY_AGENT: [&str; 6] = [
    "journal.json",
    "history.jsonl",
    crate::attempt::LAST_RUN_FILE,
    "quarantine.json",
    "updater-quarantine.json",
    "seed",
];

/// Makes each of [`READ_BY_AGENT`] readable by all (when it is a regular file of ours).
pub fn open_state_to_agent(layout: &HostLayout) {
    use std::os::unix::fs::PermissionsExt as _;
    for name in READ_BY_AGENT {
        let path = layout.state_dir().join(name);
        let Ok(file) = state::open_no_follow(&path, std::fs::OpenOptions::new().read(true)) else {
            continue;
        };
        match file.metadata() {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o044 != 0o044 => {
                let mode = (m.permissions().mode() & 0o7777) | 0o044;
                if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(mode)) {
                    tracing::debug!("cannot open {} to the agent: {e}", path.display());
                }
            }
            _ => {}
        }
    }
}

fn move_file(old: &Path, new: &Path, dir: &Path) -> Result<(), StateError> {
    let bytes = state::read_no_follow_capped(old, MOVE_LIMIT).map_err(|source| StateError::Io {
        action: "read",
        path: old.to_owned(),
        source,
    })?;
    state::write_atomic(new, &bytes)?;
    give_to_owner_of(new, dir);
    state::remove(old)?;
    tracing::info!("moved {} to {}", old.display(), new.display());
    Ok(())
}

/// Makes `path` belong to the owner of `dir` (when this process may: it runs as root).
pub fn give_to_owner_of(path: &Path, dir: &Path) {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !rustix::process::geteuid().is_root() || meta.uid() == 0 {
        return;
    }
    let uid = rustix::fs::Uid::from_raw(meta.uid());
    let gid = rustix::fs::Gid::from_raw(meta.gid());
    if let Err(e) = rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(uid),
        Some(gid),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    ) {
        tracing::warn!("cannot give {} to uid {}: {e}", path.display(), meta.uid());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_layouts_files_are_moved_once_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let layout = HostLayout::new(dir.path());
        let old = layout.state_dir();
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("hold.json"), "{\"held\": true}\n").unwrap();
        std::fs::write(old.join("host-id"), "abc\n").unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "not the agent's").unwrap();
        std::os::unix::fs::symlink(&secret, old.join("reported.json")).unwrap();

        prepare(&layout).unwrap();
        let new = layout.agent_dir();
        assert_eq!(
            std::fs::read_to_string(new.join("hold.json")).unwrap(),
            "{\"held\": true}\n"
        );
        assert!(!old.join("hold.json").exists());
        assert_eq!(
            std::fs::read_to_string(new.join("host-id")).unwrap(),
            "abc\n"
        );
        assert!(
            !new.join("reported.json").exists(),
            "a link in state/ is not read through"
        );

        // A newer file in agent/ is never replaced by an older one.
        std::fs::write(old.join("host-id"), "older\n").unwrap();
        prepare(&layout).unwrap();
        assert_eq!(
            std::fs::read_to_string(new.join("host-id")).unwrap(),
            "abc\n"
        );
    }

    #[test]
    fn a_link_in_place_of_the_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let layout = HostLayout::new(dir.path().join("root"));
        std::fs::create_dir_all(layout.root()).unwrap();
        std::os::unix::fs::symlink("/etc", layout.agent_dir()).unwrap();
        let err = prepare(&layout).unwrap_err();
        assert!(err.to_string().contains("agent"), "{err}");
    }
}
