//! The updater's failures and their exit codes (SPEC §6).

use std::path::{Path, PathBuf};

use molt_fetch::tuf::TrustError;
use molt_host::attempt::FailureClass;
use molt_host::state::StateError;
use molt_schema::Version;
use molt_schema::cli::exit;
use molt_schema::resolve::Refusal;

use crate::bootstrap::BootstrapError;
use crate::download::DownloadError;
use crate::install::InstallError;
use crate::lock::LockError;
use crate::rollback::RestoreError;
use crate::service::ServiceError;
use crate::settings::SettingsError;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot read the trusted root {path}")]
    NoTrustedRoot {
        path: PathBuf,
        first_install: bool,
        source: std::io::Error,
    },
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("{}", trust_headline(.0))]
    Trust(#[from] TrustError),
    #[error("download failed")]
    Download(#[from] DownloadError),
    #[error("install failed; nothing changed")]
    Install(#[from] InstallError),
    #[error("{to} failed its health check and was rolled back to {}", from.as_ref().map_or_else(|| "nothing".to_owned(), ToString::to_string))]
    RolledBack {
        to: Version,
        from: Option<Version>,
        /// Why the new version failed: the renderer's `caused by:` line.
        #[source]
        reason: Why,
    },
    #[error("CRITICAL: {to} failed and putting {} back failed too", from.as_ref().map_or_else(|| "the previous version".to_owned(), ToString::to_string))]
    RollbackFailed {
        to: Version,
        from: Option<Version>,
        /// Why the previous version could not be put back: the `caused by:` lines.
        #[source]
        reason: Box<RestoreError>,
    },
    #[error("{to} passed its health check, but its commit could not be recorded, so it was rolled back to {}", from.as_ref().map_or_else(|| "nothing".to_owned(), ToString::to_string))]
    NotCommitted {
        to: Version,
        from: Option<Version>,
        /// Why the commit could not be written (a full or read-only disk).
        #[source]
        source: Box<UpdateError>,
    },
    #[error("could not stop the running agent")]
    NotStopped {
        #[source]
        source: ServiceError,
    },
    /// Only ever a rollback's reason (the new version could not be started).
    #[error("could not start the new agent")]
    NotStarted {
        #[source]
        source: ServiceError,
    },
    #[error(
        "{path} holds an unfinished update at step {step:?} from a newer updater; this updater leaves it alone"
    )]
    NewerJournal { path: PathBuf, step: String },
    /// A version the update would run (the target, or the one a rollback would restore)
    /// refuses the host's config: nothing was switched.
    #[error("{}", config_headline(.version, *.rollback))]
    ConfigRefused {
        version: Version,
        rollback: bool,
        source: Box<InstallError>,
    },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Failed(anyhow::Error),
}

/// Why a new version was rolled back (what its health check saw), kept as the source of
/// [`UpdateError::RolledBack`] so that the one renderer prints it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Why(pub String);

impl UpdateError {
    pub fn state(e: StateError) -> UpdateError {
        UpdateError::State(e)
    }

    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> UpdateError {
        UpdateError::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }

    /// The exit code of SPEC §6.
    pub fn exit_code(&self) -> i32 {
        match self {
            UpdateError::Lock(LockError::Held { .. }) => exit::LOCKED,
            UpdateError::Refused(_) => exit::REFUSED,
            UpdateError::Trust(e) if e.is_verification() => exit::VERIFICATION,
            UpdateError::Download(e) if e.is_verification() => exit::VERIFICATION,
            UpdateError::Bootstrap(crate::bootstrap::BootstrapError::Damaged { .. }) => {
                exit::VERIFICATION
            }
            UpdateError::RolledBack { .. } | UpdateError::NotCommitted { .. } => exit::ROLLED_BACK,
            UpdateError::RollbackFailed { .. } => exit::ROLLBACK_FAILED,
            // A config that names no source, or one that is not a URL: the operator's
            // input, like a usage error (every binary exits 2 for these).
            UpdateError::Settings(
                SettingsError::NoSource
                | SettingsError::BadSource(..)
                | SettingsError::BadUrl { .. }
                | SettingsError::BadS3 { .. },
            ) => exit::USAGE,
            _ => exit::FAILED,
        }
    }

