//! `GET`/`HEAD /direct/<alias>`: the direct-URL import protocol of LXD (`LXD-*` headers) and
//! Incus (`Incus-*` headers). The daemon sends the architectures it runs; we answer with the
//! sha256 and the URL of a unified tarball of the newest matching image, building it from the
//! split files on first use ([`crate::direct`]). The URL is an ordinary file of the tree, so
//! the download gets Range, ETag and the access log like any other.

use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::reindex::{Reindexer, Trigger};
use super::request_path::RequestPath;
use crate::catalog::inventory::CatalogCache;
use crate::direct::{self, DirectError};
use crate::format::Family;

/// The path prefix of direct requests.
pub(crate) const PREFIX: &str = "/direct/";

/// What direct requests share.
pub(crate) struct Direct {
    /// Canonical root.
    root: Arc<PathBuf>,
    /// Whether clients reach us over TLS (else `X-Forwarded-Proto` decides).
    https: bool,
    /// Set when the server owns its catalog: built tarballs may then be published.
    reindexer: Option<Reindexer>,
    /// One build at a time: a build is CPU- and disk-bound, and two requests for the same
    /// image must not build it twice.
    build: tokio::sync::Mutex<()>,
    /// The catalog, parsed once per version of it rather than on every request.
    catalog: Arc<CatalogCache>,
}

impl Direct {
    pub(crate) fn new(root: Arc<PathBuf>, https: bool, reindexer: Option<Reindexer>) -> Self {
        Self {
            root,
            https,
            reindexer,
            build: tokio::sync::Mutex::new(()),
            catalog: Arc::default(),
        }
    }

    /// Answers a `GET` or `HEAD` under [`PREFIX`].
    pub(crate) async fn answer(
        self: Arc<Self>,
        req: Request,
        visible: Option<crate::access::Visibility>,
    ) -> Response {
        let Some(alias) = RequestPath::parse(req.uri().path())
            .map(|p| p.to_relative_string())
            .and_then(|p| p.strip_prefix("direct/").map(str::to_owned))
        else {
            return text(StatusCode::NOT_FOUND, "not found\n".into());
        };
        let headers = req.headers();
        let mut flavours = Vec::new();
        let mut archs: Vec<String> = Vec::new();
        for flavour in [Family::Incus, Family::Lxd] {
            let name = format!("{}-Server-Architectures", flavour.product_name());
            if let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) {
                flavours.push(flavour);
                for arch in value.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                    if !archs.iter().any(|a| a == arch) {
                        archs.push(arch.to_owned());
                    }
                }
            }
        }
        if flavours.is_empty() || archs.is_empty() {
            return text(
                StatusCode::BAD_REQUEST,
                "direct-URL import: send the architectures this daemon runs in the \
                 LXD-Server-Architectures or Incus-Server-Architectures header (as \
                 `lxc image import https://…/direct/<alias>` and `incus image import` do), \
                 e.g. `x86_64, i686`\n"
                    .into(),
            );
        }
        let base = match base_url(headers, req.uri(), self.https) {
            Some(base) => base,
            None => {
                return text(
                    StatusCode::BAD_REQUEST,
                    "direct-URL import: the request names no host (Host header)\n".into(),
                );
            }
        };
        let result = self.resolve(alias.clone(), archs, visible).await;
        let (choice, unified) = match result {
            Ok(found) => found,
            Err(e) => {
                return match &e {
                    DirectError::UnknownAlias { .. }
                    | DirectError::NoArchitecture { .. }
                    | DirectError::NotLocal { .. } => text(StatusCode::NOT_FOUND, format!("{e}\n")),
                    _ => {
                        // The details name server paths: they go to the log, not the client.
                        tracing::error!("direct request for `{alias}`: {e}");
                        text(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            format!(
                                "direct-URL import of `{alias}`: the server could not prepare the image; its log says why\n"
                            ),
                        )
                    }
                };
            }
        };
        let url = format!("{base}/{}", encode_path(&unified.path));
        let mut response = text(
            StatusCode::OK,
            format!(
                "{} {} ({}): {url}\nsha256 {}\n",
                choice.product, choice.version, choice.arch, unified.sha256
            ),
        );
        let out = response.headers_mut();
        for flavour in flavours {
            for (what, value) in [("Hash", &unified.sha256), ("URL", &url)] {
                let name = format!("{}-Image-{what}", flavour.product_name());
                if let (Ok(name), Ok(value)) =
                    (HeaderName::try_from(name), HeaderValue::from_str(value))
                {
                    out.insert(name, value);
                }
            }
        }
        response
    }

    /// Picks the image and makes sure its unified tarball exists (building it if needed), on
    /// blocking threads; publishes a newly built one when the server owns its catalog.
    async fn resolve(
        &self,
        alias: String,
        archs: Vec<String>,
        visible: Option<crate::access::Visibility>,
    ) -> Result<(direct::Choice, direct::Unified), DirectError> {
        let root = Arc::clone(&self.root);
        let catalog = Arc::clone(&self.catalog);
        let (choice, hit) = blocking(move || {
            let all = catalog.products(&root)?;
            // A reader of a private catalog chooses among its own products only: the others'
            // aliases and architectures do not exist for it.
            let choice = match &visible {
                None => direct::choose(&all, &alias, &archs)?,
                Some(v) => {
                    let mut mine = (*all).clone();
                    mine.products.retain(|id, _| v.sees(id));
                    direct::choose(&mine, &alias, &archs)?
                }
            };
            let hit = match &choice.source {
                direct::Source::Split {
                    meta, fingerprint, ..
                } => direct::cached(&root, meta, fingerprint),
                direct::Source::Published { .. } => Some(direct::unified(&root, &choice)?),
            };
            Ok((choice, hit))
        })
        .await?;
        if let Some(hit) = hit {
            return Ok((choice, hit));
        }
        let _building = self.build.lock().await;
        let root = Arc::clone(&self.root);
        let publish = self.reindexer.is_some();
        let (choice, unified, published) = blocking(move || {
            // Built by the request we waited for, if it was the same image.
            let unified = direct::unified(&root, &choice)?;
            let published = if publish && unified.built {
                direct::publish(&root, &choice, &unified)?
            } else {
                None
            };
            Ok((choice, unified, published))
        })
        .await?;
        if let (Some(reindexer), Some((product_dir, known))) = (&self.reindexer, published) {
            // The run hashes that product alone; the watcher is told of the new file.
            let path = PathBuf::from(&product_dir)
                .join(&known.version)
                .join(&known.file);
            let reason = format!(
                "published the unified tarball of {} {}",
                choice.product, choice.version
            );
            reindexer.request_written(
                &self.root,
                Trigger {
                    known: vec![(product_dir, known)],
                    ..Trigger::touching(reason, vec![path])
                },
            );
        }
        Ok((choice, unified))
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DirectError> + Send + 'static,
) -> Result<T, DirectError> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| {
        Err(DirectError::Io {
            path: PathBuf::from("(direct request)"),
            source: std::io::Error::other(e.to_string()),
        })
    })
}

