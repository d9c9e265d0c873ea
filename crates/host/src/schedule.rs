//! The agent's association (SPEC §1, §7): when a host runs the updater on its own.
//!
//! Pure functions over [`jiff::Timestamp`]s, all in UTC. Nothing here reads the clock:
//! the caller passes `now`, the agent's start time and the host's seed.
//!
//! - A [`Schedule`] is `rate(14 days)` (slots every 14 days, counted from the moment the
//!   host first ran the agent) or `cron(0 2 * * sun)` (five fields, UTC).
//! - [`jitter_offset`] turns the host's seed into a stable offset in `[0, jitter)`, so
//!   a fleet does not update in the same minute.
//! - A [`MaintenanceWindow`] restricts runs to set hours (`02:00` for `4h` on `sat`, `sun`).
//! - [`ScheduleState`] (`agent/schedule.json`) keeps the anchor, the last run, the run the
//!   agent launched and has not seen end ([`Pending`]), and the failed attempts of the
//!   current run with the time of its retry.
//!
//! # The rule ([`next_run`])
//!
//! With `offset = jitter_offset(seed, plan.jitter)`:
//!
//! 1. `base = min(last_run or first_seen, now)` (a last run "in the future" means the
//!    clock went back; it must not stall the schedule). `slot = next_slot(base)` with
//!    anchor `first_seen`, the first slot strictly after `base`; `candidate = slot +
//!    offset`. If `candidate > now`, the run is **Scheduled** at `candidate`.
//! 2. Otherwise the candidate has passed:
//!    - if `candidate >= started_at`, the agent was running when it came due (it is
//!      just waking up for it, or the machine was suspended): **Scheduled** at
//!      `candidate`, which is in the past, so it runs now;
//!    - if `candidate < started_at`, the host was off or the agent down across one or
//!      more slots: a single **Missed** run at `max(now, started_at + offset)`. Once,
//!      never once per missed slot: after it, `last_run` is that time and the next slot
//!      lies after it.
//! 3. If `state.retry_at` is set (a run failed, and [`ScheduleState::settle`] decided to
//!    try it again), the slot still lies ahead (1 gave **Scheduled** later than `now`; a
//!    slot that passed, or a catch-up run, makes a retry left from before stale), and
//!    `retry_at`, moved into the window as in 5, is strictly earlier than the run from 1,
//!    2 and 4 after 5, the run is **Retry** at `retry_at` (in the window).
//! 4. If `plan.on_boot` is `Some(delay)`, `boot_run_done` is false, no run was recorded
//!    since `started_at` (`last_run` is `None` or before `started_at`), no launched run
//!    waits for its result and no failed attempts are open (an agent an update started,
//!    or a rollback restarted, must not start another run), and `started_at + delay` is
//!    strictly earlier than the time from 1–2, the run is **Boot** at `started_at + delay`.
//! 5. If `plan.window` is set and the instant the run would happen, `max(at, now)`, is
//!    outside it, the run moves to `window.next_opening(max(at, now)) + w`, where `w =
//!    offset × (window duration / 2) / plan.jitter` (the host's offset scaled into the
//!    first half of the window; 0 without jitter). The reason stays.
//!
//! `next_run` returns the computed time even when it is in the past: the caller runs
//! at once when `at <= now`, and records `last_run = now` (with the reason) when the
//! run starts. `None` means nothing will ever be due (a time past the calendar's end).
//!
//! A new host's first scheduled run is one period after `first_seen` (plus its offset);
//! set `on_boot` to run soon after the agent starts. A jitter longer than a rate
//! stretches the period, so the agent's config caps it at the rate; with cron, keep the
//! jitter shorter than the gap between two matches.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::attempt::{FailureClass, RunResult};
use crate::state::{HistoryRecord, Outcome, STATE_VERSION, StateError, read_json, write_json};
use molt_schema::rollout::Seed;

/// The file under `<root>/state/` that holds the [`ScheduleState`].
pub const STATE_FILE: &str = "schedule.json";

/// The longest maintenance window (and the longest jitter the config accepts).
pub const MAX_WINDOW: Duration = Duration::from_secs(7 * 86_400);

const JITTER_SALT: &[u8] = b"molt-schedule-jitter-v1";

const FORMS: &str = "write rate(N UNIT) with UNIT second, minute, hour or day (e.g. \
                     rate(14 days)), or cron(MINUTE HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK) in UTC \
                     (e.g. cron(0 2 * * sun))";

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{value:?} is not a schedule; {FORMS}")]
    Unrecognised { value: String },
    #[error(
        "bad rate {value:?}: {reason}; write e.g. rate(14 days), rate(1 hour) or rate(30 minutes)"
    )]
    Rate { value: String, reason: String },
    #[error(
        "bad cron expression {value:?}: {reason}; write five fields in UTC (minute hour \
         day-of-month month day-of-week), e.g. cron(0 2 * * sun)"
    )]
    Cron { value: String, reason: String },
    #[error("bad window start {value:?}; write the time of day in UTC as HH:MM, e.g. \"02:00\"")]
    WindowStart { value: String },
    #[error(
        "bad window duration {value}: {reason}; write e.g. \"4h\" (more than 0, at most 7 days)"
    )]
    WindowDuration { value: String, reason: String },
    #[error("unknown day {value:?}; write mon, tue, wed, thu, fri, sat or sun (or the full name)")]
    Day { value: String },
    #[error(
        "the window's days list is empty; name at least one day, or leave days out for every day"
    )]
    NoDays,
}

// ----- Schedule -------------------------------------------------------------------------

/// When the association runs: `rate(14 days)` or `cron(0 2 * * sun)`.
// An agent holds one schedule; boxing the cron would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Schedule {
    /// Every this long, counted from an anchor (when the host first ran the agent).
    /// Parsed rates are whole seconds, at least one.
    Rate(Duration),
    /// The minutes a five-field cron expression matches, in UTC.
    Cron(Cron),
}

impl Schedule {
    /// The first slot strictly after `after`. Rate slots are `anchor + k × rate` for any
    /// integer `k`; cron slots are the expression's matches. `None` when there is none
    /// within the calendar's range (or for a zero rate, which parsing never makes).
    pub fn next_slot(&self, after: Timestamp, anchor: Timestamp) -> Option<Timestamp> {
        match self {
            Schedule::Rate(rate) => {
                let rate = i128::try_from(rate.as_nanos()).ok().filter(|r| *r > 0)?;
                let anchor = anchor.as_nanosecond();
                let k = (after.as_nanosecond() - anchor).div_euclid(rate) + 1;
                let slot = k.checked_mul(rate)?.checked_add(anchor)?;
                Timestamp::from_nanosecond(slot).ok()
            }
            Schedule::Cron(cron) => {
                let from = after.to_zoned(TimeZone::UTC);
                let next = cron.find_next_occurrence(&from, false).ok()?.timestamp();
                // croner steps from `after`'s whole second; a match is always later
                (next > after).then_some(next)
            }
        }
    }
}

fn parse_rate(value: &str, inner: &str) -> Result<Duration, ScheduleError> {
    let err = |reason: String| ScheduleError::Rate {
        value: value.to_owned(),
        reason,
    };
    let mut parts = inner.split_whitespace();
    let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(err("expected a number and a unit".into()));
    };
    let n: u64 = n
        .parse()
        .map_err(|_| err(format!("{n:?} is not a whole number")))?;
    if n == 0 {
        return Err(err("the number must be at least 1".into()));
    }
    let unit_secs = match unit.to_ascii_lowercase().as_str() {
        "second" | "seconds" => 1,
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3_600,
        "day" | "days" => 86_400,
        _ => {
            return Err(err(format!(
                "unknown unit {unit:?} (use second, minute, hour or day)"
            )));
        }
    };
    n.checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| err("too long".into()))
}

fn parse_cron(value: &str, inner: &str) -> Result<Cron, ScheduleError> {
    let err = |reason: String| ScheduleError::Cron {
        value: value.to_owned(),
        reason,
    };
    let inner = inner.trim();
    let fields = inner.split_whitespace().count();
    if !inner.starts_with('@') && fields != 5 {
        // Six fields would be croner's seconds or AWS's year, and reading one as the
        // other silently moves the schedule; so molt takes exactly five.
        return Err(err(format!(
            "it has {fields} fields, not 5 (seconds and AWS's year field are not supported)"
        )));
    }
    let parser = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build();
    let cron = parser.parse(inner).map_err(|e| {
        // name the field croner stumbled on, when one alone is at fault
        const FIELDS: [&str; 5] = [
            "minute (0-59)",
            "hour (0-23)",
            "day-of-month (1-31)",
            "month (1-12 or jan-dec)",
            "day-of-week (0-7 or sun-sat)",
        ];
        let fields: Vec<&str> = inner.split_whitespace().collect();
        let culprit = (fields.len() == FIELDS.len())
            .then(|| {
                (0..FIELDS.len()).find(|&i| {
                    let mut alone = ["*"; 5];
                    alone[i] = fields[i];
                    parser.parse(&alone.join(" ")).is_err()
                })
            })
            .flatten();
        let detail = e.to_string().trim_end_matches('.').to_owned();
        err(match culprit {
            Some(i) => format!(
                "the {} field {:?} is invalid ({detail})",
                FIELDS[i], fields[i]
            ),
            None => detail,
        })
    })?;
    // A pattern such as `0 0 30 2 *` parses but never matches.
    let origin = Timestamp::UNIX_EPOCH.to_zoned(TimeZone::UTC);
    if cron.find_next_occurrence(&origin, false).is_err() {
        return Err(err("it never matches a date".into()));
    }
    Ok(cron)
}

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Schedule, ScheduleError> {
        let t = s.trim();
        let inner = |prefix: &str| {
            t.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(')'))
        };
        if let Some(inner) = inner("rate(") {
            parse_rate(s, inner).map(Schedule::Rate)
        } else if let Some(inner) = inner("cron(") {
            parse_cron(s, inner).map(Schedule::Cron)
        } else {
            Err(ScheduleError::Unrecognised {
                value: s.to_owned(),
            })
        }
    }
}

