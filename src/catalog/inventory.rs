//! The published catalog against the tree: `verify` re-hashes every item (sizes, sha256 and the
//! combined fingerprints, each file read once) and finds files the catalog does not reference;
//! `prune` deletes those; `list` shows what is published.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::Serialize;

use crate::catalog::products::Tree;
pub use crate::catalog::published::{CatalogCache, load_catalog};
use crate::format::{Family, Ftype, ImageType, ProductsFile};
use crate::hash::{HashError, Sha256State, read_meta_prefix, sha256_with_prefixes};
use crate::image::check::{check_rootfs, check_unified};
use crate::tree::{TreeError, scan_product};

/// The catalog cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A catalog file is missing or not valid JSON.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::published::UnreadableCatalog),
    /// The tree cannot be read.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The tree's publish lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] crate::tree::lock::LockError),
}

/// One thing wrong with the published tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// An item's file does not exist.
    Missing {
        /// Product id.
        product: String,
        /// Version.
        version: String,
        /// Item path.
        path: String,
    },
    /// An item's file resolves (through a symlink) outside the tree or onto a hidden name: the
    /// server refuses to send it.
    OutsideTree {
        /// Item path.
        path: String,
        /// Where it resolves to.
        resolved: String,
    },
    /// An item's file has another size.
    Size {
        /// Item path.
        path: String,
        /// Published.
        expected: u64,
        /// On disk.
        actual: u64,
    },
    /// An item's file has another sha256.
    Sha256 {
        /// Item path.
        path: String,
        /// Published.
        expected: String,
        /// On disk.
        actual: String,
    },
    /// A published fingerprint does not match sha256(meta ‖ rootfs) on disk.
    Combined {
        /// Metadata item path.
        meta: String,
        /// Rootfs item path.
        rootfs: String,
        /// Published.
        expected: String,
        /// On disk.
        actual: String,
    },
    /// A file could not be read.
    Unreadable {
        /// Item path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A published image file that breaks the image rules (empty, foreign or truncated data, a
    /// metadata tarball that cannot be read or is for another architecture): clients cannot use
    /// it.
    BadImage {
        /// Item path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A version folder the catalog leaves out because a file of it breaks the image rules
    /// (`publish` and the server's re-index say so too).
    Rejected {
        /// Product id.
        product: String,
        /// The version folder, relative to the tree.
        path: String,
        /// Why.
        reason: String,
    },
    /// A temp file a crash or a kill left, which no live writer holds (`prune` removes it).
    Leftover {
        /// The file, relative to the tree.
        path: String,
        /// Its size.
        size: u64,
    },
    /// A delta that does not turn its base version's squashfs into this version's.
    Delta {
        /// Delta item path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An image file in a product folder that the catalog does not reference.
    Orphan {
        /// The file or folder, relative to the tree.
        path: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Missing {
                product,
                version,
                path,
            } => {
                write!(f, "missing: {path} (product {product}, version {version})")
            }
            Problem::Size {
                path,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "wrong size: {path}: published {expected} bytes, found {actual}"
                )
            }
            Problem::Sha256 {
                path,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "wrong sha256: {path}: published {expected}, found {actual}"
                )
            }
            Problem::Combined {
                meta,
                rootfs,
                expected,
                actual,
            } => write!(
                f,
                "wrong fingerprint: sha256({meta} ‖ {rootfs}) is {actual}, published {expected}"
            ),
            Problem::Unreadable { path, reason } => write!(f, "unreadable: {path}: {reason}"),
            Problem::Orphan { path } => write!(f, "not in the catalog: {path}"),
            Problem::Delta { path, reason } => write!(f, "broken delta: {path}: {reason}"),
            Problem::BadImage { path, reason } => write!(f, "broken image file: {path}: {reason}"),
            Problem::Rejected {
                product,
                path,
                reason,
            } => write!(
                f,
                "left out of the catalog: {path} (product {product}): {reason}; fix or remove it"
            ),
            Problem::Leftover { path, size } => write!(
                f,
                "left by an interrupted write: {path} ({size} bytes; `prune --yes` removes it)"
            ),
            Problem::OutsideTree { path, resolved } => write!(
                f,
                "outside the tree: {path} resolves to {resolved}, which the server refuses to send"
            ),
        }
    }
}

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Distinct files checked.
    pub files: usize,
    /// Fingerprints checked.
    pub fingerprints: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Everything wrong.
    pub problems: Vec<Problem>,
}

