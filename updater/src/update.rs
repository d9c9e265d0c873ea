//! The update (SPEC §6), the orchestrator: lock → recover → load trust → self-update →
//! resolve → download and stage → install → [`switch`](crate::switch) →
//! [`health`](crate::health) → [`commit`](crate::commit) | [`roll back`](crate::rollback),
//! each recorded in the [`journal`](crate::journal) before it is taken.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use molt_fetch::transport::{MoltTransport, Url};
use molt_fetch::tuf::{
    LoadOptions, LoadedRegion, RegionSource, TargetInfo, TrustError, load_region,
};
use molt_host::attempt::FailureClass;
use molt_host::state::{self, HistoryRecord, Outcome, Quarantine, Step, Timings};
use molt_schema::resolve::{Decision, Plan, Request, Target, resolve};
use molt_schema::{PackageName, Version};
use serde::Serialize;

use crate::download::{DownloadRequest, check_free_space, download_and_stage};
use crate::error::UpdateError;
use crate::health::{HealthCheck, wait_healthy};
use crate::history::{self, ms};
use crate::journal::{JournalWriter, checkpoint};
use crate::lock::UpdateLock;
use crate::rollback::RestoreError;
use crate::service::ServiceManager;
use crate::settings::Settings;
use crate::switch::NotSwitched;
use crate::{commit, install, recover, rollback, switch};
use molt_fetch::retry::RetryPolicy;

/// What the operator asked for.
#[derive(Clone, Debug)]
pub struct UpdateOptions {
    pub target: Target,
    pub allow_downgrade: bool,
    pub force: bool,
    pub ignore_waves: bool,
    pub dry_run: bool,
    pub progress: bool,
}

/// The result of a run that did not fail.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum UpdateReport {
    /// Nothing to do; `message` says why.
    Skipped {
        current: Option<Version>,
        message: String,
    },
    /// `--dry-run`: what would happen.
    Plan {
        plan: Plan,
        download_url: String,
        download_size: u64,
        seed: u16,
    },
    /// The new version runs and passed its health check.
    Updated { record: HistoryRecord },
}

/// The target file's URL under consistent snapshots: `targets/<sha256>.<name>`.
/// Where a target's bytes are, below the source (with or without its trailing slash).
pub(crate) fn target_url(base: &Url, info: &TargetInfo) -> Result<Url, UpdateError> {
    Ok(RegionSource::new(base.clone()).target_url(&info.sha256, &info.name)?)
}

/// The persisted rollout seed, or a new one (`molt_fetch::aws::host_seed`, shared with
/// the agent).
async fn host_seed(settings: &Settings) -> Result<molt_schema::rollout::Seed, UpdateError> {
    let imds = molt_fetch::aws::ImdsSettings {
        v1_fallback: settings.imds_v1_fallback,
    };
    let (seed, _) = molt_fetch::aws::host_seed(&settings.layout.seed(), &imds)
        .await
        .map_err(UpdateError::state)?;
    Ok(seed)
}

