//! `verify`, `list` and `prune` on a tree in a bucket.
//!
//! `prune` never removes an object the moment nothing names it: a client or a CDN may still
//! hold an index that does (clients cache the catalog for an hour, a CDN for its TTL). It
//! records when it first found each object unreferenced (`.ssb/unreferenced.json`) and removes
//! it only once that is longer ago than the grace period.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::catalog::{BucketPublishError, published, read_manifest};
use super::{Bucket, Condition, ObjectKind};
use crate::catalog::products::Tree;
use crate::format::ProductsFile;
use crate::tree::names::{
    BUCKET_PROBE_PREFIX, BUCKET_UNREFERENCED, MANIFEST_FILE, index_rel, is_snapshot_name,
};

/// The default grace period of `prune`: well over the clients' one-hour catalog cache plus a
/// CDN's TTL for the index.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(6 * 3600);

/// Objects hashed at once by `verify`.
const PARALLEL_VERIFY: usize = 4;

/// The published catalog, parsed; `None` when the bucket has none.
pub async fn catalog(bucket: &Bucket) -> Result<Option<ProductsFile>, BucketPublishError> {
    let Some(super::catalog::Published {
        products: bytes,
        path,
        ..
    }) = published(bucket).await?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| BucketPublishError::Index {
            url: bucket.url().to_string(),
            key: bucket.key(&path),
            reason: format!("the products file is not valid: {e}"),
        })
}

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub files: usize,
    pub bytes: u64,
    pub problems: Vec<String>,
}

/// Reads every file the catalog names and checks its size and sha256.
pub async fn verify(
    bucket: &Bucket,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport, BucketPublishError> {
    let Some(products) = catalog(bucket).await? else {
        return Ok(VerifyReport {
            problems: vec![format!(
                "{}: no catalog ({} is missing): publish first",
                bucket.url(),
                bucket.key(&index_rel())
            )],
            ..VerifyReport::default()
        });
    };
    // Item paths that are URLs or leave the tree (a tree.yml `prefix`) name no object here.
    let items: BTreeMap<String, (u64, String)> = products
        .items()
        .filter(|i| !i.path.contains("://") && !i.path.split('/').any(|s| s == ".."))
        .map(|i| (i.path.clone(), (i.size, i.sha256.clone())))
        .collect();
    let results: Vec<(u64, Option<String>)> =
        futures_util::stream::iter(items.iter().map(|(path, (size, sha))| async move {
            let Some(mut got) = bucket.get_stream(path, None).await? else {
                return Ok::<_, BucketPublishError>((
                    0,
                    Some(format!("{}: missing", bucket.key(path))),
                ));
            };
            let mut hasher = Sha256::new();
            let mut read = 0u64;
            while let Some(chunk) = got.body.next().await {
                let chunk = chunk.map_err(|e| bucket.fail(path, "GET", e))?;
                hasher.update(&chunk);
                read += chunk.len() as u64;
                progress(chunk.len() as u64);
            }
            let found = hex::encode(hasher.finalize());
            let problem = if read != *size {
                Some(format!(
                    "{}: {read} bytes, the catalog says {size}",
                    bucket.key(path)
                ))
            } else if found != *sha {
                Some(format!(
                    "{}: sha256 {found}, the catalog says {sha}",
                    bucket.key(path)
                ))
            } else {
                None
            };
            Ok((read, problem))
        }))
        .buffer_unordered(PARALLEL_VERIFY)
        .try_collect()
        .await?;
    let mut report = VerifyReport {
        files: items.len(),
        ..VerifyReport::default()
    };
    for (bytes, problem) in results {
        report.bytes += bytes;
        report.problems.extend(problem);
    }
    Ok(report)
}

/// What `prune` did (or would do).
#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    /// Removed (or, in a dry run, removable now), relative to the tree.
    pub removed: Vec<String>,
    /// Unreferenced, kept until their grace period ends: key and when it ends.
    pub waiting: Vec<(String, String)>,
}

/// The record of when objects were first found unreferenced.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Unreferenced {
    /// Key relative to the tree → first seen unreferenced, in Unix seconds.
    since: BTreeMap<String, i64>,
}

/// What names objects of the tree: the current catalog's items and products file, and every
/// manifest's files (versions not in the catalog included: rejected, or about to be).
struct References {
    /// Keys relative to the tree.
    names: BTreeSet<String>,
    /// Product folders with a manifest (`dir/`): image files are pruned only inside them.
    folders: Vec<String>,
    /// The products file the index names.
    current: Option<String>,
}

