//! The catalog served from memory: `index.json` and every products file it names, each with
//! its gzip bytes and strong ETags, answered without touching the disk (200, 206 for a Range,
//! 304 for a matching `If-None-Match`, HEAD). A snapshot is swapped in whole when the server
//! publishes and when another process does (a poll of the files' signatures), so a reader gets
//! one catalog or the next, never a mix. The item paths of the snapshot are the files the
//! catalog checked at publish; the path guard trusts them without a file system call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::catalog::publish::{MadeFile, WrittenFile};
use crate::format::{Index, ProductsFile};
use crate::tree::FileSig;

/// How often the files are checked for a publish by another process when no file system
/// event said so (a folder created after the start, a file system without inotify).
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// One catalog file, ready to send.
pub(crate) struct CatalogFile {
    body: Bytes,
    /// Its gzip bytes. Unset for a moment after the server published it itself: the new catalog
    /// is served (uncompressed) before its twin is made, which takes longer than the rest.
    gzip: OnceLock<Bytes>,
    etag: HeaderValue,
    etag_gzip: HeaderValue,
    last_modified: Option<HeaderValue>,
}

/// What one catalog state holds.
#[derive(Default)]
struct Snapshot {
    /// The folders holding the catalog files, watched for a publish by another process.
    dirs: Vec<PathBuf>,
    /// Path relative to the root (`streams/v1/index.json`) → file.
    files: HashMap<String, Arc<CatalogFile>>,
    /// The signatures the files were read with, to notice a new publish. Empty until the
    /// server's own files are written when it served them as they were made
    /// ([`ServedCatalog::install_made`], then [`ServedCatalog::confirm`]).
    sigs: Mutex<Vec<(PathBuf, FileSig)>>,
    /// Every item path the catalog lists, relative to the root, and its product (one shared
    /// name per product: 10,000 versions list 20,000 paths). A file two products list (one
    /// rootfs with two metadata tarballs) belongs to the first by name, however the map was
    /// made.
    items: foldhash::HashMap<String, Arc<str>>,
    /// The products files as one document, parsed on first use (the web page).
    products: std::sync::OnceLock<Option<Arc<ProductsFile>>>,
    /// The catalog as each set of read users sees it (private catalogs), made on first use.
    filtered: std::sync::Mutex<HashMap<crate::access::Visibility, Arc<Filtered>>>,
}

/// The catalog of a snapshot as one visibility sees it: its index, products files and LXC
/// index, never written to disk.
pub(crate) struct Filtered {
    files: HashMap<String, Arc<CatalogFile>>,
    /// Products it holds.
    pub(crate) products: Arc<ProductsFile>,
    /// LXC's index of those products.
    pub(crate) lxc_index: Bytes,
}

impl Filtered {
    /// Its catalog file at `relative`.
    pub(crate) fn file(&self, relative: &str) -> Option<Arc<CatalogFile>> {
        self.files.get(relative).cloned()
    }
}

/// A catalog [`ServedCatalog::install_made`] replaced, for [`ServedCatalog::restore`].
pub(crate) struct Replaced(Arc<Snapshot>);

/// The catalog of the tree at `root`, as last read.
pub(crate) struct ServedCatalog {
    root: PathBuf,
    current: RwLock<Arc<Snapshot>>,
    /// Held while the server publishes the tree itself: the refreshes its own writes trigger
    /// are skipped (it installs what it makes, see [`ServedCatalog::install_made`]).
    publishing: Mutex<()>,
}

