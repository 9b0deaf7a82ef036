//! Direct-URL import (`lxc image import https://server/direct/<alias>`, and Incus' twin): which
//! image an alias and a daemon's architectures name, and the unified tarball to hand out for it.
//!
//! The daemon asks with `LXD-Server-Architectures` (or `Incus-Server-Architectures`) and wants
//! the sha256 and URL of one *unified* tarball back. A version published unified is handed out
//! as it is. A version that only exists split gets a unified tarball built from its files
//! ([`crate::image::unified`]), once: it is cached in the version folder as
//! `.ssb-unified.<split fingerprint>.<sha256>.tar.gz`, so the hash is known without reading it
//! again after a restart, and a replaced metadata or rootfs file (a new fingerprint) gets a new
//! one. The server may then also publish it as the version's `incus_combined.tar.gz` (a hard
//! link to the cache, so no second copy) when that keeps every fingerprint unique.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use crate::format::arch::canonical_arch;
use crate::format::{Family, Ftype, Item, ProductsFile, RootfsKind, Version, VersionName};
use crate::image::unified::UnifiedError;
use crate::tree::FileRole;
use crate::tree::names::unified_cache;

/// What the unified tarball is published as, next to the split files.
mod cache;

pub use cache::{cached, forget_built, forget_stale, publish, unified};

pub const PUBLISHED_NAME: &str = FileRole::Unified(Family::Incus).file_name();

/// A direct-URL request that cannot be answered with an image.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// No product has the alias.
    #[error(
        "no image has the alias `{alias}` on this server (aliases are listed in {})",
        crate::tree::names::products_rel(crate::config::DEFAULT_IMAGES_PATH)
    )]
    UnknownAlias {
        /// The alias asked for.
        alias: String,
    },
    /// Products have the alias, but none for the daemon's architectures.
    #[error("alias `{alias}` has no image for architecture {asked}; it exists for {available}")]
    NoArchitecture {
        /// The alias asked for.
        alias: String,
        /// What the daemon can run, as it said.
        asked: String,
        /// What the alias has.
        available: String,
    },
    /// The alias names only images whose files are not in this tree (URLs, other namespaces).
    #[error(
        "alias `{alias}`: the newest image for {arch} is not stored on this server (its files are elsewhere), so it cannot be handed out whole"
    )]
    NotLocal {
        /// The alias asked for.
        alias: String,
        /// The architecture picked.
        arch: String,
    },
    /// The catalog cannot be read.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::published::UnreadableCatalog),
    /// Building the unified tarball failed.
    #[error("cannot build the unified tarball: {0}")]
    Unified(#[from] UnifiedError),
    /// The version folder does not take a built tarball (a read-only tree, no permission).
    #[error(
        "{product} {version} exists only as split files, and the server cannot keep a unified tarball of it in {}: {source}; make that folder writable by the server, or import the image's unified tarball there (`import FILE.tar.gz`)",
        dir.display()
    )]
    CannotCache {
        /// Product id.
        product: String,
        /// Version name.
        version: String,
        /// The version folder.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The cache cannot be written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DirectError + '_ {
    move |source| DirectError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the unified tarball of the chosen image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The catalog publishes one: hand it out as it is.
    Published {
        /// Catalog path, relative to the tree.
        path: String,
        /// Its sha256 (its fingerprint).
        sha256: String,
    },
    /// Only split files: build (or reuse) the unified tarball.
    Split {
        /// Catalog path of the metadata tarball.
        meta: String,
        /// Catalog path of the rootfs or disk.
        root: String,
        /// Its type.
        kind: RootfsKind,
        /// sha256(meta ‖ root), the split image's fingerprint.
        fingerprint: String,
    },
}

/// The image a direct request resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// Product id.
    pub product: String,
    /// Version name.
    pub version: VersionName,
    /// Architecture, as the catalog names it.
    pub arch: String,
    /// Where its unified tarball comes from.
    pub source: Source,
}

/// A unified tarball ready to download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unified {
    /// Path relative to the tree, `/`-separated (what the URL is made of).
    pub path: String,
    /// Its sha256: the fingerprint the daemon will give the image.
    pub sha256: String,
    /// Set when this call built it.
    pub built: bool,
}

