//! `agent status [--json]` (SPEC §7): what this host runs, where its region and
//! credentials come from, how fresh its trust is, when it next updates, and how the last
//! update went. Read-only: it creates no state (no seed, no datastore).

use std::collections::BTreeSet;
use std::path::Path;

use jiff::Timestamp;
use molt_fetch::aws::{self, CredentialsSource, ImdsSettings, RegionSource};
use molt_fetch::tuf::CACHED_MANIFEST;
use molt_host::schedule::{self, Attempt, Pending, Reason, ScheduleState};
use molt_host::state::{self, Health, HistoryRecord, Outcome, Quarantine};
use molt_schema::manifest::Manifest;
use molt_schema::resolve::{self, Decision, SkipReason, Target};
use molt_schema::rollout::Seed;
use molt_schema::{Platform, Region, Version};
use serde::Serialize;

use crate::hold::{self, Hold};
use crate::launch::Launch;
use crate::settings::AgentSettings;

/// A fact that may not be known, with why not and what to do.
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum Fact<T> {
    Known(T),
    Unknown { error: String, hint: Option<String> },
}

impl<T> Fact<T> {
    pub fn known(&self) -> Option<&T> {
        match self {
            Fact::Known(t) => Some(t),
            Fact::Unknown { .. } => None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RegionInfo {
    pub region: Region,
    pub source: RegionSource,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunningAgent {
    pub pid: u32,
    pub version: Version,
    pub started_at: Timestamp,
    pub alive: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct TrustInfo {
    pub root_version: u64,
    pub earliest_expiry: Timestamp,
    pub expiring_role: String,
    pub expired: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScheduleInfo {
    pub schedule: String,
    pub jitter: String,
    pub maintenance_window: Option<String>,
    pub on_boot: Option<String>,
    pub last_run: Option<Timestamp>,
    pub next_run: Option<Timestamp>,
    pub next_reason: Option<Reason>,
    /// A run the agent launched whose result it has not seen yet.
    pub running: Option<Pending>,
    /// The failed attempts of the current run, oldest first.
    pub failed_attempts: Vec<Attempt>,
    /// When the last failed attempt is tried again (before the next slot).
    pub retry_at: Option<Timestamp>,
    /// How many retries a failed run gets.
    pub retries: u32,
    /// Why the last failed attempt has no retry waiting.
    pub not_retried: Option<&'static str>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WaveInfo {
    /// The version `latest` means for this host now.
    pub latest: Option<Version>,
    /// When this host's wave for it starts (or started).
    pub wave_time: Option<Timestamp>,
    pub summary: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct AgentStatus {
    pub agent_version: &'static str,
    pub platform: Fact<Platform>,
    pub root: String,
    pub config: String,
    pub installed: Option<Version>,
    pub running: Option<RunningAgent>,
    pub region: Fact<RegionInfo>,
    pub credentials: Fact<CredentialsSource>,
    pub trust: Fact<TrustInfo>,
    pub schedule: ScheduleInfo,
    pub wave: Fact<WaveInfo>,
    pub hold: Option<Hold>,
    pub seed: Option<u16>,
    pub report: Option<String>,
    pub last_update: Option<HistoryRecord>,
    pub last_launch: Option<Launch>,
}

pub fn imds(settings: &AgentSettings) -> ImdsSettings {
    ImdsSettings {
        v1_fallback: settings.config.imds_v1_fallback,
    }
}

pub async fn region(settings: &AgentSettings) -> Fact<RegionInfo> {
    let configured = settings
        .config
        .region
        .clone()
        .map(|r| (r, RegionSource::Config));
    match aws::resolve_region(configured, |k| std::env::var(k).ok(), &imds(settings)).await {
        Ok((region, source)) => Fact::Known(RegionInfo { region, source }),
        Err(e) => Fact::Unknown {
            hint: e.hint().map(str::to_owned),
            error: e.to_string(),
        },
    }
}

pub async fn credentials(region: Option<&Region>) -> Fact<CredentialsSource> {
    let fallback: Region = match "us-east-1".parse() {
        Ok(r) => r,
        Err(_) => {
            return Fact::Unknown {
                error: "internal: no fallback region".into(),
                hint: None,
            };
        }
    };
    let provider = aws::credentials_provider(region.unwrap_or(&fallback)).await;
    match aws::probe_credentials(&provider).await {
        Ok(source) => Fact::Known(source),
        Err(e) => Fact::Unknown {
            hint: e.hint().map(str::to_owned),
            error: e.to_string(),
        },
    }
}

/// The datastore of the region: root version and the earliest expiry of the four roles.
pub fn trust(settings: &AgentSettings, region: Option<&Region>, now: Timestamp) -> Fact<TrustInfo> {
    let Some(region) = region else {
        return Fact::Unknown {
            error: "the region is not known".into(),
            hint: None,
        };
    };
    let dir = settings.layout.tuf_dir().join(region.as_str());
    let read = |role: &str| -> Result<(u64, Timestamp), String> {
        let path = dir.join(format!("{role}.json"));
        let bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        let version = v["signed"]["version"]
            .as_u64()
            .ok_or_else(|| format!("{} has no signed.version", path.display()))?;
        let expires = v["signed"]["expires"]
            .as_str()
            .and_then(|s| s.parse::<Timestamp>().ok())
            .ok_or_else(|| format!("{} has no signed.expires", path.display()))?;
        Ok((version, expires))
    };
    let mut root_version = 0;
    let mut earliest: Option<(Timestamp, &str)> = None;
    for role in ["root", "targets", "snapshot", "timestamp"] {
        match read(role) {
            Ok((version, expires)) => {
                if role == "root" {
                    root_version = version;
                }
                if earliest.is_none_or(|(t, _)| expires < t) {
                    earliest = Some((expires, role));
                }
            }
            Err(error) => {
                return Fact::Unknown {
                    error,
                    hint: Some(
                        "no verified metadata yet: the first update fetches it (a dry run reads but keeps nothing)".into(),
                    ),
                };
            }
        }
    }
    match earliest {
        Some((at, role)) => Fact::Known(TrustInfo {
            root_version,
            earliest_expiry: at,
            expiring_role: role.to_owned(),
            expired: at <= now,
        }),
        None => Fact::Unknown {
            error: "no metadata".into(),
            hint: None,
        },
    }
}

fn read_seed(path: &Path) -> Option<Seed> {
    molt_host::seed::persisted(path)
}

/// What `latest` means for this host, from the manifest verified at the last update.
pub fn wave(
    settings: &AgentSettings,
    region: Option<&Region>,
    platform: Option<Platform>,
    installed: Option<&Version>,
    seed: Option<Seed>,
    now: Timestamp,
) -> Fact<WaveInfo> {
    let unknown = |error: String| Fact::Unknown {
        error,
        hint: Some(
            "the first update caches the region's manifest (a dry run reads but keeps nothing)"
                .into(),
        ),
    };
    let (Some(region), Some(platform)) = (region, platform) else {
        return unknown("the region or platform is not known".into());
    };
    let path = settings
        .layout
        .tuf_dir()
        .join(region.as_str())
        .join(CACHED_MANIFEST);
    let manifest = match std::fs::read(&path) {
        Ok(bytes) => match Manifest::parse(&bytes) {
            Ok(m) => m,
            Err(e) => return unknown(format!("{}: {e}", path.display())),
        },
        Err(_) => return unknown(format!("no manifest cached at {}", path.display())),
    };
    let quarantined: BTreeSet<Version> = Quarantine::load(&settings.layout.quarantine())
        .map(|q| q.versions())
        .unwrap_or_default();
    let req = resolve::Request {
        package: molt_schema::PackageName::Agent.as_str(),
        platform,
        current: installed,
        target: &Target::Latest,
        allow_downgrade: false,
        force: false,
        ignore_waves: false,
        quarantined: &quarantined,
        now,
        seed: seed.unwrap_or(Seed::wrapping(0)),
    };
    let info = match resolve::resolve(&manifest, &req) {
        Ok(Decision::Install(plan)) => WaveInfo {
            latest: Some(plan.to.clone()),
            wave_time: plan.wave_time,
            summary: format!("{} is due on this host ({})", plan.to, plan.reason),
        },
        Ok(Decision::Skip(skip)) => {
            let (latest, wave_time) = match &skip.reason {
                SkipReason::WaitingForWave { version, at } => (Some(version.clone()), *at),
                SkipReason::UpToDate => (installed.cloned(), None),
                SkipReason::AheadOfLatest { latest } => (Some(latest.clone()), None),
                SkipReason::Quarantined { version } | SkipReason::Halted { version, .. } => {
                    (Some(version.clone()), None)
                }
            };
            WaveInfo {
                latest,
                wave_time,
                summary: skip.to_string(),
            }
        }
        Err(refusal) => WaveInfo {
            latest: None,
            wave_time: None,
            summary: refusal.to_string(),
        },
    };
    Fact::Known(info)
}

/// The running agent, from `agent/health.json`.
fn running(settings: &AgentSettings) -> Option<RunningAgent> {
    let h: Health = state::read_json(&settings.layout.health()).ok().flatten()?;
    // A zombie (exited, not yet reaped) is not alive.
    let alive = molt_host::process::alive_non_child(h.pid, None);
    Some(RunningAgent {
        pid: h.pid,
        version: h.version,
        started_at: h.started_at,
        alive,
    })
}

pub fn schedule_info(
    settings: &AgentSettings,
    seed: Option<Seed>,
    started_at: Timestamp,
    now: Timestamp,
) -> ScheduleInfo {
    let plan = &settings.plan;
    let sched = state::read_json::<ScheduleState>(&settings.schedule_state())
        .ok()
        .flatten()
        .unwrap_or_else(|| ScheduleState::new(now));
    let offset = schedule::jitter_offset(seed.unwrap_or(Seed::wrapping(0)), plan.jitter);
    let due = schedule::next_run(plan, offset, &sched, started_at, true, now);
    ScheduleInfo {
        schedule: plan.schedule.to_string(),
        jitter: humantime::format_duration(plan.jitter).to_string(),
        maintenance_window: plan.window.as_ref().map(ToString::to_string),
        on_boot: plan
            .on_boot
            .map(|d| format!("{} after start", humantime::format_duration(d))),
        last_run: sched.last_run,
        next_run: due.as_ref().map(|d| d.at.max(now)),
        next_reason: due.map(|d| d.reason),
        running: sched.pending.clone(),
        retry_at: sched.retry_at,
        not_retried: sched.not_retried_because(crate::run::retries()),
        failed_attempts: sched.attempts,
        retries: crate::run::retries(),
    }
}

pub async fn gather(settings: &AgentSettings) -> AgentStatus {
    let now = Timestamp::now();
    let layout = &settings.layout;
    let platform = match settings.config.platform {
        Some(p) => Fact::Known(p),
        None => match Platform::detect() {
            Ok(p) => Fact::Known(p),
            Err(e) => Fact::Unknown {
                error: e.to_string(),
                hint: Some("set `platform` in the config".into()),
            },
        },
    };
    let installed = layout.current_version();
    let running = running(settings);
    let region = region(settings).await;
    let region_value = region.known().map(|r| r.region.clone());
    let credentials = credentials(region_value.as_ref()).await;
    let seed = read_seed(&layout.seed());
    let started_at = running
        .as_ref()
        .filter(|r| r.alive)
        .map_or(now, |r| r.started_at);
    AgentStatus {
        agent_version: molt_host::build::version(),
        root: layout.root().display().to_string(),
        config: if settings.config_exists {
            settings.config_path.display().to_string()
        } else {
            format!("{} (absent: defaults)", settings.config_path.display())
        },
        trust: trust(settings, region_value.as_ref(), now),
        wave: wave(
            settings,
            region_value.as_ref(),
            platform.known().copied(),
            installed.as_ref(),
            seed,
            now,
        ),
        schedule: schedule_info(settings, seed, started_at, now),
        hold: hold::current(settings),
        seed: seed.map(Seed::get),
        report: settings.report.clone(),
        last_update: state::read_history(&layout.history())
            .ok()
            .and_then(|mut h| h.pop()),
        last_launch: state::read_json(&settings.last_launch()).ok().flatten(),
        platform,
        installed,
        running,
        region,
        credentials,
    }
}

fn fact<T>(f: &Fact<T>, show: impl Fn(&T) -> String) -> String {
    match f {
        Fact::Known(t) => show(t),
        Fact::Unknown { error, hint } => match hint {
            Some(h) => format!("unknown: {error} (hint: {h})"),
            None => format!("unknown: {error}"),
        },
    }
}

fn ts(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn render(s: &AgentStatus) -> String {
    let mut out = Vec::new();
    let mut line = |k: &str, v: String| out.push(format!("{k:<13}{v}"));
    line(
        "agent:",
        format!(
            "{} ({})",
            s.agent_version,
            fact(&s.platform, ToString::to_string)
        ),
    );
    line("root:", s.root.clone());
    line("config:", s.config.clone());
    line(
        "installed:",
        s.installed
            .as_ref()
            .map_or_else(|| "(none)".into(), ToString::to_string),
    );
    line(
        "running:",
        match &s.running {
            Some(r) if r.alive => {
                format!("{} (pid {}, since {})", r.version, r.pid, ts(r.started_at))
            }
            Some(r) => format!("not running (last: {} pid {})", r.version, r.pid),
            None => "not running".into(),
        },
    );
    line(
        "region:",
        fact(&s.region, |r| format!("{} (from {})", r.region, r.source)),
    );
    line("credentials:", fact(&s.credentials, ToString::to_string));
    line(
        "trust:",
        fact(&s.trust, |t| {
            format!(
                "root v{}; earliest expiry {} ({}){}",
                t.root_version,
                ts(t.earliest_expiry),
                t.expiring_role,
                if t.expired { " EXPIRED" } else { "" }
            )
        }),
    );
    let sc = &s.schedule;
    let mut sched = format!("{}, jitter {}", sc.schedule, sc.jitter);
    if let Some(w) = &sc.maintenance_window {
        sched.push_str(&format!(", window {w}"));
    }
    if let Some(b) = &sc.on_boot {
        sched.push_str(&format!(", on boot {b}"));
    }
    line("schedule:", sched);
    line("last run:", sc.last_run.map_or_else(|| "never".into(), ts));
    line(
        "next run:",
        match (sc.next_run, sc.next_reason) {
            (Some(at), Some(Reason::Retry)) => format!(
                "{} (retry {} of {})",
                ts(at),
                sc.failed_attempts.len(),
                sc.retries
            ),
            (Some(at), Some(reason)) => format!("{} ({reason})", ts(at)),
            _ => "never (the schedule has no next slot)".into(),
        },
    );
    if let Some(p) = &sc.running {
        line(
            "running:",
            format!("an update launched at {} ({})", ts(p.at), p.launch),
        );
    }
    if let Some(a) = sc.failed_attempts.last() {
        line(
            "failed run:",
            format!(
                "{} failure at {}{}{}; {}",
                a.failure,
                ts(a.at),
                a.exit_code
                    .map(|c| format!(" (exit {c})"))
                    .unwrap_or_default(),
                a.message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default(),
                match (&sc.running, sc.not_retried) {
                    (Some(_), _) => "it is being retried now".to_owned(),
                    (None, Some(why)) => {
                        format!("not retried ({why}); the next slot runs as usual")
                    }
                    (None, None) => "the retry is the next run".to_owned(),
                }
            ),
        );
    }
    line(
        "wave:",
        fact(&s.wave, |w| match (&w.latest, w.wave_time) {
            (Some(v), Some(at)) => format!(
                "latest {v}: this host's wave starts {}; {}",
                ts(at),
                w.summary
            ),
            _ => w.summary.clone(),
        }),
    );
    line(
        "hold:",
        s.hold
            .as_ref()
            .map_or_else(|| "no".into(), ToString::to_string),
    );
    line(
        "report:",
        s.report
            .clone()
            .unwrap_or_else(|| "(not configured)".into()),
    );
    line(
        "last update:",
        s.last_update.as_ref().map_or_else(
            || "none".into(),
            |r| {
                format!(
                    "{} → {}: {} at {}{}",
                    r.from
                        .as_ref()
                        .map_or_else(|| "nothing".into(), ToString::to_string),
                    r.to,
                    match r.result {
                        Outcome::Success => "success",
                        Outcome::RolledBack => "rolled back",
                        Outcome::Failed => "failed",
                        Outcome::RollbackFailed => "ROLLBACK FAILED",
                        Outcome::Unknown => "unknown",
                    },
                    ts(r.finished_at),
                    r.reason
                        .as_ref()
                        .map(|x| format!(" ({x})"))
                        .unwrap_or_default()
                )
            },
        ),
    );
    line(
        "last launch:",
        s.last_launch.as_ref().map_or_else(
            || "none".into(),
            |l| {
                format!(
                    "{} at {}{}",
                    match l.kind {
                        crate::launch::LaunchKind::Update => "update",
                        crate::launch::LaunchKind::Recover => "recover",
                    },
                    ts(l.at),
                    l.error
                        .as_ref()
                        .map(|e| format!(" FAILED: {e}"))
                        .unwrap_or_default()
                )
            },
        ),
    );
    out.join("\n")
}
