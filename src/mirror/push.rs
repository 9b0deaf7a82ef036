//! `mirror push`: copies a published tree to another folder, or to an `rsync`/ssh destination,
//! in an order that keeps the destination consistent for readers at every moment: image files
//! first, then the products files, then `index.json`, and only then the removal of files the
//! new catalog no longer names. Each file lands whole (temp file + rename, or rsync's own temp
//! files), so a reader sees the old catalog with all its files, or the new one with all of its.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Files copied.
    pub copied: usize,
    /// Files already identical at the destination (same size and mtime).
    pub unchanged: usize,
    /// Files removed from the destination after the catalog was replaced.
    pub removed: usize,
}

/// A push that failed; the destination still holds a consistent catalog.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The source is not a published tree.
    #[error("{} has no {}: publish or pull into it first", path.display(), crate::tree::names::index_rel())]
    NoCatalog {
        /// The source.
        path: PathBuf,
    },
    /// Local I/O.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// rsync failed.
    #[error("`{command}` failed: {reason}")]
    Rsync {
        /// The command line.
        command: String,
        /// Exit status or spawn error.
        reason: String,
    },
}

/// True for destinations rsync must handle: `host:path`, `user@host:path`, `rsync://…`.
pub fn is_remote(dest: &str) -> bool {
    if dest.starts_with("rsync://") {
        return true;
    }
    match dest.split_once(':') {
        Some((host, _)) => !host.is_empty() && !host.contains('/'),
        None => false,
    }
}

/// Pushes the tree at `source` to `dest`. `observer` is told about every file copied into or
/// removed from a local destination, right after it happened.
pub fn push(
    source: &Path,
    dest: &str,
    observer: &mut dyn FnMut(&Path),
) -> Result<PushReport, PushError> {
    if !crate::catalog::publish::index_path(source).is_file() {
        return Err(PushError::NoCatalog {
            path: source.to_owned(),
        });
    }
    if is_remote(dest) {
        return push_rsync(source, dest);
    }
    push_dir(source, Path::new(dest), observer)
}

/// When a relative path is copied: images, then the catalog's other files, then the index.
fn phase(rel: &str) -> u8 {
    use crate::tree::names::{GZ_SUFFIX, STREAMS_DIR, index_rel};
    let index = index_rel();
    if rel == index {
        3
    } else if rel.strip_suffix(GZ_SUFFIX) == Some(index.as_str()) {
        2
    } else if rel.starts_with(&format!("{STREAMS_DIR}/")) {
        1
    } else {
        0
    }
}

