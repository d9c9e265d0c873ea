//! The updater's stages (SPEC §6), one module each, in the order an update takes them:
//!
//! [`lock`] → [`recover`] → trust (`molt_fetch::tuf`) → [`self_update`] → resolve
//! (`molt_schema::resolve`) → [`download`] (download, verify and stage in one pass) →
//! [`install`] → [`switch`] (stop → link → start) → [`health`] → [`commit`] or
//! [`rollback`] → [`history`]. [`journal`] records each step before it is taken;
//! [`update`] is the orchestrator; [`service`] controls the agent (systemd or direct).

pub mod bootstrap;
pub mod commit;
pub mod download;
pub mod error;
pub mod health;
pub mod history;
pub mod install;
pub mod journal;
pub use molt_host::lock;
pub mod recover;
pub mod requests;
pub mod rollback;
pub mod self_update;
pub mod service;
pub mod settings;
pub mod status;
pub mod switch;
pub mod update;
