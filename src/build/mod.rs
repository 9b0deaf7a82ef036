//! build-product: one distrobuilder bootstrap per build, packed for every requested target,
//! into a hidden partial folder that becomes a version only when every artefact exists; then the
//! product's manifest and the catalog are brought up to date, and old versions purged in an order
//! that never leaves a published catalog pointing at deleted files.
//!
//! The original ran two full builds per product, called `build-lxd` (gone in distrobuilder 3.1),
//! published half-built folders and purged by a count while ignoring errors.

pub mod purge;
pub mod runner;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::catalog::manifest::{self, BuildOptions, HttpSettings, MANIFEST_FILE, ManifestError};
use crate::catalog::products::Tree;
use crate::catalog::publish::{Clock, PublishError, PublishRequest, publish_tree};
use crate::config::{ProductSpec, TreeConfig};
use crate::format::{Family, RootfsKind, VersionName};
use crate::tree::{self, FileRole, names};
use runner::{Invocation, RunFailure};

/// The default builder program.
pub const DEFAULT_BUILDER: &str = "distrobuilder";
/// The default definition file name.
pub const DEFAULT_IMAGE_FILE: &str = "image.yaml";

/// The distrobuilder command that packs a family's image: `pack-incus` (distrobuilder ≥ 3.0,
/// writes `incus.tar.xz`) or `pack-lxd` (distrobuilder 2.x and canonical's lxd-imagebuilder,
/// writes `lxd.tar.xz`).
fn pack_command(family: Family) -> &'static str {
    match family {
        Family::Incus => "pack-incus",
        Family::Lxd => "pack-lxd",
    }
}

/// A step of a build, named in messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Bootstrapping the rootfs.
    BuildDir,
    /// The product's `build_script_hook`.
    Hook,
    /// Packing the LXC image.
    PackLxc,
    /// Packing the container image.
    Pack(Family),
    /// Packing the VM image.
    PackVm(Family),
    /// Moving the artefacts into the version folder.
    Assemble,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::BuildDir => f.write_str("build-dir"),
            Stage::Hook => f.write_str("build_script_hook"),
            Stage::PackLxc => f.write_str("pack-lxc"),
            Stage::Pack(family) => f.write_str(pack_command(*family)),
            Stage::PackVm(family) => write!(f, "{} --vm", pack_command(*family)),
            Stage::Assemble => f.write_str("assembling the version"),
        }
    }
}

