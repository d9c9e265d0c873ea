//! Self-update (SPEC §6 step 4): when a newer Active `molt-updater` is eligible (waves
//! and recalls apply), verify it, keep the running one as `bin/updater.previous`,
//! replace `bin/updater` with `self-replace`, and re-exec; the new updater takes the lock
//! again. Only an updater running as `<root>/bin/updater` replaces itself, never under
//! `--dry-run`, and never twice in one run (`MOLT_UPDATER_REEXEC`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use jiff::Timestamp;
use molt_fetch::transport::{MoltTransport, Url};
use molt_fetch::tuf::LoadedRegion;
use molt_host::state;
use molt_schema::resolve::{Decision, Request, Target, resolve};
use molt_schema::rollout::Seed;
use molt_schema::{PackageName, Platform, Version};

use crate::download::{DownloadRequest, check_free_space, download_and_stage};
use crate::error::UpdateError;
use crate::settings::Settings;
use molt_fetch::retry::RetryPolicy;

/// Set on the re-exec'd updater, so it does not self-update again.
pub const REEXEC_ENV: &str = "MOLT_UPDATER_REEXEC";

/// True when the running program is this root's standalone updater.
fn running_as_standalone(settings: &Settings) -> bool {
    let standalone = std::fs::canonicalize(settings.layout.updater_bin());
    let exe = std::env::current_exe().and_then(std::fs::canonicalize);
    matches!((exe, standalone), (Ok(a), Ok(b)) if a == b)
}

/// Replaces `<root>/bin/updater` when a newer molt-updater is eligible; returns the
/// program to re-exec.
#[allow(clippy::too_many_arguments)]
pub async fn maybe_self_update(
    settings: &Settings,
    loaded: &LoadedRegion,
    platform: Platform,
    seed: Seed,
    ignore_waves: bool,
    transport: &MoltTransport,
    base: &Url,
    progress: bool,
) -> Result<Option<PathBuf>, UpdateError> {
    if std::env::var_os(REEXEC_ENV).is_some() || !running_as_standalone(settings) {
        return Ok(None);
    }
    let Ok(current) = molt_host::build::version().parse::<Version>() else {
        return Ok(None);
    };
    // molt-updater versions that failed their pre-flight here are not fetched again on
    // every run; a newer one supersedes them. An unreadable file quarantines nothing.
    let quarantine_path = settings.layout.updater_quarantine();
    let mut quarantine = state::Quarantine::load(&quarantine_path).unwrap_or_default();
    let quarantined: BTreeSet<Version> = quarantine.versions();
    let req = Request {
        package: PackageName::Updater.as_str(),
        platform,
        current: Some(&current),
        target: &Target::Latest,
        allow_downgrade: false,
        force: false,
        ignore_waves,
        quarantined: &quarantined,
        now: Timestamp::now(),
        seed,
    };
    let plan = match resolve(&loaded.manifest, &req) {
        Ok(Decision::Install(plan)) => plan,
        // Nothing newer, or no molt-updater published: keep running this one.
        Ok(Decision::Skip(_)) | Err(_) => return Ok(None),
    };
    let layout = &settings.layout;
    let Some(info) = loaded.target(&plan.target_name) else {
        tracing::warn!(
            "molt-updater {} is in the manifest but not a signed target; not self-updating",
            plan.to
        );
        return Ok(None);
    };
    let url = crate::update::target_url(base, &info)?;
    let cache = layout.cache_dir();
    std::fs::create_dir_all(&cache).map_err(|e| UpdateError::io("create", &cache, e))?;
    let staging = cache.join(format!("staging-updater-{}", plan.to));
    let _ = std::fs::remove_dir_all(&staging);
    check_free_space(&cache, info.length)?;
    let staged = download_and_stage(
        transport,
        &DownloadRequest {
            url,
            expected: &info,
            package: PackageName::Updater,
            platform,
            staging: &staging,
            partial: &layout.partial(&info.sha256),
            limits: &molt_archive::extract::Limits::default(),
            retry: RetryPolicy::DOWNLOAD,
            progress,
        },
    )
    .await;
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e.into());
    }
    let new = staging.join("bin").join("updater");
    let result = replace(
        layout.updater_bin().as_path(),
        layout.updater_previous().as_path(),
        &new,
        &plan.to,
    );
    let _ = std::fs::remove_dir_all(&staging);
    match result {
        Ok(()) => Ok(Some(layout.updater_bin())),
        Err(error) => {
            // A new updater that does not pass its pre-flight is not installed, and not
            // tried again; this one carries on with the agent update.
            let reason = molt_schema::cli::one_line(&error);
            tracing::warn!(
                "not self-updating to molt-updater {}: {reason}; it is quarantined on this host ({})",
                plan.to,
                quarantine_path.display()
            );
            quarantine.add(plan.to.clone(), Timestamp::now(), reason);
            if let Err(e) = state::write_json(&quarantine_path, &quarantine) {
                tracing::warn!("cannot record the quarantine: {e}");
            }
            Ok(None)
        }
    }
}

/// Why a downloaded updater was not installed (logged, and kept as its quarantine reason).
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    #[error(transparent)]
    Run(molt_host::process::BoundedError),
    #[error("its --version printed {printed:?}, expected \"updater {expected}\"")]
    WrongVersion { printed: String, expected: Version },
    #[error("cannot read {path}")]
    ReadCurrent {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot keep the running updater as {path}")]
    KeepPrevious {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("self-replace failed")]
    SelfReplace(#[source] std::io::Error),
}

fn replace(bin: &Path, previous: &Path, new: &Path, version: &Version) -> Result<(), ReplaceError> {
    // Bounded: this runs with the update lock held, and a signed updater that hangs must
    // be quarantined, never wedge every later run.
    let out = molt_host::process::run_bounded(
        Command::new(new).arg("--version"),
        std::time::Duration::from_secs(10),
    )
    .map_err(ReplaceError::Run)?;
    let printed = out.stdout.trim().to_owned();
    if printed != format!("updater {version}") {
        return Err(ReplaceError::WrongVersion {
            printed,
            expected: version.clone(),
        });
    }
    let current = std::fs::read(bin).map_err(|source| ReplaceError::ReadCurrent {
        path: bin.to_owned(),
        source,
    })?;
    let keep = |source: Box<dyn std::error::Error + Send + Sync>| ReplaceError::KeepPrevious {
        path: previous.to_owned(),
        source,
    };
    state::write_atomic_mode(previous, &current, 0o755).map_err(|e| keep(e.into()))?;
    self_replace::self_replace(new).map_err(ReplaceError::SelfReplace)?;
    // self-replace renames a copy into place but syncs neither: make the new file and its
    // directory entry durable before this updater re-execs it.
    let synced = std::fs::File::open(bin)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::File::open(bin.parent().unwrap_or(Path::new("."))))
        .and_then(|d| d.sync_all());
    if let Err(e) = synced {
        tracing::warn!("cannot sync {} after replacing it: {e}", bin.display());
    }
    Ok(())
}

/// Replaces this process with `program`, same arguments, marked as re-exec'd.
pub fn reexec(program: &Path) -> UpdateError {
    use std::os::unix::process::CommandExt as _;
    let err = Command::new(program)
        .args(std::env::args_os().skip(1))
        .env(REEXEC_ENV, "1")
        .exec();
    UpdateError::io("re-exec", program, err)
}
