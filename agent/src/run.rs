//! `agent run`: the service (SPEC §7).
//!
//! 1. Read the config; a bad one stops here, before anything is written.
//! 2. Write `agent/health.json` (ready) at once, before any slow probe such as IMDS.
//! 3. If the journal shows an unfinished update and no updater holds the lock, launch
//!    `updater recover`.
//! 4. Run the association: sleep until the next due run, launch the updater, record it,
//!    and keep serving until the updater stops this agent. The result of a launched run
//!    comes back through `state/last-run.json` (to this agent, or to the one the update
//!    started); a run that failed for a reason time may cure is retried before the next
//!    slot ([`RetryPolicy::SCHEDULED_RUNS`]), and `agent/schedule.json` keeps the attempts.
//! 5. Report new history records to the results sink, if one is configured.
//!
//! SIGTERM and SIGINT stop it cleanly; SIGHUP reloads the config (a bad new config is
//! logged and the running one kept).

use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use molt_fetch::aws::{self, ImdsSettings};
use molt_fetch::retry::RetryPolicy;
use molt_fetch::s3::{S3Location, S3Signer};
use molt_fetch::transport::{HttpSettings, MoltTransport};
use molt_host::attempt::{FailureClass, RunResult};
use molt_host::lock;
use molt_host::schedule::{self, Due, Ended, Pending, Reason, ScheduleState};
use molt_host::state::{self, Health, HealthStatus, STATE_VERSION};
use molt_schema::Region;
use molt_schema::rollout::Seed;
use tokio::signal::unix::{SignalKind, signal};

use crate::launch::{self, LaunchKind};
use crate::settings::AgentSettings;
use crate::{hold, identity};

/// The longest the agent sleeps at once: wall-clock time can jump (suspend, NTP), so the
/// due time is checked again at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot write {path}: {detail}")]
    Health { path: PathBuf, detail: String },
    #[error(
        "this agent was built with a version that is not a semantic version ({version:?}: {detail}), so it cannot report its health; rebuild it with MOLT_BUILD_VERSION set to the release version"
    )]
    BuildVersion {
        version: &'static str,
        detail: String,
    },
    #[error("cannot install the signal handlers")]
    Signals(#[source] std::io::Error),
}

fn imds(settings: &AgentSettings) -> ImdsSettings {
    ImdsSettings {
        v1_fallback: settings.config.imds_v1_fallback,
    }
}

fn write_health(
    settings: &AgentSettings,
    nonce: &str,
    started_at: Timestamp,
    status: HealthStatus,
) -> Result<(), RunError> {
    let path = settings.layout.health();
    let version = molt_host::build::version()
        .parse::<molt_schema::Version>()
        .map_err(|e| RunError::BuildVersion {
            version: molt_host::build::version(),
            detail: e.to_string(),
        })?;
    state::write_json(
        &path,
        &Health {
            schema: STATE_VERSION,
            version,
            pid: std::process::id(),
            nonce: nonce.to_owned(),
            started_at,
            status,
        },
    )
    .map_err(|e| RunError::Health {
        path,
        detail: e.to_string(),
    })
}

/// The sink, and the signer, HTTP client and identity that reports need: built only when
/// a record waits, and dropped once it is sent, so an idle agent holds none of them.
struct Reporter {
    sink: S3Location,
    ready: Option<(Region, MoltTransport, String)>,
    next_try: Timestamp,
    failures: u32,
}

impl Reporter {
    fn new(settings: &AgentSettings) -> Option<Reporter> {
        let text = settings.report.as_deref()?;
        match text.parse::<S3Location>() {
            Ok(sink) => Some(Reporter {
                sink,
                ready: None,
                next_try: Timestamp::UNIX_EPOCH,
                failures: 0,
            }),
            Err(e) => {
                tracing::error!("reporting is off: `report = {text:?}` is not usable: {e}");
                None
            }
        }
    }

