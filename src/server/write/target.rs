//! Where a write (upload or delete) may land: a strict grammar, checked before any file is
//! touched. A target is a file of a version folder, `<product>/<version>/<file>`, or a product's
//! `<product>/metadata.json`, where `<product>` is a layout folder
//! `images/<os>/<release>/<arch>/<variant>` (layout mode) or a local product directory declared
//! in tree.yml. File names are the ones the indexer knows, plus `metadata.json`. Segments use a
//! small character set, so no traversal, separator, control character, hidden name or encoding
//! trick can get through, and the catalog (`streams/`) can never be a target.

use std::path::{Path, PathBuf};

use crate::format::{VersionName, canonical_arch};
use crate::tree::names::{FileRole, LAYOUT_ROOT, METADATA_JSON, classify};

/// Longest accepted segment, in bytes (common file system limit).
const MAX_SEGMENT: usize = 255;
/// Longest accepted target, in bytes.
const MAX_PATH: usize = 1024;

/// Which product folders writes may go to.
#[derive(Clone, Debug)]
pub(crate) enum WriteScope {
    /// The lxd-image-server layout under `images/`.
    Layout,
    /// The local products of a tree.yml: (directory relative to the tree, arch).
    Declared(Vec<(String, String)>),
}

/// A vetted write target, relative to the served root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct WriteTarget {
    /// The product folder, relative to the root, with `/` separators.
    pub product_dir: String,
    /// The product's architecture (a layout folder name, or tree.yml's `arch`): a metadata
    /// tarball written into it must say the same.
    pub arch: String,
    /// What in it.
    pub place: Place,
}

/// What a write target names inside its product folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// `<product>/metadata.json`.
    ProductMetadata,
    /// `<product>/<version>`: a whole version folder (deletes only).
    Version(VersionName),
    /// `<product>/<version>/<file>`.
    File {
        /// The version folder.
        version: VersionName,
        /// The file's name.
        name: String,
    },
}

impl WriteTarget {
    /// The target relative to the root.
    pub fn relative(&self) -> PathBuf {
        let p = PathBuf::from(&self.product_dir);
        match &self.place {
            Place::ProductMetadata => p.join(METADATA_JSON),
            Place::Version(version) => p.join(version.as_str()),
            Place::File { version, name } => p.join(version.as_str()).join(name),
        }
    }

    /// The file's name; `None` for a version folder.
    pub fn file_name(&self) -> Option<&str> {
        match &self.place {
            Place::ProductMetadata => Some(METADATA_JSON),
            Place::Version(_) => None,
            Place::File { name, .. } => Some(name),
        }
    }

    /// What the indexer makes of the file, if it is an image file.
    pub fn role(&self) -> Option<FileRole> {
        self.file_name().and_then(classify)
    }
}

/// Splits a relative path (`/`-separated, already percent-decoded where that applies) into
/// vetted segments.
pub(crate) fn segments(raw: &str) -> Result<Vec<&str>, String> {
    if raw.is_empty() {
        return Err("empty path".into());
    }
    if raw.len() > MAX_PATH {
        return Err(format!("path longer than {MAX_PATH} bytes"));
    }
    if raw.starts_with('/') {
        return Err("absolute path".into());
    }
    raw.split('/')
        .map(|s| check_segment(s).map(|()| s))
        .collect()
}

fn check_segment(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty segment (`//` or a trailing `/`)".into());
    }
    if s == "." || s == ".." {
        return Err(format!("`{s}` segment"));
    }
    if s.starts_with('.') {
        return Err("hidden name".into());
    }
    if s.len() > MAX_SEGMENT {
        return Err(format!("a name longer than {MAX_SEGMENT} bytes"));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '+' | '~')))
    {
        return Err(format!(
            "character {c:?} not allowed (use letters, digits and . _ - : + ~)"
        ));
    }
    Ok(())
}

/// Vets an upload target: a file of a version folder, or a product's metadata.json.
pub(crate) fn upload_target(raw: &str, scope: &WriteScope) -> Result<WriteTarget, String> {
    let target = parse(raw, scope)?;
    let file = target
        .file_name()
        .ok_or("a version folder is not a file: name the file to upload")?;
    if file != METADATA_JSON && classify(file).is_none() {
        return Err(format!(
            "`{file}` is not an image file name ({}, ... or {METADATA_JSON})",
            known_names()
        ));
    }
    Ok(target)
}

