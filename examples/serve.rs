//! Manual testing aid: `cargo run --example serve -- ROOT [LISTEN] [http|self-signed|CERT KEY]`.
//! The real entry point is the CLI's `serve` command.

use std::path::PathBuf;

use simplestreams_builder::server::{ServeOptions, TlsMode, serve};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(args.first().ok_or("usage: serve ROOT [LISTEN] [MODE]")?);
    let listen = args
        .get(1)
        .map_or("127.0.0.1:8443", String::as_str)
        .parse()?;
    let tls = match args.get(2).map(String::as_str) {
        Some("http") => TlsMode::Http,
        None | Some("self-signed") => TlsMode::SelfSigned {
            extra_sans: args.get(3..).unwrap_or_default().to_vec(),
        },
        Some(cert) => TlsMode::Files {
            cert: cert.into(),
            key: args.get(3).ok_or("missing KEY")?.into(),
        },
    };
    serve(ServeOptions {
        root,
        listen,
        tls,
        index: None,
        writes: Default::default(),
        read_users: None,
    })?;
    Ok(())
}
