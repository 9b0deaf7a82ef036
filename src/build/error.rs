//! What can go wrong in a build, and the stages messages name.

use std::fmt;
use std::path::PathBuf;

use super::stages::pack_command;
use crate::catalog::manifest::ManifestError;
use crate::catalog::publish::PublishError;
use crate::format::Family;

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
    /// The new version was built, but a file of it breaks the image rules: it is left out of
    /// the catalog and nothing is purged.
    #[error(
        "product `{product}`: version {version} was built, but it cannot be published: {reason}; it is left out of the catalog and nothing was purged (check the build's output files)"
    )]
    Rejected {
        /// The product.
        product: String,
        /// The new version.
        version: String,
        /// Why.
        reason: Box<ManifestError>,
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
