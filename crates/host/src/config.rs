//! `/etc/molt/agent.toml`: one file read by both the agent and the updater. Shared keys
//! at the top, then `[updater]` and `[agent]`. Strict: a human writes it, so a bad value is
//! an error that names the key and the line. `MOLT_*` environment variables override the
//! file.
//!
//! Keys newer than this version: one config serves every version a host may run (the new
//! one, the old one a rollback restores, the one a downgrade or recall chooses), so a key
//! this version does not know is not fatal by itself. The rule ([`Config::parse`]):
//! - an unknown key that looks like a misspelling of a key this version knows in the same
//!   table (the same but for case or `-`/`_`, or one edit away: a letter added, dropped,
//!   changed, or two swapped), or that is a known key of another table, is a typo: an error
//!   that names it, its line, and the key meant;
//! - any other unknown key, or a whole table this version does not know, is taken to be a
//!   newer version's: it is ignored, with a warning that names it and its line.
//!
//! So that older versions never take a new key for a typo, a key added later must be at
//! least two edits from every key of its table and must not reuse another table's key
//! (`keys_stay_apart` holds the lists to that). Inside a value (a `maintenance_window`
//! table) the rule does not apply: its fields are checked as strictly as any value.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::schedule::{MAX_WINDOW, MaintenanceWindow, Plan, Schedule};
use molt_schema::platform::Platform;
use molt_schema::region::{Region, Template};

/// The default config path.
pub const DEFAULT_CONFIG: &str = "/etc/molt/agent.toml";

/// The keys this version knows, per table (a unit test holds them to the structs).
const ROOT_KEYS: &[&str] = &[
    "root",
    "region",
    "source",
    "bucket",
    "domain",
    "trusted_root",
    "platform",
    "imds_v1_fallback",
    "log_format",
    "updater",
    "agent",
];
const UPDATER_KEYS: &[&str] = &[
    "service",
    "soak",
    "health_timeout",
    "stop_grace",
    "download_deadline",
    "min_throughput",
];
const AGENT_KEYS: &[&str] = &[
    "schedule",
    "jitter",
    "maintenance_window",
    "on_boot",
    "on_boot_delay",
    "hold",
    "report",
    "poll",
];

/// A key this version does not know and took to be a newer version's: ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoredKey {
    /// `updater` or `agent`; `None` at the top of the file.
    pub table: Option<&'static str>,
    pub key: String,
    pub line: usize,
}

impl std::fmt::Display for IgnoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match self.table {
            Some(t) => format!("in [{t}]"),
            None => "at the top level".to_owned(),
        };
        write!(
            f,
            "unknown key `{}` {place} (line {}) is ignored: this version of molt does not know it, a newer one may; if it is a typo, fix it",
            self.key, self.line
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The install root (default /opt/molt).
    pub root: Option<PathBuf>,
    /// The host's region; else the environment, then IMDS.
    pub region: Option<Region>,
    /// The repository URL template, e.g. `https://{bucket}.s3.{region}.{domain}/`, or a
    /// `file://` directory. There is no default.
    #[serde(default, deserialize_with = "template")]
    pub source: Option<Template>,
    /// The bucket name template, e.g. `acme-molt-{region}`. There is no default.
    #[serde(default, deserialize_with = "template")]
    pub bucket: Option<Template>,
    /// Overrides the partition's DNS domain.
    pub domain: Option<String>,
    /// The root metadata this host trusts.
    pub trusted_root: Option<PathBuf>,
    /// Overrides platform detection.
    pub platform: Option<Platform>,
    /// Allow IMDSv1 when IMDSv2 is unavailable.
    #[serde(default)]
    pub imds_v1_fallback: bool,
    /// `text` (the default) or `json`: how the agent and the updater write their logs.
    pub log_format: Option<molt_schema::cli::LogFormat>,
    #[serde(default)]
    pub updater: UpdaterConfig,
    #[serde(default)]
    pub agent: AgentConfig,
    /// The keys a newer version may know, ignored by this one (see the module docs).
    #[serde(skip)]
    pub ignored: Vec<IgnoredKey>,
}

