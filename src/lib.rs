//! simplestreams-builder: builds, publishes and serves LXD and Incus image catalogs.

pub mod config;
pub mod expiry;
pub mod stream;
