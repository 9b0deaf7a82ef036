//! Mirroring: `pull` selected images from any simplestreams server into a local tree published
//! as our own catalog, and `push` a tree to another place without ever exposing a catalog that
//! names a missing file.
//!
//! A pull reads the remote index and products files, selects products and versions
//! ([`select`]), downloads every item of every wanted image with its partners ([`download`]),
//! then writes a catalog listing exactly the complete images it holds ([`catalog`]), and only
//! after that removes the files of versions no longer listed. Files are stored at their
//! upstream relative paths, so item paths stay as upstream wrote them.
//!
//! What was verified is remembered in `<target>/.ssb/mirror.json` (path → sha256, size and file
//! signature): a file whose size, mtime, ctime and inode are unchanged since it was verified is
//! skipped without reading it; any other file of the right size is re-hashed. That file also
//! marks the tree as a mirror: pull refuses to replace a catalog it did not write.

pub mod catalog;
pub mod download;
pub mod push;
pub mod select;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use download::{ClientError, TlsSettings};
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
    pub tls: TlsSettings,
    /// Draw progress bars (only when stderr is a terminal).
    pub progress: bool,
    /// The time stamped on the catalog.
    pub clock: crate::catalog::publish::Clock,
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
    #[error("{} holds a catalog that `mirror pull` did not write (no .ssb/mirror.json); refusing to replace it: mirror into an empty or mirror-only folder", path.display())]
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