/// The common image file names, for messages: `lxd.tar.xz, incus.tar.xz, rootfs.squashfs,
/// root.tar.xz, disk.qcow2`.
fn known_names() -> String {
    use crate::format::{Family, RootfsKind};
    [
        FileRole::meta(Family::Lxd).file_name(),
        FileRole::meta(Family::Incus).file_name(),
        FileRole::Rootfs(RootfsKind::Squashfs).file_name(),
        RootfsKind::RootTarXz.ftype_str(),
        FileRole::Rootfs(RootfsKind::DiskKvm).file_name(),
    ]
    .join(", ")
}

/// Vets a delete target: a file of a version folder, a version folder, or a product's
/// metadata.json.
pub(crate) fn delete_target(raw: &str, scope: &WriteScope) -> Result<WriteTarget, String> {
    parse(raw, scope)
}

fn parse(raw: &str, scope: &WriteScope) -> Result<WriteTarget, String> {
    let segs = segments(raw)?;
    let (product_len, product_dir, arch) = match scope {
        WriteScope::Layout => {
            if segs.first() != Some(&LAYOUT_ROOT) {
                return Err(format!("not under {LAYOUT_ROOT}/"));
            }
            if segs.len() < 6 {
                return Err(format!(
                    "expected {LAYOUT_ROOT}/<os>/<release>/<arch>/<variant>/<YYYYMMDD_HH:MM>/<file>"
                ));
            }
            let (os, release, arch, variant) = (segs[1], segs[2], segs[3], segs[4]);
            if canonical_arch(arch).is_none() {
                return Err(format!(
                    "`{arch}` is not an architecture LXD and Incus know (amd64, arm64, ...)"
                ));
            }
            for name in [os, release, variant] {
                if VersionName::parse(name).is_ok() {
                    return Err(format!(
                        "`{name}` is a version name at the wrong depth; expected {LAYOUT_ROOT}/<os>/<release>/<arch>/<variant>/<version>/<file>"
                    ));
                }
            }
            crate::config::check_alias(&format!("{os}/{release}/{variant}"))
                .map_err(|why| format!("the alias made from these folder names {why}"))?;
            (5, segs[..5].join("/"), arch.to_owned())
        }
        WriteScope::Declared(dirs) => {
            let (dir, arch) = dirs
                .iter()
                .filter(|(d, _)| {
                    let d: Vec<&str> = d.split('/').collect();
                    segs.len() > d.len() && segs[..d.len()] == d[..]
                })
                .max_by_key(|(d, _)| d.len())
                .ok_or("not in a product directory declared in tree.yml")?;
            (dir.split('/').count(), dir.clone(), arch.clone())
        }
    };
    let rest = &segs[product_len..];
    let target = match rest {
        [name] if *name == METADATA_JSON => WriteTarget {
            product_dir,
            arch,
            place: Place::ProductMetadata,
        },
        [version, tail @ ..] if tail.len() <= 1 => {
            let version = VersionName::parse(version).map_err(|e| e.to_string())?;
            WriteTarget {
                product_dir,
                arch,
                place: match tail.first() {
                    Some(name) => Place::File {
                        version,
                        name: (*name).to_owned(),
                    },
                    None => Place::Version(version),
                },
            }
        }
        _ => {
            return Err(format!(
                "expected <product folder>/<YYYYMMDD_HH:MM>/<file> or <product folder>/{METADATA_JSON}"
            ));
        }
    };
    Ok(target)
}