/// How the agent service is controlled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Systemd,
    Direct,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdaterConfig {
    pub service: Option<ServiceKind>,
    /// How long the new agent must stay healthy before the update commits (default 30s).
    #[serde(default, deserialize_with = "duration")]
    pub soak: Option<Duration>,
    /// How long the new agent has to report healthy (default 60s).
    #[serde(default, deserialize_with = "duration")]
    pub health_timeout: Option<Duration>,
    /// Grace between SIGTERM and SIGKILL when stopping the agent directly (default 10s).
    #[serde(default, deserialize_with = "duration")]
    pub stop_grace: Option<Duration>,
    /// Total deadline of one download (default 30m).
    #[serde(default, deserialize_with = "duration")]
    pub download_deadline: Option<Duration>,
    /// Minimum download throughput in bytes per second (default 1024).
    pub min_throughput: Option<u64>,
}

/// The agent's section: its association (when it runs the updater on its own), hold,
/// and where it reports results. See [`crate::schedule`] for how the keys combine.
///
/// ```toml
/// [agent]
/// schedule = "cron(0 2 * * sat)"
/// jitter = "1h"
/// maintenance_window = { start = "02:00", duration = "4h", days = ["sat", "sun"] }
/// on_boot = true
/// report = "s3://acme-molt-results/fleet"
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `rate(N second|minute|hour|day[s])` or `cron(MIN HOUR DOM MONTH DOW)` in UTC
    /// (default `rate(14 days)`). Rate slots count from when the host first ran the agent.
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Hosts spread their runs over this long after each slot, by seed (default 30m,
    /// at most 7 days; capped at the rate of a rate schedule).
    #[serde(default, deserialize_with = "jitter")]
    pub jitter: Option<Duration>,
    /// Runs happen only inside this window (UTC), e.g.
    /// `{ start = "02:00", duration = "4h", days = ["sat", "sun"] }`; `days` may be
    /// left out for every day. Default: none, any time.
    #[serde(default)]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// Also run once shortly after the agent starts (default false).
    #[serde(default)]
    pub on_boot: bool,
    /// How long after the agent starts the `on_boot` run happens (default 5m, to stay
    /// out of cloud-init's way at boot).
    #[serde(default, deserialize_with = "duration")]
    pub on_boot_delay: Option<Duration>,
    /// When true, scheduled updates don't run (default false).
    #[serde(default)]
    pub hold: bool,
    /// `s3://bucket/prefix` where the agent uploads history records (default: none).
    #[serde(default, deserialize_with = "report_sink")]
    pub report: Option<String>,
    /// How often the agent looks for new history records to report (default 60s, at
    /// least 1s).
    #[serde(default, deserialize_with = "poll")]
    pub poll: Option<Duration>,
}

impl AgentConfig {
    pub const DEFAULT_SCHEDULE: Schedule = Schedule::Rate(Duration::from_secs(14 * 86_400));
    pub const DEFAULT_JITTER: Duration = Duration::from_secs(30 * 60);
    pub const DEFAULT_ON_BOOT_DELAY: Duration = Duration::from_secs(5 * 60);
    pub const DEFAULT_POLL: Duration = Duration::from_secs(60);

    /// The association with defaults filled in: `schedule` (default `rate(14 days)`),
    /// `jitter` (default 30m, capped at the rate of a rate schedule so a host's offset
    /// never exceeds a period), `maintenance_window` (default none) and, when `on_boot`
    /// is set, `on_boot_delay` (default 5m). `hold` is not part of the plan: the caller
    /// skips scheduled runs while it is set.
    pub fn plan(&self) -> Plan {
        let schedule = self.schedule.clone().unwrap_or(Self::DEFAULT_SCHEDULE);
        let mut jitter = self.jitter.unwrap_or(Self::DEFAULT_JITTER);
        if let Schedule::Rate(rate) = &schedule {
            jitter = jitter.min(*rate);
        }
        Plan {
            schedule,
            jitter,
            window: self.maintenance_window.clone(),
            on_boot: self
                .on_boot
                .then(|| self.on_boot_delay.unwrap_or(Self::DEFAULT_ON_BOOT_DELAY)),
        }
    }