/// Where the mirror remembers what it verified.
pub fn state_path(target: &Path) -> PathBuf {
    crate::tree::names::mirror_state(target)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StateFile {
    sha256: String,
    size: u64,
    sig: FileSig,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    files: BTreeMap<String, StateFile>,
}

const STATE_VERSION: u32 = 1;

impl State {
    fn load(target: &Path) -> Option<State> {
        let bytes = std::fs::read(state_path(target)).ok()?;
        serde_json::from_slice::<State>(&bytes)
            .ok()
            .filter(|s| s.version == STATE_VERSION)
            .or_else(|| Some(State::default()))
    }

    fn save(&self, target: &Path) -> Result<(), MirrorError> {
        let path = state_path(target);
        let bytes = serde_json::to_vec(self).expect("the state always serializes");
        crate::tree::atomic::write(&path, &bytes).map_err(|source| MirrorError::Io { path, source })
    }
}

/// How a file ended up.
#[derive(Clone, Debug)]
enum Outcome {
    Fetched(u64),
    Verified,
    Skipped,
    /// Not present, and not wanted (an older version, only used when already there).
    Absent,
    Failed(String),
}

impl Outcome {
    fn ok(&self) -> bool {
        matches!(
            self,
            Outcome::Fetched(_) | Outcome::Verified | Outcome::Skipped
        )
    }
}

/// One local file to make present.
struct Job {
    url: String,
    want: Want,
    /// Download it if missing (a version within `--keep`).
    fetch: bool,
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
async fn read_remote(
    client: &reqwest::Client,
    url: &str,
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
        let doc = download::fetch_json(client, &products_url)
            .await
            .map_err(fail_remote(url))?;
        for p in select::parse_products(&doc, &products_url, warnings) {
            if products.iter().any(|q| q.id == p.id) {
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

/// Is the file at `path` the one wanted? By the state's record when the file is unchanged
/// since (`Skipped`), else by re-hashing it if its size fits (`Verified`); `rehash: false`
/// trusts only the record.
fn check_local(
    path: &Path,
    want: &Want,
    record: Option<&StateFile>,
    rehash: bool,
    bar: &ProgressBar,
) -> Option<Outcome> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() != want.size {
        return None;
    }
    if record.is_some_and(|r| {
        r.sig == FileSig::of(&meta) && r.sha256 == want.sha256 && r.size == want.size
    }) {
        return Some(Outcome::Skipped);
    }
    if !rehash {
        return None;
    }
    let (hasher, len) = download::hash_file(path, bar).ok()?;
    use sha2::Digest as _;
    (len == want.size && hex::encode(hasher.finalize()) == want.sha256).then_some(Outcome::Verified)
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Pulls the sources into the target: downloads, publishes the catalog, then prunes.
pub fn pull(req: &PullRequest) -> Result<PullReport, MirrorError> {
    let target = &req.target;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| MirrorError::Io { path, source }
    };
    crate::tree::atomic::create_dir_all(target).map_err(io(target))?;
    let old_state = match State::load(target) {
        Some(s) => s,
        None if crate::catalog::publish::index_path(target).exists() => {
            return Err(MirrorError::NotAMirror {
                path: target.clone(),
            });
        }
        None => State::default(),
    };
    let client = download::client(&req.tls)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(io(target))?;
    let mut report = PullReport::default();

    // 1. Every remote catalog, or nothing changes.
    let mut plans: Vec<(Source, Vec<PlannedProduct>)> = Vec::new();
    for source in &req.sources {
        let products = runtime.block_on(read_remote(&client, &source.url, &mut report.warnings))?;
        plans.push((source.clone(), select::plan(products, &source.filters)));
    }

    // 2. The files: one job per local path, shared by every item stored there.
    let mut jobs: BTreeMap<String, Job> = BTreeMap::new();
    let mut item_paths: ItemPaths = HashMap::new();
    for (source, planned) in &plans {
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

    // 3. Make them present: check, else download, `jobs` at a time.
    let outcomes = runtime.block_on(run_jobs(&client, req, &jobs, &old_state));
    for (lp, outcome) in &outcomes {
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

    // 4. The catalog of what is here.
    let local = |product: &str, version: &str, key: &str| {
        item_paths
            .get(&(product.to_owned(), version.to_owned(), key.to_owned()))
            .filter(|lp| outcomes.get(*lp).is_some_and(Outcome::ok))
            .cloned()
    };
    let mut seen = HashMap::new();
    let mut products: BTreeMap<String, Value> = BTreeMap::new();
    for (source, planned) in &plans {
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
    let updated = req.clock.updated();
    let products_doc = catalog::products_file(&products, &updated);
    let images_path = crate::config::DEFAULT_IMAGES_PATH;
    let index = catalog::index(&products, images_path, &updated);

    // What the tree keeps: what the catalog lists, plus verified files of wanted versions whose
    // partners failed (so the next run need not fetch them again).
    let listed: BTreeSet<String> = catalog::referenced_paths(&products_doc)
        .into_iter()
        .collect();
    let mut state = State {
        version: STATE_VERSION,
        files: BTreeMap::new(),
    };
    for (lp, job) in &jobs {
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
    // Until the prune is done, the state also owns the old files, so a crash loses nothing.
    let mut interim = State {
        version: STATE_VERSION,
        files: old_state.files.clone(),
    };
    interim.files.extend(state.files.clone());
    interim.save(target)?;

    {
        let _lock = crate::tree::lock::lock_tree(target)?;
        crate::catalog::publish::write_with_gz(
            &crate::catalog::publish::products_path(target, images_path),
            &crate::catalog::publish::to_json(&products_doc),
        )?;
        crate::catalog::publish::write_with_gz(
            &crate::catalog::publish::index_path(target),
            &crate::catalog::publish::to_json(&index),
        )?;
    }

    // 5. Only now: remove what the new catalog no longer lists.
    for lp in old_state.files.keys() {
        if state.files.contains_key(lp) {
            continue;
        }
        let path = target.join(lp);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                report.removed += 1;
                remove_empty_parents(target, &path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => report
                .warnings
                .push(format!("cannot remove {}: {e}", path.display())),
        }
    }
    state.save(target)?;
    Ok(report)
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

async fn run_jobs(
    client: &reqwest::Client,
    req: &PullRequest,
    jobs: &BTreeMap<String, Job>,
    state: &State,
) -> BTreeMap<String, Outcome> {
    let draw = req.progress && std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let total: u64 = jobs.values().filter(|j| j.fetch).map(|j| j.want.size).sum();
    let overall = if draw {
        multi.add(ProgressBar::new(total).with_style(bar_style(
            "{prefix:>8} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )))
    } else {
        ProgressBar::hidden()
    };
    overall.set_prefix("total");
    let permits = Arc::new(tokio::sync::Semaphore::new(req.jobs.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (lp, job) in jobs {
        let (lp, url, want, fetch) = (lp.clone(), job.url.clone(), job.want.clone(), job.fetch);
        let dest = req.target.join(&lp);
        let record = state.files.get(&lp).cloned();
        let (client, permits, overall) = (client.clone(), permits.clone(), overall.clone());
        let bar = if draw {
            let bar = ProgressBar::new(want.size).with_style(bar_style(
                "{prefix:>8} [{wide_bar}] {bytes}/{total_bytes} {msg}",
            ));
            bar.set_message(lp.rsplit('/').next().unwrap_or_default().to_owned());
            Some(bar)
        } else {
            None
        };
        let multi = multi.clone();
        set.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return (lp, Outcome::Failed("cancelled".into()));
            };
            let bar = match bar {
                Some(b) => multi.add(b),
                None => ProgressBar::hidden(),
            };
            let checked = {
                let (dest, want, bar) = (dest.clone(), want.clone(), bar.clone());
                bar.set_prefix("checking");
                tokio::task::spawn_blocking(move || {
                    check_local(&dest, &want, record.as_ref(), fetch, &bar)
                })
                .await
                .ok()
                .flatten()
            };
            let outcome = match checked {
                Some(o) => {
                    if fetch {
                        overall.inc(want.size);
                    }
                    o
                }
                None if !fetch => Outcome::Absent,
                None => {
                    bar.set_prefix("fetching");
                    match download::fetch_file(&client, &url, &dest, &want, &bar, &overall).await {
                        Ok(n) => Outcome::Fetched(n),
                        Err(e) => Outcome::Failed(e.to_string()),
                    }
                }
            };
            bar.finish_and_clear();
            multi.remove(&bar);
            (lp, outcome)
        });
    }
    let mut out = BTreeMap::new();
    while let Some(joined) = set.join_next().await {
        if let Ok((lp, outcome)) = joined {
            out.insert(lp, outcome);
        }
    }
    overall.finish_and_clear();
    out
}
