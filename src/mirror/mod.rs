//! Mirroring: `pull` selected images from any simplestreams server into a local tree published
//! as our own catalog, and `push` a tree to another place without ever exposing a catalog that
//! names a missing file.
//!
//! A pull reads the remote index and products files, selects products and versions
//! ([`select`]), checks or downloads every item of every wanted image with its partners
//! (`jobs`, [`download`]), then writes a catalog listing exactly the complete images it holds
//! ([`catalog`]), and only
//! after that removes the files of versions no longer listed. Files are stored at their
//! upstream relative paths, so item paths stay as upstream wrote them.
//!
//! What was verified is remembered in `<target>/.ssb/mirror.json` (`state`: path → sha256, size and file
//! signature): a file whose size, mtime, ctime and inode are unchanged since it was verified is
//! skipped without reading it; any other file of the right size is re-hashed. That file also
//! marks the tree as a mirror: pull refuses to replace a catalog it did not write.

pub mod catalog;
pub mod download;
mod jobs;
pub mod push;
pub mod select;
mod state;

use jobs::{Job, Outcome, run_jobs};

pub use state::state_path;
use state::{STATE_VERSION, State, StateFile};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use download::ClientError;
pub use push::{PushError, push};
pub use select::Filters;

use crate::tree::FileSig;
use download::Want;
use select::PlannedProduct;

/// One remote to pull from and what to take from it.
#[derive(Clone, Debug)]
pub struct Source {
    /// Base URL of the simplestreams server (the one `remote add` takes).
    pub url: String,
    /// What to select.
    pub filters: Filters,
}

/// A pull.
#[derive(Clone, Debug)]
pub struct PullRequest {
    /// The remotes, merged into one catalog.
    pub sources: Vec<Source>,
    /// The mirror tree.
    pub target: PathBuf,
    /// Concurrent downloads.
    pub jobs: usize,
    /// Trust settings.
    pub tls: crate::net::Trust,
    /// Draw progress bars (only when stderr is a terminal).
    pub progress: bool,
    /// The time stamped on the catalog.
    pub clock: crate::catalog::publish::Clock,
    /// Signs the catalog, LXC's index and LXC's files (`--sign-key`).
    pub signer: Option<std::sync::Arc<crate::sign::Signer>>,
}

/// What a pull did.
#[derive(Clone, Debug, Default)]
pub struct PullReport {
    /// Files downloaded (each verified while streaming).
    pub fetched: usize,
    /// Bytes received.
    pub bytes: u64,
    /// Files already present and re-hashed to confirm them.
    pub verified: usize,
    /// Files already present and unchanged since they were verified.
    pub skipped: usize,
    /// One message per file that could not be mirrored.
    pub failed: Vec<String>,
    /// Products in the new catalog.
    pub products: usize,
    /// Versions in the new catalog.
    pub versions: usize,
    /// Files of versions no longer listed, removed after the catalog was published.
    pub removed: usize,
    /// Things worth telling (skipped upstream entries, refused paths, …).
    pub warnings: Vec<String>,
}

/// A pull that could not publish anything.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The HTTP client.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A remote catalog could not be read; nothing was changed.
    #[error("cannot read the catalog of {url}: {reason}; nothing was changed")]
    Remote {
        /// The remote.
        url: String,
        /// Why.
        reason: String,
    },
    /// The target holds a catalog that a pull did not write.
    #[error("{} holds a catalog that `mirror pull` did not write (no {}); refusing to replace it: mirror into an empty or mirror-only folder", path.display(), state_path(Path::new("")).display())]
    NotAMirror {
        /// The target.
        path: PathBuf,
    },
    /// Local I/O.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The catalog could not be written.
    #[error(transparent)]
    Write(#[from] crate::catalog::publish::WriteError),
    /// The tree's publish lock could not be taken.
    #[error(transparent)]
    Lock(#[from] crate::tree::lock::LockError),
}

/// The local path of every planned item, keyed by (product, version, item key).
type ItemPaths = HashMap<(String, String, String), String>;

fn fail_remote(url: &str) -> impl Fn(String) -> MirrorError + '_ {
    move |reason| MirrorError::Remote {
        url: url.to_owned(),
        reason,
    }
}