    /// `poll`, or its default (60s).
    pub fn poll_interval(&self) -> Duration {
        self.poll.unwrap_or(Self::DEFAULT_POLL)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("invalid value {value:?} in the environment variable {name}: {message}")]
    Env {
        name: String,
        value: String,
        message: String,
    },
}

fn template<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Template>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| Template::parse(&s).map_err(serde::de::Error::custom))
        .transpose()
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    s.map(|s| {
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "bad duration {s:?} ({e}); write e.g. \"30s\" or \"5m\""
            ))
        })
    })
    .transpose()
}

fn jitter<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let jitter = duration(d)?;
    if let Some(j) = jitter.filter(|j| *j > MAX_WINDOW) {
        return Err(serde::de::Error::custom(format!(
            "jitter {} is longer than 7 days; write at most \"7days\"",
            humantime::format_duration(j)
        )));
    }
    Ok(jitter)
}

fn poll<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let poll = duration(d)?;
    if let Some(p) = poll.filter(|p| *p < Duration::from_secs(1)) {
        return Err(serde::de::Error::custom(format!(
            "poll {} is shorter than 1s; write at least \"1s\"",
            humantime::format_duration(p)
        )));
    }
    Ok(poll)
}

/// A simple check of `s3://bucket/prefix`; the s3 module parses it fully.
fn report_sink<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    if let Some(s) = &s {
        let bucket = s
            .strip_prefix("s3://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("");
        if bucket.is_empty() {
            return Err(serde::de::Error::custom(format!(
                "bad report sink {s:?}; write s3://BUCKET or s3://BUCKET/PREFIX"
            )));
        }
    }
    Ok(s)
}

/// The 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// True when `key` looks like a misspelling of `known`.
fn misspells(key: &str, known: &str) -> bool {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    if norm(key) == norm(known) {
        return true;
    }
    strsim::damerau_levenshtein(&norm(key), known) <= 1
}

/// Sorts the unknown keys of one table: a typo stays (serde refuses it, with its line) and
/// is returned with the key it most likely means; a newer version's key is removed and
/// recorded in `ignored`.
fn sift(
    table: &mut toml::de::DeTable<'_>,
    name: Option<&'static str>,
    known: &[&str],
    other_tables: &[(String, &[&str])],
    text: &str,
    ignored: &mut Vec<IgnoredKey>,
    typos: &mut Vec<(String, String)>,
) {
    let mut newer = Vec::new();
    for key in table.keys() {
        let k: &str = key.get_ref();
        if known.contains(&k) {
            continue;
        }
        if let Some(meant) = known.iter().find(|n| misspells(k, n)) {
            typos.push((k.to_owned(), format!("did you mean `{meant}`?")));
        } else if let Some((t, _)) = other_tables.iter().find(|(_, keys)| keys.contains(&k)) {
            typos.push((k.to_owned(), format!("`{k}` belongs {t}")));
        } else {
            newer.push((k.to_owned(), line_of(text, key.span().start)));
        }
    }
    for (key, line) in newer {
        table.remove(key.as_str());
        ignored.push(IgnoredKey {
            table: name,
            key,
            line,
        });
    }
}

