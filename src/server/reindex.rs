//! Keeping the catalog current while serving: one task re-publishes the tree (images.json,
//! index.json, each product's ssb.json) whenever something changed. Uploads and deletes send it
//! a trigger, with the digests computed in flight; a file system watcher sends one for files
//! that arrive by other means; one full scan runs at start-up. Triggers that arrive while a
//! re-index runs are coalesced into the next one, so re-indexing is serialized and a burst costs
//! one run. A failed run is logged and retried with a growing delay; it never stops the server.
//! Readers always get complete catalog files: every file is written atomically. A writer that
//! must answer only once the catalog holds its files (imports) waits for the run that includes
//! its trigger ([`Reindexer::publish_written`]).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::RecursiveMode;

use super::catalog::ServedCatalog;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer_opt};
use tokio::sync::{mpsc, oneshot};

use crate::catalog::manifest::HttpSettings;
use crate::catalog::products::EntryCache;
use crate::catalog::products::Tree;
use crate::catalog::publish::{
    Clock, MadeFile, PublishRequest, PublishSummary, publish_catalog, publish_tree,
};
use crate::config::Overrides;
use crate::format::ProductsFile;
use crate::hash::{HashCache, KnownDigest};
use crate::tree::FileSig;

/// Quiet time the watcher waits for before reporting a path.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);
/// Paths of the server's own writes remembered for the watcher (see
/// [`Reindexer::request_written`]).
const MAX_WRITTEN: usize = 4096;
/// How long after one of the server's own writes the watcher's reports of its paths are taken
/// for its echo: the watcher reports a path once it has been quiet for [`WATCH_DEBOUNCE`], so
/// this leaves ample room. A report later than this costs a run for nothing, no more.
const ECHO: Duration = Duration::from_secs(5);
/// How long a trigger waits for others to join it.
const COALESCE: Duration = Duration::from_millis(50);
/// First and longest delay before a failed re-index is retried.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// How the served tree is re-indexed.
#[derive(Clone, Debug)]
pub struct IndexOptions {
    /// tree.yml, or `None` for layout mode. The served root is both source and target. Read
    /// again at every re-index, so an edited tree.yml takes effect.
    pub config: Option<PathBuf>,
    /// Values that replace tree.yml's top-level keys.
    pub overrides: Overrides,
    /// The time stamped on the catalog.
    pub clock: Clock,
    /// Where the hash caches of the product folders are kept.
    pub hash_cache: crate::hash::CacheDir,
    /// Replace the published catalog even when a re-index keeps none of its products.
    pub force: bool,
    /// Watch the tree for files that arrive by other means.
    pub watch: bool,
    /// For products fetched from other servers (`prefix_path`).
    pub http: HttpSettings,
    /// Signs the catalog and LXC's files at every re-index (`--sign-key`).
    pub signer: Option<std::sync::Arc<crate::sign::Signer>>,
}

/// Why a re-index is wanted.
#[derive(Debug)]
pub(crate) struct Trigger {
    /// For the log.
    pub reason: String,
    /// The paths (relative to the root) whose change this is: a run whose triggers all name
    /// paths inside product folders hashes those products only and reads the others' ssb.json.
    /// Empty: anything may have changed, every product is hashed.
    pub paths: Vec<PathBuf>,
    /// Digests computed while uploading, per product folder (relative to the root).
    pub known: Vec<(String, KnownDigest)>,
    /// Told how the run that includes this trigger ended: `Err` carries why it failed.
    pub done: Option<oneshot::Sender<Result<(), String>>>,
}

impl Trigger {
    pub(crate) fn because(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            paths: Vec::new(),
            known: Vec::new(),
            done: None,
        }
    }

    /// A trigger for changes at these paths (relative to the root) only.
    pub(crate) fn touching(reason: impl Into<String>, paths: Vec<PathBuf>) -> Self {
        Self {
            paths,
            ..Self::because(reason)
        }
    }
}

