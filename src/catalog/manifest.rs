//! A product's manifest (`ssb.json`): built from its folder by hashing, read back, or fetched
//! from another namespace (`prefix_path`) with retries and a token that never travels over
//! plain http unless asked for.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::expiry::{HumanDuration, eol_from_unix, format_eol, normalize_eol};
use crate::format::{Item, Manifest, Version, VersionName};
use crate::hash::{HashCache, HashError, hash_version};
use crate::image::metadata::ImageMetadata;
use crate::tree::{FileRole, TreeError, scan_product};

/// Name of the manifest file in a product folder.
pub use crate::tree::names::MANIFEST_FILE;

/// A manifest that cannot be built or loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The product folder does not exist.
    #[error("product `{product}`: folder {} does not exist (check `directory` and -s/-t)", dir.display())]
    NoFolder {
        /// The product.
        product: String,
        /// The folder.
        dir: PathBuf,
    },
    /// The tree cannot be read.
    #[error("product `{product}`: {source}")]
    Tree {
        /// The product.
        product: String,
        /// Why.
        source: TreeError,
    },
    /// Hashing failed.
    #[error("product `{product}`: {source}")]
    Hash {
        /// The product.
        product: String,
        /// Why.
        source: HashError,
    },
    /// metadata.yaml disagrees with the product, or names an architecture nobody knows.
    #[error("product `{product}`: {}: {problem}", file.display())]
    ArchMismatch {
        /// The product.
        product: String,
        /// The metadata tarball.
        file: PathBuf,
        /// What it says, against what the product is.
        problem: String,
    },
    /// A local ssb.json cannot be read.
    #[error("product `{product}`: cannot read {}: {reason}", path.display())]
    Read {
        /// The product.
        product: String,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An ssb.json cannot be written.
    #[error("product `{product}`: cannot write {}: {source}", path.display())]
    Write {
        /// The product.
        product: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The product's namespace answers 404 for its ssb.json: a product declared but never built
    /// yet. The original tool left such products out of the catalog, and pipelines rely on it.
    #[error("product `{product}`: {where_} does not exist (the product has not been built yet)")]
    NotBuilt {
        /// The product.
        product: String,
        /// The URL that answered 404.
        where_: String,
    },
    /// An image file that resolves (through a symlink) outside the tree or onto a hidden name:
    /// the server would refuse to send it, and its hash would leak what it points at.
    #[error("product `{product}`: {} resolves to {}, outside the tree or onto a hidden name: the server refuses to send it (replace the symlink with the file)", file.display(), resolved.display())]
    OutsideTree {
        /// The product.
        product: String,
        /// The image file.
        file: PathBuf,
        /// Where it resolves to.
        resolved: PathBuf,
    },
    /// A remote ssb.json cannot be fetched.
    #[error("product `{product}`: cannot fetch {url}: {reason}")]
    Fetch {
        /// The product.
        product: String,
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A manifest for another product.
    #[error("product `{product}`: {source_name} holds the manifest of `{found}`")]
    NameMismatch {
        /// The product.
        product: String,
        /// Where it came from.
        source_name: String,
        /// The name inside.
        found: String,
    },
}

/// How a manifest is built from a folder.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// Also compute md5.
    pub md5: bool,
    /// Use and refresh the hash caches kept here (`None`: hash everything, keep nothing).
    pub cache: Option<crate::hash::CacheDir>,
    /// Support duration from the newest version (overrides metadata.yaml's expiry_date).
    pub expiry: Option<HumanDuration>,
    /// Versions left out (about to be purged), so no catalog points at them.
    pub exclude: BTreeSet<VersionName>,
    /// How deltas are made, for products that ask for them ([`LocalProduct::deltas`]).
    pub delta: crate::delta::DeltaPolicy,
}

/// Joins the tree `prefix` and a tree-relative path: by URL rules when the prefix is a URL
/// (the original turned `https://host` into `https:/host`), else as a relative path.
pub fn join_prefix(prefix: &str, rel: &str) -> String {
    let rel = rel.trim_start_matches('/');
    let p = prefix.trim();
    if p.is_empty() || p == "/" || p == "." || p == "./" {
        return rel.to_owned();
    }
    format!("{}/{rel}", p.trim_end_matches('/'))
}

/// A product folder to hash.
#[derive(Clone, Copy, Debug)]
pub struct LocalProduct<'a> {
    /// The tree the product is in: no image file may resolve outside it.
    pub root: &'a Path,
    /// Product id.
    pub name: &'a str,
    /// Its arch, checked against every metadata.yaml.
    pub arch: &'a str,
    /// The folder on disk.
    pub dir: &'a Path,
    /// The folder relative to the tree, for item paths.
    pub directory: &'a str,
    /// The tree `prefix` of item paths.
    pub prefix: &'a str,
    /// Deltas per version (`deltas:`); 0 for none.
    pub deltas: u32,
}

