//! Files read from disk for sending, as a `ServeDir` backend (ServeDir keeps all of HTTP:
//! Range, ETag, the conditional requests).
//!
//! tokio's own file reads every chunk on its blocking pool: a thread hop and two futex calls
//! per 128 KiB, which was most of what kept a download below nginx's. Here a read first asks
//! the kernel for pages already in the page cache without waiting (`preadv2` with
//! `RWF_NOWAIT`), on the async thread, as nginx reads on its event loop; only what would wait
//! for the disk goes to the blocking pool. A served image is read again and again, so nearly
//! every read is of cached pages.
//!
//! Over TLS and HTTP/2 the bytes are read here; a whole file over plain HTTP/1.1 goes out with
//! `sendfile` ([`super::sendfile`]), from the file a backend made with [`DiskBackend::noting`]
//! opened for ServeDir.

use std::future::Future;
use std::io::{self, IoSliceMut, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustix::io::{Errno, ReadWriteFlags};
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tokio::task::JoinHandle;
use tower_http::services::fs::{Backend, File};

/// The most a read on the blocking pool asks for at once.
const MAX_BLOCKING_READ: usize = 1 << 20;

/// Opens files with one trip to the blocking pool (open and fstat together) and reads them as
/// the module says.
#[derive(Clone, Debug, Default)]
pub(super) struct DiskBackend {
    opened: Option<Opened>,
}

impl DiskBackend {
    /// A backend for one request that leaves the file it opens in `opened`.
    pub(super) fn noting(opened: Opened) -> Self {
        DiskBackend {
            opened: Some(opened),
        }
    }
}

/// A file [`DiskBackend::noting`] opened.
#[derive(Debug)]
pub(super) struct OpenFile {
    pub(super) file: Arc<std::fs::File>,
    /// Its length when it was opened (what ServeDir answers with).
    pub(super) len: u64,
}

/// Where a [`DiskBackend::noting`] leaves the file it opened.
#[derive(Clone, Debug, Default)]
pub(super) struct Opened(Arc<std::sync::Mutex<Option<OpenFile>>>);

impl Opened {
    /// The file opened, once.
    pub(super) fn take(&self) -> Option<OpenFile> {
        self.0.lock().expect("no panics holding the lock").take()
    }
}

type Boxed<T> = Pin<Box<dyn Future<Output = io::Result<T>> + Send>>;

impl Backend for DiskBackend {
    type File = DiskFile;
    type Metadata = std::fs::Metadata;
    type OpenFuture = Boxed<DiskFile>;
    type MetadataFuture = Boxed<std::fs::Metadata>;

    fn open(&self, path: PathBuf) -> Self::OpenFuture {
        let opened = self.opened.clone();
        Box::pin(async move {
            let (file, metadata) = blocking(move || {
                let file = std::fs::File::open(&path)?;
                let metadata = file.metadata()?;
                Ok((file, metadata))
            })
            .await?;
            let file = Arc::new(file);
            if let Some(opened) = opened {
                *opened.0.lock().expect("no panics holding the lock") = Some(OpenFile {
                    file: Arc::clone(&file),
                    len: metadata.len(),
                });
            }
            Ok(DiskFile {
                file,
                metadata,
                pos: 0,
                state: State::Idle,
            })
        })
    }

    fn metadata(&self, path: PathBuf) -> Self::MetadataFuture {
        Box::pin(async move { blocking(move || std::fs::metadata(&path)).await })
    }
}

/// Runs file system work on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

/// An open file and where the next read starts.
pub(super) struct DiskFile {
    file: Arc<std::fs::File>,
    metadata: std::fs::Metadata,
    pos: u64,
    state: State,
}

enum State {
    Idle,
    /// A read the page cache could not answer at once, on the blocking pool.
    Reading(JoinHandle<io::Result<Vec<u8>>>),
    /// What it read and the caller had no room for yet.
    Read(Vec<u8>, usize),
}

impl DiskFile {
    /// Reads into `buf` only what is in the page cache. `None`: nothing is, or the kernel
    /// cannot tell (then the blocking pool reads).
    fn read_cached(&mut self, buf: &mut ReadBuf<'_>) -> Option<io::Result<()>> {
        let n = match pread_cached(&self.file, buf.initialize_unfilled(), self.pos)? {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        buf.advance(n);
        self.pos += n as u64;
        Some(Ok(()))
    }
}

/// Reads into `dst` at `at` only what the page cache holds, without waiting for the disk
/// (`preadv2` with `RWF_NOWAIT`). `None`: nothing is cached there, or the kernel cannot tell.
pub(super) fn pread_cached(
    file: &std::fs::File,
    dst: &mut [u8],
    at: u64,
) -> Option<io::Result<usize>> {
    loop {
        match rustix::io::preadv2(
            file,
            &mut [IoSliceMut::new(dst)],
            at,
            ReadWriteFlags::NOWAIT,
        ) {
            Ok(n) => return Some(Ok(n)),
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN | Errno::OPNOTSUPP | Errno::NOSYS) => return None,
            Err(e) => return Some(Err(e.into())),
        }
    }
}

impl DiskFile {
    /// Starts reading up to `len` bytes at the current position on the blocking pool.
    fn read_blocking(&mut self, len: usize) {
        let (file, pos) = (Arc::clone(&self.file), self.pos);
        self.state = State::Reading(tokio::task::spawn_blocking(move || {
            let mut data = vec![0; len];
            let n = rustix::io::pread(&*file, &mut data[..], pos)?;
            data.truncate(n);
            Ok(data)
        }));
    }
}

impl AsyncRead for DiskFile {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match &mut this.state {
                State::Idle => {
                    if let Some(done) = this.read_cached(buf) {
                        return Poll::Ready(done);
                    }
                    this.read_blocking(buf.remaining().min(MAX_BLOCKING_READ));
                }
                State::Reading(task) => {
                    let read = ready!(Pin::new(task).poll(cx));
                    // A failed read leaves the file ready for another.
                    this.state = State::Idle;
                    let data = read.map_err(io::Error::other)??;
                    this.state = State::Read(data, 0);
                }
                State::Read(data, taken) => {
                    let n = (data.len() - *taken).min(buf.remaining());
                    buf.put_slice(&data[*taken..*taken + n]);
                    *taken += n;
                    this.pos += n as u64;
                    if *taken == data.len() {
                        this.state = State::Idle;
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl AsyncSeek for DiskFile {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let target = match position {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::End(delta) => this.metadata.len().checked_add_signed(delta),
            SeekFrom::Current(delta) => this.pos.checked_add_signed(delta),
        };
        let Some(target) = target else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            ));
        };
        // Whatever was read ahead for the old position is of no use at the new one.
        if let State::Reading(task) = std::mem::replace(&mut this.state, State::Idle) {
            task.abort();
        }
        this.pos = target;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

impl File for DiskFile {
    type Metadata = std::fs::Metadata;
    type MetadataFuture<'a> = std::future::Ready<io::Result<std::fs::Metadata>>;

    fn metadata(&self) -> Self::MetadataFuture<'_> {
        std::future::ready(Ok(self.metadata.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

    /// A file of `len` bytes that differ from their neighbours, and those bytes.
    fn file_of(len: u32) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        (dir, path, data)
    }

    #[tokio::test]
    async fn reads_the_whole_file_and_from_a_seek() {
        let (_dir, path, data) = file_of(300_000);

        let mut file = DiskBackend::default().open(path.clone()).await.unwrap();
        assert_eq!(file.metadata().await.unwrap().len(), data.len() as u64);
        let mut all = Vec::new();
        file.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, data);

        let mut file = DiskBackend::default().open(path).await.unwrap();
        file.seek(SeekFrom::Start(123_457)).await.unwrap();
        let mut part = vec![0; 10];
        file.read_exact(&mut part).await.unwrap();
        assert_eq!(part, &data[123_457..123_467]);
        file.seek(SeekFrom::End(-3)).await.unwrap();
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).await.unwrap();
        assert_eq!(tail, &data[data.len() - 3..]);
        assert!(file.seek(SeekFrom::Current(-10_000_000)).await.is_err());
    }

    #[tokio::test]
    async fn a_read_the_page_cache_cannot_answer_goes_to_the_blocking_pool() {
        let (_dir, path, data) = file_of(70_000);
        let mut file = DiskBackend::default().open(path).await.unwrap();
        // As if the kernel had said the pages are not cached: the blocking pool's read, handed
        // out in pieces smaller than it.
        file.pos = 5;
        file.read_blocking(1000);
        let mut small = [0u8; 300];
        let mut got = Vec::new();
        while got.len() < 1000 {
            let n = file.read(&mut small).await.unwrap();
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, &data[5..1005]);
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, &data[1005..]);
    }
}