/// A build that failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No definition file.
    #[error("product `{product}`: no image file found; looked at: {}", tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    ImageFileNotFound {
        /// The product.
        product: String,
        /// Paths tried, in order.
        tried: Vec<PathBuf>,
    },
    /// The builder cannot be run.
    #[error(
        "cannot run the builder `{program}`: {source} (install distrobuilder, or set SSBUILDER_DISTROBUILDER or `distrobuilder:` in tree.yml)"
    )]
    BuilderMissing {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The program is not a distrobuilder.
    #[error(
        "`{program}` does not look like distrobuilder or lxd-imagebuilder: its help lists neither pack-incus nor pack-lxd"
    )]
    NotABuilder {
        /// The program.
        program: String,
    },
    /// Another build of the product holds its lock.
    #[error("product `{product}` is being built by another process (lock {}); try again when it is done", lock.display())]
    Locked {
        /// The product.
        product: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// A version of this minute exists.
    #[error("product `{product}` already has a version for {version} ({}); builds are named by the minute, so wait a minute or remove it", existing.display())]
    SameMinute {
        /// The product.
        product: String,
        /// The version that would be built.
        version: String,
        /// The folder already there.
        existing: PathBuf,
    },
    /// A stage failed.
    #[error("product `{product}`: {stage} failed ({status}){}\n{}", kept_note(kept), tail.join("\n"))]
    Stage {
        /// The product.
        product: String,
        /// The stage.
        stage: Stage,
        /// Exit status or reason.
        status: String,
        /// The builder's last lines.
        tail: Vec<String>,
        /// The partial folder, when kept (`--keep-failed`).
        kept: Option<PathBuf>,
    },
    /// A stage did not produce what it should.
    #[error("product `{product}`: {stage} succeeded but did not write {missing} into {}{}", dir.display(), kept_note(kept))]
    MissingArtifact {
        /// The product.
        product: String,
        /// The stage.
        stage: Stage,
        /// The missing file(s).
        missing: String,
        /// Where it looked.
        dir: PathBuf,
        /// The partial folder, when kept.
        kept: Option<PathBuf>,
    },
    /// File system trouble.
    #[error("product `{product}`: {}: {source}", path.display())]
    Io {
        /// The product.
        product: String,
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The build worked but the manifest could not be written.
    #[error(
        "product `{product}`: version {version} was built, but its manifest was not written: {source}; nothing was purged"
    )]
    Manifest {
        /// The product.
        product: String,
        /// The new version.
        version: String,
        /// Why.
        source: Box<ManifestError>,
    },
    /// The build worked but the catalog could not be published.
    #[error(
        "product `{product}`: version {version} was built, but the catalog was not updated: {source}; nothing was purged (run `publish` once the problem is fixed)"
    )]
    Publish {
        /// The product.
        product: String,
        /// The new version.
        version: String,
        /// Why.
        source: Box<PublishError>,
    },
    /// Some old versions could not be deleted.
    #[error("product `{product}`: {} old version(s) could not be purged (the catalog no longer lists them):\n{}", failures.len(), failures.join("\n"))]
    Purge {
        /// The product.
        product: String,
        /// One line per folder.
        failures: Vec<String>,
    },
}

fn kept_note(kept: &Option<PathBuf>) -> String {
    kept.as_ref()
        .map(|p| format!("; the partial build is kept in {}", p.display()))
        .unwrap_or_default()
}

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

/// Asks the builder which command set it has: the family it packs for.
pub fn detect_family(program: &str) -> Result<Family, BuildError> {
    let out = std::process::Command::new(program)
        .arg("--help")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| BuildError::BuilderMissing {
            program: program.to_owned(),
            source,
        })?;
    let help = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let has = |cmd: &str| help.split_whitespace().any(|w| w == cmd);
    if has(pack_command(Family::Incus)) {
        Ok(Family::Incus)
    } else if has(pack_command(Family::Lxd)) {
        Ok(Family::Lxd)
    } else {
        Err(BuildError::NotABuilder {
            program: program.to_owned(),
        })
    }
}

