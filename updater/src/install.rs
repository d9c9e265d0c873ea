//! Install (SPEC §6 step 7): the staged directory becomes `versions/<v>`, everything is
//! fsynced, `.valid` is written last with the hash of every file, and the new agent's
//! `--version` must name the version it was installed as. A version installed earlier is
//! [checked](reusable) against those hashes before it is used again, and versions are
//! [removed](remove_version) `.valid` first.

use std::path::{Path, PathBuf};
use std::process::Command;
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
    #[error("pre-flight check failed: `{program} {args}` did not finish within {seconds} s")]
    Hung {
        program: PathBuf,
        args: String,
        seconds: u64,
    },
    #[error("`{program} check-config` refused the config: {detail}")]
    ConfigRefused { program: PathBuf, detail: String },
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
    installed::record(layout, v, files.iter().map(|f| (f.name.clone(), f.hash)))?;
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

/// Runs `program args` with no input and a 10 s limit ([`molt_host::process::run_bounded`]).
fn run_bounded(
    program: &Path,
    args: &[&std::ffi::OsStr],
) -> Result<molt_host::process::Bounded, InstallError> {
    use molt_host::process::BoundedError;
    let limit = Duration::from_secs(10);
    molt_host::process::run_bounded(Command::new(program).args(args), limit).map_err(|e| match e {
        BoundedError::Spawn { source, .. } => InstallError::CannotRun {
            program: program.to_owned(),
            source,
        },
        BoundedError::Hung { .. } => InstallError::Hung {
            program: program.to_owned(),
            args: args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            seconds: limit.as_secs(),
        },
    })
}

/// Runs `versions/<v>/bin/agent --version`; it must print `agent <v>`.
pub fn preflight(layout: &HostLayout, v: &Version) -> Result<(), InstallError> {
    let program = layout.version_dir(v).join("bin").join("agent");
    let ran = run_bounded(&program, &["--version".as_ref()])?;
    let printed = ran.stdout.trim().to_owned();
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

/// How an installed agent took the host's config.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigCheck {
    Accepted,
    /// The agent predates `check-config` (it knows no such command): it cannot say.
    Unsupported,
}

/// Runs `versions/<v>/bin/agent [--config FILE] check-config`: the version's own reading
/// of the host's config, with the environment the updater has (which the agent it starts
/// inherits). A version that would refuse the config at start must never be switched to,
/// nor be the version a rollback relies on.
pub fn config_check(
    layout: &HostLayout,
    v: &Version,
    config: Option<&Path>,
) -> Result<ConfigCheck, InstallError> {
    let program = layout.version_dir(v).join("bin").join("agent");
    let mut args: Vec<&std::ffi::OsStr> = Vec::new();
    if let Some(c) = config {
        args.extend(["--config".as_ref(), c.as_os_str()]);
    }
    args.push("check-config".as_ref());
    let ran = run_bounded(&program, &args)?;
    if ran.status.success() {
        return Ok(ConfigCheck::Accepted);
    }
    if predates_check_config(ran.status.code(), &ran.stderr) {
        return Ok(ConfigCheck::Unsupported);
    }
    let mut detail: String = ran
        .stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ");
    if detail.is_empty() {
        detail = format!("it exited with {}", ran.status);
    }
    if detail.len() > 1000 {
        let mut end = 1000;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        detail.push('…');
    }
    Err(InstallError::ConfigRefused { program, detail })
}

/// clap's usage error for a command the agent does not know, and nothing else: exit 2 and
/// a first line naming exactly `check-config`.
fn predates_check_config(code: Option<i32>, stderr: &str) -> bool {
    code == Some(2)
        && stderr
            .lines()
            .next()
            .is_some_and(|l| l.trim_end() == "error: unrecognized subcommand 'check-config'")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an agent built before `check-config` prints is clap's own rendering.
    #[test]
    fn an_agent_without_check_config_is_recognised_by_clap_s_words() {
        let old_agent = clap::Command::new("agent")
            .arg(clap::Arg::new("config").long("config").global(true))
            .subcommand(clap::Command::new("run"))
            .subcommand(clap::Command::new("status"));
        let e = old_agent
            .try_get_matches_from(["agent", "--config", "/etc/molt/agent.toml", "check-config"])
            .unwrap_err();
        let rendered = e.render().to_string();
        assert!(predates_check_config(Some(2), &rendered), "{rendered}");
        // a config error that quotes the words is not that
        let refusal = "error: invalid config file /etc/molt/agent.toml: TOML parse error at line 2\n\
                       2 | note = \"unrecognized subcommand 'check-config'\"\n";
        assert!(!predates_check_config(Some(2), refusal));
        assert!(!predates_check_config(Some(1), &rendered));
    }
}
