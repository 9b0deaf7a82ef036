//! The HTTP side of the server: the router over a simplestreams tree. Reads are served here;
//! writes (POST, PUT, DELETE) go to `upload`, `import` (`POST /import`, a reserved path) and
//! `delete` when the server owns its catalog.
//!
//! The catalog (`index.json` and the products files it names) is answered from memory
//! (`catalog`). For everything else `ServeDir` does the heavy lifting (Range, ETag/Last-Modified,
//! conditional requests, precompressed `.json.gz`). Around it we add what a catalog server
//! needs: the path guard, a symlink check (skipped for the item paths the catalog lists,
//! checked at publish), explicit content types, `no-cache` on the catalog, and one access log
//! line per request.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;
use tower_http::services::ServeDir;
use tower_http::services::fs::DefaultServeDirFallback;

use super::catalog::ServedCatalog;
use super::direct::{self, Direct};
use super::disk::{DiskBackend, Opened};
use super::error::RequestError;
use super::request_path::{RequestPath, is_served_segment};
use super::sendfile::FileSender;
use super::write::Writes;

/// Bytes per read of an image file being sent over TLS, over HTTP/2, or in ranges (a whole
/// file over plain HTTP/1.1 goes out with `sendfile`, [`super::sendfile`]). Reads of cached
/// pages cost no thread hop (`disk`), so small reads are cheap, and what a connection holds is
/// counted in them: 64 KiB reads under a 256 KiB write queue gave the fastest single download
/// and the least memory for 100 parallel ones of the sizes measured (64, 128, 256 KiB).
const IMAGE_CHUNK: usize = 64 << 10;

/// What every request handler shares.
#[derive(Clone)]
struct Files {
    /// Canonical root; symlink targets must stay inside it.
    root: Arc<PathBuf>,
    /// The catalog, answered from memory; its item paths need no path check.
    served: Arc<ServedCatalog>,
    /// Served over TLS, with this certificate fingerprint (`AB:CD:…`); `None`: plain HTTP.
    tls_fingerprint: Option<Arc<str>>,
    /// For `streams/**.json`: answers `Accept-Encoding: gzip` with the `.json.gz` sibling.
    catalog: ServeDir<DefaultServeDirFallback, DiskBackend>,
    /// For everything else, images included: never any `Content-Encoding`.
    images: ServeDir<DefaultServeDirFallback, DiskBackend>,
}

/// Files under `root` read through `backend`: no index.html and no listings (a directory is a
/// 404 like anything else not served).
fn serve_dir(root: &Path, backend: DiskBackend) -> ServeDir<DefaultServeDirFallback, DiskBackend> {
    ServeDir::with_backend(root, backend)
        .append_index_html_on_directories(false)
        .redirect_to_trailing_slash(false)
}

/// What the router shares: files to read and, when writes are on, the write state.
#[derive(Clone)]
struct App {
    files: Files,
    writes: Option<Arc<Writes>>,
    direct: Arc<Direct>,
    /// A private server's readers.
    read: Option<Arc<super::read::ReadAccess>>,
}

/// Builds the router for the tree at `root`, which must already be canonical. Without
/// `writes` the server is read-only (GET and HEAD). `https` says how clients reach us, for the
/// URLs the direct-URL import hands out.
pub(crate) fn router(
    root: PathBuf,
    served: Arc<ServedCatalog>,
    writes: Option<Arc<Writes>>,
    tls_fingerprint: Option<String>,
    read: Option<Arc<super::read::ReadAccess>>,
) -> Router {
    let https = tls_fingerprint.is_some();
    let serve_dir = serve_dir(&root, DiskBackend::default());
    let root = Arc::new(root);
    let direct = Arc::new(Direct::new(
        Arc::clone(&root),
        https,
        writes.as_ref().map(|w| w.reindexer.clone()),
    ));
    let files = Files {
        root,
        served,
        tls_fingerprint: tls_fingerprint.map(Arc::from),
        catalog: serve_dir.clone().precompressed_gzip(),
        images: serve_dir.with_buf_chunk_size(IMAGE_CHUNK),
    };
    Router::new()
        .fallback(dispatch)
        .with_state(App {
            files,
            writes,
            direct,
            read,
        })
        // Uploads stream to disk and are capped by --max-upload-size, not axum's 2 MB default
        // (which would apply to multipart bodies).
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn(super::access_log::access_log))
}

