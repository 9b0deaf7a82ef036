//! Serving a simplestreams tree over HTTPS (or plain HTTP behind a proxy) to LXD and Incus.
//!
//! This module owns the process-level part: options, the tokio runtime, binding, TLS setup,
//! signals and graceful shutdown, and the start-up messages telling users how to trust the
//! certificate. The router lives in `files`, certificates in `tls`, the read path guard in
//! `request_path`, the direct-URL import (`/direct/<alias>`) in `direct`. With
//! [`ServeOptions::index`] the server also owns its catalog: `reindex`
//! keeps it current (start-up scan, watcher, after every write), and uploads (`upload`),
//! imports and deletes (`write`: policy, target paths, upload, import, delete) and auth (`auth`)
//! are enabled.

mod access_log;
mod auth;
mod bucket;
mod catalog;
mod cork;
mod direct;
mod disk;
mod error;
mod files;
mod listen;
mod read;
mod records;
mod reindex;
mod request_path;
mod sendfile;
mod tls;
mod write;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub use bucket::{BucketServeOptions, serve_bucket};
pub use error::ServerError;
pub use reindex::IndexOptions;
pub use write::{DEFAULT_MAX_UPLOAD_SIZE, WriteOptions};

/// The `tracing` target of the access log (one line per request): the binary sends it through
/// a non-blocking writer.
pub const ACCESS_LOG: &str = "simplestreams_builder::server::access";

/// What to serve, where, and how.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The tree to serve (contains `streams/v1/index.json`, `images/...`).
    pub root: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    pub tls: TlsMode,
    /// Keep the catalog current and accept writes; `None` serves the tree read-only as it is.
    pub index: Option<IndexOptions>,
    /// Who may write and what writes may do (used only with `index`).
    pub writes: WriteOptions,
    /// The users file of a private server (`--read-users`): every read is authenticated, and
    /// each user sees the products it may.
    pub read_users: Option<PathBuf>,
}

/// Where the server's certificate comes from, if any.
#[derive(Debug, Clone)]
pub enum TlsMode {
    /// Plain HTTP, for use behind a TLS-terminating proxy.
    Http,
    /// PEM files given by the user.
    Files { cert: PathBuf, key: PathBuf },
    /// Create (once) and reuse a self-signed certificate kept under `<root>/.ssb/tls/`
    /// (`cert.pem`, `key.pem`). `extra_sans` are added after `localhost` and the host name;
    /// an entry that parses as an IP address becomes an IP SAN.
    SelfSigned { extra_sans: Vec<String> },
}

/// Stops a server started with [`serve_with_handle`], from any thread.
#[derive(Clone, Debug, Default)]
pub struct ServerHandle {
    stop: listen::Stop,
}

impl ServerHandle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stops accepting connections and lets requests in flight finish (for a while), like
    /// SIGTERM does for [`serve`]. Calling it before the server has started is fine: the
    /// server then stops as soon as it is up.
    pub fn shutdown(&self) {
        self.stop.stop();
    }
}

/// Serves `opts.root` until SIGINT or SIGTERM, then shuts down gracefully.
///
/// Blocking: builds its own tokio runtime. Logs `listening on http(s)://ADDR` once the socket
/// is bound, and for TLS how to trust the certificate.
pub fn serve(opts: ServeOptions) -> Result<(), ServerError> {
    run(opts, ServerHandle::new(), |_| {}, true)
}

/// Like [`serve`], but stopped through `handle` instead of signals, and calling `ready` with
/// the bound address (port 0 resolved) once connections are accepted. For embedding the
/// server, e.g. in tests.
pub fn serve_with_handle(
    opts: ServeOptions,
    handle: ServerHandle,
    ready: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    run(opts, handle, ready, false)
}

