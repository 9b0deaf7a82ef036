//! Scanning a product folder: its version folders, the image files in each (by
//! [`names::classify`]), and the file signatures the hash cache is keyed by.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::names::{self, FileRole, classify};
use crate::format::VersionName;

/// The identity of a file's content as far as the cache is concerned: a changed file changes
/// at least one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileSig {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds part.
    pub mtime_ns: i64,
    /// Inode (a file replaced by rename gets a new one).
    pub ino: u64,
    /// Device.
    pub dev: u64,
    /// Change time, seconds (catches writes that restore the mtime).
    pub ctime: i64,
    /// Change time, nanoseconds part.
    pub ctime_ns: i64,
}

impl FileSig {
    /// Reads the signature from metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            size: meta.len(),
            mtime: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
            ino: meta.ino(),
            dev: meta.dev(),
            ctime: meta.ctime(),
            ctime_ns: meta.ctime_nsec(),
        }
    }

    /// The signature of the file at `path` (of what a symlink there points to).
    pub fn read(path: impl AsRef<Path>) -> std::io::Result<Self> {
        std::fs::metadata(path).map(|m| Self::of(&m))
    }
}

/// Reads a whole file and the signature of exactly the bytes read: taken from the descriptor
/// they are read from, so it holds even if the file is replaced meanwhile.
pub fn read_signed(path: &Path) -> std::io::Result<(Vec<u8>, FileSig)> {
    let mut file = std::fs::File::open(path)?;
    let sig = FileSig::of(&file.metadata()?);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes)?;
    Ok((bytes, sig))
}

/// One image file of a version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    /// File name in the version folder.
    pub name: String,
    /// What it is.
    pub role: FileRole,
    /// Full path.
    pub path: PathBuf,
    /// Signature at scan time.
    pub sig: FileSig,
    /// The entry is a symlink (its signature is the target's): where it leads must be checked.
    pub symlink: bool,
}

/// A version folder and its image files.
#[derive(Clone, Debug)]
pub struct VersionDir {
    /// The version.
    pub name: VersionName,
    /// Its folder.
    pub path: PathBuf,
    /// Its image files, by name.
    pub files: Vec<ImageFile>,
    /// Why the folder could not be read (a file that cannot be stat'ed, such as a dangling
    /// symlink): `files` is then empty, and the version cannot be published, but the rest of its
    /// product can.
    pub unreadable: Option<std::sync::Arc<TreeError>>,
    /// The folder entry is a symlink: where it leads must be checked.
    pub symlink: bool,
    /// Its deltas (`delta-<base>.vcdiff`), by base version.
    pub deltas: Vec<DeltaFile>,
    /// It holds a `metadata.json` (overrides for this version).
    pub overrides: bool,
}

/// A delta in a version folder: the xdelta3 VCDIFF from the squashfs of `base` to this
/// version's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaFile {
    /// The version it starts from.
    pub base: VersionName,
    /// File name in the version folder.
    pub name: String,
    /// Full path.
    pub path: PathBuf,
    /// Signature at scan time.
    pub sig: FileSig,
}

impl VersionDir {
    /// The file of a role, when the version has one.
    pub fn file(&self, role: FileRole) -> Option<&ImageFile> {
        self.files.iter().find(|f| f.role == role)
    }

    /// The (metadata, rootfs) pairs that make split images, as indexes into `files` (see
    /// [`names::pairs`]).
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        let roles: Vec<FileRole> = self.files.iter().map(|f| f.role).collect();
        names::pairs(&roles)
    }
}

/// A folder that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct TreeError {
    /// The folder or file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

pub(super) fn stat(path: &Path) -> Result<std::fs::Metadata, TreeError> {
    std::fs::metadata(path).map_err(|source| TreeError {
        path: path.to_owned(),
        source,
    })
}

pub(super) fn read_dir_sorted(dir: &Path) -> Result<Vec<std::fs::DirEntry>, TreeError> {
    let err = |source| TreeError {
        path: dir.to_owned(),
        source,
    };
    let mut entries = std::fs::read_dir(dir)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    Ok(entries)
}

