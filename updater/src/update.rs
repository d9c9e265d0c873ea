//! The update (SPEC §6): lock → recover → load trust → resolve → download → stage →
//! switch → health → commit | roll back → history.
//!
//! Every step is written to `state/journal.json` before it is taken, so [`crate::recover`]
//! can finish or undo an update that a crash or a kill interrupted at any instant.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use molt_fetch::transport::{MoltTransport, Url};
use molt_fetch::tuf::{
    LoadOptions, LoadedRegion, RegionSource, TargetInfo, TrustError, load_region,
};
use molt_host::state::{
    self, HistoryRecord, Journal, Outcome, Quarantine, STATE_VERSION, Step, Timings,
};
use molt_host::{HostLayout, seed};
use molt_schema::resolve::{Decision, Plan, Request, Target, resolve};
use molt_schema::{PackageName, Version};
use serde::Serialize;

use crate::download::{DownloadRequest, RetryPolicy, check_free_space, download_and_stage};
use crate::error::UpdateError;
use crate::health::{HealthCheck, wait_healthy};
use crate::lock::UpdateLock;
use crate::service::ServiceManager;
use crate::settings::Settings;
use crate::{recover, stage, switch};

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

/// Test hook, compiled only with the `test-hooks` feature (the tests crate turns it on;
/// release builds never do): `MOLT_TEST_KILL_AT=<checkpoint>` makes the updater SIGKILL
/// itself at that checkpoint, so tests can prove recovery from every step.
#[cfg(feature = "test-hooks")]
pub fn checkpoint(name: &str) {
    if std::env::var("MOLT_TEST_KILL_AT").is_ok_and(|v| v == name) {
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught; this line is not reached.
        std::process::abort();
    }
}

/// Without the `test-hooks` feature a checkpoint does nothing.
#[cfg(not(feature = "test-hooks"))]
pub fn checkpoint(_name: &str) {}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Started => "started",
        Step::Installed => "installed",
        Step::Stopping => "stopping",
        Step::Switching => "switching",
        Step::Switched => "switched",
        Step::Committed => "committed",
        Step::RollingBack => "rolling_back",
        Step::RolledBack => "rolled_back",
        Step::Unknown => "unknown",
    }
}

/// Writes each step to the journal before it is taken.
pub(crate) struct JournalWriter<'a> {
    pub layout: &'a HostLayout,
    pub journal: Journal,
}

impl JournalWriter<'_> {
    pub(crate) fn set(&mut self, step: Step) -> Result<(), UpdateError> {
        self.journal.step = step;
        self.journal.updated_at = Timestamp::now();
        state::write_json(&self.layout.journal(), &self.journal).map_err(UpdateError::state)?;
        checkpoint(step_name(step));
        Ok(())
    }
}