    async fn prepare(&mut self, settings: &AgentSettings) -> Result<(), String> {
        if self.ready.is_some() {
            return Ok(());
        }
        let configured = settings
            .config
            .region
            .clone()
            .map(|r| (r, aws::RegionSource::Config));
        let (region, _) =
            aws::resolve_region(configured, |k| std::env::var(k).ok(), &imds(settings))
                .await
                .map_err(|e| e.to_string())?;
        let provider = aws::credentials_provider(&region).await;
        let host = identity::host_id(settings, &imds(settings))
            .await
            .map_err(|e| e.to_string())?;
        // The same transport the updater reads with: its proxies, user agent, redirect rules,
        // deadline and throughput floor, signing for the report bucket.
        let transport = MoltTransport::new(HttpSettings {
            user_agent: format!("molt-agent/{}", molt_host::build::version()),
            ..HttpSettings::default()
        })
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?
        .with_signer(S3Signer::new(provider, region.clone()).for_location(&self.sink));
        self.ready = Some((region, transport, host));
        Ok(())
    }

    /// Sends what is pending, backing off ([`RetryPolicy::REPORTS`]: up to an hour, with
    /// jitter) while the sink fails.
    async fn poll(&mut self, settings: &AgentSettings, seed: Seed) {
        let now = Timestamp::now();
        if now < self.next_try || !crate::report::pending(settings) {
            return;
        }
        let result = match self.prepare(settings).await {
            Ok(()) => match &self.ready {
                Some((region, transport, host)) => {
                    crate::report::send_pending(settings, &self.sink, transport, region, host, seed)
                        .await
                }
                None => Ok(0),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => {
                self.failures = 0;
                self.ready = None;
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                let wait = RetryPolicy::REPORTS.delay(self.failures);
                tracing::warn!(
                    "reporting to {} failed ({e}); retrying in {} s",
                    self.sink,
                    wait.as_secs()
                );
                self.next_try = now + wait;
            }
        }
    }
}

/// Launches `updater recover` when the journal shows an unfinished update that no
/// running updater is working on.
fn recover_if_needed(settings: &AgentSettings) {
    let layout = &settings.layout;
    if !layout.journal().exists() {
        return;
    }
    if lock::update_in_progress(&layout.lock()) {
        tracing::info!("an update is in progress; it finishes its own journal");
        return;
    }
    tracing::warn!(
        "{} shows an unfinished update; launching `updater recover`",
        layout.journal().display()
    );
    launch::launch(settings, LaunchKind::Recover, None);
}

/// What a due run came to.
enum Fired {
    /// The host is on hold: nothing runs, nothing is retried.
    Held,
    /// The updater was launched (or the launch failed, as the record says).
    Launched(launch::Launch),
    /// An update was already in progress.
    Busy,
}

/// What the scheduled run does when it is due.
fn fire(settings: &AgentSettings, due: &Due) -> Fired {
    if let Some(h) = hold::current(settings) {
        tracing::info!("scheduled update skipped: this host is on hold ({h})");
        return Fired::Held;
    }
    if lock::update_in_progress(&settings.layout.lock()) {
        tracing::info!("scheduled update skipped: an update is already in progress");
        return Fired::Busy;
    }
    tracing::info!("scheduled update is due ({})", due.reason);
    Fired::Launched(launch::launch(
        settings,
        LaunchKind::Update,
        Some(due.reason.to_string()),
    ))
}

/// How often the agent looks for the result of a run it launched, while it waits for one.
const RESULT_POLL: Duration = Duration::from_secs(10);

/// The retry schedule of failed scheduled runs.
const RETRIES: RetryPolicy = RetryPolicy::SCHEDULED_RUNS;

/// How many retries a failed scheduled run gets.
pub fn retries() -> u32 {
    RETRIES.max_attempts() - 1
}

/// Records how the run launched at `at` ended and decides its retry (logged).
fn settle(
    settings: &AgentSettings,
    sched: &mut ScheduleState,
    at: Timestamp,
    ended: Ended,
    offset: Duration,
    started_at: Timestamp,
) {
    let now = Timestamp::now();
    let reason = sched.last_reason.unwrap_or(Reason::Scheduled);
    let retries = retries();
    let failed = match &ended {
        Ended::Succeeded => None,
        Ended::Failed {
            failure, message, ..
        } => Some((*failure, message.clone().unwrap_or_default())),
    };
    let retry = sched.settle(
        at,
        reason,
        ended,
        &settings.plan,
        offset,
        started_at,
        now,
        retries,
        |n| RETRIES.delay(n),
    );
    let Some((failure, message)) = failed else {
        tracing::info!("the {reason} update finished");
        return;
    };
    let attempt = sched.attempts.len();
    match (retry, sched.not_retried_because(retries)) {
        (Some(when), _) => tracing::warn!(
            "the {reason} update failed ({failure}: {message}); retry {attempt} of {retries} at {when}"
        ),
        (None, why) => tracing::warn!(
            "the {reason} update failed ({failure}: {message}); not retried ({}); the next slot runs as usual",
            why.unwrap_or("the next slot comes first")
        ),
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(
    mut settings: AgentSettings,
    reload: impl Fn() -> Result<AgentSettings, String>,
) -> Result<(), RunError> {
    let started_at = Timestamp::now();
    let nonce = std::env::var("MOLT_HEALTH_NONCE").unwrap_or_default();
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    // An agent that runs as root (direct mode, or an older unit) moves an older layout's
    // files into agent/ itself; an unprivileged one finds them moved by the updater.
    if rustix::process::geteuid().is_root()
        && let Err(e) = molt_host::agent_dir::prepare(&settings.layout)
    {
        tracing::warn!("{e}");
    }
    // A full or read-only disk must not take the agent down with it: it keeps running and
    // writes its health file as soon as it can (the updater's recovery then confirms it).
    let mut health_pending = !ready_or_retry(&settings, &nonce, started_at)?;
    tracing::info!(
        "molt agent {} ready (pid {}, root {})",
        molt_host::build::version(),
        std::process::id(),
        settings.layout.root().display()
    );
    recover_if_needed(&settings);

    let seed = match identity::seed(&settings, &imds(&settings)).await {
        Ok((seed, source)) => {
            tracing::info!("rollout seed {seed} ({source:?})");
            seed
        }
        Err(e) => {
            // Without a persisted seed the host still updates, from a seed of 0 (the
            // first wave): better than never updating.
            tracing::error!("cannot keep this host's rollout seed: {e}");
            Seed::wrapping(0)
        }
    };
    let sched_path = settings.schedule_state();
    let mut sched = ScheduleState::load_or_init(&sched_path, started_at).unwrap_or_else(|e| {
        tracing::warn!("{e}; starting the schedule afresh");
        ScheduleState::new(started_at)
    });
    let mut boot_done = false;
    let mut reporter = Reporter::new(&settings);
    let mut next_report = Timestamp::now();
    let mut announced: Option<Timestamp> = None;
    // When the agent first saw the update lock free while a launched run had no result.
    let mut free_since: Option<Timestamp> = None;
    // Whether the unreadable last-run.json of the pending run was warned about.
    let mut warned_unreadable = false;

    loop {
        if health_pending {
            health_pending = !ready_or_retry(&settings, &nonce, started_at)?;
        }
        let now = Timestamp::now();
        let offset = schedule::jitter_offset(seed, settings.plan.jitter);
        if let Some(pending) = sched.pending.clone() {
            if lock::update_in_progress(&settings.layout.lock()) {
                free_since = None;
            } else {
                free_since.get_or_insert(now);
            }
            let result =
                state::read_json::<RunResult>(&settings.layout.last_run()).unwrap_or_else(|e| {
                    // once per launch: the poll comes back every 10 s
                    if !warned_unreadable {
                        tracing::warn!("{e}; the run counts as one that left no result");
                        warned_unreadable = true;
                    }
                    None
                });
            let history = || state::read_history(&settings.layout.history()).unwrap_or_default();
            if let Some(ended) =
                schedule::outcome_of(&pending, result.as_ref(), free_since, now, history)
            {
                settle(&settings, &mut sched, pending.at, ended, offset, started_at);
                save_schedule(&sched, &sched_path);
                free_since = None;
                announced = None;
            }
        }
        let Some(due) =
            schedule::next_run(&settings.plan, offset, &sched, started_at, boot_done, now)
        else {
            // No slot left in the calendar (a cron for a date that never comes again).
            tracing::warn!("the schedule has no next run; only signals are served");
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
                _ = hup.recv() => {
                    match reload() {
                        Ok(new) => { reporter = Reporter::new(&new); settings = new; }
                        Err(e) => tracing::error!("SIGHUP: the new config is not usable, keeping the running one: {e}"),
                    }
                    continue;
                }
            }
        };
        // A run that comes due while the one launched last still holds the update lock (a
        // long update) waits for that run's result rather than count as busy and lose it.
        let waits = sched.pending.is_some() && free_since.is_none();
        if due.at <= now && !waits {
            let fired = fire(&settings, &due);
            if due.reason == Reason::Boot {
                boot_done = true;
            }
            sched.record_run(now, due.reason);
            let failed = |failure, message: String| Ended::Failed {
                failure,
                exit_code: None,
                message: Some(molt_host::attempt::clean_message(&message)),
            };
            match fired {
                // a retry that comes due on hold is dropped with its series: the next
                // slot runs as usual after `agent unhold`
                Fired::Held => sched.attempts.clear(),
                Fired::Busy => {
                    let ended = failed(FailureClass::Busy, "an update was in progress".into());
                    settle(&settings, &mut sched, now, ended, offset, started_at);
                }
                Fired::Launched(launch::Launch {
                    error: Some(error), ..
                }) => {
                    let ended = failed(FailureClass::Launch, error);
                    settle(&settings, &mut sched, now, ended, offset, started_at);
                }
                Fired::Launched(l) => {
                    sched.pending = Some(Pending {
                        launch: l.id,
                        at: l.at,
                    });
                    free_since = None;
                    warned_unreadable = false;
                }
            }
            save_schedule(&sched, &sched_path);
            continue;
        }
        if announced != Some(due.at) {
            tracing::info!("next update check at {} ({})", due.at, due.reason);
            announced = Some(due.at);
        }
        if let Some(r) = reporter.as_mut()
            && now >= next_report
        {
            r.poll(&settings, seed).await;
            next_report = Timestamp::now() + settings.poll;
        }
        let mut wait = due
            .at
            .duration_since(now)
            .try_into()
            .unwrap_or(MAX_SLEEP)
            .min(MAX_SLEEP);
        if reporter.is_some() {
            let until_report: Duration = next_report
                .duration_since(Timestamp::now())
                .try_into()
                .unwrap_or(Duration::ZERO);
            wait = wait.min(until_report);
        }
        if health_pending {
            wait = wait.min(HEALTH_RETRY);
        }
        if sched.pending.is_some() {
            wait = wait.min(RESULT_POLL);
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: stopping"); break; }
            _ = hup.recv() => {
                match reload() {
                    Ok(new) => {
                        tracing::info!("SIGHUP: reloaded {}", new.config_path.display());
                        reporter = Reporter::new(&new);
                        settings = new;
                        announced = None;
                    }
                    Err(e) => tracing::error!("SIGHUP: the new config is not usable, keeping the running one: {e}"),
                }
            }
        }
    }
    if let Err(e) = write_health(&settings, &nonce, started_at, HealthStatus::Stopping) {
        tracing::warn!("{e}");
    }
    Ok(())
}

fn save_schedule(sched: &ScheduleState, path: &std::path::Path) {
    if let Err(e) = sched.save(path) {
        tracing::warn!("cannot record the run in {}: {e}", path.display());
    }
}

/// How often an agent that could not write its health file tries again.
const HEALTH_RETRY: Duration = Duration::from_secs(2);

/// Writes the ready health file: true when written, false (with a warning) when the disk
/// refused it. Only a build without a usable version is fatal.
fn ready_or_retry(
    settings: &AgentSettings,
    nonce: &str,
    started_at: Timestamp,
) -> Result<bool, RunError> {
    match write_health(settings, nonce, started_at, HealthStatus::Ready) {
        Ok(()) => Ok(true),
        Err(e @ RunError::Health { .. }) => {
            tracing::warn!("{e}; the agent keeps running and tries again in {HEALTH_RETRY:?}");
            Ok(false)
        }
        Err(e) => Err(e),
    }
}