fn run(
    opts: ServeOptions,
    handle: ServerHandle,
    ready: impl FnOnce(SocketAddr),
    on_signals: bool,
) -> Result<(), ServerError> {
    let root = canonical_root(&opts.root)?;
    let read = match &opts.read_users {
        Some(path) => {
            let access = read::ReadAccess::load(path.clone())?;
            tracing::info!(
                "private catalog: reads need a login from {}",
                path.display()
            );
            Some(std::sync::Arc::new(access))
        }
        None => None,
    };
    let cert = match &opts.tls {
        TlsMode::Http => None,
        TlsMode::Files { cert, key } => Some(tls::load_files(cert, key)?),
        TlsMode::SelfSigned { extra_sans } => Some(tls::self_signed(&root, extra_sans)?),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    runtime.block_on(async move {
        // Bound here rather than in the accept loop so that the error names the address and the
        // "listening on" line can be printed before anything else happens.
        let (listener, addr) = bind(opts.listen)?;
        let served = std::sync::Arc::new(catalog::ServedCatalog::load(&root));
        std::sync::Arc::clone(&served).watch();
        let (writes, _indexing) = match &opts.index {
            Some(index) => {
                let scope = write_scope(&root, index)?;
                write::import::clear_staging(&root);
                // Temp files a crash or a kill left (uploads, atomic writes): ours, and no
                // live writer holds them.
                let (removed, failed) = crate::tree::atomic::remove_stale_temp_files(&root);
                for stale in &removed {
                    tracing::info!(
                        "removed {} ({} bytes) left by an interrupted write",
                        stale.path.display(),
                        stale.size
                    );
                }
                for why in &failed {
                    tracing::warn!("cannot remove a temp file left by an interrupted write: {why}");
                }
                let (reindexer, running) =
                    reindex::start(root.clone(), index.clone(), std::sync::Arc::clone(&served));
                log_write_policy(&opts.writes, &scope);
                let writes = write::Writes::new(
                    std::sync::Arc::new(root.clone()),
                    &opts.writes,
                    scope,
                    reindexer,
                    index.hash_cache.clone(),
                );
                (Some(std::sync::Arc::new(writes)), Some(running))
            }
            None => (None, None),
        };
        let fingerprint = cert.as_ref().map(|c| c.fingerprint.colon_hex());
        let app = files::router(root.clone(), served, writes, fingerprint, read);
        listen_and_serve(listener, addr, cert, app, handle, ready, on_signals).await
    })?;
    tracing::info!("server stopped");
    Ok(())
}

/// Binds `listen` (port 0: a free port), and tells the address bound.
fn bind(listen: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), ServerError> {
    let fail = |source| ServerError::Bind {
        addr: listen,
        source,
    };
    let listener = std::net::TcpListener::bind(listen).map_err(fail)?;
    let addr = listener.local_addr().map_err(fail)?;
    Ok((listener, addr))
}

/// Serves `app` on `listener` (plain, or TLS with `cert`) until `handle` stops it (or a signal,
/// with `on_signals`), calling `ready` once connections are accepted.
async fn listen_and_serve(
    listener: std::net::TcpListener,
    addr: SocketAddr,
    cert: Option<tls::ServerCert>,
    app: axum::Router,
    handle: ServerHandle,
    ready: impl FnOnce(SocketAddr),
    on_signals: bool,
) -> Result<(), ServerError> {
    if on_signals {
        tokio::spawn(shutdown_on_signal(handle.clone()));
    }
    let tls = match &cert {
        None => {
            tracing::info!("listening on http://{addr}");
            None
        }
        Some(cert) => {
            tracing::info!("listening on https://{addr}");
            log_trust_instructions(cert, addr);
            Some(std::sync::Arc::clone(&cert.config))
        }
    };
    ready(addr);
    listen::serve(listener, tls, app, handle.stop, listen::Limits::default())
        .await
        .map_err(|source| ServerError::Serve { addr, source })
}

/// Top-level names the server answers itself (direct-URL import, `POST /import`).
const RESERVED_TOP_LEVEL: [&str; 2] = ["direct", "import"];

/// Where writes may go: the layout under images/, or the local products of the tree.yml.
fn write_scope(root: &Path, index: &IndexOptions) -> Result<write::WriteScope, ServerError> {
    let Some(config) = &index.config else {
        return Ok(write::WriteScope::Layout);
    };
    let tree = crate::catalog::products::Tree::load(Some(config), root, &index.overrides)
        .map_err(ServerError::Products)?;
    for product in &tree.config.products {
        let top = product
            .directory
            .trim_matches('/')
            .split('/')
            .next()
            .unwrap_or("");
        if RESERVED_TOP_LEVEL.contains(&top) {
            tracing::warn!(
                "product `{}`: its directory `{}` starts with `{top}/`, which the server reserves (/{top}/…): clients cannot reach its files; move it to another directory",
                product.name,
                product.directory
            );
        }
    }
    Ok(write::WriteScope::Declared(
        tree.config
            .products
            .iter()
            .filter(|p| p.prefix_path.is_none())
            .map(|p| (p.directory.trim_matches('/').to_owned(), p.arch.clone()))
            .collect(),
    ))
}

fn log_write_policy(opts: &WriteOptions, scope: &write::WriteScope) {
    let auth = match (&opts.token, opts.allow_anonymous) {
        (Some(_), _) => "writes need the bearer token",
        (None, true) => {
            "ANONYMOUS WRITES ARE ON (--allow-anonymous-writes): anyone who reaches this server can upload"
        }
        (None, false) => {
            "writes are refused: no write token (--write-token-file or SSB_WRITE_TOKEN); reads only"
        }
    };
    tracing::info!("{auth}");
    let into = match scope {
        write::WriteScope::Layout => {
            "images/<os>/<release>/<arch>/<variant>/<YYYYMMDD_HH:MM>/".to_owned()
        }
        write::WriteScope::Declared(dirs) => {
            let dirs: Vec<&str> = dirs.iter().map(|(d, _)| d.as_str()).collect();
            format!("the product folders of tree.yml ({})", dirs.join(", "))
        }
    };
    tracing::info!(
        "uploads go into {into}; overwrites {}, deletes {}, max upload {} bytes",
        if opts.allow_overwrites {
            "on"
        } else {
            "off (a changed name is used)"
        },
        if opts.allow_deletes { "on" } else { "off" },
        opts.max_upload_size
    );
}

fn canonical_root(root: &Path) -> Result<PathBuf, ServerError> {
    let root_error = |source| ServerError::Root {
        path: root.to_owned(),
        source,
    };
    let canonical = std::fs::canonicalize(root).map_err(root_error)?;
    if !canonical.is_dir() {
        return Err(root_error(std::io::Error::from(
            std::io::ErrorKind::NotADirectory,
        )));
    }
    Ok(canonical)
}

async fn shutdown_on_signal(handle: ServerHandle) {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!("cannot watch for SIGTERM ({e}); only SIGINT stops the server");
            let _ = ctrl_c.await;
            handle.shutdown();
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
    }
    handle.shutdown();
}

