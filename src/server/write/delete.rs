//! `DELETE /<path>` (with ALLOW_DELETES): one file of a version folder, a whole version folder,
//! or a product's metadata.json; never anything else (see `write_path`). The catalog follows
//! through a re-index.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;

use super::policy::Writes;
use super::target;
use crate::server::error::RequestError;
use crate::server::reindex::Trigger;
use crate::server::request_path::RequestPath;

pub(crate) async fn delete(writes: Arc<Writes>, req: Request) -> Result<Response, RequestError> {
    // Auth and ALLOW_DELETES are checked by the router before this runs.
    let raw = req.uri().path().to_owned();
    let bad = |path: &str, reason: String| RequestError::BadPath {
        path: path.to_owned(),
        reason,
    };
    let rel = RequestPath::parse(&raw)
        .ok_or_else(|| bad(&raw, "not a plain path".into()))?
        .to_relative_string();
    let target = target::delete_target(&rel, &writes.scope).map_err(|r| bad(&rel, r))?;
    let root = Arc::clone(&writes.root);
    let relative = target.relative();
    let removed_path = relative.clone();
    let shown = relative.display().to_string();
    let job_shown = shown.clone();
    let removed = tokio::task::spawn_blocking(move || {
        target::check_on_disk(&root, &relative).map_err(|r| bad(&job_shown, r))?;
        let path = root.join(&relative);
        let io = |source| RequestError::Io {
            path: job_shown.clone(),
            source,
        };
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(RequestError::NotFound { path: job_shown });
            }
            Err(e) => return Err(io(e)),
        };
        if meta.is_dir() {
            if target.file_name().is_some() {
                return Err(RequestError::IsAFolder { path: job_shown });
            }
            std::fs::remove_dir_all(&path).map_err(io)?;
            Ok("version")
        } else {
            std::fs::remove_file(&path).map_err(io)?;
            Ok("file")
        }
    })
    .await
    .map_err(|e| RequestError::Io {
        path: shown.clone(),
        source: std::io::Error::other(e.to_string()),
    })??;
    tracing::info!("deleted {removed} {shown}");
    // Only the product it was in changed: the run hashes that one alone.
    writes.reindexer.request_removed(
        &writes.root,
        Trigger::touching(format!("deleted {shown}"), vec![removed_path]),
    );
    let body = serde_json::json!({ "deleted": shown, "kind": removed });
    Ok(super::policy::json_response(StatusCode::OK, &body))
}