impl ServedCatalog {
    /// Reads the catalog under `root` (canonical); an absent or unreadable one is empty until
    /// a publish makes one.
    pub(crate) fn load(root: &Path) -> Self {
        let served = Self {
            root: root.to_owned(),
            current: RwLock::new(Arc::new(Snapshot::default())),
            publishing: Mutex::new(()),
        };
        served.refresh();
        served
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The catalog file at `relative`, if it is one.
    pub(crate) fn file(&self, relative: &str) -> Option<Arc<CatalogFile>> {
        self.snapshot().files.get(relative).cloned()
    }

    /// The products of the catalog as one document (every products file the index names),
    /// parsed once per snapshot; `None` when there is no catalog.
    pub(crate) fn products(&self) -> Option<Arc<ProductsFile>> {
        let snapshot = self.snapshot();
        snapshot
            .products
            .get_or_init(|| {
                let index = snapshot.files.get(&crate::tree::names::index_rel())?;
                let index: Index = serde_json::from_slice(&index.body).ok()?;
                let mut all: Option<ProductsFile> = None;
                for entry in index.index.values() {
                    let file = snapshot.files.get(entry.path.trim_start_matches('/'))?;
                    let doc: ProductsFile = serde_json::from_slice(&file.body).ok()?;
                    match &mut all {
                        None => all = Some(doc),
                        Some(all) => all.products.extend(doc.products),
                    }
                }
                all.map(Arc::new)
            })
            .clone()
    }

    /// True when the catalog lists a file at `relative`: publish checked it resolves inside the
    /// tree onto plain names.
    pub(crate) fn lists_item(&self, relative: &str) -> bool {
        self.snapshot().items.contains_key(relative)
    }

    /// The product whose item is at `relative`.
    pub(crate) fn item_product(&self, relative: &str) -> Option<Arc<str>> {
        self.snapshot().items.get(relative).cloned()
    }

    /// The product of the version folder `folder` (relative), from the items the catalog lists
    /// in it.
    pub(crate) fn folder_product(&self, folder: &str) -> Option<Arc<str>> {
        let prefix = format!("{folder}/");
        self.snapshot()
            .items
            .iter()
            .find(|(path, _)| {
                path.strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.contains('/'))
            })
            .map(|(_, product)| Arc::clone(product))
    }

    /// The catalog as `visible` sees it, made once per catalog and visibility.
    pub(crate) fn filtered(&self, visible: &crate::access::Visibility) -> Arc<Filtered> {
        let snapshot = self.snapshot();
        let mut cache = snapshot.filtered.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = cache.get(visible) {
            return Arc::clone(f);
        }
        let mut files = HashMap::new();
        let mut products = ProductsFile::default();
        let index_rel = crate::tree::names::index_rel();
        if let Some(index) = snapshot
            .files
            .get(&index_rel)
            .and_then(|f| serde_json::from_slice::<Index>(&f.body).ok())
        {
            let mut index = index;
            for entry in index.index.values_mut() {
                let rel = entry.path.trim_start_matches('/').to_owned();
                let Some(doc) = snapshot
                    .files
                    .get(&rel)
                    .and_then(|f| serde_json::from_slice::<ProductsFile>(&f.body).ok())
                else {
                    // A products file we cannot filter is shown to nobody, nor are its ids.
                    entry.products.clear();
                    continue;
                };
                let mut doc = doc;
                doc.products.retain(|id, _| visible.sees(id));
                entry.products.retain(|id| visible.sees(id));
                files.insert(
                    rel,
                    Arc::new(CatalogFile::generated(crate::catalog::publish::to_json(
                        &doc,
                    ))),
                );
                products.content_id.clone_from(&doc.content_id);
                products.datatype.clone_from(&doc.datatype);
                products.format.clone_from(&doc.format);
                products.updated.clone_from(&doc.updated);
                products.products.extend(doc.products);
            }
            files.insert(
                index_rel,
                Arc::new(CatalogFile::generated(crate::catalog::publish::to_json(
                    &index,
                ))),
            );
        }
        let lxc_index = Bytes::from(crate::catalog::lxc_index::build(&products, &mut Vec::new()));
        let filtered = Arc::new(Filtered {
            files,
            products: Arc::new(products),
            lxc_index,
        });
        cache.insert(visible.clone(), Arc::clone(&filtered));
        filtered
    }

    /// Reads the catalog again when its files changed since the last read (blocking). Keeps
    /// the current snapshot when the new files cannot be read whole. Does nothing while the
    /// server publishes ([`ServedCatalog::publishing`]): what it writes is installed as made.
    pub(crate) fn refresh(&self) {
        if let Ok(_free) = self.publishing.try_lock() {
            self.reload();
        }
    }

