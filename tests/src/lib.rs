//! Test support for molt's end-to-end tests.

pub mod hostile;
pub mod http_server;
