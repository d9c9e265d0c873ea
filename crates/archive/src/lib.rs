//! molt's package archives (SPEC §4): what a package holds, [`package`] to write it
//! reproducibly, and [`extract`], the safe extractor that the updater streams downloads
//! through and that the release tool can use to check an archive before signing it.

pub mod extract;
pub mod package;