/// A version left out of its product's manifest because one of its files breaks the rules (an
/// unreadable or foreign metadata tarball, a rootfs that is not what its name says, a file
/// outside the tree). The product keeps its other versions.
#[derive(Debug)]
pub struct Rejected {
    /// The version.
    pub version: VersionName,
    /// Why, naming the product and the file.
    pub reason: ManifestError,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}; version {} is left out of the catalog until it is fixed or removed",
            self.reason, self.version
        )
    }
}

/// A manifest hashed from a product folder.
#[derive(Debug)]
pub struct Built {
    /// The manifest: every version that passed.
    pub manifest: Manifest,
    /// Image bytes read.
    pub bytes_read: u64,
    /// Versions left out, with the reason.
    pub rejected: Vec<Rejected>,
    /// The versions whose folder holds a `metadata.json`, when the folders were listed (the
    /// others need not be looked at); `None`: not known.
    pub overridden: Option<BTreeSet<VersionName>>,
}

/// Hashes a product folder into its manifest. A version with a bad file is left out and
/// reported in [`Built::rejected`]; only a product that cannot be read at all is an error.
pub fn build(
    product: LocalProduct<'_>,
    opts: &BuildOptions,
    progress: &dyn Fn(u64),
    warnings: &mut Vec<String>,
) -> Result<Built, ManifestError> {
    let LocalProduct {
        root,
        name,
        dir: product_dir,
        ..
    } = product;
    if !product_dir.is_dir() {
        return Err(ManifestError::NoFolder {
            product: name.to_owned(),
            dir: product_dir.to_owned(),
        });
    }
    let tree_error = |source| ManifestError::Tree {
        product: name.to_owned(),
        source,
    };
    let versions = scan_product(product_dir, warnings).map_err(tree_error)?;
    let real_root = root.canonicalize().map_err(|source| {
        tree_error(crate::tree::TreeError {
            path: root.to_owned(),
            source,
        })
    })?;
    // One path resolution per product: for the guard and for the hash cache's name.
    let real_product = product_dir.canonicalize().ok();
    let product_inside = real_product.as_ref().is_some_and(|real| {
        crate::tree::outside_root(&real_root, real.clone(), &crate::tree::only_plain).is_none()
    });
    let mut cache = match (&opts.cache, &real_product) {
        (Some(dir), Some(real)) => HashCache::load_canonical(dir, product_dir, real),
        (Some(dir), None) => HashCache::load(dir, product_dir),
        (None, _) => HashCache::disabled(),
    };
    let mut manifest = Manifest {
        name: name.to_owned(),
        ..Manifest::default()
    };
    let mut rejected = Vec::new();
    let mut newest_meta: Option<(VersionName, ImageMetadata)> = None;
    for v in versions.iter().filter(|v| !opts.exclude.contains(&v.name)) {
        if let Some(e) = &v.unreadable {
            rejected.push(Rejected {
                version: v.name.clone(),
                reason: unreadable(name, e),
            });
            continue;
        }
        if v.files.is_empty() {
            warnings.push(format!("{}: skipped: no image files", v.path.display()));
            continue;
        }
        let hashing = Hashing {
            product: &product,
            real_root: &real_root,
            product_inside,
            opts,
            progress,
        };
        match hash_one(&hashing, v, &mut cache, warnings) {
            Ok((version, meta)) => {
                if let Some(meta) = meta {
                    newest_meta = Some((v.name.clone(), meta));
                }
                manifest.versions.insert(v.name.clone(), version);
            }
            Err(reason) => rejected.push(Rejected {
                version: v.name.clone(),
                reason,
            }),
        }
    }
    if product.deltas > 0 {
        add_deltas(
            &product,
            &versions,
            &mut manifest,
            &mut cache,
            opts,
            progress,
            warnings,
        );
    }
    if opts.cache.is_some()
        && let Err(e) = cache.save()
    {
        tracing::warn!(
            "the hash cache of {} was not saved (the next run hashes its files again): {e}",
            product_dir.display()
        );
    }
    if let Some((version, meta)) = newest_meta {
        manifest.expiry = match opts.expiry {
            Some(d) => d.eol_after(version.datetime()).map(format_eol),
            None => meta.expiry_date.and_then(eol_from_unix),
        };
        manifest.properties = meta.properties;
        manifest
            .properties
            .insert("architecture".into(), meta.architecture);
    } else if let (Some(d), Some(v)) = (opts.expiry, manifest.versions.keys().next_back()) {
        manifest.expiry = d.eol_after(v.datetime()).map(format_eol);
    }
    let overridden = versions
        .iter()
        .filter(|v| v.overrides)
        .map(|v| v.name.clone())
        .collect();
    Ok(Built {
        manifest,
        bytes_read: cache.bytes_read,
        rejected,
        overridden: Some(overridden),
    })
}

