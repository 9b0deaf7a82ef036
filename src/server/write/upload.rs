//! Uploads: `POST` multipart (any field name; each part's filename is the path under the URL's
//! folder, as in `curl -F "file=@lxd.tar.xz;filename=<os>/<release>/<arch>/<variant>/<date>/lxd.tar.xz" $remote/images/`)
//! and `PUT <path>` with the raw body.
//!
//! A body streams into a hidden `.upload-*` temp file in the target folder (so the final rename
//! is atomic and the indexer never sees a partial file) in 1 MiB blocks, written on a blocking
//! thread while each of its hashes runs on a thread of its own. Only an explicit end of body commits: a stream error or a client
//! that goes away drops the temp file. Then fsync, rename into place (or, without
//! ALLOW_OVERWRITES, under a changed name when the file exists), fsync of the folder, and a
//! re-index trigger carrying the digests, so the re-index reads nothing of a big rootfs again:
//! when the version already holds its metadata tarballs, the combined hashes
//! sha256(meta ‖ rootfs) are computed in flight too.
//!
//! The streaming half ([`receive_body`], [`BodyChunks`]) also stages the parts of imports.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest as _, Multipart, Request};
use axum::http::StatusCode;
use axum::response::Response;
use bytes::BytesMut;
use futures_util::{Stream, StreamExt as _};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::policy::Writes;
use super::target::{self, Place, WriteTarget};
use crate::hash::bulk::{DirectWriter, aligned_bytes};
use crate::hash::{KnownDigest, MetaPrefix, hash_in_parallel, read_meta_prefix};
use crate::server::error::RequestError;
use crate::server::reindex::{Reindexer, Trigger};
use crate::server::request_path::RequestPath;
use crate::tree::names::pairs;
use crate::tree::{FileRole, FileSig, scan_version};

/// The network's chunks (16 KiB HTTP/2 frames, TLS records) are gathered into blocks of this
/// size before they go to the writer thread: one hand-off, one write and one wake of each hasher
/// per MiB instead of per chunk. The blocks are aligned for direct writes ([`DirectWriter`]),
/// which spares the kernel's copy into the page cache: that copy was 12 % of all CPU samples of
/// a 1 GiB upload over TLS, on two cores the upload keeps busy.
const BLOCK: usize = 1 << 20;
/// Blocks queued between the network and the writer thread (memory per upload: a few MiB).
const QUEUE: usize = 4;
/// Metadata tarballs larger than this are not read ahead for combined hashes.
const MAX_META_PREFIX: u64 = 256 << 20;

/// What the client is told about a stored file.
#[derive(Debug, Serialize)]
pub(crate) struct Stored {
    /// Where the file is, relative to the served root.
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// True when an existing file was replaced (ALLOW_OVERWRITES).
    pub replaced: bool,
    /// Set when the file existed and overwrites are off: the path asked for, while `path` is
    /// the changed name the upload was stored under (which the indexer does not publish).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_path: Option<String>,
}

enum Chunk {
    Data(Bytes),
    End,
}

/// A request body on its way to a blocking writer (see [`receive_body`]).
pub(crate) struct BodyChunks(mpsc::Receiver<Chunk>);

impl BodyChunks {
    /// Writes the whole body to `file` in blocks of [`BLOCK`], showing every block to `seen`
    /// before it is written (to hand it to hashers), directly to the disk where it can
    /// ([`DirectWriter`]), then fsyncs; returns the size. Fails when the body did not end
    /// normally (broken, too large, client gone): the caller must then discard the file.
    /// `shown` names the file in errors.
    pub(crate) fn write_to(
        mut self,
        file: &std::fs::File,
        shown: &str,
        mut seen: impl FnMut(&Bytes),
    ) -> Result<u64, RequestError> {
        let io = |source| RequestError::Io {
            path: shown.to_owned(),
            source,
        };
        let mut out = DirectWriter::new(file);
        loop {
            match self.0.blocking_recv() {
                Some(Chunk::Data(data)) => {
                    seen(&data);
                    out.write_all(&data).map_err(io)?;
                }
                Some(Chunk::End) => break,
                None => {
                    // The sender went away without saying the body ended: never commit that.
                    return Err(RequestError::Interrupted {
                        reason: "the request ended early".into(),
                    });
                }
            }
        }
        file.sync_all().map_err(io)?;
        Ok(out.written())
    }
}

