//! The version a host binary reports.
//!
//! Release builds, the demo and the tests stamp a version at compile time with
//! `MOLT_BUILD_VERSION`. Only the binaries' `main.rs` reads the variable (with
//! `option_env!`, so cargo rebuilds when it changes) and hands it to [`set_version`] first
//! thing. A re-stamp therefore recompiles the two `main.rs` files and nothing else: v1, v2
//! and v3 of the same source cost a link each, not a build.

use std::sync::OnceLock;

static VERSION: OnceLock<&'static str> = OnceLock::new();

/// Records the version this binary was stamped with. The first call wins.
pub fn set_version(version: &'static str) {
    let _ = VERSION.set(version);
}

/// The stamped version, or this crate's version where no binary set one (library tests).
pub fn version() -> &'static str {
    VERSION.get().copied().unwrap_or(env!("CARGO_PKG_VERSION"))
}
