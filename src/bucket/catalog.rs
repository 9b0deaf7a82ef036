//! The catalog of a tree in a bucket: rebuilt from every product's `ssb.json` in the bucket and
//! published so that several publishers can work at once.
//!
//! Why nothing is lost: a publisher puts its manifests first, then reads `index.json`'s ETag,
//! then reads every manifest, and replaces `index.json` only if it still has that ETag. Take
//! the last index written: had any publisher's manifest been put after that writer read the
//! manifests, that publisher's own index write came later (it reads the ETag after its
//! manifests), so it either changed the index after the last writer read its ETag (and the
//! last write would have failed its If-Match) or is itself later than the last one. Either way
//! a contradiction: the last index includes every manifest put before it. A publisher whose
//! If-Match fails reads everything again and retries, with backoff.
//!
//! Readers never see a broken catalog: the products file goes up under a name made of its
//! sha256 and is never overwritten, before the index that names it; an index a client or a CDN
//! still holds names a file that is still there (`prune` keeps unreferenced objects for a grace
//! period).

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use sha2::{Digest as _, Sha256};

use super::{Bucket, BucketError, Condition, ObjectKind};
use crate::catalog::manifest::{self, HttpSettings, MANIFEST_FILE, ManifestError};
use crate::catalog::products::{Entry, LoadError, Tree};
use crate::catalog::publish::{
    CatalogError, Clock, ReplaceError, build_catalog, catalog_settings, to_json,
};
use crate::config::Overrides;
use crate::format::{Index, Manifest, ProductsFile};
use crate::tree::LayoutProduct;
use crate::tree::names::{
    BUCKET_PROBE_PREFIX, LAYOUT_ROOT, index_rel, is_snapshot_name, snapshot_rel,
};

/// Attempts at replacing the index before giving up.
pub const MAX_ATTEMPTS: u32 = 12;

/// Manifests read at once.
const PARALLEL_READS: usize = 32;

/// Publishing into a bucket failed; the catalog readers see is the one before.
#[derive(Debug, thiserror::Error)]
pub enum BucketPublishError {
    #[error(transparent)]
    Bucket(#[from] BucketError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    WouldEmpty(#[from] ReplaceError),
    /// A remote to mirror cannot be read.
    #[error(transparent)]
    Mirror(crate::mirror::MirrorError),
    /// A file to mirror cannot be downloaded.
    #[error("cannot download {url} into {key}: {reason}")]
    Download {
        url: String,
        /// The key it was to be stored at.
        key: String,
        reason: String,
    },
    /// The new catalog would leave out products the published one has.
    #[error("{url}: this run ({mode}) would drop {} published product(s) from the catalog: {}; the catalog was kept (what this run uploaded is in place): run it again with the tree.yml that declares them (-c FILE), or `publish -t {url} --force` to drop them", dropped.len(), dropped.join(", "))]
    WouldDrop {
        url: String,
        mode: String,
        dropped: Vec<String>,
    },
    /// A manifest in the bucket cannot be used.
    #[error("{url}: {key}: {reason}")]
    Manifest {
        url: String,
        key: String,
        reason: String,
    },
    /// The published index cannot be read.
    #[error(
        "{url}: {key}: not a simplestreams index ({reason}); fix or remove it, then publish again"
    )]
    Index {
        url: String,
        key: String,
        reason: String,
    },
    /// The server does not honour conditional writes: concurrent publishers could lose each
    /// other's products.
    #[error(
        "{url}: the S3 server {behaviour}: concurrent publishers could silently lose each other's products, so nothing was published; use a server that honours If-Match and If-None-Match on PUT (AWS S3, MinIO, SeaweedFS, Garage)"
    )]
    Unsafe { url: String, behaviour: String },
    /// Other publishers kept replacing the index.
    #[error(
        "{url}: {key} was replaced by other publishers {attempts} times while this run rebuilt the catalog; nothing of this run's catalog was published (its image files and manifests are in place): publish again"
    )]
    Contended {
        url: String,
        key: String,
        attempts: u32,
    },
    /// The same version of a product holds other files in the bucket.
    #[error(
        "{url}: product `{product}` version {version} is already published with other files ({key} has sha256 {published}, this run has {local}); a version is never replaced: build a new version"
    )]
    Conflict {
        url: String,
        product: String,
        version: String,
        key: String,
        published: String,
        local: String,
    },
}

