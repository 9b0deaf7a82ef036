//! `serve`: the server with its options resolved, and the mirror pulls of `--mirror-interval`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;

use simplestreams_builder::catalog::publish::index_path;
use simplestreams_builder::server::{ServeOptions, TlsMode, WriteOptions, serve as run_server};

use crate::cli::settings::Serve;

/// Serves until SIGINT/SIGTERM.
pub fn serve(s: Serve) -> Result<()> {
    if let Some((req, every)) = s.mirror {
        simplestreams_builder::mirror::pull_every(req, every);
    }
    let root = &s.options.root;
    if s.options.index.is_none() && !index_path(root).is_file() {
        tracing::warn!(
            "{} has no {} yet: run `simplestreams-builder publish -t {}` first, or serve with --index",
            root.display(),
            simplestreams_builder::tree::names::index_rel(),
            root.display()
        );
    }
    run_server(s.options)?;
    Ok(())
}

/// Serves `root` read-only over HTTPS with a self-signed certificate (the demo).
pub fn serve_static(root: PathBuf, listen: SocketAddr) -> Result<()> {
    run_server(ServeOptions {
        root,
        listen,
        tls: TlsMode::SelfSigned {
            extra_sans: Vec::new(),
        },
        index: None,
        writes: WriteOptions::default(),
        read_users: None,
    })?;
    Ok(())
}