/// Runs one update: the whole of SPEC §6.
pub async fn run(
    settings: &Settings,
    opts: &UpdateOptions,
    svc: &mut dyn ServiceManager,
) -> Result<UpdateReport, UpdateError> {
    let layout = &settings.layout;
    // A dry run changes nothing on the host: no lock (it writes nothing an update could
    // collide with), no recovery (which may stop and start the agent), no datastore commit,
    // nothing saved. (The rollout seed is still persisted when the host has none, so that
    // the wave a dry run reports is the one the real run uses.)
    let lock = if opts.dry_run {
        if layout.journal().exists() {
            tracing::warn!(
                "{} holds an unfinished update; the next real run (or `updater recover`) completes or undoes it first",
                layout.journal().display()
            );
        }
        None
    } else {
        std::fs::create_dir_all(layout.state_dir())
            .map_err(|e| UpdateError::io("create", &layout.state_dir(), e))?;
        let lock = UpdateLock::try_acquire(&layout.lock())?;
        if let recover::Recovered::LeftAlone { step } = recover::recover_locked(settings, svc)? {
            return Err(UpdateError::NewerJournal {
                path: layout.journal(),
                step,
            });
        }
        Some(lock)
    };

    let current = layout.current_version();
    let first_install = current.is_none();
    let root_path = settings.trusted_root_path();
    let trusted_root = std::fs::read(&root_path).map_err(|e| UpdateError::NoTrustedRoot {
        path: root_path.clone(),
        first_install,
        source: e,
    })?;
    let region = settings.region()?.clone();
    let repository = settings.repository()?;
    let base = repository.url.clone();
    let platform = settings.platform()?;
    let mut transport =
        MoltTransport::new(settings.http.clone()).map_err(|e| UpdateError::Failed(e.into()))?;
    if repository.private.is_some() {
        let provider = molt_fetch::aws::credentials_provider(&region).await;
        transport = transport.with_signer(molt_fetch::s3::S3Signer::new(provider, region.clone()));
    }
    let loaded = load_region(LoadOptions {
        source: RegionSource::new(base.clone()),
        region: Some(&region),
        trusted_root: &trusted_root,
        datastore: Some(&layout.tuf_dir()),
        transport: transport.clone(),
        retry: molt_fetch::retry::RetryPolicy::DOWNLOAD,
        commit: !opts.dry_run,
    })
    .await?;
    if first_install && !opts.dry_run && !settings.saved_trusted_root().exists() {
        state::write_atomic(&settings.saved_trusted_root(), &trusted_root)
            .map_err(UpdateError::state)?;
    }

    let quarantine = Quarantine::load(&layout.quarantine()).map_err(UpdateError::state)?;
    let quarantined: BTreeSet<Version> = quarantine.versions();
    let seed = host_seed(settings).await?;
    if !opts.dry_run
        && let Some(program) = crate::self_update::maybe_self_update(
            settings,
            &loaded,
            platform,
            seed,
            opts.ignore_waves,
            &transport,
            &base,
            opts.progress,
        )
        .await?
    {
        // The new updater takes the lock again and carries on.
        drop(lock);
        return Err(crate::self_update::reexec(&program));
    }
    let request = Request {
        package: PackageName::Agent.as_str(),
        platform,
        current: current.as_ref(),
        target: &opts.target,
        allow_downgrade: opts.allow_downgrade,
        force: opts.force,
        ignore_waves: opts.ignore_waves,
        quarantined: &quarantined,
        now: Timestamp::now(),
        seed,
    };
    let plan = match resolve(&loaded.manifest, &request)? {
        Decision::Skip(skip) => {
            return Ok(UpdateReport::Skipped {
                current,
                message: skip.to_string(),
            });
        }
        Decision::Install(plan) => plan,
    };
    let info = signed_target(&loaded, &plan)?;
    let url = target_url(&base, &info)?;
    if opts.dry_run {
        return Ok(UpdateReport::Plan {
            plan,
            download_url: molt_fetch::transport::display_url(&url),
            download_size: info.length,
            seed: seed.get(),
        });
    }
    let report = match stage_and_install(settings, opts, &transport, &plan, &info, url).await {
        Ok(staged) => switch_and_check(settings, svc, staged, &plan.reason.to_string()),
        Err(e) => Err(e),
    };
    drop(lock);
    report
}

/// The signed target of a plan; the manifest's checksum must agree with TUF's.
fn signed_target(loaded: &LoadedRegion, plan: &Plan) -> Result<TargetInfo, UpdateError> {
    let info = loaded.target(&plan.target_name).ok_or_else(|| {
        UpdateError::Trust(TrustError::ChecksumDisagrees {
            target: plan.target_name.clone(),
            detail: "the manifest lists it, but it is not a signed target".into(),
        })
    })?;
    if let Some(c) = plan.checksum.filter(|c| *c != info.sha256) {
        return Err(UpdateError::Trust(TrustError::ChecksumDisagrees {
            target: plan.target_name.clone(),
            detail: format!("Checksum {c} but TUF says {}", info.sha256),
        }));
    }
    Ok(info)
}

/// An update up to its switch: `to` is installed under `versions/`, and both versions the
/// update may leave running accept the host's config. The journal is at `installed`.
pub(crate) struct Staged<'a> {
    jw: JournalWriter<'a>,
    started: Instant,
    download_ms: Option<u64>,
}

impl<'a> Staged<'a> {
    /// The version staged.
    pub(crate) fn to(&self) -> &Version {
        &self.jw.journal.to
    }

    /// The journal, and the timings so far (no agent was stopped yet).
    pub(crate) fn into_parts(self) -> (JournalWriter<'a>, Timings) {
        let timings = Timings {
            total_ms: ms(self.started.elapsed()),
            download_ms: self.download_ms,
            agent_downtime_ms: None,
        };
        (self.jw, timings)
    }
}