/// Checks, with a throw-away object under `.ssb/`, that the server refuses a PUT with
/// `If-None-Match: *` on an existing key and one with a stale `If-Match`.
pub async fn probe_conditional_writes(bucket: &Bucket) -> Result<(), BucketPublishError> {
    let rel = format!("{BUCKET_PROBE_PREFIX}{:016x}", rand::random::<u64>());
    let put = |body: &'static str, condition| {
        bucket.put(
            &rel,
            Bytes::from_static(body.as_bytes()),
            ObjectKind::State,
            condition,
        )
    };
    let unsafe_ = |behaviour: &str| BucketPublishError::Unsafe {
        url: bucket.url().to_string(),
        behaviour: behaviour.to_owned(),
    };
    let result = async {
        let first = put("1", Condition::Absent).await.map_err(|e| match e.code() {
            Some("NotImplemented") => unsafe_("does not implement If-None-Match on PUT"),
            _ => e.into(),
        })?;
        if first.is_none() {
            return Err(unsafe_(
                "refused to create a new object with If-None-Match: * (it answered 412 for a key nobody wrote)",
            ));
        }
        if put("2", Condition::Absent).await?.is_some() {
            return Err(unsafe_(
                "ignores If-None-Match: * on PUT (it overwrote an existing object)",
            ));
        }
        let stale = Condition::Matches("\"00000000000000000000000000000000\"".into());
        if put("3", stale).await?.is_some() {
            return Err(unsafe_(
                "ignores If-Match on PUT (it overwrote an object whose ETag did not match)",
            ));
        }
        Ok(())
    }
    .await;
    if let Err(e) = bucket.delete(&rel).await {
        tracing::warn!("{e}");
    }
    result
}

/// The products of a tree in a bucket: every `images/<os>/<release>/<arch>/<variant>/` folder
/// holding an `ssb.json` (layout products: mirrored, imported), and with a tree.yml its
/// products too, which take the place of a layout product in the same folder. Every publisher
/// thus builds the catalog from every manifest, whichever way it was started (the no-loss
/// argument needs that).
pub async fn products(
    bucket: &Bucket,
    config: Option<&std::path::Path>,
    overrides: &Overrides,
) -> Result<Tree, BucketPublishError> {
    let mut found: Vec<LayoutProduct> = bucket
        .list(LAYOUT_ROOT)
        .await?
        .into_iter()
        .filter_map(|o| {
            o.rel
                .strip_suffix(MANIFEST_FILE)
                .and_then(|dir| dir.strip_suffix('/'))
                .and_then(LayoutProduct::of_rel)
        })
        .collect();
    found.sort_by(|a, b| a.directory.cmp(&b.directory));
    let url = PathBuf::from(bucket.url().to_string());
    let Some(config) = config else {
        return Ok(Tree::from_layout(&url, found, overrides)?);
    };
    let mut tree = Tree::load(Some(config), std::path::Path::new("."), overrides)?;
    let declared: std::collections::BTreeSet<String> = tree
        .config
        .products
        .iter()
        .map(|p| p.directory.trim_matches('/').to_owned())
        .collect();
    found.retain(|p| !declared.contains(&p.directory));
    let layout = Tree::from_layout(&url, found, overrides)?;
    tree.config.products.extend(layout.config.products);
    Ok(tree)
}

/// A product's manifest in the bucket, with its ETag, or `None` when it has none.
pub async fn read_manifest(
    bucket: &Bucket,
    product: &str,
    directory: &str,
) -> Result<Option<(Manifest, Option<String>)>, BucketPublishError> {
    let rel = manifest_rel(directory);
    let Some((bytes, etag)) = bucket.get(&rel).await? else {
        return Ok(None);
    };
    let bad = |reason: String| BucketPublishError::Manifest {
        url: bucket.url().to_string(),
        key: bucket.key(&rel),
        reason,
    };
    let mut warnings = Vec::new();
    let m = manifest::parse(&bytes, &bucket.key(&rel), &mut warnings).map_err(bad)?;
    crate::catalog::products::report(&warnings);
    if m.name != product {
        return Err(bad(format!(
            "holds the manifest of `{}`, not of product `{product}`",
            m.name
        )));
    }
    Ok(Some((m, etag)))
}

/// Where a product's manifest is, relative to the tree.
pub fn manifest_rel(directory: &str) -> String {
    format!("{}/{MANIFEST_FILE}", directory.trim_matches('/'))
}

