//! Hashing a version folder: sha256 (and md5 on request) of every image file and the combined
//! hashes clients use as fingerprints, with each byte of each file read exactly once.
//!
//! A metadata tarball is read once: it is hashed while its metadata.yaml is decoded from the
//! same bytes, and the hasher state after it is kept. A rootfs is then streamed once into its
//! own hasher and into one clone of that state per metadata file it pairs with; the hashers run
//! on their own threads so both cores work. Results are cached per product folder in
//! `.ssb-cache.json`, keyed by file signature, so an unchanged tree reads no image bytes
//! ([`HashCache`], in `cache`). Files moved by an import or an upload get their digests from the
//! pass that moves them (`combined`), through the aligned blocks and direct writes of [`bulk`].

pub mod bulk;
mod cache;

mod combined;

pub use cache::{CacheDir, CachedDelta, DeltaOutcome, HashCache, KnownDigest};
use cache::{CachedCombined, CachedFile};
pub use combined::{
    MetaPrefix, copy_with_prefixes, hash_in_parallel, read_meta_prefix, sha256_state,
    sha256_with_prefixes,
};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::sync_channel;

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use sha2::Sha256 as Sha256State;

use crate::hash::bulk::Block;
use crate::image::check::{BadImage, check_rootfs, check_unified};
use crate::image::metadata::{self, ImageMetadata, InspectError};
use crate::tree::{FileRole, FileSig, ImageFile, VersionDir};

/// Bytes per read; large enough for few syscalls, small enough for flat memory.
const CHUNK: usize = 1 << 20;
/// Bytes per read when the file is also copied: each is one direct write (see [`crate::hash::bulk`]),
/// and larger writes keep the disk busier. On a 2-core VM, a 2 GiB import took 2.0 s with
/// 256 KiB, 1.8 s with 1 MiB and 1.6 s with 2 or 4 MiB; 2 MiB keeps the peak RSS at 22 MiB.
const COPY_CHUNK: usize = 2 << 20;
/// Chunks in flight per hashing thread.
const DEPTH: usize = 4;

/// Digests of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Lowercase hex md5, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
}

/// What hashing a version gives.
#[derive(Clone, Debug, Default)]
pub struct VersionHashes {
    /// File name → digests.
    pub files: BTreeMap<String, FileDigest>,
    /// (metadata file name, rootfs file name) → sha256(meta ‖ rootfs).
    pub combined: BTreeMap<(String, String), String>,
    /// Metadata file name → its metadata.yaml.
    pub metadata: BTreeMap<String, ImageMetadata>,
    /// File name → why classic LXC cannot use this metadata tarball (it is no reason to reject
    /// the version: see [`check_data`]).
    pub unusable_lxc: BTreeMap<String, String>,
}