/// Streams `body` to `writer`, which runs on a blocking thread and gets the chunks through
/// [`BodyChunks::write_to`], and caps the body at `limit` bytes. When the body breaks, grows too
/// large or the client goes away, the writer sees a body that did not end. `shown` names the
/// destination in errors.
pub(crate) async fn receive_body<S, E, T>(
    mut body: S,
    limit: u64,
    shown: &str,
    writer: impl FnOnce(BodyChunks) -> Result<T, RequestError> + Send + 'static,
) -> Result<T, RequestError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    let worker = tokio::task::spawn_blocking(move || writer(BodyChunks(rx)));
    let mut total = 0u64;
    // On a refusal below, `tx` is dropped without `End`: the writer discards the file.
    let mut refused = None;
    let mut block = BytesMut::new();
    'body: loop {
        let chunk = match body.next().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                refused = Some(RequestError::Interrupted {
                    reason: e.to_string(),
                });
                break;
            }
            None => {
                let last = (!block.is_empty()).then(|| Chunk::Data(block.split().freeze()));
                for chunk in last.into_iter().chain([Chunk::End]) {
                    if tx.send(chunk).await.is_err() {
                        break;
                    }
                }
                break;
            }
        };
        total += chunk.len() as u64;
        if total > limit {
            refused = Some(RequestError::TooLarge { limit });
            break;
        }
        // Cut into whole blocks, each in a buffer of its own that the disk can take directly.
        let mut rest = &chunk[..];
        while !rest.is_empty() {
            if block.is_empty() && block.capacity() < BLOCK {
                block = aligned_bytes(BLOCK);
            }
            let n = (BLOCK - block.len()).min(rest.len());
            block.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if block.len() == BLOCK && tx.send(Chunk::Data(block.split().freeze())).await.is_err() {
                // The writer stopped early: its error is below.
                break 'body;
            }
        }
    }
    drop(tx);
    // The writer is waited for even after a refusal: the caller cleans up after it (a staging
    // folder, a temp file), which must not race with the writer still creating its file.
    let written = worker.await;
    if let Some(e) = refused {
        return Err(e);
    }
    written.map_err(|e| RequestError::Io {
        path: shown.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })?
}

/// `PUT /<path>`.
/// Auth is checked by the router before this runs.
pub(crate) async fn put(writes: Arc<Writes>, req: Request) -> Result<Response, RequestError> {
    let raw = req.uri().path().to_owned();
    let target = RequestPath::parse(&raw)
        .ok_or_else(|| bad_path(&raw, "not a plain path".into()))
        .and_then(|p| {
            let rel = p.to_relative_string();
            target::upload_target(&rel, &writes.scope).map_err(|r| bad_path(&rel, r))
        });
    let target = match target {
        Ok(t) => t,
        Err(e) => {
            drain_small(req.into_body()).await;
            return Err(e);
        }
    };
    let declared = crate::server::content_length(req.headers());
    if declared.is_some_and(|n| n > writes.max_upload_size) {
        return Err(RequestError::TooLarge {
            limit: writes.max_upload_size,
        });
    }
    let stored = store(&writes, target, req.into_body().into_data_stream()).await?;
    Ok(super::policy::json_response(StatusCode::CREATED, &stored))
}

/// Reads and discards up to 1 MiB of a refused request's body (for at most 2 s) before the
/// error is sent. Over HTTP/2 an answer given while the client is still sending ends with a
/// stream reset, and curl then reports its own error instead of our 401 or 400; a small body
/// read to its end avoids that. A large one is not worth receiving just to refuse it.
pub(crate) async fn drain_small(body: axum::body::Body) {
    const LIMIT: usize = 1 << 20;
    let mut stream = body.into_data_stream();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let mut seen = 0;
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > LIMIT {
                break;
            }
        }
    })
    .await;
}

/// [`drain_small`] for a multipart body being read: skips the remaining parts for at most 2 s.
pub(crate) async fn drain_multipart(multipart: &mut Multipart) {
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Ok(Some(_)) = multipart.next_field().await {}
    })
    .await;
}

/// `POST /<folder>/` with a multipart body: every part with a filename is stored at
/// `<folder>/<filename>`; other parts are ignored. Auth is checked by the router.
pub(crate) async fn post(writes: Arc<Writes>, req: Request) -> Result<Response, RequestError> {
    let raw = req.uri().path().to_owned();
    let trimmed = match raw.trim_end_matches('/') {
        "" => "/",
        t => t,
    };
    let base = RequestPath::parse(trimmed)
        .ok_or_else(|| bad_path(&raw, "not a plain path".into()))?
        .to_relative_string();
    let (req, seen) = super::parts::guard(req);
    super::parts::explain(store_parts(&writes, &base, req).await, &seen)
}