/// Every product's manifest: from the bucket for local products (a product without one has
/// not been published yet and is left out), fetched for the remote ones.
async fn load_entries(
    bucket: &Bucket,
    tree: &Tree,
    http: &HttpSettings,
) -> Result<Vec<Entry>, BucketPublishError> {
    let specs: Vec<_> = tree
        .config
        .products
        .iter()
        .filter(|p| !p.hidden)
        .cloned()
        .collect();
    let local: Vec<_> = specs.iter().filter(|p| p.prefix_path.is_none()).collect();
    let mut read: std::collections::HashMap<String, Option<Manifest>> =
        futures_util::stream::iter(local.iter().map(|spec| async move {
            read_manifest(bucket, &spec.name, &spec.directory)
                .await
                .map(|m| (spec.name.clone(), m.map(|(m, _)| m)))
        }))
        .buffer_unordered(PARALLEL_READS)
        .try_collect()
        .await?;
    let remote: Vec<(String, String)> = specs
        .iter()
        .filter_map(|p| {
            p.prefix_path
                .as_ref()
                .map(|pp| (p.name.clone(), manifest::remote_url(pp, &p.directory)))
        })
        .collect();
    let mut fetched = if remote.is_empty() {
        Vec::new().into_iter()
    } else {
        let http = http.clone();
        tokio::task::spawn_blocking(move || {
            let mut warnings = Vec::new();
            let got = manifest::fetch_all(&remote, &http, &mut warnings);
            crate::catalog::products::report(&warnings);
            got
        })
        .await
        .map_err(|e| BucketPublishError::Manifest {
            url: bucket.url().to_string(),
            key: format!("(the {MANIFEST_FILE} of the products with a prefix_path)"),
            reason: format!("fetching them failed: {e}"),
        })?
        .into_iter()
    };
    let mut entries = Vec::new();
    let mut failures = Vec::new();
    for spec in specs {
        let manifest = if spec.prefix_path.is_some() {
            match fetched.next().expect("one fetch result per remote product") {
                Ok(m) => Some(m),
                Err(e @ ManifestError::NotBuilt { .. }) => {
                    tracing::warn!("{e}; left out of the catalog");
                    None
                }
                Err(e) => {
                    failures.push(e.to_string());
                    None
                }
            }
        } else {
            let m = read.remove(&spec.name).flatten();
            if m.is_none() {
                tracing::info!(
                    "product `{}`: no {} in {}: not published yet, left out of the catalog",
                    spec.name,
                    bucket.key(&manifest_rel(&spec.directory)),
                    bucket.url()
                );
            }
            m
        };
        if let Some(m) = manifest {
            let mut spec = spec;
            if tree.is_layout() {
                crate::catalog::products::finish_layout_spec(&mut spec, &m);
            }
            entries.push(Entry { spec, manifest: m });
        }
    }
    if !failures.is_empty() {
        return Err(LoadError::Unavailable { failures }.into());
    }
    Ok(entries)
}

/// What publishing the catalog did.
#[derive(Debug)]
pub struct CatalogSummary {
    pub products: usize,
    pub versions: usize,
    /// False when the published catalog already said the same.
    pub written: bool,
    /// Times the index changed under this run and it started over.
    pub retries: u32,
    /// The products file's key.
    pub snapshot: String,
    pub catalog: ProductsFile,
}

/// The published catalog: the index (its bytes, as read in one GET, and its ETag) and the
/// products file it names.
pub struct Published {
    pub index: Index,
    pub index_bytes: Bytes,
    pub etag: Option<String>,
    /// The products file's bytes and its path relative to the tree.
    pub products: Bytes,
    pub path: String,
}

/// The published catalog, when there is one.
pub async fn published(bucket: &Bucket) -> Result<Option<Published>, BucketPublishError> {
    let rel = index_rel();
    let Some((index_bytes, etag)) = bucket.get(&rel).await? else {
        return Ok(None);
    };
    let bad = |reason: String| BucketPublishError::Index {
        url: bucket.url().to_string(),
        key: bucket.key(&rel),
        reason,
    };
    let index: Index = serde_json::from_slice(&index_bytes).map_err(|e| bad(e.to_string()))?;
    let path = index
        .index
        .values()
        .next()
        .map(|e| e.path.clone())
        .ok_or_else(|| bad("it names no products file".into()))?;
    let products = bucket.get(&path).await?.map(|(b, _)| b).ok_or_else(|| {
        bad(format!(
            "it names {}, which is not in the bucket",
            bucket.key(&path)
        ))
    })?;
    Ok(Some(Published {
        index,
        index_bytes,
        etag,
        products,
        path,
    }))
}