/// Downloads (or reuses), verifies, stages and installs `plan`'s version: SPEC §6 steps 6
/// and 7. A failure is recorded and leaves nothing changed.
pub(crate) async fn stage_and_install<'a>(
    settings: &'a Settings,
    opts: &UpdateOptions,
    transport: &MoltTransport,
    plan: &Plan,
    info: &TargetInfo,
    url: Url,
) -> Result<Staged<'a>, UpdateError> {
    let layout = &settings.layout;
    let started = Instant::now();
    let from = plan.from.clone();
    let to = plan.to.clone();
    let mut jw = JournalWriter::begin(layout, from.clone(), to.clone());
    jw.set(Step::Started)?;

    // Download and stage, unless this exact version is already installed, valid, and its
    // files still hash as they did at install (the last known-good version).
    let mut download_ms = None;
    let reuse = layout.is_valid(&to)
        && Some(&to) != from.as_ref()
        && match install::reusable(layout, &to) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "the installed {to} is not reused: {}; it is fetched again",
                    molt_schema::cli::one_line(&e)
                );
                let _ = install::remove_version(layout, &to);
                false
            }
        };
    if !reuse {
        let cache = layout.cache_dir();
        std::fs::create_dir_all(&cache).map_err(|e| UpdateError::io("create", &cache, e))?;
        let versions = layout.versions_dir();
        std::fs::create_dir_all(&versions).map_err(|e| UpdateError::io("create", &versions, e))?;
        let staging = layout.staging_dir(&to);
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .map_err(|e| UpdateError::io("remove", &staging, e))?;
        }
        let result = async {
            // The download goes to cache/, the unpacked files to versions/: both
            // filesystems need the room when they are two.
            check_free_space(&cache, info.length)?;
            check_free_space(&versions, info.length)?;
            download_and_stage(
                transport,
                &DownloadRequest {
                    url: url.clone(),
                    expected: info,
                    package: PackageName::Agent,
                    platform: plan.platform,
                    staging: &staging,
                    partial: &layout.partial(&info.sha256),
                    limits: &molt_archive::extract::Limits::default(),
                    retry: RetryPolicy::DOWNLOAD,
                    progress: opts.progress,
                },
            )
            .await
        }
        .await;
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                let reason = e.to_string();
                let error = UpdateError::from(e);
                fail_before_switch(&mut jw, started, &reason, error.failure_class());
                return Err(error);
            }
        };
        download_ms = Some(ms(report.elapsed));
        checkpoint("downloaded");
        if Some(&to) == from.as_ref() {
            // --force reinstall of the running version: its directory stays as it is
            // (installed versions are immutable); the fresh copy only proved it verifies.
            let _ = std::fs::remove_dir_all(&staging);
        } else if let Err(e) = install::install(layout, &staging, &to, &report.extracted.files)
            .and_then(|_| install::preflight(layout, &to))
        {
            let _ = std::fs::remove_dir_all(&staging);
            let _ = install::remove_version(layout, &to);
            let reason = e.to_string();
            let error = UpdateError::from(e);
            fail_before_switch(&mut jw, started, &reason, error.failure_class());
            return Err(error);
        }
    }
    // Both versions this update may leave running must start with the host's config:
    // the new one, and the old one a rollback would restore.
    let config = settings.config_path.as_deref();
    let rollback_to = from.as_ref().filter(|f| *f != &to && layout.is_valid(f));
    for (v, rollback) in [(Some(&to), false), (rollback_to, true)] {
        let Some(v) = v else { continue };
        match install::config_check(layout, v, config) {
            Ok(install::ConfigCheck::Accepted) => {}
            Ok(install::ConfigCheck::Unsupported) => tracing::warn!(
                "{v} predates `agent check-config`; its reading of the config is not checked before the switch"
            ),
            Err(source) => {
                let error = UpdateError::ConfigRefused {
                    version: v.clone(),
                    rollback,
                    source: Box::new(source),
                };
                fail_before_switch(
                    &mut jw,
                    started,
                    &molt_schema::cli::one_line(&error),
                    error.failure_class(),
                );
                return Err(error);
            }
        }
    }
    jw.set(Step::Installed)?;
    Ok(Staged {
        jw,
        started,
        download_ms,
    })
}

