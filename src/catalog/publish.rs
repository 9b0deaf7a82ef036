//! From manifests to the published catalog: products file and index built from one in-memory
//! state, checked against the invariants real clients depend on (protocol.md §2.6), then
//! written atomically, products file before index, then a `.gz` copy of each.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::catalog::manifest::{BuildOptions, HttpSettings};
use crate::catalog::products::{Entry, LoadError, LoadOptions, Manifests, Tree};
use crate::config::ProductSpec;
use crate::format::{
    Family, Ftype, ImageType, Index, IndexEntry, Manifest, Product, ProductsFile, Version,
    VersionName, canonical_arch,
};
use crate::tree::{FileSig, lock};

/// The index key and content id of our one products file.
pub const CONTENT_ID: &str = "images";

/// What the catalog is built with.
#[derive(Clone, Debug)]
pub struct CatalogSettings {
    /// Folder of the products file, relative to the tree (`streams/v1`).
    pub images_path: String,
    /// Index datatype.
    pub datatype: String,
    /// Products file format.
    pub format: String,
    /// RFC 2822 publication time.
    pub updated: String,
}

/// The catalog breaks a rule the clients depend on.
#[derive(Debug, thiserror::Error)]
#[error("the catalog was not written: {} problem(s):\n{}", problems.len(), problems.join("\n"))]
pub struct CatalogError {
    /// One line per problem, naming the product, version and where it was declared.
    pub problems: Vec<String>,
}

/// Writing the catalog failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// The time stamped on what is built and published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Clock {
    /// The system's time, read at each use.
    #[default]
    System,
    /// A fixed time (`SOURCE_DATE_EPOCH`: reproducible builds, golden tests).
    Fixed(jiff::Timestamp),
}

impl Clock {
    /// The time to stamp now.
    pub fn now(self) -> jiff::Timestamp {
        match self {
            Clock::System => jiff::Timestamp::now(),
            Clock::Fixed(t) => t,
        }
    }

    /// The catalog's `updated` field: [`Clock::now`] in RFC 2822 form.
    pub fn updated(self) -> String {
        jiff::fmt::rfc2822::to_string(&self.now().to_zoned_datetime(jiff::tz::TimeZone::UTC))
            .unwrap_or_default()
    }
}

/// Adds the other family's twin of every metadata and unified item that lacks one, so both LXD
/// and Incus see every image. The twin points at the same file with the same hashes.
pub fn bridge_families(version: &mut Version) {
    let mut twins = Vec::new();
    let mut twin_key = String::new();
    for (key, item) in &version.items {
        let (family, twin_ftype) = match &item.ftype {
            Ftype::Meta(f) => (*f, Ftype::Meta(f.twin())),
            Ftype::Unified(f) => (*f, Ftype::Unified(f.twin())),
            _ => continue,
        };
        // Into one buffer: most versions have their twins already (a re-index's cached copies).
        let Some(at) = key.find(family.as_str()) else {
            continue;
        };
        twin_key.clear();
        twin_key.push_str(&key[..at]);
        twin_key.push_str(family.twin().as_str());
        twin_key.push_str(&key[at + family.as_str().len()..]);
        if twin_key == *key || version.items.contains_key(&twin_key) {
            continue;
        }
        let mut twin = item.clone();
        twin.ftype = twin_ftype;
        twins.push((twin_key.clone(), twin));
    }
    version.items.extend(twins);
}

fn pick(spec: Option<&String>, props: &BTreeMap<String, String>, key: &str) -> Option<String> {
    spec.cloned()
        .or_else(|| props.get(key).filter(|v| !v.trim().is_empty()).cloned())
}

/// The images of a version per family: (fingerprint, image type, item key, rootfs kind or none).
pub(crate) fn images_of(
    version: &Version,
    family: Family,
) -> Vec<(String, ImageType, String, Option<crate::format::RootfsKind>)> {
    let mut out = Vec::new();
    each_image(version, family, |fp, t, key, kind| {
        out.push((fp.to_owned(), t, key.to_owned(), kind));
    });
    out
}

/// [`images_of`], each image shown to `f` as borrowed from the version (the catalog is built
/// without a copy per image).
fn each_image<'v>(
    version: &'v Version,
    family: Family,
    mut f: impl FnMut(&'v str, ImageType, &'v str, Option<crate::format::RootfsKind>),
) {
    let roots = crate::format::RootfsKind::ALL.map(|kind| {
        version
            .items
            .values()
            .any(|i| i.ftype.rootfs_kind() == Some(kind))
            .then_some(kind)
    });
    for (key, item) in &version.items {
        match &item.ftype {
            Ftype::Meta(f_) if *f_ == family => {
                for kind in roots.into_iter().flatten() {
                    if let Some(fp) = item.combined_for(kind) {
                        f(fp, kind.image_type(), key, Some(kind));
                    }
                }
            }
            Ftype::Unified(f_) if *f_ == family => {
                f(&item.sha256, ImageType::Container, key, None);
            }
            _ => {}
        }
    }
}

