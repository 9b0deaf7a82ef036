//! `serve`: turns the CLI flags into server options.

use anyhow::Result;

use std::path::PathBuf;

use crate::cli::ServeArgs;
use crate::server::{ServeOptions, TlsMode, serve as run_server};

/// Serves the tree at `root` until SIGINT/SIGTERM.
pub fn serve(root: PathBuf, args: &ServeArgs) -> Result<()> {
    let tls = if args.http {
        TlsMode::Http
    } else if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        TlsMode::Files {
            cert: cert.clone(),
            key: key.clone(),
        }
    } else {
        TlsMode::SelfSigned {
            extra_sans: args.tls_san.clone(),
        }
    };
    if !crate::publish::index_path(&root).is_file() {
        tracing::warn!(
            "{} has no streams/v1/index.json yet: run `simplestreams-builder publish -t {}` first",
            root.display(),
            root.display()
        );
    }
    run_server(ServeOptions {
        root,
        listen: args.listen,
        tls,
    })?;
    Ok(())
}
