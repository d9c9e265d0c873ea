//! molt's publisher: everything that writes a region's repository. Only the release
//! tool depends on this crate; `.ci/run` checks that the agent's and the updater's
//! dependency trees never contain it.
//!
//! - [`tuf`]: the role keys and the repository editor (tough's editor and signer).
//! - [`store`]: where a region's repository lives (a directory, or S3 through
//!   aws-sdk-s3), with conditional writes.
//! - [`plan`]: `ci/rollout.toml`, waves of regions and their guards' settings.
//! - [`publish`]: render → diff → guard → apply → read back, region by region.
//! - [`record`]: what the publisher last signed for each region, kept outside the bucket.

pub mod plan;
pub mod publish;
pub mod record;
pub mod store;
pub mod tuf;