/// Tells the user, on stderr, what to run so that `incus` or `lxc` trusts this server:
/// both clients only accept a self-signed certificate pinned in `servercerts/<remote>.crt`.
fn log_trust_instructions(cert: &tls::ServerCert, addr: SocketAddr) {
    let cert_path = std::path::absolute(&cert.cert_path).unwrap_or_else(|_| cert.cert_path.clone());
    let cert_path = cert_path.display();
    let url = format!("https://{}:{}", url_host(addr.ip()), addr.port());
    tracing::info!("certificate {cert_path}");
    tracing::info!(
        "certificate SHA-256 fingerprint {}",
        cert.fingerprint.colon_hex()
    );
    tracing::info!(
        "certificate SHA-256 fingerprint (hex) {}",
        cert.fingerprint.plain_hex()
    );
    tracing::info!("to add this server as remote \"myimages\" (any name works), run:");
    for (config_dir, cli) in [("~/.config/incus", "incus"), ("~/.config/lxc", "lxc")] {
        tracing::info!(
            "  mkdir -p {config_dir}/servercerts && cp {cert_path} {config_dir}/servercerts/myimages.crt && {cli} remote add myimages {url} --protocol simplestreams"
        );
    }
    tracing::info!("  (LXD from the snap reads ~/snap/lxd/common/config instead of ~/.config/lxc)");
}

/// The host to put in the remote URL: the address itself, or the machine's name when
/// listening on all interfaces. Any host works for a pinned certificate, since clients check
/// it against the first DNS SAN rather than the URL.
fn url_host(ip: IpAddr) -> String {
    if ip.is_unspecified() {
        tls::host_name().unwrap_or_else(|| "localhost".into())
    } else if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// The `Content-Length` a request or an answer declares, when it is a number.
fn content_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