/// Builds the products file and the index from the entries, enforcing the invariants:
/// fingerprints unique per client family (a byte-identical rebuild drops the later version
/// with a warning), no alias shared by two products of the same arch and image type, aliases
/// clean. Hidden products are left out.
pub fn build_catalog(
    entries: Vec<Entry>,
    settings: &CatalogSettings,
    warnings: &mut Vec<String>,
) -> Result<(ProductsFile, Index), CatalogError> {
    // About one fingerprint per version and rootfs kind; sized once instead of grown.
    let versions = entries.iter().map(|e| e.manifest.versions.len()).sum();
    let mut catalog = Catalog {
        warnings,
        problems: Vec::new(),
        products: BTreeMap::new(),
        origin_of: HashMap::new(),
        names: Vec::new(),
        seen: HashMap::with_capacity_and_hasher(versions, Default::default()),
        alias_owner: HashMap::new(),
    };
    // Entries are consumed: their versions move into the catalog instead of being copied.
    for entry in entries.into_iter().filter(|e| !e.spec.hidden) {
        catalog.add(entry);
    }
    catalog.finish(settings)
}

/// The catalog being built, with what the invariants need to remember across products.
struct Catalog<'w> {
    warnings: &'w mut Vec<String>,
    problems: Vec<String>,
    products: BTreeMap<String, Product>,
    /// Product → where it was declared.
    origin_of: HashMap<String, String>,
    /// The products added, by number.
    names: Vec<String>,
    /// Fingerprint → per family (in [`Family::ALL`] order), the (product number, version)
    /// that publishes it.
    seen: foldhash::HashMap<String, [Option<(usize, VersionName)>; 2]>,
    /// (alias, canonical arch, type) → product that declares it.
    alias_owner: HashMap<(String, &'static str, ImageType), String>,
}

impl Catalog<'_> {
    fn add(&mut self, Entry { spec, manifest }: Entry) {
        let spec = &spec;
        self.origin_of
            .insert(spec.name.clone(), spec.origin.to_string());
        let number = self.names.len();
        self.names.push(spec.name.clone());
        let mut product = product_of(spec, &manifest);
        // The versions are checked in place, oldest first, and move into the product whole.
        let mut versions = manifest.versions;
        versions.retain(|vname, version| self.version(spec, number, vname, version));
        product.versions = versions;
        drop_baseless_deltas(&mut product);
        if product.versions.is_empty() {
            // Clients have nothing to take from it; listing it only hides that its folders
            // hold no usable version (a misnamed version folder, say).
            self.warnings.push(format!(
                "{}: product `{}` has no version to publish: left out of the catalog",
                spec.origin, spec.name
            ));
            return;
        }
        self.claim_aliases(spec, &product);
        if self.products.insert(spec.name.clone(), product).is_some() {
            self.problems.push(format!(
                "{}: duplicate product `{}`",
                spec.origin, spec.name
            ));
        }
    }

    /// Makes `version` (of product number `number`) as published: both families, and without
    /// the images whose fingerprint an earlier version of the same product has. False when
    /// nothing is left of it.
    fn version(
        &mut self,
        spec: &ProductSpec,
        number: usize,
        vname: &VersionName,
        version: &mut Version,
    ) -> bool {
        bridge_families(version);
        let mut dropped = false;
        for (slot, family) in Family::ALL.into_iter().enumerate() {
            // Images of a byte-identical rebuild: (fingerprint, item key, rootfs kind).
            let mut rebuilt: Vec<(String, String, Option<crate::format::RootfsKind>)> = Vec::new();
            each_image(version, family, |fp, _, key, kind| {
                let owners = match self.seen.get_mut(fp) {
                    Some(owners) => owners,
                    None => self.seen.entry(fp.to_owned()).or_default(),
                };
                match &owners[slot] {
                    None => owners[slot] = Some((number, vname.clone())),
                    Some((p, v)) if *p == number => {
                        // A byte-identical rebuild: both would be unreachable ("more than
                        // one match"), so the earlier version keeps the fingerprint.
                        if !dropped {
                            self.warnings.push(format!(
                                "product `{}` version {vname}: skipped an image byte-identical to version {v} (fingerprint {})",
                                spec.name,
                                &fp[..fp.len().min(12)]
                            ));
                            dropped = true;
                        }
                        rebuilt.push((fp.to_owned(), key.to_owned(), kind));
                    }
                    Some((p, v)) => {
                        let problem = format!(
                            "{}: product `{}` version {vname} publishes fingerprint {fp}, already published by product `{}` version {v}: clients could reach neither",
                            spec.origin, spec.name, self.names[*p]
                        );
                        // Each family finds the same clash; say it once.
                        if !self.problems.contains(&problem) {
                            self.problems.push(problem);
                        }
                    }
                }
            });
            for (fp, key, kind) in rebuilt {
                match kind {
                    Some(kind) => {
                        for item in version.items.values_mut() {
                            if item.combined_for(kind) == Some(fp.as_str()) {
                                item.set_combined(kind, None);
                            }
                        }
                    }
                    None => {
                        version.items.remove(&key);
                    }
                }
            }
        }
        if !dropped {
            return true;
        }
        let mut left = 0;
        for family in Family::ALL {
            each_image(version, family, |_, _, _, _| left += 1);
        }
        left > 0
    }

    /// Aliases: clean, and owned by one product per (arch, image type).
    fn claim_aliases(&mut self, spec: &ProductSpec, product: &Product) {
        let mut types = BTreeSet::new();
        for version in product.versions.values() {
            for family in Family::ALL {
                each_image(version, family, |_, t, _, _| {
                    types.insert(t);
                });
            }
        }
        let arch = canonical_arch(&spec.arch).unwrap_or("unknown");
        for alias in &spec.aliases {
            if let Err(why) = crate::config::check_alias(alias) {
                self.problems.push(format!(
                    "{}: product `{}`: alias `{alias}` {why}",
                    spec.origin, spec.name
                ));
                continue;
            }
            for &t in &types {
                let key = (alias.clone(), arch, t);
                if let Some(other) = self.alias_owner.get(&key) {
                    self.problems.push(format!(
                        "{}: product `{}` declares alias `{alias}` ({arch}, {t}), already declared by product `{other}` ({}): clients would pick by variant name, not by date",
                        spec.origin, spec.name, self.origin_of.get(other).map(String::as_str).unwrap_or("?")
                    ));
                } else {
                    self.alias_owner.insert(key, spec.name.clone());
                }
            }
        }
    }

    /// The products file and the index, or every problem found.
    fn finish(self, settings: &CatalogSettings) -> Result<(ProductsFile, Index), CatalogError> {
        if !self.problems.is_empty() {
            return Err(CatalogError {
                problems: self.problems,
            });
        }
        let products_file = ProductsFile {
            content_id: CONTENT_ID.into(),
            datatype: settings.datatype.clone(),
            format: settings.format.clone(),
            products: self.products,
            updated: Some(settings.updated.clone()),
        };
        let index = Index {
            format: "index:1.0".into(),
            index: BTreeMap::from([(
                CONTENT_ID.to_owned(),
                IndexEntry {
                    datatype: settings.datatype.clone(),
                    format: settings.format.clone(),
                    path: crate::tree::names::products_rel(&settings.images_path),
                    products: products_file.products.keys().cloned().collect(),
                    updated: Some(settings.updated.clone()),
                },
            )]),
            updated: Some(settings.updated.clone()),
        };
        Ok((products_file, index))
    }
}