/// Rebuilds the catalog from every manifest in the bucket and replaces the published one (see
/// the module's comment for why concurrent publishers lose nothing).
///
/// The products are those of the tree.yml at `config`, or in layout mode those found in the
/// bucket, found again on every attempt after the index is read: a product listed before that
/// could miss one another publisher put and indexed in between.
pub async fn publish(
    bucket: &Bucket,
    config: Option<&std::path::Path>,
    overrides: &Overrides,
    http: &HttpSettings,
    clock: Clock,
    force: bool,
) -> Result<CatalogSummary, BucketPublishError> {
    let index_key = index_rel();
    let mut retries = 0;
    loop {
        // The ETag first, the products and manifests after: the order the argument above needs.
        let current = bucket.get(&index_key).await?;
        let tree = &products(bucket, config, overrides).await?;
        let entries = load_entries(bucket, tree, http).await?;
        let mut warnings = Vec::new();
        let (products, mut index) =
            build_catalog(entries, &catalog_settings(tree, clock), &mut warnings)?;
        crate::catalog::products::report(&warnings);
        let new_products = to_json(&products);
        let summary = |written, snapshot: String, catalog: ProductsFile| CatalogSummary {
            products: catalog.products.len(),
            versions: catalog.products.values().map(|p| p.versions.len()).sum(),
            written,
            retries,
            snapshot,
            catalog,
        };
        let condition = match &current {
            None => Condition::Absent,
            Some((bytes, etag)) => {
                let old: Index =
                    serde_json::from_slice(bytes).map_err(|e| BucketPublishError::Index {
                        url: bucket.url().to_string(),
                        key: bucket.key(&index_key),
                        reason: e.to_string(),
                    })?;
                if !force {
                    crate::catalog::publish::check_replacement_of(
                        &old,
                        &PathBuf::from(bucket.url().to_string()),
                        tree,
                        &products,
                    )?;
                    // In a bucket every publisher rebuilds the whole catalog: one started
                    // without the tree.yml (or with another) would drop its products.
                    let dropped: Vec<String> = old
                        .index
                        .values()
                        .flat_map(|e| &e.products)
                        .filter(|id| !products.products.contains_key(*id))
                        .cloned()
                        .collect();
                    if !dropped.is_empty() {
                        return Err(BucketPublishError::WouldDrop {
                            url: bucket.url().to_string(),
                            mode: match &tree.config.file {
                                Some(f) => format!("with {}", f.display()),
                                None => "without a tree.yml".to_owned(),
                            },
                            dropped,
                        });
                    }
                }
                if let Some(path) = old.index.values().next().map(|e| e.path.clone())
                    && let Some((old_products, _)) = bucket.get(&path).await?
                    && crate::catalog::publish::same_but_stamp(&old_products, &new_products)
                        .is_some()
                {
                    return Ok(summary(false, bucket.key(&path), products));
                }
                // A server that sends no ETag cannot take part in If-Match.
                match etag {
                    Some(etag) => Condition::Matches(etag.clone()),
                    None => {
                        return Err(BucketPublishError::Unsafe {
                            url: bucket.url().to_string(),
                            behaviour: format!("sent no ETag for {}", bucket.key(&index_key)),
                        });
                    }
                }
            }
        };
        let sha = hex::encode(Sha256::digest(&new_products));
        let snapshot = snapshot_rel(&tree.config.images_path, &sha);
        debug_assert!(is_snapshot_name(snapshot.rsplit('/').next().unwrap_or("")));
        // Same name, same bytes: an existing one is this very file. A refusal without one
        // (a 409 while another writer's put of it was in flight) is contention: retry.
        let put = bucket
            .put(
                &snapshot,
                Bytes::from(new_products),
                ObjectKind::Snapshot,
                Condition::Absent,
            )
            .await?;
        let landed = put.is_some() || bucket.get(&snapshot).await?.is_some();
        for entry in index.index.values_mut() {
            entry.path = snapshot.clone();
        }
        let written = if landed {
            bucket
                .put(
                    &index_key,
                    Bytes::from(to_json(&index)),
                    ObjectKind::Index,
                    condition,
                )
                .await?
        } else {
            None
        };
        if written.is_some() {
            return Ok(summary(true, bucket.key(&snapshot), products));
        }
        retries += 1;
        if retries >= MAX_ATTEMPTS {
            return Err(BucketPublishError::Contended {
                url: bucket.url().to_string(),
                key: bucket.key(&index_key),
                attempts: retries,
            });
        }
        let wait = backoff(retries);
        tracing::info!(
            "{}: another publisher replaced the index; rebuilding the catalog in {} ms",
            bucket.url(),
            wait.as_millis()
        );
        tokio::time::sleep(wait).await;
    }
}

/// Exponential backoff with full jitter: 50 ms doubling up to 3 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let cap = 50u64.saturating_mul(1 << attempt.min(6)).min(3000);
    Duration::from_millis(rand::random::<u64>() % cap + 1)
}