    /// Marks the server's own publish: [`ServedCatalog::refresh`] waits for the guard to go.
    pub(crate) fn publishing(&self) -> MutexGuard<'_, ()> {
        self.publishing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves the catalog files the server has just written (`written`, products file first,
    /// index last) and whose products are `products`, without reading them back; their gzip
    /// twins come with [`ServedCatalog::add_twins`]. `_publishing` shows the caller holds the
    /// publishing guard.
    pub(crate) fn install(
        &self,
        _publishing: &MutexGuard<'_, ()>,
        written: &[WrittenFile],
        products: &ProductsFile,
    ) {
        let mut files = Vec::new();
        for file in written {
            let Some(bytes) = &file.bytes else {
                tracing::warn!(
                    "{} was not published in memory: the catalog is read again instead",
                    file.path.display()
                );
                return self.reload();
            };
            files.push((file.path.as_path(), bytes, Some(file.sig)));
        }
        // Freed once readers can take the new one: a large catalog takes milliseconds to free.
        drop(self.install_files(&files, products));
    }

    /// Serves the catalog files the server has made (`made`, products file first, index last)
    /// and whose products are `products`, before they are written: the image files they list
    /// are in place, and readers need not wait for the disk. [`ServedCatalog::confirm`] adds
    /// the files' signatures once written; [`ServedCatalog::restore`] puts back the catalog
    /// returned when they could not be. `None`: the files were not for this tree, and the
    /// catalog on disk is served.
    pub(crate) fn install_made(
        &self,
        _publishing: &MutexGuard<'_, ()>,
        made: &[MadeFile],
        products: &ProductsFile,
    ) -> Option<Replaced> {
        let files: Vec<_> = made
            .iter()
            .map(|file| (file.path.as_path(), &file.bytes, None))
            .collect();
        self.install_files(&files, products).map(Replaced)
    }

    /// Gives the catalog [`ServedCatalog::install_made`] served the signatures of its files as
    /// written (`written`), so that a refresh knows them for its own. A catalog other than
    /// the one those bytes made is left as it is.
    pub(crate) fn confirm(&self, _publishing: &MutexGuard<'_, ()>, written: &[WrittenFile]) {
        let snapshot = self.snapshot();
        let mut sigs = Vec::new();
        for file in written {
            let served = file
                .path
                .strip_prefix(&self.root)
                .ok()
                .and_then(|rel| snapshot.files.get(&*rel.to_string_lossy()));
            match served {
                Some(served) if Some(&served.body) == file.bytes.as_ref() => {
                    sigs.push((file.path.clone(), file.sig));
                }
                _ => return,
            }
        }
        *snapshot.sigs.lock().unwrap_or_else(|e| e.into_inner()) = sigs;
    }

    /// Serves `replaced` again: the catalog [`ServedCatalog::install_made`] replaced with files
    /// that could not be written.
    pub(crate) fn restore(&self, _publishing: &MutexGuard<'_, ()>, replaced: Replaced) {
        let made = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            replaced.0,
        );
        drop(made);
    }

    /// Serves `files` (path, bytes, signature once written) with the items of `products`.
    /// Returns the catalog it replaced, or `None` when a file is outside the served tree (the
    /// catalog is read again from disk instead).
    fn install_files(
        &self,
        files: &[(&Path, &Bytes, Option<FileSig>)],
        products: &ProductsFile,
    ) -> Option<Arc<Snapshot>> {
        let mut snapshot = Snapshot::default();
        // Made now, written in a moment: the header says when, to the second.
        let made_at = jiff::Timestamp::now().as_second();
        for &(path, bytes, sig) in files {
            let Ok(rel) = path.strip_prefix(&self.root) else {
                tracing::warn!(
                    "{} is outside the served tree: the catalog is read again instead",
                    path.display()
                );
                self.reload();
                return None;
            };
            let mtime = sig.map_or(made_at, |sig| sig.mtime);
            snapshot.add(
                rel.to_string_lossy().into_owned(),
                path.to_owned(),
                sig,
                CatalogFile::with_body(bytes.clone(), mtime, None),
            );
        }
        // Two files per version (metadata and rootfs) is the usual: one allocation.
        let versions: usize = products.products.values().map(|p| p.versions.len()).sum();
        snapshot.items.reserve(2 * versions);
        for (id, product) in &products.products {
            let id: Arc<str> = Arc::from(id.as_str());
            for item in product.versions.values().flat_map(|v| v.items.values()) {
                // Both families' items name each file: one entry, one copy of the path. The
                // products come by name: the first keeps a file they share.
                if !snapshot.items.contains_key(&item.path) && servable(&item.path) {
                    snapshot.items.insert(item.path.clone(), Arc::clone(&id));
                }
            }
        }
        Some(std::mem::replace(
            &mut *self.current.write().unwrap_or_else(|e| e.into_inner()),
            Arc::new(snapshot),
        ))
    }