/// Deltas whose base version is not published, or publishes no squashfs image a daemon could
/// hold (the clients find the base's fingerprint in its metadata item's
/// `combined_squashfs_sha256`), are left out: the catalog never names a delta nobody can apply.
fn drop_baseless_deltas(product: &mut Product) {
    let bases: BTreeSet<String> = product
        .versions
        .iter()
        .filter(|(_, v)| {
            v.items.values().any(|i| {
                matches!(i.ftype, Ftype::Meta(_))
                    && i.combined_for(crate::format::RootfsKind::Squashfs)
                        .is_some()
            })
        })
        .map(|(name, _)| name.to_string())
        .collect();
    for version in product.versions.values_mut() {
        version.items.retain(|_, i| {
            i.ftype != Ftype::SquashfsDelta
                || i.delta_base.as_ref().is_some_and(|b| bases.contains(b))
        });
    }
}

/// The product's fields: its declaration first, then what its newest metadata says.
fn product_of(spec: &ProductSpec, manifest: &Manifest) -> Product {
    let props = &manifest.properties;
    let release = pick(spec.release.as_ref(), props, "release").unwrap_or_default();
    Product {
        aliases: spec.aliases.join(","),
        arch: spec.arch.clone(),
        lxd_requirements: spec.requirements.clone(),
        os: pick(spec.os.as_ref(), props, "os").unwrap_or_default(),
        release_title: spec
            .release_title
            .clone()
            .unwrap_or_else(|| release.clone()),
        release,
        release_codename: spec.release_codename.clone(),
        requirements: spec.requirements.clone(),
        support_eol: manifest.expiry.clone(),
        variant: pick(spec.variant.as_ref(), props, "variant"),
        version: spec.version.clone(),
        versions: BTreeMap::new(),
    }
}

/// Compact JSON with one trailing newline.
pub fn to_json<T: serde::Serialize>(doc: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(doc).expect("catalog documents always serialize");
    v.push(b'\n');
    v
}

use crate::tree::names::gz_path;
pub use crate::tree::names::{index_path, products_path};

/// Writes `bytes` and a gzip twin `<path>.gz`, each atomically, in the order that never leaves
/// a twin beside a file it does not match (see [`write_plain`]).
pub fn write_with_gz(path: &Path, bytes: Vec<u8>) -> Result<(), WriteError> {
    let written = write_plain(path, bytes.into())?;
    write_twins(&[written]).map(drop)
}

/// The gzip twin of a catalog file. No name or mtime in the header: same catalog, same bytes.
/// The default level: `best` took several times as long for a few percent on a large products
/// file; the fast level saved 70 ms per re-index of 10,000 versions but made the file 70 %
/// larger (1.66 MB against 0.98 MB), which every client pays.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = gzip_writer(Vec::with_capacity(bytes.len() / 4));
    // Writing into memory cannot fail.
    let _ = enc.write_all(bytes);
    enc.finish().unwrap_or_default()
}

/// The encoder of [`gzip`], writing into `w`.
fn gzip_writer<W: Write>(w: W) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new().write(w, flate2::Compression::default())
}

/// A catalog file as this run wrote it: its bytes when they were made in memory (see
/// [`PublishRequest::catalog_in_memory`]), and its signature right after the write (to tell
/// later whether it is still this run's).
#[derive(Clone, Debug)]
pub struct WrittenFile {
    /// Where.
    pub path: PathBuf,
    /// What, unless it was streamed to disk.
    pub bytes: Option<bytes::Bytes>,
    /// Its signature once in place.
    pub sig: FileSig,
}

