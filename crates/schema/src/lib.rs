//! molt's schema: the types and rules that the release tool, the updater and the agent
//! all agree on. Pure: no I/O runtime, no network, no TUF, no AWS.
//!
//! - [`version`], [`platform`], [`region`], [`artifact`]: parsed domain types.
//! - [`manifest`]: the regional `manifest.json` (a superset of SSM's).
//! - [`rollout`]: in-region waves and when a host becomes eligible.
//! - [`resolve`]: which version a host should move to, and every rule that can refuse.
//! - [`cli`]: the exit codes every binary shares, and the one error renderer.

pub mod artifact;
pub mod cli;
pub mod manifest;
pub mod platform;
pub mod region;
pub mod resolve;
pub mod rollout;
pub mod version;

pub use artifact::{ArtifactName, PackageName, Sha256};
pub use platform::{ArchiveKind, Platform};
pub use region::Region;
pub use version::Version;