/// True for a catalog path that stays inside the tree: relative, no `..`, not a URL.
fn is_local(path: &str) -> bool {
    !path.contains("://")
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// The unified tarball of `version`, if it can have one: a published unified item, else the
/// preferred split pair (squashfs, then root.tar.xz, then a VM disk).
fn source_of(version: &Version) -> Option<Source> {
    let items: Vec<&Item> = version.items.values().map(|item| &**item).collect();
    if let Some(unified) = items
        .iter()
        .find(|i| matches!(i.ftype, Ftype::Unified(_)) && is_local(&i.path))
    {
        return Some(Source::Published {
            path: unified.path.clone(),
            sha256: unified.sha256.clone(),
        });
    }
    RootfsKind::ALL.into_iter().find_map(|kind| {
        let root = items
            .iter()
            .find(|i| i.ftype == kind.ftype() && is_local(&i.path))?;
        let (meta, fingerprint) = items.iter().find_map(|i| {
            (matches!(i.ftype, Ftype::Meta(_)) && is_local(&i.path))
                .then(|| i.combined_for(kind).map(|fp| (i, fp)))
                .flatten()
        })?;
        Some(Source::Split {
            meta: meta.path.clone(),
            root: root.path.clone(),
            kind,
            fingerprint: fingerprint.to_owned(),
        })
    })
}

/// Picks the image for `alias` and a daemon that runs `archs` (its own order: native first).
/// The alias may also carry an architecture (`debian/12/amd64`), as clients register it. Of
/// the products with the alias and the first architecture that has one, the newest version
/// with a unified or split image wins.
pub fn choose(
    products: &ProductsFile,
    alias: &str,
    archs: &[String],
) -> Result<Choice, DirectError> {
    let same_arch = |a: &str, b: &str| {
        a == b || canonical_arch(a).is_some_and(|c| canonical_arch(b) == Some(c))
    };
    let candidates: Vec<(&String, &crate::format::Product)> = products
        .products
        .iter()
        .filter(|(_, p)| {
            p.aliases.split(',').any(|a| {
                a == alias
                    || alias
                        .strip_prefix(a)
                        .and_then(|rest| rest.strip_prefix('/'))
                        .is_some_and(|arch| same_arch(arch, &p.arch))
            })
        })
        .collect();
    if candidates.is_empty() {
        return Err(DirectError::UnknownAlias {
            alias: alias.to_owned(),
        });
    }
    for asked in archs {
        let mut best: Option<Choice> = None;
        let mut remote_only = false;
        for (pid, product) in candidates.iter().filter(|(_, p)| same_arch(asked, &p.arch)) {
            let newest = product.versions.iter().rev().find_map(|(name, version)| {
                if version.items.values().all(|i| !is_local(&i.path)) {
                    remote_only = true;
                }
                source_of(version).map(|source| (name, source))
            });
            if let Some((name, source)) = newest
                && best.as_ref().is_none_or(|b| *name > b.version)
            {
                best = Some(Choice {
                    product: (*pid).clone(),
                    version: name.clone(),
                    arch: product.arch.clone(),
                    source,
                });
            }
        }
        match best {
            Some(choice) => return Ok(choice),
            None if remote_only => {
                return Err(DirectError::NotLocal {
                    alias: alias.to_owned(),
                    arch: asked.clone(),
                });
            }
            None => {}
        }
    }
    let available: BTreeSet<&str> = candidates.iter().map(|(_, p)| p.arch.as_str()).collect();
    Err(DirectError::NoArchitecture {
        alias: alias.to_owned(),
        asked: archs.join(", "),
        available: available.into_iter().collect::<Vec<_>>().join(", "),
    })
}

/// The (split fingerprint, sha256) a cached unified tarball's name holds, if it is one.
fn cache_name_parts(name: &str) -> Option<(&str, &str)> {
    unified_cache::parts(name)
}

/// True for the name of a cached unified tarball: servable, though hidden from the scans.
pub fn is_cache_name(name: &str) -> bool {
    cache_name_parts(name).is_some()
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{dir}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::cache::cannot_cache;
    use super::*;
    use crate::catalog::inventory::load_catalog;

    #[test]
    fn cache_names() {
        let h = "0123456789abcdef".repeat(4);
        assert!(is_cache_name(&format!(".ssb-unified.{h}.{h}.tar.gz")));
        assert!(!is_cache_name(&format!(".ssb-unified.{h}.tar.gz")));
        assert!(!is_cache_name(&format!(
            ".ssb-unified.{h}.{}.tar.gz",
            h.to_uppercase()
        )));
        assert!(!is_cache_name(&format!(
            ".ssb-unified-partial.{h}.{h}.tar.gz"
        )));
        assert!(!is_cache_name(".ssb-cache.json"));
    }

    /// A tree whose catalog publishes one split squashfs image (fingerprint `fp`) in
    /// `images/p/1/amd64/default/<V>/`, and a built cache file `unified` holding `sha`.
    fn tree_with(fp: &str, sha: &str) -> (tempfile::TempDir, Choice, Unified) {
        const V: &str = "20250101_10:00";
        let dir = tempfile::tempdir().unwrap();
        let vdir = format!("images/p/1/amd64/default/{V}");
        std::fs::create_dir_all(dir.path().join(&vdir)).unwrap();
        std::fs::create_dir_all(dir.path().join("streams/v1")).unwrap();
        let meta = format!("{vdir}/incus.tar.xz");
        let root = format!("{vdir}/rootfs.squashfs");
        let products = serde_json::json!({
            "content_id": "images", "datatype": "image-downloads", "format": "products:1.0",
            "products": {"p:1:amd64:default": {
                "aliases": "p/1", "arch": "amd64", "os": "p", "release": "1", "release_title": "1",
                "versions": {V: {"items": {
                    "incus.tar.xz": {"ftype": "incus.tar.xz", "path": meta, "sha256": "00", "size": 1,
                                     "combined_squashfs_sha256": fp},
                    "root.squashfs": {"ftype": "squashfs", "path": root, "sha256": "11", "size": 1}
                }}}
            }}
        });
        let index = serde_json::json!({
            "format": "index:1.0",
            "index": {"images": {"datatype": "image-downloads", "format": "products:1.0",
                                 "path": "streams/v1/images.json", "products": ["p:1:amd64:default"]}}
        });
        std::fs::write(
            dir.path().join("streams/v1/images.json"),
            products.to_string(),
        )
        .unwrap();
        std::fs::write(dir.path().join("streams/v1/index.json"), index.to_string()).unwrap();
        let (_, catalog, _) = load_catalog(dir.path()).unwrap();
        let choice = choose(&catalog, "p/1", &["x86_64".to_owned()]).unwrap();
        let name = unified_cache::name(fp, sha);
        std::fs::write(dir.path().join(&vdir).join(&name), b"unified bytes").unwrap();
        let unified = Unified {
            path: format!("{vdir}/{name}"),
            sha256: sha.to_owned(),
            built: true,
        };
        (dir, choice, unified)
    }

    #[test]
    fn publishes_a_new_fingerprint_as_a_hard_link() {
        let (fp, sha) = ("a".repeat(64), "b".repeat(64));
        let (dir, choice, unified) = tree_with(&fp, &sha);
        assert_eq!(
            cached(
                dir.path(),
                match &choice.source {
                    Source::Split { meta, .. } => meta,
                    other => panic!("{other:?}"),
                },
                &fp
            ),
            Some(Unified {
                built: false,
                ..unified.clone()
            })
        );
        let (product_dir, known) = publish(dir.path(), &choice, &unified).unwrap().unwrap();
        assert_eq!(product_dir, "images/p/1/amd64/default");
        assert_eq!(known.file, PUBLISHED_NAME);
        assert_eq!(known.sha256, sha);
        let link = dir
            .path()
            .join(&product_dir)
            .join(&known.version)
            .join(PUBLISHED_NAME);
        assert_eq!(std::fs::read(link).unwrap(), b"unified bytes");
        // Published once: a second call leaves the existing file alone.
        assert!(publish(dir.path(), &choice, &unified).unwrap().is_none());
    }

    #[test]
    fn never_publishes_a_fingerprint_the_catalog_has() {
        // The built tarball's sha256 equals a fingerprint already published (here the split
        // image's own): publishing it would make both unreachable.
        let fp = "c".repeat(64);
        let (dir, choice, unified) = tree_with(&fp, &fp);
        assert!(publish(dir.path(), &choice, &unified).unwrap().is_none());
        let vdir = dir.path().join(parent_of(&unified.path));
        assert!(!vdir.join(PUBLISHED_NAME).exists());
    }

    #[test]
    fn forgetting_removes_stale_builds_and_their_published_link() {
        let (fp, sha) = ("a".repeat(64), "b".repeat(64));
        let (dir, choice, unified) = tree_with(&fp, &sha);
        publish(dir.path(), &choice, &unified).unwrap().unwrap();
        let vdir = dir.path().join(parent_of(&unified.path));
        std::fs::write(vdir.join("incus.tar.xz"), b"meta").unwrap();
        // Still the version's fingerprint: kept.
        assert!(
            forget_built(&vdir, &BTreeSet::from([fp.as_str()]))
                .unwrap()
                .is_empty()
        );
        let (_, catalog, _) = load_catalog(dir.path()).unwrap();
        assert!(forget_stale(dir.path(), &catalog, None).unwrap().is_empty());
        // The split files changed: a new fingerprint, the build from the old ones goes.
        let mut removed = forget_built(&vdir, &BTreeSet::from(["d".repeat(64).as_str()])).unwrap();
        removed.sort();
        let cache = unified.path.rsplit('/').next().unwrap().to_owned();
        assert_eq!(removed, [cache, PUBLISHED_NAME.to_owned()]);
        let left: Vec<_> = std::fs::read_dir(&vdir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["incus.tar.xz"]);
        assert!(
            forget_built(&vdir.join("gone"), &BTreeSet::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn forgetting_keeps_an_imported_unified_original() {
        let (fp, sha) = ("a".repeat(64), "b".repeat(64));
        let (dir, _, unified) = tree_with(&fp, &sha);
        let vdir = dir.path().join(parent_of(&unified.path));
        // Same bytes, but a file of its own: not one we built.
        std::fs::write(vdir.join(PUBLISHED_NAME), b"unified bytes").unwrap();
        assert_eq!(forget_built(&vdir, &BTreeSet::new()).unwrap().len(), 1);
        assert!(vdir.join(PUBLISHED_NAME).exists());
    }

    #[test]
    fn a_catalog_without_the_build_s_fingerprint_makes_it_stale() {
        let (fp, sha) = ("a".repeat(64), "b".repeat(64));
        // The catalog names fingerprint `e…`; the cache was built for `a…`.
        let (dir, choice, unified) = tree_with(&"e".repeat(64), &sha);
        let vdir = dir.path().join(parent_of(&unified.path));
        let old = vdir.join(unified.path.rsplit('/').next().unwrap());
        let built = vdir.join(unified_cache::name(&fp, &sha));
        std::fs::rename(&old, &built).unwrap();
        let stale = Unified {
            path: format!(
                "{}/{}",
                parent_of(&unified.path),
                built.file_name().unwrap().to_string_lossy()
            ),
            ..unified
        };
        publish(dir.path(), &choice, &stale).unwrap().unwrap();
        let (_, catalog, _) = load_catalog(dir.path()).unwrap();
        assert_eq!(
            forget_stale(dir.path(), &catalog, None).unwrap(),
            [parent_of(&stale.path)]
        );
        assert!(!vdir.join(PUBLISHED_NAME).exists() && !built.exists());
    }

    #[test]
    fn a_folder_that_takes_no_build_gets_advice() {
        let (_dir, choice, _) = tree_with(&"a".repeat(64), &"b".repeat(64));
        let dir = Path::new("/srv/images/p/1/amd64/default/20250101_10:00");
        let e = cannot_cache(&choice, dir)(std::io::ErrorKind::ReadOnlyFilesystem.into());
        assert!(matches!(e, DirectError::CannotCache { .. }), "{e:?}");
        let message = e.to_string();
        assert!(
            message.contains("p:1:amd64:default 20250101_10:00 exists only as split files")
                && message.contains(&dir.display().to_string())
                && message.contains("make that folder writable"),
            "{message}"
        );
        let e = cannot_cache(&choice, dir)(std::io::ErrorKind::PermissionDenied.into());
        assert!(matches!(e, DirectError::CannotCache { .. }), "{e:?}");
        let e = cannot_cache(&choice, dir)(std::io::ErrorKind::StorageFull.into());
        assert!(matches!(e, DirectError::Io { .. }), "{e:?}");
    }

    #[test]
    fn local_paths() {
        assert!(is_local("images/a/b/20251123_12:13/incus.tar.xz"));
        assert!(!is_local("../other/x/incus.tar.xz"));
        assert!(!is_local("/abs/x"));
        assert!(!is_local("https://example.org/x"));
    }
}