/// A catalog file made in memory and about to be written (see [`PublishRequest::serve_made`]).
#[derive(Clone, Debug)]
pub struct MadeFile {
    /// Where it goes.
    pub path: PathBuf,
    /// What.
    pub bytes: bytes::Bytes,
}

/// Told the catalog files of a run (products file first, index last) and their products once
/// they are made, before they are written (see [`PublishRequest::serve_made`]).
pub type ServeMade<'a> = dyn Fn(&[MadeFile], &ProductsFile) + Sync + 'a;

fn signature(path: &Path) -> Result<FileSig, WriteError> {
    FileSig::read(path).map_err(|source| WriteError {
        path: path.to_owned(),
        source,
    })
}

/// Writes a catalog file whose gzip twin follows later ([`Staged::finish`]): the old twin goes
/// first, so that no twin ever stands beside a plain file it does not match (a static server's
/// `gzip_static` then sends the plain file until the twin is back).
fn write_plain(path: &Path, bytes: bytes::Bytes) -> Result<WrittenFile, WriteError> {
    let mut written = write_plain_with(path, |w| w.write_all(&bytes))?;
    written.bytes = Some(bytes);
    Ok(written)
}

/// [`write_plain`], the content made by `fill` straight into the file.
fn write_plain_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<WrittenFile, WriteError> {
    let fail = |source| WriteError {
        path: path.to_owned(),
        source,
    };
    match std::fs::remove_file(gz_path(path)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(e)),
        _ => {}
    }
    crate::tree::atomic::write_with(path, fill).map_err(fail)?;
    Ok(WrittenFile {
        path: path.to_owned(),
        bytes: None,
        sig: signature(path)?,
    })
}

/// Writes the catalog under `target` under the tree lock, with the gzip twins: see
/// [`write_catalog_locked`]. Returns whether it wrote.
pub fn write_catalog(
    target: &Path,
    images_path: &str,
    products: &mut ProductsFile,
    index: &mut Index,
) -> Result<bool, WriteError> {
    let _lock = lock_tree(target)?;
    let written = write_catalog_locked(target, images_path, products, index, false, None)?;
    write_twins(&written)?;
    Ok(!written.is_empty())
}

fn lock_tree(target: &Path) -> Result<lock::Lock, WriteError> {
    lock::lock_tree(target).map_err(|e| WriteError {
        path: e.path,
        source: e.source,
    })
}

/// Writes the catalog under `target`, for a caller that holds the tree lock: the products file
/// first, the index last, so a client never gets an index that names a file not yet complete.
/// Their gzip twins are left to [`write_twins`]. When the published catalog already says the
/// same, apart from its time stamp, nothing is written (an unchanged tree is published without
/// a write or an fsync) and `products` and `index` take the published stamp, which is what
/// clients see. `serve_made` is told the files made in memory before they are written. Returns
/// the files written (none when the catalog was kept).
fn write_catalog_locked(
    target: &Path,
    images_path: &str,
    products: &mut ProductsFile,
    index: &mut Index,
    in_memory: bool,
    serve_made: Option<&ServeMade<'_>>,
) -> Result<Vec<WrittenFile>, WriteError> {
    let (ppath, ipath) = (products_path(target, images_path), index_path(target));
    let pbytes = in_memory.then(|| to_json(products));
    let twin_exists = |path: &Path| gz_path(path).is_file();
    // The products file may be large: compared as bytes, all but its last field, made in
    // memory or as it is compared. The index is small, and its entries carry stamps too:
    // compared as a document with the old stamps.
    let products_stamp = twin_exists(&ppath)
        .then(|| match &pbytes {
            Some(bytes) => published_stamp(&ppath, bytes),
            None => published_stamp_streamed(&ppath, products),
        })
        .flatten();
    let old_index = std::fs::read(&ipath)
        .ok()
        .filter(|_| twin_exists(&ipath))
        .and_then(|b| serde_json::from_slice::<Index>(&b).ok());
    if let (Some(stamp), Some(old_index)) = (products_stamp, old_index) {
        let mut same = index.clone();
        restamp(&mut same, &stamp);
        if same == old_index {
            products.updated = Some(stamp);
            *index = same;
            return Ok(Vec::new());
        }
    }
    let ibytes = bytes::Bytes::from(to_json(index));
    let products_file = match pbytes {
        Some(bytes) => {
            let bytes = bytes::Bytes::from(bytes);
            if let Some(serve) = serve_made {
                let made = [(&ppath, &bytes), (&ipath, &ibytes)].map(|(path, bytes)| MadeFile {
                    path: path.clone(),
                    bytes: bytes.clone(),
                });
                serve(&made, products);
            }
            write_plain(&ppath, bytes)?
        }
        None => write_plain_with(&ppath, |w| {
            serde_json::to_writer(&mut *w, products).map_err(std::io::Error::other)?;
            w.write_all(b"\n")
        })?,
    };
    Ok(vec![products_file, write_plain(&ipath, ibytes)?])
}