/// The deltas of the published versions (see [`crate::delta::publish`]), as items.
fn add_deltas(
    product: &LocalProduct<'_>,
    versions: &[crate::tree::VersionDir],
    manifest: &mut Manifest,
    cache: &mut HashCache,
    opts: &BuildOptions,
    progress: &dyn Fn(u64),
    warnings: &mut Vec<String>,
) {
    let published: Vec<&crate::tree::VersionDir> = versions
        .iter()
        .filter(|v| manifest.versions.contains_key(&v.name))
        .collect();
    let deltas = crate::delta::publish(
        &opts.delta,
        product.deltas,
        &published,
        cache,
        progress,
        warnings,
    );
    for (vname, list) in deltas {
        let Some(version) = manifest.versions.get_mut(&vname) else {
            continue;
        };
        for d in list {
            let rel = format!("{}/{}/{}", product.directory, vname, d.name);
            let mut item = Item::new(
                crate::format::Ftype::SquashfsDelta,
                join_prefix(product.prefix, &rel),
                d.sha256,
                d.size,
            );
            item.delta_base = Some(d.base.to_string());
            version.items.insert(d.name, Box::new(item));
        }
    }
}

/// The server's rule: a file that resolves outside the tree or onto a hidden name is refused,
/// so no catalog may list one. Where the product folder is inside the tree and neither the
/// version folder nor the file is a symlink, the file is inside too (its two names are plain):
/// only symlinks cost a path resolution. `product_inside` says the product folder resolves
/// inside the tree onto plain names.
fn check_inside(
    product: &str,
    real_root: &Path,
    product_inside: bool,
    v: &crate::tree::VersionDir,
) -> Result<(), ManifestError> {
    for f in &v.files {
        if product_inside && !v.symlink && !f.symlink {
            continue;
        }
        if let Some(resolved) =
            crate::tree::resolves_outside(real_root, &f.path, &crate::tree::only_plain)
        {
            return Err(ManifestError::OutsideTree {
                product: product.to_owned(),
                file: f.path.clone(),
                resolved,
            });
        }
    }
    Ok(())
}

/// A version folder that could not be scanned, as the reason it is left out.
fn unreadable(product: &str, e: &TreeError) -> ManifestError {
    ManifestError::Tree {
        product: product.to_owned(),
        source: TreeError {
            path: e.path.clone(),
            source: std::io::Error::new(e.source.kind(), e.source.to_string()),
        },
    }
}

/// Applies the rules [`build`] applies to a version folder, without hashing it: what `verify`
/// and `list` say of a version the catalog leaves out. `real_root` is the canonical tree.
pub fn check_version(
    product: &str,
    arch: &str,
    real_root: &Path,
    v: &crate::tree::VersionDir,
) -> Result<(), ManifestError> {
    if let Some(e) = &v.unreadable {
        return Err(unreadable(product, e));
    }
    check_inside(product, real_root, false, v)?;
    let hash_err = |source: HashError| ManifestError::Hash {
        product: product.to_owned(),
        source,
    };
    for f in &v.files {
        if !matches!(f.role, FileRole::Meta { .. }) {
            crate::hash::check_data(f).map_err(|e| hash_err(e.into()))?;
            continue;
        }
        let file = std::fs::File::open(&f.path).map_err(|source| {
            hash_err(HashError::Read {
                path: f.path.clone(),
                source,
            })
        })?;
        let meta = crate::image::metadata::read_metadata(std::io::BufReader::new(file), &f.path)
            .map_err(|e| hash_err(e.into()))?;
        if let Some(problem) = meta.arch_problem(arch) {
            return Err(ManifestError::ArchMismatch {
                product: product.to_owned(),
                file: f.path.clone(),
                problem,
            });
        }
    }
    Ok(())
}