/// Sends triggers to the re-index task.
#[derive(Clone, Debug)]
pub(crate) struct Reindexer {
    tx: mpsc::UnboundedSender<Trigger>,
    /// What this server's own writes (uploads, deletes, imports, direct publishing) have just
    /// left at their paths (relative to the root, the folders above them included), and when.
    /// See [`Reindexer::request_written`].
    written: Arc<Mutex<HashMap<PathBuf, (Left, Instant)>>>,
}

/// What this server's own write left at a path, for the watcher to recognize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Left {
    /// A file with this signature.
    File(FileSig),
    /// This folder (device and inode), whatever its entries: an entry added or removed since is
    /// reported under its own path, and the re-index itself writes into product folders.
    Folder { dev: u64, ino: u64 },
    /// Nothing: the path was removed.
    Nothing,
}

impl Left {
    /// What is at `path` now; `None` when that cannot be told.
    fn at(path: &Path) -> Option<Self> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => Some(Self::Folder {
                dev: meta.dev(),
                ino: meta.ino(),
            }),
            Ok(meta) => Some(Self::File(FileSig::of(&meta))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Self::Nothing),
            Err(_) => None,
        }
    }
}

/// What a server write did to the paths it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wrote {
    /// Put them in place.
    Placed,
    /// Removed them.
    Removed,
}

impl Reindexer {
    pub(crate) fn request(&self, trigger: Trigger) {
        // The task lives as long as the runtime; a send can only fail during shutdown.
        let _ = self.tx.send(trigger);
    }

    /// Requests a re-index for files this server has just put in place (`trigger.paths`,
    /// relative to `root`). The watcher sees them arrive too, and this trigger covers that
    /// (its run reads the tree after this call): for [`ECHO`] after this call, what it reports
    /// of them while they are unchanged, and of the folders above them while they are the same
    /// folders, is left out of its triggers. It was a second re-index for nothing after every
    /// upload (and after an upload that made a product folder, whose time stamp the run itself
    /// moves by writing ssb.json into it). Anything else the watcher reports of these paths,
    /// or later, is its to trigger as ever.
    pub(crate) fn request_written(&self, root: &Path, trigger: Trigger) {
        self.remember(root, &trigger.paths, Wrote::Placed);
        self.request(trigger);
    }

    /// [`Reindexer::request_written`] for paths this server has just removed (a file or a
    /// whole version folder): the watcher's reports of them and of what was inside them, while
    /// they are gone (until something is back in their place), and of the folders above them
    /// as they are now, are left out too. A delete used to cost a second re-index for nothing.
    pub(crate) fn request_removed(&self, root: &Path, trigger: Trigger) {
        self.remember(root, &trigger.paths, Wrote::Removed);
        self.request(trigger);
    }

    /// Notes a folder this server has just made (`dir`, relative to `root`) for a write still
    /// under way, and the folders above it: an upload's version folder is made before its body
    /// arrives, and the watcher reports a new folder once it has been quiet for
    /// [`WATCH_DEBOUNCE`], which for a large file is long before the upload ends and asks for
    /// its own run. A folder the write then takes away again is reported as gone, which its
    /// note does not cover.
    pub(crate) fn note_made(&self, root: &Path, dir: &Path) {
        self.remember(root, &[dir.to_owned()], Wrote::Placed);
    }

    /// Notes `paths` (relative to `root`) as `wrote` left them, and the folders above them as
    /// they are now.
    fn remember(&self, root: &Path, paths: &[PathBuf], wrote: Wrote) {
        let now = Instant::now();
        let mut written = self.written();
        written.retain(|_, (_, at)| now.duration_since(*at) < ECHO);
        if written.len() > MAX_WRITTEN {
            // Forgetting costs at most a run for nothing.
            written.clear();
        }
        for path in paths {
            for p in path.ancestors().filter(|p| !p.as_os_str().is_empty()) {
                let left = if wrote == Wrote::Removed && p == path {
                    Some(Left::Nothing)
                } else {
                    Left::at(&root.join(p))
                };
                if let Some(left) = left {
                    written.insert(p.to_owned(), (left, now));
                }
            }
        }
    }

