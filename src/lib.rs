//! simplestreams-builder: builds, publishes and serves LXD and Incus image catalogs over the
//! simplestreams protocol.
//!
//! Data flow: a tree (tree.yml products, or the `images/<os>/<release>/<arch>/<variant>/`
//! layout) is scanned ([`tree`]), hashed once per byte ([`hash`], [`inspect`]) into per-product
//! manifests ([`manifest`]), merged into one catalog checked against what real clients need
//! ([`publish`], [`stream`]) and served ([`server`]).

pub mod atomic;
pub mod build;
pub mod bulk;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod direct;
pub mod expiry;
pub mod hash;
pub mod import;
pub mod inspect;
pub mod inventory;
pub mod manifest;
pub mod metadata_json;
pub mod mirror;
pub mod products;
pub mod publish;
pub mod requirements_file;
pub mod serve_cmd;
pub mod server;
pub mod stream;
pub mod tree;
pub mod unified;

use std::io::{IsTerminal, Write};

/// Writes command output to stdout. A closed pipe (`| head`) is not an error.
pub fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Sets up logging on stderr: info by default, debug with `-v` or a non-empty `DEBUG`;
/// `RUST_LOG` overrides both.
pub fn init_logging(verbose: bool) {
    let debug = verbose || std::env::var("DEBUG").is_ok_and(|v| !v.is_empty());
    let default = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(debug)
        .try_init();
}

/// An error and its sources on one line (`a: b: c`), for messages that must name the root cause
/// (reqwest and rustls hide it in `source()`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
