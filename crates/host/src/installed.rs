//! What `versions/<v>/.valid` records: the hash of every file the version was installed
//! with (BLAKE3; SHA-256 in the records of older updaters, see [`FileHash`]), hashed as the
//! verified archive was extracted. `.valid` is written last (temp file,
//! fsync, rename, fsync of the directory), so its presence still means "installed
//! completely"; its contents let a version be checked before it is reused, long after the
//! download that verified it.
//!
//! A version is removed the other way round: `.valid` first, a sync of the directory, then
//! the rest, so a kill at any instant never leaves `.valid` beside a missing `bin/agent`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use molt_schema::Version;
use molt_schema::artifact::{FileHash, FileHasher};
use serde::{Deserialize, Serialize};

use crate::HostLayout;
use crate::state::{self, STATE_VERSION, StateError};

/// The contents of `.valid`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub version: u32,
    /// Each file by its name in the package (e.g. `bin/agent`).
    pub files: BTreeMap<String, FileHash>,
}

/// Why an installed version may not be reused as it is.
#[derive(Debug, thiserror::Error)]
pub enum NotIntact {
    #[error("{path} is missing: the version was never installed completely")]
    NotInstalled { path: PathBuf },
    #[error("{path} records no file hashes (it was installed by an older updater)")]
    Unrecorded { path: PathBuf },
    #[error("{path} cannot be read ({detail})")]
    Unreadable { path: PathBuf, detail: String },
    #[error("{path} is missing")]
    Missing { path: PathBuf },
    #[error(
        "{path} changed since it was installed (it hashes as {found}, installed as {recorded})"
    )]
    Changed {
        path: PathBuf,
        found: FileHash,
        recorded: FileHash,
    },
    #[error("{path} was not installed with the version")]
    Extra { path: PathBuf },
}

/// Writes `.valid` for `v`, recording `files` (name, hash). Call it last, after everything
/// else in the version's directory is synced.
pub fn record(
    layout: &HostLayout,
    v: &Version,
    files: impl IntoIterator<Item = (String, FileHash)>,
) -> Result<(), StateError> {
    let installed = Installed {
        version: STATE_VERSION,
        files: files.into_iter().collect(),
    };
    state::write_json(&layout.valid_marker(v), &installed)
}

/// The files every installed molt-agent version has (SPEC §4): a `.valid` that does not
/// record all of them is not trusted.
pub const REQUIRED: [&str; 3] = ["bin/agent", "bin/updater", "VERSION"];

/// The hash of a regular file's contents, with the algorithm of `like` (the recorded hash
/// it is to be compared with), read in 64 KiB blocks. A symlink (as the last component), a
/// FIFO or a device is refused, never followed or read.
pub fn hash_file(path: &Path, like: &FileHash) -> std::io::Result<FileHash> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    FileHasher::like(like).read_all(f)
}

/// Checks `versions/<v>` against its `.valid`: every recorded file is there with the
/// same hash, and nothing else is (bar the marker itself and a temp file a killed write
/// of it may have left).
pub fn check(layout: &HostLayout, v: &Version) -> Result<(), NotIntact> {
    let marker = layout.valid_marker(v);
    let text = match std::fs::read(&marker) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NotIntact::NotInstalled { path: marker });
        }
        Err(e) => {
            return Err(NotIntact::Unreadable {
                path: marker,
                detail: e.to_string(),
            });
        }
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(NotIntact::Unrecorded { path: marker });
    }
    let installed: Installed =
        serde_json::from_slice(&text).map_err(|e| NotIntact::Unreadable {
            path: marker.clone(),
            detail: e.to_string(),
        })?;
    if installed.files.is_empty() {
        return Err(NotIntact::Unrecorded { path: marker });
    }
    let dir = layout.version_dir(v);
    // Names are the package's own: safe relative paths (never `..` or an absolute path
    // that `join` would put in place of the version's directory).
    let plain = |name: &str| name.parse::<molt_schema::artifact::ArtifactName>().is_ok();
    if let Some(bad) = installed.files.keys().find(|n| !plain(n)) {
        return Err(NotIntact::Unreadable {
            path: marker,
            detail: format!("it names {bad:?}, which is not a file of the version"),
        });
    }
    if let Some(missing) = REQUIRED.iter().find(|r| !installed.files.contains_key(**r)) {
        return Err(NotIntact::Unreadable {
            path: marker,
            detail: format!("it does not record {missing}"),
        });
    }
    for (name, recorded) in &installed.files {
        let path = dir.join(name);
        let found = match hash_file(&path, recorded) {
            Ok(h) => h,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NotIntact::Missing { path });
            }
            Err(e) => {
                return Err(NotIntact::Unreadable {
                    path,
                    detail: e.to_string(),
                });
            }
        };
        if found != *recorded {
            return Err(NotIntact::Changed {
                path,
                found,
                recorded: *recorded,
            });
        }
    }
    let mut present = Vec::new();
    list_files(&dir, &dir, &mut present).map_err(|e| NotIntact::Unreadable {
        path: dir.clone(),
        detail: e.to_string(),
    })?;
    for name in present {
        let leftover = name == ".valid" || (!name.contains('/') && name.starts_with(".tmp"));
        if !leftover && !installed.files.contains_key(&name) {
            return Err(NotIntact::Extra {
                path: dir.join(name),
            });
        }
    }
    Ok(())
}

