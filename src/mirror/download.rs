//! Fetching from a simplestreams server: the catalog documents, and image files streamed into a
//! hidden `.part` file next to their destination while their sha256 and size are checked.
//! An interrupted download is resumed with `Range` (the part is re-hashed first, so the final
//! check still covers every byte); a mismatch deletes the part and fails the file with both
//! hashes; only a complete, verified file is renamed into place.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::ProgressBar;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use sha2::{Digest as _, Sha256};

/// Bytes per read when re-hashing a file.
const CHUNK: usize = 1 << 20;
/// Chunks in flight between the network and the writer thread.
const DEPTH: usize = 16;
/// Attempts per file on network errors and 5xx answers; each resumes where the last stopped.
const ATTEMPTS: u32 = 3;

/// The client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The trusted certificates are unusable.
    #[error(transparent)]
    Trust(#[from] crate::net::TrustError),
    /// reqwest refused the settings.
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
}

/// The HTTP client of a mirror run: system roots plus the given certificates, HTTP/1.1 so that
/// each concurrent download has its own connection (and its own TLS stream to decrypt on any
/// core).
pub fn client(trust: &crate::net::Trust) -> Result<reqwest::Client, ClientError> {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .http1_only()
        .user_agent(concat!("simplestreams-builder/", env!("CARGO_PKG_VERSION")));
    crate::net::with_trust(builder, trust, true)?
        .build()
        .map_err(|e| ClientError::Build(crate::error_chain(&e)))
}

/// `base` + `/` + `rel`, as the clients join catalog paths onto the remote URL.
pub fn join_url(base: &str, rel: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        rel.trim_start_matches('/')
    )
}

/// GETs a JSON document, with retries on network errors and 5xx answers.
pub async fn fetch_json(client: &reqwest::Client, url: &str) -> Result<serde_json::Value, String> {
    let body = fetch_bytes(client, url).await?;
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not valid JSON: {e}"))
}

/// Fetches a catalog file's bytes, retrying transient failures (see [`fetch_json`]).
pub async fn fetch_bytes(client: &reqwest::Client, url: &str) -> Result<bytes::Bytes, String> {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match client.get(url).send().await {
            Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                Ok(body) => return Ok(body),
                Err(e) => last = crate::error_chain(&e),
            },
            Ok(resp) if resp.status().is_server_error() => last = format!("HTTP {}", resp.status()),
            Ok(resp) => return Err(format!("{url}: HTTP {}", resp.status())),
            Err(e) => last = crate::error_chain(&e),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
    }
    Err(format!("{url}: {last} (after {ATTEMPTS} attempts)"))
}

/// What a file must be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Want {
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Why a file could not be mirrored.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The content is not what the catalog says; the download was deleted.
    #[error(
        "sha256 mismatch for {url}: expected {expected}, got {actual} ({size} bytes); the download was deleted"
    )]
    Hash {
        /// Where it came from.
        url: String,
        /// The catalog's sha256.
        expected: String,
        /// The sha256 of what was received.
        actual: String,
        /// Bytes received.
        size: u64,
    },
    /// The size is not what the catalog says; the download was deleted.
    #[error(
        "size mismatch for {url}: expected {expected} bytes, got {actual}; the download was deleted"
    )]
    Size {
        /// Where it came from.
        url: String,
        /// The catalog's size.
        expected: u64,
        /// Bytes received (at least).
        actual: u64,
    },
    /// The server said no, or the network failed every attempt.
    #[error("cannot download {url}: {reason}")]
    Http {
        /// Where from.
        url: String,
        /// Why.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The hidden sibling a download is written to: never served, never pushed, never scanned.
pub fn part_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.part"))
}

/// sha256 and length of a file (or of nothing, if it does not exist), read in 1 MiB chunks.
pub fn hash_file(path: &Path, progress: &ProgressBar) -> std::io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((hasher, 0)),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok((hasher, len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
        progress.inc(n as u64);
    }
}

/// One attempt's end: the part is complete, or the transfer stopped and may be resumed.
enum Attempt {
    Done,
    Retry(String),
}

