//! Locks that serialise the writers of a tree: CLI runs and the server's re-index wait for each
//! other rather than interleave their catalog writes, and two builds of one product never run
//! at once. A lock file exists only while it is held: pipelines copy trees as they are (`mc
//! mirror`, `cp -r`), and a lock left behind would be published with them. Lock files sit in
//! folders that always exist (the tree's top, the product folder), so taking and releasing one
//! never makes or removes a folder another writer may be creating files in.
//!
//! Removing a lock file on release is safe because a taker checks, once it holds the lock, that
//! the path still names the file it locked; if the holder removed it meanwhile, it tries again
//! on a new file.

use std::os::unix::fs::MetadataExt;
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

/// A held lock; released, and its file removed, when dropped.
#[derive(Debug)]
pub struct Lock {
    file: std::fs::File,
    path: PathBuf,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Remove while still holding it: a waiter that then gets the lock sees the path gone
        // and starts over on a new file.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// How to wait for a lock another process holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Wait, after saying so.
    Block,
    /// Do not wait: `Ok(None)` when it is held.
    No,
}

/// Takes the lock file at `path` (its folder must exist); `what` names the holder in the
/// message shown while waiting.
pub fn take(path: &Path, wait: Wait, what: &str) -> Result<Option<Lock>, LockError> {
    let fail = |source| LockError {
        path: path.to_owned(),
        source,
    };
    loop {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(fail)?;
        if file.try_lock().is_err() {
            if wait == Wait::No {
                return Ok(None);
            }
            tracing::info!("waiting for {what} to finish");
            file.lock().map_err(fail)?;
        }
        let held = file.metadata().map_err(fail)?;
        let still_ours = std::fs::metadata(path)
            .is_ok_and(|now| now.ino() == held.ino() && now.dev() == held.dev());
        if still_ours {
            return Ok(Some(Lock {
                file,
                path: path.to_owned(),
            }));
        }
        // Released and removed while we waited: try again on the new file.
    }
}

/// Takes the tree's publish lock, waiting (with a message) while another writer holds it.
/// Creates the tree's folder if needed.
pub fn lock_tree(target: &Path) -> Result<Lock, LockError> {
    let path = publish_lock(target);
    super::atomic::create_dir_all(target).map_err(|source| LockError {
        path: path.clone(),
        source,
    })?;
    let what = format!("another publish of {}", target.display());
    let lock = take(&path, Wait::Block, &what)?;
    Ok(lock.expect("a blocking take returns a lock"))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn a_released_lock_leaves_nothing_and_serialises_takers() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_tree(dir.path()).unwrap();
        assert!(publish_lock(dir.path()).exists());
        assert!(
            take(&publish_lock(dir.path()), Wait::No, "t")
                .unwrap()
                .is_none(),
            "held"
        );
        let released = Arc::new(AtomicBool::new(false));
        let waiter = {
            let root = dir.path().to_owned();
            let released = Arc::clone(&released);
            std::thread::spawn(move || {
                let lock = lock_tree(&root).unwrap();
                assert!(
                    released.load(Ordering::SeqCst),
                    "the waiter got the lock before the holder released it"
                );
                assert!(publish_lock(&root).exists(), "the waiter holds a live file");
                drop(lock);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        released.store(true, Ordering::SeqCst);
        drop(first);
        waiter.join().unwrap();
        assert!(!publish_lock(dir.path()).exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing is left in the tree"
        );
    }
}