/// `base` joined with a catalog path, `..` resolved lexically.
fn resolve(base: &Path, rel: &str) -> PathBuf {
    let mut out = base.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

fn is_url(path: &str) -> bool {
    path.starts_with("http://") || path.starts_with("https://")
}

/// Re-hashes every item of the published catalog of `target` and looks for orphans.
pub fn verify(
    target: &Path,
    tree: &Tree,
    progress: &dyn Fn(u64),
) -> Result<VerifyReport, InventoryError> {
    let (_, products, _) = load_catalog(target)?;
    let mut report = VerifyReport::default();
    let real_target = target.canonicalize().map_err(|source| TreeError {
        path: target.to_owned(),
        source,
    })?;
    // A file is published by several items (lxd/incus twins) and in one version only; check it
    // once per version.
    for (pid, product) in &products.products {
        for (vname, version) in &product.versions {
            let mut by_path: BTreeMap<&str, Vec<&crate::format::Item>> = BTreeMap::new();
            for item in version.items.values() {
                by_path.entry(item.path.as_str()).or_default().push(item);
            }
            let mut present: BTreeSet<&str> = BTreeSet::new();
            for (&path, items) in &by_path {
                if is_url(path) {
                    continue;
                }
                let file = resolve(target, path);
                // Items in a sibling namespace (`../ns/…`, from a tree `prefix`) are that
                // tree's to check; a file of this tree must not escape it.
                let inside = !path.starts_with("../");
                if inside
                    && let Some(real) =
                        crate::tree::resolves_outside(&real_target, &file, &crate::tree::only_plain)
                {
                    report.problems.push(Problem::OutsideTree {
                        path: path.to_owned(),
                        resolved: real.display().to_string(),
                    });
                    continue;
                }
                match std::fs::metadata(&file) {
                    Ok(m) if m.is_file() => {
                        present.insert(path);
                        let size = items[0].size;
                        if m.len() != size {
                            report.problems.push(Problem::Size {
                                path: path.to_owned(),
                                expected: size,
                                actual: m.len(),
                            });
                        }
                    }
                    _ => report.problems.push(Problem::Missing {
                        product: pid.clone(),
                        version: vname.to_string(),
                        path: path.to_owned(),
                    }),
                }
            }
            // Metadata first: their states seed the fingerprints.
            let mut states: BTreeMap<&str, Sha256State> = BTreeMap::new();
            let is_meta = |i: &crate::format::Item| matches!(i.ftype, Ftype::Meta(_));
            for (&path, items) in by_path
                .iter()
                .filter(|(p, it)| present.contains(**p) && it.iter().any(|i| is_meta(i)))
            {
                match read_meta_prefix(&resolve(target, path)) {
                    Ok(meta) => {
                        progress(items[0].size);
                        report.files += 1;
                        report.bytes += items[0].size;
                        check_sha(&mut report, path, &items[0].sha256, &meta.sha256);
                        if let Some(problem) = meta.metadata.arch_problem(&product.arch) {
                            report.problems.push(Problem::BadImage {
                                path: path.to_owned(),
                                reason: problem,
                            });
                        }
                        states.insert(path, meta.state);
                    }
                    Err(HashError::Metadata(e)) => report.problems.push(Problem::BadImage {
                        path: path.to_owned(),
                        reason: e.problem,
                    }),
                    Err(e) => unreadable(&mut report, path, &e),
                }
            }
            for (&path, items) in by_path
                .iter()
                .filter(|(p, it)| present.contains(**p) && !it.iter().any(|i| is_meta(i)))
            {
                // Which metadata files claim a fingerprint with this rootfs.
                let kind = items.iter().find_map(|i| i.ftype.rootfs_kind());
                let file = resolve(target, path);
                let checked = match kind {
                    Some(kind) => check_rootfs(kind, &file),
                    None if items.iter().any(|i| matches!(i.ftype, Ftype::Unified(_))) => {
                        check_unified(&file)
                    }
                    None if items.iter().any(|i| i.ftype == Ftype::LxcMeta) => {
                        crate::image::check::check_lxc_meta(&file)
                    }
                    None => Ok(()),
                };
                if let Err(e) = checked {
                    report.problems.push(Problem::BadImage {
                        path: path.to_owned(),
                        reason: e.problem,
                    });
                }
                let mut claims: Vec<(&str, String)> = Vec::new();
                if let Some(kind) = kind {
                    let mut seen = BTreeSet::new();
                    for meta in version.items.values().filter(|i| is_meta(i)) {
                        if let Some(fp) = meta.combined_for(kind)
                            && states.contains_key(meta.path.as_str())
                            && seen.insert((meta.path.as_str(), fp))
                        {
                            claims.push((meta.path.as_str(), fp.to_owned()));
                        }
                    }
                }
                let prefixes = claims.iter().map(|(m, _)| states[m].clone()).collect();
                match sha256_with_prefixes(&file, prefixes, progress) {
                    Ok((sha, combined)) => {
                        report.files += 1;
                        report.bytes += items[0].size;
                        check_sha(&mut report, path, &items[0].sha256, &sha);
                        for ((meta, expected), actual) in claims.into_iter().zip(combined) {
                            report.fingerprints += 1;
                            if expected != actual {
                                report.problems.push(Problem::Combined {
                                    meta: meta.to_owned(),
                                    rootfs: path.to_owned(),
                                    expected,
                                    actual,
                                });
                            }
                        }
                    }
                    Err(e) => unreadable(&mut report, path, &e),
                }
            }
        }
    }
    check_deltas(target, &products, &mut report, progress);
    report
        .problems
        .extend(orphans(target, tree, &products)?.into_iter().map(|u| {
            let path = u.path.strip_prefix(target).unwrap_or(&u.path);
            let path = path.display().to_string();
            match u.rejected {
                Some(reason) => Problem::Rejected {
                    product: u.product,
                    path,
                    reason,
                },
                None => Problem::Orphan { path },
            }
        }));
    report.problems.extend(
        crate::tree::atomic::stale_temp_files(target)
            .into_iter()
            .map(|s| Problem::Leftover {
                path: s
                    .path
                    .strip_prefix(target)
                    .unwrap_or(&s.path)
                    .display()
                    .to_string(),
                size: s.size,
            }),
    );
    Ok(report)
}

/// Applies every published delta to its base version's squashfs (`xdelta3 -d`, as the daemons
/// do) and compares the result with this version's squashfs.
fn check_deltas(
    target: &Path,
    products: &ProductsFile,
    report: &mut VerifyReport,
    progress: &dyn Fn(u64),
) {
    let policy = crate::delta::DeltaPolicy::default();
    let squashfs = |v: &crate::format::Version| {
        v.items
            .values()
            .find(|i| i.ftype == Ftype::Squashfs)
            .cloned()
    };
    for product in products.products.values() {
        for version in product.versions.values() {
            for delta in version
                .items
                .values()
                .filter(|i| i.ftype == Ftype::SquashfsDelta && !is_url(&i.path))
            {
                let problem = |reason: String| Problem::Delta {
                    path: delta.path.clone(),
                    reason,
                };
                let base = delta.delta_base.as_ref().and_then(|b| {
                    product
                        .versions
                        .iter()
                        .find(|(name, _)| name.as_str() == b)
                        .and_then(|(_, v)| squashfs(v))
                });
                let (Some(base), Some(new)) = (base, squashfs(version)) else {
                    report.problems.push(problem(format!(
                        "its base version {} or this version has no squashfs in the catalog",
                        delta.delta_base.as_deref().unwrap_or("(none)")
                    )));
                    continue;
                };
                if is_url(&base.path) {
                    continue;
                }
                let delta_file = resolve(target, &delta.path);
                if !delta_file.is_file() {
                    continue; // reported as missing already
                }
                match crate::delta::decoded_sha256(
                    &policy,
                    &resolve(target, &base.path),
                    &delta_file,
                ) {
                    Ok(sha) if sha == new.sha256 => progress(new.size),
                    Ok(sha) => report.problems.push(problem(format!(
                        "applied to {} it gives sha256 {sha}, not this version's squashfs ({})",
                        base.path, new.sha256
                    ))),
                    Err(e) => report.problems.push(problem(e.to_string())),
                }
            }
        }
    }
}

fn check_sha(report: &mut VerifyReport, path: &str, expected: &str, actual: &str) {
    if expected != actual {
        report.problems.push(Problem::Sha256 {
            path: path.to_owned(),
            expected: expected.to_owned(),
            actual: actual.to_owned(),
        });
    }
}

fn unreadable(report: &mut VerifyReport, path: &str, e: &HashError) {
    report.problems.push(Problem::Unreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    });
}