async fn dispatch(State(app): State<App>, req: Request) -> Response {
    let method = req.method().clone();
    if method == Method::GET || method == Method::HEAD {
        let visible = match &app.read {
            None => None,
            Some(read) => {
                let peer = req
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|ConnectInfo(addr)| addr.ip());
                match read.check(req.headers(), peer) {
                    super::read::Decision::Deny(response) => return response,
                    super::read::Decision::Allow(v) if v.is_all() => None,
                    super::read::Decision::Allow(v) => Some(v),
                }
            }
        };
        if req.uri().path().starts_with(direct::PREFIX) {
            return app.direct.answer(req, visible).await;
        }
        return match visible {
            None => serve_file(app.files, req).await,
            Some(v) => serve_visible(app.files, req, v).await,
        };
    }
    let Some(writes) = app.writes else {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
        )
            .into_response();
    };
    let import = super::write::import::is_import_path(req.uri().path());
    let refused = match &method {
        &Method::PUT | &Method::DELETE if import => Some(RequestError::MethodNotAllowed {
            method: method.to_string(),
            allow: "POST",
        }),
        &Method::POST | &Method::PUT | &Method::DELETE => {
            writes.authorize(req.headers()).err().or_else(|| {
                (method == Method::DELETE && !writes.allow_deletes)
                    .then_some(RequestError::DeletesDisabled)
            })
        }
        other => Some(RequestError::MethodNotAllowed {
            method: other.to_string(),
            allow: "GET, HEAD, POST, PUT, DELETE",
        }),
    };
    if let Some(error) = refused {
        super::write::upload::drain_small(req.into_body()).await;
        return error.into_response();
    }
    let result = match method {
        Method::POST if import => super::write::import::post(writes, req).await,
        Method::POST => super::write::upload::post(writes, req).await,
        Method::PUT => super::write::upload::put(writes, req).await,
        _ => super::write::delete::delete(writes, req).await,
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn serve_file(files: Files, req: Request) -> Response {
    let Some(path) = RequestPath::parse(req.uri().path()) else {
        return not_found();
    };
    if path.is_root() {
        return if wants_html(req.headers()) {
            let authority = req.uri().authority().map(|a| a.as_str().to_owned());
            page(&files, req.headers(), authority.as_deref()).await
        } else {
            root_note()
        };
    }
    let relative = path.to_relative_string();
    if let Some(file) = files.served.file(&relative) {
        return file.answer(req.method(), req.headers());
    }
    // `ServeDir` must see the path the guard vetted (slashes collapsed), not the raw one.
    let mut req = req;
    if req.uri().path().contains("//") {
        let mut parts = req.uri().clone().into_parts();
        let collapsed = super::request_path::collapse_slashes(req.uri().path());
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{collapsed}?{q}"),
            None => collapsed,
        };
        match path_and_query.parse() {
            Ok(pq) => parts.path_and_query = Some(pq),
            Err(_) => return not_found(),
        }
        match axum::http::Uri::from_parts(parts) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return not_found(),
        }
    }
    let is_catalog = path.is_catalog_json();
    // A file the catalog lists was checked at publish: no blocking path resolution for it.
    if !files.served.lists_item(&relative)
        && !resolves_inside(&files.root, path.to_relative(), is_catalog).await
    {
        return not_found();
    }
    // A GET of a file over plain HTTP/1.1 is sent with sendfile: ServeDir answers (status,
    // headers, ranges, conditions) from the file it opens, and a whole-file answer's body is
    // swapped for that same file's stand-ins.
    let sending = req
        .extensions()
        .get::<FileSender>()
        .filter(|_| !is_catalog && req.method() == Method::GET)
        .map(|sender| (sender.clone(), Opened::default()));
    let dir = if is_catalog {
        files.catalog
    } else if let Some((_, opened)) = &sending {
        serve_dir(&files.root, DiskBackend::noting(opened.clone())).with_buf_chunk_size(IMAGE_CHUNK)
    } else {
        files.images
    };
    let mut response = match dir.oneshot(req).await {
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    };
    if let Some((sender, opened)) = sending
        && response.status() == StatusCode::OK
        && let Some(file) = opened.take()
        && file.len >= super::sendfile::MIN_LEN
        && super::content_length(response.headers()) == Some(file.len)
    {
        response = response.map(|_| Body::new(sender.body(file.file, 0, file.len)));
    }
    let status = response.status();
    let headers = response.headers_mut();
    if matches!(status, StatusCode::OK | StatusCode::PARTIAL_CONTENT)
        && let Some(content_type) = path.file_name().and_then(crate::tree::names::content_type)
    {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    if (is_catalog || path.file_name().is_some_and(changes_with_catalog))
        && status != StatusCode::NOT_FOUND
    {
        // The catalog is rewritten in place on every publish; caches must revalidate (cheap
        // thanks to ETag). Image paths are not immutable either, so they get nothing special.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    response
}

/// True unless the path, or for the catalog its `.gz` sibling, exists but resolves (through
/// symlinks) outside the root or onto a hidden name inside it. Missing files pass: `ServeDir`
/// answers those with its own 404.
async fn resolves_inside(root: &Arc<PathBuf>, relative: PathBuf, with_gz: bool) -> bool {
    let root = Arc::clone(root);
    let check = move || {
        let full = root.join(&relative);
        let mut candidates = vec![full.clone()];
        if with_gz {
            let mut gz = full.into_os_string();
            gz.push(".gz");
            candidates.push(gz.into());
        }
        candidates
            .iter()
            .all(|p| crate::tree::resolves_outside(&root, p, &is_served_segment).is_none())
    };
    // canonicalize is blocking file system work.
    tokio::task::spawn_blocking(check).await.unwrap_or(false)
}

/// Files rewritten by every publish besides the catalog JSON: the signed catalog, LXC's index
/// and its signature. Caches must revalidate them.
fn changes_with_catalog(file_name: &str) -> bool {
    file_name.ends_with(".sjson")
        || crate::tree::names::is_lxc_index_name(
            file_name
                .strip_suffix(crate::tree::names::SIGNATURE_SUFFIX)
                .unwrap_or(file_name),
        )
}

/// A read of a private catalog by someone who sees only some products: the catalog, LXC's
/// index and the page as filtered for them (from memory, never from disk), the files of the
/// products they see (and those files' signatures); anything else is a 404 that does not say
/// whether it exists.
async fn serve_visible(files: Files, req: Request, visible: crate::access::Visibility) -> Response {
    let Some(path) = RequestPath::parse(req.uri().path()) else {
        return not_found();
    };
    let filtered = {
        let served = Arc::clone(&files.served);
        let v = visible.clone();
        match tokio::task::spawn_blocking(move || served.filtered(&v)).await {
            Ok(f) => f,
            Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    };
    if path.is_root() {
        return if wants_html(req.headers()) {
            let authority = req.uri().authority().map(|a| a.as_str().to_owned());
            page_of(
                &files,
                req.headers(),
                authority.as_deref(),
                Some(Arc::clone(&filtered.products)),
            )
            .await
        } else {
            root_note()
        };
    }
    let relative = path.to_relative_string();
    if let Some(file) = filtered.file(&relative) {
        return file.answer(req.method(), req.headers());
    }
    if crate::tree::names::lxc_index_rels().contains(&relative) {
        return (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            filtered.lxc_index.clone(),
        )
            .into_response();
    }
    let item = relative
        .strip_suffix(crate::tree::names::SIGNATURE_SUFFIX)
        .unwrap_or(&relative);
    // The unified tarball the direct-URL import built sits in its version's folder.
    let product = match path.file_name().filter(|n| crate::direct::is_cache_name(n)) {
        Some(_) => relative
            .rsplit_once('/')
            .and_then(|(folder, _)| files.served.folder_product(folder)),
        None => files.served.item_product(item),
    };
    match product {
        Some(product) if visible.sees(&product) => serve_file(files, req).await,
        _ => not_found(),
    }
}

/// True for a browser: it asks for HTML by name. `curl` and the clients send `*/*` or nothing.
pub(super) fn wants_html(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// The catalog as a web page, with this server's address as the browser reached it.
async fn page(files: &Files, headers: &axum::http::HeaderMap, authority: Option<&str>) -> Response {
    page_of(files, headers, authority, None).await
}

/// The page of `products` (the whole catalog when `None`).
async fn page_of(
    files: &Files,
    headers: &axum::http::HeaderMap,
    authority: Option<&str>,
    products: Option<Arc<crate::format::ProductsFile>>,
) -> Response {
    let served = Arc::clone(&files.served);
    let root = Arc::clone(&files.root);
    render_page(
        headers,
        authority,
        files.tls_fingerprint.clone(),
        move || {
            let products = products.or_else(|| served.products()).unwrap_or_default();
            let lxc = std::fs::metadata(crate::tree::names::lxc_index_path(&root))
                .is_ok_and(|m| m.len() > 0);
            (products, lxc)
        },
    )
    .await
}

/// The catalog page for a request: with the address the browser used and the certificate's
/// fingerprint, gzipped when accepted. `catalog` gives the products and whether LXC's index is
/// published; it runs, with the rendering, off the async threads.
pub(super) async fn render_page(
    headers: &axum::http::HeaderMap,
    authority: Option<&str>,
    fingerprint: Option<Arc<str>>,
    catalog: impl FnOnce() -> (Arc<crate::format::ProductsFile>, bool) + Send + 'static,
) -> Response {
    // HTTP/1.1 sends Host; HTTP/2 the `:authority` of the URI.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| authority.map(str::to_owned))
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        });
    let forwarded_https = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let gzip = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("gzip"));
    let render = move || {
        let (products, lxc) = catalog();
        let scheme = if fingerprint.is_some() || forwarded_https {
            "https"
        } else {
            "http"
        };
        let server = host.map(|h| crate::catalog::page::ServerInfo {
            origin: format!("{scheme}://{h}"),
            fingerprint: fingerprint.as_deref().map(str::to_owned),
        });
        let html = crate::catalog::page::render(&products, server.as_ref(), lxc);
        if !gzip {
            return (html.into_bytes(), false);
        }
        // A page of 1,000 products is 0.8 MB of HTML and 0.09 MB gzipped.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = std::io::Write::write_all(&mut enc, html.as_bytes());
        match enc.finish() {
            Ok(gz) => (gz, true),
            Err(_) => (html.into_bytes(), false),
        }
    };
    // Parsing the catalog (once per publish), rendering and compressing are blocking work.
    match tokio::task::spawn_blocking(render).await {
        Ok((body, gzipped)) => {
            let mut response = (
                [
                    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-cache"),
                    (header::VARY, "Accept, Accept-Encoding"),
                ],
                body,
            )
                .into_response();
            if gzipped {
                response
                    .headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            response
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

pub(super) fn root_note() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::VARY, "Accept"),
        ],
        "This is a simplestreams image server for LXD and Incus.\n\
         Catalog index: /streams/v1/index.json\n",
    )
        .into_response()
}