impl fmt::Display for Schedule {
    /// Writes the form [`FromStr`] reads. A rate is written in its largest whole unit
    /// (`rate(24 hours)` reads back as `rate(1 day)`); a hand-made rate with a fraction
    /// of a second is written in whole seconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Rate(rate) => {
                let secs = rate.as_secs();
                let (n, unit) = [(86_400, "day"), (3_600, "hour"), (60, "minute")]
                    .into_iter()
                    .find(|(u, _)| secs != 0 && secs % u == 0)
                    .map_or((secs, "second"), |(u, name)| (secs / u, name));
                let plural = if n == 1 { "" } else { "s" };
                write!(f, "rate({n} {unit}{plural})")
            }
            Schedule::Cron(cron) => write!(f, "cron({})", cron.pattern.as_str()),
        }
    }
}

impl Serialize for Schedule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Schedule, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

// ----- Maintenance window ---------------------------------------------------------------

/// When runs may happen: from `start` (UTC) for `duration`, opening on `days` (every day
/// when `None`). A window may cross midnight; it belongs to the day it opens.
///
/// Invariants, kept by [`MaintenanceWindow::new`] and deserialisation: `days` is not
/// empty and has no duplicates; `0 < duration <= 7 days`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaintenanceWindow {
    days: Option<Vec<Weekday>>,
    start: Time,
    duration: Duration,
}

impl MaintenanceWindow {
    pub fn new(
        days: Option<Vec<Weekday>>,
        start: Time,
        duration: Duration,
    ) -> Result<MaintenanceWindow, ScheduleError> {
        check_window_duration(duration)?;
        let days = match days {
            Some(mut days) => {
                if days.is_empty() {
                    return Err(ScheduleError::NoDays);
                }
                days.sort_by_key(|d| d.to_monday_zero_offset());
                days.dedup();
                Some(days)
            }
            None => None,
        };
        Ok(MaintenanceWindow {
            days,
            start,
            duration,
        })
    }

    /// The days the window opens on, Monday first; `None` for every day.
    pub fn days(&self) -> Option<&[Weekday]> {
        self.days.as_deref()
    }

    /// The time of day (UTC) the window opens.
    pub fn start(&self) -> Time {
        self.start
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn opens_on(&self, day: Weekday) -> bool {
        self.days.as_ref().is_none_or(|days| days.contains(&day))
    }

    fn opening_on(&self, date: jiff::civil::Date) -> Option<Timestamp> {
        if !self.opens_on(date.weekday()) {
            return None;
        }
        TimeZone::UTC
            .to_timestamp(date.to_datetime(self.start))
            .ok()
    }

    /// True when `t` is inside an opening of the window: `opening <= t < opening +
    /// duration`.
    pub fn contains(&self, t: Timestamp) -> bool {
        let mut date = TimeZone::UTC.to_datetime(t).date();
        // a window lasts at most 7 days, so one opened 7 days ago may still be open
        for _ in 0..=7 {
            if let Some(open) = self.opening_on(date)
                && open <= t
                && open.checked_add(self.duration).is_ok_and(|close| t < close)
            {
                return true;
            }
            match date.yesterday() {
                Ok(d) => date = d,
                Err(_) => break,
            }
        }
        false
    }

    /// The first opening strictly after `after` (`Timestamp::MAX` past the calendar's
    /// end).
    pub fn next_opening(&self, after: Timestamp) -> Timestamp {
        let mut date = TimeZone::UTC.to_datetime(after).date();
        // the same weekday a week later is always after `after`
        for _ in 0..=7 {
            if let Some(open) = self.opening_on(date)
                && open > after
            {
                return open;
            }
            match date.tomorrow() {
                Ok(d) => date = d,
                Err(_) => break,
            }
        }
        Timestamp::MAX
    }
}

fn check_window_duration(duration: Duration) -> Result<(), ScheduleError> {
    let reason = if duration.is_zero() {
        "a window must last more than 0"
    } else if duration > MAX_WINDOW {
        "a window lasts at most 7 days"
    } else {
        return Ok(());
    };
    Err(ScheduleError::WindowDuration {
        value: humantime::format_duration(duration).to_string(),
        reason: reason.into(),
    })
}

fn day_name(day: Weekday) -> &'static str {
    match day {
        Weekday::Monday => "mon",
        Weekday::Tuesday => "tue",
        Weekday::Wednesday => "wed",
        Weekday::Thursday => "thu",
        Weekday::Friday => "fri",
        Weekday::Saturday => "sat",
        Weekday::Sunday => "sun",
    }
}

/// Parses `mon` or `monday` (any case).
pub fn parse_day(s: &str) -> Result<Weekday, ScheduleError> {
    let day = match s.trim().to_ascii_lowercase().as_str() {
        "mon" | "monday" => Weekday::Monday,
        "tue" | "tuesday" => Weekday::Tuesday,
        "wed" | "wednesday" => Weekday::Wednesday,
        "thu" | "thursday" => Weekday::Thursday,
        "fri" | "friday" => Weekday::Friday,
        "sat" | "saturday" => Weekday::Saturday,
        "sun" | "sunday" => Weekday::Sunday,
        _ => {
            return Err(ScheduleError::Day {
                value: s.to_owned(),
            });
        }
    };
    Ok(day)
}

/// Parses `HH:MM` (24-hour, UTC).
fn parse_start(s: &str) -> Result<Time, ScheduleError> {
    let bad = || ScheduleError::WindowStart {
        value: s.to_owned(),
    };
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let digits = |p: &str, len: std::ops::RangeInclusive<usize>| {
        len.contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 1..=2) || !digits(m, 2..=2) {
        return Err(bad());
    }
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

struct WireDay(Weekday);

impl<'de> Deserialize<'de> for WireDay {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WireDay, D::Error> {
        let s = String::deserialize(d)?;
        parse_day(&s).map(WireDay).map_err(serde::de::Error::custom)
    }
}

struct WireStart(Time);

impl<'de> Deserialize<'de> for WireStart {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WireStart, D::Error> {
        let s = String::deserialize(d)?;
        parse_start(&s)
            .map(WireStart)
            .map_err(serde::de::Error::custom)
    }
}

struct WireDuration(Duration);

impl<'de> Deserialize<'de> for WireDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<WireDuration, D::Error> {
        let s = String::deserialize(d)?;
        let duration = humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(ScheduleError::WindowDuration {
                value: format!("{s:?}"),
                reason: e.to_string(),
            })
        })?;
        check_window_duration(duration)
            .map(|()| WireDuration(duration))
            .map_err(serde::de::Error::custom)
    }
}

fn wire_days<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<WireDay>>, D::Error> {
    let days: Option<Vec<WireDay>> = Option::deserialize(d)?;
    if days.as_ref().is_some_and(Vec::is_empty) {
        return Err(serde::de::Error::custom(ScheduleError::NoDays));
    }
    Ok(days)
}

/// The config form: `{ start = "02:00", duration = "4h", days = ["sat", "sun"] }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WireWindow {
    start: WireStart,
    duration: WireDuration,
    #[serde(default, deserialize_with = "wire_days")]
    days: Option<Vec<WireDay>>,
}

impl<'de> Deserialize<'de> for MaintenanceWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MaintenanceWindow, D::Error> {
        let w = WireWindow::deserialize(d)?;
        MaintenanceWindow::new(
            w.days.map(|days| days.into_iter().map(|d| d.0).collect()),
            w.start.0,
            w.duration.0,
        )
        .map_err(serde::de::Error::custom)
    }
}

impl Serialize for MaintenanceWindow {
    /// The config form, with three-letter days.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let mut st = s.serialize_struct("MaintenanceWindow", 3)?;
        st.serialize_field("start", &self.start.strftime("%H:%M").to_string())?;
        st.serialize_field(
            "duration",
            &humantime::format_duration(self.duration).to_string(),
        )?;
        let days = self
            .days
            .as_ref()
            .map(|days| days.iter().map(|d| day_name(*d)).collect::<Vec<_>>());
        st.serialize_field("days", &days)?;
        st.end()
    }
}

