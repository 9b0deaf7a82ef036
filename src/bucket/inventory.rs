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

use super::catalog::{BucketPublishError, manifest_rel, published, read_manifest};
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
    let Some((_, _, bytes, path)) = published(bucket).await? else {
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
    let items: BTreeMap<String, (u64, String)> = products
        .items()
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

/// Finds the objects nothing names (image files of a product folder that no manifest lists,
/// catalog snapshots other than the current one, probes a killed run left) and removes those
/// unreferenced for longer than `grace`; with `dry_run`, only says what it would do.
pub async fn prune(
    bucket: &Bucket,
    tree: &Tree,
    grace: Duration,
    now: jiff::Timestamp,
    dry_run: bool,
) -> Result<PruneReport, BucketPublishError> {
    let listed = bucket.list("").await?;
    let current = published(bucket).await?.map(|(_, _, _, path)| path);
    let mut referenced: BTreeSet<String> = BTreeSet::new();
    let mut folders: Vec<String> = Vec::new();
    for spec in tree
        .config
        .products
        .iter()
        .filter(|p| p.prefix_path.is_none())
    {
        let directory = spec.directory.trim_matches('/').to_owned();
        if let Some((m, _)) = read_manifest(bucket, &spec.name, &directory).await? {
            for version in m.versions.keys() {
                for item in m.versions[version].items.values() {
                    let name = item.path.rsplit('/').next().unwrap_or(&item.path);
                    referenced.insert(format!("{directory}/{version}/{name}"));
                    // A mirrored version keeps the remote's path, which may differ.
                    referenced.insert(item.path.clone());
                }
            }
            referenced.insert(manifest_rel(&directory));
            folders.push(format!("{directory}/"));
        }
    }
    let candidates: Vec<&super::Listed> = listed
        .iter()
        .filter(|o| {
            let name = o.rel.rsplit('/').next().unwrap_or(&o.rel);
            if o.rel.starts_with(BUCKET_PROBE_PREFIX) {
                return true;
            }
            if is_snapshot_name(name) {
                return current.as_deref() != Some(o.rel.as_str());
            }
            name != MANIFEST_FILE
                && !referenced.contains(&o.rel)
                && folders.iter().any(|f| o.rel.starts_with(f.as_str()))
        })
        .collect();
    let mut record: Unreferenced = match bucket.get(BUCKET_UNREFERENCED).await? {
        Some((bytes, _)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        None => Unreferenced::default(),
    };
    // Referenced again (or gone): forget.
    let names: BTreeSet<&str> = candidates.iter().map(|o| o.rel.as_str()).collect();
    record.since.retain(|k, _| names.contains(k.as_str()));
    let mut report = PruneReport::default();
    let grace_span = jiff::SignedDuration::try_from(grace).unwrap_or(jiff::SignedDuration::MAX);
    for object in candidates {
        let since = *record
            .since
            .entry(object.rel.clone())
            .or_insert(now.as_second());
        let since = jiff::Timestamp::from_second(since).unwrap_or(now);
        // A probe is ours alone and never named: its age is what counts.
        let since = if object.rel.starts_with(BUCKET_PROBE_PREFIX) {
            object.last_modified
        } else {
            since
        };
        let due = since
            .checked_add(grace_span)
            .unwrap_or(jiff::Timestamp::MAX);
        if due <= now {
            if !dry_run {
                bucket.delete(&object.rel).await?;
                record.since.remove(&object.rel);
            }
            report.removed.push(object.rel.clone());
        } else {
            report.waiting.push((object.rel.clone(), due.to_string()));
        }
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