async fn references(bucket: &Bucket, tree: &Tree) -> Result<References, BucketPublishError> {
    let mut refs = References {
        names: BTreeSet::new(),
        folders: Vec::new(),
        current: None,
    };
    if let Some(p) = published(bucket).await? {
        if let Ok(products) = serde_json::from_slice::<ProductsFile>(&p.products) {
            refs.names.extend(
                products
                    .items()
                    .map(|i| i.path.trim_start_matches('/').to_owned()),
            );
        }
        refs.current = Some(p.path);
    }
    for spec in tree
        .config
        .products
        .iter()
        .filter(|p| p.prefix_path.is_none())
    {
        let directory = spec.directory.trim_matches('/').to_owned();
        if let Some((m, _)) = read_manifest(bucket, &spec.name, &directory).await? {
            for (version, v) in &m.versions {
                for item in v.items.values() {
                    let name = item.path.rsplit('/').next().unwrap_or(&item.path);
                    refs.names.insert(format!("{directory}/{version}/{name}"));
                    // A mirrored version keeps the remote's path, which may differ.
                    refs.names.insert(item.path.clone());
                }
            }
            refs.folders.push(format!("{directory}/"));
        }
    }
    Ok(refs)
}

impl References {
    /// True for an object `prune` may remove once its grace period is over.
    fn unreferenced(&self, rel: &str, images_path: &str) -> bool {
        if rel.starts_with(BUCKET_PROBE_PREFIX) {
            return true;
        }
        if self.names.contains(rel) || rel.rsplit('/').next() == Some(MANIFEST_FILE) {
            return false;
        }
        // A products file of this tree's catalog folder, not of another tree under it.
        if let Some(name) = rel
            .strip_prefix(images_path.trim_matches('/'))
            .and_then(|r| r.strip_prefix('/'))
            && is_snapshot_name(name)
        {
            return self.current.as_deref() != Some(rel);
        }
        self.folders.iter().any(|f| rel.starts_with(f.as_str()))
    }
}

/// Finds the objects nothing names (image files in a product folder that no manifest and no
/// catalog lists, products files other than the current one, probes a killed run left) and
/// removes those unreferenced for longer than `grace`, counted from the later of the first
/// prune that found them so and their upload (a version published again re-uploads its files);
/// with `dry_run`, only says what it would do. Just before removing, the references are read
/// again, so a publish meanwhile keeps what it names.
pub async fn prune(
    bucket: &Bucket,
    tree: &Tree,
    grace: Duration,
    now: jiff::Timestamp,
    dry_run: bool,
) -> Result<PruneReport, BucketPublishError> {
    let listed = bucket.list("").await?;
    let images_path = tree.config.images_path.as_str();
    let refs = references(bucket, tree).await?;
    let candidates: Vec<&super::Listed> = listed
        .iter()
        .filter(|o| refs.unreferenced(&o.rel, images_path))
        .collect();
    let mut record: Unreferenced = match bucket.get(BUCKET_UNREFERENCED).await? {
        Some((bytes, _)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        None => Unreferenced::default(),
    };
    // Referenced again (or gone): forget.
    let names: BTreeSet<&str> = candidates.iter().map(|o| o.rel.as_str()).collect();
    record.since.retain(|k, _| names.contains(k.as_str()));
    let grace_span = jiff::SignedDuration::try_from(grace).unwrap_or(jiff::SignedDuration::MAX);
    let mut due = Vec::new();
    let mut report = PruneReport::default();
    for object in candidates {
        let first_seen = *record
            .since
            .entry(object.rel.clone())
            .or_insert(now.as_second());
        let first_seen = jiff::Timestamp::from_second(first_seen).unwrap_or(now);
        // A probe is ours alone and never named: its age is what counts.
        let since = if object.rel.starts_with(BUCKET_PROBE_PREFIX) {
            object.last_modified
        } else {
            first_seen.max(object.last_modified)
        };
        let ends = since
            .checked_add(grace_span)
            .unwrap_or(jiff::Timestamp::MAX);
        if ends <= now {
            due.push(object.rel.clone());
        } else {
            report.waiting.push((object.rel.clone(), ends.to_string()));
        }
    }
    if !dry_run && !due.is_empty() {
        let fresh = references(bucket, tree).await?;
        for rel in due {
            if !fresh.unreferenced(&rel, images_path) {
                record.since.remove(&rel);
                continue;
            }
            bucket.delete(&rel).await?;
            record.since.remove(&rel);
            report.removed.push(rel);
        }
    } else {
        report.removed = due;
    }
    if !dry_run {
        let body = Bytes::from(serde_json::to_vec(&record).expect("the record serializes"));
        bucket
            .put(
                BUCKET_UNREFERENCED,
                body,
                ObjectKind::State,
                Condition::Overwrite,
            )
            .await?;
    }
    Ok(report)
}
