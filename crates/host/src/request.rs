//! An unprivileged agent's request for a run: `agent/requests/<launch id>.json`.
//!
//! Under systemd the agent runs as its own user and cannot start an update (which needs
//! root). It [`submit`]s a request instead; `molt-update.path` sees the directory is not
//! empty and starts the root-owned `molt-update.service`, whose `updater requests`
//! [`take_all`]s them. A request means only "run now": an update to `latest`, or a
//! recovery. The target, the flags, the source and the trusted root all come from root's
//! own config and the signed repository. The launch id only names the run, so that the
//! agent can find its result in `state/last-run.json`.
//!
//! Root treats the directory as hostile: everything is done through descriptors, never
//! through a link; every entry is removed (a link itself, not what it names; a directory
//! only when empty); only regular files of at most [`MAX_REQUEST_BYTES`] are read, at most
//! [`MAX_READ`] of them, and a request must parse exactly.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::HostLayout;
use crate::state::{self, StateError};

/// The format's version.
pub const REQUEST_VERSION: u32 = 1;
/// The largest request read; a real one is under 100 bytes.
pub const MAX_REQUEST_BYTES: u64 = 4096;
/// Requests read per run (all are removed).
pub const MAX_READ: usize = 64;

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// `updater --target-version latest`, as the schedule runs it.
    Update,
    /// `updater recover`.
    Recover,
}

/// One request file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub version: u32,
    /// The agent's launch id ([`crate::attempt::launch_id_from`] checks it).
    pub launch_id: String,
    pub kind: RequestKind,
}

/// Writes a request: a temporary file beside `requests/` (so the path unit never sees a
/// half-written one), then a rename into it. Returns the request's path.
pub fn submit(
    layout: &HostLayout,
    launch_id: &str,
    kind: RequestKind,
) -> Result<PathBuf, StateError> {
    let dir = layout.requests_dir();
    std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
        action: "create",
        path: dir.clone(),
        source,
    })?;
    let request = Request {
        version: REQUEST_VERSION,
        launch_id: launch_id.to_owned(),
        kind,
    };
    let tmp = layout.agent_dir().join(format!(".request-{launch_id}.tmp"));
    state::write_json(&tmp, &request)?;
    let path = dir.join(format!("{launch_id}.json"));
    std::fs::rename(&tmp, &path).map_err(|source| StateError::Io {
        action: "rename into place",
        path: path.clone(),
        source,
    })?;
    state::sync_dir(&dir)?;
    Ok(path)
}

/// What [`take_all`] found.
#[derive(Debug, Default)]
pub struct Taken {
    /// The request to run: an update if any valid request asks for one, else a recovery;
    /// the newest of that kind (launch ids begin with their time).
    pub run: Option<Request>,
    /// Entries removed without being run, each with why.
    pub refused: Vec<String>,
    /// Entries removed in all.
    pub removed: usize,
}

