//! Locks that serialise the writers of a tree: CLI runs and the server's re-index wait for each
//! other rather than interleave their catalog writes, and two builds of one product never run
//! at once. A lock file exists only while it is held: pipelines copy trees as they are (`mc
//! mirror`, `cp -r`), and a lock left behind would be published with them.
//!
//! Removing a lock file on release is safe because a taker checks, once it holds the lock, that
//! the path still names the file it locked; if the holder removed it meanwhile, it tries again
//! on a new file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::names::{STATE_DIR, publish_lock};

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
    /// A folder made for the lock, removed with it when nothing else is in it.
    made_dir: Option<PathBuf>,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Remove while still holding it: a waiter that then gets the lock sees the path gone
        // and starts over on a new file.
        let _ = std::fs::remove_file(&self.path);
        if let Some(dir) = &self.made_dir {
            let _ = std::fs::remove_dir(dir);
        }
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

/// Takes the lock file at `path` (creating it, and its folder when `own_dir`).
pub fn take(path: &Path, own_dir: bool, wait: Wait, what: &str) -> Result<Option<Lock>, LockError> {
    let fail = |source| LockError {
        path: path.to_owned(),
        source,
    };
    loop {
        let dir = path.parent().unwrap_or(Path::new("."));
        let made_dir = if own_dir && !dir.exists() {
            super::atomic::create_dir_all(dir).map_err(fail)?;
            Some(dir.to_owned())
        } else {
            None
        };
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
        {
            Ok(f) => f,
            // The folder went with another holder's release: make it again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && own_dir => continue,
            Err(e) => return Err(fail(e)),
        };
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
            let made_dir = made_dir.or_else(|| own_dir.then(|| dir.to_owned()));
            return Ok(Some(Lock {
                file,
                path: path.to_owned(),
                made_dir,
            }));
        }
        // Released and removed while we waited: try again on the new file.
    }
}

/// Takes the tree's publish lock, waiting (with a message) while another writer holds it.
pub fn lock_tree(target: &Path) -> Result<Lock, LockError> {
    let path = publish_lock(target);
    let what = format!("another publish of {}", target.display());
    let lock = take(&path, true, Wait::Block, &what)?.expect("a blocking take returns a lock");
    debug_assert!(path.starts_with(target.join(STATE_DIR)));
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_lock_leaves_nothing_and_serialises_takers() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_tree(dir.path()).unwrap();
        assert!(publish_lock(dir.path()).exists());
        assert!(
            take(&publish_lock(dir.path()), true, Wait::No, "t")
                .unwrap()
                .is_none(),
            "held"
        );
        let waiter = {
            let root = dir.path().to_owned();
            std::thread::spawn(move || {
                let lock = lock_tree(&root).unwrap();
                assert!(publish_lock(&root).exists(), "the waiter holds a live file");
                drop(lock);
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(first);
        waiter.join().unwrap();
        assert!(!publish_lock(dir.path()).exists());
        assert!(
            !dir.path().join(STATE_DIR).exists(),
            "the folder made for the lock goes with it"
        );
    }

    #[test]
    fn the_state_folder_stays_when_it_holds_other_things() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(STATE_DIR).join("tls")).unwrap();
        drop(lock_tree(dir.path()).unwrap());
        assert!(dir.path().join(STATE_DIR).join("tls").is_dir());
        assert!(!publish_lock(dir.path()).exists());
    }
}