    /// True when the watcher's report of `path` (relative to `root`) is the echo of a write
    /// this server has just told of: the path is as that write left it (a file unchanged, the
    /// same folder, gone when it was removed or was inside a folder removed). A report that
    /// finds it otherwise is not, and the note of that path is dropped, so that nothing
    /// the path goes through afterwards (a folder moved out and back, a removed version put
    /// back and removed again) can pass for the write.
    fn reported(&self, root: &Path, path: &Path) -> bool {
        let Some(now) = Left::at(&root.join(path)) else {
            return false;
        };
        let mut written = self.written();
        let fresh = |entry: Option<&(Left, Instant)>| {
            entry
                .filter(|(_, at)| at.elapsed() < ECHO)
                .map(|(left, _)| *left)
        };
        match fresh(written.get(path)) {
            Some(left) if left == now => return true,
            Some(_) => {
                written.remove(path);
            }
            None => {}
        }
        let removed_above: Vec<PathBuf> = path
            .ancestors()
            .skip(1)
            .filter(|p| fresh(written.get(*p)) == Some(Left::Nothing))
            .map(Path::to_owned)
            .collect();
        if now == Left::Nothing {
            return !removed_above.is_empty();
        }
        // Something is back inside a folder that was removed: that folder is no longer as the
        // delete left it.
        for p in removed_above {
            written.remove(&p);
        }
        false
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (Left, Instant)>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Requests a re-index for files this server has just put in place (`paths`, relative to
    /// `root`, all inside product folders; the run hashes their products only, and the watcher
    /// leaves them out as [`Reindexer::request_written`] says) and returns how the run that
    /// includes it will end: the receiver yields `Ok` once the catalog has been re-published
    /// with everything on disk at the time of this call, or the reason that run failed (it is
    /// retried on its own, without telling). The run happens whether or not anyone waits.
    pub(crate) fn publish_written(
        &self,
        root: &Path,
        reason: impl Into<String>,
        paths: Vec<PathBuf>,
    ) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        self.request_written(
            root,
            Trigger {
                done: Some(tx),
                ..Trigger::touching(reason, paths)
            },
        );
        rx
    }
}

/// What must be kept alive while the server runs: dropping it stops the watcher.
pub(crate) struct Running {
    _watcher: Option<Debouncer<notify::RecommendedWatcher, RecommendedCache>>,
}

/// Starts the re-index task (with a full scan at once) and, when asked, the watcher. Must be
/// called inside the tokio runtime.
pub(crate) fn start(
    root: PathBuf,
    opts: IndexOptions,
    served: Arc<ServedCatalog>,
) -> (Reindexer, Running) {
    let (tx, rx) = mpsc::unbounded_channel();
    let reindexer = Reindexer {
        tx,
        written: Arc::default(),
    };
    reindexer.request(Trigger::because("start-up scan"));
    let root = Arc::new(root);
    let watcher = if opts.watch {
        match watch(&root, &opts, reindexer.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(
                    "cannot watch {} for new files ({e}); uploads are still indexed, files copied in are not until the next upload or restart (check fs.inotify.max_user_watches)",
                    root.display()
                );
                None
            }
        }
    } else {
        None
    };
    tokio::spawn(run(root, opts, served, rx));
    (reindexer, Running { _watcher: watcher })
}