/// What every version of a product is hashed with.
#[derive(Clone, Copy)]
struct Hashing<'a> {
    product: &'a LocalProduct<'a>,
    /// The canonical tree.
    real_root: &'a Path,
    /// The product folder resolves inside the tree onto plain names.
    product_inside: bool,
    opts: &'a BuildOptions,
    progress: &'a dyn Fn(u64),
}

/// Checks and hashes one version folder into its catalog entry; also returns the metadata its
/// product's description is taken from. An LXC metadata tarball that classic LXC cannot use
/// (no `config`, or not LXC's at all) is left out with a warning: the version's LXD and Incus
/// images do not depend on it.
fn hash_one(
    hashing: &Hashing<'_>,
    v: &crate::tree::VersionDir,
    cache: &mut HashCache,
    warnings: &mut Vec<String>,
) -> Result<(Version, Option<ImageMetadata>), ManifestError> {
    let Hashing {
        product,
        real_root,
        product_inside,
        opts,
        progress,
    } = *hashing;
    let name = product.name;
    check_inside(name, real_root, product_inside, v)?;
    let hashes =
        hash_version(v, cache, opts.md5, progress).map_err(|source| ManifestError::Hash {
            product: name.to_owned(),
            source,
        })?;
    for (file, meta) in &hashes.metadata {
        if let Some(problem) = meta.arch_problem(product.arch) {
            return Err(ManifestError::ArchMismatch {
                product: name.to_owned(),
                file: v.path.join(file),
                problem,
            });
        }
    }
    // Prefer the Incus container metadata as the product's description, then any other.
    let preferred = FileRole::DESCRIPTION_ORDER
        .iter()
        .find_map(|role| hashes.metadata.get(role.file_name()))
        .cloned();
    let mut version = Version::default();
    for f in &v.files {
        if let Some(problem) = hashes.unusable_lxc.get(&f.name) {
            warnings.push(format!(
                "product `{name}`: {problem}; the version is published without it for LXC (`lxc-create -t download` will not list it)"
            ));
            continue;
        }
        let digest = &hashes.files[&f.name];
        let rel = format!("{}/{}/{}", product.directory, v.name, f.name);
        let mut item = Item::new(
            f.role.ftype(),
            join_prefix(product.prefix, &rel),
            digest.sha256.clone(),
            f.sig.size,
        );
        item.md5.clone_from(&digest.md5);
        if matches!(f.role, FileRole::Meta { .. }) {
            for ((m, r), h) in &hashes.combined {
                if *m != f.name {
                    continue;
                }
                let rootfs = v.files.iter().find(|x| x.name == *r).map(|x| x.role);
                if let Some(FileRole::Rootfs(kind)) = rootfs {
                    item.set_combined(kind, Some(h.clone()));
                }
            }
        }
        version
            .items
            .insert(f.role.item_key().to_owned(), Box::new(item));
    }
    Ok((version, preferred))
}

/// A manifest as found on disk or on the wire: version names are checked one by one so that a
/// stray folder name published by the original tool costs a warning, not the product.
#[derive(Deserialize)]
struct RawManifest {
    name: String,
    #[serde(default)]
    expiry: Option<serde_json::Value>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    #[serde(default)]
    versions: BTreeMap<String, Version>,
}

/// Parses ssb.json bytes; `source` names them in messages.
pub fn parse(bytes: &[u8], source: &str, warnings: &mut Vec<String>) -> Result<Manifest, String> {
    let raw: RawManifest = serde_json::from_slice(bytes)
        .map_err(|e| format!("{source}: not a valid {MANIFEST_FILE}: {e}"))?;
    let mut versions = BTreeMap::new();
    for (name, v) in raw.versions {
        match VersionName::parse(&name) {
            Ok(n) => {
                versions.insert(n, v);
            }
            Err(e) => warnings.push(format!("{source}: version skipped: {e}")),
        }
    }
    let expiry = raw.expiry.and_then(|v| {
        let s = match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Number(n) => n.to_string(),
            _ => return None,
        };
        let normalized = normalize_eol(&s);
        if normalized.is_none() && !s.is_empty() {
            warnings.push(format!(
                "{source}: expiry `{s}` ignored: not a date or Unix time"
            ));
        }
        normalized
    });
    Ok(Manifest {
        name: raw.name,
        expiry,
        properties: raw.properties,
        versions,
    })
}

