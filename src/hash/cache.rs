//! The hash cache of a product folder: the digests, metadata and combined hashes of its image
//! files, keyed by each file's signature, so an unchanged file is never read again. Digests
//! computed elsewhere (an upload hashed while it arrived, an import while it copied) are
//! recorded into it ([`HashCache::record`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{FileDigest, MetaPrefix};
use crate::image::metadata::ImageMetadata;
use crate::tree::FileSig;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CachedCombined {
    pub(super) rootfs: FileSig,
    pub(super) sha256: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CachedFile {
    pub(super) sig: FileSig,
    #[serde(flatten)]
    pub(super) digest: FileDigest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) metadata: Option<ImageMetadata>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) combined: BTreeMap<String, CachedCombined>,
    /// The file passed the image check ([`crate::image::check`]). Entries written before the
    /// check existed lack it: their files are checked (a few KiB read) once more.
    #[serde(default)]
    pub(super) checked: bool,
}

impl CachedFile {
    /// An entry whose sha256 is known from elsewhere (no md5, no metadata, no pairs yet), for a
    /// file that passed the image check where it was hashed (an upload, an import).
    fn sha256_only(sig: FileSig, sha256: &str) -> Self {
        Self {
            sig,
            digest: FileDigest {
                sha256: sha256.to_owned(),
                md5: None,
            },
            metadata: None,
            combined: BTreeMap::new(),
            checked: true,
        }
    }
}

/// What became of the delta between two squashfs files (both named by their signature), so a
/// re-publish never encodes it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedDelta {
    /// The base version's squashfs.
    pub base: FileSig,
    /// This version's squashfs.
    pub new: FileSig,
    /// Published, or left out.
    pub outcome: DeltaOutcome,
}

/// Whether a delta was published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaOutcome {
    /// In the version folder, with this signature and sha256.
    Published {
        /// The delta file.
        file: FileSig,
        /// Its sha256.
        sha256: String,
    },
    /// Larger than the share of the full file that is worth publishing.
    TooLarge {
        /// Its size.
        size: u64,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheDoc {
    version: u32,
    files: BTreeMap<String, CachedFile>,
    /// `<version>/<base version>` → the delta between their squashfs files.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    deltas: BTreeMap<String, CachedDelta>,
}

const CACHE_VERSION: u32 = 1;

/// Where this machine keeps the hash caches of the product folders it works on: outside the
/// trees, so a copy of a tree (`mc mirror`, `cp -r`: how pipelines publish) takes only what
/// clients need, and the inodes and times a cache records stay on the machine they describe.
/// One file per product folder, named after its absolute path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheDir {
    /// `None` when there is no private place for caches: everything is hashed every time.
    root: Option<PathBuf>,
}

impl CacheDir {
    /// Caches kept under `root` (created when first written).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: Some(root.into()),
        }
    }

    /// No cache: every file is hashed every time (there is no private place to keep one).
    pub fn none() -> Self {
        Self { root: None }
    }

    /// The cache file of `product_dir`, if caches are kept.
    pub fn file_for(&self, product_dir: &Path) -> Option<PathBuf> {
        self.root.as_ref()?;
        let absolute = product_dir
            .canonicalize()
            .or_else(|_| std::path::absolute(product_dir))
            .unwrap_or_else(|_| product_dir.to_owned());
        self.file_for_canonical(&absolute)
    }

    /// [`Self::file_for`] a product folder already made canonical (one path resolution fewer
    /// per product).
    pub fn file_for_canonical(&self, absolute: &Path) -> Option<PathBuf> {
        let root = self.root.as_ref()?;
        let digest = crate::hash::sha256_hex(absolute.as_os_str().as_encoded_bytes());
        let name: String = absolute
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .take(48)
            .collect();
        Some(root.join(format!("{}-{name}.json", &digest[..24])))
    }
}