/// Reads the remote's index and every products file it lists for LXD and Incus.
pub(crate) async fn read_remote(
    client: &reqwest::Client,
    url: &str,
    filters: &select::Filters,
    warnings: &mut Vec<String>,
) -> Result<Vec<select::RemoteProduct>, MirrorError> {
    let index_url = download::join_url(url, &crate::tree::names::index_rel());
    let index = download::fetch_json(client, &index_url)
        .await
        .map_err(fail_remote(url))?;
    let entries = index
        .get("index")
        .and_then(Value::as_object)
        .ok_or_else(|| fail_remote(url)(format!("{index_url}: no `index` object")))?;
    let mut products: Vec<select::RemoteProduct> = Vec::new();
    // Ids already read, so a product listed again is found in constant time: a products file
    // of 200,000 products took minutes with a scan of the list per product.
    let mut ids: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (key, entry) in entries {
        let used = entry.get("datatype").and_then(Value::as_str) == Some("image-downloads")
            && entry
                .get("products")
                .and_then(Value::as_array)
                .is_some_and(|p| !p.is_empty());
        let Some(path) = entry.get("path").and_then(Value::as_str).filter(|_| used) else {
            continue;
        };
        let products_url = download::join_url(url, path);
        let doc = download::fetch_bytes(client, &products_url)
            .await
            .map_err(fail_remote(url))?;
        let parsed = select::parse_products(&doc, &products_url, filters, warnings)
            .map_err(fail_remote(url))?;
        for p in parsed {
            if !ids.insert(p.id.clone()) {
                warnings.push(format!(
                    "{products_url}: product `{}` already read from another index entry (`{key}`); this copy is ignored",
                    p.id
                ));
            } else {
                products.push(p);
            }
        }
    }
    Ok(products)
}

/// Pulls the sources into the target: downloads, publishes the catalog, then prunes.
pub fn pull(req: &PullRequest) -> Result<PullReport, MirrorError> {
    let target = &req.target;
    let old_state = open_mirror(target)?;
    let client = download::client(&req.tls)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io(target))?;
    let mut report = PullReport::default();

    // 1. Every remote catalog, or nothing changes.
    let mut plans: Vec<(Source, Vec<PlannedProduct>)> = Vec::new();
    for source in &req.sources {
        let products = runtime.block_on(read_remote(
            &client,
            &source.url,
            &source.filters,
            &mut report.warnings,
        ))?;
        plans.push((source.clone(), select::plan(products, &source.filters)));
    }
    // 2. The files: one job per local path, shared by every item stored there.
    let (jobs, item_paths) = plan_jobs(&plans, &mut report);
    // 3. Make them present: check, else download, `jobs` at a time.
    let outcomes = runtime.block_on(run_jobs(&client, req, &jobs, &old_state));
    tally(&outcomes, &mut report);
    // 4. The catalog of what is here, written after the state that owns every file.
    let products = assemble(&plans, &item_paths, &outcomes, &mut report);
    let updated = req.clock.updated();
    let products_doc = catalog::products_file(&products, &updated);
    let images_path = crate::config::DEFAULT_IMAGES_PATH;
    let index = catalog::index(&products, images_path, &updated);
    let listed: BTreeSet<String> = catalog::referenced_paths(&products_doc)
        .into_iter()
        .collect();
    let state = kept_files(target, &jobs, &outcomes, &listed);
    // Until the prune is done, the state also owns the old files, so a crash loses nothing.
    let mut interim = State {
        version: STATE_VERSION,
        files: old_state.files.clone(),
    };
    interim.files.extend(state.files.clone());
    interim.save(target)?;
    {
        let _lock = crate::tree::lock::lock_tree(target)?;
        // LXC's index and the signatures, from the same products file.
        let typed = <crate::format::ProductsFile as serde::Deserialize>::deserialize(&products_doc)
            .inspect_err(|e| {
                report.warnings.push(format!(
                    "LXC's index and signatures were not written: the mirrored products file is not one we can read back ({e})"
                ));
            })
            .ok();
        if let Some(typed) = &typed {
            crate::catalog::companions::before_catalog(
                target,
                target,
                typed,
                req.signer.as_deref(),
                &mut report.warnings,
            )?;
        }
        crate::catalog::publish::write_with_gz(
            &crate::catalog::publish::products_path(target, images_path),
            crate::catalog::publish::to_json(&products_doc),
        )?;
        crate::catalog::publish::write_with_gz(
            &crate::catalog::publish::index_path(target),
            crate::catalog::publish::to_json(&index),
        )?;
        if let Some(typed) = &typed {
            crate::catalog::companions::after_catalog(
                target,
                images_path,
                typed,
                &index,
                req.signer.as_deref(),
                &mut report.warnings,
            )?;
        }
    }
    // 5. Only now: remove what the new catalog no longer lists.
    remove_unlisted(target, &old_state, &state, &mut report);
    state.save(target)?;
    Ok(report)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MirrorError + use<> {
    let path = path.to_owned();
    move |source| MirrorError::Io { path, source }
}