/// Downloads `url` to `dest`, checking it against `want`. Resumes an existing part. Returns the
/// bytes transferred over the network.
pub async fn fetch_file(
    client: &reqwest::Client,
    url: &str,
    dest: &Path,
    want: &Want,
    bar: &ProgressBar,
    overall: &ProgressBar,
) -> Result<u64, FetchError> {
    let part = part_path(dest);
    if let Some(dir) = dest.parent() {
        crate::tree::atomic::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let mut transferred = 0u64;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        // Re-hash what an earlier run or attempt left, so the final check covers every byte.
        let (hasher, have) = {
            let (p, bar) = (part.clone(), bar.clone());
            bar.set_position(0);
            tokio::task::spawn_blocking(move || hash_file(&p, &bar))
                .await
                .map_err(|e| FetchError::Http {
                    url: url.into(),
                    reason: e.to_string(),
                })?
                .map_err(io_err(&part))?
        };
        let (hasher, have) = if have > want.size {
            std::fs::remove_file(&part).map_err(io_err(&part))?;
            (Sha256::new(), 0)
        } else {
            (hasher, have)
        };
        if have == want.size {
            return finish(url, &part, dest, hasher, have, want).map(|()| transferred);
        }
        match fetch_into(client, url, &part, want, hasher, have, bar, overall).await? {
            (Attempt::Done, n, hasher, len) => {
                transferred += n;
                return finish(url, &part, dest, hasher, len, want).map(|()| transferred);
            }
            (Attempt::Retry(why), n, _, _) => {
                transferred += n;
                last = why;
            }
        }
        if attempt < ATTEMPTS {
            tracing::debug!("{url}: {last}; resuming");
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
    }
    Err(FetchError::Http {
        url: url.into(),
        reason: format!(
            "{last} (after {ATTEMPTS} attempts; the partial download is kept and resumed next run)"
        ),
    })
}

/// Checks a complete part and renames it into place, or deletes it.
fn finish(
    url: &str,
    part: &Path,
    dest: &Path,
    hasher: Sha256,
    len: u64,
    want: &Want,
) -> Result<(), FetchError> {
    let actual = hex::encode(hasher.finalize());
    if len != want.size || actual != want.sha256 {
        let _ = std::fs::remove_file(part);
        if len != want.size {
            return Err(FetchError::Size {
                url: url.into(),
                expected: want.size,
                actual: len,
            });
        }
        return Err(FetchError::Hash {
            url: url.into(),
            expected: want.sha256.clone(),
            actual,
            size: len,
        });
    }
    let file = std::fs::File::open(part).map_err(io_err(part))?;
    file.set_permissions(std::fs::Permissions::from_mode(
        crate::tree::atomic::FILE_MODE,
    ))
    .map_err(io_err(part))?;
    // A verified file must survive a crash as verified: data on disk before the rename.
    file.sync_all().map_err(io_err(part))?;
    std::fs::rename(part, dest).map_err(io_err(dest))?;
    Ok(())
}

type Written = (Attempt, u64, Sha256, u64);

/// One GET (ranged when `have > 0`) streamed into the part: the network side here, hashing and
/// writing on a blocking thread, so both run at once.
#[allow(clippy::too_many_arguments)]
async fn fetch_into(
    client: &reqwest::Client,
    url: &str,
    part: &Path,
    want: &Want,
    hasher: Sha256,
    have: u64,
    bar: &ProgressBar,
    overall: &ProgressBar,
) -> Result<Written, FetchError> {
    let http = |reason: String| FetchError::Http {
        url: url.into(),
        reason,
    };
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(RANGE, format!("bytes={have}-"));
    }
    let mut resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Ok((Attempt::Retry(crate::error_chain(&e)), 0, hasher, have)),
    };
    let status = resp.status();
    let (append, mut hasher, mut len) = match status {
        StatusCode::PARTIAL_CONTENT if have > 0 => {
            let starts_right = resp
                .headers()
                .get(CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(&format!("bytes {have}-")));
            if !starts_right {
                let _ = std::fs::remove_file(part);
                return Ok((
                    Attempt::Retry("the server answered the resume with another range".into()),
                    0,
                    Sha256::new(),
                    0,
                ));
            }
            (true, hasher, have)
        }
        // The server ignored Range: start over.
        StatusCode::OK => (false, Sha256::new(), 0),
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let _ = std::fs::remove_file(part);
            return Ok((
                Attempt::Retry("the partial download no longer fits the file".into()),
                0,
                Sha256::new(),
                0,
            ));
        }
        s if s.is_server_error() => {
            return Ok((Attempt::Retry(format!("HTTP {s}")), 0, hasher, have));
        }
        s => return Err(http(format!("HTTP {s}"))),
    };
    bar.set_position(len);

    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(part)
        .map_err(io_err(part))?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(DEPTH);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<Sha256> {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
            w.write_all(&chunk)?;
        }
        w.flush()?;
        Ok(hasher)
    });
    let mut received = 0u64;
    let mut outcome = Attempt::Done;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                let n = chunk.len() as u64;
                if len + n > want.size {
                    // Longer than the catalog says: no point in reading on.
                    drop(tx);
                    let _ = writer.await;
                    let _ = std::fs::remove_file(part);
                    return Err(FetchError::Size {
                        url: url.into(),
                        expected: want.size,
                        actual: len + n,
                    });
                }
                len += n;
                received += n;
                bar.inc(n);
                overall.inc(n);
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                outcome = Attempt::Retry(crate::error_chain(&e));
                break;
            }
        }
    }
    drop(tx);
    let hasher = writer
        .await
        .map_err(|e| http(e.to_string()))?
        .map_err(io_err(part))?;
    if matches!(outcome, Attempt::Done) && len < want.size {
        outcome = Attempt::Retry(format!(
            "the connection closed after {len} of {} bytes",
            want.size
        ));
    }
    Ok((outcome, received, hasher, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_hidden_siblings() {
        assert_eq!(
            part_path(Path::new("/t/images/a/rootfs.squashfs")),
            Path::new("/t/images/a/.rootfs.squashfs.part")
        );
        assert_eq!(join_url("https://h/x/", "/a/b"), "https://h/x/a/b");
    }
}
