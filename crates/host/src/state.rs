//! The versioned state files (SPEC §5): written atomically (temporary file, fsync,
//! rename, fsync of the directory), each with a `version` field. Readers ignore fields
//! they do not know, so a downgraded updater or agent never breaks on newer state.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use molt_schema::version::Version;

/// The schema version molt writes into every state file.
pub const STATE_VERSION: u32 = 1;

/// The `version` a state file without one is read as (serde's default).
pub(crate) fn state_version() -> u32 {
    STATE_VERSION
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError + use<> {
    let path = path.to_owned();
    move |source| StateError::Io {
        action,
        path,
        source,
    }
}

/// Opens a file of `state/` with `options`, never following a symbolic link as its last
/// component (`O_NOFOLLOW`). A link planted there, by anyone who can write the directory
/// (the agent's own user once it runs without root), would otherwise make a root updater
/// create, append to or read a file anywhere. The error for a link names it and the fix.
pub fn open_no_follow(path: &Path, options: &mut OpenOptions) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // O_NONBLOCK: a FIFO planted in the file's place must not block the open (with the
    // update lock held); it is refused below. Regular files ignore the flag.
    let flags =
        rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC | rustix::fs::OFlags::NONBLOCK;
    let file = options
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                std::io::Error::other(NotFollowed::Link)
            } else {
                e
            }
        })?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other(NotFollowed::Special));
    }
    Ok(file)
}

/// Why [`open_no_follow`] refused a file (the inner error of the `io::Error` it returns).
#[derive(Debug, thiserror::Error)]
pub enum NotFollowed {
    #[error(
        "it is a symbolic link, and molt never follows one in its state directory; remove the link (molt makes a new file)"
    )]
    Link,
    #[error(
        "it is not a regular file (a FIFO, a device or a directory); remove it (molt makes a new file)"
    )]
    Special,
}

impl NotFollowed {
    /// Whether `e` is [`open_no_follow`]'s refusal of a link or of a file that is not regular.
    pub fn is(e: &std::io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<NotFollowed>())
    }
}

/// Opens a log or record file of `state/` to append to it, creating it when it is missing,
/// without following a link ([`open_no_follow`]); a link in its place is replaced
/// ([`remove_link`]).
pub fn open_append(path: &Path, read: bool) -> std::io::Result<File> {
    let open = || {
        open_no_follow(
            path,
            OpenOptions::new().create(true).append(true).read(read),
        )
    };
    open().or_else(|e| {
        remove_link(path, e)?;
        open()
    })
}

/// After `error` opening `path`: when `path` is a symbolic link, removes the link (the link
/// only, never what it points at) with a warning, so the caller can make a new file; else
/// gives `error` back. For the files that are molt's own (the lock, the history, the logs): a
/// host whose lock or history is a link must not stop updating until a person removes it.
/// A FIFO, socket or device in the file's place is removed the same way.
pub fn remove_link(path: &Path, error: std::io::Error) -> std::io::Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Err(error);
    };
    let kind = meta.file_type();
    if kind.is_symlink() {
        tracing::warn!(
            "{} is a symbolic link to {}, and molt never follows one in its state directory; removing the link and making a new file",
            path.display(),
            std::fs::read_link(path)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "(unreadable)".into())
        );
    } else if !kind.is_file() && !kind.is_dir() {
        tracing::warn!(
            "{} is not a regular file (a FIFO, a socket or a device); removing it and making a new file",
            path.display()
        );
    } else {
        return Err(error);
    }
    std::fs::remove_file(path).map_err(|_| error)
}

