//! Image files over plain HTTP/1.1, sent with `sendfile(2)` as nginx sends them.
//!
//! hyper writes a response body through its own buffers, so every byte of a file was read
//! into memory (`preadv2`, a copy, and the zeroing of the buffer before it) and then written
//! to the socket (`writev`, a second copy). On a host whose TCP does not pace connections
//! (cubic, the kernel's default) nginx's `sendfile` sent a 1 GiB file 1.3× as fast as that.
//!
//! Here the body ([`FileBody`]) hands hyper stand-ins instead of the file's bytes: slices of
//! [`STAND_IN`], static memory nobody reads, each noting the region of the file it stands for
//! in the connection's queue ([`FileSender`]). hyper passes body chunks to the socket as they
//! are when the I/O writes vectored (its queue strategy: no copy), so the connection's I/O
//! ([`SendfileTcp`]) meets the stand-ins in the order they were made and sends each region
//! with `sendfile` instead. It checks that every stand-in is the one it expects (successive
//! regions' stand-ins start at different places in [`STAND_IN`], and the length must match)
//! and that nothing else is written while regions wait (a hyper that copied chunks would
//! write the stand-ins' zeros as plain bytes): a mismatch ends the connection rather than send
//! a wrong byte. Files under [`MIN_LEN`] go through hyper as before, headers and body in one
//! write.
//!
//! `sendfile` waits for the disk when the pages are not cached, on the async thread. Before
//! each span it asks the page cache, without waiting (`preadv2` with `RWF_NOWAIT`), for the
//! span's first and last byte; when either is missing (or the kernel cannot tell) the span is
//! read on the blocking pool first, as [`super::disk`] does for its reads. Pages evicted from
//! the middle of a cached span still make that one `sendfile` wait.
//!
//! Measured on this 2-core machine under cubic, one 1 GiB download in turn with the build
//! before (6 pairs): 0.10-0.11 s of server CPU instead of 0.31-0.42, 3,803-4,370 MiB/s instead
//! of 2,445-3,290 (docs/benchmarks.md). Should a hyper release copy body chunks after all,
//! the checks above end the connection, and `serves_image_files_over_plain_http1_byte_exact`
//! (tests/it) checks the bytes.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// What a body chunk stands for at most, and what one `sendfile` sends at most. hyper's
/// HTTP/1.1 write queue (256 KiB, `HTTP1_MAX_BUF`) takes the next chunk once less than that
/// is left of the one it holds; the stand-ins take no memory, so a span can be larger than
/// the queue. Each span costs a trip through hyper and two page-cache probes: with 1 MiB
/// instead of 256 KiB, 100 parallel 100 MB downloads took 1.11-1.23 s of server CPU instead
/// of 1.32-1.46 s (docs/benchmarks.md).
const SPAN: usize = 1 << 20;

/// What the read that brings a span into the page cache reads at a time, into one buffer:
/// what a cold download holds for it, whatever the span.
const WARM_STEP: usize = 128 << 10;

/// The smallest file sent this way: below it, the head and the body leave in one write.
pub(super) const MIN_LEN: u64 = 64 << 10;

/// How many places successive regions' stand-ins start at, [`STEP`] apart.
const PLACES: usize = 16;
const STEP: usize = 4 << 10;

/// The memory the stand-ins point into. Never read: hyper hands its address to the I/O,
/// which sends the file instead.
static STAND_IN: [u8; SPAN + PLACES * STEP] = [0; SPAN + PLACES * STEP];

/// A region of a file that a stand-in was handed out for.
struct Region {
    /// The how-manieth region of the connection.
    id: usize,
    file: Arc<File>,
    offset: u64,
    len: usize,
    /// How much of it has been sent.
    sent: usize,
}

/// One connection's regions, in the order their stand-ins were handed to hyper, and how many
/// it has made. A request extension on HTTP/1.1 requests over plain TCP.
#[derive(Clone, Default)]
pub(super) struct FileSender(Arc<Mutex<Regions>>);

#[derive(Default)]
struct Regions {
    waiting: VecDeque<Region>,
    made: usize,
}