fn safe_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Runs build-product: build, then (per `after`) manifest or publish, then purge.
pub fn build_product(
    req: &BuildRequest<'_>,
    after: &AfterBuild<'_>,
) -> Result<BuildReport, BuildError> {
    let p = req.product;
    let io_err = |path: &Path| {
        let product = p.name.clone();
        let path = path.to_owned();
        move |source| BuildError::Io {
            product,
            path,
            source,
        }
    };
    let product_dir = req.target.join(&p.directory);
    crate::tree::atomic::create_dir_all(&product_dir).map_err(io_err(&product_dir))?;

    // One build per product at a time; held until this function returns.
    let lock_path = product_dir.join(names::BUILD_LOCK);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(BuildError::Locked {
            product: p.name.clone(),
            lock: lock_path,
        });
    }
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
    let mut w = Vec::new();
    let on_disk: Vec<VersionName> = tree::scan_product(&product_dir, &mut w)
        .map_err(|e| BuildError::Io {
            product: p.name.clone(),
            path: e.path.clone(),
            source: e.source,
        })?
        .into_iter()
        .map(|v| v.name)
        .collect();
    crate::catalog::products::report(&w);
    let doomed = if req.skip_purge {
        Vec::new()
    } else {
        purge::plan(
            &on_disk,
            purge::Retention {
                keep: p.days,
                max_age: p.build.max_age,
            },
            report.version.as_ref(),
            req.now.to_zoned_datetime(TimeZone::UTC).datetime(),
        )
    };
    let version_label = report
        .version
        .as_ref()
        .map_or_else(|| "(none)".to_owned(), ToString::to_string);

    match after {
        AfterBuild::Nothing => {}
        AfterBuild::Manifest => {
            let opts = BuildOptions {
                cache: true,
                expiry: p.expiry,
                exclude: doomed.iter().cloned().collect(),
                ..BuildOptions::default()
            };
            let mut warnings = Vec::new();
            let (m, _) = crate::catalog::products::hash_product(
                p,
                req.tree,
                req.target,
                &opts,
                &indicatif::ProgressBar::hidden(),
                &mut warnings,
            )
            .map_err(|source| BuildError::Manifest {
                product: p.name.clone(),
                version: version_label.clone(),
                source: Box::new(source),
            })?;
            crate::catalog::products::report(&warnings);
            let path = product_dir.join(MANIFEST_FILE);
            manifest::write(&path, &m).map_err(|source| BuildError::Manifest {
                product: p.name.clone(),
                version: version_label.clone(),
                source: Box::new(ManifestError::Write {
                    product: p.name.clone(),
                    path: path.clone(),
                    source,
                }),
            })?;
            tracing::info!("wrote {}", path.display());
        }
        AfterBuild::Publish { tree, http, clock } => {
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
                progress: &indicatif::ProgressBar::hidden(),
                exclude: &exclude,
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
        run_stages(req, &image, &program, family, &work, &version)?;
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

fn run_stages(
    req: &BuildRequest<'_>,
    image: &Path,
    program: &str,
    family: Family,
    work: &Path,
    version: &VersionName,
) -> Result<(), BuildError> {
    let p = req.product;
    let cache = req.cache_root.join(safe_name(&p.name));
    let rootfs = work.join("rootfs");
    let mut common: Vec<OsString> = vec!["--cache-dir".into(), cache.clone().into()];
    for (k, v) in &p.build.options {
        common.push("-o".into());
        common.push(format!("{k}={v}").into());
    }
    let compression: Vec<OsString> = p
        .build
        .compression
        .iter()
        .flat_map(|c| ["--compression".into(), c.into()])
        .collect();
    let timeout = p
        .build
        .timeout
        .map(crate::config::expiry::HumanDuration::as_std);
    let run = |stage: Stage, inv: Invocation| -> Result<(), BuildError> {
        if req.interrupted.load(Ordering::Relaxed) {
            return Err(stage_error(
                p,
                stage,
                RunFailure::Interrupted { tail: Vec::new() },
            ));
        }
        (req.stage)(stage);
        tracing::debug!("{}", inv.display());
        runner::run(&inv, timeout, req.interrupted, req.output)
            .map_err(|f| stage_error(p, stage, f))
    };
    let mkdir = |d: &Path| {
        crate::tree::atomic::create_dir_all(d).map_err(|source| BuildError::Io {
            product: p.name.clone(),
            path: d.to_owned(),
            source,
        })
    };
    let builder = |args: Vec<OsString>| Invocation {
        program: program.into(),
        args,
        env: Vec::new(),
    };
    let pack = |cmd: &str, vm: bool, out: &Path| -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![cmd.into()];
        if vm {
            a.push("--vm".into());
        }
        a.extend([image.into(), rootfs.clone().into(), out.into()]);
        a.extend(common.iter().cloned());
        a.extend(compression.iter().cloned());
        a
    };

    // One bootstrap, whatever is packed from it.
    let mut args: Vec<OsString> = vec!["build-dir".into(), image.into(), rootfs.clone().into()];
    args.extend(common.iter().cloned());
    run(Stage::BuildDir, builder(args))?;

    if let Some(hook) = &p.build_script_hook {
        run(
            Stage::Hook,
            Invocation {
                program: hook.into(),
                args: Vec::new(),
                env: vec![
                    ("SSBUILDER_STAGING_DIR".into(), rootfs.clone().into()),
                    ("SSBUILDER_BUILD_PRODUCT".into(), p.name.clone().into()),
                    ("SSBUILDER_VERSION".into(), version.to_string().into()),
                ],
            },
        )?;
    }

    let dest = work.join("version");
    mkdir(&dest)?;
    let mut moves: Vec<(PathBuf, PathBuf)> = Vec::new();
    if !req.skip_lxc {
        let out = work.join("lxc");
        mkdir(&out)?;
        run(Stage::PackLxc, builder(pack("pack-lxc", false, &out)))?;
        require(p, Stage::PackLxc, &out, &["meta.tar.*", "rootfs.tar.*"])?;
        moves.extend(
            files_in(&out)
                .into_iter()
                .map(|f| (out.join(&f), dest.join(&f))),
        );
    }
    if !req.skip_lxd {
        let out = work.join("container");
        mkdir(&out)?;
        run(
            Stage::Pack(family),
            builder(pack(pack_command(family), false, &out)),
        )?;
        let meta = FileRole::meta(family).file_name();
        require(
            p,
            Stage::Pack(family),
            &out,
            &[meta, FileRole::Rootfs(RootfsKind::Squashfs).file_name()],
        )?;
        moves.extend(
            files_in(&out)
                .into_iter()
                .map(|f| (out.join(&f), dest.join(&f))),
        );
        if p.build.vm {
            let out_vm = work.join("vm");
            mkdir(&out_vm)?;
            run(
                Stage::PackVm(family),
                builder(pack(pack_command(family), true, &out_vm)),
            )?;
            let disk = FileRole::Rootfs(RootfsKind::DiskKvm).file_name();
            require(p, Stage::PackVm(family), &out_vm, &[meta, disk])?;
            moves.push((out_vm.join(disk), dest.join(disk)));
            // distrobuilder's VM metadata differs from the container's (creation date,
            // templates): keep it as the VM's own, paired only with the disk.
            let same = files_equal(&out_vm.join(meta), &out.join(meta));
            if !same {
                moves.push((
                    out_vm.join(meta),
                    dest.join(FileRole::vm_meta(family).file_name()),
                ));
            }
        }
    }
    (req.stage)(Stage::Assemble);
    for (from, to) in moves {
        std::fs::rename(&from, &to).map_err(|source| BuildError::Io {
            product: p.name.clone(),
            path: to.clone(),
            source,
        })?;
        let _ = crate::tree::atomic::set_file_mode(&to);
    }
    Ok(())
}

fn stage_error(p: &ProductSpec, stage: Stage, f: RunFailure) -> BuildError {
    let (status, tail) = match f {
        RunFailure::Spawn(e) => (format!("cannot start it: {e}"), Vec::new()),
        RunFailure::Exit { status, tail } => (
            status
                .code()
                .map_or_else(|| status.to_string(), |c| format!("exit status {c}")),
            tail,
        ),
        RunFailure::TimedOut { after, tail } => (
            format!("timed out after {}s and was killed", after.as_secs()),
            tail,
        ),
        RunFailure::Interrupted { tail } => ("interrupted".to_owned(), tail),
    };
    BuildError::Stage {
        product: p.name.clone(),
        stage,
        status,
        tail,
        kept: None,
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Checks that `dir` has a file matching each pattern (`*` only as a suffix wildcard).
fn require(p: &ProductSpec, stage: Stage, dir: &Path, patterns: &[&str]) -> Result<(), BuildError> {
    let names = files_in(dir);
    let missing: Vec<&str> = patterns
        .iter()
        .copied()
        .filter(|pat| match pat.strip_suffix('*') {
            Some(prefix) => !names.iter().any(|n| n.starts_with(prefix)),
            None => !names.iter().any(|n| n == pat),
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(BuildError::MissingArtifact {
            product: p.name.clone(),
            stage,
            missing: missing.join(", "),
            dir: dir.to_owned(),
            kept: None,
        })
    }
}

fn files_equal(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(ma), Ok(mb)) if ma.len() == mb.len() => {
            matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y)
        }
        _ => false,
    }
}
