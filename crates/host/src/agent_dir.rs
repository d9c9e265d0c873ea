//! `agent/`, the agent's own directory, and copying an older host's agent files into it.
//!
//! Before the split, the agent kept its files in `state/`, beside root's journal, history,
//! `tuf/` and the lock. They now live in `agent/`, which the agent's user owns (when the
//! agent runs unprivileged, docs/architecture.md): [`prepare`] creates the directory when it
//! is missing, copies the files of an older layout into it (the originals stay, for an
//! older agent a rollback may start), and clears what a compromised agent could leave to
//! fail the next agent's health check. The updater calls it as root before it starts an
//! agent; it never follows a link in `agent/`.

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

/// Creates `agent/` when it is missing (owned by whoever runs this, mode 0755; under
/// systemd the agent unit's `ExecStartPre` gives it to the agent's user), gives it back its
/// mode 0755 (an agent that took away its own write access would fail every health check),
/// moves aside a `health.json` that is not a regular file, and copies each of
/// [`AGENT_FILES`] that `state/` holds and `agent/` does not into it, owned like `agent/`.
/// A file that cannot be copied is left, with a warning: the agent then starts that file
/// afresh (a schedule's anchor, a report marker), which is never unsafe.
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
    clear_for_the_agent(&dir);
    for name in AGENT_FILES {
        let old = layout.state_dir().join(name);
        let new = dir.join(name);
        if std::fs::symlink_metadata(&old).is_err() || std::fs::symlink_metadata(&new).is_ok() {
            continue;
        }
        if let Err(e) = copy_file(&old, &new, &dir) {
            tracing::warn!("cannot copy {} to {}: {e}", old.display(), new.display());
        }
    }
    Ok(())
}

/// Through a descriptor of `agent/` (opened without following a link): mode 0755, and a
/// `health.json` that is not a regular file (a directory, a FIFO, a link) moved aside as
/// `.junk-…`, so that the next agent can write its report.
fn clear_for_the_agent(dir: &Path) {
    use rustix::fs::{FileType, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::open(dir, flags, Mode::empty()) else {
        return;
    };
    if let Ok(st) = rustix::fs::fstat(&fd)
        && st.st_mode & 0o7777 != 0o755
        && let Err(e) = rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o755))
    {
        tracing::warn!("cannot give {} its mode 0755: {e}", dir.display());
    }
    if let Ok(st) = rustix::fs::statat(&fd, "health.json", rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
        && FileType::from_raw_mode(st.st_mode) != FileType::RegularFile
    {
        let aside = format!(".junk-{}", &crate::random_token()[..12]);
        match rustix::fs::renameat(&fd, "health.json", &fd, aside.as_str()) {
            Ok(()) => tracing::warn!(
                "{}/health.json was not a regular file; moved it aside as {aside}",
                dir.display()
            ),
            Err(e) => tracing::warn!("cannot move {}/health.json aside: {e}", dir.display()),
        }
    }
}

/// Root's state files that the agent reads (the journal, the history, the last run's
/// result, the quarantines, the seed). molt before the split wrote them readable by root
/// alone; they are opened to all here (never through a link). Nothing in them is secret,
/// and the agent cannot write any of them.
pub const READ_BY_AGENT: [&str; 7] = [
    "journal.json",
    "history.jsonl",
    crate::attempt::LAST_RUN_FILE,
    "quarantine.json",
    "updater-quarantine.json",
    "seed",
    "seed.origin",
];

/// Makes each of [`READ_BY_AGENT`] readable by all (when it is a regular file of ours),
/// and the update lock readable by root alone (one an older molt made readable by all
/// could be flocked by the agent).
pub fn open_state_to_agent(layout: &HostLayout) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(lock) = state::open_no_follow(&layout.lock(), std::fs::OpenOptions::new().read(true))
        && lock
            .metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o077 != 0)
    {
        let _ = lock.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
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

/// Copies `old` (root's) to `new` in `dir` (the agent's), given to `dir`'s owner before
/// the rename (a rename replaces a planted link instead of following it).
fn copy_file(old: &Path, new: &Path, dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt as _;
    let bytes = state::read_no_follow_capped(old, MOVE_LIMIT).map_err(|source| StateError::Io {
        action: "read",
        path: old.to_owned(),
        source,
    })?;
    let owner = std::fs::symlink_metadata(dir)
        .ok()
        .filter(|m| rustix::process::geteuid().is_root() && m.uid() != 0)
        .map(|m| (m.uid(), m.gid()));
    state::write_atomic_as(new, &bytes, 0o644, owner)?;
    tracing::info!("copied {} to {}", old.display(), new.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_layouts_files_are_copied_once_and_links_are_not_followed() {
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
        assert!(
            old.join("hold.json").exists(),
            "the original stays for an older agent"
        );
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
    fn what_would_fail_the_next_health_check_is_cleared() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let layout = HostLayout::new(dir.path());
        let agent = layout.agent_dir();
        std::fs::create_dir_all(agent.join("health.json/inside")).unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o555)).unwrap();
        prepare(&layout).unwrap();
        let mode = std::fs::metadata(&agent).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(!layout.health().exists(), "moved aside");
        std::fs::write(layout.health(), "{}").unwrap();
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