/// Reads a local ssb.json.
pub fn read(
    product: &str,
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Manifest, ManifestError> {
    // A local ssb.json that is missing is an error (a wrong -s, a product folder never
    // manifested): only a remote namespace answering 404 means "not built yet".
    let bytes = std::fs::read(path).map_err(|e| ManifestError::Read {
        product: product.to_owned(),
        path: path.to_owned(),
        reason: if e.kind() == std::io::ErrorKind::NotFound {
            "not found (run build-versions-manifest or publish first)".into()
        } else {
            e.to_string()
        },
    })?;
    let m = parse(&bytes, &path.display().to_string(), warnings).map_err(|reason| {
        ManifestError::Read {
            product: product.to_owned(),
            path: path.to_owned(),
            reason,
        }
    })?;
    check_name(product, &path.display().to_string(), m)
}

fn check_name(product: &str, source: &str, m: Manifest) -> Result<Manifest, ManifestError> {
    if m.name != product {
        return Err(ManifestError::NameMismatch {
            product: product.to_owned(),
            source_name: source.to_owned(),
            found: m.name,
        });
    }
    Ok(m)
}

/// Writes a manifest as compact JSON, atomically.
pub fn write(path: &Path, m: &Manifest) -> std::io::Result<()> {
    crate::tree::atomic::write_if_changed(path, &to_json(m)).map(drop)
}

/// A manifest as written: compact JSON and one newline.
pub fn to_json(m: &Manifest) -> Vec<u8> {
    let mut v = serde_json::to_vec(m).expect("manifests always serialize");
    v.push(b'\n');
    v
}

/// How remote manifests are fetched.
#[derive(Clone, Debug)]
pub struct HttpSettings {
    /// `-k` / `SSBUILDER_APIKEY`, sent as `Authorization: token KEY`.
    pub apikey: Option<String>,
    /// Per-request timeout (`SSBUILDER_HTTP_TIMEOUT`, seconds).
    pub timeout: Duration,
    /// `SSBUILDER_INSECURE_SKIPVERIFY=1`.
    pub insecure: bool,
    /// Extra trusted certificates (`SSL_CERT_FILE`): CAs, or a server's own pinned one.
    pub ca_certs: Vec<std::path::PathBuf>,
    /// Send the token over plain http too (`SSBUILDER_ALLOW_HTTP_TOKEN=1`).
    pub token_over_http: bool,
    /// Attempts per manifest.
    pub attempts: u32,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            apikey: None,
            timeout: Duration::from_secs(60),
            insecure: false,
            ca_certs: Vec::new(),
            token_over_http: false,
            attempts: 3,
        }
    }
}

/// The URL of a product's remote manifest.
pub fn remote_url(prefix_path: &str, directory: &str) -> String {
    format!(
        "{}/{}/{MANIFEST_FILE}",
        prefix_path.trim_end_matches('/'),
        directory.trim_matches('/')
    )
}

/// Fetches the remote manifests of `products` (name, url) concurrently, each once, with retries
/// on network errors and 5xx answers. Results come back in the input order.
pub fn fetch_all(
    products: &[(String, String)],
    http: &HttpSettings,
    warnings: &mut Vec<String>,
) -> Vec<Result<Manifest, ManifestError>> {
    if products.is_empty() {
        return Vec::new();
    }
    let fail_all = |reason: String| -> Vec<Result<Manifest, ManifestError>> {
        products
            .iter()
            .map(|(p, url)| {
                Err(ManifestError::Fetch {
                    product: p.clone(),
                    url: url.clone(),
                    reason: reason.clone(),
                })
            })
            .collect()
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail_all(format!("cannot start the HTTP runtime: {e}")),
    };
    let builder = reqwest::Client::builder()
        .timeout(http.timeout)
        .user_agent(concat!("simplestreams-builder/", env!("CARGO_PKG_VERSION")));
    let trust = crate::net::Trust {
        extra: http.ca_certs.clone(),
        insecure: http.insecure,
    };
    let builder = match crate::net::with_trust(builder, &trust, false) {
        Ok(b) => b,
        Err(e) => return fail_all(e.to_string()),
    };
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => return fail_all(format!("cannot build the HTTP client: {e}")),
    };
    if http.insecure {
        warnings.push("SSBUILDER_INSECURE_SKIPVERIFY is set: TLS certificates of remote manifests are not verified".into());
    }
    let results = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (i, (product, url)) in products.iter().cloned().enumerate() {
            let client = client.clone();
            let http = http.clone();
            set.spawn(async move { (i, fetch_one(&client, &product, &url, &http).await) });
        }
        let mut out: Vec<Option<Fetched>> = (0..products.len()).map(|_| None).collect();
        while let Some(joined) = set.join_next().await {
            if let Ok((i, r)) = joined {
                out[i] = Some(r);
            }
        }
        out
    });
    results
        .into_iter()
        .zip(products)
        .map(|(r, (p, url))| match r {
            Some((r, w)) => {
                warnings.extend(w);
                r
            }
            None => Err(ManifestError::Fetch {
                product: p.clone(),
                url: url.clone(),
                reason: "the fetch task failed".into(),
            }),
        })
        .collect()
}