/// Writes the gzip twins of `written`, products file first, and returns the bytes of those
/// made from bytes in memory, in the same order (a file streamed to disk is compressed as it
/// is read back). For a caller that holds the tree lock.
fn write_twins(written: &[WrittenFile]) -> Result<Vec<bytes::Bytes>, WriteError> {
    let mut twins = Vec::new();
    for file in written {
        let path = gz_path(&file.path);
        let fail = |source| WriteError {
            path: path.clone(),
            source,
        };
        match &file.bytes {
            Some(bytes) => {
                let gz = gzip(bytes);
                crate::tree::atomic::write(&path, &gz).map_err(fail)?;
                twins.push(gz.into());
            }
            None => crate::tree::atomic::write_with(&path, |w| {
                let mut plain = std::fs::File::open(&file.path)?;
                let mut enc = gzip_writer(w);
                std::io::copy(&mut plain, &mut enc)?;
                enc.finish().map(drop)
            })
            .map_err(fail)?,
        }
    }
    Ok(twins)
}

/// Bytes at the end of a catalog file that hold its last field, `,"updated":"<RFC 2822 time>"}`
/// and a newline (and more).
const TAIL: usize = 256;

/// The time stamp of the catalog file at `path` when it is the document `new` but for its
/// stamp (see [`same_but_stamp`]), read in chunks: a large products file is compared without
/// being held in memory a second time.
fn published_stamp(path: &Path, new: &[u8]) -> Option<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path).ok()?;
    let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
    let head = len.saturating_sub(TAIL).min(new.len());
    let mut chunk = vec![0u8; (1 << 20).min(head.max(1))];
    let mut at = 0;
    while at < head {
        let n = (head - at).min(chunk.len());
        file.read_exact(&mut chunk[..n]).ok()?;
        if chunk[..n] != new[at..at + n] {
            return None;
        }
        at += n;
    }
    let mut tail = Vec::with_capacity(TAIL);
    file.read_to_end(&mut tail).ok()?;
    same_but_stamp(&tail, &new[head..])
}

/// [`published_stamp`] for a document not made in memory: `new` is serialized with the stamp
/// of the published file at `path` into a writer that compares each byte with that file, and
/// stops at the first difference. Memory stays flat however large the catalog is.
fn published_stamp_streamed(path: &Path, new: &mut ProductsFile) -> Option<String> {
    use std::io::{Read as _, Seek as _};
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(std::io::SeekFrom::Start(len.saturating_sub(TAIL as u64)))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    // The stamp of the old file, as a tail compared with itself.
    let stamp = same_but_stamp(&tail, &tail)?;
    file.rewind().ok()?;
    let mut same = SameAs(std::io::BufReader::with_capacity(1 << 20, file), Vec::new());
    let own = new.updated.replace(stamp.clone());
    let compared = serde_json::to_writer(&mut same, &*new)
        .map_err(std::io::Error::other)
        .and_then(|()| same.write_all(b"\n"));
    new.updated = own;
    let mut rest = [0u8; 1];
    let at_end = matches!(same.0.read(&mut rest), Ok(0));
    (compared.is_ok() && at_end).then_some(stamp)
}

/// A writer that takes only what the reader holds next, and fails at the first difference.
struct SameAs<R>(R, Vec<u8>);

impl<R: std::io::Read> Write for SameAs<R> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.1.resize(buf.len(), 0);
        self.0.read_exact(&mut self.1)?;
        if self.1 != buf {
            return Err(std::io::Error::other("differs"));
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The time stamp of `old` when it is the catalog document `new` but for its stamp: both end
/// with `,"updated":"<stamp>"}` and a newline (the last field of both documents, as we write
/// them; a stamp holds no quote), and everything before is the same. Anything else is a change.
/// Either may be the tail of a document whose heads were found equal.
pub(crate) fn same_but_stamp(old: &[u8], new: &[u8]) -> Option<String> {
    const FIELD: &[u8] = b",\"updated\":\"";
    let split = |doc: &[u8]| -> Option<usize> {
        doc.windows(FIELD.len())
            .rposition(|w| w == FIELD)
            .filter(|&at| doc[at + FIELD.len()..].ends_with(b"\"}\n"))
    };
    let (o, n) = (split(old)?, split(new)?);
    if old[..o] != new[..n] {
        return None;
    }
    let stamp = &old[o + FIELD.len()..old.len() - 3];
    if stamp.contains(&b'"') {
        return None;
    }
    String::from_utf8(stamp.to_vec()).ok()
}

/// Gives the index and its entries the time stamp `stamp`.
fn restamp(index: &mut Index, stamp: &str) {
    index.updated = Some(stamp.to_owned());
    for entry in index.index.values_mut() {
        entry.updated = Some(stamp.to_owned());
    }
}

/// Publishing a tree failed; nothing of the catalog was written.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Products or manifests could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The catalog breaks a client rule.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The new catalog would take every published product away.
    #[error(transparent)]
    WouldEmpty(#[from] ReplaceError),
}

/// A catalog that would replace the published one although it keeps none of its products:
/// the sign of a run in the wrong mode (the layout scanned where a tree.yml built the tree, or
/// the reverse) or of a tree.yml that is not the one that built it.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to replace the catalog of {}: it publishes {published} product(s) (e.g. `{example}`), and this run, {mode}, finds {} of them{}; start with the tree.yml that built the tree (-c FILE), or in the folder that holds it, or pass --force to replace the catalog anyway",
    target.display(),
    if *found == 0 { "none".to_owned() } else { found.to_string() },
    if *new_count == 0 { " and no product at all".to_owned() } else { format!(" ({new_count} other product(s))") }
)]
pub struct ReplaceError {
    /// The tree.
    pub target: PathBuf,
    /// Products in the published catalog.
    pub published: usize,
    /// One of them.
    pub example: String,
    /// How this run found its products: `reading tree.yml X` or `scanning the layout under Y`.
    pub mode: String,
    /// Published products this run also has.
    pub found: usize,
    /// Products this run has.
    pub new_count: usize,
}