/// Refuses a target whose existing part goes through a symlink (which could lead outside the
/// tree) or through something that is not a folder. Blocking.
pub(crate) fn check_on_disk(root: &Path, relative: &Path) -> Result<(), String> {
    let mut path = root.to_owned();
    let count = relative.components().count();
    for (i, c) in relative.components().enumerate() {
        path.push(c);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symlink",
                    path.strip_prefix(root).unwrap_or(&path).display()
                ));
            }
            Ok(m) if i + 1 < count && !m.is_dir() => {
                return Err(format!(
                    "{} is not a folder",
                    path.strip_prefix(root).unwrap_or(&path).display()
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("cannot check {}: {e}", path.display())),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "images/debian/12/amd64/default/20251123_12:13/lxd.tar.xz";

    #[test]
    fn accepts_the_layout() {
        let t = upload_target(GOOD, &WriteScope::Layout).unwrap();
        assert_eq!(t.product_dir, "images/debian/12/amd64/default");
        let Place::File { version, name } = &t.place else {
            panic!("{t:?}")
        };
        assert_eq!(version.as_str(), "20251123_12:13");
        assert_eq!(name, "lxd.tar.xz");
        assert_eq!(t.file_name(), Some("lxd.tar.xz"));
        for ok in [
            "images/debian/12/amd64/default/20251123_1213/rootfs.squashfs",
            "images/debian/12/arm64/cloud/20251123_12:13/disk.qcow2",
            "images/debian/12/amd64/default/metadata.json",
            "images/debian/12/amd64/default/20251123_12:13/metadata.json",
            "images/alpine/3.20/x86_64/default/20251123_12:13/incus_combined.tar.gz",
        ] {
            upload_target(ok, &WriteScope::Layout).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let v = delete_target(
            "images/debian/12/amd64/default/20251123_12:13",
            &WriteScope::Layout,
        )
        .unwrap();
        assert_eq!(v.file_name(), None);
        assert!(matches!(v.place, Place::Version(_)), "{v:?}");
        assert_eq!(
            v.relative(),
            PathBuf::from("images/debian/12/amd64/default/20251123_12:13")
        );
    }

    #[test]
    fn declared_products() {
        let scope = WriteScope::Declared(vec![(
            "debian/bookworm/amd64/default".into(),
            "amd64".into(),
        )]);
        upload_target(
            "debian/bookworm/amd64/default/20251123_12:13/incus.tar.xz",
            &scope,
        )
        .unwrap();
        assert!(upload_target(GOOD, &scope).is_err());
        assert!(
            upload_target("debian/bookworm/amd64/20251123_12:13/incus.tar.xz", &scope).is_err()
        );
    }

    #[test]
    fn refuses() {
        let bad = [
            "",
            "/images/debian/12/amd64/default/20251123_12:13/lxd.tar.xz",
            "streams/v1/images.json",
            "images/../streams/v1/images.json",
            "images/debian/12/amd64/default/20251123_12:13/../../../../../../streams/v1/index.json",
            "images/debian/12/amd64/default/20251123_12:13/./lxd.tar.xz",
            "images/debian/12/amd64/default/20251123_12:13//lxd.tar.xz",
            "images/debian/12/amd64/default/20251123_12:13/lxd.tar.xz/",
            "images/debian/12/amd64/default/20251123_12:13/.lxd.tar.xz",
            "images/debian/12/amd64/default/20251123_12:13/evil.sh",
            "images/debian/12/amd64/default/20251123_12:13/ssb.json",
            "images/debian/12/amd64/default/20251123_12:13/.ssb-cache.json",
            "images/debian/12/amd64/default/not-a-version/lxd.tar.xz",
            "images/debian/12/amd64/default/20251399_12:13/lxd.tar.xz",
            "images/debian/12/amd64/20251123_12:13/lxd.tar.xz",
            "images/debian/12/bogusarch/default/20251123_12:13/lxd.tar.xz",
            "images/debian/12/amd64/default/20251123_12:13/x/lxd.tar.xz",
            "images/debian\\..\\..\\x/12/amd64/default/20251123_12:13/lxd.tar.xz",
            "images/deb\0ian/12/amd64/default/20251123_12:13/lxd.tar.xz",
            "images/deb\nian/12/amd64/default/20251123_12:13/lxd.tar.xz",
            "images/%2e%2e/12/amd64/default/20251123_12:13/lxd.tar.xz",
            "images/deb ian/12/amd64/default/20251123_12:13/lxd.tar.xz",
            "images/débian/12/amd64/default/20251123_12:13/lxd.tar.xz",
            "images/debian/12/amd64/default",
            "images/debian/12/amd64/default/20251123_12:13",
            ".ssb/tls/key.pem",
        ];
        for raw in bad {
            assert!(
                upload_target(raw, &WriteScope::Layout).is_err(),
                "{raw:?} should be refused"
            );
        }
        let long = format!(
            "images/{}/12/amd64/default/20251123_12:13/lxd.tar.xz",
            "a".repeat(300)
        );
        assert!(upload_target(&long, &WriteScope::Layout).is_err());
        assert!(delete_target("images/debian/12/amd64/default", &WriteScope::Layout).is_err());
        assert!(delete_target("images", &WriteScope::Layout).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_on_the_way_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("images/debian/12")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("images/debian/12/amd64"))
            .unwrap();
        let t = upload_target(GOOD, &WriteScope::Layout).unwrap();
        assert!(check_on_disk(d.path(), &t.relative()).is_err());
        let other = upload_target(
            "images/debian/13/amd64/default/20251123_12:13/lxd.tar.xz",
            &WriteScope::Layout,
        )
        .unwrap();
        check_on_disk(d.path(), &other.relative()).unwrap();
    }
}
