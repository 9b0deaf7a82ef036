//! build-product: one distrobuilder bootstrap per build, packed for every requested target,
//! into a hidden partial folder that becomes a version only when every artefact exists; then the
//! product's manifest and the catalog are brought up to date, and old versions purged in an order
//! that never leaves a published catalog pointing at deleted files.
//!
//! The original ran two full builds per product, called `build-lxd` (gone in distrobuilder 3.1),
//! published half-built folders and purged by a count while ignoring errors.
//!
//! Here: the steps of a build-product run; distrobuilder's stages (`stages`) run as process
//! groups ([`runner`]); [`purge`] decides what old versions go.

mod error;
pub mod purge;
pub mod runner;
mod stages;

pub use error::{BuildError, Stage};
pub use stages::detect_family;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::catalog::manifest::{
    self, BuildOptions, HttpSettings, MANIFEST_FILE, ManifestError, Rejected,
};
use crate::catalog::products::Tree;
use crate::catalog::publish::{Clock, PublishRequest, publish_tree};
use crate::config::{ProductSpec, TreeConfig};
use crate::format::VersionName;
use crate::tree::lock::{Lock, Wait, take};
use crate::tree::{self, names};

/// The default builder program.
pub const DEFAULT_BUILDER: &str = "distrobuilder";
/// The default definition file name.
pub const DEFAULT_IMAGE_FILE: &str = "image.yaml";

/// What to do after the build.
pub enum AfterBuild<'a> {
    /// Nothing but the purge (`--no-publish`, the original's behaviour).
    Nothing,
    /// Write the product's ssb.json (its catalog is built in another namespace).
    Manifest,
    /// Publish the whole tree: every ssb.json, images.json and index.json.
    Publish {
        /// The tree's products, as loaded for the build.
        tree: &'a Tree,
        /// How remote manifests are fetched.
        http: &'a HttpSettings,
        /// The time stamped on the catalog.
        clock: Clock,
        /// Signs the catalog and LXC's files (`--sign-key`).
        signer: Option<&'a crate::sign::Signer>,
    },
}

/// One build-product run.
pub struct BuildRequest<'a> {
    /// The product.
    pub product: &'a ProductSpec,
    /// The tree it belongs to.
    pub tree: &'a TreeConfig,
    /// Where definitions are looked up (`-s`).
    pub source: &'a Path,
    /// Where versions are written (`-t`).
    pub target: &'a Path,
    /// Where the hash caches of the product folders are kept.
    pub hash_cache: &'a crate::hash::CacheDir,
    /// `-i`: the definition file name (default: the product's `image_file`, else image.yaml).
    pub image_file: Option<&'a Path>,
    /// Skip the LXC image.
    pub skip_lxc: bool,
    /// Skip the LXD/Incus images (container and VM).
    pub skip_lxd: bool,
    /// Do not purge.
    pub skip_purge: bool,
    /// Keep the partial folder of a failed build.
    pub keep_failed: bool,
    /// The build time (names the version, UTC).
    pub now: Timestamp,
    /// Parent of the per-product distrobuilder cache folders.
    pub cache_root: &'a Path,
    /// Every line the builder prints.
    pub output: &'a (dyn Fn(&str) + Sync),
    /// Told when a stage starts.
    pub stage: &'a dyn Fn(Stage),
    /// Set on SIGINT/SIGTERM.
    pub interrupted: &'a AtomicBool,
}

/// What a build-product run did.
#[derive(Debug, Default)]
pub struct BuildReport {
    /// The version built, if anything was built.
    pub version: Option<VersionName>,
    /// Its folder.
    pub dir: Option<PathBuf>,
    /// Versions purged.
    pub purged: Vec<PathBuf>,
    /// Whether the catalog was published.
    pub published: bool,
}

/// Finds the definition: `<source>/<directory>/<file>`, then `<source>/<file>` (as the
/// original), or the file itself when its path is absolute.
pub fn find_image_file(req: &BuildRequest<'_>) -> Result<PathBuf, BuildError> {
    let file: PathBuf = req
        .image_file
        .map(Path::to_path_buf)
        .or_else(|| req.product.build.image_file.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_IMAGE_FILE));
    let tried = if file.is_absolute() {
        vec![file]
    } else {
        vec![
            req.source.join(&req.product.directory).join(&file),
            req.source.join(&file),
        ]
    };
    tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| BuildError::ImageFileNotFound {
            product: req.product.name.clone(),
            tried,
        })
}

/// The builder program for a product: its own `distrobuilder:`, the tree's (or
/// `SSBUILDER_DISTROBUILDER`), else `distrobuilder`.
pub fn builder_program(product: &ProductSpec, tree: &TreeConfig) -> String {
    product
        .build
        .distrobuilder
        .clone()
        .or_else(|| tree.distrobuilder.clone())
        .unwrap_or_else(|| DEFAULT_BUILDER.to_owned())
}