impl fmt::Display for MaintenanceWindow {
    /// E.g. `02:00 UTC for 4h on sat, sun`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} UTC for {}",
            self.start.strftime("%H:%M"),
            humantime::format_duration(self.duration)
        )?;
        match &self.days {
            None => write!(f, " every day"),
            Some(days) => {
                let names: Vec<&str> = days.iter().map(|d| day_name(*d)).collect();
                write!(f, " on {}", names.join(", "))
            }
        }
    }
}

// ----- Plan, jitter, state --------------------------------------------------------------

/// Everything that decides when this host runs the updater on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub schedule: Schedule,
    /// Hosts spread their runs over `[slot, slot + jitter)` by seed.
    pub jitter: Duration,
    /// Runs only happen inside this window.
    pub window: Option<MaintenanceWindow>,
    /// Run once this long after the agent starts.
    pub on_boot: Option<Duration>,
}

/// This host's offset in `[0, jitter)` (zero when `jitter` is zero): the same for the
/// same seed, spread evenly over seeds, and independent of the seed's rollout wave (the
/// seed is hashed with a salt of its own).
pub fn jitter_offset(seed: Seed, jitter: Duration) -> Duration {
    let digest = Sha256::new()
        .chain_update(JITTER_SALT)
        .chain_update(seed.get().to_be_bytes())
        .finalize();
    let mut word = [0u8; 8];
    word.copy_from_slice(&digest[..8]);
    // a fraction h / 2^64 of the jitter: always below it, without modulo bias
    let nanos = (u128::from(u64::from_be_bytes(word)) * jitter.as_nanos()) >> 64;
    duration_from_nanos(nanos)
}

fn duration_from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // the remainder of a division by 10^9 fits in u32
    let sub = (nanos % 1_000_000_000) as u32;
    Duration::new(secs, sub)
}

/// Why a run happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its slot (plus the host's offset) came.
    Scheduled,
    /// One or more slots passed while the host or the agent was down.
    Missed,
    /// `on_boot`: shortly after the agent started.
    Boot,
    /// A run that failed for a reason time may cure, tried again before the next slot.
    Retry,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::Scheduled => "scheduled",
            Reason::Missed => "missed",
            Reason::Boot => "boot",
            Reason::Retry => "retry",
        })
    }
}

/// The next run: when, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Due {
    pub at: Timestamp,
    pub reason: Reason,
}

/// A reason written by a newer molt reads as `None`, so it never breaks the agent.
fn lenient_reason<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Reason>, D::Error> {
    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Wire {
        Scheduled,
        Missed,
        Boot,
        Retry,
        #[serde(other)]
        Unknown,
    }
    Ok(match Option::<Wire>::deserialize(d)? {
        Some(Wire::Scheduled) => Some(Reason::Scheduled),
        Some(Wire::Missed) => Some(Reason::Missed),
        Some(Wire::Boot) => Some(Reason::Boot),
        Some(Wire::Retry) => Some(Reason::Retry),
        Some(Wire::Unknown) | None => None,
    })
}

/// `agent/schedule.json`: the anchor of rate schedules and the last run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleState {
    #[serde(default = "crate::state::state_version")]
    pub version: u32,
    /// When this host first ran the agent; rate slots count from here.
    pub first_seen: Timestamp,
    /// When the last run (of any reason) started.
    #[serde(default)]
    pub last_run: Option<Timestamp>,
    #[serde(default, deserialize_with = "lenient_reason")]
    pub last_reason: Option<Reason>,
    /// The run the agent launched last, until its result is seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// The failed attempts of the current run (the one a slot, a catch-up or a boot
    /// started, and its retries), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// When the failed run is tried again (always before the next slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_at: Option<Timestamp>,
}

/// A launched run whose end the agent has not seen yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The launch id, which the updater writes back into `state/last-run.json`.
    pub launch: String,
    pub at: Timestamp,
}

/// One failed attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it was launched.
    pub at: Timestamp,
    #[serde(default, deserialize_with = "lenient_reason")]
    pub reason: Option<Reason>,
    pub failure: FailureClass,
    /// The updater's exit code (none when no updater ran, or none recorded one).
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The error's first line.
    #[serde(default)]
    pub message: Option<String>,
}

/// How a launched run ended, as the agent learns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ended {
    Succeeded,
    Failed {
        failure: FailureClass,
        exit_code: Option<i32>,
        message: Option<String>,
    },
}

/// How long a launched run may leave no result once the agent has seen the update lock
/// free (watching from the launch, or from its own start) before the agent counts it as
/// [`FailureClass::NoResult`]: the updater releases the lock a moment before it writes
/// its result, and a self-updated updater takes the lock again after its re-exec.
pub const NO_RESULT_GRACE: Duration = Duration::from_secs(120);

/// Whether `pending` has ended: `result` is the last `state/last-run.json`, `free_since`
/// when the agent first saw the update lock free since the launch (or since the agent
/// started), none while an update holds it. A run that left no result by the grace may
/// still have left a history record (an updater older than `last-run.json` writes only
/// that): `history`, read only then, gives the records, and one of an update started since
/// the launch says how it ended.
pub fn outcome_of(
    pending: &Pending,
    result: Option<&RunResult>,
    free_since: Option<Timestamp>,
    now: Timestamp,
    history: impl FnOnce() -> Vec<HistoryRecord>,
) -> Option<Ended> {
    if let Some(r) = result.filter(|r| r.launch == pending.launch) {
        return Some(match r.failure {
            None if r.exit_code == 0 => Ended::Succeeded,
            failure => Ended::Failed {
                failure: failure
                    .or_else(|| FailureClass::from_exit_code(r.exit_code))
                    .unwrap_or(FailureClass::Failed),
                exit_code: Some(r.exit_code),
                message: r.message.as_deref().map(crate::attempt::clean_message),
            },
        });
    }
    let grace = jiff::SignedDuration::try_from(NO_RESULT_GRACE).unwrap_or_default();
    // `free_since` is this agent's own observation, made after the launch (a wall clock
    // that went back since the launch cannot stall this).
    if free_since.is_none_or(|since| now.duration_since(since) < grace) {
        return None;
    }
    if let Some(r) = history()
        .into_iter()
        .rev()
        .find(|r| r.started_at >= pending.at)
    {
        return Some(match r.result {
            Outcome::Success => Ended::Succeeded,
            outcome => Ended::Failed {
                failure: r
                    .failure
                    .or(FailureClass::from_outcome(outcome))
                    .unwrap_or(FailureClass::Failed),
                exit_code: None,
                message: r.reason.as_deref().map(crate::attempt::clean_message),
            },
        });
    }
    Some(Ended::Failed {
        failure: FailureClass::NoResult,
        exit_code: None,
        message: Some(
            "the updater ended without recording a result (killed, or the machine stopped); see agent/updater.log or the journal"
                .into(),
        ),
    })
}

impl ScheduleState {
    /// A host's first state: first seen `now`, never run.
    pub fn new(now: Timestamp) -> ScheduleState {
        ScheduleState {
            version: STATE_VERSION,
            first_seen: now,
            last_run: None,
            last_reason: None,
            pending: None,
            attempts: Vec::new(),
            retry_at: None,
        }
    }

    /// Reads the state, or writes and returns a new one (first seen `now`) when there is
    /// none. A corrupt file is an error: the caller decides whether to start over.
    pub fn load_or_init(path: &Path, now: Timestamp) -> Result<ScheduleState, StateError> {
        if let Some(state) = read_json(path)? {
            return Ok(state);
        }
        let state = ScheduleState::new(now);
        state.save(path)?;
        Ok(state)
    }

