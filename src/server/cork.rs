//! A TCP connection whose writes during one turn of its task leave in as few segments as the
//! kernel can make of them.
//!
//! h2 writes a response one DATA frame (one TLS record, 16 KiB) per `writev`, and with
//! `TCP_NODELAY` each becomes a segment of its own: under 100 parallel HTTP/2 downloads over
//! TLS the clients were woken once per record, and the scheduler's share of the server's CPU
//! (switching to the woken client on return from `writev`) was the largest part of its gap to
//! nginx. While the connection's task has HTTP/2 requests to serve, the first write of a turn
//! sets `TCP_CORK` and the end of the turn clears it ([`Cork::end_turn`]): the kernel sends
//! full segments as they fill and the rest at once when the turn ends, so nothing waits for
//! the next turn and a client wakes once per segment (64 KiB on loopback) instead of once per
//! record.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The socket, shared by the connection's I/O ([`CorkedTcp`]) and its task ([`Cork`]).
struct Shared {
    stream: TcpStream,
    /// Writes may cork the socket: the task is in a turn with HTTP/2 requests.
    armed: AtomicBool,
    /// `TCP_CORK` is set.
    corked: AtomicBool,
    /// How many times writes have set it.
    #[cfg(test)]
    corkings: std::sync::atomic::AtomicUsize,
}

/// The connection's I/O: reads and writes of the socket, corking it as the module says.
pub(super) struct CorkedTcp(Arc<Shared>);

/// The task's handle on the socket's cork.
pub(super) struct Cork(Arc<Shared>);

/// Wraps `stream`: the I/O to hand to TLS and hyper, and the handle for the task.
pub(super) fn cork(stream: TcpStream) -> (CorkedTcp, Cork) {
    let shared = Arc::new(Shared {
        stream,
        armed: AtomicBool::new(false),
        corked: AtomicBool::new(false),
        #[cfg(test)]
        corkings: std::sync::atomic::AtomicUsize::new(0),
    });
    (CorkedTcp(Arc::clone(&shared)), Cork(shared))
}

impl Cork {
    /// Whether writes from now until [`Cork::end_turn`] may be held back to fill segments.
    pub(super) fn arm(&self, armed: bool) {
        self.0.armed.store(armed, Ordering::Relaxed);
    }

    /// Sends what the turn's writes left in the socket and disarms the cork.
    pub(super) fn end_turn(&self) {
        self.0.armed.store(false, Ordering::Relaxed);
        if self.0.corked.swap(false, Ordering::Relaxed) {
            set_cork(&self.0.stream, false);
        }
    }
}

#[cfg(test)]
impl Cork {
    /// How many times writes have corked the socket.
    pub(super) fn corkings(&self) -> usize {
        self.0.corkings.load(Ordering::Relaxed)
    }

    /// Whether the socket has `TCP_CORK` set, as the kernel says.
    pub(super) fn is_corked(&self) -> bool {
        rustix::net::sockopt::tcp_cork(&self.0.stream).expect("a TCP socket")
    }
}

fn set_cork(stream: &TcpStream, on: bool) {
    // Only a socket that is not one could refuse; the bytes go out either way, at worst in
    // smaller segments or (a cork that cannot be cleared) after the kernel's 200 ms.
    if let Err(e) = rustix::net::sockopt::set_tcp_cork(stream, on) {
        tracing::debug!("cannot set TCP_CORK to {on}: {e}");
    }
}

impl CorkedTcp {
    fn before_write(&self) {
        let shared = &self.0;
        if shared.armed.load(Ordering::Relaxed) && !shared.corked.swap(true, Ordering::Relaxed) {
            set_cork(&shared.stream, true);
            #[cfg(test)]
            shared.corkings.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for CorkedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &self.0.stream;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            // TLS hands over a buffer it has initialised, so this zeroes nothing there.
            match stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // The readiness was stale; `try_read` has cleared it, so the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for CorkedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.0.stream;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            self.before_write();
            match stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here; what the cork holds goes at the end of the turn.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A FIN sends whatever the cork still holds before it.
        Poll::Ready(
            rustix::net::shutdown(&self.0.stream, rustix::net::Shutdown::Write)
                .map_err(io::Error::from),
        )
    }
}

/// A loopback connection, its accepted end wrapped (with `TCP_NODELAY`, as the server sets it),
/// and the client's end.
#[cfg(test)]
pub(super) async fn loopback_pair() -> (CorkedTcp, Cork, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (io, cork) = cork(accepted.unwrap().0);
    io.0.stream.set_nodelay(true).unwrap();
    (io, cork, client.unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn an_armed_turn_corks_its_writes_and_its_end_sends_them() {
        let (mut io, cork, mut client) = loopback_pair().await;
        let started = std::time::Instant::now();
        cork.arm(true);
        io.write_all(b"first ").await.unwrap();
        io.write_all(b"second").await.unwrap();
        assert!(cork.is_corked(), "a write in an armed turn sets TCP_CORK");
        // Corked, the 12 bytes stay in the socket: the kernel holds a partial segment up to
        // 200 ms, and on loopback sent bytes are readable on return from the write. Checked
        // only when the check comes well within the 200 ms (a stalled test machine skips it).
        let waiting = rustix::io::ioctl_fionread(&client).unwrap();
        if started.elapsed() < std::time::Duration::from_millis(100) {
            assert_eq!(waiting, 0, "corked bytes left before the end of the turn");
        }
        let mut got = [0u8; 12];
        cork.end_turn();
        assert!(!cork.is_corked(), "the end of the turn clears TCP_CORK");
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"first second");
    }

    #[tokio::test]
    async fn writes_outside_an_armed_turn_leave_at_once() {
        let (mut io, cork, mut client) = loopback_pair().await;
        io.write_all(b"handshake").await.unwrap();
        assert!(!cork.is_corked());
        let mut got = [0u8; 9];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"handshake");
        cork.arm(false);
        io.write_all(b"http/1.1").await.unwrap();
        assert!(!cork.is_corked());
        cork.end_turn();
    }

    #[tokio::test]
    async fn reads_and_shutdown_pass_through() {
        let (mut io, _cork, mut client) = loopback_pair().await;
        client.write_all(b"request").await.unwrap();
        let mut got = [0u8; 7];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"request");
        io.write_all(b"bye").await.unwrap();
        io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
    }
}