/// Runs build-product: build, then (per `after`) manifest or publish, then purge.
pub fn build_product(
    req: &BuildRequest<'_>,
    after: &AfterBuild<'_>,
) -> Result<BuildReport, BuildError> {
    let p = req.product;
    let product_dir = req.target.join(&p.directory);
    crate::tree::atomic::create_dir_all(&product_dir).map_err(io_err(p, &product_dir))?;
    let lock = lock_product(p, &product_dir)?;
    remove_stale_partials(&product_dir);

    let mut report = BuildReport::default();
    if req.skip_lxc && req.skip_lxd {
        tracing::info!(
            "product `{}`: --skip-lxc and --skip-lxd: nothing to build, purging only",
            p.name
        );
    } else {
        let (version, dir) = build_version(req, &product_dir)?;
        report.version = Some(version);
        report.dir = Some(dir);
    }

    // Decide what goes before anything is published, so the catalog never lists it.
    let doomed = if req.skip_purge {
        Vec::new()
    } else {
        plan_purge(req, &product_dir, report.version.as_ref())?
    };
    let version_label = report
        .version
        .as_ref()
        .map_or_else(|| "(none)".to_owned(), ToString::to_string);
    match after {
        AfterBuild::Nothing => {}
        AfterBuild::Manifest => write_manifest(
            req,
            &product_dir,
            &doomed,
            report.version.as_ref(),
            &version_label,
        )?,
        AfterBuild::Publish {
            tree,
            http,
            clock,
            signer,
        } => {
            let exclude = BTreeMap::from([(
                p.name.clone(),
                doomed.iter().cloned().collect::<BTreeSet<_>>(),
            )]);
            let summary = publish_tree(&PublishRequest {
                tree,
                source: req.target,
                target: req.target,
                md5: false,
                skip_unavailable: false,
                http,
                clock: *clock,
                hash_cache: req.hash_cache,
                force: false,
                progress: &indicatif::ProgressBar::hidden(),
                exclude: &exclude,
                only: None,
                signer: *signer,
                entry_cache: None,
                catalog_in_memory: false,
                serve_made: None,
            })
            .map_err(|source| BuildError::Publish {
                product: p.name.clone(),
                version: version_label.clone(),
                source: Box::new(source),
            })?;
            tracing::info!(
                "published {} product(s), {} version(s) to {}",
                summary.products,
                summary.versions,
                summary.index.display()
            );
            refuse_if_rejected(p, report.version.as_ref(), summary.rejected)?;
            report.published = true;
        }
    }

    let outcome = purge::execute(&product_dir, &doomed, &|d| std::fs::remove_dir_all(d));
    report.purged = outcome.removed;
    if !outcome.failed.is_empty() {
        return Err(BuildError::Purge {
            product: p.name.clone(),
            failures: outcome.failed,
        });
    }
    drop(lock);
    Ok(report)
}

/// An I/O failure on `path` while building `p`.
fn io_err(p: &ProductSpec, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + use<> {
    let product = p.name.clone();
    let path = path.to_owned();
    move |source| BuildError::Io {
        product,
        path,
        source,
    }
}

/// One build per product at a time: held until the returned lock is dropped, which removes
/// its file (pipelines copy the product folder as it is).
fn lock_product(p: &ProductSpec, product_dir: &Path) -> Result<Lock, BuildError> {
    let lock_path = product_dir.join(names::BUILD_LOCK);
    let what = format!("the build of {}", p.name);
    match take(&lock_path, Wait::No, &what) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(BuildError::Locked {
            product: p.name.clone(),
            lock: lock_path,
        }),
        Err(e) => Err(io_err(p, &e.path)(e.source)),
    }
}

/// The versions the product's retention (`days`, `max_age`) purges, never the one just built.
fn plan_purge(
    req: &BuildRequest<'_>,
    product_dir: &Path,
    built: Option<&VersionName>,
) -> Result<Vec<VersionName>, BuildError> {
    let p = req.product;
    let mut w = Vec::new();
    let on_disk: Vec<VersionName> = tree::scan_product(product_dir, &mut w)
        .map_err(|e| BuildError::Io {
            product: p.name.clone(),
            path: e.path.clone(),
            source: e.source,
        })?
        .into_iter()
        .map(|v| v.name)
        .collect();
    crate::catalog::products::report(&w);
    Ok(purge::plan(
        &on_disk,
        purge::Retention {
            keep: p.days,
            max_age: p.build.max_age,
        },
        built,
        req.now.to_zoned_datetime(TimeZone::UTC).datetime(),
    ))
}