/// An image file or version folder that the catalog does not reference.
#[derive(Clone, Debug)]
pub struct Unpublished {
    /// The product it belongs to.
    pub product: String,
    /// The file or version folder.
    pub path: PathBuf,
    /// For a whole version left out: why it cannot be published, when a file of it breaks the
    /// image rules (`None`: it could be, it is only not published yet).
    pub rejected: Option<String>,
}

/// Image files and version folders in the product folders of `tree` that `products` does not
/// reference. Hidden products and remote ones (`prefix_path`) are not looked at; other files
/// (build logs, definitions, signatures) are not image files and never orphans.
pub fn orphans(
    target: &Path,
    tree: &Tree,
    products: &ProductsFile,
) -> Result<Vec<Unpublished>, InventoryError> {
    let referenced: BTreeSet<PathBuf> = products
        .products
        .values()
        .flat_map(|p| p.versions.values())
        .flat_map(|v| v.items.values())
        .filter(|i| !is_url(&i.path))
        .map(|i| resolve(target, &i.path))
        .collect();
    let real_target = target.canonicalize().map_err(|source| TreeError {
        path: target.to_owned(),
        source,
    })?;
    let mut out = Vec::new();
    for spec in tree
        .config
        .products
        .iter()
        .filter(|p| !p.hidden && p.prefix_path.is_none())
    {
        let dir = target.join(&spec.directory);
        if !dir.is_dir() {
            continue;
        }
        let mut w = Vec::new();
        for v in scan_product(&dir, &mut w)? {
            let unreferenced: Vec<&PathBuf> = v
                .files
                .iter()
                .filter(|f| !referenced.contains(&f.path))
                .map(|f| &f.path)
                .collect();
            // A delta the catalog does not name (its base is gone, or beyond `deltas:`) goes
            // with `prune`, unless its whole version does.
            let stale_deltas: Vec<&PathBuf> = v
                .deltas
                .iter()
                .map(|d| &d.path)
                .filter(|p| !referenced.contains(*p))
                .collect();
            // LXC's metadata tarball left out of a published version (one classic LXC cannot
            // use, which publish warned about) is the version's business, not an orphan.
            let lxc_meta_only = |u: &&PathBuf| {
                v.files
                    .iter()
                    .any(|f| f.path == **u && f.role == crate::tree::FileRole::LxcMeta)
            };
            let unreferenced: Vec<&PathBuf> = if unreferenced.len() == v.files.len() {
                unreferenced
            } else {
                unreferenced
                    .into_iter()
                    .filter(|u| !lxc_meta_only(u))
                    .collect()
            };
            let unpublished = |path: PathBuf, rejected| Unpublished {
                product: spec.name.clone(),
                path,
                rejected,
            };
            if unreferenced.len() < v.files.len() || v.files.is_empty() {
                out.extend(
                    stale_deltas
                        .into_iter()
                        .map(|p| unpublished(p.clone(), None)),
                );
            }
            if unreferenced.is_empty() && v.unreadable.is_none() {
                continue;
            }
            if unreferenced.len() == v.files.len() {
                // Nothing of this version is published: the whole folder is an orphan, or
                // a version the catalog had to leave out.
                let rejected = crate::catalog::manifest::check_version(
                    &spec.name,
                    &spec.arch,
                    &real_target,
                    &v,
                )
                .err()
                .map(|e| e.to_string());
                out.push(unpublished(v.path.clone(), rejected));
            } else {
                out.extend(
                    unreferenced
                        .into_iter()
                        .map(|p| unpublished(p.clone(), None)),
                );
            }
        }
    }
    Ok(out)
}