pub(super) fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            crate::tree::names::content_type("index.json"),
            Some("application/json")
        );
        assert_eq!(
            crate::tree::names::content_type("incus.tar.xz"),
            Some("application/x-xz")
        );
        assert_eq!(
            crate::tree::names::content_type("images.json.gz"),
            Some("application/gzip")
        );
        assert_eq!(
            crate::tree::names::content_type("rootfs.squashfs"),
            Some("application/octet-stream")
        );
        assert_eq!(
            crate::tree::names::content_type("disk.qcow2"),
            Some("application/octet-stream")
        );
        assert_eq!(crate::tree::names::content_type("README"), None);
        assert_eq!(
            crate::tree::names::content_type("index-system"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            crate::tree::names::content_type("rootfs.tar.xz.asc"),
            Some("application/pgp-signature")
        );
        assert!(changes_with_catalog("index-system.asc"));
        assert!(changes_with_catalog("images.sjson"));
        assert!(!changes_with_catalog("meta.tar.xz.asc"));
        assert_eq!(crate::tree::names::content_type("notes.txt"), None);
    }

    #[test]
    fn plain_relative_paths() {
        // The rule is tree::resolves_outside, on canonical paths (which hold no `..`); the
        // server allows a cached unified tarball as the last name.
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path().canonicalize().unwrap();
        for file in ["images/a/20251123_12:13/x", ".ssb/tls/key.pem"] {
            std::fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
            std::fs::write(root.join(file), b"x").unwrap();
        }
        let served = |rel: &str| {
            crate::tree::resolves_outside(&root, &root.join(rel), &is_served_segment).is_none()
        };
        assert!(served("images/a/20251123_12:13/x"));
        assert!(!served(".ssb/tls/key.pem"));
        std::os::unix::fs::symlink("../../.ssb/tls/key.pem", root.join("images/a/link")).unwrap();
        assert!(!served("images/a/link"));
    }

    /// A whole-file GET that carries a connection's [`FileSender`] gets a body of stand-ins
    /// (one region queued per chunk); a range, a HEAD, a small file or a request without it,
    /// the bytes.
    #[tokio::test]
    async fn a_whole_file_get_over_plain_http1_is_handed_to_sendfile() {
        use http_body_util::BodyExt as _;
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path().canonicalize().unwrap();
        let file = "images/a/20251123_12:13/rootfs.squashfs";
        std::fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
        std::fs::write(root.join(file), vec![7u8; 300_001]).unwrap();
        let small = "images/a/20251123_12:13/incus.tar.xz";
        std::fs::write(root.join(small), vec![7u8; 1_000]).unwrap();
        let served = Arc::new(ServedCatalog::load(&root));
        let app = router(root, served, None, None, None);
        let cases: [(&str, &str, Option<&str>, bool, usize); 5] = [
            ("GET", file, None, true, 1),
            ("GET", file, Some("bytes=10-20"), true, 0),
            ("HEAD", file, None, true, 0),
            ("GET", file, None, false, 0),
            ("GET", small, None, true, 0),
        ];
        for (method, file, range, with_sender, queued) in cases {
            let sender = FileSender::default();
            let mut req = Request::builder().method(method).uri(format!("/{file}"));
            if let Some(range) = range {
                req = req.header(header::RANGE, range);
            }
            let mut req = req.body(Body::empty()).unwrap();
            if with_sender {
                req.extensions_mut().insert(sender.clone());
            }
            let response = app.clone().oneshot(req).await.unwrap();
            assert!(response.status().is_success(), "{method} {range:?}");
            let mut body = response.into_body();
            let first = body.frame().await;
            assert_eq!(first.is_some(), method == "GET", "{method} {range:?}");
            assert_eq!(sender.queued(), queued, "{method} {range:?} {with_sender}");
        }
    }
}