/// Refuses a catalog for `target` that keeps none of the products the published one lists
/// (a first catalog, or one that keeps at least one product, passes).
pub fn check_replacement(
    target: &Path,
    tree: &Tree,
    new: &ProductsFile,
) -> Result<(), ReplaceError> {
    // The product ids the index lists are enough: no need to parse a large products file.
    let Some(published) = std::fs::read(index_path(target))
        .ok()
        .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
    else {
        return Ok(());
    };
    check_replacement_of(&published, target, tree, new)
}

/// [`check_replacement`] against the published index `published` of the tree at `target` (a
/// folder, or a bucket's URL).
pub(crate) fn check_replacement_of(
    published: &Index,
    target: &Path,
    tree: &Tree,
    new: &ProductsFile,
) -> Result<(), ReplaceError> {
    let published: Vec<&String> = published.index.values().flat_map(|e| &e.products).collect();
    if published.is_empty() {
        return Ok(());
    }
    let found = published
        .iter()
        .filter(|id| new.products.contains_key(**id))
        .count();
    if found > 0 {
        return Ok(());
    }
    let mode = match &tree.config.file {
        Some(file) => format!("reading {}", file.display()),
        None => format!("scanning the images/ layout under {}", target.display()),
    };
    Err(ReplaceError {
        target: target.to_owned(),
        published: published.len(),
        example: published
            .first()
            .map(|id| (*id).clone())
            .unwrap_or_default(),
        mode,
        found,
        new_count: new.products.len(),
    })
}

/// What to publish.
pub struct PublishRequest<'a> {
    /// The products (tree.yml or the layout), loaded by the caller.
    pub tree: &'a Tree,
    /// Where the images are.
    pub source: &'a Path,
    /// Where ssb.json files and the catalog are written.
    pub target: &'a Path,
    /// Also compute md5.
    pub md5: bool,
    /// Leave out products that cannot be loaded.
    pub skip_unavailable: bool,
    /// How remote manifests are fetched.
    pub http: &'a HttpSettings,
    /// The time stamped on the catalog.
    pub clock: Clock,
    /// Where the hash caches of the product folders are kept.
    pub hash_cache: &'a crate::hash::CacheDir,
    /// Replace the published catalog even when the new one keeps none of its products.
    pub force: bool,
    /// Told about every byte hashed.
    pub progress: &'a indicatif::ProgressBar,
    /// Versions to leave out, by product (about to be purged).
    pub exclude: &'a crate::catalog::products::Exclusions,
    /// Hash only these products (by name) and take the others from their ssb.json, written by
    /// an earlier run: the server's re-index after a change it knows the extent of. `None`
    /// hashes every product.
    pub only: Option<&'a std::collections::BTreeSet<String>>,
    /// Sign the catalog, LXC's index and LXC files with this key (`--sign-key`).
    pub signer: Option<&'a crate::sign::Signer>,
    /// Keeps the entries of the products across runs, for a process that publishes again and
    /// again (see [`crate::catalog::products::EntryCache`]).
    pub entry_cache: Option<&'a crate::catalog::products::EntryCache>,
    /// Make the products file in memory and keep its bytes ([`WrittenFile::bytes`]), for a
    /// server that serves them from there. Otherwise it is compared with the published one and
    /// written as it is made: memory stays flat however large the catalog is.
    pub catalog_in_memory: bool,
    /// With `catalog_in_memory`: told the catalog files and their products once they are made,
    /// before they are written and fsynced, for a server that serves them from memory. The
    /// image files they list are in place already, and the disk's pace (writing and fsyncing
    /// the 7.9 MB products file of 10,000 versions took 11–118 ms here) need not delay the
    /// clients. A run that fails after telling it returns an error: the caller then serves
    /// what it served before.
    pub serve_made: Option<&'a ServeMade<'a>>,
}

/// What was published.
#[derive(Debug)]
pub struct PublishSummary {
    /// Products in the catalog.
    pub products: usize,
    /// Versions in the catalog.
    pub versions: usize,
    /// Image bytes read (zero on an unchanged tree).
    pub bytes_read: u64,
    /// The index written.
    pub index: PathBuf,
    /// The products file written.
    pub catalog: ProductsFile,
    /// Versions left out because a file of theirs breaks the rules (logged already).
    pub rejected: Vec<crate::catalog::manifest::Rejected>,
    /// False when the published catalog already said the same and nothing was written.
    pub written: bool,
    /// Local products whose folders were hashed (the others' manifests were read).
    pub hashed: usize,
    /// LXC's index and the signatures written beside the catalog.
    pub companions: crate::catalog::companions::Companions,
}

