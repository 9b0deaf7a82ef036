//! `serve -t s3://…`: a tree in a bucket, served read-only. The catalog is answered from memory
//! (read from the bucket at start and again whenever `index.json` changes there); image files
//! are streamed from the bucket with their Range, or with `--redirect` answered by a redirect
//! to a presigned URL, which LXD and Incus follow. Only files the catalog names are served.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt as _;

use super::catalog::CatalogFile;
use super::request_path::RequestPath;
use super::{ServerError, ServerHandle, TlsMode, listen_and_serve, tls};
use crate::bucket::Bucket;
use crate::bucket::catalog::published;
use crate::format::ProductsFile;

/// How often the bucket's index is read for a publish by someone else.
pub const POLL: Duration = Duration::from_secs(2);

/// How long a presigned URL handed out by `--redirect` stays valid.
pub const PRESIGNED_TTL: Duration = Duration::from_secs(3600);

/// What to serve, where, and how.
#[derive(Debug, Clone)]
pub struct BucketServeOptions {
    pub bucket: Bucket,
    pub listen: SocketAddr,
    pub tls: TlsMode,
    /// Redirect image requests to presigned URLs instead of streaming them.
    pub redirect: bool,
    /// Where a self-signed certificate is kept.
    pub state_dir: PathBuf,
}

/// One catalog state.
#[derive(Default)]
struct Snapshot {
    /// The index's bytes, to notice a change.
    index: bytes::Bytes,
    /// Catalog files by path relative to the tree.
    files: HashMap<String, Arc<CatalogFile>>,
    /// Item path → (size, sha256).
    items: HashMap<String, (u64, String)>,
    products: Arc<ProductsFile>,
}

#[derive(Clone)]
struct App {
    bucket: Bucket,
    redirect: bool,
    snapshot: Arc<RwLock<Arc<Snapshot>>>,
    /// Served over TLS with this certificate (`AB:CD:…`), shown on the page.
    tls_fingerprint: Option<Arc<str>>,
}

impl App {
    fn current(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshot.read().expect("no panics holding the lock"))
    }

    /// Reads the index and, when it changed, the products file it names.
    async fn refresh(&self) -> Result<(), crate::bucket::catalog::BucketPublishError> {
        let Some((bytes, _)) = self.bucket.get(&crate::tree::names::index_rel()).await? else {
            return Ok(());
        };
        if bytes == self.current().index {
            return Ok(());
        }
        // The index served is the one read with its products file, not the one just compared:
        // a publish in between would have it name a file this snapshot lacks.
        let Some(crate::bucket::catalog::Published {
            index_bytes,
            products: products_bytes,
            path,
            ..
        }) = published(&self.bucket).await?
        else {
            return Ok(());
        };
        let products: ProductsFile = serde_json::from_slice(&products_bytes).map_err(|e| {
            crate::bucket::catalog::BucketPublishError::Index {
                url: self.bucket.url().to_string(),
                key: self.bucket.key(&path),
                reason: format!("the products file is not valid: {e}"),
            }
        })?;
        let snapshot = tokio::task::spawn_blocking(move || {
            let items = products
                .items()
                .map(|i| (i.path.clone(), (i.size, i.sha256.clone())))
                .collect();
            let files = HashMap::from([
                (
                    crate::tree::names::index_rel(),
                    Arc::new(CatalogFile::generated(index_bytes.to_vec())),
                ),
                (
                    path,
                    Arc::new(CatalogFile::generated(products_bytes.to_vec())),
                ),
            ]);
            Snapshot {
                index: index_bytes,
                files,
                items,
                products: Arc::new(products),
            }
        })
        .await
        .expect("building a snapshot does not panic");
        tracing::info!(
            "catalog of {}: {} product(s), {} file(s)",
            self.bucket.url(),
            snapshot.products.products.len(),
            snapshot.items.len()
        );
        *self.snapshot.write().expect("no panics holding the lock") = Arc::new(snapshot);
        Ok(())
    }
}

/// Serves the bucket until `handle` stops it (or SIGINT/SIGTERM with `on_signals`).
pub fn serve_bucket(
    opts: BucketServeOptions,
    handle: ServerHandle,
    ready: impl FnOnce(SocketAddr),
    on_signals: bool,
) -> Result<(), ServerError> {
    let cert = match &opts.tls {
        TlsMode::Http => None,
        TlsMode::Files { cert, key } => Some(tls::load_files(cert, key)?),
        TlsMode::SelfSigned { extra_sans } => {
            std::fs::create_dir_all(&opts.state_dir).map_err(|source| ServerError::Root {
                path: opts.state_dir.clone(),
                source,
            })?;
            Some(tls::self_signed(&opts.state_dir, extra_sans)?)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(ServerError::Runtime)?;
    runtime.block_on(async move {
        let app = App {
            bucket: opts.bucket.clone(),
            redirect: opts.redirect,
            snapshot: Arc::default(),
            tls_fingerprint: cert.as_ref().map(|c| Arc::from(c.fingerprint.colon_hex())),
        };
        // A bucket that cannot be read stops the start: better than serving nothing.
        app.refresh()
            .await
            .map_err(|e| ServerError::Bucket(Box::new(e)))?;
        if app.current().files.is_empty() {
            tracing::warn!(
                "{} has no catalog yet ({} is missing); it is picked up when one is published",
                opts.bucket.url(),
                opts.bucket.key(&crate::tree::names::index_rel())
            );
        }
        let watcher = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = watcher.refresh().await {
                    tracing::warn!(
                        "cannot refresh the catalog (still serving the last one): {}",
                        crate::error_chain(&e)
                    );
                }
            }
        });
        if opts.redirect {
            tracing::info!(
                "image files are redirected to presigned URLs of {} (valid {} s)",
                opts.bucket.url(),
                PRESIGNED_TTL.as_secs()
            );
        }
        let (listener, addr) = super::bind(opts.listen)?;
        let router = Router::new()
            .fallback(dispatch)
            .with_state(app)
            .layer(axum::middleware::from_fn(super::access_log::access_log));
        listen_and_serve(listener, addr, cert, router, handle, ready, on_signals).await
    })?;
    tracing::info!("server stopped");
    Ok(())
}