    /// Gives the files of the current catalog that are among `written` their gzip twins
    /// (`twins`, in the same order), made after [`ServedCatalog::install`].
    pub(crate) fn add_twins(&self, written: &[WrittenFile], twins: &[Bytes]) {
        let snapshot = self.snapshot();
        for (file, twin) in written.iter().zip(twins) {
            let served = file
                .path
                .strip_prefix(&self.root)
                .ok()
                .and_then(|rel| snapshot.files.get(&*rel.to_string_lossy()));
            if let Some(served) = served.filter(|f| Some(&f.body) == file.bytes.as_ref()) {
                let _ = served.gzip.set(twin.clone());
            }
        }
    }

    /// [`ServedCatalog::refresh`], for the holder of the publishing guard too.
    pub(crate) fn reload(&self) {
        let current = self.snapshot();
        let sigs = current
            .sigs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let unchanged = !sigs.is_empty()
            && sigs
                .iter()
                .all(|(path, sig)| FileSig::read(path).is_ok_and(|now| now == *sig));
        if unchanged {
            return;
        }
        match read_snapshot(&self.root) {
            Ok(next) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
            }
            Err(why) => {
                if !current.files.is_empty() {
                    tracing::warn!(
                        "the catalog was not reloaded, the previous one is served: {why}"
                    );
                }
            }
        }
    }

    /// Picks up publishes by other processes, for the life of the runtime: at once on a file
    /// system event in a catalog folder (a publish renames its files into place), and by a poll
    /// of the files' signatures every [`POLL`] otherwise.
    pub(crate) fn watch(self: Arc<Self>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let events = tx.clone();
        let watcher = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
            // A full channel already asks for a refresh.
            let _ = events.try_send(());
        });
        let mut watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "cannot watch the catalog ({e}); a publish by another process is picked up within {}s",
                    POLL.as_secs()
                );
                None
            }
        };
        let mut watched: Vec<PathBuf> = Vec::new();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = rx.recv() => {}
                }
                let served = Arc::clone(&self);
                let _ = tokio::task::spawn_blocking(move || served.refresh()).await;
                if let Some(w) = &mut watcher {
                    let dirs = self.snapshot().dirs.clone();
                    for dir in dirs.iter().filter(|d| !watched.contains(d)) {
                        use notify::Watcher as _;
                        if let Err(e) = w.watch(dir, notify::RecursiveMode::NonRecursive) {
                            tracing::debug!("cannot watch {}: {e}", dir.display());
                        }
                    }
                    watched = dirs;
                }
            }
        });
        drop(tx);
    }
}

