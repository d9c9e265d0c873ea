//! The host: its directory layout (SPEC §5) and the versioned state files that the
//! updater and the agent both read and write.
//!
//! ```text
//! <root>/versions/<v>/bin/{agent,updater}, VERSION   immutable once installed; `.valid` written last
//! <root>/current -> versions/<v>                     switched by rename(2) of a fresh symlink
//! <root>/bin/updater, <root>/bin/updater.previous    the standalone updater (a real file)
//! <root>/state/                                      journal.json, history.jsonl, update.lock, seed,
//!                                                    health.json, agent.pid, agent.log,
//!                                                    quarantine.json, last-run.json, tuf/<region>/,
//!                                                    cache/
//! ```

pub mod agent_dir;
pub mod attempt;
pub mod build;
pub mod config;
pub mod installed;
pub mod lock;
pub mod process;
pub mod request;
pub mod schedule;
pub mod seed;
pub mod state;

use std::path::{Path, PathBuf};

use molt_schema::artifact::Sha256;
use molt_schema::version::Version;

/// Fills `buf` from the kernel's random source (for nonces, ids and random seeds).
pub fn random_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// A fresh random token of 24 hex digits, for nonces and ids (the one generator both
/// binaries use). Should the kernel's random source fail, the clock's nanoseconds stand
/// in: an id must still be unique on this host, and a nonce only has to differ from the
/// last one.
pub fn random_token() -> String {
    let mut buf = [0u8; 12];
    if random_bytes(&mut buf).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        buf.copy_from_slice(&nanos.to_le_bytes()[..12]);
    }
    let mut out = String::with_capacity(24);
    for b in buf {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The default install root.
pub const DEFAULT_ROOT: &str = "/opt/molt";

/// Paths under one install root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLayout {
    root: PathBuf,
}

impl HostLayout {
    pub fn new(root: impl Into<PathBuf>) -> HostLayout {
        HostLayout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn versions_dir(&self) -> PathBuf {
        self.root.join("versions")
    }
    pub fn version_dir(&self, v: &Version) -> PathBuf {
        self.versions_dir().join(v.to_string())
    }
    /// `versions/<v>/.valid`: written last when a version is installed.
    pub fn valid_marker(&self, v: &Version) -> PathBuf {
        self.version_dir(v).join(".valid")
    }
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }
    pub fn bin_dir(&self) -> PathBuf {
        self.root.join("bin")
    }
    pub fn updater_bin(&self) -> PathBuf {
        self.bin_dir().join("updater")
    }
    pub fn updater_previous(&self) -> PathBuf {
        self.bin_dir().join("updater.previous")
    }
    /// The updaters to run, in the order to try them: the standalone `bin/updater`, the one
    /// it replaced (`bin/updater.previous`), then the current version's.
    pub fn updater_candidates(&self) -> [PathBuf; 3] {
        [
            self.updater_bin(),
            self.updater_previous(),
            self.current_link().join("bin").join("updater"),
        ]
    }
    /// The first of [`HostLayout::updater_candidates`] that runs ([`process::runs_as_updater`]),
    /// with why each one before it was passed over.
    pub fn runnable_updater(&self) -> (Option<PathBuf>, Vec<String>) {
        let mut passed_over = Vec::new();
        for candidate in self.updater_candidates() {
            match process::runs_as_updater(&candidate) {
                Ok(()) => return (Some(candidate), passed_over),
                Err(why) => passed_over.push(format!("{}: {why}", candidate.display())),
            }
        }
        (None, passed_over)
    }
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    pub fn journal(&self) -> PathBuf {
        self.state_dir().join("journal.json")
    }
    pub fn history(&self) -> PathBuf {
        self.state_dir().join("history.jsonl")
    }
    /// `state/last-run.json`: how the last run the agent launched ended
    /// ([`attempt::RunResult`]).
    pub fn last_run(&self) -> PathBuf {
        self.state_dir().join(attempt::LAST_RUN_FILE)
    }
    pub fn lock(&self) -> PathBuf {
        self.state_dir().join("update.lock")
    }
    pub fn seed(&self) -> PathBuf {
        self.state_dir().join("seed")
    }
    /// `agent/`: the agent's own directory, the only one an unprivileged agent may write
    /// (SPEC §5 as amended in docs/architecture.md). Root's state is `state/`; root reads
    /// from here only size-capped, parsed files, never through a link.
    pub fn agent_dir(&self) -> PathBuf {
        self.root.join("agent")
    }
    /// `agent/health.json`: the running agent's report (the health check reads it).
    pub fn health(&self) -> PathBuf {
        self.agent_dir().join("health.json")
    }
    /// `state/health.json`, where agents before the split wrote their report: the health
    /// check of such an agent (a rollback to an older version) reads it there.
    pub fn legacy_health(&self) -> PathBuf {
        self.state_dir().join("health.json")
    }
    /// `agent/requests/`: the agent's requests for a run (`updater requests` takes them).
    pub fn requests_dir(&self) -> PathBuf {
        self.agent_dir().join("requests")
    }
    pub fn agent_pid(&self) -> PathBuf {
        self.state_dir().join("agent.pid")
    }
    pub fn agent_log(&self) -> PathBuf {
        self.state_dir().join("agent.log")
    }
    pub fn quarantine(&self) -> PathBuf {
        self.state_dir().join("quarantine.json")
    }
    /// `state/updater-quarantine.json`: molt-updater versions that failed their pre-flight.
    pub fn updater_quarantine(&self) -> PathBuf {
        self.state_dir().join("updater-quarantine.json")
    }
    /// `state/tuf`: one datastore per region below it.
    pub fn tuf_dir(&self) -> PathBuf {
        self.state_dir().join("tuf")
    }
    pub fn cache_dir(&self) -> PathBuf {
        self.state_dir().join("cache")
    }
    /// `versions/.staging-<v>`: where a download is unpacked. On the filesystem of
    /// `versions/` (not in `cache/`), so the install is a rename even when `state/` or
    /// `state/cache` is a mount of its own. Not a version name, so never taken for one.
    pub fn staging_dir(&self, v: &Version) -> PathBuf {
        self.versions_dir().join(format!(".staging-{v}"))
    }
    /// `cache/<sha256>.partial`: a download's bytes so far.
    pub fn partial(&self, sha: &Sha256) -> PathBuf {
        self.cache_dir().join(format!("{sha}.partial"))
    }

