//! The products of a tree: declared in tree.yml or discovered from the layout, and their
//! manifests, loaded by hashing the local folders, reading their ssb.json, or fetching them from
//! other namespaces (each once). Warnings are logged; failures are returned.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::ProgressBar;
use tracing::warn;

use crate::catalog::manifest::{
    self, BuildOptions, Built, HttpSettings, MANIFEST_FILE, ManifestError, Rejected,
};
use crate::config::{self, ConfigError, Origin, ProductSpec, TreeConfig};
use crate::format::{Manifest, canonical_arch};
use crate::tree::{self, FileSig, TreeError};

/// Where the products come from.
#[derive(Clone, Debug)]
pub struct Tree {
    /// Validated configuration (synthesised in layout mode, where `file` is `None`).
    pub config: TreeConfig,
}

/// The products or their manifests cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// tree.yml is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The tree folder is missing.
    #[error("{} is not a folder; without a tree.yml, -t/-s must name a tree holding images/<os>/<release>/<arch>/<variant>/<version>/", path.display())]
    NotAFolder {
        /// The folder.
        path: PathBuf,
    },
    /// Layout folders that cannot make valid products.
    #[error("the layout under {} has {} problem(s):\n{}", root.display(), problems.len(), problems.join("\n"))]
    Layout {
        /// The tree.
        root: PathBuf,
        /// One line per problem.
        problems: Vec<String>,
    },
    /// A folder cannot be read.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// No product of that name.
    #[error("no product named `{name}`; known: {}", known.join(", "))]
    NoProduct {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: Vec<String>,
    },
    /// Some products could not be loaded.
    #[error("{} product(s) could not be loaded; nothing was published (use --skip-unavailable to publish the rest):\n{}", failures.len(), failures.join("\n"))]
    Unavailable {
        /// One line per product.
        failures: Vec<String>,
    },
}

/// Logs non-fatal findings.
pub fn report(warnings: &[String]) {
    for w in warnings {
        warn!("{w}");
    }
}

impl Tree {
    /// Loads the products: from the tree.yml at `config`, or discovered under `root` in layout
    /// mode. `overrides` replace the top-level keys either way.
    pub fn load(
        config: Option<&Path>,
        root: &Path,
        overrides: &config::Overrides,
    ) -> Result<Self, LoadError> {
        if let Some(path) = config {
            let mut config = TreeConfig::load(path)?;
            config.apply(overrides);
            report(&config.warnings);
            return Ok(Self { config });
        }
        if !root.is_dir() {
            return Err(LoadError::NotAFolder {
                path: root.to_owned(),
            });
        }
        let mut warnings = Vec::new();
        let found = tree::discover_layout(root, &mut warnings)?;
        report(&warnings);
        Self::from_layout(root, found, overrides)
    }

    /// The products of the layout folders `found` under `root` (a folder, or a bucket's URL
    /// as a path), named and aliased after their folders.
    pub fn from_layout(
        root: &Path,
        found: Vec<tree::LayoutProduct>,
        overrides: &config::Overrides,
    ) -> Result<Self, LoadError> {
        let mut problems = Vec::new();
        let mut products = Vec::new();
        for p in found {
            let dir = root.join(&p.directory);
            if canonical_arch(&p.arch).is_none() {
                problems.push(format!(
                    "{}: unknown architecture folder `{}` (LXD and Incus would drop the product); use a name such as amd64 or arm64",
                    dir.display(),
                    p.arch
                ));
                continue;
            }
            let aliases = p.default_aliases();
            for a in &aliases {
                if let Err(why) = config::check_alias(a) {
                    problems.push(format!(
                        "{}: the alias `{a}` made from these folder names {why}",
                        dir.display()
                    ));
                }
            }
            products.push(ProductSpec {
                name: p.name(),
                arch: p.arch,
                release: Some(p.release),
                os: None,
                release_title: None,
                directory: p.directory,
                version: None,
                prefix_path: None,
                build_script_hook: None,
                hidden: false,
                days: 1,
                deltas: None,
                aliases,
                variant: Some(p.variant),
                release_codename: None,
                requirements: None,
                expiry: None,
                build: config::BuildSpec::default(),
                origin: Origin::Layout { dir },
            });
        }
        if !problems.is_empty() {
            return Err(LoadError::Layout {
                root: root.to_owned(),
                problems,
            });
        }
        if products.is_empty() {
            warn!(
                "no products under {}: expected images/<os>/<release>/<arch>/<variant>/<YYYYMMDD_HH:MM>/ (or a tree.yml)",
                root.display()
            );
        }
        let mut config = TreeConfig {
            file: None,
            prefix: String::new(),
            images_path: config::DEFAULT_IMAGES_PATH.into(),
            datatype: config::DEFAULT_DATATYPE.into(),
            format: config::DEFAULT_FORMAT.into(),
            products,
            distrobuilder: None,
            mirrors: Vec::new(),
            deltas: 0,
            delta_max_percent: crate::delta::DEFAULT_MAX_PERCENT,
            warnings: Vec::new(),
        };
        config.apply(overrides);
        Ok(Self { config })
    }