/// The catalog settings of a tree, stamped by `clock`.
pub fn catalog_settings(tree: &Tree, clock: Clock) -> CatalogSettings {
    CatalogSettings {
        images_path: tree.config.images_path.clone(),
        datatype: tree.config.datatype.clone(),
        format: tree.config.format.clone(),
        updated: clock.updated(),
    }
}

/// Manifests for every product, then images.json and index.json from that one state, their gzip
/// twins, and what is published beside them (LXC's index, signatures, the page), all under one
/// hold of the tree lock.
pub fn publish_tree(req: &PublishRequest<'_>) -> Result<PublishSummary, PublishError> {
    Ok(publish_catalog(req)?.finish(req)?.0)
}

/// The first half of [`publish_tree`]: the manifests and the catalog files, without their gzip
/// twins and companions, which [`Staged::finish`] adds. A server publishing its own tree puts
/// the new catalog in front of its clients in between (see [`Staged::release`]).
pub fn publish_catalog(req: &PublishRequest<'_>) -> Result<Staged, PublishError> {
    let tree = req.tree;
    let build = BuildOptions {
        md5: req.md5,
        cache: Some(req.hash_cache.clone()),
        delta: crate::delta::DeltaPolicy {
            max_percent: tree.config.delta_max_percent,
            ..crate::delta::DeltaPolicy::default()
        },
        ..BuildOptions::default()
    };
    let loaded = crate::catalog::products::load_entries(
        tree,
        &LoadOptions {
            source: req.source,
            manifests: Manifests::Hash {
                opts: &build,
                write_to: Some(req.target),
            },
            skip_unavailable: req.skip_unavailable,
            http: req.http,
            progress: req.progress,
            exclude: req.exclude,
            only: req.only,
            entry_cache: req.entry_cache,
        },
    )?;
    let mut warnings = Vec::new();
    let hashed = loaded.hashed;
    let (mut products, mut index) = build_catalog(
        loaded.entries,
        &catalog_settings(tree, req.clock),
        &mut warnings,
    )?;
    crate::catalog::products::report(&warnings);
    if !req.force {
        check_replacement(req.target, tree, &products)?;
    }
    // One hold of the lock for the catalog and what is published beside it, so another
    // publisher's catalog never gets this run's companions.
    let lock = lock_tree(req.target)?;
    let mut warnings = Vec::new();
    let signed_files = crate::catalog::companions::before_catalog(
        req.target,
        req.source,
        &products,
        req.signer,
        &mut warnings,
    )?;
    crate::catalog::products::report(&warnings);
    let written = write_catalog_locked(
        req.target,
        &tree.config.images_path,
        &mut products,
        &mut index,
        req.catalog_in_memory,
        req.serve_made,
    )?;
    // What `finish` checks is still this run's catalog when it had to take the lock again.
    let catalog_sigs = [
        products_path(req.target, &tree.config.images_path),
        index_path(req.target),
    ]
    .into_iter()
    .map(|path| signature(&path).map(|sig| (path, sig)))
    .collect::<Result<_, _>>()?;
    Ok(Staged {
        summary: PublishSummary {
            products: products.products.len(),
            versions: products.products.values().map(|p| p.versions.len()).sum(),
            bytes_read: loaded.bytes_read,
            index: index_path(req.target),
            catalog: products,
            rejected: loaded.rejected,
            written: !written.is_empty(),
            hashed,
            companions: crate::catalog::companions::Companions {
                signed: signed_files,
                ..Default::default()
            },
        },
        written,
        index,
        catalog_sigs,
        lock: Some(lock),
    })
}

/// A catalog written by [`publish_catalog`], its gzip twins and companions still to come.
pub struct Staged {
    /// What was published so far.
    pub summary: PublishSummary,
    /// The products file and the index as written; empty when the catalog was kept.
    pub written: Vec<WrittenFile>,
    index: Index,
    /// The catalog files on disk, as this run left them.
    catalog_sigs: Vec<(PathBuf, FileSig)>,
    lock: Option<lock::Lock>,
}

impl Staged {
    /// Lets other publishers in before [`Staged::finish`], which takes the lock again and adds
    /// nothing to a catalog another run has replaced since.
    pub fn release(&mut self) {
        self.lock = None;
    }