/// Every entry under `dir` that is not a directory, as a path relative to `base` with `/`.
fn list_files(base: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            list_files(base, &path, out)?;
        } else {
            let rel = path.strip_prefix(base).unwrap_or(&path);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// Takes `.valid` away and syncs the directory: from here on the version no longer counts
/// as installed, whatever happens to the rest of it.
pub fn unmark(layout: &HostLayout, v: &Version) -> std::io::Result<()> {
    match std::fs::remove_file(layout.valid_marker(v)) {
        Ok(()) => std::fs::File::open(layout.version_dir(v))?.sync_all(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes `versions/<v>` crash-safely: [`unmark`] first, then the rest.
pub fn remove(layout: &HostLayout, v: &Version) -> std::io::Result<()> {
    unmark(layout, v)?;
    match std::fs::remove_dir_all(layout.version_dir(v)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn files() -> Vec<(String, FileHash)> {
        vec![
            ("bin/agent".to_owned(), FileHash::of(b"agent bytes")),
            ("bin/updater".to_owned(), FileHash::of(b"updater bytes")),
            ("VERSION".to_owned(), FileHash::of(b"1.2.0\n")),
        ]
    }

    fn installed(dir: &Path) -> (HostLayout, Version) {
        let layout = HostLayout::new(dir);
        let v: Version = "1.2.0".parse().unwrap();
        let bin = layout.version_dir(&v).join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("agent"), b"agent bytes").unwrap();
        std::fs::write(bin.join("updater"), b"updater bytes").unwrap();
        std::fs::write(layout.version_dir(&v).join("VERSION"), b"1.2.0\n").unwrap();
        record(&layout, &v, files()).unwrap();
        (layout, v)
    }

    #[test]
    fn an_untouched_version_is_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, v) = installed(dir.path());
        check(&layout, &v).unwrap();
        // a temp file left by a killed write of `.valid` does not count
        std::fs::write(layout.version_dir(&v).join(".tmpAbC123"), b"{").unwrap();
        check(&layout, &v).unwrap();
    }

    #[test]
    fn changes_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, v) = installed(dir.path());
        let agent = layout.version_dir(&v).join("bin/agent");

        std::fs::write(&agent, b"agent bytez").unwrap();
        let e = check(&layout, &v).unwrap_err();
        assert!(matches!(e, NotIntact::Changed { .. }), "{e}");
        assert!(e.to_string().contains("bin/agent changed"), "{e}");

        std::fs::remove_file(&agent).unwrap();
        let e = check(&layout, &v).unwrap_err();
        assert!(matches!(e, NotIntact::Missing { .. }), "{e}");

        std::fs::write(&agent, b"agent bytes").unwrap();
        std::fs::write(layout.version_dir(&v).join("bin/libevil.so"), b"x").unwrap();
        let e = check(&layout, &v).unwrap_err();
        assert!(matches!(e, NotIntact::Extra { .. }), "{e}");
        assert!(e.to_string().contains("libevil.so"), "{e}");
    }

    #[test]
    fn an_old_or_broken_marker_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, v) = installed(dir.path());
        std::fs::write(layout.valid_marker(&v), b"").unwrap();
        assert!(matches!(
            check(&layout, &v),
            Err(NotIntact::Unrecorded { .. })
        ));
        std::fs::write(layout.valid_marker(&v), b"{\"version\":1,\"fi").unwrap();
        assert!(matches!(
            check(&layout, &v),
            Err(NotIntact::Unreadable { .. })
        ));
        std::fs::write(layout.valid_marker(&v), b"{\"version\":1,\"files\":{}}").unwrap();
        assert!(matches!(
            check(&layout, &v),
            Err(NotIntact::Unrecorded { .. })
        ));
        // a newer updater's marker with fields this one does not know still checks
        let mut newer = serde_json::json!({ "version": 9, "signed_by": "x", "files": {} });
        for (name, sha) in files() {
            newer["files"][name] = serde_json::Value::String(sha.to_string());
        }
        std::fs::write(layout.valid_marker(&v), newer.to_string()).unwrap();
        check(&layout, &v).unwrap();
        // an older updater's marker, with SHA-256 values, is checked with SHA-256
        let sha = |b: &[u8]| molt_schema::artifact::Sha256::digest(b).to_string();
        let older = serde_json::json!({ "version": 1, "files": {
            "bin/agent": sha(b"agent bytes"),
            "bin/updater": sha(b"updater bytes"),
            "VERSION": sha(b"1.2.0\n"),
        }});
        std::fs::write(layout.valid_marker(&v), older.to_string()).unwrap();
        check(&layout, &v).unwrap();
        let agent = layout.version_dir(&v).join("bin/agent");
        std::fs::write(&agent, b"agent bytez").unwrap();
        let e = check(&layout, &v).unwrap_err();
        assert!(e.to_string().contains(&sha(b"agent bytez")), "{e}");
        std::fs::write(&agent, b"agent bytes").unwrap();
        std::fs::remove_file(layout.valid_marker(&v)).unwrap();
        assert!(matches!(
            check(&layout, &v),
            Err(NotIntact::NotInstalled { .. })
        ));
    }

    /// A `.valid` that an attacker or a bug wrote: names outside the version, files it
    /// leaves out, a FIFO or a symlink where a program should be.
    #[test]
    fn a_marker_cannot_point_outside_the_version_or_at_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, v) = installed(dir.path());
        let with = |extra: (&str, FileHash), drop: Option<&str>| {
            let mut f: BTreeMap<String, FileHash> = files().into_iter().collect();
            if let Some(d) = drop {
                f.remove(d);
            }
            f.insert(extra.0.to_owned(), extra.1);
            let text = serde_json::to_string(&Installed {
                version: 1,
                files: f,
            })
            .unwrap();
            std::fs::write(layout.valid_marker(&v), text).unwrap();
        };
        let zero = FileHash::of(b"");
        for name in ["/dev/zero", "../../../etc/passwd", "bin/../../x", ""] {
            with((name, zero), None);
            let e = check(&layout, &v).unwrap_err();
            assert!(
                e.to_string().contains("which is not a file of the version"),
                "{name}: {e}"
            );
        }
        with(("VERSION", FileHash::of(b"1.2.0\n")), Some("bin/agent"));
        let e = check(&layout, &v).unwrap_err();
        assert!(e.to_string().contains("does not record bin/agent"), "{e}");

        record(&layout, &v, files()).unwrap();
        let agent = layout.version_dir(&v).join("bin/agent");
        std::fs::remove_file(&agent).unwrap();
        rustix::fs::mkfifoat(rustix::fs::CWD, &agent, rustix::fs::Mode::RWXU).unwrap();
        let e = check(&layout, &v).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "a FIFO: {e}");
        std::fs::remove_file(&agent).unwrap();
        let elsewhere = dir.path().join("agent-elsewhere");
        std::fs::write(&elsewhere, b"agent bytes").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &agent).unwrap();
        let e = check(&layout, &v).unwrap_err();
        assert!(matches!(e, NotIntact::Unreadable { .. }), "a symlink: {e}");
    }

    #[test]
    fn remove_takes_the_marker_first() {
        let dir = tempfile::tempdir().unwrap();
        let (layout, v) = installed(dir.path());
        remove(&layout, &v).unwrap();
        assert!(!layout.version_dir(&v).exists());
        // removing what is gone is fine
        remove(&layout, &v).unwrap();
    }
}