/// Reads a whole state file without following a link ([`open_no_follow`]).
pub fn read_no_follow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    open_no_follow(path, OpenOptions::new().read(true))?.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Like [`read_no_follow`], for a file another user may write (root reading the agent's
/// directory): at most `limit` bytes, else an error that says so.
pub fn read_no_follow_capped(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    open_no_follow(path, OpenOptions::new().read(true))?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(bytes)
}

/// A JSON file root reads from the agent's directory: no link followed, at most `limit`
/// bytes; `None` when it does not exist.
pub fn read_json_capped<T: DeserializeOwned>(
    path: &Path,
    limit: u64,
) -> Result<Option<T>, StateError> {
    parse_json(path, read_no_follow_capped(path, limit))
}

/// A JSON state file's bytes as read, parsed; `None` when it does not exist.
fn parse_json<T: DeserializeOwned>(
    path: &Path,
    read: std::io::Result<Vec<u8>>,
) -> Result<Option<T>, StateError> {
    match read {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: path.to_owned(),
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// fsyncs a directory, so a rename or a new entry in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

/// Writes `bytes` to `path` atomically: temporary file in the same directory, fsync,
/// rename over `path`, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    // Readable by all: an unprivileged agent reads root's state (the journal, the history,
    // the last run's result) and root reads the agent's. Nothing in either is secret.
    write_atomic_mode(path, bytes, 0o644)
}

/// [`write_atomic`] for a program: the temporary file has its final `mode` from the start,
/// so there is no instant at which `path` exists without it (a crash between a write and a
/// chmod left a standalone updater no one could run).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateError> {
    write_atomic_as(path, bytes, mode, None)
}

/// [`write_atomic_mode`], the temporary file also given to `owner` (uid, gid) through its
/// descriptor before the rename: root writing a file into a directory another user owns
/// never names the file by path after it is in place.
pub fn write_atomic_as(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io_err("create a temporary file in", dir))?;
    // the umask may have taken bits off at creation
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_err("chmod", path))?;
    if let Some((uid, gid)) = owner {
        rustix::fs::fchown(
            tmp.as_file(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )
        .map_err(|e| io_err("chown", path)(e.into()))?;
    }
    tmp.write_all(bytes).map_err(io_err("write", path))?;
    tmp.as_file().sync_all().map_err(io_err("sync", path))?;
    tmp.persist(path).map_err(|e| StateError::Io {
        action: "rename into place",
        path: path.to_owned(),
        source: e.error,
    })?;
    sync_dir(dir)
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Reads a JSON state file; `None` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    parse_json(path, read_no_follow(path))
}

/// Removes a state file and syncs its directory; a missing file is fine.
pub fn remove(path: &Path) -> Result<(), StateError> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// The steps of an update, in order. The journal records each one before it is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Lock held, target resolved; downloading and staging.
    Started,
    /// `versions/<to>` is installed and valid.
    Installed,
    /// About to stop the old agent. `current` still points at `from`.
    Stopping,
    /// About to rename the new `current` into place (it may or may not have happened).
    Switching,
    /// `current` points at `to`; starting and checking the new agent.
    Switched,
    /// The new agent passed its health check and soak; the update is final.
    Committed,
    /// Putting `from` back.
    RollingBack,
    /// `from` is back and running.
    RolledBack,
    /// A step this version of molt does not know (written by a newer one).
    #[serde(other)]
    Unknown,
}

impl Step {
    /// True for the steps after which `current` may point at the new version.
    pub fn after_switch(self) -> bool {
        matches!(self, Step::Switching | Step::Switched | Step::RollingBack)
    }
}

/// `state/journal.json`: the update in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    #[serde(default = "state_version")]
    pub version: u32,
    /// The update's id; the history record carries the same id.
    pub id: String,
    pub from: Option<Version>,
    pub to: Version,
    pub step: Step,
    /// The nonce the new agent must echo in health.json.
    #[serde(default)]
    pub nonce: Option<String>,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    /// When the old agent was stopped (for the downtime figure).
    #[serde(default)]
    pub stopped_at: Option<Timestamp>,
    /// Why a rollback started.
    #[serde(default)]
    pub reason: Option<String>,
    /// Whether the rollback quarantines `to` (it failed its health check). Absent in the
    /// journals of older updaters, which quarantined whenever a reason was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<bool>,
}

/// How an update ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The new version runs and passed its health check.
    Success,
    /// The new version failed its health check; the old one runs again.
    RolledBack,
    /// The update failed before the switch; nothing changed.
    Failed,
    /// Putting the old version back failed.
    RollbackFailed,
    /// An outcome this version of molt does not know.
    #[serde(other)]
    Unknown,
}

