//! A per-host hold: `hold = true` in the config, or `agent hold` (a state file that
//! survives restarts and upgrades). Held hosts run no scheduled update; an operator's
//! `updater --target-version …` still works.

use jiff::Timestamp;
use molt_host::state::{self, STATE_VERSION, StateError};
use serde::{Deserialize, Serialize};

use crate::settings::AgentSettings;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldFile {
    pub version: u32,
    pub at: Timestamp,
    pub reason: Option<String>,
}

/// Why the host is held, if it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Hold {
    Config,
    Command {
        at: Timestamp,
        reason: Option<String>,
    },
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::Config => f.write_str("held by `hold = true` in the config"),
            Hold::Command { at, reason } => {
                write!(f, "held by `agent hold` since {at}")?;
                if let Some(r) = reason {
                    write!(f, " ({r})")?;
                }
                Ok(())
            }
        }
    }
}

/// The hold in force, if any. An unreadable hold file counts as a hold: refusing to
/// update is the safe side of not knowing.
pub fn current(settings: &AgentSettings) -> Option<Hold> {
    if settings.hold {
        return Some(Hold::Config);
    }
    match state::read_json::<HoldFile>(&settings.hold_file()) {
        Ok(None) => None,
        Ok(Some(h)) => Some(Hold::Command {
            at: h.at,
            reason: h.reason,
        }),
        Err(e) => Some(Hold::Command {
            at: Timestamp::UNIX_EPOCH,
            reason: Some(format!("the hold file cannot be read: {e}")),
        }),
    }
}

pub fn hold(settings: &AgentSettings, reason: Option<String>) -> Result<(), StateError> {
    state::write_json(
        &settings.hold_file(),
        &HoldFile {
            version: STATE_VERSION,
            at: Timestamp::now(),
            reason,
        },
    )
}

/// Removes `agent hold`'s file. Returns whether there was one.
pub fn unhold(settings: &AgentSettings) -> Result<bool, StateError> {
    let path = settings.hold_file();
    let existed = path.exists();
    state::remove(&path)?;
    Ok(existed)
}