/// Hashing failed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A copy could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file written.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file changed while it was read.
    #[error("{} changed while it was being hashed; run again once it is complete", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
    },
    /// A metadata tarball is unusable.
    #[error(transparent)]
    Metadata(#[from] InspectError),
    /// A rootfs, disk or unified tarball is not what its name says (empty, foreign, truncated).
    #[error(transparent)]
    Image(#[from] BadImage),
}

/// Something fed with every byte of a file.
enum Sink {
    Sha(Sha256),
    Md5(Md5),
}

impl Sink {
    fn update(&mut self, data: &[u8]) {
        match self {
            Sink::Sha(h) => h.update(data),
            Sink::Md5(h) => h.update(data),
        }
    }
    fn hex(self) -> String {
        match self {
            Sink::Sha(h) => hex::encode(h.finalize()),
            Sink::Md5(h) => hex::encode(h.finalize()),
        }
    }
}

/// Streams a file once into every sink and, when given, into `copy` (a writer and the path it
/// writes, for errors). Each sink and the copy run on their own thread, except the first sink
/// when there is no copy: this thread reads, and hashes too when it has nothing else to do.
fn stream_file(
    path: &Path,
    sinks: Vec<Sink>,
    copy: Option<(&mut (dyn Write + Send), &Path)>,
    progress: &dyn Fn(u64),
) -> Result<Vec<Sink>, HashError> {
    let read_err = |source| HashError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let mut sinks = sinks.into_iter();
    let mut first = if copy.is_none() { sinks.next() } else { None };
    let rest: Vec<Sink> = sinks.collect();
    std::thread::scope(|scope| {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for mut sink in rest {
            let (tx, rx) = sync_channel::<Arc<Block>>(DEPTH);
            senders.push(tx);
            handles.push(scope.spawn(move || {
                for chunk in rx {
                    sink.update(chunk.data());
                }
                sink
            }));
        }
        let writer = copy.map(|(out, out_path)| {
            let (tx, rx) = sync_channel::<Arc<Block>>(DEPTH);
            let handle = scope.spawn(move || {
                for chunk in rx {
                    out.write_all(chunk.data())
                        .map_err(|source| HashError::Write {
                            path: out_path.to_owned(),
                            source,
                        })?;
                }
                Ok(())
            });
            (tx, handle)
        });
        let chunk_size = if writer.is_some() { COPY_CHUNK } else { CHUNK };
        // Blocks come back once every thread is done with them: the oldest is reused, so
        // memory stays at the blocks in flight and no fresh pages are touched per chunk.
        let mut blocks: VecDeque<Arc<Block>> = VecDeque::new();
        let result = (|| {
            loop {
                let mut block = match blocks.pop_front().map(Arc::try_unwrap) {
                    Some(Ok(free)) => free,
                    Some(Err(busy)) => {
                        blocks.push_front(busy);
                        Block::new(chunk_size)
                    }
                    None => Block::new(chunk_size),
                };
                let n = block.fill_from(&mut file).map_err(read_err)?;
                if n == 0 {
                    break;
                }
                let chunk = Arc::new(block);
                blocks.push_back(Arc::clone(&chunk));
                if let Some((tx, _)) = &writer
                    && tx.send(Arc::clone(&chunk)).is_err()
                {
                    break; // the copy failed: its error is reported below
                }
                for tx in &senders {
                    // A receiver only goes away by panicking, which join reports below.
                    let _ = tx.send(Arc::clone(&chunk));
                }
                if let Some(first) = &mut first {
                    first.update(chunk.data());
                }
                progress(n as u64);
            }
            Ok(())
        })();
        drop(senders);
        let written = writer.map_or(Ok(()), |(tx, handle)| {
            drop(tx);
            handle.join().expect("copying thread panicked")
        });
        let mut out: Vec<Sink> = first.into_iter().collect();
        for h in handles {
            out.push(h.join().expect("hashing thread panicked"));
        }
        result.and(written).map(|()| out)
    })
}

/// A reader that hashes what passes through it.
struct Tee<R> {
    inner: R,
    sha: Sha256,
    md5: Option<Md5>,
    count: u64,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha.update(&buf[..n]);
        if let Some(m) = &mut self.md5 {
            m.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
}

/// Hashes a metadata tarball and reads its metadata.yaml from the same single pass. Returns the
/// digest, the sha256 state after the file (for combined hashes) and the metadata.
fn read_meta(
    path: &Path,
    want_md5: bool,
) -> Result<(FileDigest, Sha256, ImageMetadata, u64), HashError> {
    let file = std::fs::File::open(path).map_err(|source| HashError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut tee = Tee {
        inner: file,
        sha: Sha256::new(),
        md5: want_md5.then(Md5::new),
        count: 0,
    };
    let metadata = metadata::read_metadata(&mut tee, path)?;
    // The archive may end before the file does (padding); those bytes are part of the hash.
    std::io::copy(&mut tee, &mut std::io::sink()).map_err(|source| HashError::Read {
        path: path.to_owned(),
        source,
    })?;
    let state = tee.sha.clone();
    let digest = FileDigest {
        sha256: hex::encode(tee.sha.finalize()),
        md5: tee.md5.map(|m| hex::encode(m.finalize())),
    };
    Ok((digest, state, metadata, tee.count))
}

fn check_unchanged(path: &Path, before: &FileSig) -> Result<(), HashError> {
    let now = std::fs::metadata(path).map_err(|source| HashError::Read {
        path: path.to_owned(),
        source,
    })?;
    let now = FileSig::of(&now);
    if now.size != before.size
        || now.mtime != before.mtime
        || now.mtime_ns != before.mtime_ns
        || now.ino != before.ino
    {
        return Err(HashError::Changed {
            path: path.to_owned(),
        });
    }
    Ok(())
}

/// Applies the image check to a data file (a metadata tarball is checked by reading it; LXC's
/// metadata tarball, an extra that never makes a version unpublishable, is checked beside it in
/// [`hash_version`], which reports it in [`VersionHashes::unusable_lxc`]).
pub fn check_data(f: &ImageFile) -> Result<(), BadImage> {
    match f.role {
        FileRole::Rootfs(kind) => check_rootfs(kind, &f.path),
        FileRole::Unified(_) => check_unified(&f.path),
        FileRole::Meta { .. } | FileRole::LxcMeta => Ok(()),
    }
}

/// Hashes one version folder, using and refreshing `cache`. `key_prefix` names the version in
/// the cache (its folder name). `progress` is told about every byte read.
pub fn hash_version(
    version: &VersionDir,
    cache: &mut HashCache,
    want_md5: bool,
    progress: &dyn Fn(u64),
) -> Result<VersionHashes, HashError> {
    let key = |name: &str| format!("{}/{name}", version.name);
    let pairs = version.pairs();
    let mut out = VersionHashes::default();
    let mut states: HashMap<usize, Sha256> = HashMap::new();
    let cached_combined = |cache: &HashCache, mi: usize, ri: usize| -> Option<String> {
        let m = &version.files[mi];
        let r = &version.files[ri];
        cache
            .get(&key(&m.name), &m.sig, false)
            .and_then(|c| c.combined.get(&r.name))
            .filter(|c| c.rootfs == r.sig)
            .map(|c| c.sha256.clone())
    };

    // Metadata first: their states seed the combined hashers.
    for (mi, m) in version.files.iter().enumerate() {
        if !matches!(m.role, FileRole::Meta { .. }) {
            continue;
        }
        let needs_state = pairs
            .iter()
            .any(|&(pm, pr)| pm == mi && cached_combined(cache, mi, pr).is_none());
        let hit = cache
            .get(&key(&m.name), &m.sig, want_md5)
            .filter(|c| c.metadata.is_some())
            .cloned();
        match hit {
            Some(c) if !needs_state => {
                out.files.insert(m.name.clone(), c.digest);
                out.metadata
                    .insert(m.name.clone(), c.metadata.unwrap_or_default());
            }
            _ => {
                let (digest, state, metadata, n) = read_meta(&m.path, want_md5)?;
                check_unchanged(&m.path, &m.sig)?;
                cache.bytes_read += n;
                progress(n);
                states.insert(mi, state);
                out.files.insert(m.name.clone(), digest);
                out.metadata.insert(m.name.clone(), metadata);
            }
        }
    }

    for (fi, f) in version.files.iter().enumerate() {
        if matches!(f.role, FileRole::Meta { .. }) {
            continue;
        }
        // The image check, once per file: a cached entry records that it passed.
        if !cache
            .get(&key(&f.name), &f.sig, false)
            .is_some_and(|c| c.checked)
        {
            check_data(f)?;
            if f.role == FileRole::LxcMeta
                && let Err(e) = crate::image::check::check_lxc_meta(&f.path)
            {
                out.unusable_lxc.insert(f.name.clone(), e.to_string());
            }
        }
        let mut pending = Vec::new();
        for &(mi, ri) in pairs.iter().filter(|&&(_, ri)| ri == fi) {
            match cached_combined(cache, mi, ri) {
                Some(h) => {
                    out.combined
                        .insert((version.files[mi].name.clone(), f.name.clone()), h);
                }
                None => pending.push(mi),
            }
        }
        let hit = cache
            .get(&key(&f.name), &f.sig, want_md5)
            .map(|c| c.digest.clone());
        if let (Some(digest), true) = (&hit, pending.is_empty()) {
            out.files.insert(f.name.clone(), digest.clone());
            continue;
        }
        let mut sinks = vec![Sink::Sha(Sha256::new())];
        if want_md5 {
            sinks.push(Sink::Md5(Md5::new()));
        }
        for &mi in &pending {
            sinks.push(Sink::Sha(states[&mi].clone()));
        }
        let mut done = stream_file(&f.path, sinks, None, progress)?.into_iter();
        check_unchanged(&f.path, &f.sig)?;
        cache.bytes_read += f.sig.size;
        let sha256 = done.next().map(Sink::hex).unwrap_or_default();
        let md5 = if want_md5 {
            done.next().map(Sink::hex)
        } else {
            None
        };
        out.files.insert(f.name.clone(), FileDigest { sha256, md5 });
        for (&mi, sink) in pending.iter().zip(done) {
            out.combined
                .insert((version.files[mi].name.clone(), f.name.clone()), sink.hex());
        }
    }

    // Record this version's entries for the next run.
    for f in &version.files {
        let mut combined = BTreeMap::new();
        for ((m, r), h) in &out.combined {
            if *m == f.name {
                let rsig = version.files.iter().find(|x| x.name == *r).map(|x| x.sig);
                if let Some(rootfs) = rsig {
                    combined.insert(
                        r.clone(),
                        CachedCombined {
                            rootfs,
                            sha256: h.clone(),
                        },
                    );
                }
            }
        }
        cache.new.insert(
            key(&f.name),
            CachedFile {
                sig: f.sig,
                digest: out.files[&f.name].clone(),
                metadata: out.metadata.get(&f.name).cloned(),
                combined,
                checked: !out.unusable_lxc.contains_key(&f.name),
            },
        );
    }
    Ok(out)
}

/// sha256 of a byte string, as lowercase hex (tests and small files).
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::VersionName;
    use crate::image::check::tests::{qcow2_bytes, squashfs_bytes};
    use crate::tree::scan_version;

    fn meta_bytes(tag: &str) -> Vec<u8> {
        let mut v = Vec::new();
        metadata::write_metadata_tarball(
            &mut v,
            &format!("architecture: x86_64\ncreation_date: 1\nproperties:\n  os: {tag}\n"),
            &[],
            0,
        )
        .unwrap();
        v
    }

    fn concat(a: &[u8], b: &[u8]) -> String {
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        sha256_hex(&v)
    }

    #[test]
    fn hashers_in_parallel_see_every_chunk_in_order() {
        let chunks: Vec<bytes::Bytes> = (0..50u8)
            .map(|i| bytes::Bytes::from(vec![i; 1000 + usize::from(i) * 37]))
            .collect();
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut prefixed = Sha256::new();
        prefixed.update(b"metadata");
        let (fed, hashers) = hash_in_parallel(vec![Sha256::new(), prefixed], |seen| {
            for c in &chunks {
                seen(c);
            }
            chunks.len()
        });
        assert_eq!(fed, 50);
        let digests: Vec<String> = hashers
            .into_iter()
            .map(|h| hex::encode(h.finalize()))
            .collect();
        assert_eq!(digests, [sha256_hex(&all), concat(b"metadata", &all)]);
    }

    #[test]
    fn combined_hashes_are_per_metadata_file_and_only_for_present_rootfs() {
        let d = tempfile::tempdir().unwrap();
        let lxd = meta_bytes("L");
        let incus = meta_bytes("I");
        let pattern: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sq = squashfs_bytes(pattern.len(), &pattern);
        std::fs::write(d.path().join("lxd.tar.xz"), &lxd).unwrap();
        std::fs::write(d.path().join("incus.tar.xz"), &incus).unwrap();
        std::fs::write(d.path().join("rootfs.squashfs"), &sq).unwrap();
        let v = scan_version(
            VersionName::parse("20240101_00:00").unwrap(),
            d.path(),
            &mut Vec::new(),
        )
        .unwrap();
        let mut cache = HashCache::disabled();
        let h = hash_version(&v, &mut cache, true, &|_| {}).unwrap();
        assert_eq!(h.files["rootfs.squashfs"].sha256, sha256_hex(&sq));
        assert_eq!(h.files["lxd.tar.xz"].sha256, sha256_hex(&lxd));
        assert_eq!(
            h.files["rootfs.squashfs"].md5.as_deref(),
            Some(hex::encode(Md5::digest(&sq)).as_str())
        );
        assert_eq!(
            h.combined[&("lxd.tar.xz".into(), "rootfs.squashfs".into())],
            concat(&lxd, &sq)
        );
        assert_eq!(
            h.combined[&("incus.tar.xz".into(), "rootfs.squashfs".into())],
            concat(&incus, &sq)
        );
        assert_eq!(h.combined.len(), 2, "no pair with absent rootfs files");
        assert_eq!(h.metadata["incus.tar.xz"].properties["os"], "I");
        assert_eq!(
            cache.bytes_read,
            (lxd.len() + incus.len() + sq.len()) as u64
        );
    }

    #[test]
    fn recorded_digests_spare_the_next_run_from_reading_the_rootfs() {
        let d = tempfile::tempdir().unwrap();
        let vdir = d.path().join("20240101_00:00");
        std::fs::create_dir(&vdir).unwrap();
        let meta = meta_bytes("K");
        std::fs::write(vdir.join("lxd.tar.xz"), &meta).unwrap();
        let prefix = read_meta_prefix(&vdir.join("lxd.tar.xz")).unwrap();
        // As the server does: the rootfs bytes go to a fresh hasher and to the meta's state.
        let sq = b"squashfs bytes that arrived over the network".to_vec();
        let mut combined = prefix.state.clone();
        combined.update(&sq);
        std::fs::write(vdir.join("rootfs.squashfs"), &sq).unwrap();
        let sig = FileSig::read(vdir.join("rootfs.squashfs")).unwrap();
        let caches = tempfile::tempdir().unwrap();
        let caches = CacheDir::new(caches.path());
        HashCache::record(
            &caches,
            d.path(),
            &[KnownDigest {
                version: "20240101_00:00".into(),
                file: "rootfs.squashfs".into(),
                sig,
                sha256: sha256_hex(&sq),
                combined: vec![(prefix, hex::encode(combined.finalize()))],
            }],
        )
        .unwrap();
        let v = scan_version(
            VersionName::parse("20240101_00:00").unwrap(),
            &vdir,
            &mut Vec::new(),
        )
        .unwrap();
        let mut cache = HashCache::load(&caches, d.path());
        let h = hash_version(&v, &mut cache, false, &|_| {}).unwrap();
        assert_eq!(
            cache.bytes_read, 0,
            "nothing read: all digests were recorded"
        );
        assert_eq!(h.files["rootfs.squashfs"].sha256, sha256_hex(&sq));
        assert_eq!(
            h.combined[&("lxd.tar.xz".into(), "rootfs.squashfs".into())],
            concat(&meta, &sq)
        );
        assert_eq!(h.metadata["lxd.tar.xz"].properties["os"], "K");
    }

    #[test]
    fn a_copy_gives_the_digests_of_what_it_wrote() {
        let d = tempfile::tempdir().unwrap();
        let meta = meta_bytes("C");
        let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 241) as u8).collect();
        let src = d.path().join("rootfs.squashfs");
        std::fs::write(&src, &data).unwrap();
        let mut state = Sha256::new();
        state.update(&meta);
        let mut out = Vec::new();
        let (own, combined) =
            copy_with_prefixes(&src, &mut out, Path::new("copy"), vec![state], &|_| {}).unwrap();
        assert!(out == data, "the copy is the file");
        assert_eq!(own, sha256_hex(&data));
        assert_eq!(combined, [concat(&meta, &data)]);
    }

    #[test]
    fn a_failed_copy_is_a_write_error_not_a_hang() {
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("disk full"));
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("rootfs.squashfs");
        std::fs::write(&src, vec![7u8; 20 * CHUNK]).unwrap();
        let err = copy_with_prefixes(
            &src,
            &mut Full(CHUNK + 10),
            Path::new("copy"),
            vec![Sha256::new()],
            &|_| {},
        )
        .unwrap_err();
        assert!(
            matches!(&err, HashError::Write { path, .. } if path == Path::new("copy")),
            "{err}"
        );
    }

    #[test]
    fn an_unchanged_version_reads_nothing_and_a_changed_file_is_rehashed() {
        let d = tempfile::tempdir().unwrap();
        let meta = meta_bytes("X");
        std::fs::write(d.path().join("incus.tar.xz"), &meta).unwrap();
        std::fs::write(d.path().join("disk.qcow2"), qcow2_bytes(3)).unwrap();
        let scan = || {
            scan_version(
                VersionName::parse("20240101_00:00").unwrap(),
                d.path(),
                &mut Vec::new(),
            )
            .unwrap()
        };
        let caches = tempfile::tempdir().unwrap();
        let caches = CacheDir::new(caches.path());
        let mut cache = HashCache::load(&caches, d.path());
        let first = hash_version(&scan(), &mut cache, false, &|_| {}).unwrap();
        cache.save().unwrap();

        let mut cache = HashCache::load(&caches, d.path());
        let again = hash_version(&scan(), &mut cache, false, &|_| {}).unwrap();
        assert_eq!(cache.bytes_read, 0);
        assert_eq!(again.combined, first.combined);
        assert_eq!(again.metadata, first.metadata);
        cache.save().unwrap();

        // Replace the disk (new inode, new size): only what depends on it is recomputed.
        std::fs::remove_file(d.path().join("disk.qcow2")).unwrap();
        let mut disk2 = qcow2_bytes(3);
        disk2.extend_from_slice(b"disk number two");
        let disk2 = &disk2[..];
        std::fs::write(d.path().join("disk.qcow2"), disk2).unwrap();
        let mut cache = HashCache::load(&caches, d.path());
        let changed = hash_version(&scan(), &mut cache, false, &|_| {}).unwrap();
        let pair = ("incus.tar.xz".to_owned(), "disk.qcow2".to_owned());
        assert_eq!(changed.combined[&pair], concat(&meta, disk2));
        assert_eq!(cache.bytes_read, (meta.len() + disk2.len()) as u64);
    }
}