    /// Writes the gzip twins of the catalog files written and the companions (LXC's index,
    /// signatures, the page). Returns the summary and the twins' bytes, in the order of
    /// [`Staged::written`]: none when another publisher replaced the catalog after
    /// [`Staged::release`] (its own run writes them).
    pub fn finish(
        self,
        req: &PublishRequest<'_>,
    ) -> Result<(PublishSummary, Vec<bytes::Bytes>), PublishError> {
        let Staged {
            mut summary,
            written,
            index,
            catalog_sigs,
            lock,
        } = self;
        let _lock = match lock {
            Some(lock) => lock,
            None => lock_tree(req.target)?,
        };
        let replaced = catalog_sigs
            .iter()
            .any(|(path, sig)| FileSig::read(path).map_or(true, |now| now != *sig));
        if replaced {
            tracing::info!(
                "another publish replaced the catalog under {} meanwhile: its gzip twins and companions are its own",
                req.target.display()
            );
            return Ok((summary, Vec::new()));
        }
        let twins = write_twins(&written)?;
        // The products file can be large: not held while the page is made.
        drop(written);
        let mut warnings = Vec::new();
        let signed_before = summary.companions.signed;
        summary.companions = crate::catalog::companions::after_catalog(
            req.target,
            &req.tree.config.images_path,
            &summary.catalog,
            &index,
            req.signer,
            &mut warnings,
        )?;
        summary.companions.signed += signed_before;
        crate::catalog::products::report(&warnings);
        Ok((summary, twins))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(stamp: &str) -> (ProductsFile, Index) {
        let products = serde_json::from_str(&format!(
            r#"{{"content_id":"images","datatype":"image-downloads","format":"products:1.0","products":{{}},"updated":"{stamp}"}}"#
        ))
        .unwrap();
        let index = serde_json::from_str(&format!(
            r#"{{"format":"index:1.0","index":{{}},"updated":"{stamp}"}}"#
        ))
        .unwrap();
        (products, index)
    }

    fn gunzip(path: &Path) -> Vec<u8> {
        let mut plain = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()),
            &mut plain,
        )
        .unwrap();
        plain
    }

    #[test]
    fn no_twin_stands_beside_a_catalog_file_it_does_not_match() {
        // Made in memory (the server) and streamed to disk (the command line) alike.
        for in_memory in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path();
            let (ppath, ipath) = (products_path(target, "streams/v1"), index_path(target));
            std::fs::create_dir_all(ppath.parent().unwrap()).unwrap();
            std::fs::write(&ppath, "old\n").unwrap();
            std::fs::write(gz_path(&ppath), gzip(b"old\n")).unwrap();

            // A server is told the files as made, while the old ones are still in place.
            let told = std::sync::Mutex::new(Vec::new());
            let serve = |made: &[MadeFile], _: &ProductsFile| {
                assert_eq!(std::fs::read(&ppath).unwrap(), b"old\n", "not written yet");
                told.lock().unwrap().extend_from_slice(made);
            };
            let serve_made = in_memory.then_some(&serve as &ServeMade<'_>);
            let (mut products, mut index) = docs("Mon, 01 Jan 2024 00:00:00 +0000");
            let written = write_catalog_locked(
                target,
                "streams/v1",
                &mut products,
                &mut index,
                in_memory,
                serve_made,
            )
            .unwrap();
            assert_eq!(written.len(), 2);
            let told = std::mem::take(&mut *told.lock().unwrap());
            if in_memory {
                let told: Vec<_> = told.into_iter().map(|m| (m.path, Some(m.bytes))).collect();
                let written: Vec<_> = written
                    .iter()
                    .map(|w| (w.path.clone(), w.bytes.clone()))
                    .collect();
                assert_eq!(told, written, "told what was then written");
            } else {
                assert!(told.is_empty(), "streamed: nothing made in memory");
            }
            assert_eq!(written[0].path, ppath, "the products file first");
            let on_disk = std::fs::read(&ppath).unwrap();
            assert_eq!(on_disk, to_json(&products));
            assert_eq!(written[0].bytes.is_some(), in_memory);
            if let Some(bytes) = &written[0].bytes {
                assert_eq!(on_disk, *bytes);
            }
            assert!(!gz_path(&ppath).exists(), "the old twin went first");
            assert!(!gz_path(&ipath).exists());

            let twins = write_twins(&written).unwrap();
            assert_eq!(twins.len(), if in_memory { 2 } else { 1 });
            for file in &written {
                assert_eq!(
                    gunzip(&gz_path(&file.path)),
                    std::fs::read(&file.path).unwrap()
                );
            }

            // The same catalog a day later: kept, with its first stamp.
            let (mut products, mut index) = docs("Tue, 02 Jan 2024 00:00:00 +0000");
            let unchanged = |_: &[MadeFile], _: &ProductsFile| panic!("nothing new to serve");
            let again = write_catalog_locked(
                target,
                "streams/v1",
                &mut products,
                &mut index,
                in_memory,
                Some(&unchanged),
            )
            .unwrap();
            assert!(again.is_empty(), "in memory: {in_memory}");
            assert_eq!(
                products.updated.as_deref(),
                Some("Mon, 01 Jan 2024 00:00:00 +0000")
            );
            // A change is one.
            let (mut products, mut index) = docs("Tue, 02 Jan 2024 00:00:00 +0000");
            products.datatype = "changed".into();
            let changed = write_catalog_locked(
                target,
                "streams/v1",
                &mut products,
                &mut index,
                in_memory,
                None,
            )
            .unwrap();
            assert_eq!(changed.len(), 2, "in memory: {in_memory}");
            assert_eq!(
                products.updated.as_deref(),
                Some("Tue, 02 Jan 2024 00:00:00 +0000")
            );
        }
    }

    #[test]
    fn only_the_last_stamp_may_differ() {
        let old = br#"{"a":{"updated":"x"},"updated":"Mon, 1 Jan"}
"#;
        let new = br#"{"a":{"updated":"x"},"updated":"Tue, 2 Jan"}
"#;
        assert_eq!(same_but_stamp(old, new).as_deref(), Some("Mon, 1 Jan"));
        let changed = br#"{"a":{"updated":"y"},"updated":"Tue, 2 Jan"}
"#;
        assert_eq!(same_but_stamp(old, changed), None);
        assert_eq!(same_but_stamp(b"{}\n", b"{}\n"), None, "no stamp: not ours");
    }
}
