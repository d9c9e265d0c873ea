//! [`FsStore`]: a region's repository in a local directory.
//!
//! An object is the file `<dir>/<key>`; its ETag is the lower-case hex SHA-256 of its bytes,
//! unquoted, which is also the checksum [`ObjectStore::stat`] reports (the file is hashed
//! each time). Writes go to a temporary file beside the destination (`.molt-tmp-…`), which is
//! flushed to disk before it takes the key's name, and the directory is flushed after, so a
//! crash leaves the old object or the new one.
//!
//! - [`Condition::IfNoneMatch`]: `link(2)` of the temporary file to the key, which fails if
//!   the key exists, so of two racing writers exactly one wins, in this process or another.
//!   On a file system without hard links it falls back to check-then-rename under the lock.
//! - [`Condition::IfMatch`] and [`Condition::None`]: under an advisory lock on
//!   `<dir>/.molt-store.lock` (`flock(2)` through `File::lock`), compare the current object's
//!   ETag (for `IfMatch`) and rename over it. [`ObjectStore::delete`] takes the same lock.
//!
//! Readers take no lock: a rename is atomic. Names starting with `.molt-` are the store's own
//! and never listed (keys may not use them; see [`super::check_key`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use sha2::Digest as _;

use super::{
    Body, Condition, Contents, Object, ObjectMeta, ObjectStore, RESERVED_PREFIX, StoreError,
    bare_etag, check_key, check_prefix,
};

/// The advisory lock file in the store's directory.
pub const LOCK_FILE: &str = ".molt-store.lock";

/// Temporary files are named `.molt-tmp-<pid>-<n>`.
const TEMP_PREFIX: &str = ".molt-tmp-";

/// Listings descend at most this deep (a symlink loop ends here).
const MAX_DEPTH: usize = 32;

/// A repository in a directory. See the module documentation.
#[derive(Clone, Debug)]
pub struct FsStore {
    /// Absolute.
    dir: PathBuf,
    /// `file:///dir/`.
    shown: String,
}

impl FsStore {
    /// The store at `dir`, which should exist (every call fails with
    /// [`StoreError::NoSuchDirectory`] until it does). Makes no system call but to make the
    /// path absolute.
    pub fn new(dir: impl Into<PathBuf>) -> FsStore {
        let dir = dir.into();
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        let shown = url::Url::from_directory_path(&dir)
            .map(String::from)
            .unwrap_or_else(|()| format!("file://{}/", dir.display()));
        FsStore { dir, shown }
    }

    /// Creates `dir` (and its parents) if needed, then [`FsStore::new`].
    pub fn create(dir: impl Into<PathBuf>) -> Result<FsStore, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            action: "create the directory",
            path: dir.clone(),
            source,
        })?;
        Ok(FsStore::new(dir))
    }

    /// The store's directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs `f(dir, key)` on tokio's blocking pool: file-system calls and the lock block.
    async fn run<T: Send + 'static>(
        &self,
        key: &str,
        f: impl FnOnce(&Path, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let dir = self.dir.clone();
        let owned = key.to_owned();
        tokio::task::spawn_blocking(move || f(&dir, &owned))
            .await
            .map_err(|e| StoreError::Task {
                object: format!("{}{key}", self.shown),
                detail: e.to_string(),
            })?
    }
}

