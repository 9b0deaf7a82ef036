//! What write requests share: the policy (auth, overwrites, deletes, size limit), where writes
//! may go, the re-index task they notify, and the turn imports take.

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::HeaderMap;

use super::target::WriteScope;
use crate::server::auth::WriteAuth;
use crate::server::error::RequestError;
use crate::server::reindex::Reindexer;

/// The write settings of [`crate::server::ServeOptions`].
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// Bearer token writes must carry.
    pub token: Option<String>,
    /// Without a token, let anyone write (must be asked for explicitly).
    pub allow_anonymous: bool,
    /// An upload replaces an existing file (else it is stored under a changed name).
    pub allow_overwrites: bool,
    /// `DELETE` of files and version folders.
    pub allow_deletes: bool,
    /// Largest accepted upload, in bytes.
    pub max_upload_size: u64,
}

/// Default upload limit: 10 GiB, as the proxies in front usually allow.
pub const DEFAULT_MAX_UPLOAD_SIZE: u64 = 10 << 30;

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            token: None,
            allow_anonymous: false,
            allow_overwrites: false,
            allow_deletes: false,
            max_upload_size: DEFAULT_MAX_UPLOAD_SIZE,
        }
    }
}

/// Shared by the upload, import and delete handlers.
pub(crate) struct Writes {
    /// Canonical root.
    pub root: Arc<PathBuf>,
    pub auth: WriteAuth,
    pub allow_overwrites: bool,
    pub allow_deletes: bool,
    pub max_upload_size: u64,
    pub scope: WriteScope,
    pub reindexer: Reindexer,
    /// Where the hash caches are kept (an import records the digests it computed).
    pub hash_cache: crate::hash::CacheDir,
    /// Taken by each import for its whole run: imports go one at a time.
    pub import_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Writes {
    pub(crate) fn new(
        root: Arc<PathBuf>,
        opts: &WriteOptions,
        scope: WriteScope,
        reindexer: Reindexer,
        hash_cache: crate::hash::CacheDir,
    ) -> Self {
        Self {
            root,
            auth: WriteAuth::new(opts.token.as_deref(), opts.allow_anonymous),
            allow_overwrites: opts.allow_overwrites,
            allow_deletes: opts.allow_deletes,
            max_upload_size: opts.max_upload_size,
            scope,
            reindexer,
            hash_cache,
            import_lock: Arc::default(),
        }
    }

    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(), RequestError> {
        self.auth.check(headers)
    }
}

/// A JSON response (axum's `Json` needs a feature we do not otherwise use).
pub(crate) fn json_response(
    status: axum::http::StatusCode,
    body: &impl serde::Serialize,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let mut text = serde_json::to_string(body).unwrap_or_default();
    text.push('\n');
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        text,
    )
        .into_response()
}