/// Stores every file part of a multipart upload under `base`.
async fn store_parts(writes: &Writes, base: &str, req: Request) -> Result<Response, RequestError> {
    let mut multipart = Multipart::from_request(req, &()).await?;
    let mut stored = Vec::new();
    while let Some(field) = multipart.next_field().await? {
        let Some(name) = field.file_name().map(str::to_owned) else {
            continue;
        };
        let rel = if base.is_empty() {
            name.clone()
        } else {
            format!("{base}/{name}")
        };
        let target = match target::upload_target(&rel, &writes.scope) {
            Ok(t) => t,
            Err(reason) => {
                // Read the rest of a small body so HTTP/2 clients get the 400 (see drain_small).
                drop(field);
                drain_multipart(&mut multipart).await;
                return Err(bad_path(&rel, reason));
            }
        };
        stored.push(store(writes, target, field).await?);
    }
    let body = match stored.len() {
        0 => return Err(RequestError::NoFilePart),
        1 => serde_json::to_value(stored.pop()).unwrap_or_default(),
        _ => serde_json::to_value(&stored).unwrap_or_default(),
    };
    Ok(super::policy::json_response(StatusCode::CREATED, &body))
}

/// A refused path; a long one (a client-sent name) is cut in the answer.
fn bad_path(path: &str, reason: String) -> RequestError {
    const SHOWN: usize = 256;
    let path = if path.len() > SHOWN {
        let cut = (0..=SHOWN)
            .rev()
            .find(|&i| path.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}… ({} bytes)", &path[..cut], path.len())
    } else {
        path.to_owned()
    };
    RequestError::BadPath { path, reason }
}

/// Streams `body` into place at `target` and asks for a re-index.
async fn store<S, E>(writes: &Writes, target: WriteTarget, body: S) -> Result<Stored, RequestError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let root = Arc::clone(&writes.root);
    let overwrite = writes.allow_overwrites;
    let job_target = target.clone();
    let reindexer = writes.reindexer.clone();
    let shown = target.relative().display().to_string();
    let (stored, known) = receive_body(body, writes.max_upload_size, &shown, move |chunks| {
        write_file(&root, &job_target, chunks, overwrite, &reindexer)
    })
    .await?;
    tracing::info!(
        "stored {} ({} bytes, sha256 {}){}",
        stored.path,
        stored.size,
        stored.sha256,
        match &stored.requested_path {
            Some(r) => format!(" instead of the existing {r} (overwrites are off)"),
            None if stored.replaced => " replacing the previous file".into(),
            None => String::new(),
        }
    );
    writes.reindexer.request_written(
        &writes.root,
        Trigger {
            reason: format!("uploaded {}", stored.path),
            paths: vec![PathBuf::from(&stored.path)],
            known: known
                .map(|k| (target.product_dir.clone(), k))
                .into_iter()
                .collect(),
            done: None,
        },
    );
    Ok(stored)
}

/// The blocking half: temp file, hashing, fsync, rename. Returns what to tell the client and,
/// for an image file stored under its own name, its digests for the hash cache. The folders it
/// makes are noted with `reindexer` at once, for the watcher (see [`Reindexer::note_made`]).
fn write_file(
    root: &Path,
    target: &WriteTarget,
    chunks: BodyChunks,
    overwrite: bool,
    reindexer: &Reindexer,
) -> Result<(Stored, Option<KnownDigest>), RequestError> {
    let rel = target.relative();
    let shown = rel.display().to_string();
    let io = |source| RequestError::Io {
        path: shown.clone(),
        source,
    };
    target::check_on_disk(root, &rel).map_err(|r| bad_path(&shown, r))?;
    let path = root.join(&rel);
    let dir = path.parent().unwrap_or(root).to_owned();
    let existing = dir
        .ancestors()
        .find(|a| a.is_dir())
        .unwrap_or(root)
        .to_owned();
    crate::tree::atomic::create_dir_all(&dir).map_err(io)?;
    if existing != dir {
        reindexer.note_made(root, rel.parent().unwrap_or(&rel));
    }
    let result = fill_and_place(root, target, &path, &dir, chunks, overwrite);
    if result.is_err() {
        // Folders made for a failed upload go again (when still empty), so a broken upload
        // leaves no empty product or version behind for the indexer.
        for d in dir
            .ancestors()
            .take_while(|d| *d != existing && d.starts_with(root))
        {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
        }
    }
    result
}

