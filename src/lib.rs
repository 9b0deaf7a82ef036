//! simplestreams-builder: builds, publishes and serves LXD and Incus image catalogs over the
//! simplestreams protocol.
//!
//! Data flow, by folder: a tree's products are declared in tree.yml ([`config`]) or found in the
//! `images/<os>/<release>/<arch>/<variant>/` layout ([`tree`]); their version folders are scanned
//! ([`tree`]) and every file is hashed once per byte ([`hash`]) while the images describe
//! themselves ([`image`]); that becomes one manifest per product, then one catalog checked
//! against what real clients need ([`catalog`], in the [`format`](mod@format) clients read), which the
//! [`server`] serves. [`build`], [`import`], [`mirror`] and [`direct`] are the features that put
//! images into a tree or hand them out.

pub mod access;
pub mod bucket;
pub mod build;
pub mod catalog;
pub mod config;
pub mod delta;
pub mod direct;
pub mod format;
pub mod hash;
pub mod image;
pub mod import;
pub mod mirror;
pub mod net;
pub mod server;
pub mod sign;
pub mod tree;

/// An error and its sources on one line (`a: b: c`), for messages that must name the root cause
/// (reqwest and rustls hide it in `source()`). A source whose text the line already ends with is
/// left out: many messages quote their cause (`cannot read x: No such file`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
