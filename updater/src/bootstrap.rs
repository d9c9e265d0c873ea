//! The OS package's hand-over (`updater bootstrap`): a `.deb` or `.rpm` carries one
//! release's molt-agent archive, byte for byte the target the release signed, with
//! `bootstrap.json` beside it. Its maintainer scripts run this, and the package owns nothing
//! more: `versions/` and `current` stay the updater's.
//!
//! - No version yet, or an older one: the package's version is installed through the same
//!   staging, journal, switch, health check and rollback as any update.
//! - The same version, a newer one, the package's version quarantined here, or one molt
//!   installed here before and has moved away from (a recall, a downgrade): the package
//!   steps aside, and molt keeps the host current from its region.
//! - No service manager running (an image being baked in a chroot, or `--offline`): the
//!   version is installed and `current` points at it; the agent starts at the first boot.
//!
//! The bytes are checked against the length and sha256 in `bootstrap.json`, while they are
//! extracted, as a download is. Both came in the one package, so this catches a damaged
//! file, not an attacker: whoever can replace the package chooses the agent and the trusted
//! root alike, so the package must come from where the operator trusts (a signed
//! repository, or a download checked against a checksum published elsewhere:
//! docs/operations.md, "Installing from the packages").

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use molt_fetch::transport::{MoltTransport, Url};
use molt_fetch::tuf::TargetInfo;
use molt_host::config::ServiceKind;
use molt_host::state::{self, Quarantine};
use molt_schema::artifact::Sha256;
use molt_schema::resolve::{InstallReason, Plan};
use molt_schema::{PackageName, Platform, Version};
use serde::{Deserialize, Serialize};

use crate::error::UpdateError;
use crate::lock::UpdateLock;
use crate::service::ServiceManager;
use crate::settings::Settings;
use crate::update::{self, UpdateOptions, UpdateReport};
use crate::{commit, recover, switch};

/// Where the packages put the release: `bootstrap.json`, the archive and `root.json`.
pub const DEFAULT_DIR: &str = "/usr/lib/molt";

/// The name of the description in the package's directory.
pub const DESCRIPTION: &str = "bootstrap.json";

/// `bootstrap.json`, written by `scripts/package.sh` when the package is built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// The format of this file: 1.
    pub format: u32,
    /// The molt-agent version the package carries.
    pub version: Version,
    pub platform: Platform,
    /// The archive's file name, beside this file: `molt-agent-<platform>.tar.gz`.
    pub file: String,
    pub length: u64,
    pub sha256: Sha256,
}

/// Why the package's description cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("cannot read the package's {path}: {detail}")]
    Unreadable { path: PathBuf, detail: String },
    #[error("the package's {path} is format {format}; this updater reads format 1")]
    Format { path: PathBuf, format: u32 },
    #[error("the package's {path} names the archive {file:?}, which is not a file name")]
    BadFile { path: PathBuf, file: String },
    /// The archive does not match `bootstrap.json` (exit 4, as a download that does not
    /// match its signed metadata).
    #[error("the package's {path} is damaged: {detail}; nothing changed")]
    Damaged { path: PathBuf, detail: String },
    /// Offline, an unfinished update cannot be finished (that needs the agent started).
    #[error(
        "an interrupted update's journal is in {path}, and without a running service manager it cannot be finished here"
    )]
    Unfinished { path: PathBuf },
    #[error("the package carries molt {version} for {package}, but this host is {host}")]
    WrongPlatform {
        version: Version,
        package: Platform,
        host: Platform,
    },
}

impl BootstrapError {
    pub fn hint(&self) -> &'static str {
        match self {
            BootstrapError::WrongPlatform { .. } => {
                "install the package built for this host's platform (amd64 or arm64)"
            }
            BootstrapError::Unfinished { .. } => {
                "boot the image (updater recover finishes or undoes the update at boot), then configure the package again"
            }
            _ => {
                "the package's files are damaged or incomplete: reinstall the package (apt-get install --reinstall molt, or dnf reinstall molt)"
            }
        }
    }
}

/// The largest `bootstrap.json` read.
const MAX_DESCRIPTION: u64 = 64 * 1024;

