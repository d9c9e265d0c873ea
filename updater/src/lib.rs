//! The updater's stages (SPEC §6), one module each.
//!
//! [`lock`] → [`recover`] → trust (`molt_fetch::tuf`) → resolve
//! (`molt_schema::resolve`) → [`download`] → [`stage`] → [`switch`] → [`health`] →
//! commit or roll back ([`update`]) → history (`molt_host::state`).
//! [`service`] controls the agent (systemd or direct).

pub mod download;
pub mod error;
pub mod health;
pub use molt_host::lock;
pub mod recover;
pub mod self_update;
pub mod service;
pub mod settings;
pub mod stage;
pub mod status;
pub mod switch;
pub mod update;
