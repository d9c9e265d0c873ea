//! molt's host agent (SPEC §7): the service that runs the update schedule (the
//! "association"), reports health, status and results, and launches the updater.
//!
//! - [`settings`]: the config file and the environment.
//! - [`run`]: the service loop; [`launch`] starts the updater; [`report`] uploads results.
//! - [`status`] and [`diagnose`]: what an operator asks a host.
//! - [`hold`] and [`identity`]: per-host state (the hold, the seed, the host id).

pub mod diagnose;
pub mod hold;
pub mod identity;
pub mod launch;
pub mod report;
pub mod run;
pub mod settings;
pub mod status;
