//! How one run of the updater ended, as the agent's retry rule needs it (SPEC §6, §7).
//!
//! The agent launches the updater detached (`setsid`, or a transient systemd unit) and
//! never sees its exit status; the updater may even stop the agent that launched it. So
//! an updater the agent launched (`MOLT_LAUNCH_ID` set) writes what it ended with to
//! `state/last-run.json` ([`RunResult`]), and whichever agent runs next reads it there.
//!
//! [`FailureClass`] is the kind of failure, derived from the error: the agent retries a
//! scheduled run that failed for a reason time may cure (the network, a verification
//! failure such as an expired timestamp, a full disk), never one that a retry repeats
//! (a rule refused it, the version failed its health check and is quarantined).

use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::state::Outcome;
#[cfg(test)]
use crate::state::STATE_VERSION;

/// The file under `<root>/state/` that holds the last launched run's [`RunResult`].
pub const LAST_RUN_FILE: &str = "last-run.json";

/// The environment variable that carries the agent's launch id to the updater.
pub const LAUNCH_ID_ENV: &str = "MOLT_LAUNCH_ID";

/// The longest launch id the updater records (the agent's are 23 bytes).
pub const MAX_LAUNCH_ID: usize = 64;

/// What kind of failure ended a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The repository or a package could not be reached or read (5xx, resets,
    /// timeouts, DNS) after the fetch's own retries.
    Network,
    /// What was read did not verify: a signature, an expired or rolled-back role, a
    /// hash or length, the wrong region (exit 4).
    Verification,
    /// A rule refused the update: a downgrade, an unsupported platform, a target that is
    /// not offered, a config the new version refuses (exit 3).
    Refused,
    /// The new version failed its health check and was rolled back and quarantined
    /// (exit 5).
    Health,
    /// The new version was healthy but its commit could not be written (a full or
    /// read-only disk), so it was rolled back without quarantine (exit 5).
    NotCommitted,
    /// Another update held the lock (exit 6).
    Busy,
    /// A rollback failed (exit 7).
    Critical,
    /// The config or the command line is wrong (exit 2).
    Usage,
    /// Any other failure of the run (a full disk, a state file that cannot be written).
    Failed,
    /// The agent could not start an updater at all.
    Launch,
    /// The updater ended without recording a result (it was killed, or the machine
    /// stopped).
    NoResult,
    /// A class this version of molt does not know.
    #[serde(other)]
    Unknown,
}

impl FailureClass {
    /// Whether a later attempt may succeed where this one failed. The rest would fail the
    /// same way until a person (or a new release) changes something.
    pub fn retryable(self) -> bool {
        match self {
            FailureClass::Network
            | FailureClass::Verification
            | FailureClass::NotCommitted
            | FailureClass::Busy
            | FailureClass::Failed
            | FailureClass::Launch
            | FailureClass::NoResult
            | FailureClass::Unknown => true,
            FailureClass::Refused
            | FailureClass::Health
            | FailureClass::Critical
            | FailureClass::Usage => false,
        }
    }

    /// The class a history record's outcome implies, for a record that names none (an
    /// older updater's); `None` for a success.
    pub fn from_outcome(outcome: Outcome) -> Option<FailureClass> {
        match outcome {
            Outcome::Success | Outcome::Unknown => None,
            Outcome::RolledBack => Some(FailureClass::Health),
            Outcome::Failed => Some(FailureClass::Failed),
            Outcome::RollbackFailed => Some(FailureClass::Critical),
        }
    }