impl Bootstrap {
    /// Reads and checks `dir/bootstrap.json`, never following a link.
    pub fn load(dir: &Path) -> Result<Bootstrap, BootstrapError> {
        let path = dir.join(DESCRIPTION);
        let unreadable = |detail: String| BootstrapError::Unreadable {
            path: path.clone(),
            detail,
        };
        let b: Bootstrap = state::read_json_capped(&path, MAX_DESCRIPTION)
            .map_err(|e| unreadable(molt_schema::cli::one_line(&e)))?
            .ok_or_else(|| unreadable("it does not exist".into()))?;
        if b.format != 1 {
            return Err(BootstrapError::Format {
                path,
                format: b.format,
            });
        }
        let plain = Path::new(&b.file)
            .file_name()
            .is_some_and(|n| n == b.file.as_str());
        if !plain || b.file.starts_with('.') {
            return Err(BootstrapError::BadFile { path, file: b.file });
        }
        Ok(b)
    }
}

/// What `updater bootstrap` decided, before it did anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Install(InstallReason),
    /// The package steps aside; why.
    StepAside(String),
}

/// The package's rule: install `package` only over nothing or an older version, unless
/// molt quarantined it here, or installed it here before (`committed`: the versions of the
/// host's successful updates) and has moved away from it since. So a package introduces
/// its version once: a reinstall or a reconfiguration never brings back a version molt
/// left (recalled, above the region's MaxVersion, or downgraded by hand).
pub fn decide(
    current: Option<&Version>,
    package: &Version,
    quarantined: &BTreeSet<Version>,
    committed: &BTreeSet<Version>,
) -> Decision {
    if quarantined.contains(package) {
        return Decision::StepAside(format!(
            "the package's molt {package} failed its health check on this host before (it is quarantined); molt keeps {}",
            current.map_or_else(|| "nothing".to_owned(), ToString::to_string)
        ));
    }
    if let Some(c) = current
        && c < package
        && committed.contains(package)
    {
        return Decision::StepAside(format!(
            "molt installed {package} on this host before and has moved to {c} since; the package steps aside"
        ));
    }
    match current {
        None => Decision::Install(InstallReason::FirstInstall),
        Some(c) if c < package => Decision::Install(InstallReason::Upgrade),
        Some(c) if c == package => Decision::StepAside(format!(
            "molt {c} is already installed; the package has nothing to add"
        )),
        Some(c) => Decision::StepAside(format!(
            "molt {c} is installed, newer than the package's {package}; the package steps aside and molt keeps this host current from its region"
        )),
    }
}

/// True when the agent's service manager can start and stop it now. Under systemd, that is
/// a booted systemd (`/run/systemd/system`, as sd_booted(3) checks) that this process is
/// not chrooted away from: an image built in a chroot has none, or has the build host's
/// `/run` bound in, whose systemd is not the image's.
fn service_manager_runs(settings: &Settings) -> bool {
    match settings.service {
        ServiceKind::Systemd => Path::new("/run/systemd/system").is_dir() && !in_chroot(),
        ServiceKind::Direct => true,
    }
}

/// Whether this process runs in a chroot: its root is not PID 1's (as systemd's
/// `running_in_chroot` decides), or there is no `/proc` at all.
fn in_chroot() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (std::fs::metadata("/"), std::fs::metadata("/proc/1/root")) {
        (Ok(ours), Ok(init)) => (ours.dev(), ours.ino()) != (init.dev(), init.ino()),
        (Ok(_), Err(_)) => !Path::new("/proc/self").exists(),
        _ => false,
    }
}