/// A fresh random token (for nonces and ids).
pub fn random_token() -> String {
    let mut buf = [0u8; 12];
    if molt_host::random_bytes(&mut buf).is_err() {
        let nanos = Timestamp::now().as_nanosecond();
        buf[..12].copy_from_slice(&nanos.to_le_bytes()[..12]);
    }
    hex::encode(buf)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The target file's URL under consistent snapshots: `targets/<sha256>.<name>`.
pub(crate) fn target_url(base: &Url, info: &TargetInfo) -> Result<Url, UpdateError> {
    base.join(&format!("targets/{}.{}", info.sha256, info.name))
        .map_err(|e| {
            UpdateError::Failed(anyhow::anyhow!("cannot form the URL of {}: {e}", info.name))
        })
}

/// The persisted rollout seed, or a new one: from the instance id (IMDS, asked only
/// when no seed is persisted yet), else the machine id, else random (SPEC §4).
async fn host_seed(settings: &Settings) -> Result<molt_schema::rollout::Seed, UpdateError> {
    let path = settings.layout.seed();
    let instance = if path.exists() {
        None
    } else {
        let imds = molt_fetch::aws::ImdsSettings {
            v1_fallback: settings.imds_v1_fallback,
        };
        molt_fetch::aws::instance_id(&imds).await.ok()
    };
    let (seed, _) = seed::load_or_create(
        &path,
        instance.as_deref(),
        std::path::Path::new("/etc/machine-id"),
    )
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
    std::fs::create_dir_all(layout.state_dir())
        .map_err(|e| UpdateError::io("create", &layout.state_dir(), e))?;
    let lock = UpdateLock::try_acquire(&layout.lock())?;
    recover::recover_locked(settings, svc)?;

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
    })
    .await?;
    if first_install && !settings.saved_trusted_root().exists() {
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
    let report = install_and_switch(settings, opts, svc, &transport, &plan, &info, url).await;
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

async fn install_and_switch(
    settings: &Settings,
    opts: &UpdateOptions,
    svc: &mut dyn ServiceManager,
    transport: &MoltTransport,
    plan: &Plan,
    info: &TargetInfo,
    url: Url,
) -> Result<UpdateReport, UpdateError> {
    let layout = &settings.layout;
    let started = Instant::now();
    let now = Timestamp::now();
    let from = plan.from.clone();
    let to = plan.to.clone();
    let mut jw = JournalWriter {
        layout,
        journal: Journal {
            version: STATE_VERSION,
            id: format!(
                "{}-{}",
                now.strftime("%Y%m%dT%H%M%SZ"),
                &random_token()[..8]
            ),
            from: from.clone(),
            to: to.clone(),
            step: Step::Started,
            nonce: None,
            started_at: now,
            updated_at: now,
            stopped_at: None,
            reason: None,
        },
    };
    jw.set(Step::Started)?;

    // Download and stage, unless this exact version is already installed and valid
    // (the last known-good version, or a reinstall with --force).
    let mut download_ms = None;
    if !(layout.is_valid(&to) && Some(&to) != from.as_ref()) {
        let cache = layout.cache_dir();
        std::fs::create_dir_all(&cache).map_err(|e| UpdateError::io("create", &cache, e))?;
        let staging = layout.staging_dir(&to);
        if staging.exists() {
            std::fs::remove_dir_all(&staging)
                .map_err(|e| UpdateError::io("remove", &staging, e))?;
        }
        let result = async {
            check_free_space(&cache, info.length)?;
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
                    retry: RetryPolicy::default(),
                    progress: opts.progress,
                },
            )
            .await
        }
        .await;
        let report = match result {
            Ok(r) => r,
            Err(e) => {
                fail_before_switch(layout, &mut jw, started, &e.to_string())?;
                return Err(e.into());
            }
        };
        download_ms = Some(ms(report.elapsed));
        checkpoint("downloaded");
        if Some(&to) == from.as_ref() {
            // --force reinstall of the running version: its directory stays as it is
            // (installed versions are immutable); the fresh copy only proved it verifies.
            let _ = std::fs::remove_dir_all(&staging);
        } else if let Err(e) =
            stage::install(layout, &staging, &to).and_then(|_| stage::preflight(layout, &to))
        {
            let _ = std::fs::remove_dir_all(&staging);
            let _ = std::fs::remove_dir_all(layout.version_dir(&to));
            fail_before_switch(layout, &mut jw, started, &e.to_string())?;
            return Err(e.into());
        }
    }
    jw.set(Step::Installed)?;

    // Switch: stop the old agent, rename the new `current` into place, start the new agent.
    jw.journal.stopped_at = Some(Timestamp::now());
    jw.set(Step::Stopping)?;
    if let Err(e) = svc.stop() {
        // The old agent could not be stopped: nothing has switched yet; keep it.
        let reason = format!("could not stop the running agent: {e}");
        ensure_running(svc);
        fail_before_switch(layout, &mut jw, started, &reason)?;
        return Err(UpdateError::Failed(anyhow::anyhow!(reason)));
    }
    // The old agent has exited: the downtime starts here.
    let stopped = Instant::now();
    jw.set(Step::Switching)?;
    switch::point_current(layout, &to).map_err(UpdateError::state)?;
    checkpoint("switched_link");
    let nonce = random_token();
    jw.journal.nonce = Some(nonce.clone());
    jw.set(Step::Switched)?;
    let check = HealthCheck {
        expected_version: to.clone(),
        nonce: nonce.clone(),
        timeout: settings.health_timeout,
        soak: settings.soak,
        poll: Duration::from_millis(10),
    };
    let before_start = stopped.elapsed();
    let health = match svc.start(&nonce) {
        Ok(_) => wait_healthy(layout, svc, &check).map_err(|f| f.to_string()),
        Err(e) => Err(format!("could not start the new agent: {e}")),
    };
    match health {
        Ok(report) => {
            // From stopping the old agent to the new one reporting ready (the soak runs
            // while the new agent is already serving).
            let downtime = before_start + report.ready_after;
            jw.set(Step::Committed)?;
            let record = HistoryRecord {
                version: STATE_VERSION,
                id: jw.journal.id.clone(),
                from: from.clone(),
                to: to.clone(),
                result: Outcome::Success,
                reason: Some(plan.reason.to_string()),
                started_at: jw.journal.started_at,
                finished_at: Timestamp::now(),
                timings: Timings {
                    total_ms: ms(started.elapsed()),
                    download_ms,
                    agent_downtime_ms: Some(ms(downtime)),
                },
            };
            finish(layout, &record, Some(&to), from.as_ref())?;
            install_standalone_updater(layout, &to)?;
            let mut q = Quarantine::load(&layout.quarantine()).map_err(UpdateError::state)?;
            if q.versions().contains(&to) {
                q.remove(&to);
                state::write_json(&layout.quarantine(), &q).map_err(UpdateError::state)?;
            }
            Ok(UpdateReport::Updated { record })
        }
        Err(reason) => {
            let reason = format!("{to} failed its health check: {reason}");
            Err(roll_back(
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

/// The first install puts the standalone updater in place: `<root>/bin/updater`, a real
/// file (never a link into `versions/`, which self-replace would overwrite in place),
/// copied from the installed version. Later updates leave it to self-update.
fn install_standalone_updater(layout: &HostLayout, v: &Version) -> Result<(), UpdateError> {
    let dest = layout.updater_bin();
    if dest.exists() {
        return Ok(());
    }
    let src = layout.version_dir(v).join("bin").join("updater");
    let bytes = std::fs::read(&src).map_err(|e| UpdateError::io("read", &src, e))?;
    state::write_atomic(&dest, &bytes).map_err(UpdateError::state)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| UpdateError::io("chmod", &dest, e))
}

/// An update that failed before the switch: nothing changed; record it and clear the journal.
fn fail_before_switch(
    layout: &HostLayout,
    jw: &mut JournalWriter<'_>,
    started: Instant,
    reason: &str,
) -> Result<(), UpdateError> {
    let record = HistoryRecord {
        version: STATE_VERSION,
        id: jw.journal.id.clone(),
        from: jw.journal.from.clone(),
        to: jw.journal.to.clone(),
        result: Outcome::Failed,
        reason: Some(reason.to_owned()),
        started_at: jw.journal.started_at,
        finished_at: Timestamp::now(),
        timings: Timings {
            total_ms: ms(started.elapsed()),
            download_ms: None,
            agent_downtime_ms: None,
        },
    };
    state::append_history(&layout.history(), &record).map_err(UpdateError::state)?;
    let staging = layout.staging_dir(&jw.journal.to);
    let _ = std::fs::remove_dir_all(staging);
    if !layout.is_valid(&jw.journal.to) {
        let _ = std::fs::remove_dir_all(layout.version_dir(&jw.journal.to));
    }
    state::remove(&layout.journal()).map_err(UpdateError::state)
}

/// Starts the agent if nothing runs (best effort; used after a failed stop).
fn ensure_running(svc: &mut dyn ServiceManager) {
    if matches!(svc.main_pid(), Ok(None)) {
        let _ = svc.start(&random_token());
    }
}

/// Appends the history record, clears the journal, and removes every version but
/// `keep_a` and `keep_b` (current and the last known-good), plus stale staging.
pub(crate) fn finish(
    layout: &HostLayout,
    record: &HistoryRecord,
    keep_a: Option<&Version>,
    keep_b: Option<&Version>,
) -> Result<(), UpdateError> {
    let already = state::read_history(&layout.history())
        .map_err(UpdateError::state)?
        .iter()
        .any(|r| r.id == record.id);
    if !already {
        state::append_history(&layout.history(), record).map_err(UpdateError::state)?;
    }
    state::remove(&layout.journal()).map_err(UpdateError::state)?;
    for v in layout.installed_versions() {
        if Some(&v) != keep_a && Some(&v) != keep_b {
            let _ = std::fs::remove_dir_all(layout.version_dir(&v));
        }
    }
    if let Ok(entries) = std::fs::read_dir(layout.cache_dir()) {
        for e in entries.filter_map(Result::ok) {
            if e.file_name().to_string_lossy().starts_with("staging-") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// Puts `from` back after the new version failed; returns the error to exit with (5, or 7
/// when the rollback itself failed).
pub(crate) fn roll_back(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
    jw: &mut JournalWriter<'_>,
    reason: &str,
    quarantine: bool,
    started: Instant,
    download_ms: Option<u64>,
) -> UpdateError {
    let layout = &settings.layout;
    let to = jw.journal.to.clone();
    let from = jw.journal.from.clone();
    jw.journal.reason = Some(reason.to_owned());
    if let Err(e) = jw.set(Step::RollingBack) {
        return e;
    }
    let _ = svc.stop();
    let restored = match from.as_ref().filter(|f| layout.is_valid(f)) {
        None => Err("there is no earlier version to go back to (first install)".to_owned()),
        Some(f) => restore(settings, svc, f),
    };
    if quarantine {
        let mut q = Quarantine::load(&layout.quarantine()).unwrap_or_default();
        q.add(to.clone(), Timestamp::now(), reason.to_owned());
        let _ = state::write_json(&layout.quarantine(), &q);
    }
    let (result, error) = match &restored {
        Ok(()) => (Outcome::RolledBack, None),
        Err(e) => (Outcome::RollbackFailed, Some(e.clone())),
    };
    let record = HistoryRecord {
        version: STATE_VERSION,
        id: jw.journal.id.clone(),
        from: from.clone(),
        to: to.clone(),
        result,
        reason: Some(match &error {
            None => reason.to_owned(),
            Some(e) => format!("{reason}; rollback failed: {e}"),
        }),
        started_at: jw.journal.started_at,
        finished_at: Timestamp::now(),
        timings: Timings {
            total_ms: ms(started.elapsed()),
            download_ms,
            agent_downtime_ms: jw.journal.stopped_at.and_then(|t| {
                Timestamp::now()
                    .duration_since(t)
                    .as_millis()
                    .try_into()
                    .ok()
            }),
        },
    };
    match error {
        None => {
            if let Err(e) = jw.set(Step::RolledBack) {
                return e;
            }
            if let Err(e) = finish(layout, &record, from.as_ref(), None) {
                return e;
            }
            let prefix = format!("{to} failed its health check: ");
            let why = reason.strip_prefix(&prefix).unwrap_or(reason).to_owned();
            UpdateError::RolledBack {
                to,
                from,
                reason: crate::error::Why(why),
            }
        }
        Some(e) => {
            let _ = state::append_history(&layout.history(), &record);
            UpdateError::RollbackFailed {
                to,
                from,
                reason: e,
            }
        }
    }
}

/// Points `current` back at `from` and starts it; it must report healthy.
pub(crate) fn restore(
    settings: &Settings,
    svc: &mut dyn ServiceManager,
    from: &Version,
) -> Result<(), String> {
    let layout = &settings.layout;
    switch::point_current(layout, from).map_err(|e| e.to_string())?;
    let nonce = random_token();
    svc.start(&nonce)
        .map_err(|e| format!("could not start {from}: {e}"))?;
    let check = HealthCheck {
        expected_version: from.clone(),
        nonce,
        timeout: settings.health_timeout,
        soak: settings.soak.min(Duration::from_secs(5)),
        poll: Duration::from_millis(50),
    };
    wait_healthy(layout, svc, &check)
        .map(|_| ())
        .map_err(|f| format!("{from} did not come back healthy: {f}"))
}
