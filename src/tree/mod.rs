//! The on-disk tree: which files of a version folder are image files and how they pair, the
//! product folders of the lxd-image-server layout, and file signatures for the hash cache.

pub mod atomic;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::format::{Family, RootfsKind, VersionName};

/// What a file of a version folder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileRole {
    /// A metadata tarball; `vm` for a VM's own metadata (`*-vm.tar.xz`), paired only with the disk.
    Meta {
        /// The family its name says.
        family: Family,
        /// A VM's own metadata.
        vm: bool,
    },
    /// A rootfs or disk.
    Rootfs(RootfsKind),
    /// A unified tarball.
    Unified(Family),
}

/// Recognises the file names of a version folder. Anything else is not part of an image.
pub fn classify(name: &str) -> Option<FileRole> {
    Some(match name {
        "lxd.tar.xz" => FileRole::Meta {
            family: Family::Lxd,
            vm: false,
        },
        "incus.tar.xz" => FileRole::Meta {
            family: Family::Incus,
            vm: false,
        },
        "lxd-vm.tar.xz" => FileRole::Meta {
            family: Family::Lxd,
            vm: true,
        },
        "incus-vm.tar.xz" => FileRole::Meta {
            family: Family::Incus,
            vm: true,
        },
        "rootfs.squashfs" => FileRole::Rootfs(RootfsKind::Squashfs),
        "rootfs.tar.xz" | "root.tar.xz" => FileRole::Rootfs(RootfsKind::RootTarXz),
        "disk.qcow2" | "disk-kvm.img" => FileRole::Rootfs(RootfsKind::DiskKvm),
        "lxd_combined.tar.gz" => FileRole::Unified(Family::Lxd),
        "incus_combined.tar.gz" => FileRole::Unified(Family::Incus),
        _ => return None,
    })
}

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
}

impl VersionDir {
    /// The (metadata, rootfs) pairs that make split images, as indexes into `files`.
    /// Container metadata pairs with every rootfs, and with the disk too unless the version has a
    /// VM's own metadata, which then pairs with the disk alone. Families are never mixed.
    pub fn pairs(&self) -> Vec<(usize, usize)> {
        let has_vm_meta = self
            .files
            .iter()
            .any(|f| matches!(f.role, FileRole::Meta { vm: true, .. }));
        let mut out = Vec::new();
        for (mi, m) in self.files.iter().enumerate() {
            let FileRole::Meta { vm, .. } = m.role else {
                continue;
            };
            for (ri, r) in self.files.iter().enumerate() {
                let FileRole::Rootfs(kind) = r.role else {
                    continue;
                };
                let pairs = match (vm, kind) {
                    (true, RootfsKind::DiskKvm) => true,
                    (true, _) => false,
                    (false, RootfsKind::DiskKvm) => !has_vm_meta,
                    (false, _) => true,
                };
                if pairs {
                    out.push((mi, ri));
                }
            }
        }
        out
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

fn stat(path: &Path) -> Result<std::fs::Metadata, TreeError> {
    std::fs::metadata(path).map_err(|source| TreeError {
        path: path.to_owned(),
        source,
    })
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<std::fs::DirEntry>, TreeError> {
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
        if !stat(&path)?.is_dir() {
            continue;
        }
        let version = match VersionName::parse(&name) {
            Ok(v) => v,
            Err(e) => {
                warnings.push(format!("{}: skipped: {e}", path.display()));
                continue;
            }
        };
        versions.push(scan_version(version, &path, warnings)?);
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
    for entry in read_dir_sorted(dir)? {
        let file_name = entry.file_name().to_string_lossy().into_owned();
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
        });
    }
    Ok(VersionDir {
        name,
        path: dir.to_owned(),
        files,
    })
}

/// A product of the lxd-image-server layout `images/<os>/<release>/<arch>/<variant>/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutProduct {
    /// `os` folder name.
    pub os: String,
    /// `release` folder name.
    pub release: String,
    /// `arch` folder name.
    pub arch: String,
    /// `variant` folder name.
    pub variant: String,
    /// The product folder relative to the root, with `/` separators.
    pub directory: String,
}

impl LayoutProduct {
    /// The product whose folder is `dir`, when `dir` is `root/images/<os>/<release>/<arch>/<variant>`
    /// (both as given, without resolving anything).
    pub fn of_folder(root: &Path, dir: &Path) -> Option<Self> {
        let rel = dir.strip_prefix(root.join(LAYOUT_ROOT)).ok()?;
        let parts: Vec<&str> = rel
            .components()
            .map(|c| match c {
                std::path::Component::Normal(name) => name.to_str(),
                _ => None,
            })
            .collect::<Option<_>>()?;
        let [os, release, arch, variant] = parts.as_slice() else {
            return None;
        };
        Some(Self {
            directory: format!("{LAYOUT_ROOT}/{os}/{release}/{arch}/{variant}"),
            os: (*os).to_owned(),
            release: (*release).to_owned(),
            arch: (*arch).to_owned(),
            variant: (*variant).to_owned(),
        })
    }

    /// The product id in the catalog: `os:release:arch:variant`.
    pub fn name(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.os, self.release, self.arch, self.variant
        )
    }

    /// The aliases the layout gives a product: `os/release/variant`, plus `os/release` for the
    /// `default` variant.
    pub fn default_aliases(&self) -> Vec<String> {
        let mut aliases = vec![format!("{}/{}/{}", self.os, self.release, self.variant)];
        if self.variant == "default" {
            aliases.push(format!("{}/{}", self.os, self.release));
        }
        aliases
    }
}

