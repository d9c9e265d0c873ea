//! molt's shared library: the types and rules that the release tool, the updater and
//! the agent all agree on.
//!
//! - [`version`], [`platform`], [`region`], [`artifact`]: parsed domain types.
//! - [`manifest`]: the regional `manifest.json` (a superset of SSM's).
//! - [`rollout`]: in-region waves and when a host becomes eligible.
//! - [`resolve`]: which version a host should move to, and every rule that can refuse.
//! - [`package`] and [`extract`]: reproducible archives and the safe extractor.
//! - [`aws`]: region, IMDS and credentials through aws-config; [`s3`]: SigV4 for private buckets.
//! - [`schedule`]: the agent's association (rate or cron, jitter, maintenance window).
//! - [`store`]: where the publisher writes a region's repository (a directory, or S3 through
//!   aws-sdk-s3 with the `s3` feature), with conditional writes.

pub mod artifact;
pub mod aws;
pub mod build_info;
pub mod cli;
pub mod extract;
pub mod host;
pub mod manifest;
pub mod package;
pub mod plan;
pub mod platform;
pub mod publish;
pub mod region;
pub mod resolve;
pub mod rollout;
pub mod s3;
pub mod schedule;
pub mod store;
pub mod transport;
pub mod tuf;
pub mod version;

pub use artifact::{ArtifactName, PackageName, Sha256};
pub use build_info::BUILD_VERSION;
pub use platform::{ArchiveKind, Platform};
pub use region::Region;
pub use version::Version;