/// `scheme://host[:port]` as the client reached us: the TLS listener says https; behind a
/// proxy (plain HTTP) `X-Forwarded-Proto` and `X-Forwarded-Host` win over what we see.
fn base_url(headers: &HeaderMap, uri: &axum::http::Uri, https: bool) -> Option<String> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(',').next().unwrap_or(v).trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let scheme = if https {
        "https".to_owned()
    } else {
        get("x-forwarded-proto")
            .filter(|p| p == "https" || p == "http")
            .unwrap_or_else(|| "http".into())
    };
    let host = (!https)
        .then(|| get("x-forwarded-host"))
        .flatten()
        .or_else(|| get(header::HOST.as_str()))
        .or_else(|| uri.authority().map(|a| a.to_string()))?;
    // A host with anything but name, address and port characters is not echoed back.
    host.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c))
        .then(|| format!("{scheme}://{host}"))
}

/// Percent-encodes each segment of a tree path for a URL (`:` in version names stays).
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:@!$&'()*+,;=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            encode_path("images/a b/20251123_12:13/x.tar.gz"),
            "images/a%20b/20251123_12:13/x.tar.gz"
        );
        let uri: axum::http::Uri = "/direct/x".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8443"));
        assert_eq!(
            base_url(&h, &uri, true).as_deref(),
            Some("https://127.0.0.1:8443")
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("images.example.org"),
        );
        assert_eq!(
            base_url(&h, &uri, false).as_deref(),
            Some("https://images.example.org")
        );
        h.insert(header::HOST, HeaderValue::from_static("evil\"host"));
        assert_eq!(base_url(&h, &uri, true), None);
    }
}
