//! `serve`: turns the CLI flags into server options.

use anyhow::{Context, Result, bail};

use std::path::PathBuf;

use crate::cli::args::ServeArgs;
use simplestreams_builder::catalog::manifest::HttpSettings;
use simplestreams_builder::server::{
    IndexOptions, ServeOptions, TlsMode, WriteOptions, serve as run_server,
};

/// Serves the tree at `root` until SIGINT/SIGTERM. `config` is the tree.yml used when the
/// server owns the catalog (`None`: layout mode).
pub fn serve(
    root: PathBuf,
    config: Option<PathBuf>,
    http: HttpSettings,
    args: &ServeArgs,
) -> Result<()> {
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
    let token = write_token(args)?;
    let index = args.index || token.is_some() || args.allow_anonymous_writes;
    if !index && !simplestreams_builder::catalog::publish::index_path(&root).is_file() {
        tracing::warn!(
            "{} has no streams/v1/index.json yet: run `simplestreams-builder publish -t {}` first, or serve with --index",
            root.display(),
            root.display()
        );
    }
    run_server(ServeOptions {
        root,
        listen: args.listen,
        tls,
        index: index.then_some(IndexOptions {
            config,
            watch: !args.no_watch,
            http,
        }),
        writes: WriteOptions {
            token,
            allow_anonymous: args.allow_anonymous_writes,
            allow_overwrites: args.allow_overwrites,
            allow_deletes: args.allow_deletes,
            max_upload_size: args.max_upload_size,
        },
    })?;
    Ok(())
}

/// Serves `root` read-only over HTTPS with a self-signed certificate (the demo).
pub fn serve_static(root: PathBuf, listen: std::net::SocketAddr) -> Result<()> {
    run_server(ServeOptions {
        root,
        listen,
        tls: TlsMode::SelfSigned {
            extra_sans: Vec::new(),
        },
        index: None,
        writes: WriteOptions::default(),
    })?;
    Ok(())
}

/// The write token from `--write-token-file` or `SSB_WRITE_TOKEN`; surrounding white space
/// (a trailing newline in a file or a Secret) is not part of it.
fn write_token(args: &ServeArgs) -> Result<Option<String>> {
    let token = match (&args.write_token_file, &args.write_token) {
        (Some(file), _) => {
            let text = fs_err::read_to_string(file).context("cannot read the write token")?;
            Some((text.trim().to_owned(), format!("{}", file.display())))
        }
        (None, Some(t)) => Some((t.trim().to_owned(), "SSB_WRITE_TOKEN".to_owned())),
        (None, None) => None,
    };
    match token {
        Some((t, from)) if t.is_empty() => bail!("the write token in {from} is empty"),
        Some((t, from)) if t.len() < 16 => {
            tracing::warn!(
                "the write token in {from} is short ({} characters); use 32 or more random characters",
                t.len()
            );
            Ok(Some(t))
        }
        Some((t, _)) => Ok(Some(t)),
        None => Ok(None),
    }
}
