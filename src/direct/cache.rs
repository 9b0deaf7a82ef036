//! The unified tarballs built for split-only images: cached in their version folder under a
//! name holding the split fingerprint and their own sha256, built once (reproducibly), published
//! as the version's unified item when that keeps fingerprints unique, and forgotten when the
//! split files they came from change.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use sha2::Digest as _;

use super::{
    Choice, DirectError, PUBLISHED_NAME, Source, Unified, cache_name_parts, io, is_cache_name,
    is_local, join, parent_of,
};
use crate::catalog::inventory::load_catalog;
use crate::format::{Ftype, ProductsFile, RootfsKind};
use crate::hash::KnownDigest;
use crate::image::unified::write_unified;
use crate::tree::FileSig;
use crate::tree::atomic::HashedTemp;
use crate::tree::names::unified_cache;

/// The cached unified tarball of a split image, if it was built before.
pub fn cached(root: &Path, meta: &str, fingerprint: &str) -> Option<Unified> {
    let dir = parent_of(meta);
    std::fs::read_dir(root.join(dir))
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (_, sha) = cache_name_parts(&name).filter(|(fp, _)| *fp == fingerprint)?;
            Some(Unified {
                sha256: sha.to_owned(),
                path: join(dir, &name),
                built: false,
            })
        })
}

/// The error for a version folder that does not take a build: a read-only tree or a folder the
/// server may not write gets advice, anything else is plain I/O.
pub(super) fn cannot_cache<'a>(
    choice: &'a Choice,
    dir: &'a Path,
) -> impl FnOnce(std::io::Error) -> DirectError + 'a {
    move |source| {
        use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
        match source.kind() {
            PermissionDenied | ReadOnlyFilesystem => DirectError::CannotCache {
                product: choice.product.clone(),
                version: choice.version.to_string(),
                dir: dir.to_owned(),
                source,
            },
            _ => io(dir)(source),
        }
    }
}

/// The unified tarball for `choice`: the published one, the cached one, or a new one built
/// into the version folder (temp file, fsync, rename; caches of older split files removed).
/// Blocking; callers serialize builds.
pub fn unified(root: &Path, choice: &Choice) -> Result<Unified, DirectError> {
    let (meta, root_file, kind, fingerprint) = match &choice.source {
        Source::Published { path, sha256 } => {
            return Ok(Unified {
                path: path.clone(),
                sha256: sha256.clone(),
                built: false,
            });
        }
        Source::Split {
            meta,
            root: root_file,
            kind,
            fingerprint,
        } => (meta, root_file, *kind, fingerprint),
    };
    if let Some(hit) = cached(root, meta, fingerprint) {
        return Ok(hit);
    }
    let rel_dir = parent_of(meta);
    let dir = root.join(rel_dir);
    let started = std::time::Instant::now();
    let mut partial =
        HashedTemp::new(&dir, unified_cache::PARTIAL_PREFIX).map_err(cannot_cache(choice, &dir))?;
    let partial_path = partial.path().to_owned();
    {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut partial);
        write_unified(&root.join(meta), &root.join(root_file), kind, &mut out)?;
        out.flush().map_err(io(&partial_path))?;
    }
    let (tmp, sha) = partial.seal().map_err(io(&partial_path))?;
    let sha256 = hex::encode(sha.finalize());
    let name = unified_cache::name(fingerprint, &sha256);
    let dest = dir.join(&name);
    tmp.persist(&dest).map_err(|e| DirectError::Io {
        path: dest.clone(),
        source: e.error,
    })?;
    // Caches made from earlier files of this version are stale now.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.filter_map(Result::ok) {
            let other = entry.file_name().to_string_lossy().into_owned();
            if other != name && is_cache_name(&other) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    crate::tree::atomic::sync_dir(&dir).map_err(io(&dir))?;
    tracing::info!(
        "built the unified tarball of {} {} ({}, {:.1} s)",
        choice.product,
        choice.version,
        name,
        started.elapsed().as_secs_f64()
    );
    Ok(Unified {
        path: join(rel_dir, &name),
        sha256,
        built: true,
    })
}