    /// The class an exit code implies, for a run that recorded no class of its own.
    pub fn from_exit_code(code: i32) -> Option<FailureClass> {
        use molt_schema::cli::exit;
        Some(match code {
            exit::OK => return None,
            exit::USAGE => FailureClass::Usage,
            exit::REFUSED => FailureClass::Refused,
            exit::VERIFICATION => FailureClass::Verification,
            exit::ROLLED_BACK => FailureClass::Health,
            exit::LOCKED => FailureClass::Busy,
            exit::ROLLBACK_FAILED => FailureClass::Critical,
            _ => FailureClass::Failed,
        })
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureClass::Network => "network",
            FailureClass::Verification => "verification",
            FailureClass::Refused => "refused",
            FailureClass::Health => "health",
            FailureClass::NotCommitted => "not_committed",
            FailureClass::Busy => "busy",
            FailureClass::Critical => "critical",
            FailureClass::Usage => "usage",
            FailureClass::Failed => "failed",
            FailureClass::Launch => "launch",
            FailureClass::NoResult => "no_result",
            FailureClass::Unknown => "unknown",
        })
    }
}

/// `state/last-run.json`: how the last run the agent launched ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunResult {
    #[serde(default = "crate::state::state_version")]
    pub version: u32,
    /// The agent's launch id (`MOLT_LAUNCH_ID`).
    pub launch: String,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
    pub exit_code: i32,
    /// `None` for a run that succeeded (or had nothing to do).
    #[serde(default)]
    pub failure: Option<FailureClass>,
    /// The error's first line, for `agent status`.
    #[serde(default)]
    pub message: Option<String>,
}

/// The longest message kept with a result or an attempt, in characters.
pub const MAX_MESSAGE: usize = 512;

/// A message fit to keep and print: control characters (a terminal's escapes, newlines)
/// become spaces, and it is cut to [`MAX_MESSAGE`] characters.
pub fn clean_message(message: &str) -> String {
    let mut out: String = message
        .chars()
        .take(MAX_MESSAGE)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if message.chars().nth(MAX_MESSAGE).is_some() {
        out.push('…');
    }
    out
}

/// The launch id in `MOLT_LAUNCH_ID`, when it is one the agent could have written: at most
/// [`MAX_LAUNCH_ID`] bytes of ASCII letters, digits and `-`. Anything else (an operator's
/// stray variable) is ignored, and the run is not recorded.
pub fn launch_id_from(value: Option<String>) -> Option<String> {
    value.filter(|v| {
        !v.is_empty()
            && v.len() <= MAX_LAUNCH_ID
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_to_classes_and_only_curable_ones_retry() {
        use molt_schema::cli::exit;
        assert_eq!(FailureClass::from_exit_code(exit::OK), None);
        let retried: Vec<i32> = [0, 1, 2, 3, 4, 5, 6, 7, 9]
            .into_iter()
            .filter(|c| FailureClass::from_exit_code(*c).is_some_and(FailureClass::retryable))
            .collect();
        assert_eq!(retried, vec![1, 4, 6, 9]);
    }

    #[test]
    fn unknown_classes_read_as_unknown() {
        let r: RunResult = serde_json::from_str(
            r#"{"launch":"x","started_at":"2026-01-01T00:00:00Z","finished_at":"2026-01-01T00:00:01Z","exit_code":1,"failure":"solar_flare","extra":true}"#,
        )
        .unwrap();
        assert_eq!(r.failure, Some(FailureClass::Unknown));
        assert_eq!(r.version, STATE_VERSION);
    }

    #[test]
    fn messages_are_cleaned_and_bounded() {
        assert_eq!(clean_message("a\x1b[31mred\nline"), "a [31mred line");
        let long = clean_message(&"é".repeat(2000));
        assert_eq!(long.chars().count(), MAX_MESSAGE + 1);
        assert!(long.ends_with('…'));
        assert_eq!(clean_message("short"), "short");
    }

    #[test]
    fn launch_ids_are_checked() {
        assert_eq!(
            launch_id_from(Some("20261203T120000Z-a1b2c3".into())).as_deref(),
            Some("20261203T120000Z-a1b2c3")
        );
        for bad in ["", "a/b", "x\ny", &"a".repeat(65), "id with space"] {
            assert_eq!(launch_id_from(Some(bad.into())), None, "{bad:?}");
        }
        assert_eq!(launch_id_from(None), None);
    }
}
