//! Hashing files that do not go through [`super::hash_version`]: an import's copy and an
//! upload's arrival get their sha256 and their combined hashes (sha256 of a metadata tarball
//! followed by the rootfs) from the one pass that moves their bytes.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::sync_channel;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use super::bulk::Block;
use super::{CHUNK, DEPTH, HashError, Sink, check_unchanged, read_meta, stream_file};
use crate::image::metadata::ImageMetadata;
use crate::tree::FileSig;

/// Streams a file once and returns its sha256 and, for each given hasher state (the state after
/// some metadata file), the sha256 of that prefix followed by this file: the combined hashes.
pub fn sha256_with_prefixes(
    path: &Path,
    prefixes: Vec<Sha256>,
    progress: &dyn Fn(u64),
) -> Result<(String, Vec<String>), HashError> {
    own_and_prefixed(path, prefixes, None, progress)
}

/// Copies `src` into `out` (which writes `out_path`) reading it once, and returns what
/// [`sha256_with_prefixes`] does for it: an import gets the digests of what it copies without
/// reading the copy again. The read, the write and each hash run on their own threads;
/// `progress` gets the bytes of each chunk read.
pub fn copy_with_prefixes(
    src: &Path,
    out: &mut (dyn Write + Send),
    out_path: &Path,
    prefixes: Vec<Sha256>,
    progress: &dyn Fn(u64),
) -> Result<(String, Vec<String>), HashError> {
    own_and_prefixed(src, prefixes, Some((out, out_path)), progress)
}

fn own_and_prefixed(
    path: &Path,
    prefixes: Vec<Sha256>,
    copy: Option<(&mut (dyn Write + Send), &Path)>,
    progress: &dyn Fn(u64),
) -> Result<(String, Vec<String>), HashError> {
    let mut sinks = vec![Sink::Sha(Sha256::new())];
    sinks.extend(prefixes.into_iter().map(Sink::Sha));
    let mut done = stream_file(path, sinks, copy, progress)?.into_iter();
    let own = done.next().map(Sink::hex).unwrap_or_default();
    Ok((own, done.map(Sink::hex).collect()))
}

/// Hashes a (small) file and returns its sha256 and the hasher state after it, to seed
/// [`sha256_with_prefixes`].
pub fn sha256_state(path: &Path, progress: &dyn Fn(u64)) -> Result<(String, Sha256), HashError> {
    let mut file = std::fs::File::open(path).map_err(|source| HashError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut h = Sha256::new();
    let mut block = Block::new(CHUNK);
    loop {
        let n = block
            .fill_from(&mut file)
            .map_err(|source| HashError::Read {
                path: path.to_owned(),
                source,
            })?;
        if n == 0 {
            break;
        }
        h.update(block.data());
        progress(n as u64);
    }
    Ok((hex::encode(h.clone().finalize()), h))
}

/// Runs `feed` with a function that hands each chunk it is given to every hasher in `hashers`,
/// each hashing on its own thread (the chunks are shared, not copied), and returns what `feed`
/// returned with the hashers once they have hashed every chunk. For bytes that arrive from
/// elsewhere (an upload): one sha256 runs at about 1.4 GB/s on this machine's cores, and a rootfs
/// upload feeds two (its own and the combined one), which in series held an upload to half the
/// speed of the disk.
pub fn hash_in_parallel<T>(
    hashers: Vec<Sha256>,
    feed: impl FnOnce(&mut dyn FnMut(&Bytes)) -> T,
) -> (T, Vec<Sha256>) {
    std::thread::scope(|scope| {
        let (senders, handles): (Vec<_>, Vec<_>) = hashers
            .into_iter()
            .map(|mut h| {
                let (tx, rx) = sync_channel::<Bytes>(DEPTH);
                let handle = scope.spawn(move || {
                    for chunk in rx {
                        h.update(&chunk);
                    }
                    h
                });
                (tx, handle)
            })
            .unzip();
        let out = feed(&mut |chunk: &Bytes| {
            for tx in &senders {
                // A hasher only goes away by panicking, which join reports below.
                let _ = tx.send(chunk.clone());
            }
        });
        drop(senders);
        let hashers = handles
            .into_iter()
            .map(|h| h.join().expect("hashing thread panicked"))
            .collect();
        (out, hashers)
    })
}

/// A metadata tarball read ahead of a rootfs that arrives another way (an upload): its digest,
/// its metadata.yaml, and the sha256 state after its last byte, which the rootfs bytes are fed
/// into to get the combined hash without reading the rootfs again.
#[derive(Clone, Debug)]
pub struct MetaPrefix {
    /// File name in the version folder.
    pub name: String,
    /// Signature when it was read.
    pub sig: FileSig,
    /// Its own sha256.
    pub sha256: String,
    /// Its metadata.yaml.
    pub metadata: ImageMetadata,
    /// The sha256 state after the whole file.
    pub state: Sha256,
}

/// Reads a metadata tarball for [`MetaPrefix`]; fails if it changes while being read.
pub fn read_meta_prefix(path: &Path) -> Result<MetaPrefix, HashError> {
    let sig = FileSig::read(path).map_err(|source| HashError::Read {
        path: path.to_owned(),
        source,
    })?;
    let (digest, state, metadata, _) = read_meta(path, false)?;
    check_unchanged(path, &sig)?;
    Ok(MetaPrefix {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sig,
        sha256: digest.sha256,
        metadata,
        state,
    })
}