async fn dispatch(State(app): State<App>, req: Request) -> Response {
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
            "this server serves a bucket read-only\n",
        )
            .into_response();
    }
    let Some(path) = RequestPath::parse(req.uri().path()) else {
        return super::files::not_found();
    };
    let snapshot = app.current();
    if path.is_root() {
        let authority = req.uri().authority().map(|a| a.as_str().to_owned());
        return root(&app, &snapshot, req.headers(), authority.as_deref()).await;
    }
    let relative = path.to_relative_string();
    if let Some(file) = snapshot.files.get(&relative) {
        let mut response = file.answer(&method, req.headers());
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        return response;
    }
    let Some((size, sha256)) = snapshot.items.get(&relative).cloned() else {
        return super::files::not_found();
    };
    image(&app, &relative, size, &sha256, &method, req.headers()).await
}

/// An image file: a redirect, or its bytes (a Range of them) from the bucket. Its ETag is its
/// sha256, which never changes under its name.
async fn image(
    app: &App,
    rel: &str,
    size: u64,
    sha256: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{sha256}\"")).expect("hex is a valid header");
    let content_type = rel
        .rsplit('/')
        .next()
        .and_then(crate::tree::names::content_type)
        .unwrap_or("application/octet-stream");
    if headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes() || v.as_bytes() == b"*")
    {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    // HEAD is answered here, from the catalog: a URL presigned for GET is refused for HEAD.
    if app.redirect && *method != Method::HEAD {
        return match app.bucket.presign(rel, PRESIGNED_TTL).await {
            Ok(url) => (
                StatusCode::FOUND,
                [
                    (header::LOCATION, url),
                    (header::CACHE_CONTROL, "no-store".to_owned()),
                ],
            )
                .into_response(),
            Err(e) => bad_gateway(&e),
        };
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(text) => match http_range_header::parse_range_header(text)
            .ok()
            .and_then(|r| r.validate(size).ok())
        {
            Some(ranges) if ranges.len() == 1 => {
                let r = &ranges[0];
                Some(*r.start()..*r.end() + 1)
            }
            _ => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                )
                    .into_response();
            }
        },
    };
    let (status, length) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.end - r.start),
        None => (StatusCode::OK, size),
    };
    let mut response = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag)
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable");
    if let Some(r) = &range {
        response = response.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", r.start, r.end - 1),
        );
    }
    if method == Method::HEAD {
        return response
            .body(Body::empty())
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let got = match app.bucket.get_stream(rel, range).await {
        Ok(Some(got)) => got,
        Ok(None) => {
            tracing::warn!(
                "{}: {} is in the catalog but not in the bucket",
                app.bucket.url(),
                app.bucket.key(rel)
            );
            return super::files::not_found();
        }
        Err(e) => return bad_gateway(&e),
    };
    if got.size != size {
        // The head already promised the catalog's length: never send other bytes under it.
        tracing::warn!(
            "{}: {} is {} bytes, the catalog says {size}: not served",
            app.bucket.url(),
            app.bucket.key(rel),
            got.size
        );
        return (
            StatusCode::BAD_GATEWAY,
            "the bucket holds another file than the catalog names\n",
        )
            .into_response();
    }
    let body = Body::from_stream(got.body.map_err(std::io::Error::other));
    response
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `/`: the page for a browser (the one a local tree's server renders), a note otherwise.
async fn root(
    app: &App,
    snapshot: &Snapshot,
    headers: &HeaderMap,
    authority: Option<&str>,
) -> Response {
    if !super::files::wants_html(headers) {
        return super::files::root_note();
    }
    let products = Arc::clone(&snapshot.products);
    // LXC's index is not published into a bucket.
    super::files::render_page(headers, authority, app.tls_fingerprint.clone(), move || {
        (products, false)
    })
    .await
}

fn bad_gateway(e: &crate::bucket::BucketError) -> Response {
    tracing::warn!("{}", crate::error_chain(e));
    (
        StatusCode::BAD_GATEWAY,
        "the bucket behind this server did not answer; try again\n",
    )
        .into_response()
}