impl Config {
    /// Parses a config file's text. `path` only names the file in errors. Keys a newer
    /// version may know are left out and listed in [`Config::ignored`]; typos and bad
    /// values are errors (the module docs give the rule).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |mut e: toml::de::Error, hint: Option<&str>| {
            e.set_input(Some(text));
            let mut message = e.to_string().trim_end().to_owned();
            if let Some(h) = hint {
                message.push_str("; ");
                message.push_str(h);
            }
            ConfigError::Invalid {
                path: path.to_owned(),
                message,
            }
        };
        let mut root = toml::de::DeTable::parse(text).map_err(|e| invalid(e, None))?;
        let mut ignored = Vec::new();
        let mut typos = Vec::new();
        let sections: [(&'static str, &[&str]); 2] =
            [("updater", UPDATER_KEYS), ("agent", AGENT_KEYS)];
        let place = |name: &str| format!("in [{name}]");
        let top: Vec<(String, &[&str])> = sections.iter().map(|(n, k)| (place(n), *k)).collect();
        sift(
            root.get_mut(),
            None,
            ROOT_KEYS,
            &top,
            text,
            &mut ignored,
            &mut typos,
        );
        for (i, (name, keys)) in sections.iter().enumerate() {
            let others: Vec<(String, &[&str])> = sections
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (n, keys))| (place(n), *keys))
                .chain([(
                    "at the top of the file, above any [table]".to_owned(),
                    ROOT_KEYS,
                )])
                .collect();
            if let Some(toml::de::DeValue::Table(t)) =
                root.get_mut().get_mut(*name).map(|v| v.get_mut())
            {
                sift(t, Some(name), keys, &others, text, &mut ignored, &mut typos);
            }
        }
        ignored.sort_by_key(|k| k.line);
        let mut config = Config::deserialize(toml::de::Deserializer::from(root)).map_err(|e| {
            let hint = typos
                .iter()
                .find(|(key, _)| e.message().contains(&format!("unknown field `{key}`")))
                .map(|(_, hint)| hint.as_str());
            invalid(e, hint)
        })?;
        config.ignored = ignored;
        Ok(config)
    }

    /// Reads and parses a config file; each key it ignores (a newer version's) is logged
    /// as a warning.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Config::parse(&text, path)?;
        for k in &config.ignored {
            tracing::warn!("{}: {k}", path.display());
        }
        Ok(config)
    }

    /// Reads the file at `path` when it exists; an absent file is an empty config.
    pub fn load_optional(path: &Path) -> Result<Config, ConfigError> {
        if path.exists() {
            Config::load(path)
        } else {
            Ok(Config::default())
        }
    }

    /// Applies `MOLT_ROOT`, `MOLT_REGION`, `MOLT_SOURCE`, `MOLT_BUCKET`, `MOLT_DOMAIN`,
    /// `MOLT_TRUSTED_ROOT`, `MOLT_PLATFORM`, and the agent's `MOLT_SCHEDULE`, `MOLT_HOLD`
    /// and `MOLT_REPORT` from `lookup` (the environment).
    /// The log format, read before anything else (logging starts first, so that the
    /// config's own errors are logged in the format asked for): `MOLT_LOG_FORMAT`, else
    /// `log_format` at the top of the config at `path`, else text. A value that cannot be
    /// read here counts as text; the full reading of the config then names the error.
    pub fn peek_log_format(
        path: &Path,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> molt_schema::cli::LogFormat {
        if let Some(format) = lookup("MOLT_LOG_FORMAT").and_then(|v| v.parse().ok()) {
            return format;
        }
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.parse::<toml::Table>().ok())
            .and_then(|t| t.get("log_format")?.as_str()?.parse().ok())
            .unwrap_or_default()
    }

    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        let err = |name: &str, value: &str, message: String| ConfigError::Env {
            name: name.to_owned(),
            value: value.to_owned(),
            message,
        };
        if let Some(v) = lookup("MOLT_ROOT") {
            self.root = Some(PathBuf::from(v));
        }
        if let Some(v) = lookup("MOLT_REGION") {
            self.region = Some(v.parse().map_err(|e: molt_schema::region::BadRegion| {
                err("MOLT_REGION", &v, e.to_string())
            })?);
        }
        if let Some(v) = lookup("MOLT_SOURCE") {
            self.source =
                Some(Template::parse(&v).map_err(|e| err("MOLT_SOURCE", &v, e.to_string()))?);
        }
        if let Some(v) = lookup("MOLT_BUCKET") {
            self.bucket =
                Some(Template::parse(&v).map_err(|e| err("MOLT_BUCKET", &v, e.to_string()))?);
        }
        if let Some(v) = lookup("MOLT_DOMAIN") {
            self.domain = Some(v);
        }
        if let Some(v) = lookup("MOLT_LOG_FORMAT") {
            self.log_format = Some(v.parse().map_err(|e: molt_schema::cli::BadLogFormat| {
                err("MOLT_LOG_FORMAT", &v, e.to_string())
            })?);
        }
        if let Some(v) = lookup("MOLT_TRUSTED_ROOT") {
            self.trusted_root = Some(PathBuf::from(v));
        }
        if let Some(v) = lookup("MOLT_SCHEDULE") {
            self.agent.schedule =
                Some(v.parse().map_err(|e: crate::schedule::ScheduleError| {
                    err("MOLT_SCHEDULE", &v, e.to_string())
                })?);
        }
        if let Some(v) = lookup("MOLT_HOLD") {
            self.agent.hold = match v.as_str() {
                "1" | "true" | "yes" => true,
                "0" | "false" | "no" | "" => false,
                _ => {
                    return Err(err("MOLT_HOLD", &v, "expected true or false".to_owned()));
                }
            };
        }
        if let Some(v) = lookup("MOLT_REPORT") {
            self.agent.report = Some(v);
        }
        if let Some(v) = lookup("MOLT_PLATFORM") {
            self.platform = Some(v.parse().map_err(
                |e: molt_schema::platform::PlatformError| err("MOLT_PLATFORM", &v, e.to_string()),
            )?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
region = "us-east-1"
source = "https://{bucket}.s3.{region}.{domain}/"
bucket = "acme-molt-{region}"
trusted_root = "/etc/molt/root.json"

[updater]
service = "direct"
soak = "30s"
"#;

    #[test]
    fn parses_a_good_file() {
        let c = Config::parse(GOOD, Path::new("agent.toml")).unwrap();
        assert_eq!(c.region.unwrap().as_str(), "us-east-1");
        assert_eq!(c.updater.service, Some(ServiceKind::Direct));
        assert_eq!(c.updater.soak, Some(Duration::from_secs(30)));
    }

    fn refused(text: &str) -> String {
        Config::parse(text, Path::new("agent.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn typos_are_refused_with_the_key_meant() {
        for (from, to, meant, line) in [
            ("soak =", "soack =", "did you mean `soak`?", 9),
            ("soak =", "Soak =", "did you mean `soak`?", 9),
            ("soak =", "sok =", "did you mean `soak`?", 9),
            ("service =", "servcie =", "did you mean `service`?", 8),
            ("[updater]", "[updatr]", "did you mean `updater`?", 7),
            ("region =", "regoin =", "did you mean `region`?", 2),
            (
                "trusted_root =",
                "trusted-root =",
                "did you mean `trusted_root`?",
                5,
            ),
            (
                "soak =",
                "region =",
                "`region` belongs at the top of the file",
                9,
            ),
            ("region =", "soak =", "`soak` belongs in [updater]", 2),
            ("soak =", "on_boot =", "`on_boot` belongs in [agent]", 9),
        ] {
            let text = GOOD.replacen(from, to, 1);
            let err = refused(&text);
            assert!(
                err.contains(meant) && err.contains(&format!("line {line}")),
                "{to}: {err}"
            );
        }
    }

    #[test]
    fn keys_of_a_newer_version_are_ignored_and_named() {
        let text = format!(
            "{GOOD}log_sink = \"json\"\nwatch.interval = \"5m\"\n\n[agent]\nhold = true\nmetrics = {{ port = 9100 }}\n\n[telemetry]\nendpoint = \"x\"\n"
        );
        let c = Config::parse(&text, Path::new("agent.toml")).unwrap();
        assert!(c.agent.hold);
        assert_eq!(c.updater.soak, Some(Duration::from_secs(30)));
        let seen: Vec<(Option<&str>, &str, usize)> = c
            .ignored
            .iter()
            .map(|k| (k.table, k.key.as_str(), k.line))
            .collect();
        assert_eq!(
            seen,
            [
                (Some("updater"), "log_sink", 10),
                (Some("updater"), "watch", 11),
                (Some("agent"), "metrics", 15),
                (None, "telemetry", 17),
            ]
        );
        let said = c.ignored[0].to_string();
        assert!(
            said.contains("`log_sink` in [updater] (line 10) is ignored"),
            "{said}"
        );
        // a bad value next to an ignored key still names its own line
        let bad = text.replace("\"30s\"", "\"30 parsecs\"");
        let err = refused(&bad);
        assert!(
            err.contains("bad duration") && err.contains("line 9"),
            "{err}"
        );
    }

    #[test]
    fn log_format_is_text_or_json() {
        use molt_schema::cli::LogFormat;
        let c = Config::parse("log_format = \"json\"\n", Path::new("agent.toml")).unwrap();
        assert_eq!(c.log_format, Some(LogFormat::Json));
        let err = refused("log_format = \"JSON\"\n");
        assert!(
            err.contains("use \"text\" or \"json\"") && err.contains("line 1"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let none = |_: &str| None;
        assert_eq!(
            Config::peek_log_format(&path, none),
            LogFormat::Text,
            "no file"
        );
        std::fs::write(&path, "log_format = \"json\"\n").unwrap();
        assert_eq!(Config::peek_log_format(&path, none), LogFormat::Json);
        let env = |k: &str| (k == "MOLT_LOG_FORMAT").then(|| "text".to_owned());
        assert_eq!(
            Config::peek_log_format(&path, env),
            LogFormat::Text,
            "the env wins"
        );
        std::fs::write(&path, "log_format = \"json\"\n[[[").unwrap();
        assert_eq!(
            Config::peek_log_format(&path, none),
            LogFormat::Text,
            "unparsable"
        );
        let mut c = Config::parse("", Path::new("agent.toml")).unwrap();
        let bad = |k: &str| (k == "MOLT_LOG_FORMAT").then(|| "xml".to_owned());
        assert!(c.apply_env(bad).is_err());
    }

    /// The rule for new keys (module docs): within a table, every two keys are at least two
    /// edits apart, and no key of one table is a key of another.
    #[test]
    fn keys_stay_apart() {
        let tables = [ROOT_KEYS, UPDATER_KEYS, AGENT_KEYS];
        for (i, a) in tables.iter().enumerate() {
            for (j, b) in tables.iter().enumerate() {
                for x in a.iter() {
                    for y in b.iter() {
                        if i == j && x != y {
                            assert!(!misspells(x, y), "{x} and {y} are one edit apart");
                        }
                        if i != j {
                            assert_ne!(x, y, "{x} is a key of two tables");
                        }
                    }
                }
            }
        }
    }

    /// A typo's hint belongs to that typo, not to a key the message lists.
    #[test]
    fn the_hint_names_the_key_of_the_error() {
        let err = refused("[agent]\nhold = true\nhodl = true\n");
        assert!(err.contains("did you mean `hold`?"), "{err}");
        assert!(!err.contains("belongs"), "{err}");
        // future keys a rollback target must not refuse
        for key in ["max_throughput", "port", "log_sink", "watch_interval"] {
            let text = format!("[updater]\n{key} = 1\n[agent]\n{key} = 1\n");
            let c = Config::parse(&text, Path::new("agent.toml")).unwrap();
            assert_eq!(c.ignored.len(), 2, "{key}");
        }
    }

    /// The key lists the rule works from are exactly the structs' fields.
    #[test]
    fn the_key_lists_match_the_structs() {
        fn fields<T: serde::de::DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
            let e = toml::from_str::<T>("zz_not_a_key = 1")
                .unwrap_err()
                .to_string();
            let list = e.split("expected one of").nth(1).unwrap_or("");
            let mut names: Vec<String> = list
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            names.sort();
            names
        }
        let sorted = |keys: &[&str]| {
            let mut k: Vec<String> = keys.iter().map(|s| (*s).to_owned()).collect();
            k.sort();
            k
        };
        assert_eq!(fields::<Config>(), sorted(ROOT_KEYS));
        assert_eq!(fields::<UpdaterConfig>(), sorted(UPDATER_KEYS));
        assert_eq!(fields::<AgentConfig>(), sorted(AGENT_KEYS));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_line() {
        let typo = GOOD.replace("soak =", "soack =");
        let err = Config::parse(&typo, Path::new("/etc/molt/agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("soack") && err.contains("line 9"), "{err}");
        assert!(err.contains("/etc/molt/agent.toml"), "{err}");
        let bad = GOOD.replace("\"30s\"", "\"30 parsecs\"");
        let err = Config::parse(&bad, Path::new("agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad duration") && err.contains("line 9"),
            "{err}"
        );
        let bad = GOOD.replace("{bucket}.s3", "{bukket}.s3");
        let err = Config::parse(&bad, Path::new("agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bukket") && err.contains("line 3"), "{err}");
        let bad = GOOD.replace("\"direct\"", "\"upstart\"");
        let err = Config::parse(&bad, Path::new("agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstart") && err.contains("line 8"), "{err}");
        let top_typo = format!("regoin = \"x\"\n{GOOD}");
        let err = Config::parse(&top_typo, Path::new("agent.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("regoin") && err.contains("line 1"), "{err}");
    }

    const AGENT: &str = r#"
region = "us-east-1"

[agent]
schedule = "cron(0 2 * * sat)"
jitter = "1h"
maintenance_window = { start = "02:00", duration = "4h", days = ["sat", "Sunday"] }
on_boot = true
on_boot_delay = "2m"
hold = true
report = "s3://acme-molt-results/fleet"
poll = "5m"
"#;

    #[test]
    fn agent_keys_parse_and_make_a_plan() {
        let c = Config::parse(AGENT, Path::new("agent.toml")).unwrap();
        let a = &c.agent;
        assert!(a.hold);
        assert_eq!(a.report.as_deref(), Some("s3://acme-molt-results/fleet"));
        assert_eq!(a.poll_interval(), Duration::from_secs(300));
        let plan = a.plan();
        assert_eq!(plan.schedule, "cron(0 2 * * sat)".parse().unwrap());
        assert_eq!(plan.jitter, Duration::from_secs(3600));
        assert_eq!(plan.on_boot, Some(Duration::from_secs(120)));
        let w = plan.window.unwrap();
        assert_eq!(w.duration(), Duration::from_secs(4 * 3600));
        assert_eq!(w.days().map(<[_]>::len), Some(2));
    }

    #[test]
    fn agent_defaults() {
        let a = AgentConfig::default();
        assert!(!a.hold && a.report.is_none());
        assert_eq!(a.poll_interval(), Duration::from_secs(60));
        let plan = a.plan();
        assert_eq!(plan.schedule.to_string(), "rate(14 days)");
        assert_eq!(plan.jitter, Duration::from_secs(1800));
        assert_eq!((plan.window, plan.on_boot), (None, None));
        let boot = AgentConfig {
            on_boot: true,
            ..AgentConfig::default()
        };
        assert_eq!(boot.plan().on_boot, Some(Duration::from_secs(300)));
        // the jitter never exceeds a rate
        let fast = AgentConfig {
            schedule: Some("rate(10 minutes)".parse().unwrap()),
            ..AgentConfig::default()
        };
        assert_eq!(fast.plan().jitter, Duration::from_secs(600));
    }

    #[test]
    fn bad_agent_values_name_the_key_and_line() {
        for (from, to, want, line) in [
            (
                "\"1h\"",
                "\"1 fortnight\"",
                "bad duration \"1 fortnight\"",
                6,
            ),
            (
                "\"1h\"",
                "\"8days\"",
                "jitter 8days is longer than 7 days",
                6,
            ),
            ("\"2m\"", "\"soon\"", "bad duration \"soon\"", 9),
            ("\"5m\"", "\"500ms\"", "poll 500ms is shorter than 1s", 12),
            (
                "cron(0 2 * * sat)",
                "cron(61 * * * *)",
                "\"cron(61 * * * *)\"",
                5,
            ),
            ("cron(0 2 * * sat)", "rate(0 days)", "\"rate(0 days)\"", 5),
            (
                "cron(0 2 * * sat)",
                "rate(3 fortnights)",
                "unit \"fortnights\"",
                5,
            ),
            (
                "cron(0 2 * * sat)",
                "every sunday",
                "\"every sunday\" is not a schedule",
                5,
            ),
            ("\"Sunday\"", "\"Sundae\"", "unknown day \"Sundae\"", 7),
            ("\"02:00\"", "\"2am\"", "bad window start \"2am\"", 7),
            ("\"4h\"", "\"9days\"", "at most 7 days", 7),
            (
                "s3://acme-molt-results/fleet",
                "https://example.com/x",
                "\"https://example.com/x\"",
                11,
            ),
            (
                "s3://acme-molt-results/fleet",
                "s3:///fleet",
                "s3://BUCKET/PREFIX",
                11,
            ),
            ("hold =", "hodl =", "unknown field `hodl`", 10),
            ("on_boot = true", "on_boot = \"yes\"", "invalid type", 8),
        ] {
            let bad = AGENT.replacen(from, to, 1);
            assert_ne!(bad, AGENT, "{from}");
            let err = Config::parse(&bad, Path::new("agent.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{to}: {err}");
            assert!(err.contains(&format!("line {line}")), "{to}: {err}");
            // the snippet shows the key
            let key = bad
                .lines()
                .nth(line - 1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap();
            assert!(err.contains(key), "{to}: {err}");
        }
    }

    #[test]
    fn environment_overrides() {
        let mut c = Config::parse(GOOD, Path::new("agent.toml")).unwrap();
        c.apply_env(|k| match k {
            "MOLT_REGION" => Some("eu-west-1".into()),
            "MOLT_ROOT" => Some("/srv/molt".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.region.unwrap().as_str(), "eu-west-1");
        assert_eq!(c.root.unwrap(), PathBuf::from("/srv/molt"));
        let mut c = Config::default();
        c.apply_env(|k| match k {
            "MOLT_SCHEDULE" => Some("rate(2 hours)".into()),
            "MOLT_HOLD" => Some("true".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.agent.schedule.unwrap().to_string(), "rate(2 hours)");
        assert!(c.agent.hold);
        let err = Config::default()
            .apply_env(|k| (k == "MOLT_SCHEDULE").then(|| "rate(3 fortnights)".into()))
            .unwrap_err();
        assert!(err.to_string().contains("MOLT_SCHEDULE"), "{err}");
        let err = Config::default()
            .apply_env(|k| (k == "MOLT_HOLD").then(|| "maybe".into()))
            .unwrap_err();
        assert!(err.to_string().contains("MOLT_HOLD"), "{err}");
        let mut c = Config::default();
        let err = c
            .apply_env(|k| (k == "MOLT_REGION").then(|| "Mars".into()))
            .unwrap_err();
        assert!(err.to_string().contains("MOLT_REGION"), "{err}");
    }
}
