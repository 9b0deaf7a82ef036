//! Local products into the bucket: the files of every version the bucket does not have yet,
//! then each product's `ssb.json`, merged with the bucket's and replaced with a conditional
//! put, so two publishers of the same product both land (or, for the same version with other
//! bytes, the second is told why not).

use std::collections::BTreeMap;
use std::path::Path;

use bytes::Bytes;
use futures_util::StreamExt as _;

use super::catalog::{BucketPublishError, backoff, manifest_rel, read_manifest};
use super::{Bucket, Condition, ObjectKind};
use crate::catalog::manifest;
use crate::catalog::products::Entry;
use crate::format::{Manifest, VersionName};

/// What a push did.
#[derive(Debug, Default)]
pub struct PushReport {
    /// Products whose manifest was written.
    pub products: usize,
    /// Versions added to the bucket.
    pub versions: usize,
    /// Versions the bucket already had, the same.
    pub unchanged: usize,
    /// Files uploaded, and their bytes.
    pub files: usize,
    pub bytes: u64,
}

/// The file name of an item path (`…/20240101_00:00/rootfs.squashfs`).
fn file_name(item_path: &str) -> &str {
    item_path.rsplit('/').next().unwrap_or(item_path)
}

/// A version's files: name → sha256.
fn version_files(v: &crate::format::Version) -> BTreeMap<String, String> {
    v.items
        .values()
        .map(|i| (file_name(&i.path).to_owned(), i.sha256.clone()))
        .collect()
}

/// Claims `version` of `product` (in `directory`) for its files before any of them goes up
/// (see [`crate::tree::names::bucket_claim_rel`]): a claim for the same files lets a retry, or
/// another publisher of the same bytes, go on; a claim for other files is a conflict.
pub(crate) async fn claim(
    bucket: &Bucket,
    product: &str,
    directory: &str,
    version: &VersionName,
    files: &crate::format::Version,
) -> Result<(), BucketPublishError> {
    let rel = crate::tree::names::bucket_claim_rel(directory, version.as_str());
    let ours = version_files(files);
    let body = Bytes::from(serde_json::to_vec(&ours).expect("a map of strings serializes"));
    if bucket
        .put(&rel, body, ObjectKind::State, Condition::Absent)
        .await?
        .is_some()
    {
        return Ok(());
    }
    let theirs: BTreeMap<String, String> = match bucket.get(&rel).await? {
        Some((bytes, _)) => serde_json::from_slice(&bytes).unwrap_or_default(),
        // Taken and gone again (removed by hand): try once more next run.
        None => BTreeMap::new(),
    };
    if theirs == ours {
        return Ok(());
    }
    let (file, local) = ours
        .iter()
        .find(|(f, s)| theirs.get(*f) != Some(s))
        .map(|(f, s)| (f.clone(), s.clone()))
        .unwrap_or_default();
    Err(BucketPublishError::Conflict {
        url: bucket.url().to_string(),
        product: product.to_owned(),
        version: version.to_string(),
        key: bucket.key(&format!("{directory}/{version}/{file}")),
        published: theirs
            .get(&file)
            .cloned()
            .unwrap_or_else(|| format!("(claimed by {})", bucket.key(&rel))),
        local,
    })
}