/// Removes every entry of `requests/` and returns what to run.
///
/// Everything is done relative to descriptors: `agent/` is opened without following a link
/// (its parent is root's, so it cannot be swapped), then `requests` inside it the same way,
/// and each entry is looked at, read and unlinked through that descriptor. A `requests`
/// that is a link, a FIFO or anything but a directory is refused; a subdirectory is removed
/// when empty, else moved into `agent/` as `.junk-…` (root never walks a tree the agent
/// made).
pub fn take_all(layout: &HostLayout) -> Taken {
    let mut taken = Taken::default();
    let (agent, dir) = match open_requests(layout) {
        Ok(Some(fds)) => fds,
        Ok(None) => return taken,
        Err(why) => {
            taken.refused.push(why);
            return taken;
        }
    };
    let names: Vec<std::ffi::CString> = match rustix::fs::Dir::read_from(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .take(MAX_READ * 64)
            .collect(),
        Err(e) => {
            taken.refused.push(format!("cannot list the requests: {e}"));
            return taken;
        }
    };
    // Newest first (the agent names a request by its launch id, which begins with its time):
    // of the entries listed (at most 4096 a run), the newest are the ones read.
    let mut names = names;
    names.sort_unstable_by(|a, b| b.cmp(a));
    let mut valid: Vec<Request> = Vec::new();
    for (read, name) in names.into_iter().enumerate() {
        let shown: String = name.to_string_lossy().chars().take(80).collect();
        let (request, is_dir) = read_request(&dir, &name, read < MAX_READ);
        match request {
            Ok(r) => valid.push(r),
            Err(why) => taken.refused.push(format!("{shown}: {why}")),
        }
        let flags = if is_dir {
            rustix::fs::AtFlags::REMOVEDIR
        } else {
            rustix::fs::AtFlags::empty()
        };
        let removed = match rustix::fs::unlinkat(&dir, name.as_c_str(), flags) {
            // A tree is moved out of the way, into agent/ (the agent's own space), so that
            // the directory is empty and the path unit does not fire again for it.
            Err(rustix::io::Errno::NOTEMPTY) => rustix::fs::renameat(
                &dir,
                name.as_c_str(),
                &agent,
                format!(".junk-{}", &crate::random_token()[..12]),
            ),
            other => other,
        };
        match removed {
            Ok(()) => taken.removed += 1,
            Err(e) => taken
                .refused
                .push(format!("{shown}: cannot remove it: {e}")),
        }
    }
    if taken.removed > 0 {
        let _ = rustix::fs::fsync(&dir);
    }
    let kind = if valid.iter().any(|r| r.kind == RequestKind::Update) {
        RequestKind::Update
    } else {
        RequestKind::Recover
    };
    taken.run = valid
        .into_iter()
        .filter(|r| r.kind == kind)
        .max_by(|a, b| a.launch_id.cmp(&b.launch_id));
    taken
}

/// `agent/` and `agent/requests` as directory descriptors; `None` when either does not
/// exist.
fn open_requests(
    layout: &HostLayout,
) -> Result<Option<(rustix::fd::OwnedFd, rustix::fd::OwnedFd)>, String> {
    use rustix::fs::{Mode, OFlags};
    let flags =
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let agent = match rustix::fs::open(layout.agent_dir(), flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "{} is not a directory of its own: {e}",
                layout.agent_dir().display()
            ));
        }
    };
    match rustix::fs::openat(&agent, "requests", flags, Mode::empty()) {
        Ok(fd) => Ok(Some((agent, fd))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(format!(
            "{} is not a directory (a link or a file in its place?): {e}; nothing in it is read",
            layout.requests_dir().display()
        )),
    }
}

