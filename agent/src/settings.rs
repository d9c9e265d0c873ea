//! What the agent works with: the config file (`--config`, else `MOLT_CONFIG`, else
//! `/etc/molt/agent.toml`) with `MOLT_*` overrides from the environment.

use std::path::{Path, PathBuf};
use std::time::Duration;

use molt_host::config::{Config, ConfigError, DEFAULT_CONFIG, ServiceKind};
use molt_host::schedule::Plan;
use molt_host::{DEFAULT_ROOT, HostLayout};

/// The agent's settings, resolved.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    pub config: Config,
    /// The config file read (it may not exist when it was not named explicitly).
    pub config_path: PathBuf,
    pub config_exists: bool,
    pub layout: HostLayout,
    pub plan: Plan,
    /// `hold = true` in the config.
    pub hold: bool,
    /// Where history records are reported (`report = "s3://bucket/prefix"`).
    pub report: Option<String>,
    /// How often new history records are looked for.
    pub poll: Duration,
    pub service: ServiceKind,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("the config file {0} does not exist")]
    Missing(PathBuf),
}

impl SettingsError {
    pub fn hint(&self) -> &'static str {
        match self {
            SettingsError::Config(ConfigError::Env { .. }) => {
                "fix or unset the environment variable named above"
            }
            SettingsError::Config(_) => {
                "fix the key named above in the config file (see docs/operations.md for every key), then restart the agent"
            }
            SettingsError::Missing(_) => {
                "create it (see docs/operations.md), or pass --config with the right path"
            }
        }
    }
}

/// The config path: the flag, else `MOLT_CONFIG`, else the default. The second value says
/// whether it was named explicitly (then it must exist).
pub fn config_path(
    flag: Option<&Path>,
    lookup: &impl Fn(&str) -> Option<String>,
) -> (PathBuf, bool) {
    match (flag, lookup("MOLT_CONFIG")) {
        (Some(p), _) => (p.to_owned(), true),
        (None, Some(p)) if !p.is_empty() => (PathBuf::from(p), true),
        _ => (PathBuf::from(DEFAULT_CONFIG), false),
    }
}

/// Whether this process runs as a systemd service (systemd sets `INVOCATION_ID`).
fn under_systemd(lookup: &impl Fn(&str) -> Option<String>) -> bool {
    lookup("INVOCATION_ID").is_some() && Path::new("/run/systemd/system").is_dir()
}

impl AgentSettings {
    /// Reads the config and applies the environment.
    pub fn load(
        flag: Option<&Path>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<AgentSettings, SettingsError> {
        let (path, explicit) = config_path(flag, &lookup);
        let exists = path.exists();
        if explicit && !exists {
            return Err(SettingsError::Missing(path));
        }
        let mut config = Config::load_optional(&path)?;
        config.apply_env(&lookup)?;
        let layout = HostLayout::new(
            config
                .root
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT)),
        );
        let service = config.updater.service.unwrap_or(if under_systemd(&lookup) {
            ServiceKind::Systemd
        } else {
            ServiceKind::Direct
        });
        Ok(AgentSettings {
            plan: config.agent.plan(),
            hold: config.agent.hold,
            report: config.agent.report.clone(),
            poll: config.agent.poll_interval(),
            service,
            layout,
            config,
            config_path: path,
            config_exists: exists,
        })
    }

    /// The state file that records the schedule (last run, first start).
    pub fn schedule_state(&self) -> PathBuf {
        self.layout
            .agent_dir()
            .join(molt_host::schedule::STATE_FILE)
    }

    /// The hold set by `agent hold`.
    pub fn hold_file(&self) -> PathBuf {
        self.layout.agent_dir().join("hold.json")
    }

    /// The last updater the agent launched.
    pub fn last_launch(&self) -> PathBuf {
        self.layout.agent_dir().join("last-launch.json")
    }

    /// What has been reported to the results sink.
    pub fn report_state(&self) -> PathBuf {
        self.layout.agent_dir().join("reported.json")
    }

    /// The updater's output when the agent launches it directly.
    pub fn updater_log(&self) -> PathBuf {
        self.layout.agent_dir().join("updater.log")
    }

    /// The host's identity for reports.
    pub fn host_id_file(&self) -> PathBuf {
        self.layout.agent_dir().join("host-id")
    }
}