    /// The version `current` points at, if it points at an installed, valid version.
    pub fn current_version(&self) -> Option<Version> {
        let target = std::fs::read_link(self.current_link()).ok()?;
        let name = target.file_name()?.to_str()?;
        let v: Version = name.parse().ok()?;
        self.is_valid(&v).then_some(v)
    }

    /// True when `versions/<v>` was installed completely (`.valid` exists).
    pub fn is_valid(&self, v: &Version) -> bool {
        self.valid_marker(v).is_file()
    }

    /// Every directory under `versions/` whose name is a version, valid or not.
    pub fn installed_versions(&self) -> Vec<Version> {
        let mut out: Vec<Version> = std::fs::read_dir(self.versions_dir())
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The agent program of the current version.
    pub fn current_agent(&self) -> PathBuf {
        self.current_link().join("bin").join("agent")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_version_requires_valid() {
        let dir = tempfile::tempdir().unwrap();
        let layout = HostLayout::new(dir.path());
        let v: Version = "1.2.0".parse().unwrap();
        assert_eq!(layout.current_version(), None);
        std::fs::create_dir_all(layout.version_dir(&v)).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink("versions/1.2.0", layout.current_link()).unwrap();
        assert_eq!(layout.current_version(), None, "no .valid yet");
        std::fs::write(layout.valid_marker(&v), b"").unwrap();
        assert_eq!(layout.current_version(), Some(v.clone()));
        std::fs::create_dir_all(layout.versions_dir().join("not-a-version")).unwrap();
        assert_eq!(layout.installed_versions(), vec![v]);
    }

    /// An updater that does not run is passed over for the next: empty, not executable,
    /// failing, another program, or (an empty file, which a shell would run as a script
    /// that succeeds) nothing at all.
    #[test]
    fn the_first_updater_that_runs_is_chosen() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let layout = HostLayout::new(dir.path());
        std::fs::create_dir_all(layout.bin_dir()).unwrap();
        let script = |path: &Path, text: &str, mode: u32| {
            std::fs::write(path, text).unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        let (bin, previous) = (layout.updater_bin(), layout.updater_previous());
        script(&previous, "#!/bin/sh\necho updater 1.2.3\n", 0o755);
        for (text, mode, why) in [
            ("", 0o755, "empty"),
            ("#!/bin/sh\necho updater 9.9.9\n", 0o644, "not executable"),
            ("#!/bin/sh\nexit 3\n", 0o755, "exit status: 3"),
            ("#!/bin/sh\necho agent 1.2.3\n", 0o755, "agent 1.2.3"),
            ("\x7fELF\x02\x01", 0o755, ""),
        ] {
            script(&bin, text, mode);
            let (chosen, passed_over) = layout.runnable_updater();
            assert_eq!(
                chosen.as_ref(),
                Some(&previous),
                "{text:?}: {passed_over:?}"
            );
            assert_eq!(passed_over.len(), 1, "{text:?}");
            assert!(passed_over[0].contains(why), "{text:?}: {passed_over:?}");
        }
        script(&bin, "#!/bin/sh\necho updater 2.0.0\n", 0o755);
        assert_eq!(layout.runnable_updater().0, Some(bin.clone()));
        std::fs::remove_file(&bin).unwrap();
        std::fs::remove_file(&previous).unwrap();
        let (chosen, passed_over) = layout.runnable_updater();
        assert_eq!(chosen, None);
        assert_eq!(passed_over.len(), 3, "{passed_over:?}");
    }
}
