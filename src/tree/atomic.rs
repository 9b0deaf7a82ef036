//! Atomic, world-readable file writes: a temp file in the destination folder, fsync, rename,
//! fsync of the folder. A reader sees the old file or the new one, never a mix, and a crash
//! leaves at most a hidden `.tmp-*` file that scanners and the server ignore.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Mode of published files: readable by the web server (the original wrote 0760 folders).
pub const FILE_MODE: u32 = 0o644;
/// Mode of published folders.
pub const DIR_MODE: u32 = 0o755;

/// Creates `dir` and its missing parents with mode 0755.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes a file world-readable (0644), as published files must be.
pub fn set_file_mode(path: &Path) -> std::io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(FILE_MODE))
}

/// [`write`](fn@write) unless `path` already holds exactly `bytes` (and is world-readable):
/// an unchanged tree is published without rewriting or syncing anything. Returns whether it
/// wrote.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    if let Ok(meta) = std::fs::metadata(path)
        && meta.is_file()
        && meta.len() == bytes.len() as u64
        && meta.permissions().mode() & 0o777 == FILE_MODE
        && std::fs::read(path).is_ok_and(|old| old == bytes)
    {
        return Ok(false);
    }
    write(path, bytes)?;
    Ok(true)
}

/// Writes `bytes` to `path` atomically with mode 0644, creating the folder if needed.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, |w| w.write_all(bytes))
}

/// Like [`write`](fn@write), with the content produced by `fill` into a buffered writer.
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    write_with_mode_of(path, FILE_MODE, fill)
}

/// Like [`write`](fn@write), with another file mode (0600 for a file of secrets).
pub fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_with_mode_of(path, mode, |w| w.write_all(bytes))
}

fn write_with_mode_of(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = temp_file(dir, &format!("{}{name}.", super::names::TEMP_PREFIX)).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot create a temp file in {}: {e}", dir.display()),
        )
    })?;
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 16, tmp.as_file());
        fill(&mut w)?;
        w.flush()?;
    }
    let file = tmp.as_file();
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.sync_all()?;
    tmp.persist(path).map_err(|e| {
        std::io::Error::new(
            e.error.kind(),
            format!("cannot rename into {}: {}", path.display(), e.error),
        )
    })?;
    // Durability of the rename itself; failure here does not undo the write.
    let _ = sync_dir(dir);
    Ok(())
}

/// A new file being written into a folder under a hidden temp name, its sha256 computed on the
/// way. [`HashedTemp::seal`] makes it durable and world-readable; the caller then renames it
/// into place (under a name that may depend on the hash).
pub struct HashedTemp {
    tmp: tempfile::NamedTempFile,
    sha: sha2::Sha256,
}

impl HashedTemp {
    /// Creates `dir` if needed and a temp file in it named `<prefix>…`.
    pub fn new(dir: &Path, prefix: &str) -> std::io::Result<Self> {
        create_dir_all(dir)?;
        Ok(Self {
            tmp: temp_file(dir, prefix)?,
            sha: sha2::Digest::new(),
        })
    }

    /// Where it is being written.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// The temp file itself, for writers that hash on their own.
    pub fn into_file(self) -> tempfile::NamedTempFile {
        self.tmp
    }

    /// Fsyncs it and makes it world-readable; gives it back with the sha256 state after its
    /// last byte.
    pub fn seal(self) -> std::io::Result<(tempfile::NamedTempFile, sha2::Sha256)> {
        seal(&self.tmp)?;
        Ok((self.tmp, self.sha))
    }
}

impl Write for HashedTemp {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.tmp.write(buf)?;
        sha2::Digest::update(&mut self.sha, &buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.flush()
    }
}

/// Makes a written temp file durable and gives it the mode of published files.
pub fn seal(tmp: &tempfile::NamedTempFile) -> std::io::Result<()> {
    tmp.as_file().sync_all()?;
    set_file_mode(tmp.path())
}

/// A temp file `<prefix>…` in `dir`, locked for as long as it is open: the lock tells a
/// sweep of crash leftovers ([`stale_temp_files`]) that a live writer is still at work on it.
pub fn temp_file(dir: &Path, prefix: &str) -> std::io::Result<tempfile::NamedTempFile> {
    let tmp = tempfile::Builder::new().prefix(prefix).tempfile_in(dir)?;
    tmp.as_file().try_lock().map_err(std::io::Error::other)?;
    Ok(tmp)
}

/// One of our temp files that no live writer holds: left by a crash or a kill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleTemp {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
}

/// Our temp files under `root` ([`super::names::is_temp_name`]) that no writer holds, found
/// without following symlinks. A file a writer still holds is left alone.
pub fn stale_temp_files(root: &Path) -> Vec<StaleTemp> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() && super::names::is_temp_name(&name) {
                let path = entry.path();
                let unheld = std::fs::File::open(&path).is_ok_and(|f| f.try_lock().is_ok());
                if unheld {
                    let size = entry.metadata().map_or(0, |m| m.len());
                    out.push(StaleTemp { path, size });
                }
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Removes the stale temp files under `root`; returns those removed and those that could not
/// be (with why).
pub fn remove_stale_temp_files(root: &Path) -> (Vec<StaleTemp>, Vec<String>) {
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    for stale in stale_temp_files(root) {
        match std::fs::remove_file(&stale.path) {
            Ok(()) => removed.push(stale),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => failed.push(format!("{}: {e}", stale.path.display())),
        }
    }
    (removed, failed)
}

/// Fsyncs a folder, making renames and links in it durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_temp_file_a_writer_holds_is_live_and_a_left_one_is_stale() {
        let d = tempfile::tempdir().unwrap();
        let live = temp_file(d.path(), crate::tree::names::UPLOAD_PREFIX).unwrap();
        std::fs::create_dir_all(d.path().join("v")).unwrap();
        std::fs::write(d.path().join("v/.tmp-images.json.x"), b"half").unwrap();
        std::fs::write(d.path().join("v/.upload-dead"), b"half of a rootfs").unwrap();
        std::fs::write(d.path().join("v/.hidden-but-not-ours"), b"x").unwrap();
        let stale: Vec<_> = stale_temp_files(d.path())
            .into_iter()
            .map(|s| s.path.strip_prefix(d.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(stale, ["v/.tmp-images.json.x", "v/.upload-dead"]);
        let (removed, failed) = remove_stale_temp_files(d.path());
        assert_eq!((removed.len(), failed.len()), (2, 0));
        assert!(live.path().exists(), "a live writer's file stays");
        assert!(d.path().join("v/.hidden-but-not-ours").exists());
        drop(live);
    }

    use super::*;

    #[test]
    fn replaces_content_whole_with_world_readable_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/c.json");
        write(&path, b"one").unwrap();
        write(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, FILE_MODE);
        let dmode = std::fs::metadata(dir.path().join("a/b"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, DIR_MODE);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("a/b"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["c.json"]);
    }

    #[test]
    fn a_failing_writer_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write(&path, b"old").unwrap();
        let err = write_with(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("boom"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