/// Switches to a [staged](stage_and_install) version, checks its health, and commits
/// (`reason` goes into the history) or rolls back: SPEC §6 steps 8 to 10.
pub(crate) fn switch_and_check(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
    staged: Staged<'_>,
    reason: &str,
) -> Result<UpdateReport, UpdateError> {
    let layout = &settings.layout;
    let Staged {
        mut jw,
        started,
        download_ms,
    } = staged;
    let from = jw.journal.from.clone();
    let to = jw.journal.to.clone();
    let switched = match switch::switch_to(&mut jw, svc, &to) {
        Ok(s) => s,
        Err(NotSwitched::NotStopped(source)) => {
            let error = UpdateError::NotStopped { source };
            fail_before_switch(
                &mut jw,
                started,
                &molt_schema::cli::one_line(&error),
                error.failure_class(),
            );
            return Err(error);
        }
        Err(NotSwitched::Failed(e)) => return Err(e),
        Err(NotSwitched::Restarted {
            error,
            restarted: Ok(()),
        }) => {
            // `current` never moved and the old agent runs again: nothing changed.
            fail_before_switch(
                &mut jw,
                started,
                &molt_schema::cli::one_line(&error),
                error.failure_class(),
            );
            return Err(*error);
        }
        Err(NotSwitched::Restarted {
            error,
            restarted: Err(source),
        }) => {
            let reason = format!(
                "the switch to {to} failed ({}) after the old agent was stopped",
                molt_schema::cli::one_line(&error)
            );
            let restore = match from.clone() {
                Some(from) => RestoreError::Start { from, source },
                None => RestoreError::NoEarlierVersion,
            };
            let timings = Timings {
                total_ms: ms(started.elapsed()),
                download_ms,
                agent_downtime_ms: None,
            };
            return Err(rollback::failed(
                settings, svc, &jw, &reason, restore, timings,
            ));
        }
    };
    let check = HealthCheck {
        expected_version: to.clone(),
        nonce: switched.nonce.clone(),
        timeout: settings.health_timeout,
        soak: settings.soak,
        poll: Duration::from_millis(10),
    };
    let health = switched
        .started
        .map_err(|e| molt_schema::cli::one_line(&UpdateError::NotStarted { source: e }))
        .and_then(|()| wait_healthy(layout, svc, &check).map_err(|f| f.to_string()));
    match health {
        Ok(report) => {
            // From stopping the old agent to the new one reporting ready (the soak runs
            // while the new agent is already serving).
            let downtime = switched.before_start + report.ready_after;
            let timings = Timings {
                total_ms: ms(started.elapsed()),
                download_ms,
                agent_downtime_ms: Some(ms(downtime)),
            };
            match commit::commit(&mut jw, reason, timings) {
                Ok(record) => Ok(UpdateReport::Updated { record }),
                Err(cause) => {
                    // The commit could not be made durable (a full or read-only disk): a
                    // crash now would roll back, so roll back now. The version itself did
                    // nothing wrong: no quarantine.
                    let reason = format!(
                        "{to} passed its health check, but its commit could not be recorded: {}",
                        molt_schema::cli::one_line(&cause)
                    );
                    Err(
                        match rollback::roll_back(
                            settings,
                            svc,
                            &mut jw,
                            &reason,
                            false,
                            started,
                            download_ms,
                        ) {
                            UpdateError::RolledBack { to, from, .. } => UpdateError::NotCommitted {
                                to,
                                from,
                                source: Box::new(cause),
                            },
                            other => other,
                        },
                    )
                }
            }
        }
        Err(reason) => {
            let reason = format!("{to} failed its health check: {reason}");
            Err(rollback::roll_back(
                settings,
                svc,
                &mut jw,
                &reason,
                true,
                started,
                download_ms,
            ))
        }
    }
}

/// An update that failed before the switch: nothing changed; record it and clear the
/// journal. Best effort: on a full disk the record may not be written, and the failure the
/// caller returns matters more than that (the journal, if it stays, is cleaned up by the
/// next recovery, which records the attempt then).
fn fail_before_switch(
    jw: &mut JournalWriter<'_>,
    started: Instant,
    reason: &str,
    failure: FailureClass,
) {
    let layout = jw.layout;
    let timings = Timings {
        total_ms: ms(started.elapsed()),
        download_ms: None,
        agent_downtime_ms: None,
    };
    let record = HistoryRecord {
        failure: Some(failure),
        ..history::record(&jw.journal, Outcome::Failed, reason, timings)
    };
    let staging = layout.staging_dir(&jw.journal.to);
    let _ = std::fs::remove_dir_all(staging);
    if !layout.is_valid(&jw.journal.to) {
        let _ = install::remove_version(layout, &jw.journal.to);
    }
    let recorded = state::append_history(&layout.history(), &record)
        .and_then(|()| state::remove(&layout.journal()));
    if let Err(e) = recorded {
        tracing::warn!(
            "{}; the failed attempt is recorded by the next `updater recover`",
            molt_schema::cli::one_line(&e)
        );
    }
}