    /// Writes the state atomically, as this molt's schema version.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let state = ScheduleState {
            version: STATE_VERSION,
            ..self.clone()
        };
        write_json(path, &state)
    }

    /// Records a run that starts at `at`. A run that is not a retry starts a new series of
    /// attempts; any run takes the place of a retry that was waiting.
    pub fn record_run(&mut self, at: Timestamp, reason: Reason) {
        self.last_run = Some(at);
        self.last_reason = Some(reason);
        self.retry_at = None;
        self.pending = None;
        if reason != Reason::Retry {
            self.attempts.clear();
        }
    }

    /// Settles the run the agent launched at `at` for `reason`: a success ends the series;
    /// a failure is recorded, and when its class is retryable and `retries` is not spent,
    /// it is tried again `delay(n)` after `now` (`n` = 1 for the first retry), unless that
    /// falls on or after the next slot (which then runs as usual). Returns the retry time.
    #[allow(clippy::too_many_arguments)]
    pub fn settle(
        &mut self,
        at: Timestamp,
        reason: Reason,
        ended: Ended,
        plan: &Plan,
        offset: Duration,
        started_at: Timestamp,
        now: Timestamp,
        retries: u32,
        delay: impl Fn(u32) -> Duration,
    ) -> Option<Timestamp> {
        self.pending = None;
        self.retry_at = None;
        let Ended::Failed {
            failure,
            exit_code,
            message,
        } = ended
        else {
            self.attempts.clear();
            return None;
        };
        self.attempts.push(Attempt {
            at,
            reason: Some(reason),
            failure,
            exit_code,
            message,
        });
        // bounded even if a newer agent's state held more
        let keep = usize::try_from(retries)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        if self.attempts.len() > keep {
            self.attempts.drain(..self.attempts.len() - keep);
        }
        let retry = u32::try_from(self.attempts.len()).unwrap_or(u32::MAX);
        if !failure.retryable() || retry > retries {
            return None;
        }
        let at = now.checked_add(delay(retry)).ok()?;
        // kept only when it comes first, once the window has moved both it and the slot
        self.retry_at = Some(at);
        let next = next_run(plan, offset, self, started_at, true, now);
        if let Some(d) = next.filter(|d| d.reason == Reason::Retry) {
            Some(d.at)
        } else {
            self.retry_at = None;
            None
        }
    }

    /// Why the last failed attempt has no retry waiting (none when it has one, or when no
    /// attempt failed): for the agent's log and `agent status`.
    pub fn not_retried_because(&self, retries: u32) -> Option<&'static str> {
        let last = self.attempts.last().filter(|_| self.retry_at.is_none())?;
        Some(if !last.failure.retryable() {
            "a retry would fail the same way"
        } else if self.attempts.len() > usize::try_from(retries).unwrap_or(usize::MAX) {
            "its retries are spent"
        } else {
            "the next slot comes first"
        })
    }
}

/// `offset` scaled from `[0, jitter)` into the first half of the window.
fn window_offset(offset: Duration, jitter: Duration, window: &MaintenanceWindow) -> Duration {
    let jitter = jitter.as_nanos();
    if jitter == 0 {
        return Duration::ZERO;
    }
    let offset = offset.as_nanos().min(jitter - 1);
    duration_from_nanos(offset * (window.duration.as_nanos() / 2) / jitter)
}

