//! Signed regional repositories: TUF through the `tough` crate (SPEC §4).
//!
//! - [`keys`]: generating and loading the role keys (PEM, PKCS#8, files mode 0600); the
//!   root keys live apart from the online keys.
//! - [`repo`]: the publisher's side: `repo init`, adding releases, status changes,
//!   `refresh`, expiry checks and root rotation, all through tough's editor and signer.
//! - The host's side (loading a region through tough) is `molt_fetch::tuf`.
//!
//! A region's repository, with consistent snapshots:
//!
//! ```text
//! metadata/1.root.json, 2.root.json, …     immutable; the root chain (one per root version)
//! metadata/<N>.targets.json                immutable; one per targets version
//! metadata/<N>.snapshot.json               immutable; one per snapshot version
//! metadata/timestamp.json                  the only mutable file; written last
//! targets/<sha256>.manifest.json           immutable (content-addressed)
//! targets/<sha256>.<package>/<version>/<package>-<platform>.<ext>   immutable
//! ```

pub mod audit;
pub mod keys;
pub mod repo;

use std::time::Duration;

pub use molt_schema::manifest::MANIFEST_TARGET;

/// How long each role's metadata stays valid after it is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expirations {
    pub root: Duration,
    pub targets: Duration,
    pub snapshot: Duration,
    pub timestamp: Duration,
}

impl Default for Expirations {
    /// root 1 year, targets 90 days, snapshot 7 days, timestamp 1 day.
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Expirations {
            root: Duration::from_secs(365 * DAY),
            targets: Duration::from_secs(90 * DAY),
            snapshot: Duration::from_secs(7 * DAY),
            timestamp: Duration::from_secs(DAY),
        }
    }
}

/// `now + d`, or an error naming the role when that overflows the calendar.
pub(crate) fn expiry(now: jiff::Timestamp, d: Duration) -> Option<jiff::Timestamp> {
    let d = jiff::SignedDuration::try_from(d).ok()?;
    now.checked_add(d).ok()?.round(jiff::Unit::Second).ok()
}