/// Reads one entry of `dir` as a request (`read`: whether the cap on requests read leaves
/// room); also says whether it is a directory.
fn read_request(
    dir: &rustix::fd::OwnedFd,
    name: &std::ffi::CStr,
    read: bool,
) -> (Result<Request, String>, bool) {
    use rustix::fs::{FileType, Mode, OFlags};
    let stat = match rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(e) => return (Err(e.to_string()), false),
    };
    let file_type = FileType::from_raw_mode(stat.st_mode);
    if file_type != FileType::RegularFile {
        return (
            Err("not a regular file".into()),
            file_type == FileType::Directory,
        );
    }
    if !read {
        return (Err(format!("more than {MAX_READ} requests at once")), false);
    }
    let parse = || -> Result<Request, String> {
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| e.to_string())?;
        let file = std::fs::File::from(fd);
        if !file.metadata().map_err(|e| e.to_string())?.is_file() {
            return Err("not a regular file".into());
        }
        let mut bytes = Vec::new();
        use std::io::Read as _;
        file.take(MAX_REQUEST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| e.to_string())?;
        if bytes.len() as u64 > MAX_REQUEST_BYTES {
            return Err(format!("it is larger than {MAX_REQUEST_BYTES} bytes"));
        }
        let request: Request = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if request.version != REQUEST_VERSION {
            return Err(format!(
                "request version {} is not {REQUEST_VERSION}",
                request.version
            ));
        }
        if crate::attempt::launch_id_from(Some(request.launch_id.clone())).is_none() {
            return Err("its launch id is not one the agent makes".into());
        }
        Ok(request)
    };
    (parse(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> (tempfile::TempDir, HostLayout) {
        let dir = tempfile::tempdir().unwrap();
        let layout = HostLayout::new(dir.path());
        (dir, layout)
    }

    #[test]
    fn the_newest_update_wins_and_everything_is_removed() {
        let (_d, layout) = layout();
        submit(&layout, "20261204T020000Z-aaaaaa", RequestKind::Update).unwrap();
        submit(&layout, "20261204T030000Z-bbbbbb", RequestKind::Update).unwrap();
        submit(&layout, "20261204T040000Z-cccccc", RequestKind::Recover).unwrap();
        let taken = take_all(&layout);
        let run = taken.run.unwrap();
        assert_eq!(run.kind, RequestKind::Update);
        assert_eq!(run.launch_id, "20261204T030000Z-bbbbbb");
        assert_eq!(taken.removed, 3);
        assert!(taken.refused.is_empty(), "{:?}", taken.refused);
        assert_eq!(std::fs::read_dir(layout.requests_dir()).unwrap().count(), 0);
        assert!(take_all(&layout).run.is_none());
    }

    #[test]
    fn hostile_entries_are_removed_unread_and_run_nothing() {
        let (d, layout) = layout();
        let dir = layout.requests_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let secret = d.path().join("secret.json");
        let forged = r#"{"version":1,"launch_id":"20261204T020000Z-aaaaaa","kind":"update"}"#;
        std::fs::write(&secret, forged).unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("link.json")).unwrap();
        std::fs::write(dir.join("big.json"), vec![b' '; 10_000]).unwrap();
        std::fs::write(
            dir.join("extra.json"),
            r#"{"version":1,"launch_id":"x","kind":"update","target":"0.1.0"}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("badid.json"),
            r#"{"version":1,"launch_id":"../../etc","kind":"update"}"#,
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("empty")).unwrap();
        std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
        std::os::unix::fs::symlink(d.path(), dir.join("sub/deeper/up")).unwrap();
        let taken = take_all(&layout);
        assert!(taken.run.is_none(), "{:?}", taken.run);
        // All are removed, the tree moved aside unwalked (into agent/, the agent's own).
        assert_eq!(taken.removed, 6, "{:?}", taken.refused);
        assert_eq!(taken.refused.len(), 6, "{:?}", taken.refused);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let junk = std::fs::read_dir(layout.agent_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".junk-"))
            .count();
        assert_eq!(junk, 1);
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            forged,
            "the link's target is kept"
        );
    }

    #[test]
    fn a_link_or_a_fifo_in_place_of_the_directory_is_never_entered() {
        let (d, layout) = layout();
        std::fs::create_dir_all(layout.agent_dir()).unwrap();
        let victim = d.path().join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        std::fs::write(victim.join("precious"), "x").unwrap();
        std::os::unix::fs::symlink(&victim, layout.requests_dir()).unwrap();
        let taken = take_all(&layout);
        assert_eq!((taken.removed, taken.run.is_none()), (0, true));
        assert!(
            taken.refused[0].contains("is not a directory"),
            "{:?}",
            taken.refused
        );
        assert!(
            victim.join("precious").exists(),
            "nothing behind the link is touched"
        );
        std::fs::remove_file(layout.requests_dir()).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            layout.requests_dir(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let taken = take_all(&layout);
        assert_eq!(
            taken.removed, 0,
            "a FIFO does not block: {:?}",
            taken.refused
        );
    }

    #[test]
    fn a_flood_reads_at_most_the_cap_and_removes_all() {
        let (_d, layout) = layout();
        for i in 0..200 {
            submit(
                &layout,
                &format!("20261204T02{:04}Z-aaaaaa", i),
                RequestKind::Update,
            )
            .unwrap();
        }
        let taken = take_all(&layout);
        assert!(taken.run.is_some());
        assert_eq!(taken.removed, 200);
        assert_eq!(taken.refused.len(), 200 - MAX_READ);
        assert_eq!(std::fs::read_dir(layout.requests_dir()).unwrap().count(), 0);
    }
}