/// What `prune` did (or would do).
#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    /// Removed (or to remove), relative to the tree.
    pub removed: Vec<String>,
    /// Failures.
    pub failed: Vec<String>,
}

/// Removes what [`orphans`] finds and the temp files crashes left, or only reports them when
/// `dry_run`. Product folders themselves and files that are not image files are left alone.
pub fn prune(target: &Path, tree: &Tree, dry_run: bool) -> Result<PruneReport, InventoryError> {
    let (_, products, _) = load_catalog(target)?;
    let _lock = crate::tree::lock::lock_tree(target)?;
    let mut report = PruneReport::default();
    // Temp files a crash or a kill left, which no live writer holds, go too.
    let stale = crate::tree::atomic::stale_temp_files(target)
        .into_iter()
        .map(|s| s.path);
    let unpublished = orphans(target, tree, &products)?
        .into_iter()
        .map(|u| u.path);
    for path in unpublished.chain(stale) {
        let rel = path
            .strip_prefix(target)
            .unwrap_or(&path)
            .display()
            .to_string();
        if dry_run {
            report.removed.push(rel);
            continue;
        }
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            // A file's detached signature goes with it.
            let asc = crate::tree::names::signature_path(&path);
            std::fs::remove_file(&path).and_then(|()| match std::fs::remove_file(&asc) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            })
        };
        match result {
            Ok(()) => report.removed.push(rel),
            Err(e) => report.failed.push(format!("{rel}: {e}")),
        }
    }
    Ok(report)
}