fn fill_and_place(
    root: &Path,
    target: &WriteTarget,
    path: &Path,
    dir: &Path,
    chunks: BodyChunks,
    overwrite: bool,
) -> Result<(Stored, Option<KnownDigest>), RequestError> {
    let shown = target.relative().display().to_string();
    let io = |source| RequestError::Io {
        path: shown.clone(),
        source,
    };
    if path.is_dir() {
        return Err(RequestError::IsAFolder { path: shown });
    }
    let metas = match target.role() {
        Some(role @ FileRole::Rootfs(_)) => meta_prefixes(target, dir, role),
        _ => Vec::new(),
    };

    let temp =
        crate::tree::atomic::temp_file(dir, crate::tree::names::UPLOAD_PREFIX).map_err(io)?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(
            crate::tree::atomic::FILE_MODE,
        ))
        .map_err(io)?;
    // Its own sha256 first, then one per metadata tarball it pairs with (the combined hashes),
    // each on its own thread while this one writes.
    let hashers = std::iter::once(Sha256::new())
        .chain(metas.iter().map(|m| m.state.clone()))
        .collect();
    let (size, hashers) = hash_in_parallel(hashers, |seen| {
        chunks.write_to(temp.as_file(), &shown, seen)
    });
    let size = size?;
    let mut hashers = hashers.into_iter();
    let sha = hashers.next().expect("the file's own hasher");
    let combined = hashers;
    check_image(target, temp.path(), &shown)?;

    let existed = path.exists();
    let (final_path, requested_path) = if overwrite || !existed {
        temp.persist(path).map_err(|e| io(e.error))?;
        (path.to_owned(), None)
    } else {
        let mut temp = temp;
        let mut n = 1u32;
        loop {
            let candidate = numbered(path, n);
            match temp.persist_noclobber(&candidate) {
                Ok(_) => break (candidate, Some(shown.clone())),
                Err(e) if e.error.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => {
                    temp = e.file;
                    n += 1;
                }
                Err(e) => return Err(io(e.error)),
            }
        }
    };
    crate::tree::atomic::sync_dir(dir).map_err(io)?;
    let sig = FileSig::read(&final_path).map_err(io)?;
    let stored_rel = final_path
        .strip_prefix(root)
        .unwrap_or(&final_path)
        .display()
        .to_string();
    let sha256 = hex::encode(sha.finalize());
    // Digests worth caching: an image file under its own name whose hash does not need a
    // metadata.yaml (metadata tarballs are small and read again).
    let known = match (target.role(), &target.place, &requested_path) {
        (
            Some(FileRole::Rootfs(_) | FileRole::Unified(_) | FileRole::LxcMeta),
            Place::File { version, name },
            None,
        ) => Some(KnownDigest {
            version: version.as_str().to_owned(),
            file: name.clone(),
            sig,
            sha256: sha256.clone(),
            combined: metas
                .into_iter()
                .zip(combined)
                .map(|(m, h)| (m, hex::encode(h.finalize())))
                .collect(),
        }),
        _ => None,
    };
    Ok((
        Stored {
            path: stored_rel,
            size,
            sha256,
            replaced: existed && requested_path.is_none(),
            requested_path,
        },
        known,
    ))
}

/// The image check, on the complete upload before it is renamed into place: a metadata tarball
/// must hold a readable metadata.yaml for the product's architecture; a rootfs, disk, unified
/// tarball or LXC metadata tarball must pass [`crate::image::check`]. `shown` names the file in the answer.
fn check_image(target: &WriteTarget, temp: &Path, shown: &str) -> Result<(), RequestError> {
    use crate::image::check::{check_lxc_meta, check_rootfs, check_unified};
    let refuse = |problem: String| RequestError::BadImage {
        path: shown.to_owned(),
        problem,
    };
    match target.role() {
        Some(FileRole::Meta { .. }) => {
            let file = std::fs::File::open(temp).map_err(|source| RequestError::Io {
                path: shown.to_owned(),
                source,
            })?;
            let meta = crate::image::metadata::read_metadata(
                std::io::BufReader::new(file),
                Path::new(shown),
            )
            .map_err(|e| refuse(e.problem))?;
            match meta.arch_problem(&target.arch) {
                Some(problem) => Err(refuse(problem)),
                None => Ok(()),
            }
        }
        Some(FileRole::Rootfs(kind)) => check_rootfs(kind, temp).map_err(|e| refuse(e.problem)),
        Some(FileRole::Unified(_)) => check_unified(temp).map_err(|e| refuse(e.problem)),
        Some(FileRole::LxcMeta) => check_lxc_meta(temp).map_err(|e| refuse(e.problem)),
        None => Ok(()),
    }
}

