//! The one error type of the server module. Every variant names the file or address involved,
//! so a failed `serve` can be reported to the user without extra context.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot serve {path}: not a readable directory")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot read {path}")]
    ReadPem {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot parse {path}: {reason}")]
    ParsePem { path: PathBuf, reason: String },

    #[error("cannot use certificate {cert} with key {key}")]
    TlsConfig {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },

    #[error("cannot generate a self-signed certificate for {names:?}")]
    GenerateCert {
        names: Vec<String>,
        #[source]
        source: rcgen::Error,
    },

    #[error("{name:?} is neither an IP address nor a valid DNS name for the certificate")]
    InvalidSan { name: String },

    #[error("cannot write {path}")]
    WriteCert {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),

    #[error("server on {addr} failed")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}