async fn run(
    root: Arc<PathBuf>,
    opts: IndexOptions,
    served: Arc<ServedCatalog>,
    mut rx: mpsc::UnboundedReceiver<Trigger>,
) {
    let opts = Arc::new(opts);
    // Manifests of the products a run does not hash, kept from one run to the next.
    let manifests = Arc::new(EntryCache::default());
    let thread = IndexThread::start();
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut delay = RETRY_FIRST;
    let mut reasons: Vec<String> = Vec::new();
    loop {
        let first = match retry_at {
            Some(at) => match tokio::time::timeout_at(at, rx.recv()).await {
                Ok(Some(t)) => Some(t),
                Ok(None) => return,
                Err(_) => None,
            },
            None => match rx.recv().await {
                Some(t) => Some(t),
                None => return,
            },
        };
        let mut known = Vec::new();
        let mut waiting = Vec::new();
        // The paths of the batch; `None` once one trigger (or a retry) needs a full run.
        let mut paths: Option<Vec<PathBuf>> = Some(Vec::new());
        let mut take = |t: Trigger, paths: &mut Option<Vec<PathBuf>>| {
            reasons.push(t.reason);
            known.extend(t.known);
            waiting.extend(t.done);
            match (paths.as_mut(), t.paths.is_empty()) {
                (Some(p), false) => p.extend(t.paths),
                _ => *paths = None,
            }
        };
        if let Some(t) = first {
            take(t, &mut paths);
            // While more changes may join, the copies this run will take of the last one's
            // manifests are made (a run of the whole tree takes none).
            let prepared = paths.is_some().then(|| {
                let manifests = Arc::clone(&manifests);
                thread.run(move || manifests.prepare())
            });
            tokio::time::sleep(COALESCE).await;
            if let Some(prepared) = prepared {
                let _ = prepared.await;
            }
        }
        while let Ok(t) = rx.try_recv() {
            take(t, &mut paths);
        }
        // A failed run is retried in full.
        if retry_at.is_some() {
            paths = None;
        }
        let started = Instant::now();
        let job = {
            let root = Arc::clone(&root);
            let opts = Arc::clone(&opts);
            let served = Arc::clone(&served);
            let manifests = Arc::clone(&manifests);
            thread.run(move || {
                // Readers get the new catalog before anyone waiting is told it is there.
                reindex(&root, &opts, &known, paths.as_deref(), &served, &manifests)
            })
        };
        let why = summarize(&reasons);
        match job.await {
            Ok(Ok((s, served_after))) => {
                tracing::info!(
                    "re-indexed ({why}): {} product(s), {} version(s), {} product folder(s) hashed, {} image bytes read, served after {:.0} ms, done in {:.0} ms",
                    s.products,
                    s.versions,
                    s.hashed,
                    s.bytes_read,
                    served_after.as_secs_f64() * 1000.0,
                    started.elapsed().as_secs_f64() * 1000.0
                );
                reasons.clear();
                retry_at = None;
                delay = RETRY_FIRST;
                for w in waiting {
                    let _ = w.send(Ok(()));
                }
            }
            outcome => {
                let error = match outcome {
                    Ok(Err(e)) => e,
                    Err(failed) => failed,
                    Ok(Ok(_)) => unreachable!(),
                };
                tracing::error!(
                    "re-index failed ({why}), retrying in {}s; the catalog served is the previous one: {error}",
                    delay.as_secs()
                );
                retry_at = Some(tokio::time::Instant::now() + delay);
                delay = (delay * 2).min(RETRY_MAX);
                for w in waiting {
                    let _ = w.send(Err(error.clone()));
                }
            }
        }
    }
}

/// The one thread every run (and the copies made ahead of it) runs on, for as long as the
/// server does. glibc's allocator gives each thread an arena of its own and keeps what a run
/// freed there for that thread: runs on whichever thread of the blocking pool was free grew
/// one arena after another to a run's peak. Uploads into a 10,000-version tree: peak RSS
/// 175-192 MiB on the blocking pool, 136-150 MiB on this thread (docs/benchmarks.md).
///
/// Dropping it lets the run under way finish first, as the runtime does for the blocking
/// pool's tasks when it shuts down: no catalog is left half-written.
struct IndexThread(Option<(std::sync::mpsc::Sender<Job>, std::thread::JoinHandle<()>)>);

type Job = Box<dyn FnOnce() + Send>;