#[async_trait]
impl ObjectStore for FsStore {
    fn describe(&self) -> String {
        self.shown.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        self.run(key, get).await
    }

    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
        self.run(key, stat).await
    }

    async fn put_body(&self, key: &str, body: Body, cond: Condition) -> Result<(), StoreError> {
        let object = format!("{}{key}", self.shown);
        self.run(key, move |dir, key| {
            // A file body is read here and checked against the digest it was hashed with.
            let bytes = body
                .read_blocking()
                .map_err(|source| match body.contents() {
                    Contents::File(_) if source.kind() == ErrorKind::InvalidData => {
                        StoreError::BadDigest {
                            object: object.clone(),
                            source: Some(source),
                        }
                    }
                    Contents::File(file) => StoreError::Io {
                        action: "read",
                        path: file.path().to_owned(),
                        source,
                    },
                    Contents::Memory(_) => StoreError::Task {
                        object: object.clone(),
                        detail: source.to_string(),
                    },
                })?;
            put(dir, key, &bytes, &cond, object)
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.run(prefix, list).await
    }

    async fn list_sized(&self, prefix: &str) -> Result<Vec<(String, u64)>, StoreError> {
        self.run(prefix, |dir, prefix| {
            let mut out = Vec::new();
            for key in list(dir, prefix)? {
                let path = dir.join(&key);
                match fs::metadata(&path) {
                    Ok(m) => out.push((key, m.len())),
                    // Removed since the walk: not there any more.
                    Err(e) if is_absent(&e) => {}
                    Err(source) => {
                        return Err(StoreError::Io {
                            action: "read",
                            path,
                            source,
                        });
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run(key, delete).await
    }
}

// ------------------------------------------------------------------------------------------
// The blocking parts

fn get(dir: &Path, key: &str) -> Result<Option<Object>, StoreError> {
    check_key(key)?;
    let path = dir.join(key);
    match fs::read(&path) {
        Ok(bytes) => {
            let etag = hex::encode(sha2::Sha256::digest(&bytes));
            Ok(Some(Object { bytes, etag }))
        }
        Err(e) if is_absent(&e) => {
            ensure_root(dir)?;
            Ok(None)
        }
        Err(source) => Err(StoreError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

fn stat(dir: &Path, key: &str) -> Result<Option<ObjectMeta>, StoreError> {
    check_key(key)?;
    let path = dir.join(key);
    match File::open(&path).and_then(molt_schema::artifact::hash_reader) {
        Ok((len, sha256)) => Ok(Some(ObjectMeta {
            etag: sha256.to_string(),
            len,
            sha256: Some(sha256),
        })),
        Err(e) if is_absent(&e) => {
            ensure_root(dir)?;
            Ok(None)
        }
        Err(source) => Err(StoreError::Io {
            action: "read",
            path,
            source,
        }),
    }
}

fn put(
    dir: &Path,
    key: &str,
    bytes: &[u8],
    cond: &Condition,
    object: String,
) -> Result<(), StoreError> {
    check_key(key)?;
    ensure_root(dir)?;
    let dest = dir.join(key);
    let parent = dest.parent().unwrap_or(dir).to_owned();
    make_parents(dir, key)?;
    let tmp = TempFile::write(&parent, bytes)?;
    let failed = || StoreError::PreconditionFailed {
        object: object.clone(),
        condition: cond.describe(),
    };
    match cond {
        Condition::IfNoneMatch => match fs::hard_link(&tmp.path, &dest) {
            // Dropping `tmp` removes its name; the object keeps the inode.
            Ok(()) => drop(tmp),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(failed()),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Unsupported | ErrorKind::PermissionDenied
                ) =>
            {
                // No hard links on this file system: check and rename under the lock, which
                // every writer here takes for the same reason.
                let _lock = lock(dir)?;
                match fs::symlink_metadata(&dest) {
                    Ok(_) => return Err(failed()),
                    Err(e) if e.kind() == ErrorKind::NotFound => tmp.rename_to(&dest)?,
                    Err(source) => {
                        return Err(StoreError::Io {
                            action: "inspect",
                            path: dest,
                            source,
                        });
                    }
                }
            }
            Err(source) => {
                return Err(StoreError::Io {
                    action: "create",
                    path: dest,
                    source,
                });
            }
        },
        Condition::IfMatch(etag) => {
            let _lock = lock(dir)?;
            let want = bare_etag(etag).to_ascii_lowercase();
            match hash_file(&dest) {
                Ok(current) if current == want => {}
                Ok(_) => return Err(failed()),
                Err(e) if is_absent(&e) => return Err(failed()),
                Err(source) => {
                    return Err(StoreError::Io {
                        action: "read",
                        path: dest,
                        source,
                    });
                }
            }
            tmp.rename_to(&dest)?;
        }
        Condition::None => {
            let _lock = lock(dir)?;
            tmp.rename_to(&dest)?;
        }
    }
    sync_dir(&parent)
}

fn list(dir: &Path, prefix: &str) -> Result<Vec<String>, StoreError> {
    check_prefix(prefix)?;
    ensure_root(dir)?;
    let mut keys = Vec::new();
    walk(dir, "", prefix, 0, &mut keys)?;
    keys.sort();
    Ok(keys)
}

/// Adds the files under `path` (whose key prefix is `rel`, empty or ending in `/`) that
/// start with `prefix`.
fn walk(
    path: &Path,
    rel: &str,
    prefix: &str,
    depth: usize,
    out: &mut Vec<String>,
) -> Result<(), StoreError> {
    let io = |action, path: &Path, source| StoreError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if depth > MAX_DEPTH {
        return Err(io(
            "list",
            path,
            io::Error::other(format!(
                "more than {MAX_DEPTH} levels of directories (a symlink loop?)"
            )),
        ));
    }
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        // A directory removed while we walk holds nothing.
        Err(e) if depth > 0 && e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io("list", path, source)),
    };
    for entry in entries {
        let entry = entry.map_err(|source| io("list", path, source))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(StoreError::BadKey {
                key: format!("{rel}{}", name.to_string_lossy()),
                reason: "the file name is not UTF-8",
            });
        };
        if name.starts_with(RESERVED_PREFIX) {
            continue;
        }
        let key = format!("{rel}{name}");
        let entry_path = entry.path();
        let file_type = entry
            .file_type()
            .map_err(|source| io("inspect", &entry_path, source))?;
        let (is_dir, is_file) = if file_type.is_symlink() {
            match fs::metadata(&entry_path) {
                Ok(m) => (m.is_dir(), m.is_file()),
                // A dangling link is no object (get says None for it too).
                Err(e) if e.kind() == ErrorKind::NotFound => (false, false),
                Err(source) => return Err(io("inspect", &entry_path, source)),
            }
        } else {
            (file_type.is_dir(), file_type.is_file())
        };
        if is_dir {
            let sub = format!("{key}/");
            if sub.starts_with(prefix) || prefix.starts_with(&sub) {
                walk(&entry_path, &sub, prefix, depth + 1, out)?;
            }
        } else if is_file && key.starts_with(prefix) {
            check_key(&key)?;
            out.push(key);
        }
    }
    Ok(())
}

fn delete(dir: &Path, key: &str) -> Result<(), StoreError> {
    check_key(key)?;
    ensure_root(dir)?;
    let path = dir.join(key);
    let _lock = lock(dir)?;
    match fs::remove_file(&path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(dir)),
        Err(e) if is_absent(&e) => Ok(()),
        Err(source) => Err(StoreError::Io {
            action: "remove",
            path,
            source,
        }),
    }
}

// ------------------------------------------------------------------------------------------
// Helpers

/// The errors that mean "there is no file at this key" (once the root is known to exist):
/// nothing there, a file where a directory of the key should be, or a directory at the key.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::NotFound | ErrorKind::NotADirectory | ErrorKind::IsADirectory
    )
}

/// The root must exist: a missing root is a missing repository, not an empty one.
fn ensure_root(dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(StoreError::Io {
            action: "use as the repository directory",
            path: dir.to_owned(),
            source: io::Error::new(ErrorKind::NotADirectory, "not a directory"),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(StoreError::NoSuchDirectory {
            dir: dir.to_owned(),
        }),
        Err(source) => Err(StoreError::Io {
            action: "open the repository directory",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// Creates the directories between `dir` and `key`'s file, flushing each new entry.
fn make_parents(dir: &Path, key: &str) -> Result<(), StoreError> {
    let mut path = dir.to_owned();
    let segments: Vec<&str> = key.split('/').collect();
    for segment in &segments[..segments.len().saturating_sub(1)] {
        let parent = path.clone();
        path.push(segment);
        match fs::create_dir(&path) {
            Ok(()) => sync_dir(&parent)?,
            Err(e) if e.kind() == ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(source) => {
                return Err(StoreError::Io {
                    action: "create the directory",
                    path,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Opens and locks `<dir>/.molt-store.lock`; the lock goes with the returned file.
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|source| StoreError::Io {
            action: "open the lock file",
            path: path.clone(),
            source,
        })?;
    file.lock().map_err(|source| StoreError::Io {
        action: "lock",
        path,
        source,
    })?;
    Ok(file)
}

/// The lower-case hex SHA-256 of a file.
fn hash_file(path: &Path) -> io::Result<String> {
    let (_, sha256) = molt_schema::artifact::hash_reader(File::open(path)?)?;
    Ok(sha256.to_string())
}

/// Makes `dir`'s entries durable (unix; elsewhere a no-op).
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            action: "flush the directory",
            path: dir.to_owned(),
            source,
        })?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// A flushed temporary file beside the destination, removed on drop unless renamed.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn write(dir: &Path, bytes: &[u8]) -> Result<TempFile, StoreError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        let mut tries = 0;
        let (path, mut file) = loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{TEMP_PREFIX}{pid}-{n}"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                // A leftover of an earlier process with the same pid.
                Err(e) if e.kind() == ErrorKind::AlreadyExists && tries < 100 => tries += 1,
                Err(source) => {
                    return Err(StoreError::Io {
                        action: "create a temporary file",
                        path,
                        source,
                    });
                }
            }
        };
        let tmp = TempFile { path, keep: false };
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|source| StoreError::Io {
                action: "write",
                path: tmp.path.clone(),
                source,
            })?;
        Ok(tmp)
    }

    fn rename_to(mut self, dest: &Path) -> Result<(), StoreError> {
        fs::rename(&self.path, dest).map_err(|source| StoreError::Io {
            action: "move a new object into place at",
            path: dest.to_owned(),
            source,
        })?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: a leftover `.molt-tmp-…` is never listed.
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, FsStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path());
        (dir, store)
    }

    #[tokio::test]
    async fn etag_is_the_sha256_and_if_match_takes_it_quoted_or_not() {
        let (_dir, store) = store();
        store
            .put(
                "metadata/1.root.json",
                b"abc".to_vec(),
                Condition::IfNoneMatch,
            )
            .await
            .unwrap();
        let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let got = store.get("metadata/1.root.json").await.unwrap().unwrap();
        assert_eq!(got.etag, sha);
        assert_eq!(
            store.head("metadata/1.root.json").await.unwrap().as_deref(),
            Some(sha)
        );
        store
            .put(
                "metadata/1.root.json",
                b"def".to_vec(),
                Condition::IfMatch(format!("\"{}\"", sha.to_ascii_uppercase())),
            )
            .await
            .unwrap();
        let e = store
            .put(
                "metadata/1.root.json",
                b"ghi".to_vec(),
                Condition::IfMatch(sha.to_owned()),
            )
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::PreconditionFailed { .. }), "{e:?}");
        // If-Match on a missing object fails too (as on S3).
        let e = store
            .put("missing", b"x".to_vec(), Condition::IfMatch(sha.to_owned()))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::PreconditionFailed { .. }), "{e:?}");
        assert_eq!(store.get("missing").await.unwrap(), None);
    }

    #[tokio::test]
    async fn no_temporary_file_or_lock_is_left_or_listed() {
        let (dir, store) = store();
        store
            .put("a/b.json", b"1".to_vec(), Condition::None)
            .await
            .unwrap();
        store
            .put("a/b.json", b"2".to_vec(), Condition::None)
            .await
            .unwrap();
        let _ = store
            .put("a/b.json", b"3".to_vec(), Condition::IfNoneMatch)
            .await
            .unwrap_err();
        let names: Vec<String> = fs::read_dir(dir.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["b.json"]);
        assert!(dir.path().join(LOCK_FILE).exists());
        // A leftover temporary file of a killed writer is not listed.
        fs::write(dir.path().join("a/.molt-tmp-1-1"), b"junk").unwrap();
        assert_eq!(store.list("").await.unwrap(), vec!["a/b.json"]);
        assert_eq!(&store.get("a/b.json").await.unwrap().unwrap().bytes, b"2");
    }

    #[tokio::test]
    async fn a_missing_directory_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::new(dir.path().join("nope"));
        for e in [
            store.get("metadata/timestamp.json").await.unwrap_err(),
            store.head("metadata/timestamp.json").await.unwrap_err(),
            store.list("").await.unwrap_err(),
            store
                .put("k", b"x".to_vec(), Condition::IfNoneMatch)
                .await
                .unwrap_err(),
        ] {
            assert!(matches!(e, StoreError::NoSuchDirectory { .. }), "{e:?}");
            assert!(e.hint().unwrap().contains("create the directory"));
        }
        assert!(!dir.path().join("nope").exists());
        let created = FsStore::create(dir.path().join("nope")).unwrap();
        assert_eq!(created.get("k").await.unwrap(), None);
    }

    #[tokio::test]
    async fn keys_are_checked_and_odd_paths_are_absent() {
        let (dir, store) = store();
        for bad in ["../escape", "/etc/passwd", "a//b", ".molt-store.lock"] {
            let e = store.get(bad).await.unwrap_err();
            assert!(matches!(e, StoreError::BadKey { .. }), "{bad}: {e:?}");
            let e = store
                .put(bad, b"x".to_vec(), Condition::None)
                .await
                .unwrap_err();
            assert!(matches!(e, StoreError::BadKey { .. }), "{bad}: {e:?}");
        }
        assert!(!dir.path().parent().unwrap().join("escape").exists());
        store
            .put("file", b"x".to_vec(), Condition::None)
            .await
            .unwrap();
        store
            .put("dir/x", b"x".to_vec(), Condition::None)
            .await
            .unwrap();
        // Under a file, and a directory itself: no object.
        assert_eq!(store.get("file/x").await.unwrap(), None);
        assert_eq!(store.head("dir").await.unwrap(), None);
        // Writing under a file is an error that names the path.
        let e = store
            .put("file/x", b"x".to_vec(), Condition::None)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Io { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn list_filters_by_prefix_and_sorts() {
        let (_dir, store) = store();
        for key in [
            "targets/b.tar.gz",
            "metadata/2.root.json",
            "metadata/1.root.json",
            "metadata-other/x",
            "targets/a.tar.gz",
        ] {
            store
                .put(key, key.as_bytes().to_vec(), Condition::IfNoneMatch)
                .await
                .unwrap();
        }
        assert_eq!(
            store.list("metadata/").await.unwrap(),
            vec!["metadata/1.root.json", "metadata/2.root.json"]
        );
        assert_eq!(
            store.list("metadata").await.unwrap(),
            vec![
                "metadata-other/x",
                "metadata/1.root.json",
                "metadata/2.root.json"
            ]
        );
        assert_eq!(
            store.list("targets/a").await.unwrap(),
            vec!["targets/a.tar.gz"]
        );
        assert_eq!(store.list("").await.unwrap().len(), 5);
        assert!(store.list("nothing/").await.unwrap().is_empty());
        assert!(matches!(
            store.list("../").await,
            Err(StoreError::BadKey { .. })
        ));
    }

    #[test]
    fn describe_is_a_file_url() {
        let store = FsStore::new("/srv/molt repo/us-east-1");
        assert_eq!(store.describe(), "file:///srv/molt%20repo/us-east-1/");
    }
}
