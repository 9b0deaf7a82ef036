//! Image files into the bucket: read once (a local file, or a download streamed from another
//! server), hashed as they go up in a multipart upload of fixed-size parts with a bounded
//! number in flight, so memory stays flat whatever the size. A failed or refused upload is
//! aborted: S3 never shows an object whose multipart upload did not complete.

use std::io::Read as _;
use std::path::Path;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use object_store::{ObjectStore as _, PutMultipartOptions, WriteMultipart};
use sha2::{Digest as _, Sha256};

use super::{Bucket, BucketError, Condition, ObjectKind};

/// Files uploaded at once by a push or a mirror pull: with each holding at most
/// `(PARTS_IN_FLIGHT + 2) * PART_SIZE`, a run stays under about 130 MiB of buffers.
pub const PARALLEL_FILES: usize = 2;

/// Bytes per part (S3 takes 5 MiB to 5 GiB but the last).
pub const PART_SIZE: usize = 8 << 20;

/// Parts in flight at once. With one part being read and one queued, memory stays under
/// `(PARTS_IN_FLIGHT + 2) * PART_SIZE` (64 MiB) whatever the file's size: against a local
/// SeaweedFS the server, not the parallelism, set the pace (bench/s3.sh).
pub const PARTS_IN_FLIGHT: usize = 6;

/// What went up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub size: u64,
    pub sha256: String,
}

/// What the bytes must be; anything else is not published.
#[derive(Clone, Copy, Debug)]
pub struct Expect<'a> {
    pub sha256: &'a str,
    pub size: u64,
}

impl Bucket {
    /// Uploads the local file at `path` as `rel`; bytes that are not `expect` are not
    /// published.
    pub async fn upload_file(
        &self,
        rel: &str,
        path: &Path,
        expect: Option<Expect<'_>>,
    ) -> Result<Uploaded, BucketError> {
        let from = path.display().to_string();
        let local = |source| BucketError::Source {
            url: self.url.to_string(),
            key: self.key(rel),
            from: from.clone(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(local)?;
        let size = file.metadata().map_err(local)?.len();
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
        // The reader: a thread of its own, one part ahead of the uploads.
        std::thread::spawn(move || {
            loop {
                let mut part = vec![0u8; PART_SIZE];
                let mut filled = 0;
                while filled < PART_SIZE {
                    match file.read(&mut part[filled..]) {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            let _ = tx.blocking_send(Err(e));
                            return;
                        }
                    }
                }
                if filled == 0 {
                    return;
                }
                part.truncate(filled);
                if tx.blocking_send(Ok(Bytes::from(part))).is_err() || filled < PART_SIZE {
                    return;
                }
            }
        });
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        self.upload_stream(rel, &from, size, body, expect).await
    }

    /// Uploads the bytes of `body` (from `from`, about `size` bytes) as `rel`: in one request
    /// when small, else in a multipart upload; bytes that are not `expect` are not published.
    pub async fn upload_stream<S>(
        &self,
        rel: &str,
        from: &str,
        size: u64,
        body: S,
        expect: Option<Expect<'_>>,
    ) -> Result<Uploaded, BucketError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let read_error = |source| BucketError::Source {
            url: self.url.to_string(),
            key: self.key(rel),
            from: from.to_owned(),
            source,
        };
        let mut body = std::pin::pin!(body);
        let mut hasher = Sha256::new();
        let mut total = 0u64;
        if size < PART_SIZE as u64 {
            // One request: S3 takes no multipart part under 5 MiB but the last.
            let mut bytes = Vec::with_capacity(size as usize);
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(read_error)?;
                bytes.extend_from_slice(&chunk);
                if bytes.len() > PART_SIZE {
                    break;
                }
            }
            hasher.update(&bytes);
            let uploaded = Uploaded {
                size: bytes.len() as u64,
                sha256: hex::encode(hasher.finalize()),
            };
            self.check(rel, from, expect, &uploaded)?;
            self.put(
                rel,
                Bytes::from(bytes),
                ObjectKind::Image,
                Condition::Overwrite,
            )
            .await?;
            return Ok(uploaded);
        }
        let opts = PutMultipartOptions {
            attributes: ObjectKind::Image.attributes(rel),
            ..PutMultipartOptions::default()
        };
        let upload = self
            .store()
            .put_multipart_opts(&self.path(rel), opts)
            .await
            .map_err(|e| self.fail(rel, "multipart upload", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let sent: Result<Uploaded, BucketError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(read_error)?;
                hasher.update(&chunk);
                total += chunk.len() as u64;
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.fail(rel, "multipart upload", e))?;
                writer.put(chunk);
            }
            let uploaded = Uploaded {
                size: total,
                sha256: hex::encode(hasher.finalize()),
            };
            self.check(rel, from, expect, &uploaded)?;
            Ok(uploaded)
        }
        .await;
        match sent {
            Ok(uploaded) => {
                writer
                    .finish()
                    .await
                    .map_err(|e| self.fail(rel, "multipart upload", e))?;
                Ok(uploaded)
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(
                        "{}: could not abort the multipart upload of {} ({}); the server drops it with its incomplete uploads (nothing of it is visible)",
                        self.url,
                        self.key(rel),
                        crate::error_chain(&abort)
                    );
                }
                Err(e)
            }
        }
    }

    fn check(
        &self,
        rel: &str,
        from: &str,
        expect: Option<Expect<'_>>,
        found: &Uploaded,
    ) -> Result<(), BucketError> {
        match expect {
            Some(e) if e.sha256 != found.sha256 || e.size != found.size => {
                Err(BucketError::Changed {
                    url: self.url.to_string(),
                    key: self.key(rel),
                    from: from.to_owned(),
                    mismatch: format!(
                        "gave {} bytes with sha256 {}, but its catalog says {} bytes with sha256 {}",
                        found.size, found.sha256, e.size, e.sha256
                    ),
                })
            }
            _ => Ok(()),
        }
    }
}
