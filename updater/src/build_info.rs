//! The version this build reports.
//!
//! Release builds, the demo and the tests stamp a version at compile time with
//! `MOLT_BUILD_VERSION`, so that v1, v2 and v3 of the same source can be built.
//! `option_env!` makes rustc record the variable, so cargo rebuilds when it changes.

/// The version stamped into this build: `MOLT_BUILD_VERSION` at compile time, else the crate version.
pub const BUILD_VERSION: &str = match option_env!("MOLT_BUILD_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

#[cfg(test)]
mod tests {
    use super::BUILD_VERSION;
    use molt_schema::Version;

    #[test]
    fn build_version_parses() {
        let parsed: Version = BUILD_VERSION
            .parse()
            .expect("MOLT_BUILD_VERSION must be a valid molt version");
        assert_eq!(parsed.to_string(), BUILD_VERSION);
    }
}