/// When this host runs next, and why. See the [module docs](self) for the rule.
pub fn next_run(
    plan: &Plan,
    offset: Duration,
    state: &ScheduleState,
    started_at: Timestamp,
    boot_run_done: bool,
    now: Timestamp,
) -> Option<Due> {
    let base = state.last_run.unwrap_or(state.first_seen).min(now);
    let scheduled = plan
        .schedule
        .next_slot(base, state.first_seen)
        .and_then(|slot| slot.checked_add(offset).ok())
        .map(|candidate| {
            if candidate > now || candidate >= started_at {
                Due {
                    at: candidate,
                    reason: Reason::Scheduled,
                }
            } else {
                let after_start = started_at.checked_add(offset).unwrap_or(Timestamp::MAX);
                Due {
                    at: now.max(after_start),
                    reason: Reason::Missed,
                }
            }
        });

    // No boot run while a launched run is unsettled or a series of attempts is open: an
    // agent the update started (or restarted by a rollback) must not start another run.
    let boot_pending = !boot_run_done
        && state.last_run.is_none_or(|last| last < started_at)
        && state.pending.is_none()
        && state.attempts.is_empty();
    let boot = plan
        .on_boot
        .filter(|_| boot_pending)
        .and_then(|delay| started_at.checked_add(delay).ok())
        .map(|at| Due {
            at,
            reason: Reason::Boot,
        });

    let in_window = |mut due: Due| {
        if let Some(window) = &plan.window {
            let runs_at = due.at.max(now);
            if !window.contains(runs_at) {
                let opening = window.next_opening(runs_at);
                due.at = opening
                    .checked_add(window_offset(offset, plan.jitter, window))
                    .unwrap_or(opening);
            }
        }
        due
    };
    // The slot still lies ahead (a slot that passed, a catch-up run, makes any retry left
    // from before stale).
    let slot_ahead = scheduled.is_none_or(|s| s.reason == Reason::Scheduled && s.at > now);
    let due = match (scheduled, boot) {
        (Some(s), Some(b)) if b.at < s.at => Some(b),
        (Some(s), _) => Some(s),
        (None, b) => b,
    }
    .map(in_window);
    // A failed run's retry, while it comes (in the window) strictly before the next run.
    let retry = state
        .retry_at
        .filter(|_| slot_ahead)
        .map(|at| {
            in_window(Due {
                at,
                reason: Reason::Retry,
            })
        })
        .filter(|r| due.is_none_or(|d| r.at < d.at));
    retry.or(due)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sched(s: &str) -> Schedule {
        s.parse().unwrap()
    }

    const DAY: u64 = 86_400;

    #[test]
    fn parses_rates_and_crons_and_round_trips() {
        for (text, secs) in [
            ("rate(14 days)", 14 * DAY),
            ("rate(1 day)", DAY),
            ("rate(30 minutes)", 1_800),
            ("rate(1 second)", 1),
            ("rate(2 Hours)", 7_200),
            ("  rate(24 hours) ", DAY),
            ("rate(90 seconds)", 90),
        ] {
            let s = sched(text);
            assert_eq!(s, Schedule::Rate(Duration::from_secs(secs)), "{text}");
            assert_eq!(s.to_string().parse::<Schedule>().unwrap(), s, "{text}");
        }
        assert_eq!(sched("rate(24 hours)").to_string(), "rate(1 day)");
        assert_eq!(sched("rate(14 days)").to_string(), "rate(14 days)");
        assert_eq!(sched("rate(90 seconds)").to_string(), "rate(90 seconds)");
        for text in [
            "cron(0 2 * * sun)",
            "cron(*/15 * * * *)",
            "cron(30 4 1,15 * mon-fri)",
            "cron(@daily)",
        ] {
            let s = sched(text);
            assert!(matches!(s, Schedule::Cron(_)), "{text}");
            assert_eq!(s.to_string().parse::<Schedule>().unwrap(), s, "{text}");
        }
        let json = serde_json::to_string(&sched("rate(14 days)")).unwrap();
        assert_eq!(json, "\"rate(14 days)\"");
        assert_eq!(
            serde_json::from_str::<Schedule>(&json).unwrap(),
            sched("rate(14 days)")
        );
    }

    #[test]
    fn parse_errors_name_the_value_and_the_fix() {
        for (text, want) in [
            ("rate(0 days)", "at least 1"),
            ("rate(3 fortnights)", "unknown unit \"fortnights\""),
            ("rate(14days)", "a number and a unit"),
            ("rate(-1 days)", "not a whole number"),
            ("rate(1.5 hours)", "not a whole number"),
            ("rate(18446744073709551615 days)", "too long"),
            (
                "cron(61 * * * *)",
                "the minute (0-59) field \"61\" is invalid",
            ),
            (
                "cron(0 2 * 13 *)",
                "the month (1-12 or jan-dec) field \"13\"",
            ),
            ("cron(0 2 * * funday)", "day-of-week"),
            ("cron(0 2 * *)", "4 fields"),
            ("cron(0 2 ? * SUN *)", "6 fields"),
            ("cron(0 0 30 2 *)", "never matches"),
            ("cron(@reboot)", "@reboot"),
            ("every 14 days", "not a schedule"),
            ("", "not a schedule"),
            ("rate(14 days", "not a schedule"),
        ] {
            let err = text.parse::<Schedule>().unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(err.contains(&format!("{text:?}")), "{text}: {err}");
            let fix = if text.starts_with("rate(") && text.ends_with(')') {
                "rate(14 days)"
            } else {
                "cron(0 2 * * sun)"
            };
            assert!(err.contains(fix), "{text}: {err}");
        }
    }

    #[test]
    fn rate_slots_count_from_the_anchor() {
        let s = sched("rate(14 days)");
        let anchor = ts("2026-01-01T10:00:00Z");
        assert_eq!(
            s.next_slot(anchor, anchor),
            Some(ts("2026-01-15T10:00:00Z"))
        );
        assert_eq!(
            s.next_slot(ts("2026-01-20T00:00:00Z"), anchor),
            Some(ts("2026-01-29T10:00:00Z"))
        );
        // before the anchor, the lattice extends backwards
        assert_eq!(
            s.next_slot(ts("2025-12-31T00:00:00Z"), anchor),
            Some(anchor)
        );
        assert_eq!(
            Schedule::Rate(Duration::ZERO).next_slot(anchor, anchor),
            None
        );
    }

    #[test]
    fn cron_slots_are_utc_matches() {
        let s = sched("cron(0 2 * * sun)");
        // 2026-01-04 is a Sunday
        let anchor = Timestamp::UNIX_EPOCH;
        assert_eq!(
            s.next_slot(ts("2026-01-01T00:00:00Z"), anchor),
            Some(ts("2026-01-04T02:00:00Z"))
        );
        assert_eq!(
            s.next_slot(ts("2026-01-04T02:00:00Z"), anchor),
            Some(ts("2026-01-11T02:00:00Z"))
        );
        assert_eq!(
            s.next_slot(ts("2026-01-04T01:59:59.9Z"), anchor),
            Some(ts("2026-01-04T02:00:00Z"))
        );
        assert_eq!(
            s.next_slot(ts("2026-01-04T02:00:00.1Z"), anchor),
            Some(ts("2026-01-11T02:00:00Z"))
        );
    }

    fn window(text: &str) -> MaintenanceWindow {
        #[derive(Deserialize)]
        struct W {
            w: MaintenanceWindow,
        }
        toml::from_str::<W>(&format!("w = {text}")).unwrap().w
    }

    #[test]
    fn windows_parse_from_inline_tables() {
        let w = window(r#"{ start = "02:00", duration = "4h", days = ["sat", "Sunday"] }"#);
        assert_eq!(w.days(), Some(&[Weekday::Saturday, Weekday::Sunday][..]));
        assert_eq!(w.start(), Time::constant(2, 0, 0, 0));
        assert_eq!(w.duration(), Duration::from_secs(4 * 3600));
        assert_eq!(w.to_string(), "02:00 UTC for 4h on sat, sun");
        assert_eq!(
            serde_json::to_value(&w).unwrap(),
            serde_json::json!({"start": "02:00", "duration": "4h", "days": ["sat", "sun"]})
        );
        let every = window(r#"{ start = "9:30", duration = "30m" }"#);
        assert_eq!(every.days(), None);
        assert_eq!(every.start(), Time::constant(9, 30, 0, 0));

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct W {
            w: MaintenanceWindow,
        }
        for (text, want) in [
            (r#"{ start = "2am", duration = "4h" }"#, "\"2am\""),
            (r#"{ start = "24:00", duration = "4h" }"#, "HH:MM"),
            (r#"{ start = "02:00", duration = "0s" }"#, "more than 0"),
            (
                r#"{ start = "02:00", duration = "8days" }"#,
                "at most 7 days",
            ),
            (
                r#"{ start = "02:00", duration = "4 lightyears" }"#,
                "\"4 lightyears\"",
            ),
            (
                r#"{ start = "02:00", duration = "4h", days = ["fry"] }"#,
                "\"fry\"",
            ),
            (
                r#"{ start = "02:00", duration = "4h", days = [] }"#,
                "empty",
            ),
            (
                r#"{ start = "02:00", duration = "4h", dayz = ["mon"] }"#,
                "dayz",
            ),
            (r#"{ duration = "4h" }"#, "start"),
        ] {
            let err = toml::from_str::<W>(&format!("w = {text}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn windows_cross_midnight() {
        // Saturday 22:00 for 4 hours: until Sunday 02:00
        let w = window(r#"{ start = "22:00", duration = "4h", days = ["sat"] }"#);
        assert!(w.contains(ts("2026-01-03T22:00:00Z")));
        assert!(w.contains(ts("2026-01-04T01:59:59Z")));
        assert!(!w.contains(ts("2026-01-04T02:00:00Z")));
        assert!(!w.contains(ts("2026-01-03T21:59:59Z")));
        assert!(
            !w.contains(ts("2026-01-04T22:30:00Z")),
            "Sunday is not a day"
        );
        assert_eq!(
            w.next_opening(ts("2026-01-03T22:00:00Z")),
            ts("2026-01-10T22:00:00Z")
        );
        assert_eq!(
            w.next_opening(ts("2026-01-01T00:00:00Z")),
            ts("2026-01-03T22:00:00Z")
        );
        // a full week is always open
        let week = window(r#"{ start = "00:00", duration = "7days", days = ["mon"] }"#);
        assert!(week.contains(ts("2026-01-04T23:59:59Z")));
    }

    #[test]
    fn jitter_spreads_evenly_over_all_seeds() {
        // Only 2048 seeds exist, so every one of them is counted.
        let jitter = Duration::from_secs(1800);
        let mut buckets = [0u32; 8];
        for n in 0..u64::from(molt_schema::rollout::SEED_SPACE) {
            let off = jitter_offset(Seed::new(n).unwrap(), jitter);
            buckets[(off.as_nanos() * 8 / jitter.as_nanos()) as usize] += 1;
        }
        // 256 expected in each
        assert!(
            buckets.iter().all(|&n| (205..=307).contains(&n)),
            "{buckets:?}"
        );
        assert_eq!(
            jitter_offset(Seed::new(7).unwrap(), Duration::ZERO),
            Duration::ZERO
        );
    }

    #[test]
    fn state_is_created_once_and_tolerates_newer_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join(STATE_FILE);
        let t0 = ts("2026-01-01T00:00:00Z");
        let s = ScheduleState::load_or_init(&path, t0).unwrap();
        assert_eq!(s, ScheduleState::new(t0));
        let later = ts("2026-02-01T00:00:00Z");
        let mut s = ScheduleState::load_or_init(&path, later).unwrap();
        assert_eq!(s.first_seen, t0, "the anchor is persisted at once");
        s.record_run(later, Reason::Missed);
        s.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"last_reason\": \"missed\""), "{text}");
        assert!(text.contains("\"version\": 1"), "{text}");
        assert_eq!(ScheduleState::load_or_init(&path, later).unwrap(), s);
        std::fs::write(
            &path,
            r#"{"version":2,"first_seen":"2026-01-01T00:00:00Z","last_run":"2026-02-01T00:00:00Z",
                "last_reason":"manual","future":[1,2]}"#,
        )
        .unwrap();
        let s = ScheduleState::load_or_init(&path, later).unwrap();
        assert_eq!((s.last_run, s.last_reason), (Some(later), None));
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(
            ScheduleState::load_or_init(&path, later),
            Err(StateError::Corrupt { .. })
        ));
    }

    fn plan(schedule: &str) -> Plan {
        Plan {
            schedule: sched(schedule),
            jitter: Duration::from_secs(1800),
            window: None,
            on_boot: None,
        }
    }

    fn failed(failure: FailureClass) -> Ended {
        Ended::Failed {
            failure,
            exit_code: Some(4),
            message: Some("timestamp.json expired".into()),
        }
    }

    /// The nominal delays with the jitter at its largest (the policy's are random).
    fn nominal(n: u32) -> Duration {
        Duration::from_secs([1800, 7200, 28_800][(n as usize - 1).min(2)])
    }

    const HOUR: i64 = 3600;

    fn plus(t: Timestamp, secs: i64) -> Timestamp {
        t + jiff::SignedDuration::from_secs(secs)
    }

    /// Settles the run `st` recorded last, at `now`: no jitter offset, 3 retries at the
    /// nominal delays, an agent up since `started`.
    fn settle_last(
        st: &mut ScheduleState,
        p: &Plan,
        started: Timestamp,
        ended: Ended,
        now: Timestamp,
    ) -> Option<Timestamp> {
        let (at, reason) = (st.last_run.unwrap(), st.last_reason.unwrap());
        st.settle(
            at,
            reason,
            ended,
            p,
            Duration::ZERO,
            started,
            now,
            3,
            nominal,
        )
    }

    /// The next run without a jitter offset, the boot run done.
    fn next_at(p: &Plan, st: &ScheduleState, started: Timestamp, now: Timestamp) -> Due {
        next_run(p, Duration::ZERO, st, started, true, now).unwrap()
    }

    fn due(at: &str, reason: Reason) -> Due {
        Due { at: ts(at), reason }
    }

    /// A failed attempt of the run of 2026-01-15.
    fn attempt(failure: FailureClass, exit_code: i32) -> Attempt {
        Attempt {
            at: ts("2026-01-15T00:00:00Z"),
            reason: Some(Reason::Scheduled),
            failure,
            exit_code: Some(exit_code),
            message: None,
        }
    }

    fn window_plan(schedule: &str, start: &str, hours: u64) -> Plan {
        Plan {
            jitter: Duration::ZERO,
            window: Some(
                MaintenanceWindow::new(
                    None,
                    start.parse().unwrap(),
                    Duration::from_secs(hours * 3600),
                )
                .unwrap(),
            ),
            ..plan(schedule)
        }
    }

    /// A failed scheduled run is tried again about 30 min, 2 h and 8 h after each failure,
    /// then waits for its slot; each attempt's class is kept; a success ends the series.
    #[test]
    fn a_failed_run_is_retried_with_backoff_before_the_next_slot() {
        let p = plan("rate(14 days)");
        let t0 = ts("2026-01-01T00:00:00Z");
        let slot = ts("2026-01-15T00:00:00Z");
        let mut st = ScheduleState::new(t0);
        st.record_run(slot, Reason::Scheduled);
        let mut now = plus(slot, 60);
        let mut expected_next_slot = None;
        for n in 1..=4u32 {
            let retry = settle_last(&mut st, &p, t0, failed(FailureClass::Verification), now);
            assert_eq!(st.attempts.len(), n as usize);
            assert_eq!(
                st.attempts[n as usize - 1].failure,
                FailureClass::Verification
            );
            if n == 4 {
                assert_eq!(retry, None, "three retries, then the slot");
                assert_eq!(st.not_retried_because(3), Some("its retries are spent"));
                expected_next_slot = Some(next_at(&p, &st, t0, now));
                break;
            }
            let at = retry.expect("retried");
            assert_eq!(at, now.checked_add(nominal(n)).unwrap());
            assert_eq!(st.not_retried_because(3), None, "a retry waits");
            // the retry is the next run, and it keeps its reason
            assert_eq!(
                next_at(&p, &st, t0, now),
                Due {
                    at,
                    reason: Reason::Retry
                }
            );
            now = at;
            st.record_run(now, Reason::Retry);
            assert_eq!(
                st.attempts.len(),
                n as usize,
                "a retry continues the series"
            );
            now = plus(now, 60);
        }
        // after the last retry: the next slot, 14 days after the first
        assert_eq!(
            expected_next_slot,
            Some(due("2026-01-29T00:00:00Z", Reason::Scheduled))
        );
        // the slot starts a new series
        st.record_run(ts("2026-01-29T00:00:00Z"), Reason::Scheduled);
        assert!(st.attempts.is_empty());
        let retry = settle_last(
            &mut st,
            &p,
            t0,
            failed(FailureClass::Network),
            ts("2026-01-29T00:01:00Z"),
        );
        assert_eq!(retry, Some(ts("2026-01-29T00:31:00Z")));
        // a success ends it
        st.record_run(ts("2026-01-29T00:31:00Z"), Reason::Retry);
        let retry = settle_last(
            &mut st,
            &p,
            t0,
            Ended::Succeeded,
            ts("2026-01-29T00:32:00Z"),
        );
        assert_eq!(retry, None);
        assert!(st.attempts.is_empty() && st.retry_at.is_none());
        assert_eq!(
            next_at(&p, &st, t0, ts("2026-01-29T00:32:00Z")),
            due("2026-02-12T00:00:00Z", Reason::Scheduled)
        );
    }

    #[test]
    fn a_retry_never_falls_on_or_after_the_next_slot() {
        // hourly: the first retry (30 min) fits, the second (2 h) would pass the slot
        let p = Plan {
            jitter: Duration::ZERO,
            ..plan("rate(1 hour)")
        };
        let t0 = ts("2026-01-01T00:00:00Z");
        let mut st = ScheduleState::new(t0);
        st.record_run(ts("2026-01-01T01:00:00Z"), Reason::Scheduled);
        let network = || failed(FailureClass::Network);
        assert_eq!(
            settle_last(&mut st, &p, t0, network(), ts("2026-01-01T01:00:05Z")),
            Some(ts("2026-01-01T01:30:05Z"))
        );
        st.record_run(ts("2026-01-01T01:30:05Z"), Reason::Retry);
        let after = ts("2026-01-01T01:30:10Z");
        assert_eq!(settle_last(&mut st, &p, t0, network(), after), None);
        assert_eq!(
            next_at(&p, &st, t0, after),
            due("2026-01-01T02:00:00Z", Reason::Scheduled)
        );
        // a retry time left from a longer schedule (before a SIGHUP) yields to the slot
        st.retry_at = Some(ts("2026-01-01T05:00:00Z"));
        assert_eq!(next_at(&p, &st, t0, after).reason, Reason::Scheduled);
        // and a retry is still held to the maintenance window
        let win = Plan {
            jitter: p.jitter,
            ..window_plan("rate(14 days)", "03:00", 2)
        };
        let mut st = ScheduleState::new(t0);
        st.record_run(ts("2026-01-15T03:10:00Z"), Reason::Scheduled);
        st.retry_at = Some(ts("2026-01-15T06:00:00Z"));
        assert_eq!(
            next_at(&win, &st, t0, ts("2026-01-15T03:20:00Z")),
            due("2026-01-16T03:00:00Z", Reason::Retry)
        );
    }

    /// The window moves a retry and the slot alike: a retry it would push onto (or past)
    /// the slot is not kept, and the slot runs as a new series.
    #[test]
    fn a_retry_the_window_moves_onto_the_slot_is_dropped() {
        let win = window_plan("rate(1 day)", "02:00", 4);
        let t0 = ts("2026-01-01T02:00:00Z");
        let mut st = ScheduleState::new(t0);
        st.record_run(ts("2026-01-02T02:00:00Z"), Reason::Scheduled);
        let network = || failed(FailureClass::Network);
        // 30 min and 2 h later are inside the window
        assert_eq!(
            settle_last(&mut st, &win, t0, network(), ts("2026-01-02T02:00:10Z")),
            Some(ts("2026-01-02T02:30:10Z"))
        );
        st.record_run(ts("2026-01-02T02:30:10Z"), Reason::Retry);
        assert_eq!(
            settle_last(&mut st, &win, t0, network(), ts("2026-01-02T02:30:20Z")),
            Some(ts("2026-01-02T04:30:20Z"))
        );
        st.record_run(ts("2026-01-02T04:30:20Z"), Reason::Retry);
        // 8 h later is outside; the window would move it to the next opening, the slot
        let now = ts("2026-01-02T04:30:30Z");
        assert_eq!(settle_last(&mut st, &win, t0, network(), now), None);
        assert_eq!(st.retry_at, None);
        assert_eq!(
            next_at(&win, &st, t0, now),
            due("2026-01-03T02:00:00Z", Reason::Scheduled)
        );
        // and should a retry time still be there, the slot is the next run, not "retry 3"
        st.retry_at = Some(ts("2026-01-02T12:30:30Z"));
        assert_eq!(next_at(&win, &st, t0, now).reason, Reason::Scheduled);
    }

    /// A retry left from before the host went down (or before a forward clock jump) does
    /// not take the place of the catch-up run, nor of a slot that has come.
    #[test]
    fn a_stale_retry_yields_to_a_missed_or_passed_slot() {
        let p = plan("rate(14 days)");
        let t0 = ts("2026-01-01T00:00:00Z");
        let mut st = ScheduleState::new(t0);
        st.record_run(ts("2026-01-15T00:00:00Z"), Reason::Scheduled);
        st.attempts.push(attempt(FailureClass::Network, 1));
        st.retry_at = Some(ts("2026-01-15T00:30:00Z"));
        // the host was off for 30 days: one catch-up run, not "retry 1"
        let back = ts("2026-02-14T00:00:00Z");
        assert_eq!(next_at(&p, &st, back, back).reason, Reason::Missed);
        // the agent ran but the slot came meanwhile (a suspend): the slot
        let suspended = ts("2026-01-29T00:00:01Z");
        assert_eq!(next_at(&p, &st, t0, suspended).reason, Reason::Scheduled);
        // while the slot is ahead, the retry is the next run
        assert_eq!(
            next_at(&p, &st, t0, ts("2026-01-15T00:10:00Z")),
            due("2026-01-15T00:30:00Z", Reason::Retry)
        );
    }

    /// An agent the update started (or a rollback restarted) with `on_boot` does not start
    /// another run while a launched run waits for its result or a series is open: a
    /// failure the version does not cause (a commit that cannot be written) cannot loop.
    #[test]
    fn no_boot_run_while_a_run_is_unsettled_or_attempts_are_open() {
        let p = Plan {
            on_boot: Some(Duration::from_secs(60)),
            ..plan("rate(14 days)")
        };
        let t0 = ts("2026-01-01T00:00:00Z");
        let start = ts("2026-01-16T00:00:00Z");
        let mut st = ScheduleState::new(t0);
        st.record_run(ts("2026-01-15T00:00:00Z"), Reason::Scheduled);
        let reason = |st: &ScheduleState| {
            next_run(&p, Duration::ZERO, st, start, false, start)
                .unwrap()
                .reason
        };
        assert_eq!(reason(&st), Reason::Boot);
        st.pending = Some(Pending {
            launch: "L".into(),
            at: ts("2026-01-15T00:00:00Z"),
        });
        assert_eq!(reason(&st), Reason::Scheduled);
        st.pending = None;
        st.attempts.push(attempt(FailureClass::NotCommitted, 5));
        assert_eq!(reason(&st), Reason::Scheduled);
    }

    #[test]
    fn what_a_retry_would_repeat_is_not_retried() {
        let p = plan("rate(14 days)");
        let t0 = ts("2026-01-01T00:00:00Z");
        for class in [
            FailureClass::Refused,
            FailureClass::Health,
            FailureClass::Critical,
            FailureClass::Usage,
        ] {
            let mut st = ScheduleState::new(t0);
            st.record_run(ts("2026-01-15T00:00:00Z"), Reason::Scheduled);
            let retry = settle_last(&mut st, &p, t0, failed(class), ts("2026-01-15T00:01:00Z"));
            assert_eq!(retry, None, "{class}");
            assert_eq!(
                st.attempts.len(),
                1,
                "{class}: the attempt is still recorded"
            );
            assert_eq!(
                st.not_retried_because(3),
                Some("a retry would fail the same way")
            );
        }
    }

    #[test]
    fn a_launched_run_ends_with_its_result_or_after_the_grace_without_one() {
        let launched = ts("2026-01-15T00:00:00Z");
        let pending = Pending {
            launch: "L1".into(),
            at: launched,
        };
        let result = |launch: &str, code: i32, failure| RunResult {
            version: 1,
            launch: launch.into(),
            started_at: launched,
            finished_at: plus(launched, 5),
            exit_code: code,
            failure,
            message: None,
        };
        // before the grace, history is never read
        let ends = |result: Option<&RunResult>, free_since, now| {
            outcome_of(&pending, result, free_since, now, || {
                panic!("history read before the grace")
            })
        };
        let soon = plus(launched, 10);
        // still running: no result, the lock held (or only just seen free)
        assert_eq!(ends(None, None, soon), None);
        assert_eq!(ends(None, Some(soon), soon), None);
        // another launch's result is not this one's
        assert_eq!(ends(Some(&result("L0", 0, None)), Some(soon), soon), None);
        assert_eq!(
            ends(Some(&result("L1", 0, None)), None, soon),
            Some(Ended::Succeeded)
        );
        let verification = Some(FailureClass::Verification);
        assert_eq!(
            ends(Some(&result("L1", 4, verification)), None, soon),
            Some(Ended::Failed {
                failure: FailureClass::Verification,
                exit_code: Some(4),
                message: None
            })
        );
        // an exit code this agent does not know, without a class, is still a failure (and
        // retried)
        let failure = match ends(Some(&result("L1", 9, None)), None, soon) {
            Some(Ended::Failed { failure, .. }) => failure,
            other => panic!("{other:?}"),
        };
        assert!(failure.retryable());
        // killed without a result: once the lock has been free for the grace
        let late = plus(launched, HOUR);
        assert_eq!(ends(None, None, late), None, "an update holds the lock");
        assert_eq!(ends(None, Some(plus(late, -60)), late), None);
        let free = Some(plus(late, -120));
        assert!(matches!(
            outcome_of(&pending, None, free, late, Vec::new),
            Some(Ended::Failed {
                failure: FailureClass::NoResult,
                exit_code: None,
                ..
            })
        ));
        // an updater that writes no result, only history: its record since the launch
        let record = |started_at, result| HistoryRecord {
            version: 1,
            id: "u".into(),
            from: None,
            to: "2.0.0".parse().unwrap(),
            result,
            reason: Some("why\nnot".into()),
            started_at,
            finished_at: started_at,
            timings: crate::state::Timings::default(),
            failure: None,
        };
        let with = |records: Vec<HistoryRecord>| outcome_of(&pending, None, free, late, || records);
        assert_eq!(
            with(vec![record(plus(launched, 1), Outcome::Success)]),
            Some(Ended::Succeeded)
        );
        assert_eq!(
            with(vec![record(plus(launched, 1), Outcome::RolledBack)]),
            Some(Ended::Failed {
                failure: FailureClass::Health,
                exit_code: None,
                message: Some("why not".into())
            })
        );
        // a record from before the launch says nothing about it
        assert!(matches!(
            with(vec![record(plus(launched, -1), Outcome::Success)]),
            Some(Ended::Failed {
                failure: FailureClass::NoResult,
                ..
            })
        ));
    }

    /// An older agent reads a newer agent's state (and the reverse) without failing.
    #[test]
    fn retry_state_is_optional_and_unknown_reasons_are_lenient() {
        let old: ScheduleState = serde_json::from_str(
            r#"{"version":1,"first_seen":"2026-01-01T00:00:00Z","last_run":"2026-01-02T00:00:00Z","last_reason":"scheduled"}"#,
        )
        .unwrap();
        assert!(old.attempts.is_empty() && old.pending.is_none() && old.retry_at.is_none());
        let newer: ScheduleState = serde_json::from_str(
            r#"{"version":1,"first_seen":"2026-01-01T00:00:00Z","last_reason":"watch","attempts":[{"at":"2026-01-02T00:00:00Z","reason":"watch","failure":"cosmic","exit_code":1}],"retry_at":"2026-01-02T00:30:00Z","later":1}"#,
        )
        .unwrap();
        assert_eq!(newer.last_reason, None);
        assert_eq!(newer.attempts[0].failure, FailureClass::Unknown);
        assert_eq!(newer.attempts[0].reason, None);
        // what this version writes, it reads back
        let mut st = ScheduleState::new(ts("2026-01-01T00:00:00Z"));
        st.record_run(ts("2026-01-15T00:00:00Z"), Reason::Retry);
        st.pending = Some(Pending {
            launch: "L".into(),
            at: ts("2026-01-15T00:00:00Z"),
        });
        let text = serde_json::to_string(&st).unwrap();
        assert!(text.contains(r#""last_reason":"retry""#), "{text}");
        assert_eq!(serde_json::from_str::<ScheduleState>(&text).unwrap(), st);
    }

    #[test]
    fn examples_of_the_rule() {
        let p = plan("rate(14 days)");
        let off = Duration::from_secs(600);
        let t0 = ts("2026-01-01T00:00:00Z");
        let mut st = ScheduleState::new(t0);
        // a new host: first run one period (plus offset) after it was first seen
        let due = next_run(&p, off, &st, t0, false, t0).unwrap();
        assert_eq!(
            due,
            Due {
                at: ts("2026-01-15T00:10:00Z"),
                reason: Reason::Scheduled
            }
        );
        // the agent wakes for it a little late: still scheduled, due now
        let woke = ts("2026-01-15T00:10:01Z");
        let due = next_run(&p, off, &st, t0, false, woke).unwrap();
        assert_eq!(
            due,
            Due {
                at: ts("2026-01-15T00:10:00Z"),
                reason: Reason::Scheduled
            }
        );
        st.record_run(woke, due.reason);
        let due = next_run(&p, off, &st, t0, false, woke).unwrap();
        assert_eq!(due.at, ts("2026-01-29T00:10:00Z"));
        // down for six weeks, back up: one missed run, `offset` after the start
        let up = ts("2026-03-10T12:00:00Z");
        let due = next_run(&p, off, &st, up, false, up).unwrap();
        assert_eq!(
            due,
            Due {
                at: ts("2026-03-10T12:10:00Z"),
                reason: Reason::Missed
            }
        );
        // on_boot: earlier than the missed run
        let boot = Plan {
            on_boot: Some(Duration::from_secs(300)),
            ..p.clone()
        };
        let due = next_run(&boot, off, &st, up, false, up).unwrap();
        assert_eq!(
            due,
            Due {
                at: ts("2026-03-10T12:05:00Z"),
                reason: Reason::Boot
            }
        );
        assert_eq!(
            next_run(&boot, off, &st, up, true, up).unwrap().reason,
            Reason::Missed
        );
        // a maintenance window on Saturdays from 02:00 for 4h; 2026-03-14 is a Saturday
        let win = Plan {
            window: Some(window(
                r#"{ start = "02:00", duration = "4h", days = ["sat"] }"#,
            )),
            ..p.clone()
        };
        let due = next_run(&win, off, &st, up, false, up).unwrap();
        // 600s of 1800s jitter → a third of the window's first half (2h) = 40 minutes
        assert_eq!(
            due,
            Due {
                at: ts("2026-03-14T02:40:00Z"),
                reason: Reason::Missed
            }
        );
        // a clock that went back does not stall the schedule
        let mut skewed = st.clone();
        skewed.last_run = Some(ts("2035-01-01T00:00:00Z"));
        let due = next_run(&p, off, &skewed, up, false, up).unwrap();
        assert!(
            due.at > up && due.at < ts("2026-04-01T00:00:00Z"),
            "{due:?}"
        );
    }

    // ----- properties -------------------------------------------------------------------

    /// Timestamps between 2000 and 2100, with nanoseconds.
    fn any_ts() -> impl Strategy<Value = Timestamp> {
        (946_684_800i64..4_102_444_800, 0i32..1_000_000_000)
            .prop_map(|(s, n)| Timestamp::new(s, n).unwrap())
    }

    fn cron_expr() -> impl Strategy<Value = String> {
        let minute = prop_oneof![
            Just("*".to_string()),
            (1u8..30).prop_map(|k| format!("*/{k}")),
            (0u8..60).prop_map(|m| m.to_string()),
            (0u8..30, 30u8..60).prop_map(|(a, b)| format!("{a}-{b}")),
        ];
        let hour = prop_oneof![
            Just("*".to_string()),
            (0u8..24).prop_map(|h| h.to_string()),
            (0u8..24, 0u8..24).prop_map(|(a, b)| format!("{a},{b}")),
        ];
        let dom = prop_oneof![
            3 => Just("*".to_string()),
            1 => (1u8..=28).prop_map(|d| d.to_string()),
        ];
        let dow = prop_oneof![
            Just("*".to_string()),
            (0u8..7).prop_map(|d| d.to_string()),
            Just("mon-fri".to_string()),
            Just("sat,sun".to_string()),
        ];
        (minute, hour, dom, dow).prop_map(|(m, h, d, w)| format!("{m} {h} {d} * {w}"))
    }

    fn any_window() -> impl Strategy<Value = MaintenanceWindow> {
        let days = prop_oneof![
            Just(None),
            prop::collection::vec(0i8..7, 1..4).prop_map(|v| Some(
                v.into_iter()
                    .map(|d| Weekday::from_monday_zero_offset(d).unwrap())
                    .collect()
            )),
        ];
        (days, 0i8..24, 0i8..60, 60u64..=7 * DAY).prop_map(|(days, h, m, secs)| {
            MaintenanceWindow::new(
                days,
                Time::new(h, m, 0, 0).unwrap(),
                Duration::from_secs(secs),
            )
            .unwrap()
        })
    }

    fn nanos_between(a: Timestamp, b: Timestamp) -> i128 {
        a.as_nanosecond() - b.as_nanosecond()
    }

    proptest! {
        #[test]
        fn rate_slots_are_strictly_after_spaced_and_aligned(
            rate in 1u64..=30 * DAY,
            anchor in any_ts(),
            after in any_ts(),
        ) {
            let s = Schedule::Rate(Duration::from_secs(rate));
            let slot = s.next_slot(after, anchor).unwrap();
            let rate_ns = i128::from(rate) * 1_000_000_000;
            prop_assert!(slot > after);
            prop_assert!(nanos_between(slot, after) <= rate_ns, "not the first slot");
            prop_assert_eq!(nanos_between(slot, anchor).rem_euclid(rate_ns), 0);
            let next = s.next_slot(slot, anchor).unwrap();
            prop_assert_eq!(nanos_between(next, slot), rate_ns);
        }

        #[test]
        fn jitter_offsets_are_stable_and_below_the_jitter(
            seed in 0u64..2048,
            jitter in 0u64..=7 * DAY * 1_000_000_000,
        ) {
            let seed = Seed::new(seed).unwrap();
            let jitter = Duration::from_nanos(jitter);
            let a = jitter_offset(seed, jitter);
            prop_assert_eq!(a, jitter_offset(seed, jitter));
            prop_assert!(a < jitter || jitter.is_zero());
        }

        #[test]
        fn window_openings_are_the_first_after(w in any_window(), t in any_ts()) {
            let open = w.next_opening(t);
            prop_assert!(open > t);
            prop_assert!(w.contains(open));
            // openings are at `start` on allowed days: none lies between `t` and `open`
            for k in 1..=7 {
                let earlier = open.checked_sub(Duration::from_secs(k * DAY)).unwrap();
                if earlier > t {
                    let day = TimeZone::UTC.to_datetime(earlier).weekday();
                    prop_assert!(w.days().is_some_and(|d| !d.contains(&day)), "skipped {earlier}");
                }
            }
            // a closed window stays closed until its next opening
            if !w.contains(t) {
                let gap = nanos_between(open, t);
                for i in 0..16 {
                    let at = t.checked_add(jiff::SignedDuration::from_nanos((gap * i / 16) as i64)).unwrap();
                    prop_assert!(!w.contains(at), "open at {at} before {open}");
                }
            }
        }

        #[test]
        fn window_moves_runs_inside_and_never_earlier(
            w in any_window(),
            rate in 60u64..=30 * DAY,
            seed in 0u64..2048,
            first_seen in any_ts(),
            since in 0u64..=60 * DAY,
            up_for in 0.0f64..=1.0,
            boot in any::<bool>(),
        ) {
            let jitter = Duration::from_secs(rate.min(1800));
            let offset = jitter_offset(Seed::new(seed).unwrap(), jitter);
            let now = first_seen.checked_add(Duration::from_secs(since)).unwrap();
            let started_at = now.checked_sub(Duration::from_secs((since as f64 * up_for) as u64)).unwrap();
            let state = ScheduleState::new(first_seen);
            let mut p = Plan {
                schedule: Schedule::Rate(Duration::from_secs(rate)),
                jitter,
                window: None,
                on_boot: boot.then_some(Duration::from_secs(300)),
            };
            let free = next_run(&p, offset, &state, started_at, false, now).unwrap();
            p.window = Some(w.clone());
            let due = next_run(&p, offset, &state, started_at, false, now).unwrap();
            prop_assert!(w.contains(due.at.max(now)), "{due:?} outside {w}");
            prop_assert!(due.at >= free.at);
            prop_assert_eq!(due.reason, free.reason);
            if w.contains(free.at.max(now)) {
                prop_assert_eq!(due.at, free.at);
            }
        }

        #[test]
        fn missed_slots_make_exactly_one_run(
            rate in 60u64..=30 * DAY,
            seed in 0u64..2048,
            first_seen in any_ts(),
            last_after in 0u64..=60 * DAY,
            missed in 1u64..50,
            extra in 0u64..=30 * DAY,
            start_back in 0u64..=3600,
            cron in any::<bool>(),
        ) {
            let schedule = if cron { sched("cron(0 */6 * * *)") } else { Schedule::Rate(Duration::from_secs(rate)) };
            let period = if cron { 6 * 3600 } else { rate };
            let jitter = Duration::from_secs(period.min(1800));
            let offset = jitter_offset(Seed::new(seed).unwrap(), jitter);
            let p = Plan { schedule, jitter, window: None, on_boot: None };
            let mut state = ScheduleState::new(first_seen);
            let last = first_seen.checked_add(Duration::from_secs(last_after)).unwrap();
            state.record_run(last, Reason::Scheduled);
            // `missed` slots pass while the agent is down, plus some time
            let mut slot = last;
            for _ in 0..missed {
                slot = p.schedule.next_slot(slot, first_seen).unwrap();
            }
            let candidate = p.schedule.next_slot(last, first_seen).unwrap().checked_add(offset).unwrap();
            let now = slot
                .checked_add(offset + Duration::from_secs(extra))
                .unwrap()
                .max(candidate.checked_add(Duration::from_secs(1)).unwrap());
            // the agent started within the last hour, after the first missed candidate
            let started_at = now.checked_sub(Duration::from_secs(start_back)).unwrap().max(candidate.checked_add(Duration::from_nanos(1)).unwrap());
            let due = next_run(&p, offset, &state, started_at, true, now).unwrap();
            let want = now.max(started_at.checked_add(offset).unwrap());
            prop_assert_eq!(due, Due { at: want, reason: Reason::Missed });
            // it runs; the next one is in the future, and scheduled
            state.record_run(due.at, due.reason);
            let next = next_run(&p, offset, &state, started_at, true, due.at).unwrap();
            prop_assert!(next.at > due.at, "{next:?} after {due:?}");
            prop_assert_eq!(next.reason, Reason::Scheduled);
        }

        #[test]
        fn boot_runs_come_once_after_the_delay(
            rate in 60u64..=30 * DAY,
            first_seen in any_ts(),
            up_after in 0u64..=60 * DAY,
            delay in 0u64..=3600,
            ran_since_start in any::<bool>(),
        ) {
            let p = Plan {
                schedule: Schedule::Rate(Duration::from_secs(rate)),
                jitter: Duration::ZERO,
                window: None,
                on_boot: Some(Duration::from_secs(delay)),
            };
            let started_at = first_seen.checked_add(Duration::from_secs(up_after)).unwrap();
            let mut state = ScheduleState::new(first_seen);
            if ran_since_start {
                state.record_run(started_at, Reason::Scheduled);
            }
            let without = next_run(&Plan { on_boot: None, ..p.clone() }, Duration::ZERO, &state, started_at, false, started_at).unwrap();
            let due = next_run(&p, Duration::ZERO, &state, started_at, false, started_at).unwrap();
            let boot_at = started_at.checked_add(Duration::from_secs(delay)).unwrap();
            if !ran_since_start && boot_at < without.at {
                prop_assert_eq!(due, Due { at: boot_at, reason: Reason::Boot });
            } else {
                prop_assert_eq!(due, without);
            }
            // once done, never again
            let done = next_run(&p, Duration::ZERO, &state, started_at, true, started_at).unwrap();
            prop_assert_eq!(done, without);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn cron_slots_match_and_skip_nothing(expr in cron_expr(), after in any_ts()) {
            let s = sched(&format!("cron({expr})"));
            let Schedule::Cron(cron) = &s else { unreachable!() };
            let slot = s.next_slot(after, Timestamp::UNIX_EPOCH).unwrap();
            prop_assert!(slot > after);
            let civil = |t: Timestamp| TimeZone::UTC.to_datetime(t);
            prop_assert!(cron.is_time_matching(&civil(slot)).unwrap(), "{expr}: {slot}");
            prop_assert_eq!(slot.as_nanosecond() % 60_000_000_000, 0);
            // every whole minute strictly between `after` and the slot does not match
            let mut minute = Timestamp::from_second(after.as_second().div_euclid(60) * 60 + 60).unwrap();
            while minute < slot {
                prop_assert!(!cron.is_time_matching(&civil(minute)).unwrap(), "{expr}: skipped {minute} before {slot}");
                minute = minute.checked_add(Duration::from_secs(60)).unwrap();
            }
        }
    }
}