/// The hash cache of one product folder, and the counters that show what it saved.
pub struct HashCache {
    /// Where it is kept; `None` for a cache that neither reads nor keeps anything.
    path: Option<PathBuf>,
    /// A cache an older version kept inside the product folder: read once, then removed.
    legacy: Option<PathBuf>,
    old: BTreeMap<String, CachedFile>,
    pub(super) new: BTreeMap<String, CachedFile>,
    old_deltas: BTreeMap<String, CachedDelta>,
    new_deltas: BTreeMap<String, CachedDelta>,
    /// Image bytes read in this run.
    pub bytes_read: u64,
}

impl HashCache {
    /// Loads the cache of `product_dir` from `dir`; a missing or unreadable cache is an empty
    /// one. A cache an older version kept in the product folder is taken over.
    pub fn load(dir: &CacheDir, product_dir: &Path) -> Self {
        Self::load_from(dir.file_for(product_dir), product_dir)
    }

    /// [`Self::load`] for a product folder whose canonical path is known already.
    pub fn load_canonical(dir: &CacheDir, product_dir: &Path, canonical: &Path) -> Self {
        Self::load_from(dir.file_for_canonical(canonical), product_dir)
    }

    fn load_from(path: Option<PathBuf>, product_dir: &Path) -> Self {
        let read = |path: &Path| {
            std::fs::read(path)
                .ok()
                .and_then(|b| serde_json::from_slice::<CacheDoc>(&b).ok())
                .filter(|d| d.version == CACHE_VERSION)
                .map(|d| (d.files, d.deltas))
        };
        let Some(path) = path else {
            return Self::disabled();
        };
        // A legacy cache is looked for only when ours is missing: the save that wrote ours
        // removed it.
        let ((old, old_deltas), legacy) = match read(&path) {
            Some(doc) => (doc, None),
            None => {
                let legacy = product_dir.join(crate::tree::names::HASH_CACHE);
                let old = read(&legacy).unwrap_or_default();
                (old, legacy.exists().then_some(legacy))
            }
        };
        Self {
            path: Some(path),
            legacy,
            old,
            new: BTreeMap::new(),
            old_deltas,
            new_deltas: BTreeMap::new(),
            bytes_read: 0,
        }
    }

    /// A cache that neither reads nor keeps anything.
    pub fn disabled() -> Self {
        Self {
            path: None,
            legacy: None,
            old: BTreeMap::new(),
            new: BTreeMap::new(),
            old_deltas: BTreeMap::new(),
            new_deltas: BTreeMap::new(),
            bytes_read: 0,
        }
    }

    /// Writes the entries used in this run (entries of deleted files are dropped).
    pub fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        // Every entry read was used as it was and nothing was added: the file holds this
        // already (a warm re-publish of 10,000 versions spent a tenth of its time serializing
        // 100 caches to find that out).
        if self.legacy.is_none() && self.new == self.old && self.new_deltas == self.old_deltas {
            return Ok(());
        }
        let doc = CacheDoc {
            version: CACHE_VERSION,
            files: self.new.clone(),
            deltas: self.new_deltas.clone(),
        };
        let bytes = serde_json::to_vec(&doc).map_err(std::io::Error::other)?;
        crate::tree::atomic::write_if_changed(path, &bytes)?;
        if let Some(legacy) = &self.legacy {
            std::fs::remove_file(legacy)?;
        }
        Ok(())
    }

    /// What became of the delta from `base` to `version`, as recorded (by an earlier run, or
    /// this one).
    pub fn delta(&self, version: &str, base: &str) -> Option<&CachedDelta> {
        let key = format!("{version}/{base}");
        self.new_deltas
            .get(&key)
            .or_else(|| self.old_deltas.get(&key))
    }

    /// Records what became of the delta from `base` to `version` (kept by [`Self::save`]).
    pub fn record_delta(&mut self, version: &str, base: &str, delta: CachedDelta) {
        self.new_deltas.insert(format!("{version}/{base}"), delta);
    }

    pub(super) fn get(&self, key: &str, sig: &FileSig, want_md5: bool) -> Option<&CachedFile> {
        self.old
            .get(key)
            .or_else(|| self.new.get(key))
            .filter(|c| c.sig == *sig && (!want_md5 || c.digest.md5.is_some()))
    }
}