/// Durations of an update, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    #[serde(default)]
    pub total_ms: u64,
    #[serde(default)]
    pub download_ms: Option<u64>,
    /// From stopping the old agent to the new (or restored) agent being healthy.
    #[serde(default)]
    pub agent_downtime_ms: Option<u64>,
}

/// One line of `state/history.jsonl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    #[serde(default = "state_version")]
    pub version: u32,
    pub id: String,
    pub from: Option<Version>,
    pub to: Version,
    pub result: Outcome,
    #[serde(default)]
    pub reason: Option<String>,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    #[serde(default)]
    pub timings: Timings,
    /// For a record that is not a success: the kind of failure (older molt versions wrote
    /// none, and ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<crate::attempt::FailureClass>,
}

/// Appends a record to `history.jsonl` and fsyncs it.
pub fn append_history(path: &Path, record: &HistoryRecord) -> Result<(), StateError> {
    let mut line = serde_json::to_vec(record).map_err(|e| StateError::Corrupt {
        path: path.to_owned(),
        detail: e.to_string(),
    })?;
    line.push(b'\n');
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let mut f = open_append(path, true).map_err(io_err("open", path))?;
    // A crash mid-append leaves a last line without its newline: start a line of our own,
    // or this record is glued to the torn one and lost with it.
    if ends_without_newline(&mut f).map_err(io_err("read", path))? {
        line.insert(0, b'\n');
    }
    f.write_all(&line).map_err(io_err("append to", path))?;
    f.sync_all().map_err(io_err("sync", path))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    drop(f);
    if len > HISTORY_COMPACT_BYTES {
        // The record is in; a failed compaction only leaves the file long until next time.
        if let Err(e) = compact_history(path) {
            tracing::warn!("cannot shorten {}: {e}", path.display());
        }
    }
    Ok(())
}

/// How many records `history.jsonl` keeps: once the file passes [`HISTORY_COMPACT_BYTES`]
/// the newest this many are kept and the older ones dropped (a record is about 300 bytes; at
/// one update a day that is years of history).
pub const HISTORY_KEEP: usize = 1000;

/// The size at which `history.jsonl` is shortened to its newest [`HISTORY_KEEP`] records.
pub const HISTORY_COMPACT_BYTES: u64 = 1024 * 1024;

/// Rewrites the history with its newest [`HISTORY_KEEP`] lines, as they are (never parsed
/// and written again: a record of a newer updater keeps every field this one does not
/// know), atomically (a crash leaves the long file or the short one, never a mix) and with
/// the file's own mode.
fn compact_history(path: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt as _;
    let bytes = read_no_follow(path).map_err(io_err("read", path))?;
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    let mut kept = Vec::with_capacity(bytes.len() / 2);
    for line in &lines[lines.len().saturating_sub(HISTORY_KEEP)..] {
        kept.extend_from_slice(line);
        kept.push(b'\n');
    }
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    write_atomic_mode(path, &kept, mode)
}

/// Before a program's output is appended to the log at `path` for a new run: a log past
/// `max_bytes` is moved to `<path>.1` (replacing the one before), so the logs in `state/`
/// hold at most about twice `max_bytes`. A failure is a warning: a log must never keep a
/// program from starting.
pub fn rotate_log(path: &Path, max_bytes: u64) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_file() || meta.len() <= max_bytes {
        return;
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    if let Err(e) = std::fs::rename(path, &old) {
        tracing::warn!("cannot rotate {}: {e}", path.display());
    }
}

/// The most a log in `state/` (`agent.log`, `updater.log`) grows before it is rotated at
/// its program's next start ([`rotate_log`]).
pub const LOG_ROTATE_BYTES: u64 = 16 * 1024 * 1024;