impl IndexThread {
    /// Starts the thread; when the system will not, runs go to the blocking pool.
    fn start() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("ssb-reindex".into())
            .spawn(move || rx.into_iter().for_each(|job| job()));
        match started {
            Ok(handle) => Self(Some((tx, handle))),
            Err(e) => {
                tracing::warn!(
                    "cannot start the re-index thread ({e}): runs use the blocking pool"
                );
                Self(None)
            }
        }
    }

    /// Hands `f` to the thread at once (not when the answer is first awaited: the copies made
    /// ahead of a run are made while the run waits for more changes); the answer is what it
    /// returned, or an error that says it panicked.
    fn run<T, F>(&self, f: F) -> impl Future<Output = Result<T, String>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let panicked = |what: &dyn std::fmt::Display| format!("the indexer panicked: {what}");
        let stopped = || "the re-index thread has stopped".to_owned();
        let pending = match &self.0 {
            Some((jobs, _)) => {
                let (tx, rx) = oneshot::channel();
                let job = Box::new(move || {
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
                    let _ = tx.send(outcome.map_err(|p| panicked(&panic_message(p.as_ref()))));
                });
                Ok(jobs.send(job).map(|()| rx))
            }
            None => Err(tokio::task::spawn_blocking(f)),
        };
        async move {
            match pending {
                Ok(Ok(rx)) => rx.await.map_err(|_| stopped())?,
                Ok(Err(_)) => Err(stopped()),
                Err(task) => task.await.map_err(|e| panicked(&e)),
            }
        }
    }
}

impl Drop for IndexThread {
    fn drop(&mut self) {
        if let Some((jobs, handle)) = self.0.take() {
            drop(jobs);
            let _ = handle.join();
        }
    }
}

/// What a panic said, when it said it with a string.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

fn summarize(reasons: &[String]) -> String {
    match reasons {
        [] => "retry".into(),
        [one] => one.clone(),
        [first, rest @ ..] => format!("{first} and {} more", rest.len()),
    }
}

/// One run: records the digests computed in flight in the products' hash caches, so that
/// uploaded files are not read again, then publishes the whole tree (unchanged files are not
/// read either: the hash cache knows them). The new catalog is served as soon as its files are
/// made, before they are written (the image files it lists are in place; a run that then fails
/// serves the last catalog again); their gzip twins and companions (the page, LXC's index,
/// signatures) follow. Returns the summary and how long it took until the catalog was served.
fn reindex(
    root: &Path,
    opts: &IndexOptions,
    known: &[(String, KnownDigest)],
    paths: Option<&[PathBuf]>,
    served: &ServedCatalog,
    manifests: &EntryCache,
) -> Result<(PublishSummary, Duration), String> {
    let started = Instant::now();
    let mut by_product: std::collections::BTreeMap<&str, Vec<KnownDigest>> = Default::default();
    for (dir, k) in known {
        by_product.entry(dir).or_default().push(k.clone());
    }
    for (dir, list) in by_product {
        if let Err(e) = HashCache::record(&opts.hash_cache, &root.join(dir), &list) {
            tracing::warn!("cannot record upload digests for {dir} (they will be recomputed): {e}");
        }
    }
    let tree = Tree::load(opts.config.as_deref(), root, &opts.overrides)
        .map_err(|e| crate::error_chain(&e))?;
    let only = paths.and_then(|p| products_at(&tree, p));
    let (progress, exclude) = (
        indicatif::ProgressBar::hidden(),
        crate::catalog::products::Exclusions::new(),
    );
    let req = PublishRequest {
        tree: &tree,
        source: root,
        target: root,
        md5: false,
        skip_unavailable: true,
        http: &opts.http,
        clock: opts.clock,
        hash_cache: &opts.hash_cache,
        force: opts.force,
        progress: &progress,
        exclude: &exclude,
        only: only.as_ref(),
        signer: opts.signer.as_deref(),
        entry_cache: Some(manifests),
        catalog_in_memory: true,
        serve_made: None,
    };
    let publishing = served.publishing();
    let made = std::sync::Mutex::new(None);
    let serve = |files: &[MadeFile], products: &ProductsFile| {
        if let Some(replaced) = served.install_made(&publishing, files, products) {
            *made.lock().unwrap_or_else(|e| e.into_inner()) = Some((replaced, started.elapsed()));
        }
    };
    let staged = publish_catalog(&PublishRequest {
        serve_made: Some(&serve),
        ..req
    });
    let made = made.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut staged = match staged {
        Ok(staged) => staged,
        Err(e) => {
            if let Some((replaced, _)) = made {
                served.restore(&publishing, replaced);
            }
            return Err(crate::error_chain(&e));
        }
    };
    staged.release();
    let served_after = match made {
        Some((replaced, at)) => {
            served.confirm(&publishing, &staged.written);
            // Freed now that readers have the new one.
            drop(replaced);
            at
        }
        None if staged.written.is_empty() => {
            served.reload();
            started.elapsed()
        }
        None => {
            served.install(&publishing, &staged.written, &staged.summary.catalog);
            started.elapsed()
        }
    };
    drop(publishing);
    let written = std::mem::take(&mut staged.written);
    let (summary, twins) = staged.finish(&req).map_err(|e| crate::error_chain(&e))?;
    served.add_twins(&written, &twins);
    // A unified tarball the server built from split files that have changed since holds the
    // old image: it goes, and if it was published the catalog is made again without it. Only
    // the products hashed in this run can have changed files.
    match crate::direct::forget_stale(root, &summary.catalog, only.as_ref()) {
        Ok(dirs) if dirs.is_empty() => Ok((summary, served_after)),
        Ok(_) => {
            let summary = publish_tree(&req).map_err(|e| crate::error_chain(&e))?;
            served.refresh();
            Ok((summary, served_after))
        }
        Err(e) => {
            tracing::warn!("cannot check the built unified tarballs: {e}");
            Ok((summary, served_after))
        }
    }
}

