//! The version this build of the release tool reports: `MOLT_BUILD_VERSION` at compile
//! time (the release pipeline sets it), else the crate version.

pub const BUILD_VERSION: &str = match option_env!("MOLT_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};