/// One fetch's result and the warnings it raised.
type Fetched = (Result<Manifest, ManifestError>, Vec<String>);

async fn fetch_one(
    client: &reqwest::Client,
    product: &str,
    url: &str,
    http: &HttpSettings,
) -> Fetched {
    let mut warnings = Vec::new();
    let fail = |reason: String| ManifestError::Fetch {
        product: product.to_owned(),
        url: url.to_owned(),
        reason,
    };
    let plain = url.starts_with("http://");
    let send_token = http.apikey.is_some() && (!plain || http.token_over_http);
    if http.apikey.is_some() && plain && !http.token_over_http {
        warnings.push(format!(
            "product `{product}`: not sending the API key to {url} over plain http (set SSBUILDER_ALLOW_HTTP_TOKEN=1 to send it anyway)"
        ));
    }
    let mut last = String::new();
    for attempt in 1..=http.attempts.max(1) {
        let mut req = client.get(url);
        if let (true, Some(key)) = (send_token, &http.apikey) {
            req = req.header("Authorization", format!("token {key}"));
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                Ok(body) => {
                    let parsed = parse(&body, url, &mut warnings).map_err(fail);
                    return (parsed.and_then(|m| check_name(product, url, m)), warnings);
                }
                Err(e) => last = format!("reading the body failed: {e}"),
            },
            Ok(resp) if resp.status().is_server_error() => last = format!("HTTP {}", resp.status()),
            Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => {
                let not_built = ManifestError::NotBuilt {
                    product: product.to_owned(),
                    where_: format!("{url} (HTTP 404)"),
                };
                return (Err(not_built), warnings);
            }
            Ok(resp) => return (Err(fail(format!("HTTP {}", resp.status()))), warnings),
            // A certificate the client does not trust stays untrusted: no retry.
            Err(e) if crate::net::is_certificate_error(&e) => {
                return (Err(fail(crate::error_chain(&e))), warnings);
            }
            Err(e) => last = crate::error_chain(&e),
        }
        if attempt < http.attempts {
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
    }
    (
        Err(fail(format!(
            "{last} (after {} attempts)",
            http.attempts.max(1)
        ))),
        warnings,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_join_as_paths_or_urls() {
        assert_eq!(join_prefix("", "a/b"), "a/b");
        assert_eq!(join_prefix("/", "a/b"), "a/b");
        assert_eq!(join_prefix("../lxd-ns/", "a/b"), "../lxd-ns/a/b");
        assert_eq!(join_prefix("images", "a/b"), "images/a/b");
        assert_eq!(join_prefix("https://host/x/", "a/b"), "https://host/x/a/b");
        assert_eq!(join_prefix("https://host", "/a/b"), "https://host/a/b");
    }

    #[test]
    fn reads_the_original_tools_manifests() {
        let json = br#"{"name":"p","expiry":"1796314639","versions":{"20240105_03:00":{"items":{"lxd.tar.xz":{"ftype":"lxd.tar.xz","md5":"m","path":"a","sha256":"s","size":1}}},"20240103":{"items":{}}}}"#;
        let mut w = Vec::new();
        let m = parse(json, "remote", &mut w).unwrap();
        assert_eq!(m.expiry.as_deref(), Some("2026-12-03"));
        assert_eq!(m.versions.len(), 1);
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("20240103"), "{w:?}");
    }
}
