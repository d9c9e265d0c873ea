//! Install (SPEC §6 step 7): the staged directory becomes `versions/<v>`, everything is
//! fsynced, `.valid` is written last with the hash of every file, and the new agent's
//! `--version` must name the version it was installed as. A version installed earlier is
//! [checked](reusable) against those hashes before it is used again, and versions are
//! [removed](remove_version) `.valid` first.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use molt_archive::extract::ExtractedFile;
use molt_host::HostLayout;
use molt_host::installed::{self, NotIntact};
use molt_host::state::sync_dir;
use molt_schema::Version;

use crate::journal::checkpoint;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists but is not a complete install; it was removed, run the update again")]
    Incomplete { path: PathBuf },
    #[error(
        "pre-flight check failed: `{program} --version` printed {printed:?}, expected \"agent {expected}\""
    )]
    WrongVersion {
        program: PathBuf,
        printed: String,
        expected: Version,
    },
    #[error("pre-flight check failed: `{program} --version` could not run")]
    CannotRun {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] molt_host::state::StateError),
    #[error("pre-flight check failed: `{program} --version` did not finish within {seconds} s")]
    Hung { program: PathBuf, seconds: u64 },
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + use<> {
    let path = path.to_owned();
    move |source| InstallError::Io {
        action,
        path,
        source,
    }
}

fn sync_tree(dir: &Path) -> Result<(), InstallError> {
    for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io("stat", &path))?;
        if kind.is_dir() {
            sync_tree(&path)?;
        } else if kind.is_file() {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io("sync", &path))?;
        }
    }
    Ok(sync_dir(dir)?)
}

/// Moves `staging` to `versions/<v>`, syncs it, and writes `.valid` last, recording the
/// hashes of `files` (what the extractor wrote into `staging`).
pub fn install(
    layout: &HostLayout,
    staging: &Path,
    v: &Version,
    files: &[ExtractedFile],
) -> Result<PathBuf, InstallError> {
    let dest = layout.version_dir(v);
    let versions = layout.versions_dir();
    std::fs::create_dir_all(&versions).map_err(io("create", &versions))?;
    if dest.exists() {
        // A leftover of an interrupted install (no .valid), or a version that failed its
        // check: never reuse half a version.
        remove_version(layout, v).map_err(io("remove", &dest))?;
    }
    sync_tree(staging)?;
    std::fs::rename(staging, &dest).map_err(io("move the staged version to", &dest))?;
    sync_dir(&versions)?;
    installed::record(layout, v, files.iter().map(|f| (f.name.clone(), f.sha256)))?;
    Ok(dest)
}

/// Removes `versions/<v>` so that a kill at any instant leaves either a complete version
/// or one without `.valid` (which nothing uses and the next install or clean-up removes).
pub fn remove_version(layout: &HostLayout, v: &Version) -> std::io::Result<()> {
    installed::unmark(layout, v)?;
    checkpoint("removing_version");
    installed::remove(layout, v)
}

/// Why an installed version was not reused.
#[derive(Debug, thiserror::Error)]
pub enum NotReusable {
    #[error(transparent)]
    Files(#[from] NotIntact),
    #[error(transparent)]
    Preflight(#[from] InstallError),
}

/// Checks an installed version before it is used again: its files against the hashes
/// `.valid` recorded, then the pre-flight.
pub fn reusable(layout: &HostLayout, v: &Version) -> Result<(), NotReusable> {
    installed::check(layout, v)?;
    preflight(layout, v)?;
    Ok(())
}

/// Runs `versions/<v>/bin/agent --version`; it must print `agent <v>`.
pub fn preflight(layout: &HostLayout, v: &Version) -> Result<(), InstallError> {
    let program = layout.version_dir(v).join("bin").join("agent");
    let mut child = Command::new(&program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| InstallError::CannotRun {
            program: program.clone(),
            source,
        })?;
    let limit = Duration::from_secs(10);
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if started.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(InstallError::Hung {
                    program,
                    seconds: limit.as_secs(),
                });
            }
            Err(source) => return Err(InstallError::CannotRun { program, source }),
        }
    }
    let mut printed = String::new();
    if let Some(mut out) = child.stdout.take() {
        use std::io::Read as _;
        let _ = out.by_ref().take(4096).read_to_string(&mut printed);
    }
    let printed = printed.trim().to_owned();
    if printed == format!("agent {v}") {
        Ok(())
    } else {
        Err(InstallError::WrongVersion {
            program,
            printed,
            expected: v.clone(),
        })
    }
}