    /// The kind of failure, for history and for the agent's retry rule
    /// ([`FailureClass::retryable`]).
    pub fn failure_class(&self) -> FailureClass {
        match self {
            UpdateError::Lock(LockError::Held { .. }) => FailureClass::Busy,
            UpdateError::Refused(_) | UpdateError::ConfigRefused { .. } => FailureClass::Refused,
            UpdateError::Trust(e) if e.is_verification() => FailureClass::Verification,
            UpdateError::Trust(_) => FailureClass::Network,
            UpdateError::Download(e) if e.is_verification() => FailureClass::Verification,
            UpdateError::Download(
                DownloadError::Transport { .. } | DownloadError::NotFound { .. },
            ) => FailureClass::Network,
            UpdateError::RolledBack { .. } => FailureClass::Health,
            UpdateError::NotCommitted { .. } => FailureClass::NotCommitted,
            UpdateError::RollbackFailed { .. } => FailureClass::Critical,
            _ if self.exit_code() == exit::USAGE => FailureClass::Usage,
            _ => FailureClass::Failed,
        }
    }

    /// What the operator can do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            UpdateError::Lock(LockError::Held { .. }) => Some("wait for the running update to finish; `updater status` shows it".into()),
            UpdateError::Settings(e) => e.hint().map(str::to_owned),
            UpdateError::Bootstrap(e) => Some(e.hint().to_owned()),
            UpdateError::NoTrustedRoot { first_install: true, .. } => {
                Some("a first install needs --trusted-root FILE (the release's root.json)".into())
            }
            UpdateError::NoTrustedRoot { .. } => Some("set `trusted_root` in /etc/molt/agent.toml or pass --trusted-root".into()),
            UpdateError::Refused(r) => r.hint().map(str::to_owned),
            UpdateError::Trust(e) => e.hint().map(str::to_owned),
            UpdateError::Download(e) if e.is_verification() => {
                Some("the downloaded bytes do not match the signed metadata; the old version keeps running".into())
            }
            UpdateError::RolledBack { to, .. } => Some(format!(
                "{to} is quarantined on this host; scheduled updates skip it until a newer version appears (retry with --force); see `updater history` and state/agent.log"
            )),
            UpdateError::NewerJournal { .. } => Some(
                "run the newer updater that wrote it (<root>/bin/updater); the agent keeps running meanwhile".into(),
            ),
            UpdateError::ConfigRefused { version, .. } => Some(format!(
                "fix the config as the cause says (a key {version} does not know: remove it, or keep this host on versions that know it); `<root>/versions/{version}/bin/agent check-config` checks it, then run the update again"
            )),
            UpdateError::NotCommitted { to, .. } => Some(format!(
                "make room on the disk that holds the install root (or make it writable); {to} is not quarantined, and the next run updates again"
            )),
            UpdateError::NotStopped { .. } => Some(
                "nothing was switched and the running agent was kept; fix what the cause names (systemd, permissions) and retry".into(),
            ),
            UpdateError::RollbackFailed { .. } => Some(
                "the updater leaves an agent from a valid version running where it can start one; if the disk is full or read-only, make room or make it writable, and `updater recover` (the systemd timer runs it every few minutes) confirms or repairs the host; if that fails, check state/agent.log and point <root>/current at the last version under <root>/versions that has a .valid file"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// The first line of [`UpdateError::ConfigRefused`].
fn config_headline(version: &Version, rollback: bool) -> String {
    if rollback {
        format!(
            "{version}, the version a rollback would restore, refuses this host's config; nothing changed, because a failed update could then leave no agent that starts"
        )
    } else {
        format!("{version} refuses this host's config; nothing changed")
    }
}

/// The first line of a repository failure: verification (exit 4) or reaching it (exit 1),
/// so that an outage does not read as tampering.
fn trust_headline(e: &TrustError) -> &'static str {
    if e.is_verification() {
        "the region's repository could not be verified"
    } else {
        "the region's repository could not be read"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_does_not_read_as_tampering() {
        let unreachable = UpdateError::Trust(TrustError::Other("connection refused".into()));
        assert_eq!(
            unreachable.to_string(),
            "the region's repository could not be read"
        );
        assert_eq!(unreachable.exit_code(), exit::FAILED);
        let expired = UpdateError::Trust(TrustError::Expired {
            role: "timestamp".into(),
        });
        assert_eq!(
            expired.to_string(),
            "the region's repository could not be verified"
        );
        assert_eq!(expired.exit_code(), exit::VERIFICATION);
        // an outage is retried as a network failure, an expired timestamp as a
        // verification failure (the release tool's next refresh usually cures it)
        assert_eq!(unreachable.failure_class(), FailureClass::Network);
        assert_eq!(expired.failure_class(), FailureClass::Verification);
        assert!(unreachable.failure_class().retryable() && expired.failure_class().retryable());
    }
}