/// [`crate::tree::read_signed`], its error as a message naming the file.
fn read_signed(path: &Path) -> Result<(Vec<u8>, FileSig), String> {
    crate::tree::read_signed(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_snapshot(root: &Path) -> Result<Snapshot, String> {
    let index_rel = crate::tree::names::index_rel();
    let index_path = root.join(&index_rel);
    let (index_bytes, index_sig) = read_signed(&index_path)?;
    let index: Index = serde_json::from_slice(&index_bytes)
        .map_err(|e| format!("{}: {e}", index_path.display()))?;
    let mut snapshot = Snapshot::default();
    for entry in index.index.values() {
        let rel = entry.path.trim_start_matches('/').to_owned();
        if !rel.split('/').all(crate::tree::is_plain_name) || snapshot.files.contains_key(&rel) {
            continue;
        }
        let path = root.join(&rel);
        let (bytes, sig) = read_signed(&path)?;
        collect_items(&bytes, &mut snapshot.items)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let twin = gzip_twin(&path, &bytes);
        let file = CatalogFile::new(bytes, &sig, twin);
        snapshot.add(rel, path, Some(sig), file);
    }
    let twin = gzip_twin(&index_path, &index_bytes);
    let file = CatalogFile::new(index_bytes, &index_sig, twin);
    snapshot.add(index_rel, index_path, Some(index_sig), file);
    Ok(snapshot)
}

impl Snapshot {
    /// Serves `file` at `rel`, read from `path` with signature `sig` (watched for changes).
    /// `sig`: `None` for a file not written yet (see [`ServedCatalog::install_made`]).
    fn add(&mut self, rel: String, path: PathBuf, sig: Option<FileSig>, file: CatalogFile) {
        self.files.insert(rel, Arc::new(file));
        if let Some(dir) = path.parent().filter(|d| !self.dirs.iter().any(|x| x == d)) {
            self.dirs.push(dir.to_owned());
        }
        if let Some(sig) = sig {
            let sigs = self.sigs.get_mut().unwrap_or_else(|e| e.into_inner());
            sigs.push((path, sig));
        }
    }
}

/// The relative item paths of a products file (URLs and `../` paths are not ours to serve),
/// read without building a document: only the paths are decoded.
fn collect_items(
    products: &[u8],
    out: &mut foldhash::HashMap<String, Arc<str>>,
) -> Result<(), serde_json::Error> {
    use std::borrow::Cow;
    use std::collections::hash_map::Entry;
    #[derive(serde::Deserialize)]
    struct File<'a> {
        #[serde(default, borrow)]
        products: HashMap<Cow<'a, str>, Product<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Product<'a> {
        #[serde(default, borrow)]
        versions: HashMap<Cow<'a, str>, Version<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Version<'a> {
        #[serde(default, borrow)]
        items: HashMap<Cow<'a, str>, Item<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Item<'a> {
        #[serde(default, borrow)]
        path: Option<Cow<'a, str>>,
    }
    let file: File<'_> = serde_json::from_slice(products)?;
    for (id, product) in file.products {
        let id: Arc<str> = Arc::from(&*id);
        for item in product
            .versions
            .into_values()
            .flat_map(|v| v.items.into_values())
        {
            if let Some(path) = item.path
                && servable(&path)
            {
                // As `install` does: a file two products list is the first's by name.
                match out.entry(path.into_owned()) {
                    Entry::Occupied(mut owner) => {
                        if *id < **owner.get() {
                            owner.insert(Arc::clone(&id));
                        }
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(Arc::clone(&id));
                    }
                }
            }
        }
    }
    Ok(())
}

/// An item path the server answers for: relative, plain names only (URLs and `../` paths are
/// not ours to serve).
fn servable(path: &str) -> bool {
    !path.contains("://") && path.split('/').all(crate::tree::is_plain_name)
}

/// The gzip twin publish wrote beside `path`, when it holds exactly `body`: decompressing it
/// to check costs a fraction of compressing again.
fn gzip_twin(path: &Path, body: &[u8]) -> Option<Vec<u8>> {
    let gz = std::fs::read(crate::tree::names::gz_path(path)).ok()?;
    let mut plain = Vec::with_capacity(body.len());
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&gz[..]), &mut plain).ok()?;
    (plain == body).then_some(gz)
}

impl CatalogFile {
    /// A document made in memory (a filtered catalog), gzipped here.
    pub(crate) fn generated(body: Vec<u8>) -> Self {
        Self::new(
            body,
            &FileSig {
                size: 0,
                mtime: jiff::Timestamp::now().as_second(),
                mtime_ns: 0,
                ino: 0,
                dev: 0,
                ctime: 0,
                ctime_ns: 0,
            },
            None,
        )
    }

    /// A file read from disk, with its twin when publish wrote a matching one (else it is
    /// compressed here).
    fn new(body: Vec<u8>, sig: &FileSig, twin: Option<Vec<u8>>) -> Self {
        let gzip = twin.unwrap_or_else(|| crate::catalog::publish::gzip(&body));
        Self::with_body(body.into(), sig.mtime, Some(gzip.into()))
    }

    fn with_body(body: Bytes, mtime: i64, gzip: Option<Bytes>) -> Self {
        // Strong: any change of the bytes changes it. No one forges a catalog against its own
        // server's tag, so it need not be a cryptographic digest: sha256 of the 7.9 MB products
        // file of 10,000 versions was 5 ms of every re-index after an upload, xxh3 under 1 ms.
        let digest = xxhash_rust::xxh3::xxh3_128(&body);
        let tag = |suffix: &str| {
            HeaderValue::from_str(&format!("\"{digest:032x}{suffix}\""))
                .expect("hex is a valid header value")
        };
        let last_modified = jiff::Timestamp::from_second(mtime)
            .ok()
            .map(|t| t.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string())
            .and_then(|s| HeaderValue::from_str(&s).ok());
        Self {
            gzip: gzip.map(OnceLock::from).unwrap_or_default(),
            body,
            etag: tag(""),
            etag_gzip: tag("-gz"),
            last_modified,
        }
    }

    /// The answer to a GET or HEAD of this file.
    pub(crate) fn answer(&self, method: &Method, headers: &HeaderMap) -> Response {
        let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
        let twin = self
            .gzip
            .get()
            .filter(|_| range.is_none() && accepts_gzip(headers));
        let gzip = twin.is_some();
        let (body, etag) = match twin {
            Some(twin) => (twin, &self.etag_gzip),
            None => (&self.body, &self.etag),
        };
        let mut response = if none_match(headers, [&self.etag, &self.etag_gzip]) {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            match range.map(http_range_header::parse_range_header) {
                None => full(method, body.clone()),
                Some(parsed) => {
                    match parsed.ok().and_then(|p| p.validate(body.len() as u64).ok()) {
                        Some(ranges) if ranges.len() == 1 => {
                            let (start, end) = (*ranges[0].start(), *ranges[0].end());
                            let part = body.slice(start as usize..=end as usize);
                            let mut r = full(method, part);
                            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                            r.headers_mut().insert(
                                header::CONTENT_RANGE,
                                HeaderValue::from_str(&format!(
                                    "bytes {start}-{end}/{}",
                                    body.len()
                                ))
                                .expect("digits"),
                            );
                            r
                        }
                        // Several ranges: the whole file is a valid answer.
                        Some(_) => full(method, body.clone()),
                        None => {
                            let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                            r.headers_mut().insert(
                                header::CONTENT_RANGE,
                                HeaderValue::from_str(&format!("bytes */{}", body.len()))
                                    .expect("digits"),
                            );
                            r
                        }
                    }
                }
            }
        };
        let modified = response.status() != StatusCode::NOT_MODIFIED;
        let h = response.headers_mut();
        h.insert(header::ETAG, etag.clone());
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        if let Some(lm) = &self.last_modified {
            h.insert(header::LAST_MODIFIED, lm.clone());
        }
        if modified {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if gzip {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
        }
        response
    }
}

/// 200 with `body` (its length only, for HEAD).
fn full(method: &Method, body: Bytes) -> Response {
    let len = body.len();
    let mut r = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(body))
    };
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// `Accept-Encoding` names gzip (or `*`) with a non-zero q.
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            let mut parts = coding.split(';').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let q_zero = parts.any(|p| {
                p.strip_prefix("q=")
                    .and_then(|q| q.parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name.eq_ignore_ascii_case("gzip") || name == "*") && !q_zero
        })
}

/// `If-None-Match` names one of `tags` (weakly compared, as RFC 9110 asks) or is `*`.
fn none_match(headers: &HeaderMap, tags: [&HeaderValue; 2]) -> bool {
    let Some(value) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    value.split(',').map(str::trim).any(|t| {
        let t = t.strip_prefix("W/").unwrap_or(t);
        t == "*" || tags.iter().any(|tag| tag.as_bytes() == t.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_sig() -> FileSig {
        FileSig {
            size: 34,
            mtime: 1_700_000_000,
            mtime_ns: 0,
            ino: 1,
            dev: 1,
            ctime: 1_700_000_000,
            ctime_ns: 0,
        }
    }

    fn file() -> CatalogFile {
        CatalogFile::new(
            br#"{"format":"index:1.0","index":{}}"#.to_vec(),
            &file_sig(),
            None,
        )
    }

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn gzip_range_and_revalidation() {
        let f = file();
        let plain = f.answer(&Method::GET, &HeaderMap::new());
        assert_eq!(plain.status(), StatusCode::OK);
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        let etag = plain.headers()[header::ETAG].clone();

        let gz = f.answer(
            &Method::GET,
            &headers(&[(header::ACCEPT_ENCODING, "br, gzip;q=0.8")]),
        );
        assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
        assert_ne!(
            gz.headers()[header::ETAG],
            etag,
            "one tag per representation"
        );
        let refused = f.answer(
            &Method::GET,
            &headers(&[(header::ACCEPT_ENCODING, "gzip;q=0")]),
        );
        assert!(refused.headers().get(header::CONTENT_ENCODING).is_none());

        let not_modified = f.answer(
            &Method::GET,
            &headers(&[(header::IF_NONE_MATCH, etag.to_str().unwrap())]),
        );
        assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);

        let part = f.answer(&Method::GET, &headers(&[(header::RANGE, "bytes=1-8")]));
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(part.headers()[header::CONTENT_LENGTH], "8");
        assert_eq!(part.headers()[header::CONTENT_RANGE], "bytes 1-8/33");
        let bad = f.answer(&Method::GET, &headers(&[(header::RANGE, "bytes=100-")]));
        assert_eq!(bad.status(), StatusCode::RANGE_NOT_SATISFIABLE);

        let head = f.answer(&Method::HEAD, &HeaderMap::new());
        assert_eq!(head.headers()[header::CONTENT_LENGTH], "33");
    }

    #[test]
    fn a_file_two_products_list_is_the_first_ones_however_the_catalog_came() {
        // One rootfs listed by two products (two metadata tarballs beside it).
        let shared = "images/p/1/amd64/default/20240101_00:00/rootfs.squashfs";
        let product = |name: &str| {
            format!(
                r#""{name}":{{"aliases":"","arch":"amd64","os":"p","release":"1","release_title":"1","versions":{{"20240101_00:00":{{"items":{{"root":{{"ftype":"squashfs","path":"{shared}","sha256":"00","size":1}}}}}}}}}}"#
            )
        };
        // Written in either order: the map is made from a hash map of the products.
        for (a, b) in [("p:b", "p:a"), ("p:a", "p:b")] {
            let json = format!(
                r#"{{"content_id":"images","datatype":"image-downloads","format":"products:1.0","products":{{{},{}}}}}"#,
                product(a),
                product(b)
            );
            let mut read = foldhash::HashMap::default();
            collect_items(json.as_bytes(), &mut read).unwrap();
            assert_eq!(read.get(shared).map(|p| &**p), Some("p:a"), "read back");

            let products: ProductsFile = serde_json::from_str(&json).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let served = ServedCatalog::load(dir.path());
            let written = [WrittenFile {
                path: dir.path().join(crate::tree::names::index_rel()),
                bytes: Some(b"{}".to_vec().into()),
                sig: file_sig(),
            }];
            let guard = served.publishing();
            served.install(&guard, &written, &products);
            drop(guard);
            assert_eq!(
                served.item_product(shared).as_deref(),
                Some("p:a"),
                "installed"
            );
        }
    }

    /// One product of one version, its rootfs at
    /// `images/p/1/amd64/default/20240101_00:00/rootfs.squashfs`.
    fn one_product() -> ProductsFile {
        serde_json::from_str(
            r#"{"content_id":"images","datatype":"image-downloads","format":"products:1.0",
                "products":{"p:1:amd64:default":{"aliases":"","arch":"amd64","os":"p",
                "release":"1","release_title":"1","versions":{"20240101_00:00":
                {"items":{"root":{"ftype":"squashfs","path":"images/p/1/amd64/default/20240101_00:00/rootfs.squashfs",
                "sha256":"00","size":1}}}}}}}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_catalog_served_as_made_is_known_once_written_or_given_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let rel = crate::tree::names::index_rel();
        let path = root.join(&rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(
            &path,
            "{\"format\":\"index:1.0\",\"index\":{},\"updated\":\"before\"}\n",
        )
        .unwrap();
        let served = ServedCatalog::load(root);
        let body = |served: &ServedCatalog| served.file(&rel).map(|f| f.body.clone());
        assert_eq!(
            body(&served).as_deref(),
            Some(&b"{\"format\":\"index:1.0\",\"index\":{},\"updated\":\"before\"}\n"[..])
        );

        let products = one_product();
        let item = "images/p/1/amd64/default/20240101_00:00/rootfs.squashfs";
        let made = |text: &'static [u8]| {
            [MadeFile {
                path: path.clone(),
                bytes: Bytes::from_static(text),
            }]
        };

        // Served as made; the disk still holds the last catalog.
        let guard = served.publishing();
        let first = made(b"{\"made\":1}\n");
        let replaced = served.install_made(&guard, &first, &products).unwrap();
        assert_eq!(
            body(&served),
            Some(first[0].bytes.clone()),
            "served before written"
        );
        assert_eq!(
            served.item_product(item).as_deref(),
            Some("p:1:amd64:default")
        );
        // Written (other bytes on disk here, to tell a read of the disk from the bytes made).
        std::fs::write(
            &path,
            "{\"format\":\"index:1.0\",\"index\":{},\"updated\":\"on disk\"}\n",
        )
        .unwrap();
        let written = [WrittenFile {
            path: path.clone(),
            bytes: Some(first[0].bytes.clone()),
            sig: FileSig::read(&path).unwrap(),
        }];
        served.confirm(&guard, &written);
        drop((replaced, guard));
        served.refresh();
        assert_eq!(
            body(&served),
            Some(first[0].bytes.clone()),
            "its own files: not read again"
        );

        // Not confirmed: the next refresh reads what the disk holds.
        let guard = served.publishing();
        let second = made(b"{\"made\":2}\n");
        drop(served.install_made(&guard, &second, &products));
        drop(guard);
        served.refresh();
        assert_eq!(
            body(&served).as_deref(),
            Some(&b"{\"format\":\"index:1.0\",\"index\":{},\"updated\":\"on disk\"}\n"[..])
        );

        // Not written: the catalog it replaced comes back.
        let guard = served.publishing();
        let third = made(b"{\"made\":3}\n");
        let replaced = served.install_made(&guard, &third, &products).unwrap();
        assert_eq!(body(&served), Some(third[0].bytes.clone()));
        served.restore(&guard, replaced);
        drop(guard);
        assert_eq!(
            body(&served).as_deref(),
            Some(&b"{\"format\":\"index:1.0\",\"index\":{},\"updated\":\"on disk\"}\n"[..])
        );
    }

    #[test]
    fn the_servers_own_publish_is_served_as_written_then_with_its_twin() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let served = ServedCatalog::load(root);
        assert!(served.file(&crate::tree::names::index_rel()).is_none());

        let products = one_product();
        let sig = file_sig();
        let written: Vec<WrittenFile> = [
            (
                crate::tree::names::products_rel("streams/v1"),
                b"{\"products\":1}\n".to_vec(),
            ),
            (crate::tree::names::index_rel(), b"{\"index\":1}\n".to_vec()),
        ]
        .into_iter()
        .map(|(rel, bytes)| WrittenFile {
            path: root.join(rel.trim_start_matches('/')),
            bytes: Some(bytes.into()),
            sig,
        })
        .collect();

        let guard = served.publishing();
        // Files another process (or this one) put on disk meanwhile are not read while the
        // server publishes.
        std::fs::create_dir_all(root.join("streams/v1")).unwrap();
        std::fs::write(root.join(crate::tree::names::index_rel()), "{}").unwrap();
        served.refresh();
        assert!(served.file(&crate::tree::names::index_rel()).is_none());
        served.install(&guard, &written, &products);
        drop(guard);

        let gzip = headers(&[(header::ACCEPT_ENCODING, "gzip")]);
        let index = served.file(&crate::tree::names::index_rel()).unwrap();
        let answer = index.answer(&Method::GET, &gzip);
        assert!(
            answer.headers().get(header::CONTENT_ENCODING).is_none(),
            "no twin yet: sent as it is"
        );
        assert!(served.lists_item("images/p/1/amd64/default/20240101_00:00/rootfs.squashfs"));
        assert!(!served.lists_item("images/p/1/amd64/default/20240101_00:00/other"));

        let twins: Vec<Bytes> = written
            .iter()
            .map(|f| crate::catalog::publish::gzip(f.bytes.as_ref().unwrap()).into())
            .collect();
        served.add_twins(&written, &twins);
        let answer = index.answer(&Method::GET, &gzip);
        assert_eq!(answer.headers()[header::CONTENT_ENCODING], "gzip");
    }
}