/// Whether the file is non-empty and its last byte is not a newline.
fn ends_without_newline(f: &mut File) -> std::io::Result<bool> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// Reads `history.jsonl`, oldest first. A line that is not a record (a torn last line after
/// a crash, a bad byte, garbage, or a record from a far newer molt) costs that line only: it
/// is skipped with a warning, and the rest is read.
pub fn read_history(path: &Path) -> Result<Vec<HistoryRecord>, StateError> {
    let bytes = match read_no_follow(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        // Not molt's history: the next append replaces the link (or FIFO) with a file.
        Err(e) if NotFollowed::is(&e) => {
            tracing::warn!("{}: {e}; reading no history from it", path.display());
            return Ok(Vec::new());
        }
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let mut records = Vec::new();
    let mut skipped = 0usize;
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(record) => records.push(record),
            Err(e) => {
                skipped += 1;
                if skipped <= 3 {
                    tracing::warn!(
                        "{} line {}: not a history record ({e}); skipping it",
                        path.display(),
                        n + 1
                    );
                }
            }
        }
    }
    if skipped > 3 {
        tracing::warn!(
            "{}: {skipped} lines in all are not history records and were skipped",
            path.display()
        );
    }
    Ok(records)
}

/// The agent's readiness, `agent/health.json`.
///
/// Deviation from the other state files: here `version` is the agent's version (SPEC
/// §6 step 9 names the field so), and the schema version is `schema`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    #[serde(default = "state_version")]
    pub schema: u32,
    /// The agent's version.
    pub version: Version,
    pub pid: u32,
    /// The nonce from `MOLT_HEALTH_NONCE` at the agent's start ("" when none was given).
    pub nonce: String,
    pub started_at: Timestamp,
    pub status: HealthStatus,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Serving.
    Ready,
    /// Shutting down.
    Stopping,
    #[serde(other)]
    Unknown,
}

/// One quarantined version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    pub version: Version,
    pub at: Timestamp,
    pub reason: String,
}

/// `state/quarantine.json`: versions that failed their health check on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    #[serde(default = "state_version")]
    pub version: u32,
    #[serde(default)]
    pub entries: Vec<QuarantineEntry>,
}

impl Quarantine {
    /// Reads the quarantine. One that cannot be read (a bad byte, a torn write by another
    /// tool, a link) is taken as empty, with a warning: it must never stop a host's updates,
    /// and a version it held that is tried again and fails is rolled back and quarantined
    /// again. The next quarantine written replaces the file.
    pub fn load(path: &Path) -> Result<Quarantine, StateError> {
        let empty = Quarantine {
            version: STATE_VERSION,
            entries: Vec::new(),
        };
        match read_json(path) {
            Ok(q) => Ok(q.unwrap_or(empty)),
            // Damaged, a link or a FIFO: nothing in it can be read, and the next quarantine
            // written replaces it. A file that cannot be read for another reason (EIO,
            // EACCES) may hold entries, so it is an error, never overwritten as empty.
            Err(e)
                if matches!(&e, StateError::Corrupt { .. })
                    || matches!(&e, StateError::Io { source, .. } if NotFollowed::is(source)) =>
            {
                tracing::warn!(
                    "{}; taking the quarantine as empty: a version it held may be tried again, and is quarantined again if it fails",
                    molt_schema::cli::one_line(&e)
                );
                Ok(empty)
            }
            Err(e) => Err(e),
        }
    }

    pub fn versions(&self) -> std::collections::BTreeSet<Version> {
        self.entries.iter().map(|e| e.version.clone()).collect()
    }

    pub fn add(&mut self, version: Version, at: Timestamp, reason: String) {
        self.entries.retain(|e| e.version != version);
        self.entries.push(QuarantineEntry {
            version,
            at,
            reason,
        });
    }