    /// True when the products were discovered from the layout rather than read from tree.yml.
    pub fn is_layout(&self) -> bool {
        self.config.file.is_none()
    }
}

impl Tree {
    /// The product named `name`.
    pub fn product(&self, name: &str) -> Result<&ProductSpec, LoadError> {
        self.config
            .product(name)
            .ok_or_else(|| LoadError::NoProduct {
                name: name.to_owned(),
                known: self
                    .config
                    .products
                    .iter()
                    .map(|p| p.name.clone())
                    .collect(),
            })
    }
}

/// Fills what a layout product leaves to its images: the OS name from metadata.yaml, else the
/// folder name.
pub(crate) fn finish_layout_spec(spec: &mut ProductSpec, m: &Manifest) {
    if spec.os.is_none() {
        let folder = spec
            .directory
            .split('/')
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        spec.os = Some(m.properties.get("os").cloned().unwrap_or(folder));
    }
}

/// Hashes a local product's folder under `source` into its manifest (see [`manifest::build`]).
pub fn hash_product(
    spec: &ProductSpec,
    config: &TreeConfig,
    source: &Path,
    opts: &BuildOptions,
    progress: &ProgressBar,
    warnings: &mut Vec<String>,
) -> Result<Built, ManifestError> {
    manifest::build(
        manifest::LocalProduct {
            root: source,
            name: &spec.name,
            arch: &spec.arch,
            dir: &source.join(&spec.directory),
            directory: &spec.directory,
            prefix: &config.prefix,
            deltas: config.deltas_of(spec),
        },
        opts,
        &|n| progress.inc(n),
        warnings,
    )
}

/// How local manifests are obtained.
#[derive(Clone, Copy, Debug)]
pub enum Manifests<'a> {
    /// Hash the product folders; write each ssb.json under `write_to` when given.
    Hash {
        /// Hashing options (a product's own `expiry` applies when these have none).
        opts: &'a BuildOptions,
        /// The tree the ssb.json files are written into.
        write_to: Option<&'a Path>,
    },
    /// Read each product's existing ssb.json.
    Read,
}

/// What [`load_entries`] works with.
pub struct LoadOptions<'a> {
    /// The tree the product folders are under.
    pub source: &'a Path,
    /// Hash or read local manifests.
    pub manifests: Manifests<'a>,
    /// Leave out products that cannot be loaded, with a warning.
    pub skip_unavailable: bool,
    /// How remote manifests are fetched.
    pub http: &'a HttpSettings,
    /// Told about every byte hashed.
    pub progress: &'a ProgressBar,
    /// Versions to leave out of hashed manifests, by product name.
    pub exclude: &'a Exclusions,
    /// When hashing: hash only these products and read the others' ssb.json (hashing them
    /// when it cannot be read). `None`: hash all.
    pub only: Option<&'a std::collections::BTreeSet<String>>,
    /// The entries of the last run, for a process that publishes the same tree again and again
    /// (see [`EntryCache`]).
    pub entry_cache: Option<&'a EntryCache>,
}

/// The entries of a run, kept for the next one by a process that publishes the same tree again
/// and again (the server's re-index). A product that is not to be hashed (not in
/// [`LoadOptions::only`]: nothing in its folder changed) and whose declaration and ssb.json are
/// the same as then is taken from here whole, without reading its ssb.json and every version's
/// metadata.json again: for 10,000 versions those reads took half of a re-index after an
/// upload.
///
/// A run consumes the entries it takes (the catalog is built from them), so it gets copies.
/// Copying 10,000 versions' manifests took a tenth of that re-index; a caller that knows a run
/// is coming and has time to spare before it (the server waits for more changes to join)
/// makes them beforehand with [`EntryCache::prepare`].
#[derive(Debug, Default)]
pub struct EntryCache(std::sync::Mutex<HashMap<String, Arc<CachedEntry>>>);

