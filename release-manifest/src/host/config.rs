//! `/etc/molt/agent.toml`: one file read by both the agent and the updater. Shared keys
//! at the top, then `[updater]` and `[agent]`. Strict: a human writes it, so an unknown
//! key or a bad value is an error that names the key and the line, never ignored.
//! `MOLT_*` environment variables override the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::platform::Platform;
use crate::region::{Region, Template};

/// The default config path.
pub const DEFAULT_CONFIG: &str = "/etc/molt/agent.toml";

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
    #[serde(default)]
    pub updater: UpdaterConfig,
    #[serde(default)]
    pub agent: AgentConfig,
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

/// The agent's section. Its keys arrive with the agent's service.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {}

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

impl Config {
    /// Parses a config file's text. `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
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
    /// `MOLT_TRUSTED_ROOT` and `MOLT_PLATFORM` from `lookup` (the environment).
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
            self.region =
                Some(v.parse().map_err(|e: crate::region::BadRegion| {
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
        if let Some(v) = lookup("MOLT_TRUSTED_ROOT") {
            self.trusted_root = Some(PathBuf::from(v));
        }
        if let Some(v) = lookup("MOLT_PLATFORM") {
            self.platform = Some(v.parse().map_err(|e: crate::platform::PlatformError| {
                err("MOLT_PLATFORM", &v, e.to_string())
            })?);
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
        let err = c
            .apply_env(|k| (k == "MOLT_REGION").then(|| "Mars".into()))
            .unwrap_err();
        assert!(err.to_string().contains("MOLT_REGION"), "{err}");
    }
}
