//! Test support for molt's end-to-end tests.

pub mod agent_host;
pub mod background;
pub mod fixture;
pub mod hostile;
pub mod http_server;
pub mod imds;
pub mod machine;
pub mod s3;
pub mod stats;