impl FileSender {
    /// The body of an answer that is `len` bytes of `file` from `offset`.
    pub(super) fn body(&self, file: Arc<File>, offset: u64, len: u64) -> FileBody {
        FileBody {
            sender: self.clone(),
            file,
            offset,
            left: len,
        }
    }

    fn regions(&self) -> MutexGuard<'_, Regions> {
        self.0.lock().expect("no panics holding the lock")
    }

    /// How many regions wait for their stand-ins to be written.
    #[cfg(test)]
    pub(super) fn queued(&self) -> usize {
        self.regions().waiting.len()
    }
}

/// A file's bytes as stand-ins, each noted in the connection's queue.
pub(super) struct FileBody {
    sender: FileSender,
    file: Arc<File>,
    offset: u64,
    left: u64,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let len = usize::try_from(this.left).map_or(SPAN, |left| left.min(SPAN));
        let id = {
            let mut regions = this.sender.regions();
            let id = regions.made;
            regions.made += 1;
            regions.waiting.push_back(Region {
                id,
                file: Arc::clone(&this.file),
                offset: this.offset,
                len,
                sent: 0,
            });
            id
        };
        this.offset += len as u64;
        this.left -= len as u64;
        let place = place_of(id);
        let stand_in = &STAND_IN[place..place + len];
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(stand_in)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Where the stand-in of the connection's region number `id` starts in [`STAND_IN`].
fn place_of(id: usize) -> usize {
    id % PLACES * STEP
}

fn is_stand_in(slice: &[u8]) -> bool {
    let start = STAND_IN.as_ptr() as usize;
    let at = slice.as_ptr() as usize;
    !slice.is_empty() && at >= start && at < start + STAND_IN.len()
}

fn mismatch(what: &str) -> io::Error {
    io::Error::other(format!("sendfile: {what}; the connection is closed"))
}

/// A plain TCP connection whose writes send stand-ins' regions with `sendfile`.
pub(super) struct SendfileTcp {
    stream: TcpStream,
    sender: FileSender,
    /// A span being read into the page cache on the blocking pool.
    warming: Option<JoinHandle<io::Result<()>>>,
    /// A region, and where the part of it the page cache is known to hold (asked, or just
    /// read) ends: what lies before is sent without asking again.
    cached_to: Option<(usize, u64)>,
    #[cfg(test)]
    warmings: usize,
}

impl SendfileTcp {
    /// Wraps `stream`; `sender` goes to its HTTP/1.1 requests.
    pub(super) fn new(stream: TcpStream) -> (Self, FileSender) {
        let sender = FileSender::default();
        let io = SendfileTcp {
            stream,
            sender: sender.clone(),
            warming: None,
            cached_to: None,
            #[cfg(test)]
            warmings: 0,
        };
        (io, sender)
    }

