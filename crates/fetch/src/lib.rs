//! Reading a region's repository, the host's side of the network.
//!
//! - [`transport`]: molt's `tough::Transport` over reqwest (Range with 206 checks, 403/404
//!   as not-found, a deadline and a throughput floor, proxies honoured).
//! - [`tuf`]: loading a region through tough with a persistent datastore, the manifest's
//!   region check, and reading targets that TUF verifies.
//! - [`s3`]: S3 locations and endpoints, and SigV4 signing for private buckets.
//! - [`aws`]: region, IMDS and credentials through aws-config.
//! - [`retry`]: the one retry policy (capped exponential backoff with equal jitter).

pub mod aws;
pub mod retry;
pub mod s3;
pub mod transport;
pub mod tuf;