/// The local products whose folders hold `paths` (relative to the root); `None` when a path is
/// in no product folder (tree.yml, a new layout folder...) or there are none: then every
/// product is hashed.
fn products_at(tree: &Tree, paths: &[PathBuf]) -> Option<std::collections::BTreeSet<String>> {
    if paths.is_empty() {
        return None;
    }
    let mut names = std::collections::BTreeSet::new();
    for path in paths {
        let owner = tree
            .config
            .products
            .iter()
            .filter(|p| p.prefix_path.is_none())
            .filter(|p| path.starts_with(p.directory.trim_matches('/')))
            .max_by_key(|p| p.directory.len())?;
        names.insert(owner.name.clone());
    }
    Some(names)
}

fn watch(
    root: &Arc<PathBuf>,
    opts: &IndexOptions,
    reindexer: Reindexer,
) -> notify::Result<Debouncer<notify::RecommendedWatcher, RecommendedCache>> {
    let filter_root = Arc::clone(root);
    let config = opts.config.clone();
    // Not through symlinks: the scan does not follow them either, and a link to a system folder
    // would make the watcher walk it.
    let no_links = notify::Config::default().with_follow_symlinks(false);
    let handler = move |res: DebounceEventResult| {
        let events = match res {
            Ok(events) => events,
            Err(errors) => {
                for e in errors {
                    tracing::warn!("watcher: {e}");
                }
                // Events may have been lost: a full scan is always right.
                reindexer.request(Trigger::because("watcher error"));
                return;
            }
        };
        let mut changed: Vec<PathBuf> = events
            .iter()
            .filter(|e| !matches!(e.kind, notify::EventKind::Access(a) if !matches!(a, notify::event::AccessKind::Close(notify::event::AccessMode::Write))))
            .flat_map(|e| e.paths.iter())
            .filter(|p| is_relevant(&filter_root, config.as_deref(), p))
            .map(|p| p.strip_prefix(filter_root.as_path()).unwrap_or(p).to_owned())
            .collect();
        changed.dedup();
        changed.retain(|p| {
            let ours = reindexer.reported(&filter_root, p);
            if ours {
                tracing::debug!(
                    "watcher: {} is the server's own write, already indexed",
                    p.display()
                );
            }
            !ours
        });
        if let Some(first) = changed.first() {
            let reason = match changed.len() {
                1 => format!("changed: {}", first.display()),
                n => format!("changed: {} and {} more", first.display(), n - 1),
            };
            // A path outside the root (the tree.yml elsewhere) stays absolute: no product
            // holds it, and the run is a full one.
            reindexer.request(Trigger::touching(reason, changed));
        }
    };
    let mut debouncer = new_debouncer_opt::<_, notify::RecommendedWatcher, _>(
        WATCH_DEBOUNCE,
        None,
        handler,
        RecommendedCache::new(),
        no_links,
    )?;
    debouncer.watch(root.as_path(), RecursiveMode::Recursive)?;
    tracing::info!("watching {} for new files", root.display());
    Ok(debouncer)
}