/// Writes the product's ssb.json without the doomed versions (for a product whose catalog is
/// built in another namespace).
fn write_manifest(
    req: &BuildRequest<'_>,
    product_dir: &Path,
    doomed: &[VersionName],
    built_version: Option<&VersionName>,
    version_label: &str,
) -> Result<(), BuildError> {
    let p = req.product;
    let failed = |source: ManifestError| BuildError::Manifest {
        product: p.name.clone(),
        version: version_label.to_owned(),
        source: Box::new(source),
    };
    let opts = BuildOptions {
        cache: Some(req.hash_cache.clone()),
        expiry: p.expiry,
        exclude: doomed.iter().cloned().collect(),
        ..BuildOptions::default()
    };
    let mut warnings = Vec::new();
    let built = crate::catalog::products::hash_product(
        p,
        req.tree,
        req.target,
        &opts,
        &indicatif::ProgressBar::hidden(),
        &mut warnings,
    )
    .map_err(failed)?;
    for r in &built.rejected {
        warnings.push(r.to_string());
    }
    crate::catalog::products::report(&warnings);
    let m = built.manifest;
    let path = product_dir.join(MANIFEST_FILE);
    manifest::write(&path, &m).map_err(|source| {
        failed(ManifestError::Write {
            product: p.name.clone(),
            path: path.clone(),
            source,
        })
    })?;
    tracing::info!("wrote {}", path.display());
    refuse_if_rejected(p, built_version, built.rejected)
}

/// Fails when the version just built was left out of its product's manifest: it must not
/// count as built, and nothing may be purged in its favour. Other versions left out were
/// logged by whoever left them out.
fn refuse_if_rejected(
    p: &ProductSpec,
    built: Option<&VersionName>,
    rejected: Vec<Rejected>,
) -> Result<(), BuildError> {
    match rejected.into_iter().find(|r| Some(&r.version) == built) {
        Some(r) => Err(BuildError::Rejected {
            product: p.name.clone(),
            version: r.version.to_string(),
            reason: Box::new(r.reason),
        }),
        None => Ok(()),
    }
}

/// Partial folders left by a build that was killed; safe to remove under the product lock.
fn remove_stale_partials(product_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(product_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(names::PARTIAL_BUILD_PREFIX) && e.path().is_dir() {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => tracing::info!(
                    "removed the partial folder of an interrupted build: {}",
                    e.path().display()
                ),
                Err(err) => tracing::warn!("cannot remove {}: {err}", e.path().display()),
            }
        }
    }
}

/// Builds into a partial folder and renames it into the version; on failure removes it (unless
/// `keep_failed`).
fn build_version(
    req: &BuildRequest<'_>,
    product_dir: &Path,
) -> Result<(VersionName, PathBuf), BuildError> {
    let p = req.product;
    let image = find_image_file(req)?;
    let program = builder_program(p, req.tree);
    let family = detect_family(&program)?;
    let version = VersionName::from_datetime(req.now.to_zoned_datetime(TimeZone::UTC).datetime());
    check_same_minute(p, product_dir, &version)?;

    let work = product_dir.join(format!("{}{version}", names::PARTIAL_BUILD_PREFIX));
    let result = (|| {
        crate::tree::atomic::create_dir_all(&work).map_err(|source| BuildError::Io {
            product: p.name.clone(),
            path: work.clone(),
            source,
        })?;
        stages::run_stages(req, &image, &program, family, &work, &version)?;
        let final_dir = product_dir.join(version.as_str());
        check_same_minute(p, product_dir, &version)?;
        std::fs::rename(work.join("version"), &final_dir).map_err(|source| BuildError::Io {
            product: p.name.clone(),
            path: final_dir.clone(),
            source,
        })?;
        Ok(final_dir)
    })();
    match result {
        Ok(dir) => {
            if let Err(e) = std::fs::remove_dir_all(&work) {
                tracing::warn!("cannot remove the build folder {}: {e}", work.display());
            }
            tracing::info!("product `{}`: built version {}", p.name, dir.display());
            Ok((version, dir))
        }
        Err(mut e) => {
            if req.keep_failed {
                match &mut e {
                    BuildError::Stage { kept, .. } | BuildError::MissingArtifact { kept, .. } => {
                        *kept = Some(work)
                    }
                    _ => tracing::info!("the partial build is kept in {}", work.display()),
                }
            } else if let Err(rm) = std::fs::remove_dir_all(&work)
                && rm.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!("cannot remove the partial build {}: {rm}", work.display());
            }
            Err(e)
        }
    }
}

fn check_same_minute(
    p: &ProductSpec,
    product_dir: &Path,
    version: &VersionName,
) -> Result<(), BuildError> {
    let Ok(entries) = std::fs::read_dir(product_dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(existing) = VersionName::parse(&name)
            && existing.datetime() == version.datetime()
        {
            return Err(BuildError::SameMinute {
                product: p.name.clone(),
                version: version.to_string(),
                existing: e.path(),
            });
        }
    }
    Ok(())
}