/// After a re-index that published `products`: forgets the unified tarballs built from split
/// files the catalog no longer has, because a metadata or rootfs file was replaced or deleted
/// since. They hold the old content, and a published one would keep an image in the catalog
/// that the version's files no longer make. Returns the version folders (relative to `root`)
/// whose published [`PUBLISHED_NAME`] went: the catalog needs another re-index. With `only`,
/// the versions of those products alone are looked at (the others' files did not change).
pub fn forget_stale(
    root: &Path,
    products: &ProductsFile,
    only: Option<&BTreeSet<String>>,
) -> Result<Vec<String>, DirectError> {
    let mut republish = Vec::new();
    for version in products
        .products
        .iter()
        .filter(|(id, _)| only.is_none_or(|o| o.contains(*id)))
        .flat_map(|(_, p)| p.versions.values())
    {
        let Some(dir) = version
            .items
            .values()
            .map(|i| i.path.as_str())
            .find(|p| is_local(p))
            .map(parent_of)
        else {
            continue;
        };
        let current: BTreeSet<&str> = version
            .items
            .values()
            .flat_map(|item| item.combined_fingerprints())
            .collect();
        let removed = forget_built(&root.join(dir), &current)?;
        if !removed.is_empty() {
            tracing::info!(
                "{dir}: removed the unified tarball built from its earlier files ({})",
                removed.join(", ")
            );
        }
        if removed.iter().any(|n| n == PUBLISHED_NAME) {
            republish.push(dir.to_owned());
        }
    }
    Ok(republish)
}

/// Removes the cached unified tarballs of `version_dir` built from split files whose
/// fingerprint is not in `current`, and the version's [`PUBLISHED_NAME`] when it is one of them
/// (the same inode; an imported original is a file of its own and stays). The next direct
/// request builds a new one. Returns the names removed.
pub fn forget_built(
    version_dir: &Path,
    current: &BTreeSet<&str>,
) -> Result<Vec<String>, DirectError> {
    use std::os::unix::fs::MetadataExt as _;
    let entries = match std::fs::read_dir(version_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(version_dir)(e)),
    };
    let mut stale = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(version_dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((fp, _)) = cache_name_parts(&name)
            && !current.contains(fp)
        {
            let meta = entry.metadata().map_err(io(&entry.path()))?;
            stale.push((name, (meta.dev(), meta.ino())));
        }
    }
    let mut removed = Vec::new();
    let published = version_dir.join(PUBLISHED_NAME);
    if let Ok(meta) = std::fs::symlink_metadata(&published)
        && stale.iter().any(|(_, id)| *id == (meta.dev(), meta.ino()))
    {
        std::fs::remove_file(&published).map_err(io(&published))?;
        removed.push(PUBLISHED_NAME.to_owned());
    }
    for (name, _) in stale {
        let path = version_dir.join(&name);
        std::fs::remove_file(&path).map_err(io(&path))?;
        removed.push(name);
    }
    if !removed.is_empty() {
        crate::tree::atomic::sync_dir(version_dir).map_err(io(version_dir))?;
    }
    Ok(removed)
}

/// Every fingerprint the catalog publishes: split combined hashes and unified sha256s.
fn fingerprints(products: &ProductsFile) -> BTreeSet<&str> {
    let mut out = BTreeSet::new();
    for item in products
        .products
        .values()
        .flat_map(|p| p.versions.values())
        .flat_map(|v| v.items.values())
    {
        match item.ftype {
            Ftype::Unified(_) => {
                out.insert(item.sha256.as_str());
            }
            Ftype::Meta(_) => out.extend(item.combined_fingerprints()),
            _ => {}
        }
    }
    out
}

/// Publishes a built container tarball as the version's [`PUBLISHED_NAME`] (a hard link to the
/// cache), unless the version has one, the image is a VM (LXD and Incus before 7.1 would take a
/// unified VM for a container), or its sha256 is already a fingerprint in the catalog. Returns
/// the product folder (relative to `root`) and the digest to record, so that the re-index does
/// not read the file again; `None` when nothing was published.
pub fn publish(
    root: &Path,
    choice: &Choice,
    unified: &Unified,
) -> Result<Option<(String, KnownDigest)>, DirectError> {
    let Source::Split { meta, kind, .. } = &choice.source else {
        return Ok(None);
    };
    if *kind == RootfsKind::DiskKvm {
        return Ok(None);
    }
    let rel_dir = parent_of(meta);
    let dest = root.join(rel_dir).join(PUBLISHED_NAME);
    if dest.exists() {
        return Ok(None);
    }
    let (_, products, _) = load_catalog(root)?;
    if fingerprints(&products).contains(unified.sha256.as_str()) {
        tracing::warn!(
            "{} {}: not publishing its unified tarball: fingerprint {} is already in the catalog",
            choice.product,
            choice.version,
            unified.sha256
        );
        return Ok(None);
    }
    std::fs::hard_link(root.join(&unified.path), &dest).map_err(io(&dest))?;
    crate::tree::atomic::sync_dir(&root.join(rel_dir)).map_err(io(&dest))?;
    let sig = FileSig::read(&dest).map_err(io(&dest))?;
    let product_dir = parent_of(rel_dir).to_owned();
    Ok(Some((
        product_dir,
        KnownDigest {
            version: choice.version.to_string(),
            file: PUBLISHED_NAME.to_owned(),
            sig,
            sha256: unified.sha256.clone(),
            combined: Vec::new(),
        },
    )))
}