/// True for a path whose change can change the catalog: not hidden (temp files of uploads and
/// atomic writes, caches, `.ssb/`), not an ssb.json or catalog file that re-indexing itself
/// writes. The tree.yml counts.
fn is_relevant(root: &Path, config: Option<&Path>, path: &Path) -> bool {
    if config.is_some_and(|c| std::path::absolute(c).is_ok_and(|c| c == path) || c == path) {
        return true;
    }
    let Ok(rel) = path.strip_prefix(root) else {
        return false;
    };
    let mut parts = rel.components().peekable();
    if parts
        .peek()
        .is_some_and(|c| c.as_os_str() == crate::tree::names::STREAMS_TOP)
        || crate::tree::names::is_lxc_index_path(rel)
    {
        return false;
    }
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return false;
        };
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            return false;
        }
    }
    // What re-indexing writes itself: ssb.json in product folders, the catalog wherever
    // images_path puts it, and what goes beside it (signatures, LXC's index).
    let own_output = |name: &str| {
        name == crate::tree::names::MANIFEST_FILE
            || crate::tree::names::is_catalog_file_name(name)
            || crate::tree::names::is_companion_file_name(name)
    };
    !rel.as_os_str().is_empty()
        && !rel
            .file_name()
            .is_some_and(|n| own_output(&n.to_string_lossy()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reindexer() -> Reindexer {
        Reindexer {
            tx: mpsc::unbounded_channel().0,
            written: Arc::default(),
        }
    }

    /// Every run on one thread, in turn; a run that panics is an error that says why, and the
    /// thread goes on with the next.
    #[tokio::test]
    async fn runs_share_one_thread_and_outlive_a_panic() {
        let thread = IndexThread::start();
        let id = || std::thread::current().id();
        let first = thread.run(id).await.unwrap();
        assert_ne!(first, id(), "not the caller's thread");
        let failed = thread
            .run(|| -> () { panic!("the tree vanished") })
            .await
            .unwrap_err();
        assert!(failed.contains("the tree vanished"), "{failed}");
        assert_eq!(thread.run(id).await.unwrap(), first);
        // Dropped while a run is under way: the run finishes first.
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let under_way = {
            let finished = Arc::clone(&finished);
            thread.run(move || {
                std::thread::sleep(Duration::from_millis(100));
                finished.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        // Handed to the thread at once, awaited or not.
        drop(under_way);
        drop(thread);
        assert!(finished.load(std::sync::atomic::Ordering::SeqCst));
    }

    /// What the watcher leaves out after an upload and after a delete, and what it still
    /// reports: anything that changed since, or came back.
    #[test]
    fn the_watcher_skips_what_uploads_and_deletes_reported_as_long_as_it_stays_so() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let version = Path::new("images/os/1/amd64/default/20240101_00:00");
        let file = version.join("rootfs.squashfs");
        std::fs::create_dir_all(root.join(version)).unwrap();
        std::fs::write(root.join(&file), b"one").unwrap();
        let r = reindexer();
        assert!(!r.reported(root, &file), "told nothing yet");

        r.request_written(root, Trigger::touching("uploaded", vec![file.clone()]));
        assert!(r.reported(root, &file));
        assert!(r.reported(root, version), "the folders above it");
        assert!(r.reported(root, Path::new("images/os")));
        std::fs::write(root.join(version).join("lxd.tar.xz"), b"meta").unwrap();
        assert!(
            !r.reported(root, &version.join("lxd.tar.xz")),
            "a file copied in beside it"
        );
        assert!(
            r.reported(root, version),
            "its folder, the same one (what was added is reported under its own path)"
        );
        std::fs::write(root.join(&file), b"changed").unwrap();
        assert!(!r.reported(root, &file), "the file written again since");

        // A whole version removed: the folder, the files that were in it, and its product
        // folder as it is after the delete.
        std::fs::remove_dir_all(root.join(version)).unwrap();
        r.request_removed(root, Trigger::touching("deleted", vec![version.to_owned()]));
        assert!(r.reported(root, version));
        assert!(r.reported(root, &file), "a file that was inside it");
        assert!(r.reported(root, version.parent().unwrap()));
        // Back by other means: the watcher's to report; and so is its removal after that, even
        // when the watcher reported only a file of it in between.
        std::fs::create_dir_all(root.join(version)).unwrap();
        std::fs::write(root.join(&file), b"two").unwrap();
        assert!(!r.reported(root, &file));
        std::fs::remove_dir_all(root.join(version)).unwrap();
        assert!(!r.reported(root, version), "removed again, by other means");
        assert!(!r.reported(root, &file), "removed again, by other means");
        std::fs::create_dir_all(root.join(version)).unwrap();
        assert!(!r.reported(root, version), "back again");

        // A folder an upload has just made, reported before the upload ends.
        let fresh = Path::new("images/new/1/amd64/default/20240101_00:00");
        std::fs::create_dir_all(root.join(fresh)).unwrap();
        r.note_made(root, fresh);
        assert!(r.reported(root, fresh));
        assert!(r.reported(root, Path::new("images/new")));

        // A folder moved out and back keeps its inode, but is no longer the write's echo.
        std::fs::create_dir_all(root.join(version)).unwrap();
        std::fs::write(root.join(&file), b"three").unwrap();
        r.request_written(root, Trigger::touching("uploaded", vec![file.clone()]));
        assert!(r.reported(root, version));
        let away = root.join("images/os/1/amd64/away");
        std::fs::rename(root.join(version), &away).unwrap();
        assert!(!r.reported(root, version), "moved out");
        std::fs::rename(&away, root.join(version)).unwrap();
        assert!(!r.reported(root, version), "moved back");

        // A folder replaced by another of the same name is not the one written.
        let product = version.parent().unwrap();
        r.request_written(root, Trigger::touching("uploaded", vec![file.clone()]));
        assert!(r.reported(root, product));
        std::fs::rename(root.join(product), root.join("images/os/1/amd64/old")).unwrap();
        std::fs::create_dir(root.join(product)).unwrap();
        assert!(!r.reported(root, product));

        // Reports come within the echo's time or not at all: an older note is no echo.
        let other = Path::new("images/other");
        std::fs::create_dir_all(root.join(other)).unwrap();
        r.request_written(root, Trigger::touching("uploaded", vec![other.to_owned()]));
        r.written()
            .values_mut()
            .for_each(|(_, at)| *at -= ECHO + Duration::from_millis(1));
        assert!(!r.reported(root, other), "noted longer ago than ECHO");
    }

    #[test]
    fn relevant_paths() {
        let root = Path::new("/srv/www");
        let yes = [
            "/srv/www/images/debian/12/amd64/default/20240101_00:00/rootfs.squashfs",
            "/srv/www/images/debian/12/amd64/default/metadata.json",
            "/srv/www/images/debian",
        ];
        let no = [
            "/srv/www/images/debian/12/amd64/default/20240101_00:00/.upload-abc",
            "/srv/www/images/debian/12/amd64/default/.ssb-cache.json",
            "/srv/www/images/debian/12/amd64/default/ssb.json",
            "/srv/www/streams/v1/images.json",
            "/srv/www/streams/v1/.tmp-images.json.x",
            "/srv/www/.ssb/publish.lock",
            "/srv/www/images/debian/12/amd64/default/20240101_00:00/rootfs.tar.xz.asc",
            "/srv/www/meta",
            "/srv/www/meta/1.0",
            "/srv/www/meta/1.0/index-system",
            "/srv/www/meta/1.0/.tmp-index-system.x",
            "/srv/www/images/images.sjson",
            "/srv/www",
            "/elsewhere/x",
        ];
        for p in yes {
            assert!(is_relevant(root, None, Path::new(p)), "{p}");
        }
        for p in no {
            assert!(!is_relevant(root, None, Path::new(p)), "{p}");
        }
        assert!(is_relevant(
            root,
            Some(Path::new("/srv/www/.tree.yml")),
            Path::new("/srv/www/.tree.yml")
        ));
    }
}
