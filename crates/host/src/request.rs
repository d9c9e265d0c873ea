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
//! Root treats the directory as hostile: every entry is removed, links and directories
//! included, without following a link; only regular files of at most
//! [`MAX_REQUEST_BYTES`] are read, at most [`MAX_READ`] of them, and a request must parse
//! exactly.

use std::path::{Path, PathBuf};

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
pub fn take_all(layout: &HostLayout) -> Taken {
    let dir = layout.requests_dir();
    let mut taken = Taken::default();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return taken;
    };
    // Newest first (launch ids begin with their time), so that a flood's cap keeps the
    // newest requests.
    let mut names: Vec<std::ffi::OsString> = entries
        .flatten()
        .map(|e| e.file_name())
        .take(MAX_READ * 64)
        .collect();
    names.sort_unstable_by(|a, b| b.cmp(a));
    let mut valid: Vec<Request> = Vec::new();
    for (read, name) in names.into_iter().enumerate() {
        let path = dir.join(&name);
        let shown: String = name.to_string_lossy().chars().take(80).collect();
        match read_request(&path, read < MAX_READ) {
            Ok(r) => valid.push(r),
            Err(why) => taken.refused.push(format!("{shown}: {why}")),
        }
        if let Err(e) = remove_entry(&path) {
            taken
                .refused
                .push(format!("{shown}: cannot remove it: {e}"));
        } else {
            taken.removed += 1;
        }
    }
    if taken.removed > 0 {
        let _ = state::sync_dir(&dir);
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

/// Reads one entry as a request (`read`: whether the cap on requests read leaves room).
fn read_request(path: &Path, read: bool) -> Result<Request, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if !read {
        return Err(format!("more than {MAX_READ} requests at once"));
    }
    let bytes = state::read_no_follow_capped(path, MAX_REQUEST_BYTES).map_err(|e| e.to_string())?;
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
}

/// Removes a file, a link (not what it points at) or a directory tree (std's removal does
/// not follow links inside it either).
fn remove_entry(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    }
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
        std::fs::create_dir_all(dir.join("sub/deeper")).unwrap();
        std::os::unix::fs::symlink(d.path(), dir.join("sub/deeper/up")).unwrap();
        let taken = take_all(&layout);
        assert!(taken.run.is_none(), "{:?}", taken.run);
        assert_eq!(taken.removed, 5);
        assert_eq!(taken.refused.len(), 5, "{:?}", taken.refused);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            forged,
            "the link's target is kept"
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
