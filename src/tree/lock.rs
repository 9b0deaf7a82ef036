//! The lock that serialises the writers of one tree's catalog: CLI runs and the server's
//! re-index wait for each other rather than interleave their writes.

use std::path::{Path, PathBuf};

use super::names::publish_lock;

/// The lock could not be taken.
#[derive(Debug, thiserror::Error)]
#[error("cannot lock {}: {source}", path.display())]
pub struct LockError {
    /// The lock file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// Takes the tree's publish lock, waiting (with a message) while another writer holds it.
/// Held until the file is dropped.
pub fn lock_tree(target: &Path) -> Result<std::fs::File, LockError> {
    let path = publish_lock(target);
    let fail = |source| LockError {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        super::atomic::create_dir_all(dir).map_err(fail)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(fail)?;
    if file.try_lock().is_err() {
        tracing::info!(
            "waiting for another publish of {} to finish",
            target.display()
        );
        file.lock().map_err(fail)?;
    }
    Ok(file)
}
