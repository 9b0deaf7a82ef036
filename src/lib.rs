//! simplestreams-builder: builds, publishes and serves LXD and Incus image catalogs.

pub mod atomic;
pub mod config;
pub mod expiry;
pub mod hash;
pub mod inspect;
pub mod manifest;
pub mod publish;
pub mod stream;
pub mod tree;