/// The type `list` gives a delta (its format says which version it starts from).
pub const DELTA_TYPE: &str = "delta";

/// The type and format `list` gives classic LXC's pair of a version.
pub const LXC_TYPE: &str = "lxc";

/// One published image, as `list` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ListRow {
    /// Product id.
    pub product: String,
    /// Version.
    pub version: String,
    /// Aliases of the product.
    pub aliases: Vec<String>,
    /// container, virtual-machine, or `lxc` for classic LXC's pair (which has no fingerprint).
    #[serde(rename = "type")]
    pub image_type: String,
    /// The rootfs kind (squashfs, root.tar.xz, disk-kvm.img) or `unified`.
    pub format: String,
    /// Fingerprint.
    pub fingerprint: String,
    /// Download size (metadata + rootfs).
    pub size: u64,
    /// `published`, or `rejected` for a version the catalog leaves out because a file of it
    /// breaks the image rules (then only `product`, `version` and `problem` are set).
    pub status: &'static str,
    /// Why a rejected version is left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Every image of the catalog, as Incus sees it (LXD sees the same through the twins), then
/// the versions left out as broken, from `unpublished` (see [`orphans`]).
pub fn list(products: &ProductsFile, unpublished: &[Unpublished]) -> Vec<ListRow> {
    let mut rows = Vec::new();
    for (pid, product) in &products.products {
        let aliases: Vec<String> = product
            .aliases
            .split(',')
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        for (vname, version) in &product.versions {
            for meta in version
                .items
                .values()
                .filter(|i| i.ftype == Ftype::Meta(Family::Incus))
            {
                for root in version.items.values() {
                    let Some(kind) = root.ftype.rootfs_kind() else {
                        continue;
                    };
                    let Some(fp) = meta.combined_for(kind) else {
                        continue;
                    };
                    rows.push(ListRow {
                        product: pid.clone(),
                        version: vname.to_string(),
                        aliases: aliases.clone(),
                        image_type: kind.image_type().to_string(),
                        format: kind.ftype().to_string(),
                        fingerprint: fp.to_owned(),
                        size: meta.size + root.size,
                        status: "published",
                        problem: None,
                    });
                }
            }
            // Classic LXC's pair: no simplestreams image, what `lxc-create -t download` takes.
            if let Some((meta, root)) = crate::catalog::lxc_index::lxc_pair(version) {
                rows.push(ListRow {
                    product: pid.clone(),
                    version: vname.to_string(),
                    aliases: aliases.clone(),
                    image_type: LXC_TYPE.into(),
                    format: LXC_TYPE.into(),
                    fingerprint: String::new(),
                    size: meta.size + root.size,
                    status: "published",
                    problem: None,
                });
            }
            for delta in version
                .items
                .values()
                .filter(|i| i.ftype == Ftype::SquashfsDelta)
            {
                rows.push(ListRow {
                    product: pid.clone(),
                    version: vname.to_string(),
                    aliases: aliases.clone(),
                    image_type: DELTA_TYPE.into(),
                    format: format!("from {}", delta.delta_base.as_deref().unwrap_or("?")),
                    fingerprint: String::new(),
                    size: delta.size,
                    status: "published",
                    problem: None,
                });
            }
            for unified in version
                .items
                .values()
                .filter(|i| i.ftype == Ftype::Unified(Family::Incus))
            {
                rows.push(ListRow {
                    product: pid.clone(),
                    version: vname.to_string(),
                    aliases: aliases.clone(),
                    image_type: ImageType::Container.to_string(),
                    format: "unified".into(),
                    fingerprint: unified.sha256.clone(),
                    size: unified.size,
                    status: "published",
                    problem: None,
                });
            }
        }
    }
    for u in unpublished {
        let Some(problem) = &u.rejected else {
            continue;
        };
        rows.push(ListRow {
            product: u.product.clone(),
            version: u
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            aliases: Vec::new(),
            image_type: String::new(),
            format: String::new(),
            fingerprint: String::new(),
            size: 0,
            status: "rejected",
            problem: Some(problem.clone()),
        });
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn write_catalog(root: &Path, product: &str) {
        let products = serde_json::json!({
            "content_id": "images", "datatype": "image-downloads", "format": "products:1.0",
            "products": {product: {
                "aliases": "p/1", "arch": "amd64", "os": "p", "release": "1", "release_title": "1",
                "versions": {}
            }}
        });
        let index = serde_json::json!({
            "format": "index:1.0",
            "index": {"images": {"datatype": "image-downloads", "format": "products:1.0",
                                 "path": "streams/v1/images.json", "products": [product]}}
        });
        crate::tree::atomic::write(
            &root.join("streams/v1/images.json"),
            products.to_string().as_bytes(),
        )
        .unwrap();
        crate::tree::atomic::write(
            &root.join("streams/v1/index.json"),
            index.to_string().as_bytes(),
        )
        .unwrap();
    }

    #[test]
    fn the_catalog_cache_parses_again_only_a_new_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CatalogCache::default();
        assert!(matches!(
            cache.products(dir.path()),
            Err(crate::catalog::published::UnreadableCatalog { .. })
        ));
        write_catalog(dir.path(), "p:1:amd64:default");
        let first = cache.products(dir.path()).unwrap();
        assert!(first.products.contains_key("p:1:amd64:default"));
        let again = cache.products(dir.path()).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "unchanged: not parsed again");

        write_catalog(dir.path(), "q:1:amd64:default");
        let new = cache.products(dir.path()).unwrap();
        assert!(new.products.contains_key("q:1:amd64:default"));

        std::fs::remove_file(dir.path().join("streams/v1/images.json")).unwrap();
        assert!(
            cache.products(dir.path()).is_err(),
            "a catalog gone is an error"
        );
    }
}
