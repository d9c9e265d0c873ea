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
            drop(crate::state::open_no_follow(
                path,
                OpenOptions::new().create(true).truncate(false).write(true),
            )?);
            read()
        }
        other => other,
    }
}

/// Whether an updater holds the lock right now (the agent asks before it launches one).
/// A lock file that cannot be opened counts as not held: the updater will say why.
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
    path.exists() && matches!(UpdateLock::try_acquire(path), Err(LockError::Held { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

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