/// Digests of an image file computed outside [`super::hash_version`] (the server hashes an upload
/// while it arrives), to be put in the product's cache so the next re-index does not read the
/// file again. The file must have passed the image check ([`crate::image::check`]).
#[derive(Clone, Debug)]
pub struct KnownDigest {
    /// The version folder name.
    pub version: String,
    /// The file name.
    pub file: String,
    /// The file's signature once in place; a later change to the file misses the cache.
    pub sig: FileSig,
    /// Its sha256.
    pub sha256: String,
    /// Metadata files it pairs with and sha256(meta ‖ file) for each.
    pub combined: Vec<(MetaPrefix, String)>,
}

impl HashCache {
    /// Adds `known` digests to the cache of `product_dir`, keeping every entry already there.
    /// Only sha256 is known, so an md5 run still reads the file.
    pub fn record(
        dir: &CacheDir,
        product_dir: &Path,
        known: &[KnownDigest],
    ) -> std::io::Result<()> {
        if dir.root.is_none() {
            return Ok(());
        }
        let mut cache = Self::load(dir, product_dir);
        let mut files = std::mem::take(&mut cache.old);
        for k in known {
            files.insert(
                format!("{}/{}", k.version, k.file),
                CachedFile::sha256_only(k.sig, &k.sha256),
            );
            for (meta, combined) in &k.combined {
                let fresh = || CachedFile::sha256_only(meta.sig, &meta.sha256);
                let entry = files
                    .entry(format!("{}/{}", k.version, meta.name))
                    .or_insert_with(fresh);
                if entry.sig != meta.sig {
                    *entry = fresh();
                }
                entry.metadata = Some(meta.metadata.clone());
                entry.combined.insert(
                    k.file.clone(),
                    CachedCombined {
                        rootfs: k.sig,
                        sha256: combined.clone(),
                    },
                );
            }
        }
        cache.new = files;
        cache.save()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_lives_outside_the_tree_and_takes_over_a_legacy_one() {
        let d = tempfile::tempdir().unwrap();
        let caches = tempfile::tempdir().unwrap();
        let caches = CacheDir::new(caches.path().join("hash"));
        let legacy = d.path().join(crate::tree::names::HASH_CACHE);
        std::fs::write(&legacy, br#"{"version":1,"files":{}}"#).unwrap();
        let cache = HashCache::load(&caches, d.path());
        cache.save().unwrap();
        assert!(
            !legacy.exists(),
            "the legacy cache in the product folder is gone"
        );
        assert!(caches.file_for(d.path()).unwrap().is_file());
        assert!(
            !caches.file_for(d.path()).unwrap().starts_with(d.path()),
            "the cache is not in the tree"
        );
        assert_ne!(
            caches.file_for(d.path()),
            caches.file_for(&d.path().join("other")),
            "one file per product folder"
        );
    }

    #[test]
    fn a_cache_used_as_it_was_is_not_written_again() {
        use std::os::unix::fs::MetadataExt as _;
        let d = tempfile::tempdir().unwrap();
        let caches = tempfile::tempdir().unwrap();
        let caches = CacheDir::new(caches.path().join("hash"));
        let entry = CachedFile::sha256_only(FileSig::read(d.path()).unwrap(), &"ab".repeat(32));
        let mut cache = HashCache::load(&caches, d.path());
        cache.new.insert("v1/rootfs.squashfs".into(), entry);
        cache.save().unwrap();
        let file = caches.file_for(d.path()).unwrap();
        let inode = || std::fs::metadata(&file).unwrap().ino();

        // The next run finds the same entry and uses it: the file is not even compared (a
        // change behind the cache's back shows it was left alone).
        let mut cache = HashCache::load(&caches, d.path());
        cache.new = cache.old.clone();
        let kept = std::fs::read(&file).unwrap();
        let mut touched = kept.clone();
        touched.push(b'\n');
        std::fs::write(&file, &touched).unwrap();
        let first = inode();
        cache.save().unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), touched, "written again");
        assert_eq!(inode(), first);

        // An entry fewer (its file is gone): written.
        let cache = HashCache::load(&caches, d.path());
        cache.save().unwrap();
        assert_ne!(inode(), first);
        assert!(HashCache::load(&caches, d.path()).old.is_empty());
    }
}