/// The metadata tarballs already in the version folder that `role` pairs with, read ahead so
/// the combined hashes come out of the same pass as the upload. Any problem just means the
/// re-index computes them itself.
fn meta_prefixes(target: &WriteTarget, dir: &Path, role: FileRole) -> Vec<MetaPrefix> {
    let Place::File { version, .. } = &target.place else {
        return Vec::new();
    };
    let Ok(mut v) = scan_version(version.clone(), dir, &mut Vec::new()) else {
        return Vec::new();
    };
    // The pairs this version will have once the upload is in place: its files of other roles,
    // and the upload's role last.
    v.files.retain(|f| f.role != role);
    let mut roles: Vec<FileRole> = v.files.iter().map(|f| f.role).collect();
    roles.push(role);
    let me = roles.len() - 1;
    pairs(&roles)
        .into_iter()
        .filter(|&(_, r)| r == me)
        .filter_map(|(m, _)| {
            let meta = &v.files[m];
            if meta.sig.size > MAX_META_PREFIX {
                return None;
            }
            read_meta_prefix(&meta.path)
                .inspect_err(|e| tracing::debug!("combined hash left to the re-index: {e}"))
                .ok()
        })
        .collect()
}

/// `lxd.tar.xz` → `lxd.tar-1.xz`: the lxd-image-server uploader's scheme (a number before the
/// last extension).
fn numbered(path: &Path, n: u32) -> PathBuf {
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let new = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{n}.{ext}"),
        _ => format!("{name}-{n}"),
    };
    path.with_file_name(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_are_cut_into_whole_aligned_blocks() {
        // Uneven chunks, as TLS records and HTTP/2 frames arrive.
        let sizes = [1, 16_384, 7, 300_000, 65_536, 1 << 20, 3];
        for total in [
            0,
            1,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            2 * BLOCK,
            2 * BLOCK + 12_345,
        ] {
            let data: Vec<u8> = (0..total).map(|i| (i * 31 % 251) as u8).collect();
            let mut chunks = Vec::new();
            let mut at = 0;
            for n in sizes.iter().cycle() {
                if at == total {
                    break;
                }
                let n = (*n).min(total - at);
                chunks.push(Ok::<_, std::io::Error>(Bytes::copy_from_slice(
                    &data[at..at + n],
                )));
                at += n;
            }
            let body = futures_util::stream::iter(chunks);
            let blocks = receive_body(body, u64::MAX, "test", |chunks: BodyChunks| {
                let mut rx = chunks.0;
                let mut got = Vec::new();
                loop {
                    match rx.blocking_recv() {
                        Some(Chunk::Data(block)) => got.push(block),
                        Some(Chunk::End) => return Ok(got),
                        None => {
                            return Err(RequestError::Interrupted {
                                reason: "no end".into(),
                            });
                        }
                    }
                }
            })
            .await
            .unwrap();
            let (last, whole) = blocks
                .split_last()
                .map_or((None, &[][..]), |(l, w)| (Some(l), w));
            for block in whole {
                assert_eq!(
                    block.len(),
                    BLOCK,
                    "{total}: a block before the last is whole"
                );
                assert!(
                    block
                        .as_ptr()
                        .addr()
                        .is_multiple_of(crate::hash::bulk::ALIGN),
                    "{total}: a whole block can be written direct"
                );
            }
            if let Some(last) = last {
                assert!(!last.is_empty() && last.len() <= BLOCK, "{total}");
                assert!(
                    last.as_ptr()
                        .addr()
                        .is_multiple_of(crate::hash::bulk::ALIGN)
                );
            }
            assert_eq!(blocks.len(), total.div_ceil(BLOCK), "{total}");
            assert!(blocks.concat() == data, "{total}: the bytes as sent");
        }
    }

    #[test]
    fn numbered_names_follow_the_original() {
        let p = Path::new("/x/lxd.tar.xz");
        assert_eq!(numbered(p, 1), Path::new("/x/lxd.tar-1.xz"));
        assert_eq!(
            numbered(Path::new("/x/rootfs.squashfs"), 2),
            Path::new("/x/rootfs-2.squashfs")
        );
        assert_eq!(
            numbered(Path::new("/x/metadata.json"), 1),
            Path::new("/x/metadata-1.json")
        );
    }
}