/// Creates the mirror tree and reads its state; a tree that holds a catalog but no mirror
/// state is someone else's catalog, which a pull must not replace.
fn open_mirror(target: &Path) -> Result<State, MirrorError> {
    crate::tree::atomic::create_dir_all(target).map_err(io(target))?;
    match State::load(target) {
        Some(s) => Ok(s),
        None if crate::catalog::publish::index_path(target).exists() => {
            Err(MirrorError::NotAMirror {
                path: target.to_owned(),
            })
        }
        None => Ok(State::default()),
    }
}

/// One job per local path, shared by every item stored there, and the local path of each
/// planned item. An item whose path is unsafe, or that another item lists at the same path with
/// another sha256 or size, is reported and skipped.
fn plan_jobs(
    plans: &[(Source, Vec<PlannedProduct>)],
    report: &mut PullReport,
) -> (BTreeMap<String, Job>, ItemPaths) {
    let mut jobs: BTreeMap<String, Job> = BTreeMap::new();
    let mut item_paths: ItemPaths = HashMap::new();
    for (source, planned) in plans {
        for p in planned {
            for pv in &p.versions {
                let version = &p.product.versions[pv.index];
                for key in p.item_keys(pv) {
                    let item = &version.items[&key];
                    let at = format!(
                        "product `{}` version {} item `{key}`",
                        p.product.id, version.name
                    );
                    let lp = match select::local_path(&item.path) {
                        Ok(lp) => lp,
                        Err(why) => {
                            report
                                .warnings
                                .push(format!("{at} skipped: its path `{}` {why}", item.path));
                            continue;
                        }
                    };
                    let want = Want {
                        sha256: item.sha256.to_ascii_lowercase(),
                        size: item.size,
                    };
                    match jobs.get_mut(&lp) {
                        Some(job) if job.want != want => {
                            report.failed.push(format!(
                                "{at}: `{lp}` is also listed with another sha256 or size; skipped"
                            ));
                            continue;
                        }
                        Some(job) => job.fetch |= pv.wanted,
                        None => {
                            jobs.insert(
                                lp.clone(),
                                Job {
                                    url: download::join_url(&source.url, &item.path),
                                    want,
                                    fetch: pv.wanted,
                                },
                            );
                        }
                    }
                    item_paths.insert((p.product.id.clone(), version.name.clone(), key), lp);
                }
            }
        }
    }
    (jobs, item_paths)
}

/// Counts how the files ended up.
fn tally(outcomes: &BTreeMap<String, Outcome>, report: &mut PullReport) {
    for (lp, outcome) in outcomes {
        match outcome {
            Outcome::Fetched(n) => {
                report.fetched += 1;
                report.bytes += n;
            }
            Outcome::Verified => report.verified += 1,
            Outcome::Skipped => report.skipped += 1,
            Outcome::Absent => {}
            Outcome::Failed(why) => report.failed.push(format!("{lp}: {why}")),
        }
    }
}