/// Runs the hand-over for the package in `dir`; `offline`: install for the next boot,
/// starting and stopping nothing (as without a running service manager).
pub async fn run(
    settings: &Settings,
    dir: &Path,
    svc: &mut dyn ServiceManager,
    progress: bool,
    offline: bool,
) -> Result<UpdateReport, UpdateError> {
    let layout = &settings.layout;
    // A directory typed relative to where the command runs (`--package-dir pkg`): the
    // archive is read through a file:// URL, which needs an absolute path.
    let dir = &std::path::absolute(dir).map_err(|e| BootstrapError::Unreadable {
        path: dir.to_owned(),
        detail: e.to_string(),
    })?;
    let description = Bootstrap::load(dir)?;
    let host = settings.platform()?;
    if host != description.platform {
        return Err(BootstrapError::WrongPlatform {
            version: description.version,
            package: description.platform,
            host,
        }
        .into());
    }
    std::fs::create_dir_all(layout.state_dir())
        .map_err(|e| UpdateError::io("create", &layout.state_dir(), e))?;
    let lock = UpdateLock::try_acquire(&layout.lock())?;
    let offline = offline || !service_manager_runs(settings);
    if offline {
        // Nothing may be started or stopped: only `current` is put right, as before the
        // agent unit starts.
        recover::before_the_start(settings);
        if layout.journal().exists() {
            return Err(BootstrapError::Unfinished {
                path: layout.journal(),
            }
            .into());
        }
    } else if let recover::Recovered::LeftAlone { step } = recover::recover_locked(settings, svc)? {
        return Err(UpdateError::NewerJournal {
            path: layout.journal(),
            step,
        });
    }
    let current = layout.current_version();
    let quarantine = Quarantine::load(&layout.quarantine()).map_err(UpdateError::state)?;
    let committed: BTreeSet<Version> = state::read_history(&layout.history())
        .map_err(UpdateError::state)?
        .into_iter()
        .filter(|r| r.result == state::Outcome::Success)
        .map(|r| r.to)
        .collect();
    let to = description.version.clone();
    let reason = match decide(current.as_ref(), &to, &quarantine.versions(), &committed) {
        Decision::StepAside(message) => {
            return Ok(UpdateReport::Skipped { current, message });
        }
        Decision::Install(reason) => reason,
    };
    let archive = dir.join(&description.file);
    if !archive.is_file() {
        return Err(BootstrapError::Unreadable {
            path: archive,
            detail: "it does not exist".into(),
        }
        .into());
    }
    let url = Url::from_file_path(&archive).map_err(|()| BootstrapError::Unreadable {
        path: archive.clone(),
        detail: "not an absolute path".into(),
    })?;
    let info = TargetInfo {
        name: format!("{}/{to}/{}", PackageName::Agent.as_str(), description.file),
        length: description.length,
        sha256: description.sha256,
    };
    let plan = Plan {
        package: PackageName::Agent.as_str().to_owned(),
        from: current.clone(),
        to: to.clone(),
        reason,
        platform: host,
        file: description.file.clone(),
        target_name: info.name.clone(),
        checksum: Some(description.sha256),
        size: Some(description.length),
        wave_time: None,
    };
    let opts = UpdateOptions {
        target: molt_schema::resolve::Target::Exact(to.clone()),
        allow_downgrade: false,
        force: false,
        ignore_waves: true,
        dry_run: false,
        progress,
    };
    let transport =
        MoltTransport::new(settings.http.clone()).map_err(|e| UpdateError::Failed(e.into()))?;
    // The package's root becomes the host's first trusted root, as `--trusted-root` does for
    // a first install: updates from the region then work whatever the config says, and
    // after the package (and its root.json) is removed.
    let package_root = dir.join("root.json");
    if !settings.saved_trusted_root().exists() && package_root.is_file() {
        let bytes =
            std::fs::read(&package_root).map_err(|e| UpdateError::io("read", &package_root, e))?;
        state::write_atomic(&settings.saved_trusted_root(), &bytes).map_err(UpdateError::state)?;
    }
    let why = format!("{reason}, from the OS package ({})", dir.display());
    let staged =
        match update::stage_and_install(settings, &opts, &transport, &plan, &info, url).await {
            Ok(staged) => staged,
            Err(UpdateError::Download(e)) if e.is_verification() => {
                return Err(BootstrapError::Damaged {
                    path: archive,
                    detail: molt_schema::cli::one_line(&e),
                }
                .into());
            }
            Err(e) => return Err(e),
        };
    let report = if !offline {
        update::switch_and_check(settings, svc, staged, &why)
    } else {
        install_offline(settings, staged, &why)
    };
    drop(lock);
    report
}

