//! Placeholder; replaced by the service-manager work.
fn main() {}