/// The products to publish: each source's complete images whose files are here, the first
/// source winning a product id.
fn assemble(
    plans: &[(Source, Vec<PlannedProduct>)],
    item_paths: &ItemPaths,
    outcomes: &BTreeMap<String, Outcome>,
    report: &mut PullReport,
) -> BTreeMap<String, Value> {
    let local = |product: &str, version: &str, key: &str| {
        item_paths
            .get(&(product.to_owned(), version.to_owned(), key.to_owned()))
            .filter(|lp| outcomes.get(*lp).is_some_and(Outcome::ok))
            .cloned()
    };
    let mut seen = HashMap::new();
    let mut products: BTreeMap<String, Value> = BTreeMap::new();
    for (source, planned) in plans {
        let out = catalog::assemble(
            planned,
            source.filters.keep,
            &local,
            &mut seen,
            &mut report.warnings,
        );
        for (id, product) in out.products {
            if products.contains_key(&id) {
                report.warnings.push(format!(
                    "product `{id}` from {} left out: a product of that id is already mirrored from an earlier source",
                    source.url
                ));
                continue;
            }
            report.versions += product["versions"].as_object().map_or(0, |v| v.len());
            products.insert(id, product);
        }
    }
    report.products = products.len();
    products
}

/// What the tree keeps: what the catalog lists, plus verified files of wanted versions whose
/// partners failed (so the next run need not fetch them again).
fn kept_files(
    target: &Path,
    jobs: &BTreeMap<String, Job>,
    outcomes: &BTreeMap<String, Outcome>,
    listed: &BTreeSet<String>,
) -> State {
    let mut state = State {
        version: STATE_VERSION,
        files: BTreeMap::new(),
    };
    for (lp, job) in jobs {
        let keep = listed.contains(lp) || (job.fetch && outcomes.get(lp).is_some_and(Outcome::ok));
        if !keep {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(target.join(lp)) {
            state.files.insert(
                lp.clone(),
                StateFile {
                    sha256: job.want.sha256.clone(),
                    size: job.want.size,
                    sig: FileSig::of(&meta),
                },
            );
        }
    }
    state
}

/// Removes the files of the old state that the new one does not keep, and the folders they
/// leave empty.
fn remove_unlisted(target: &Path, old: &State, new: &State, report: &mut PullReport) {
    for lp in old.files.keys() {
        if new.files.contains_key(lp) {
            continue;
        }
        let path = target.join(lp);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                report.removed += 1;
                // Its signature, if this mirror signed it, goes with it.
                let _ = std::fs::remove_file(crate::tree::names::signature_path(&path));
                remove_empty_parents(target, &path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report
                .warnings
                .push(format!("cannot remove {}: {e}", path.display())),
        }
    }
}

/// Runs [`pull`] now and then every `every`, on a thread of its own, logging each outcome
/// (for `serve --mirror-interval`). A failed run is retried at the next tick.
pub fn pull_every(mut req: PullRequest, every: std::time::Duration) -> std::thread::JoinHandle<()> {
    req.progress = false;
    std::thread::spawn(move || {
        loop {
            match pull(&req) {
                Ok(r) => {
                    for w in &r.warnings {
                        tracing::warn!("{w}");
                    }
                    for f in &r.failed {
                        tracing::error!("{f}");
                    }
                    tracing::info!(
                        "mirror: {} product(s), {} version(s); fetched {} file(s) ({} bytes), verified {}, skipped {}, failed {}, removed {}; next pull in {}s",
                        r.products,
                        r.versions,
                        r.fetched,
                        r.bytes,
                        r.verified,
                        r.skipped,
                        r.failed.len(),
                        r.removed,
                        every.as_secs()
                    );
                }
                Err(e) => tracing::error!(
                    "mirror pull failed: {}; next try in {}s",
                    crate::error_chain(&e),
                    every.as_secs()
                ),
            }
            std::thread::sleep(every);
        }
    })
}

/// Removes the now empty folders between `file` and `root`.
fn remove_empty_parents(root: &Path, file: &Path) {
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || std::fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
}
