//! `state/update.lock`: one update at a time (SPEC §6 step 1).
//!
//! An advisory lock (`flock` through std's `File::try_lock`) on a file that always
//! exists. It is released when the process exits, however it exits, so a killed updater
//! never leaves a stale lock. std opens files with `O_CLOEXEC`, so the agent the updater
//! starts never inherits the descriptor (and never holds the lock).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// The message of SPEC §6 for a second updater.
pub const LOCKED_MESSAGE: &str = "Another update in progress, try again later";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{LOCKED_MESSAGE}")]
    Held { path: PathBuf },
    #[error("cannot open the update lock {path}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot take the update lock {path}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct UpdateLock {
    _file: File,
    path: PathBuf,
}

impl UpdateLock {
    /// Takes the lock without waiting.
    pub fn try_acquire(path: &Path) -> Result<UpdateLock, LockError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LockError::Open {
                path: path.to_owned(),
                source,
            })?;
        }
        // A lock on a file that is no longer at `path` (another updater replaced a link or a
        // FIFO there between our open and our lock) locks nothing: try again, a few times.
        for _ in 0..5 {
            let file = open_lock_file(path).map_err(|source| LockError::Open {
                path: path.to_owned(),
                source,
            })?;
            match file.try_lock() {
                Ok(()) if still_at(&file, path) => {
                    owner_only(&file);
                    return Ok(UpdateLock {
                        _file: file,
                        path: path.to_owned(),
                    });
                }
                Ok(()) => continue,
                Err(TryLockError::WouldBlock) => {
                    return Err(LockError::Held {
                        path: path.to_owned(),
                    });
                }
                Err(TryLockError::Error(source)) => {
                    return Err(LockError::Lock {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        Err(LockError::Held {
            path: path.to_owned(),
        })
    }
}

/// The lock file is root's alone: anyone who can open it can flock it, and an unprivileged
/// agent that held it would keep every update out for ever. A file older molt versions
/// created readable by all is made so here (on a read-only filesystem it stays as it is).
fn owner_only(file: &File) {
    use std::os::unix::fs::PermissionsExt as _;
    if file
        .metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    {
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
    }
}

/// Whether `path` still names the file `file` is open on (same device and inode).
fn still_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl UpdateLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens the lock file read-only (flock needs no write access), creating it first when it
/// is missing. A descriptor open for writing would keep the filesystem from being
/// remounted read-only, and an existing lock file stays usable on a read-only filesystem,
/// where recovery must still be able to start an agent.
///
/// A link is never followed: a planted `update.lock` link would have a root updater create
/// a file wherever it points. A link is replaced by a file ([`crate::state::remove_link`]).
fn open_lock_file(path: &Path) -> std::io::Result<File> {
    let read = || crate::state::open_no_follow(path, OpenOptions::new().read(true));
    let first = read().or_else(|e| {
        crate::state::remove_link(path, e)?;
        read()
    });
    match first {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::OpenOptionsExt as _;
            drop(crate::state::open_no_follow(
                path,
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .mode(0o600),
            )?);
            read()
        }
        other => other,
    }
}

/// Whether an updater holds the lock right now (the agent asks before it launches one).
/// A lock file that cannot be opened counts as not held: the updater will say why. An
/// unprivileged agent may not open it at all (it is root's, 0600): it looks the file up in
/// the kernel's table of held locks, `/proc/locks`, instead.
///
/// A link in the lock's place is not replaced here: an older updater that followed it may
/// hold a lock on what it points at, so that file is asked (opened read-only, never
/// created); the next updater replaces the link.
pub fn update_in_progress(path: &Path) -> bool {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
        use std::os::unix::fs::OpenOptionsExt as _;
        let target = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path);
        return target.is_ok_and(|f| matches!(f.try_lock(), Err(TryLockError::WouldBlock)));
    }
    match crate::state::open_no_follow(path, OpenOptions::new().read(true)) {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            held_in_proc_locks(path).unwrap_or(false)
        }
        _ => path.exists() && matches!(UpdateLock::try_acquire(path), Err(LockError::Held { .. })),
    }
}

/// Whether `/proc/locks` lists a lock on the file at `path`; `None` when either cannot be
/// read.
fn held_in_proc_locks(path: &Path) -> Option<bool> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).ok()?;
    let table = std::fs::read_to_string("/proc/locks").ok()?;
    // The inode alone: /proc/locks names the superblock's device, which is not the one
    // stat gives on btrfs subvolumes or overlayfs. Another locked file with the same inode
    // number on another filesystem would only make the agent wait for a run that is not
    // there, never start one while an update runs.
    let ino = meta.ino();
    Some(
        table
            .lines()
            .any(|line| lock_line_file(line).is_some_and(|(_, _, i)| i == ino)),
    )
}

/// The (major, minor, inode) of the file one line of `/proc/locks` names, e.g.
/// `1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF` (major and minor in hex). A waiter's
/// line (`1: -> FLOCK …`) names the same file as the lock it waits on.
fn lock_line_file(line: &str) -> Option<(u32, u32, u64)> {
    let field = line
        .split_whitespace()
        .find(|f| f.bytes().filter(|b| *b == b':').count() == 2)?;
    let mut parts = field.split(':');
    let major = u32::from_str_radix(parts.next()?, 16).ok()?;
    let minor = u32::from_str_radix(parts.next()?, 16).ok()?;
    let inode = parts.next()?.parse().ok()?;
    Some((major, minor, inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines() {
        assert_eq!(
            lock_line_file("1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"),
            Some((0xfd, 1, 5678))
        );
        assert_eq!(
            lock_line_file("2: -> FLOCK  ADVISORY  WRITE 99 00:2a:77 0 EOF"),
            Some((0, 0x2a, 77))
        );
        assert_eq!(lock_line_file("garbage"), None);
        assert_eq!(
            lock_line_file("1: FLOCK ADVISORY WRITE 1 zz:01:5 0 EOF"),
            None
        );
    }

    #[test]
    fn a_held_lock_is_in_proc_locks_and_the_file_is_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/update.lock");
        assert_eq!(held_in_proc_locks(&path), None, "no file yet");
        let held = UpdateLock::try_acquire(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(held_in_proc_locks(&path), Some(true));
        drop(held);
        assert_eq!(held_in_proc_locks(&path), Some(false));
        // A lock file an older version made readable by all is narrowed.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(UpdateLock::try_acquire(&path).unwrap());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn second_holder_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/update.lock");
        let first = UpdateLock::try_acquire(&path).unwrap();
        let err = UpdateLock::try_acquire(&path).unwrap_err();
        assert!(matches!(err, LockError::Held { .. }));
        assert_eq!(
            err.to_string(),
            "Another update in progress, try again later"
        );
        drop(first);
        UpdateLock::try_acquire(&path).unwrap();
    }
}