    pub fn remove(&mut self, version: &Version) {
        self.entries.retain(|e| &e.version != version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn journal_round_trips_and_tolerates_newer_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/journal.json");
        let j = Journal {
            version: STATE_VERSION,
            id: "u1".into(),
            from: Some(v("1.0.0")),
            to: v("2.0.0"),
            step: Step::Stopping,
            nonce: Some("n".into()),
            started_at: Timestamp::UNIX_EPOCH,
            updated_at: Timestamp::UNIX_EPOCH,
            stopped_at: None,
            reason: None,
            quarantine: None,
        };
        write_json(&path, &j).unwrap();
        assert_eq!(read_json::<Journal>(&path).unwrap(), Some(j.clone()));
        // a newer molt wrote a field and a step we do not know
        let newer = r#"{"version":2,"id":"u2","from":"1.0.0","to":"2.0.0","step":"verifying_sbom",
            "started_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","future":true}"#;
        std::fs::write(&path, newer).unwrap();
        let read: Journal = read_json(&path).unwrap().unwrap();
        assert_eq!(read.step, Step::Unknown);
        assert_eq!(
            read_json::<Journal>(&dir.path().join("missing.json")).unwrap(),
            None
        );
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            read_json::<Journal>(&path),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn history_appends_and_skips_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let rec = record("a");
        append_history(&path, &rec).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"version\":1,\"id\":\"torn").unwrap();
        drop(f);
        let mut rec2 = rec.clone();
        rec2.id = "b".into();
        // a torn line is followed by a newline only when the next append starts one
        std::fs::write(
            &path,
            format!("{}\n{{torn\n", serde_json::to_string(&rec).unwrap()),
        )
        .unwrap();
        append_history(&path, &rec2).unwrap();
        let all = read_history(&path).unwrap();
        assert_eq!(
            all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    /// A link planted in `state/` for each kind of state file: nothing outside is created,
    /// appended to or read, and molt's own files come back as files.
    #[test]
    fn state_files_never_follow_links() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"precious\n").unwrap();
        let gone = dir.path().join("not-there");

        // the history: read as empty, then the append replaces the link
        let history = state.join("history.jsonl");
        std::os::unix::fs::symlink(&outside, &history).unwrap();
        assert!(read_history(&history).unwrap().is_empty());
        append_history(&history, &record("1.0.0")).unwrap();
        assert!(!std::fs::symlink_metadata(&history).unwrap().is_symlink());
        assert_eq!(read_history(&history).unwrap().len(), 1);
        // a dangling link: nothing is created where it points
        std::fs::remove_file(&history).unwrap();
        std::os::unix::fs::symlink(&gone, &history).unwrap();
        append_history(&history, &record("1.0.0")).unwrap();
        assert!(!gone.exists());

        // a JSON state file: refused with the fix, not read
        let health = state.join("health.json");
        std::os::unix::fs::symlink(&outside, &health).unwrap();
        let e = read_json::<serde_json::Value>(&health).unwrap_err();
        let StateError::Io { source, .. } = e else {
            panic!("{e:?}")
        };
        let shown = source.to_string();
        assert!(
            shown.contains("symbolic link") && shown.contains("remove the link"),
            "{shown}"
        );

        // a log
        let log = state.join("agent.log");
        std::os::unix::fs::symlink(&gone, &log).unwrap();
        open_append(&log, false)
            .unwrap()
            .write_all(b"line\n")
            .unwrap();
        assert!(!gone.exists());
        assert_eq!(std::fs::read(&log).unwrap(), b"line\n");

        assert_eq!(std::fs::read(&outside).unwrap(), b"precious\n");