/// Runs every upload to its end (each aborts its own multipart upload on failure: failing fast
/// would drop the others mid-way and leave their uploads behind), then returns the first error.
pub(crate) async fn all_uploads<F>(
    uploads: impl Iterator<Item = F>,
    parallel: usize,
) -> Result<Vec<super::upload::Uploaded>, BucketPublishError>
where
    F: std::future::Future<Output = Result<super::upload::Uploaded, BucketPublishError>>,
{
    let results: Vec<_> = futures_util::stream::iter(uploads)
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// The versions of `local` to add to `published`: those it lacks. A version both have must
/// hold the same files (by name and sha256); otherwise the first difference is returned as
/// (version, file name, published sha256, local sha256).
pub fn versions_to_add(
    published: Option<&Manifest>,
    local: &Manifest,
) -> Result<Vec<VersionName>, (VersionName, String, String, String)> {
    let mut add = Vec::new();
    for (name, version) in &local.versions {
        let Some(theirs) = published.and_then(|p| p.versions.get(name)) else {
            add.push(name.clone());
            continue;
        };
        let (ours, theirs) = (version_files(version), version_files(theirs));
        if ours != theirs {
            let (file, local_sha) = ours
                .iter()
                .find(|(f, s)| theirs.get(*f) != Some(s))
                .map(|(f, s)| (f.clone(), s.clone()))
                .or_else(|| {
                    theirs
                        .keys()
                        .find(|f| !ours.contains_key(*f))
                        .map(|f| (f.clone(), "(no such file)".to_owned()))
                })
                .unwrap_or_default();
            let published_sha = theirs
                .get(&file)
                .cloned()
                .unwrap_or_else(|| "(no such file)".into());
            return Err((name.clone(), file, published_sha, local_sha));
        }
    }
    Ok(add)
}

/// `published` with the versions `add` of `local`; the product's properties and expiry come
/// from whichever has the newest version.
pub fn merge(published: Option<Manifest>, local: &Manifest, add: &[VersionName]) -> Manifest {
    let Some(mut merged) = published else {
        let mut m = local.clone();
        m.versions.retain(|v, _| add.contains(v));
        return m;
    };
    let newest_local = local.versions.keys().next_back();
    if newest_local >= merged.versions.keys().next_back() {
        merged.properties = local.properties.clone();
        merged.expiry = local.expiry.clone();
    }
    for v in add {
        if let Some(version) = local.versions.get(v) {
            merged.versions.insert(v.clone(), version.clone());
        }
    }
    merged
}

/// Pushes the local products of `entries` (their manifests as hashed from `source`) into the
/// bucket: files first, then the merged manifests.
pub async fn push_entries(
    bucket: &Bucket,
    source: &Path,
    entries: &[Entry],
) -> Result<PushReport, BucketPublishError> {
    let mut report = PushReport::default();
    for entry in entries.iter().filter(|e| e.spec.prefix_path.is_none()) {
        let spec = &entry.spec;
        let local = &entry.manifest;
        let directory = spec.directory.trim_matches('/');
        let first = read_manifest(bucket, &spec.name, directory).await?;
        let add = versions_to_add(first.as_ref().map(|(m, _)| m), local)
            .map_err(|c| conflict(bucket, &spec.name, directory, c))?;
        report.unchanged += local.versions.len() - add.len();
        if add.is_empty() {
            continue;
        }
        let uploads: Vec<(String, std::path::PathBuf, String, u64)> = add
            .iter()
            .flat_map(|v| {
                let version = &local.versions[v];
                version.items.values().map(move |item| {
                    let name = file_name(&item.path);
                    (
                        format!("{directory}/{v}/{name}"),
                        source.join(directory).join(v.as_str()).join(name),
                        item.sha256.clone(),
                        item.size,
                    )
                })
            })
            .collect();
        for v in &add {
            claim(bucket, &spec.name, directory, v, &local.versions[v]).await?;
        }
        let sent = all_uploads(
            uploads.iter().map(|(rel, path, sha256, size)| async move {
                let expect = super::upload::Expect {
                    sha256,
                    size: *size,
                };
                Ok(bucket.upload_file(rel, path, Some(expect)).await?)
            }),
            super::upload::PARALLEL_FILES,
        )
        .await?;
        report.files += sent.len();
        report.bytes += sent.iter().map(|u| u.size).sum::<u64>();
        report.versions += put_manifest(bucket, &spec.name, directory, local, first).await?;
        report.products += 1;
    }
    Ok(report)
}

/// A version both have with other files.
fn conflict(
    bucket: &Bucket,
    product: &str,
    directory: &str,
    (version, file, published, local): (VersionName, String, String, String),
) -> BucketPublishError {
    BucketPublishError::Conflict {
        url: bucket.url().to_string(),
        product: product.to_owned(),
        version: version.to_string(),
        key: bucket.key(&format!("{directory}/{version}/{file}")),
        published,
        local,
    }
}

/// Adds the versions of `local` the bucket's manifest of `product` lacks (`current`, as read
/// with its ETag), replacing it only if nobody replaced it meanwhile: otherwise reads it again
/// and merges again, with backoff. Returns the versions added.
pub(crate) async fn put_manifest(
    bucket: &Bucket,
    product: &str,
    directory: &str,
    local: &Manifest,
    mut current: Option<(Manifest, Option<String>)>,
) -> Result<usize, BucketPublishError> {
    let rel = manifest_rel(directory);
    let mut attempt = 0;
    loop {
        let add = versions_to_add(current.as_ref().map(|(m, _)| m), local)
            .map_err(|c| conflict(bucket, product, directory, c))?;
        let condition = match &current {
            None => Condition::Absent,
            Some((_, Some(etag))) => Condition::Matches(etag.clone()),
            Some((_, None)) => {
                return Err(BucketPublishError::Unsafe {
                    url: bucket.url().to_string(),
                    behaviour: format!("sent no ETag for {}", bucket.key(&rel)),
                });
            }
        };
        let merged = merge(current.map(|(m, _)| m), local, &add);
        let body = Bytes::from(manifest::to_json(&merged));
        if bucket
            .put(&rel, body, ObjectKind::Manifest, condition)
            .await?
            .is_some()
        {
            return Ok(add.len());
        }
        attempt += 1;
        if attempt >= super::catalog::MAX_ATTEMPTS {
            return Err(BucketPublishError::Contended {
                url: bucket.url().to_string(),
                key: bucket.key(&rel),
                attempts: attempt,
            });
        }
        tokio::time::sleep(backoff(attempt)).await;
        current = read_manifest(bucket, product, directory).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(versions: &[(&str, &[(&str, &str)])]) -> Manifest {
        let json = serde_json::json!({
            "name": "p",
            "versions": versions.iter().map(|(v, files)| {
                (v.to_string(), serde_json::json!({"items": files.iter().map(|(f, sha)| {
                    (f.to_string(), serde_json::json!({
                        "ftype": "squashfs", "path": format!("images/p/{v}/{f}"),
                        "sha256": sha, "size": 1
                    }))
                }).collect::<serde_json::Map<_, _>>()}))
            }).collect::<serde_json::Map<_, _>>()
        });
        let mut w = Vec::new();
        manifest::parse(json.to_string().as_bytes(), "test", &mut w).unwrap()
    }

    #[test]
    fn adds_missing_versions_and_refuses_changed_ones() {
        let published = manifest(&[("20240101_00:00", &[("rootfs.squashfs", "aa")])]);
        let local = manifest(&[
            ("20240101_00:00", &[("rootfs.squashfs", "aa")]),
            ("20240102_00:00", &[("rootfs.squashfs", "bb")]),
        ]);
        let add = versions_to_add(Some(&published), &local).unwrap();
        assert_eq!(add.len(), 1);
        assert_eq!(add[0].as_str(), "20240102_00:00");
        let merged = merge(Some(published.clone()), &local, &add);
        assert_eq!(merged.versions.len(), 2);

        // Another publisher added a version meanwhile: both are kept.
        let theirs = manifest(&[
            ("20240101_00:00", &[("rootfs.squashfs", "aa")]),
            ("20240103_00:00", &[("rootfs.squashfs", "cc")]),
        ]);
        let merged = merge(
            Some(theirs.clone()),
            &local,
            &versions_to_add(Some(&theirs), &local).unwrap(),
        );
        assert_eq!(merged.versions.len(), 3);

        let changed = manifest(&[("20240101_00:00", &[("rootfs.squashfs", "ff")])]);
        let (v, file, published_sha, local_sha) =
            versions_to_add(Some(&published), &changed).unwrap_err();
        assert_eq!(
            (
                v.as_str(),
                file.as_str(),
                published_sha.as_str(),
                local_sha.as_str()
            ),
            ("20240101_00:00", "rootfs.squashfs", "aa", "ff")
        );
        assert_eq!(versions_to_add(None, &local).unwrap().len(), 2);
    }
}
