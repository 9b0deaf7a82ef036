//! `mirror pull` into a bucket: the remote catalogs are read and filtered as for a local mirror,
//! and every file of a version the bucket does not have yet is streamed from the remote straight
//! into a multipart upload, its sha256 and size checked on the way (a mismatch aborts the
//! upload: nothing of it is visible). Each product's manifest then gains the versions whose
//! files all arrived, and the caller publishes the catalog. Nothing touches the local disk.
//!
//! Products are stored in the layout (`images/<os>/<release>/<arch>/<variant>/<version>/`,
//! which images.linuxcontainers.org and our own trees use), at the paths the remote gives.

use std::collections::{BTreeMap, BTreeSet};

use futures_util::TryStreamExt as _;

use super::Bucket;
use super::catalog::{BucketPublishError, read_manifest};
use super::push::put_manifest;
use super::upload::Expect;
use crate::format::{Manifest, Version, VersionName};
use crate::mirror::{PullRequest, select};
use crate::tree::LayoutProduct;

/// What a pull into a bucket did.
#[derive(Debug, Default)]
pub struct BucketPullReport {
    /// Products that gained versions.
    pub products: usize,
    /// Versions added.
    pub versions: usize,
    /// Versions the bucket already had.
    pub present: usize,
    /// Files streamed into the bucket (at most [`super::upload::PARALLEL_FILES`] at a time),
    /// and their bytes.
    pub files: usize,
    pub bytes: u64,
    /// Versions left out, and why.
    pub failed: Vec<String>,
    pub warnings: Vec<String>,
}

/// One file of a version to stream.
struct Transfer {
    url: String,
    rel: String,
    sha256: String,
    size: u64,
}

/// Pulls what `req`'s sources offer (after its filters) into the bucket's manifests.
pub async fn pull(
    bucket: &Bucket,
    req: &PullRequest,
) -> Result<BucketPullReport, BucketPublishError> {
    let mut report = BucketPullReport::default();
    let client = crate::mirror::download::client(&req.tls)
        .map_err(|e| BucketPublishError::Mirror(e.into()))?;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for source in &req.sources {
        let products =
            crate::mirror::read_remote(&client, &source.url, &source.filters, &mut report.warnings)
                .await
                .map_err(BucketPublishError::Mirror)?;
        for planned in select::plan(products, &source.filters) {
            pull_product(
                bucket,
                &client,
                req,
                &source.url,
                &planned,
                &mut seen,
                &mut report,
            )
            .await?;
        }
    }
    Ok(report)
}

async fn pull_product(
    bucket: &Bucket,
    client: &reqwest::Client,
    req: &PullRequest,
    base_url: &str,
    planned: &select::PlannedProduct,
    seen: &mut BTreeSet<String>,
    report: &mut BucketPullReport,
) -> Result<(), BucketPublishError> {
    let product = &planned.product;
    // Where each wanted version's files go, and the product folder they share.
    let mut folder: Option<LayoutProduct> = None;
    let mut versions: Vec<(VersionName, Version, Vec<Transfer>)> = Vec::new();
    for pv in planned.versions.iter().filter(|pv| pv.wanted) {
        let remote = &product.versions[pv.index];
        let at = format!("product `{}` version {}", product.id, remote.name);
        let Ok(name) = VersionName::parse(&remote.name) else {
            report
                .warnings
                .push(format!("{at}: not a version name we can store; skipped"));
            continue;
        };
        let mut version = Version::default();
        let mut transfers: BTreeMap<String, Transfer> = BTreeMap::new();
        let mut usable = true;
        for key in planned.item_keys(pv) {
            let mut item = remote.items[&key].clone();
            let rel = match select::local_path(&item.path) {
                Ok(rel) => rel,
                Err(why) => {
                    report.warnings.push(format!(
                        "{at}: item `{key}` path `{}` {why}; skipped",
                        item.path
                    ));
                    usable = false;
                    break;
                }
            };
            let dir = rel.rsplitn(3, '/').nth(2).unwrap_or("");
            match (LayoutProduct::of_rel(dir), &folder) {
                (Some(p), None) => folder = Some(p),
                (Some(p), Some(f)) if p == *f => {}
                _ => {
                    report.warnings.push(format!(
                        "{at}: item `{key}` is at `{rel}`, not in the images/<os>/<release>/<arch>/<variant>/<version>/ folder of the product's other files; the version is skipped"
                    ));
                    usable = false;
                    break;
                }
            }
            item.sha256 = item.sha256.to_ascii_lowercase();
            transfers.entry(rel.clone()).or_insert(Transfer {
                url: crate::mirror::download::join_url(base_url, &item.path),
                rel: rel.clone(),
                sha256: item.sha256.clone(),
                size: item.size,
            });
            item.path = rel;
            version.items.insert(key, Box::new(item));
        }
        if usable && !version.items.is_empty() {
            versions.push((name, version, transfers.into_values().collect()));
        }
    }
    let Some(folder) = folder else {
        return Ok(());
    };
    let name = folder.name();
    if !seen.insert(name.clone()) {
        report.warnings.push(format!(
            "product `{}` from {base_url} left out: {} is already mirrored from an earlier source",
            product.id, folder.directory
        ));
        return Ok(());
    }
    let current = read_manifest(bucket, &name, &folder.directory).await?;
    let have: BTreeSet<VersionName> = current
        .as_ref()
        .map(|(m, _)| m.versions.keys().cloned().collect())
        .unwrap_or_default();
    let mut local = Manifest {
        name: name.clone(),
        expiry: None,
        properties: BTreeMap::from([
            ("os".to_owned(), product.os.clone()),
            ("release".to_owned(), product.release.clone()),
        ]),
        versions: BTreeMap::new(),
    };
    if let Some(variant) = &product.variant {
        local.properties.insert("variant".into(), variant.clone());
    }
    for (vname, version, transfers) in versions {
        if have.contains(&vname) {
            report.present += 1;
            continue;
        }
        let sent =
            match super::push::claim(bucket, &name, &folder.directory, &vname, &version).await {
                Ok(()) => {
                    super::push::all_uploads(
                        transfers.iter().map(|t| stream_one(bucket, client, t)),
                        req.jobs.min(super::upload::PARALLEL_FILES),
                    )
                    .await
                }
                Err(e) => Err(e),
            };
        match sent {
            Ok(sent) => {
                report.files += sent.len();
                report.bytes += sent.iter().map(|u| u.size).sum::<u64>();
                local.versions.insert(vname, version);
            }
            Err(e) => report.failed.push(format!(
                "product `{}` version {vname}: {}",
                product.id,
                crate::error_chain(&e)
            )),
        }
    }
    if local.versions.is_empty() {
        return Ok(());
    }
    report.versions += put_manifest(bucket, &name, &folder.directory, &local, current).await?;
    report.products += 1;
    Ok(())
}

/// One remote file into the bucket, checked against the remote catalog on the way.
async fn stream_one(
    bucket: &Bucket,
    client: &reqwest::Client,
    t: &Transfer,
) -> Result<super::upload::Uploaded, BucketPublishError> {
    let response = client
        .get(&t.url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| BucketPublishError::Download {
            url: t.url.clone(),
            key: bucket.key(&t.rel),
            reason: crate::error_chain(&e),
        })?;
    let body = response.bytes_stream().map_err(std::io::Error::other);
    let expect = Expect {
        sha256: &t.sha256,
        size: t.size,
    };
    Ok(bucket
        .upload_stream(&t.rel, &t.url, t.size, body, Some(expect))
        .await?)
}