/// Lists the version folders of a product folder. Hidden entries (partial builds, caches) are
/// ignored; other folders that are not version names are skipped with a warning.
pub fn scan_product(dir: &Path, warnings: &mut Vec<String>) -> Result<Vec<VersionDir>, TreeError> {
    let mut versions = Vec::new();
    for entry in read_dir_sorted(dir)? {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // The entry's type comes with the listing; only a symlink needs a stat to say.
        let symlink = entry.file_type().is_ok_and(|t| t.is_symlink());
        let is_dir = match entry.file_type() {
            Ok(t) if !t.is_symlink() => t.is_dir(),
            _ => stat(&path)?.is_dir(),
        };
        if !is_dir {
            continue;
        }
        let version = match VersionName::parse(&name) {
            Ok(v) => v,
            Err(e) => {
                warnings.push(format!("{}: skipped: {e}", path.display()));
                continue;
            }
        };
        // One version that cannot be read costs that version, not its product.
        let mut scanned =
            scan_version(version.clone(), &path, warnings).unwrap_or_else(|e| VersionDir {
                name: version,
                path,
                files: Vec::new(),
                unreadable: Some(std::sync::Arc::new(e)),
                symlink: false,
                deltas: Vec::new(),
                overrides: false,
            });
        scanned.symlink = symlink;
        versions.push(scanned);
    }
    versions.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(versions)
}

/// Reads the image files of one version folder.
pub fn scan_version(
    name: VersionName,
    dir: &Path,
    warnings: &mut Vec<String>,
) -> Result<VersionDir, TreeError> {
    let mut files: Vec<ImageFile> = Vec::new();
    let mut deltas = Vec::new();
    let mut overrides = false;
    for entry in read_dir_sorted(dir)? {
        let file_name = entry.file_name().to_string_lossy().into_owned();
        if file_name == names::METADATA_JSON {
            overrides = true;
            continue;
        }
        if let Some(base) = names::delta_base(&file_name) {
            let path = entry.path();
            let meta = stat(&path)?;
            if meta.is_file() {
                deltas.push(DeltaFile {
                    base,
                    name: file_name,
                    path,
                    sig: FileSig::of(&meta),
                });
            }
            continue;
        }
        let Some(role) = classify(&file_name) else {
            continue;
        };
        let path = entry.path();
        let meta = stat(&path)?;
        if !meta.is_file() {
            warnings.push(format!("{}: skipped: not a regular file", path.display()));
            continue;
        }
        if let Some(other) = files.iter().find(|f| f.role == role) {
            warnings.push(format!(
                "{}: skipped: {} already provides this file",
                path.display(),
                other.name
            ));
            continue;
        }
        files.push(ImageFile {
            name: file_name,
            role,
            path,
            sig: FileSig::of(&meta),
            symlink: entry.file_type().is_ok_and(|t| t.is_symlink()),
        });
    }
    Ok(VersionDir {
        name,
        path: dir.to_owned(),
        files,
        unreadable: None,
        symlink: false,
        deltas,
        overrides,
    })
}

/// A name the tree may hold and the server may send: not empty, not hidden (which also covers
/// `.` and `..`), and free of separators and control characters (NUL included) that could mean
/// something else to the file system or to a log reader. Colons are fine: version folders such
/// as `20251123_12:13` contain one.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
}

/// The names of the tree's own files: plain ones only (see [`resolves_outside`]).
pub fn only_plain(name: &str, _last: bool) -> bool {
    is_plain_name(name)
}