    /// Sends (part of) the region `slice` stands for; how much, as a write returns it.
    fn poll_send(&mut self, cx: &mut Context<'_>, slice: &[u8]) -> Poll<io::Result<usize>> {
        let (id, file, offset) = {
            let regions = self.sender.regions();
            let Some(region) = regions.waiting.front() else {
                return Poll::Ready(Err(mismatch("a stand-in with no region")));
            };
            let at = slice.as_ptr() as usize - STAND_IN.as_ptr() as usize;
            if at != place_of(region.id) + region.sent || slice.len() != region.len - region.sent {
                return Poll::Ready(Err(mismatch("a stand-in out of order")));
            }
            (
                region.id,
                Arc::clone(&region.file),
                region.offset + region.sent as u64,
            )
        };
        let len = slice.len();
        let end = offset + len as u64;
        loop {
            if let Some(task) = &mut self.warming {
                let warmed = ready!(Pin::new(task).poll(cx));
                self.warming = None;
                warmed.map_err(io::Error::other)??;
                self.cached_to = Some((id, end));
            }
            if !matches!(self.cached_to, Some((known, to)) if known == id && end <= to) {
                if cached(&file, offset, len)? {
                    self.cached_to = Some((id, end));
                    continue;
                }
                let file = Arc::clone(&file);
                #[cfg(test)]
                {
                    self.warmings += 1;
                }
                self.warming = Some(tokio::task::spawn_blocking(move || {
                    warm(&file, offset, len)
                }));
                continue;
            }
            ready!(self.stream.poll_write_ready(cx))?;
            let mut at = offset;
            let sent = self.stream.try_io(Interest::WRITABLE, || {
                rustix::fs::sendfile(&self.stream, &*file, Some(&mut at), len).map_err(Into::into)
            });
            match sent {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file is shorter than when its answer began",
                    )));
                }
                Ok(n) => {
                    let mut regions = self.sender.regions();
                    if let Some(region) = regions.waiting.front_mut() {
                        region.sent += n;
                        if region.sent == region.len {
                            regions.waiting.pop_front();
                        }
                    }
                    return Poll::Ready(Ok(n));
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// Reads `len` bytes at `offset` into the page cache, [`WARM_STEP`] at a time, stopping early
/// at the end of the file (`sendfile` then tells the answer it was cut short).
fn warm(file: &File, offset: u64, len: usize) -> io::Result<()> {
    let mut scratch = vec![0; len.min(WARM_STEP)];
    let mut done = 0;
    while done < len {
        let want = (len - done).min(scratch.len());
        match rustix::io::pread(file, &mut scratch[..want], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether the first and the last byte of `len` bytes at `offset` are in the page cache; `false`
/// when the kernel cannot tell.
fn cached(file: &File, offset: u64, len: usize) -> io::Result<bool> {
    let last = offset + len.saturating_sub(1) as u64;
    for at in [offset, last] {
        match super::disk::pread_cached(file, &mut [0u8; 1], at) {
            Some(read) => read?,
            None => return Ok(false),
        };
    }
    Ok(true)
}

impl AsyncRead for SendfileTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for SendfileTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    /// Writes the slices before the first stand-in as they are, or, when a stand-in comes
    /// first, sends its region. hyper writes an answer's head only when nothing of the last
    /// one is left, so while regions wait every write holds a stand-in.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match bufs.iter().position(|b| is_stand_in(b)) {
            Some(0) => this.poll_send(cx, &bufs[0]),
            Some(first) => Pin::new(&mut this.stream).poll_write_vectored(cx, &bufs[..first]),
            None if !this.sender.regions().waiting.is_empty() => {
                Poll::Ready(Err(mismatch("a write without the stand-in it waits for")))
            }
            None => Pin::new(&mut this.stream).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        // hyper copies body chunks into its own buffer when this is false: the stand-ins
        // would go out as they are.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn pair() -> (SendfileTcp, FileSender, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (io, sender) = SendfileTcp::new(server);
        (io, sender, client)
    }

    fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, &bytes).unwrap();
        (file, bytes)
    }

    /// What hyper does: the head, then the body's chunks, each written until it is gone.
    async fn write_answer(io: &mut SendfileTcp, head: &[u8], mut body: FileBody) {
        if !head.is_empty() {
            io.write_all(head).await.unwrap();
        }
        while let Some(frame) = body.frame().await {
            let chunk = frame.unwrap().into_data().unwrap();
            io.write_all(&chunk).await.unwrap();
        }
        io.flush().await.unwrap();
    }

    #[tokio::test]
    async fn stand_ins_go_out_as_the_files_bytes_in_order() {
        let (mut io, sender, mut client) = pair().await;
        let (a, a_bytes) = file_of(3 * SPAN + 12_345);
        let (b, b_bytes) = file_of(1_000);
        let a = Arc::new(a.reopen().unwrap());
        let b = Arc::new(b.reopen().unwrap());
        let mut expected = b"HEAD-A".to_vec();
        expected.extend_from_slice(&a_bytes[100..]);
        expected.extend_from_slice(b"HEAD-B");
        expected.extend_from_slice(&b_bytes);
        let reader = tokio::spawn(async move {
            let mut got = vec![0; expected.len()];
            client.read_exact(&mut got).await.unwrap();
            assert!(got == expected, "every byte, in order");
        });
        let len = a_bytes.len() as u64 - 100;
        write_answer(&mut io, b"HEAD-A", sender.body(a, 100, len)).await;
        write_answer(&mut io, b"HEAD-B", sender.body(b, 0, 1_000)).await;
        reader.await.unwrap();
        assert_eq!(sender.queued(), 0);
    }

    #[tokio::test]
    async fn a_stand_in_out_of_place_ends_the_connection() {
        let (mut io, sender, _client) = pair().await;
        let (a, _) = file_of(10_000);
        let mut body = sender.body(Arc::new(a.reopen().unwrap()), 0, 10_000);
        let chunk = body.frame().await.unwrap().unwrap().into_data().unwrap();
        // A slice that starts later than what the region has sent.
        assert!(io.write(&chunk[10..]).await.is_err());
        // The stand-in's bytes copied, as a hyper that flattened chunks would write them.
        let copied = Vec::from(chunk.as_ref());
        assert!(io.write(&copied).await.is_err());
        // A stand-in no body handed out.
        let (mut io, _, _client) = pair().await;
        assert!(io.write(&STAND_IN[..10]).await.is_err());
        // The stand-in of a region that was never written, or another's of the same length.
        let (mut io, sender, _client) = pair().await;
        let (a, _) = file_of(10_000);
        let a = Arc::new(a.reopen().unwrap());
        let mut first = sender.body(Arc::clone(&a), 0, 10_000);
        let mut second = sender.body(a, 0, 10_000);
        let _skipped = first.frame().await.unwrap().unwrap().into_data().unwrap();
        let next = second.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(io.write(&next).await.is_err());
    }

    /// A file whose pages are not cached is read on the blocking pool before `sendfile` (which
    /// would wait for the disk on the async thread), also right after another file's answer
    /// from the same offset.
    #[tokio::test]
    async fn a_span_not_in_the_page_cache_is_read_first() {
        let (mut io, sender, mut client) = pair().await;
        let (warm, warm_bytes) = file_of(1_000);
        let warm = Arc::new(warm.reopen().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cold");
        let (_, bytes) = file_of(SPAN);
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        file.sync_all().unwrap();
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        let evicted = !cached(&file, 0, SPAN).unwrap();
        if !evicted {
            eprintln!(
                "the page cache kept {}: only the bytes are checked",
                path.display()
            );
        }
        let reader = tokio::spawn(async move {
            let mut got = vec![0; warm_bytes.len() + bytes.len()];
            client.read_exact(&mut got).await.unwrap();
            assert!(
                got[..warm_bytes.len()] == warm_bytes[..] && got[warm_bytes.len()..] == bytes[..]
            );
        });
        write_answer(&mut io, b"", sender.body(warm, 0, 1_000)).await;
        assert_eq!(io.warmings, 0, "a cached file is sent at once");
        write_answer(&mut io, b"", sender.body(Arc::new(file), 0, SPAN as u64)).await;
        reader.await.unwrap();
        if evicted {
            assert_eq!(io.warmings, 1, "the cold span was read before it was sent");
        }
    }

    #[test]
    fn warming_reads_the_whole_span_in_steps_and_stops_at_the_end_of_the_file() {
        let len = 4 * SPAN + 5;
        let (file, _) = file_of(len);
        let file = file.as_file();
        file.sync_all().unwrap();
        rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
        if cached(file, 0, len).unwrap() {
            eprintln!("the page cache kept the file: only the end of the file is checked");
        }
        warm(file, 0, len).unwrap();
        assert!(
            cached(file, 0, len).unwrap(),
            "the first and the last step read"
        );
        // Past the end, in part or whole: it stops there rather than read again.
        warm(file, 7, SPAN).unwrap();
        warm(file, 10 * SPAN as u64, SPAN).unwrap();
    }

    #[tokio::test]
    async fn a_file_cut_short_under_its_answer_is_an_error_not_zeros() {
        let (mut io, sender, _client) = pair().await;
        let (a, _) = file_of(10_000);
        let mut body = sender.body(Arc::new(a.reopen().unwrap()), 0, 10_000);
        a.as_file().set_len(4_000).unwrap();
        let chunk = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let err = io.write_all(&chunk).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