#[derive(Debug)]
struct CachedEntry {
    /// The declaration it was made from.
    declared: ProductSpec,
    /// Its ssb.json's signature then.
    sig: FileSig,
    entry: Entry,
    /// What loading it said.
    warnings: Vec<String>,
    /// A copy of `entry` made ahead of the run that takes it.
    spare: std::sync::Mutex<Option<Entry>>,
}

impl CachedEntry {
    /// A copy of the entry for a run: the one made ahead when there is one.
    fn take(&self) -> Entry {
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).take();
        spare.unwrap_or_else(|| self.entry.clone())
    }
}

impl EntryCache {
    fn get(&self, declared: &ProductSpec, manifest_path: &Path) -> Option<Arc<CachedEntry>> {
        let cached = self.lock().get(&declared.name).cloned()?;
        let sig = FileSig::read(manifest_path).ok()?;
        (cached.declared == *declared && cached.sig == sig).then_some(cached)
    }

    /// Makes the copies the next run will take of every entry that has none. An entry a run
    /// replaces drops its copy with it, so a copy is never older than its entry.
    pub fn prepare(&self) {
        let cached: Vec<Arc<CachedEntry>> = self.lock().values().cloned().collect();
        for entry in cached {
            let mut spare = entry.spare.lock().unwrap_or_else(|e| e.into_inner());
            if spare.is_none() {
                *spare = Some(entry.entry.clone());
            }
        }
    }

