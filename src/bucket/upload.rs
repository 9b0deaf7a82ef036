//! Image files into the bucket: one read of the file, hashed as it goes up in a multipart
//! upload of fixed-size parts with a bounded number in flight, so memory stays flat whatever
//! the size. A failed or refused upload is aborted: S3 never shows an object whose multipart
//! upload did not complete.

use std::io::Read as _;
use std::path::Path;

use bytes::Bytes;
use object_store::{ObjectStore as _, PutMultipartOptions, WriteMultipart};
use sha2::{Digest as _, Sha256};

use super::{Bucket, BucketError, Condition, ObjectKind};

/// Bytes per part (S3 takes 5 MiB to 5 GiB but the last).
pub const PART_SIZE: usize = 8 << 20;

/// Parts in flight at once. With one part being read and one queued, memory stays under
/// `(PARTS_IN_FLIGHT + 2) * PART_SIZE` (80 MiB) whatever the file's size.
pub const PARTS_IN_FLIGHT: usize = 8;

/// What went up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub size: u64,
    pub sha256: String,
}

impl Bucket {
    /// Uploads the local file at `path` as `rel`. With `expect_sha256`, bytes that hash to
    /// anything else are not published (the upload is aborted).
    pub async fn upload_file(
        &self,
        rel: &str,
        path: &Path,
        expect_sha256: Option<&str>,
    ) -> Result<Uploaded, BucketError> {
        let local = |source| BucketError::Local {
            url: self.url.to_string(),
            key: self.key(rel),
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(local)?;
        let size = file.metadata().map_err(local)?.len();
        if size < PART_SIZE as u64 {
            // One request: S3 takes no multipart upload under 5 MiB but for the last part.
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes).map_err(local)?;
            let found = hex::encode(Sha256::digest(&bytes));
            self.check(rel, expect_sha256, &found)?;
            self.put(
                rel,
                Bytes::from(bytes),
                ObjectKind::Image,
                Condition::Overwrite,
            )
            .await?;
            return Ok(Uploaded {
                size,
                sha256: found,
            });
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
        // The reader and hasher: a thread of its own, one part ahead of the uploads.
        let reader = std::thread::spawn(move || {
            let mut hasher = Sha256::new();
            let mut total = 0u64;
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
                            return None;
                        }
                    }
                }
                if filled == 0 {
                    break;
                }
                part.truncate(filled);
                hasher.update(&part);
                total += filled as u64;
                if tx.blocking_send(Ok(Bytes::from(part))).is_err() {
                    return None;
                }
                if filled < PART_SIZE {
                    break;
                }
            }
            Some((total, hex::encode(hasher.finalize())))
        });
        let key = self.path(rel);
        let opts = PutMultipartOptions {
            attributes: ObjectKind::Image.attributes(rel),
            ..PutMultipartOptions::default()
        };
        let upload = self
            .store()
            .put_multipart_opts(&key, opts)
            .await
            .map_err(|e| self.fail(rel, "multipart upload", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let sent: Result<(), BucketError> = async {
            while let Some(part) = rx.recv().await {
                let part = part.map_err(local)?;
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| self.fail(rel, "multipart upload", e))?;
                writer.put(part);
            }
            Ok(())
        }
        .await;
        drop(rx);
        let read = reader.join().ok().flatten();
        let outcome = sent.and_then(|()| {
            let (total, found) = read
                .ok_or_else(|| local(std::io::Error::other("the reader stopped before the end")))?;
            self.check(rel, expect_sha256, &found)?;
            Ok((total, found))
        });
        match outcome {
            Ok((total, found)) => {
                writer
                    .finish()
                    .await
                    .map_err(|e| self.fail(rel, "multipart upload", e))?;
                Ok(Uploaded {
                    size: total,
                    sha256: found,
                })
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

    fn check(&self, rel: &str, expect: Option<&str>, found: &str) -> Result<(), BucketError> {
        match expect {
            Some(expected) if expected != found => Err(BucketError::Changed {
                url: self.url.to_string(),
                key: self.key(rel),
                expected: expected.to_owned(),
                found: found.to_owned(),
            }),
            _ => Ok(()),
        }
    }
}