/// No service manager runs (an image being built): `current` moves to the installed
/// version and the update is committed; the agent starts when the image boots. Nothing
/// is stopped or started here.
fn install_offline(
    settings: &Settings,
    staged: update::Staged<'_>,
    why: &str,
) -> Result<UpdateReport, UpdateError> {
    let to = staged.to().clone();
    let (mut jw, timings) = staged.into_parts();
    // As in a switch: a crash from here on is recovered from what `current` says.
    jw.set(state::Step::Switching)?;
    switch::point_current(&settings.layout, &to).map_err(UpdateError::state)?;
    let why = format!("{why}; no service manager runs, so the agent starts at the next boot");
    let record = commit::commit(&mut jw, &why, timings)?;
    Ok(UpdateReport::Updated { record })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn the_package_installs_only_over_nothing_or_older() {
        let none = BTreeSet::new();
        let p = v("2.0.0");
        assert_eq!(
            decide(None, &p, &none, &none),
            Decision::Install(InstallReason::FirstInstall)
        );
        assert_eq!(
            decide(Some(&v("1.9.9")), &p, &none, &none),
            Decision::Install(InstallReason::Upgrade)
        );
        // a pre-release is older than its release
        assert_eq!(
            decide(Some(&v("2.0.0-rc.1")), &p, &none, &none),
            Decision::Install(InstallReason::Upgrade)
        );
        for current in ["2.0.0", "2.0.1", "10.0.0"] {
            assert!(
                matches!(
                    decide(Some(&v(current)), &p, &none, &none),
                    Decision::StepAside(_)
                ),
                "{current}"
            );
        }
        let q: BTreeSet<Version> = [p.clone()].into();
        // Installed here before, and molt moved down since (a recall, a downgrade): the
        // package does not bring it back; a version never installed here still goes in.
        let seen: BTreeSet<Version> = [p.clone(), v("1.0.0")].into();
        let Decision::StepAside(why) = decide(Some(&v("1.0.0")), &p, &none, &seen) else {
            panic!("a version molt moved away from must not come back from the package");
        };
        assert!(why.contains("moved to 1.0.0"), "{why}");
        assert_eq!(
            decide(Some(&v("1.0.0")), &v("3.0.0"), &none, &seen),
            Decision::Install(InstallReason::Upgrade)
        );
        let Decision::StepAside(why) = decide(Some(&v("1.0.0")), &p, &q, &none) else {
            panic!("a quarantined package version must not be installed");
        };
        assert!(
            why.contains("quarantined") && why.contains("1.0.0"),
            "{why}"
        );
    }

    #[test]
    fn a_damaged_description_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let good = Bootstrap {
            format: 1,
            version: v("1.0.0"),
            platform: "linux-amd64".parse().unwrap(),
            file: "molt-agent-linux-amd64.tar.gz".into(),
            length: 10,
            sha256: "00".repeat(32).parse().unwrap(),
        };
        let write = |b: &serde_json::Value| {
            std::fs::write(dir.path().join(DESCRIPTION), b.to_string()).unwrap();
        };
        let json = serde_json::to_value(&good).unwrap();
        write(&json);
        assert_eq!(Bootstrap::load(dir.path()).unwrap(), good);
        for (field, value, says) in [
            ("file", "../../etc/passwd", "not a file name"),
            ("file", "bin/agent", "not a file name"),
            ("file", "..", "not a file name"),
            ("file", "", "not a file name"),
            ("format", "2", "format 2"),
            ("sha256", "\"zz\"", "cannot read"),
            ("extra", "1", "cannot read"),
        ] {
            let mut bad = json.clone();
            bad[field] = serde_json::from_str(value).unwrap_or_else(|_| value.into());
            write(&bad);
            let e = Bootstrap::load(dir.path()).unwrap_err().to_string();
            assert!(e.contains(says), "{field}={value}: {e}");
        }
        std::fs::remove_file(dir.path().join(DESCRIPTION)).unwrap();
        let e = Bootstrap::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        // A link to a valid description elsewhere: refused because it is a link.
        let elsewhere = tempfile::tempdir().unwrap();
        let real = elsewhere.path().join(DESCRIPTION);
        std::fs::write(&real, json.to_string()).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join(DESCRIPTION)).unwrap();
        assert!(
            Bootstrap::load(dir.path()).is_err(),
            "a link is not followed"
        );
        assert!(Bootstrap::load(elsewhere.path()).is_ok());
    }
}
