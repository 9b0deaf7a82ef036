//! `mirror pull` and `mirror push`.

use std::path::Path;

use anyhow::{Result, bail};
use tracing::info;

use simplestreams_builder::catalog::products;
use simplestreams_builder::mirror::{self, PullRequest};

use crate::cli::progress::human_bytes;

/// `mirror pull`: fails when any file could not be mirrored, after publishing the rest.
pub fn pull(req: &PullRequest) -> Result<()> {
    let report = mirror::pull(req)?;
    products::report(&report.warnings);
    info!(
        "mirror: {} product(s), {} version(s) published in {}; fetched {} file(s) ({}), verified {}, skipped {}, failed {}, removed {}",
        report.products,
        report.versions,
        req.target.display(),
        report.fetched,
        human_bytes(report.bytes),
        report.verified,
        report.skipped,
        report.failed.len(),
        report.removed
    );
    if !report.failed.is_empty() {
        for f in &report.failed {
            tracing::error!("{f}");
        }
        bail!(
            "{} file(s) could not be mirrored; everything else was published (run again to retry them)",
            report.failed.len()
        );
    }
    Ok(())
}

/// `mirror push`.
pub fn push(source: &Path, dest: &str) -> Result<()> {
    let report = mirror::push(source, dest, &mut |_| {})?;
    info!(
        "pushed {} to {}: {} file(s) copied, {} unchanged, {} removed",
        source.display(),
        dest,
        report.copied,
        report.unchanged,
        report.removed
    );
    Ok(())
}