    fn put(
        &self,
        declared: &ProductSpec,
        manifest_path: &Path,
        entry: &Entry,
        warnings: &[String],
    ) {
        let Ok(sig) = FileSig::read(manifest_path) else {
            return;
        };
        let mut entry = entry.clone();
        // Kept with both families' items, so that the catalog adds none to a copy of it.
        for version in entry.manifest.versions.values_mut() {
            crate::catalog::publish::bridge_families(version);
        }
        let cached = CachedEntry {
            declared: declared.clone(),
            sig,
            entry,
            warnings: warnings.to_vec(),
            spare: std::sync::Mutex::new(None),
        };
        self.lock().insert(declared.name.clone(), Arc::new(cached));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<CachedEntry>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Versions to leave out of manifests, by product name (versions about to be purged).
pub type Exclusions =
    std::collections::BTreeMap<String, std::collections::BTreeSet<crate::format::VersionName>>;

/// One product ready for the catalog: its resolved declaration and its manifest.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The declaration (tree.yml or layout).
    pub spec: ProductSpec,
    /// The manifest (local or remote).
    pub manifest: Manifest,
}

/// Loaded products, in tree order, and the image bytes read to hash them.
pub struct Loaded {
    /// One entry per product that loaded.
    pub entries: Vec<Entry>,
    /// Image bytes read.
    pub bytes_read: u64,
    /// Versions left out of their products' manifests, and why (logged already).
    pub rejected: Vec<Rejected>,
    /// Local products whose folders were hashed (the others' manifests were read).
    pub hashed: usize,
}

/// A local product as [`hash_local`] got it.
enum Local {
    /// Hashed, or its ssb.json read (`read`), with what that said.
    Loaded {
        built: Result<Built, ManifestError>,
        warnings: Vec<String>,
        read: bool,
    },
    /// Taken whole from the last run (see [`EntryCache`]), with what loading it said then.
    Cached(Box<Entry>, Vec<String>),
}

/// Hashes every local product (hidden ones too) into its manifest, writing each ssb.json under
/// `write_to` when given: on every core, one product at a time per core, results in tree
/// order with each product's own warnings, and whether its manifest was read instead (see
/// [`LoadOptions::only`]).
fn hash_local(
    tree: &Tree,
    opts: &LoadOptions<'_>,
    build: &BuildOptions,
    write_to: Option<&Path>,
) -> Vec<Local> {
    let local: Vec<&ProductSpec> = tree
        .config
        .products
        .iter()
        .filter(|p| p.prefix_path.is_none())
        .collect();
    let one = |spec: &ProductSpec| {
        let mut warnings = Vec::new();
        // Unchanged since an earlier run wrote its manifest: read it instead of hashing.
        if opts.only.is_some_and(|only| !only.contains(&spec.name)) {
            let path = opts.source.join(&spec.directory).join(MANIFEST_FILE);
            if let Some(cached) = opts.entry_cache.and_then(|c| c.get(spec, &path)) {
                // Copied here, on the workers, rather than in the loop that collects them.
                return Local::Cached(Box::new(cached.take()), cached.warnings.clone());
            }
            if let Ok(manifest) = manifest::read(&spec.name, &path, &mut warnings) {
                let built = Built {
                    manifest,
                    bytes_read: 0,
                    rejected: Vec::new(),
                    overridden: None,
                };
                return Local::Loaded {
                    built: Ok(built),
                    warnings,
                    read: true,
                };
            }
            warnings.clear();
        }
        let mut build = build.clone();
        build.expiry = build.expiry.or(spec.expiry);
        if let Some(exclude) = opts.exclude.get(&spec.name) {
            build.exclude.extend(exclude.iter().cloned());
        }
        opts.progress.set_message(spec.name.clone());
        let built = hash_product(
            spec,
            &tree.config,
            opts.source,
            &build,
            opts.progress,
            &mut warnings,
        )
        .and_then(|built| {
            if let Some(target) = write_to {
                let path = target.join(&spec.directory).join(MANIFEST_FILE);
                manifest::write(&path, &built.manifest).map_err(|source| ManifestError::Write {
                    product: spec.name.clone(),
                    path,
                    source,
                })?;
            }
            Ok(built)
        });
        Local::Loaded {
            built,
            warnings,
            read: false,
        }
    };
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(local.len());
    if workers <= 1 {
        return local.into_iter().map(one).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<_>>> =
        local.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(spec) = local.get(i) else { break };
                    let result = one(spec);
                    *slots[i].lock().expect("no worker panics holding a slot") = Some(result);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|slot| {
            slot.into_inner()
                .expect("no worker panics holding a slot")
                .expect("every product hashed")
        })
        .collect()
}

/// Loads every product's manifest: local ones hashed or read, remote ones fetched once each.
/// Hidden products are hashed (their ssb.json is kept current) but not fetched or read.
pub fn load_entries(tree: &Tree, opts: &LoadOptions<'_>) -> Result<Loaded, LoadError> {
    let hashing = matches!(opts.manifests, Manifests::Hash { .. });
    let mut warnings = Vec::new();
    let remote: Vec<(String, String)> = tree
        .config
        .products
        .iter()
        .filter(|p| !p.hidden || hashing)
        .filter_map(|p| {
            p.prefix_path
                .as_ref()
                .map(|pp| (p.name.clone(), manifest::remote_url(pp, &p.directory)))
        })
        .collect();
    let mut fetched = manifest::fetch_all(&remote, opts.http, &mut warnings).into_iter();
    let (mut results, hashed) = match opts.manifests {
        Manifests::Hash {
            opts: build,
            write_to,
        } => {
            let all = hash_local(tree, opts, build, write_to);
            let hashed = all
                .iter()
                .filter(|l| matches!(l, Local::Loaded { read: false, .. }))
                .count();
            (all.into_iter(), hashed)
        }
        Manifests::Read => (Vec::new().into_iter(), 0),
    };
    let mut entries = Vec::new();
    let mut failures = Vec::new();
    let mut bytes_read = 0u64;
    let mut rejected = Vec::new();
    let mut requirement_folders = crate::catalog::requirements_file::Folders::default();
    for spec in &tree.config.products {
        if spec.hidden && !hashing {
            continue;
        }
        let (declared, first_warning) = (spec, warnings.len());
        let mut overridden = None;
        let loaded = if spec.prefix_path.is_some() {
            fetched.next().expect("one fetch result per remote product")
        } else {
            match opts.manifests {
                Manifests::Hash { .. } => {
                    let (built, product_warnings) =
                        match results.next().expect("one hash result per local product") {
                            Local::Cached(entry, cached_warnings) => {
                                warnings.extend(cached_warnings);
                                entries.push(*entry);
                                continue;
                            }
                            Local::Loaded {
                                built, warnings, ..
                            } => (built, warnings),
                        };
                    warnings.extend(product_warnings);
                    built.map(|built| {
                        bytes_read += built.bytes_read;
                        overridden = built.overridden;
                        for r in &built.rejected {
                            warnings.push(r.to_string());
                        }
                        rejected.extend(built.rejected);
                        built.manifest
                    })
                }
                Manifests::Read => {
                    let path = opts.source.join(&spec.directory).join(MANIFEST_FILE);
                    manifest::read(&spec.name, &path, &mut warnings)
                }
            }
        };
        match loaded {
            Ok(mut m) => {
                let mut spec = spec.clone();
                if tree.is_layout() {
                    finish_layout_spec(&mut spec, &m);
                }
                if spec.prefix_path.is_none() {
                    crate::catalog::requirements_file::apply(
                        &mut spec,
                        opts.source,
                        &mut requirement_folders,
                        &mut warnings,
                    );
                    let dir = opts.source.join(&spec.directory);
                    crate::catalog::metadata_json::apply(
                        &mut spec,
                        &mut m,
                        &dir,
                        overridden.as_ref(),
                        &mut warnings,
                    );
                }
                let entry = Entry { spec, manifest: m };
                if let (Some(cache), None) = (opts.entry_cache, &entry.spec.prefix_path)
                    && hashing
                {
                    let path = opts.source.join(&entry.spec.directory).join(MANIFEST_FILE);
                    cache.put(declared, &path, &entry, &warnings[first_warning..]);
                }
                entries.push(entry);
            }
            Err(e @ ManifestError::NotBuilt { .. }) => {
                warnings.push(format!("{e}; left out of the catalog"));
            }
            Err(e) if opts.skip_unavailable => {
                warnings.push(format!("{e}; left out (--skip-unavailable)"));
            }
            Err(e) => failures.push(e.to_string()),
        }
    }
    report(&warnings);
    if !failures.is_empty() {
        return Err(LoadError::Unavailable { failures });
    }
    Ok(Loaded {
        entries,
        bytes_read,
        rejected,
        hashed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ssb.json in a folder of its own, and a declaration.
    fn manifest_and_declaration() -> (tempfile::TempDir, PathBuf, ProductSpec) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST_FILE);
        std::fs::write(&path, "{}").unwrap();
        (dir, path, crate::catalog::metadata_json::tests::spec())
    }

    /// The entry `declared` resolves to when its metadata.json gives it `title`.
    fn entry_titled(declared: &ProductSpec, title: &str) -> Entry {
        let mut spec = declared.clone();
        spec.release_title = Some(title.into());
        Entry {
            spec,
            manifest: Manifest {
                name: declared.name.clone(),
                ..Manifest::default()
            },
        }
    }

    #[test]
    fn a_prepared_copy_is_taken_once_and_dropped_with_its_entry() {
        let (_dir, path, declared) = manifest_and_declaration();
        let entry = |title: &str| entry_titled(&declared, title);
        let cache = EntryCache::default();
        cache.put(&declared, &path, &entry("first"), &[]);
        let spare = |cache: &EntryCache| {
            let hit = cache.get(&declared, &path).unwrap();
            hit.spare.lock().unwrap().as_ref().map(|e| e.spec.clone())
        };
        assert_eq!(spare(&cache), None, "no copy until asked for");
        cache.prepare();
        assert_eq!(
            spare(&cache),
            Some(entry("first").spec),
            "a copy of the entry"
        );
        let hit = cache.get(&declared, &path).unwrap();
        assert_eq!(hit.take().spec, entry("first").spec, "the copy is taken");
        assert_eq!(spare(&cache), None, "and gone");
        assert_eq!(
            hit.take().spec,
            entry("first").spec,
            "without one, a copy is made"
        );

        cache.prepare();
        cache.put(&declared, &path, &entry("second"), &[]);
        assert_eq!(
            spare(&cache),
            None,
            "a new entry comes without the old one's copy"
        );
        cache.prepare();
        let hit = cache.get(&declared, &path).unwrap();
        assert_eq!(hit.take().spec, entry("second").spec);
    }

    #[test]
    fn a_cached_entry_holds_while_its_declaration_and_ssb_json_do() {
        let (dir, path, declared) = manifest_and_declaration();
        let entry = entry_titled(&declared, "from metadata.json");
        let cache = EntryCache::default();
        assert!(cache.get(&declared, &path).is_none(), "empty at first");
        cache.put(&declared, &path, &entry, &["a warning".into()]);
        let hit = cache
            .get(&declared, &path)
            .expect("unchanged: taken from the cache");
        assert_eq!(
            hit.entry.spec, entry.spec,
            "the resolved declaration is kept"
        );
        assert_eq!(hit.warnings, ["a warning"]);

        let mut other = declared.clone();
        other.aliases.push("edited/in/tree.yml".into());
        assert!(cache.get(&other, &path).is_none(), "another declaration");

        // A new ssb.json, put in place as every writer does (a new inode).
        let next = dir.path().join("next");
        std::fs::write(&next, "{ }").unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert!(cache.get(&declared, &path).is_none(), "another ssb.json");
        std::fs::remove_file(&path).unwrap();
        assert!(cache.get(&declared, &path).is_none(), "no ssb.json");
    }
}