/// The folder of the layout under the tree root.
pub const LAYOUT_ROOT: &str = "images";

/// Finds the product folders of the layout under `root/images`. Folders at the wrong depth are
/// reported, hidden ones ignored.
pub fn discover_layout(
    root: &Path,
    warnings: &mut Vec<String>,
) -> Result<Vec<LayoutProduct>, TreeError> {
    let base = root.join(LAYOUT_ROOT);
    let mut out = Vec::new();
    if !base.is_dir() {
        return Ok(out);
    }
    let subdirs = |dir: &Path| -> Result<Vec<(String, PathBuf)>, TreeError> {
        Ok(read_dir_sorted(dir)?
            .into_iter()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let path = e.path();
                (!name.starts_with('.') && path.is_dir()).then_some((name, path))
            })
            .collect())
    };
    for (os, os_dir) in subdirs(&base)? {
        for (release, rel_dir) in subdirs(&os_dir)? {
            for (arch, arch_dir) in subdirs(&rel_dir)? {
                if VersionName::parse(&arch).is_ok() {
                    warnings.push(format!(
                        "{}: a version folder at the wrong depth; expected images/<os>/<release>/<arch>/<variant>/<version>",
                        arch_dir.display()
                    ));
                    continue;
                }
                for (variant, var_dir) in subdirs(&arch_dir)? {
                    if VersionName::parse(&variant).is_ok() {
                        warnings.push(format!(
                            "{}: a version folder at the wrong depth; expected images/<os>/<release>/<arch>/<variant>/<version>",
                            var_dir.display()
                        ));
                        continue;
                    }
                    out.push(LayoutProduct {
                        directory: format!("{LAYOUT_ROOT}/{os}/{release}/{arch}/{variant}"),
                        os: os.clone(),
                        release: release.clone(),
                        arch: arch.clone(),
                        variant,
                    });
                }
            }
        }
    }
    Ok(out)
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
    fn scans_versions_and_skips_the_rest_loudly() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        touch(&p.join("20240105_03:00/lxd.tar.xz"));
        touch(&p.join("20240105_03:00/rootfs.squashfs"));
        touch(&p.join("20240105_03:00/meta.tar.xz"));
        touch(&p.join("20240106_0300/incus.tar.xz"));
        touch(&p.join("20240106_0300/root.tar.xz"));
        touch(&p.join("20240106_0300/rootfs.tar.xz"));
        touch(&p.join("20240103/lxd.tar.xz"));
        touch(&p.join(".20240107_03:00.partial/lxd.tar.xz"));
        touch(&p.join("ssb.json"));
        let mut w = Vec::new();
        let v = scan_product(p, &mut w).unwrap();
        let names: Vec<_> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["20240105_03:00", "20240106_0300"]);
        let files: Vec<_> = v[0].files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(files, ["lxd.tar.xz", "rootfs.squashfs"]);
        let files: Vec<_> = v[1].files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(files, ["incus.tar.xz", "root.tar.xz"]);
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

    #[test]
    fn discovers_layout_products() {
        let d = tempfile::tempdir().unwrap();
        touch(
            &d.path()
                .join("images/debian/12/amd64/default/20240101_00:00/incus.tar.xz"),
        );
        touch(
            &d.path()
                .join("images/debian/12/amd64/cloud/20240101_00:00/incus.tar.xz"),
        );
        touch(&d.path().join("images/.uploads/x/y/z/w"));
        std::fs::create_dir_all(d.path().join("images/alpine/3.20/20240101_00:00")).unwrap();
        std::fs::create_dir_all(d.path().join("images/alpine/3.20/amd64/20240101_00:00")).unwrap();
        let mut w = Vec::new();
        let p = discover_layout(d.path(), &mut w).unwrap();
        let dirs: Vec<_> = p.iter().map(|p| p.directory.as_str()).collect();
        assert_eq!(
            dirs,
            [
                "images/debian/12/amd64/cloud",
                "images/debian/12/amd64/default"
            ]
        );
        assert_eq!(w.len(), 2, "{w:?}");
    }

    #[test]
    fn a_layout_folder_names_its_product_and_aliases() {
        let root = Path::new("tree");
        let p = LayoutProduct::of_folder(root, Path::new("tree/images/alpine/3.21/amd64/default"))
            .unwrap();
        assert_eq!(p.name(), "alpine:3.21:amd64:default");
        assert_eq!(p.directory, "images/alpine/3.21/amd64/default");
        assert_eq!(p.default_aliases(), ["alpine/3.21/default", "alpine/3.21"]);
        let cloud =
            LayoutProduct::of_folder(root, Path::new("tree/images/alpine/3.21/arm64/cloud"))
                .unwrap();
        assert_eq!(cloud.default_aliases(), ["alpine/3.21/cloud"]);
        for not in [
            "tree/images/alpine/3.21/amd64",
            "tree/images/alpine/3.21/amd64/default/20250101_10:00",
            "elsewhere/images/alpine/3.21/amd64/default",
        ] {
            assert!(
                LayoutProduct::of_folder(root, Path::new(not)).is_none(),
                "{not}"
            );
        }
    }
}