/// Every regular, non-hidden file under `root`, relative, with `/` separators.
fn walk(root: &Path) -> Result<Vec<String>, PushError> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel.as_os_str().is_empty() => {
                return Ok(out);
            }
            Err(source) => return Err(PushError::Io { path: dir, source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| PushError::Io {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str().filter(|n| !n.starts_with('.')) else {
                continue;
            };
            let child = rel.join(name);
            let kind = entry.file_type().map_err(|source| PushError::Io {
                path: entry.path(),
                source,
            })?;
            if kind.is_dir() {
                stack.push(child);
            } else if kind.is_file() {
                out.push(child.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    Ok(out)
}

fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.len() == b.len() && a.mtime() == b.mtime() && a.mtime_nsec() == b.mtime_nsec()
}

fn push_dir(
    source: &Path,
    dest: &Path,
    observer: &mut dyn FnMut(&Path),
) -> Result<PushReport, PushError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| PushError::Io { path, source }
    };
    let mut files = walk(source)?;
    files.sort_by_key(|rel| phase(rel));
    let mut report = PushReport::default();
    for rel in &files {
        let (from, to) = (source.join(rel), dest.join(rel));
        let meta = std::fs::metadata(&from).map_err(io(&from))?;
        if std::fs::metadata(&to).is_ok_and(|m| same_file(&meta, &m)) {
            report.unchanged += 1;
            continue;
        }
        let mut input = std::fs::File::open(&from).map_err(io(&from))?;
        crate::tree::atomic::write_with(&to, |w| {
            std::io::copy(&mut input, w)?;
            w.flush()
        })
        .map_err(io(&to))?;
        // Same mtime as the source, so the next push sees the file as unchanged.
        if let Ok(modified) = meta.modified() {
            let f = std::fs::File::options()
                .write(true)
                .open(&to)
                .map_err(io(&to))?;
            f.set_modified(modified).map_err(io(&to))?;
        }
        report.copied += 1;
        observer(&to);
    }
    // The new catalog is in place: what it does not name can go.
    let keep: std::collections::BTreeSet<&String> = files.iter().collect();
    for rel in walk(dest)? {
        if keep.contains(&rel) {
            continue;
        }
        let path = dest.join(&rel);
        std::fs::remove_file(&path).map_err(io(&path))?;
        report.removed += 1;
        observer(&path);
        let mut dir = path.parent();
        while let Some(d) = dir {
            if d == dest || std::fs::remove_dir(d).is_err() {
                break;
            }
            dir = d.parent();
        }
    }
    Ok(report)
}

/// The rsync runs of a push, in order: images; the catalog without the index; the index, then
/// deletions after the transfer. Hidden files are neither sent nor deleted.
pub fn rsync_commands(source: &Path, dest: &str) -> Vec<Vec<String>> {
    let src = format!("{}/", source.display().to_string().trim_end_matches('/'));
    let dst = format!("{}/", dest.trim_end_matches('/'));
    let base = ["rsync", "-a", "--exclude=.*"].map(String::from);
    let run = |extra: &[&str]| {
        let mut v = base.to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push(src.clone());
        v.push(dst.clone());
        v
    };
    let index = crate::tree::names::index_rel();
    let gz = crate::tree::names::GZ_SUFFIX;
    vec![
        run(&[&format!("--exclude=/{}/", crate::tree::names::STREAMS_TOP)]),
        run(&[
            &format!("--exclude=/{index}"),
            &format!("--exclude=/{index}{gz}"),
        ]),
        run(&["--delete-after"]),
    ]
}

fn push_rsync(source: &Path, dest: &str) -> Result<PushReport, PushError> {
    for argv in rsync_commands(source, dest) {
        let command = argv.join(" ");
        tracing::info!("running {command}");
        let status = Command::new(&argv[0])
            .args(&argv[1..])
            .status()
            .map_err(|e| PushError::Rsync {
                command: command.clone(),
                reason: e.to_string(),
            })?;
        if !status.success() {
            return Err(PushError::Rsync {
                command,
                reason: status.to_string(),
            });
        }
    }
    Ok(PushReport::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_rsync_destinations_from_folders() {
        for remote in ["host:/srv/www", "user@host:www", "rsync://host/mod/"] {
            assert!(is_remote(remote), "{remote}");
        }
        for local in ["/srv/www", "www", "./a:b", "/x/host:y", ":x"] {
            assert!(!is_remote(local), "{local}");
        }
    }

    #[test]
    fn rsync_sends_the_index_last_and_deletes_after() {
        let cmds = rsync_commands(Path::new("/t/"), "h:/w");
        assert_eq!(cmds.len(), 3);
        assert!(cmds[0].contains(&"--exclude=/streams/".to_owned()));
        assert!(cmds[1].contains(&"--exclude=/streams/v1/index.json".to_owned()));
        assert_eq!(cmds[2][3], "--delete-after");
        assert_eq!(cmds[2][4..], ["/t/".to_owned(), "h:/w/".to_owned()]);
    }

    #[test]
    fn orders_images_then_catalog_then_index() {
        let mut v = vec![
            "streams/v1/index.json",
            "streams/v1/images.json",
            "images/a",
            "streams/v1/index.json.gz",
        ];
        v.sort_by_key(|r| phase(r));
        assert_eq!(
            v,
            [
                "images/a",
                "streams/v1/images.json",
                "streams/v1/index.json.gz",
                "streams/v1/index.json"
            ]
        );
    }
}