        // a FIFO never blocks an open: refused when read, replaced for molt's own files
        let fifo = |p: &Path| {
            let _ = std::fs::remove_file(p);
            rustix::fs::mkfifoat(rustix::fs::CWD, p, rustix::fs::Mode::RWXU).unwrap();
        };
        let quarantine = state.join("quarantine.json");
        fifo(&quarantine);
        assert!(Quarantine::load(&quarantine).unwrap().entries.is_empty());
        fifo(&history);
        assert!(read_history(&history).unwrap().is_empty());
        append_history(&history, &record("after a fifo")).unwrap();
        assert_eq!(read_history(&history).unwrap().len(), 1);
        let lock = state.join("update.lock");
        fifo(&lock);
        drop(crate::lock::UpdateLock::try_acquire(&lock).unwrap());
        assert!(std::fs::metadata(&lock).unwrap().is_file());
    }

    /// The history and the logs are bounded: past the limit the history keeps its newest
    /// records (and still reads, and takes appends), and a long log moves to `.1`.
    #[test]
    fn the_history_and_the_logs_do_not_grow_without_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let one = serde_json::to_vec(&record("x")).unwrap().len() as u64 + 1;
        let n = (HISTORY_COMPACT_BYTES / one) as usize + 5;
        let mut text = Vec::new();
        for i in 0..n {
            serde_json::to_writer(&mut text, &record(&format!("r{i}"))).unwrap();
            text.push(b'\n');
        }
        std::fs::write(&path, &text).unwrap();
        append_history(&path, &record("last")).unwrap();
        let all = read_history(&path).unwrap();
        assert_eq!(all.len(), HISTORY_KEEP);
        assert_eq!(all.last().unwrap().id, "last");
        assert_eq!(all[0].id, format!("r{}", n + 1 - HISTORY_KEEP));
        assert!(std::fs::metadata(&path).unwrap().len() < HISTORY_COMPACT_BYTES);
        append_history(&path, &record("after")).unwrap();
        assert_eq!(read_history(&path).unwrap().len(), HISTORY_KEEP + 1);

        let log = dir.path().join("agent.log");
        std::fs::write(&log, vec![b'x'; 2000]).unwrap();
        rotate_log(&log, 4096);
        assert!(log.exists(), "a short log stays");
        rotate_log(&log, 1000);
        assert!(!log.exists());
        assert_eq!(
            std::fs::read(dir.path().join("agent.log.1")).unwrap().len(),
            2000
        );
        rotate_log(&log, 1000); // nothing there: nothing to do
    }

    fn record(id: &str) -> HistoryRecord {
        HistoryRecord {
            version: STATE_VERSION,
            id: id.into(),
            from: None,
            to: v("1.0.0"),
            result: Outcome::Success,
            reason: None,
            started_at: Timestamp::UNIX_EPOCH,
            finished_at: Timestamp::UNIX_EPOCH,
            timings: Timings::default(),
            failure: None,
        }
    }

    /// A crash mid-append leaves a last line without its newline; the next record must start
    /// a line of its own, or it is glued to the torn one and lost with it.
    #[test]
    fn an_append_after_a_torn_last_line_starts_a_new_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        append_history(&path, &record("a")).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"version\":1,\"id\":\"torn").unwrap();
        drop(f);
        append_history(&path, &record("b")).unwrap();
        append_history(&path, &record("c")).unwrap();
        let ids: Vec<String> = read_history(&path)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }

    /// One bad byte (not UTF-8) or a garbage line costs that line, not the whole history:
    /// the updater's commit reads the history, and a failure there would stop every later
    /// update on the host.
    #[test]
    fn a_garbage_line_or_a_bad_byte_costs_only_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        append_history(&path, &record("a")).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"\xff\xfe not text at all\n").unwrap();
        f.write_all(b"[1, 2, 3]\n\n   \n").unwrap();
        let mut bad_byte = serde_json::to_vec(&record("x")).unwrap();
        bad_byte[12] = 0xff;
        bad_byte.push(b'\n');
        f.write_all(&bad_byte).unwrap();
        drop(f);
        append_history(&path, &record("b")).unwrap();
        let ids: Vec<String> = read_history(&path)
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn quarantine_add_remove() {
        let mut q = Quarantine::default();
        q.add(v("2.0.0"), Timestamp::UNIX_EPOCH, "failed health".into());
        q.add(v("2.0.0"), Timestamp::UNIX_EPOCH, "again".into());
        assert_eq!(q.entries.len(), 1);
        assert!(q.versions().contains(&v("2.0.0")));
        q.remove(&v("2.0.0"));
        assert!(q.entries.is_empty());
    }

    #[test]
    fn health_has_agent_version_and_schema() {
        let h = Health {
            schema: STATE_VERSION,
            version: v("2.0.0"),
            pid: 42,
            nonce: "abc".into(),
            started_at: Timestamp::UNIX_EPOCH,
            status: HealthStatus::Ready,
        };
        let json = serde_json::to_value(&h).unwrap();
        assert_eq!(json["version"], "2.0.0");
        assert_eq!(json["schema"], 1);
    }
}