/// Where `path` really is, when it resolves (through symlinks) outside `root` or onto a name
/// inside it that `allowed(name, is_last)` refuses: the server refuses to send such a file, so
/// no catalog may list it. `root` must be canonical. The tree's own files allow plain names
/// ([`only_plain`]); the server also allows its cached unified tarballs as the last name. A
/// file that does not exist passes (`None`); one that cannot be resolved does not.
pub fn resolves_outside(
    root: &Path,
    path: &Path,
    allowed: &dyn Fn(&str, bool) -> bool,
) -> Option<PathBuf> {
    match std::fs::canonicalize(path) {
        Ok(real) => outside_root(root, real, allowed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(_) => Some(path.to_owned()),
    }
}

/// [`resolves_outside`] for a path already made canonical: `real` itself when it is outside
/// `root` or holds a name `allowed` refuses, else `None`.
pub fn outside_root(
    root: &Path,
    real: PathBuf,
    allowed: &dyn Fn(&str, bool) -> bool,
) -> Option<PathBuf> {
    let Ok(relative) = real.strip_prefix(root) else {
        return Some(real);
    };
    let last = relative.components().count().saturating_sub(1);
    let plain = relative.components().enumerate().all(|(i, c)| match c {
        std::path::Component::Normal(name) => name.to_str().is_some_and(|n| allowed(n, i == last)),
        _ => false,
    });
    (!plain).then_some(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    /// A version folder holding empty files of these names, scanned.
    fn version_of(files: &[&str]) -> (tempfile::TempDir, VersionDir) {
        let d = tempfile::tempdir().unwrap();
        for f in files {
            touch(&d.path().join(f));
        }
        let name = VersionName::parse("20240101_00:00").unwrap();
        let v = scan_version(name, d.path(), &mut Vec::new()).unwrap();
        (d, v)
    }

    #[test]
    fn a_file_resolving_outside_the_tree_or_onto_a_hidden_name_is_found() {
        let tree = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = tree.path().canonicalize().unwrap();
        touch(&outside.path().join("secret"));
        touch(&root.join("p/.hidden"));
        touch(&root.join("p/plain"));
        std::os::unix::fs::symlink(outside.path().join("secret"), root.join("p/out")).unwrap();
        std::os::unix::fs::symlink(root.join("p/.hidden"), root.join("p/in-hidden")).unwrap();
        std::os::unix::fs::symlink(root.join("p/plain"), root.join("p/in-plain")).unwrap();
        let no = only_plain;
        assert!(resolves_outside(&root, &root.join("p/out"), &no).is_some());
        assert!(resolves_outside(&root, &root.join("p/in-hidden"), &no).is_some());
        assert_eq!(resolves_outside(&root, &root.join("p/in-plain"), &no), None);
        assert_eq!(resolves_outside(&root, &root.join("p/missing"), &no), None);
        assert_eq!(
            resolves_outside(&root, &root.join("p/.hidden"), &|n, last| {
                only_plain(n, last) || (last && n == ".hidden")
            }),
            None
        );
        for bad in ["", ".", "..", ".ssb", "a/b", "a\\b", "a\0b", "a\tb"] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
        assert!(is_plain_name("20251123_12:13"));
    }

    #[test]
    fn scans_versions_and_skips_the_rest_loudly() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        touch(&p.join("20240105_03:00/lxd.tar.xz"));
        touch(&p.join("20240105_03:00/rootfs.squashfs"));
        touch(&p.join("20240105_03:00/meta.tar.xz"));
        touch(&p.join("20240106_0300/incus.tar.xz"));
        touch(&p.join("20240106_0300/root.tar.xz"));
        touch(&p.join("20240106_0300/rootfs.tar.xz"));
        touch(&p.join("20240106_0300/metadata.json"));
        touch(&p.join("20240103/lxd.tar.xz"));
        touch(&p.join(".20240107_03:00.partial/lxd.tar.xz"));
        touch(&p.join("ssb.json"));
        let mut w = Vec::new();
        let v = scan_product(p, &mut w).unwrap();
        let names: Vec<_> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["20240105_03:00", "20240106_0300"]);
        let files: Vec<_> = v[0].files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(files, ["lxd.tar.xz", "meta.tar.xz", "rootfs.squashfs"]);
        assert_eq!(v[0].files[1].role, FileRole::LxcMeta);
        let files: Vec<_> = v[1].files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(files, ["incus.tar.xz", "root.tar.xz"]);
        assert_eq!([v[0].overrides, v[1].overrides], [false, true]);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("20240103: skipped"), "{w:?}");
        assert!(
            w[1].contains("rootfs.tar.xz: skipped: root.tar.xz already provides"),
            "{w:?}"
        );
    }

    #[test]
    fn vm_metadata_takes_the_disk_and_families_never_mix() {
        let (_d, v) = version_of(&[
            "incus.tar.xz",
            "lxd.tar.xz",
            "incus-vm.tar.xz",
            "rootfs.squashfs",
            "disk.qcow2",
        ]);
        let named: Vec<(String, String)> = v
            .pairs()
            .into_iter()
            .map(|(m, r)| (v.files[m].name.clone(), v.files[r].name.clone()))
            .collect();
        let want = [
            ("incus-vm.tar.xz", "disk.qcow2"),
            ("incus.tar.xz", "rootfs.squashfs"),
            ("lxd.tar.xz", "rootfs.squashfs"),
        ];
        assert_eq!(named.len(), want.len(), "{named:?}");
        for (m, r) in want {
            assert!(named.contains(&(m.into(), r.into())), "{named:?}");
        }
    }

    #[test]
    fn shared_metadata_pairs_with_the_disk_too() {
        let (_d, v) = version_of(&["incus.tar.xz", "rootfs.squashfs", "disk.qcow2"]);
        assert_eq!(v.pairs().len(), 2);
    }
}
