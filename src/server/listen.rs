//! Accepting connections and serving each one, TLS handshake, HTTP/1.1 or HTTP/2 and every
//! request on it, in one task.
//!
//! Why one task: hyper hands each HTTP/2 request to its executor as a future of its own, and the
//! usual executor spawns it as a task. A response body then crosses from that task to the
//! connection's, chunk by chunk, through h2's shared state behind a mutex; on the multi-thread
//! runtime the two tasks run on different workers, which contend for the mutex and wake each
//! other all through a download (`perf` put the context switches at a sixth of the server's
//! samples during one HTTP/2 download, against almost none over HTTP/1.1). Here the executor
//! queues the request's future and the connection's task polls it beside the connection, as
//! nginx serves a connection on one worker: the handover is a call, and the other workers are
//! free for other connections.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use futures_util::task::AtomicWaker;
use futures_util::{FutureExt as _, TryFutureExt as _};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tower::ServiceExt as _;

use super::cork::{Cork, CorkedTcp, cork};
use super::records::TlsRecordFrames;
use super::sendfile::{FileSender, SendfileTcp};

/// How long the server waits for what clients do or do not do.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// How long connections still in flight get to finish after a stop.
    pub(super) shutdown_grace: Duration,
    /// A connection that sends no request within this time is closed, so idle sockets (a
    /// client that connects and says nothing) cannot pile up.
    pub(super) first_request: Duration,
    /// A TLS handshake that takes longer is given up, so a client that never sends its
    /// ClientHello holds nothing for long.
    pub(super) handshake: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(30),
            first_request: Duration::from_secs(30),
            handshake: Duration::from_secs(10),
        }
    }
}

/// Per-stream HTTP/2 receive window, sized for uploads: with h2's default 64 KiB, a multi-GB
/// upload over HTTP/2 (curl's default over TLS) ran at a sixth of the HTTP/1.1 speed, and the
/// adaptive window was slower still on loopback. A fixed window bounds what one upload can
/// have in flight in memory.
const HTTP2_STREAM_WINDOW: u32 = 4 << 20;

/// What one connection may hold of a response body not yet sent: HTTP/1.1's write queue
/// (hyper's `max_buf_size`, which also caps its read buffer) and an HTTP/2 stream's send
/// buffer. Image files are read as fast as the page cache answers, so a download keeps these
/// full. At hyper's default (~400 KiB each) 100 parallel downloads of 100 MiB held 60-65 MiB
/// over HTTP/1.1 and 92-103 MiB over HTTP/2. HTTP/1.1 needs the queue: it sends what is
/// queued in one `writev`, and a 1 GiB download ran at 930-980 MiB/s with 128 KiB, 1,600
/// MiB/s with 256 KiB (64 KiB reads). HTTP/2 sends a frame at a time whatever is queued, and
/// since its requests run in the connection's task it keeps pace with 128 KiB: 100 parallel
/// HTTP/2 downloads peaked at 46 MiB with it and 59 MiB with 256 KiB, at the same speed. The
/// cap also bounds hyper's read buffer for an HTTP/1.1 upload (~400 KiB by default); uploads
/// gather 1 MiB blocks anyway.
const HTTP1_MAX_BUF: usize = 256 << 10;
const HTTP2_MAX_SEND_BUF: usize = 128 << 10;

/// Largest HTTP/2 frame a client may send us. The protocol's default, 16 KiB, made curl send
/// every 16 KiB of an upload as a frame in two TLS records of its own.
const HTTP2_MAX_FRAME: u32 = 1 << 20;

/// Tells a running server to stop: it stops accepting, asks every connection to finish what it
/// is doing, waits up to [`Limits::shutdown_grace`] for them, then returns. Set before the server
/// starts, it stops as soon as it is up.
#[derive(Clone, Debug)]
pub(super) struct Stop(Arc<watch::Sender<bool>>);

impl Default for Stop {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl Stop {
    pub(super) fn stop(&self) {
        self.0.send_replace(true);
    }

    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            // The sender lives in `self` as long as the server runs, so this only ends on a
            // stop.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Serves `app` on `listener` (TLS with `tls`) until `stop`; see the module documentation.
pub(super) async fn serve(
    listener: std::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    stop: Stop,
    limits: Limits,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let stopped = stop.stopped();
    tokio::pin!(stopped);
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            () = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: the listener stays, and trying again at
                    // once would spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Responses are flushed whole; Nagle would hold the last segment of each back.
        let _ = tcp.set_nodelay(true);
        let conn = Conn {
            peer,
            app: app.clone(),
            watcher: graceful.watcher(),
            limits,
        };
        match &tls {
            None => {
                let (io, sender) = SendfileTcp::new(tcp);
                tokio::spawn(conn.serve(io, None, Some(sender)))
            }
            Some(acceptor) => tokio::spawn(conn.handshake(acceptor.clone(), tcp, stop.stopped())),
        };
    }
    // Refuse new connections now rather than leave them waiting in the backlog.
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {} s after the shutdown request are closed",
            limits.shutdown_grace.as_secs()
        );
    }
    Ok(())
}

/// One accepted connection.
struct Conn {
    peer: SocketAddr,
    app: axum::Router,
    watcher: Watcher,
    limits: Limits,
}

impl Conn {
    /// The TLS handshake, bounded in time and abandoned on a stop, then [`Conn::serve`].
    async fn handshake(
        self,
        acceptor: tokio_rustls::TlsAcceptor,
        tcp: tokio::net::TcpStream,
        stopped: impl Future<Output = ()>,
    ) {
        let (tcp, cork): (CorkedTcp, Cork) = cork(tcp);
        let handshake = tokio::time::timeout(self.limits.handshake, acceptor.accept(tcp));
        let tls = tokio::select! {
            biased;
            () = stopped => return,
            done = handshake => match done {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!("TLS handshake with {} failed: {e}", self.peer);
                    return;
                }
                Err(_) => {
                    tracing::debug!("TLS handshake with {} timed out", self.peer);
                    return;
                }
            },
        };
        self.serve(tls, Some(cork), None).await;
    }

    /// HTTP/1.1 or HTTP/2 (hyper tells them apart) on `io`, every HTTP/2 request polled in
    /// this task, until the client goes, a stop has let the requests in flight finish, or no
    /// first request came in time. Over TLS (`cork` is then the socket's under it), HTTP/2
    /// response bodies go out in frames that fill TLS records exactly ([`super::records`]),
    /// and what a turn of the task writes for them leaves in full segments
    /// ([`super::cork`]). Over plain TCP (`sender` is then the socket's), HTTP/1.1 requests
    /// carry the [`FileSender`] that sends image files with `sendfile` ([`super::sendfile`]).
    async fn serve<I>(self, io: I, cork: Option<Cork>, sender: Option<FileSender>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            peer,
            app,
            watcher,
            limits,
        } = self;
        let tls = cork.is_some();
        let requests = Requests::default();
        let mut builder = auto::Builder::new(requests.spawner());
        builder
            .http1()
            .timer(TokioTimer::new())
            .max_buf_size(HTTP1_MAX_BUF);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_send_buf_size(HTTP2_MAX_SEND_BUF)
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_STREAM_WINDOW * 2)
            .max_frame_size(HTTP2_MAX_FRAME);
        let asked = Arc::new(AtomicBool::new(false));
        let service = {
            let asked = Arc::clone(&asked);
            tower::service_fn(move |mut request: axum::extract::Request<_>| {
                asked.store(true, Ordering::Relaxed);
                request.extensions_mut().insert(ConnectInfo(peer));
                let record_frames = tls && request.version() == axum::http::Version::HTTP_2;
                if let Some(sender) = &sender
                    && request.version() != axum::http::Version::HTTP_2
                {
                    request.extensions_mut().insert(sender.clone());
                }
                app.clone().oneshot(request).map_ok(move |response| {
                    if record_frames {
                        response.map(|b| axum::body::Body::new(TlsRecordFrames::new(b)))
                    } else {
                        response
                    }
                })
            })
        };
        let service = hyper_util::service::TowerToHyperService::new(service);
        let conn = watcher.watch(builder.serve_connection(TokioIo::new(io), service));
        let mut driven = requests.drive(conn, cork);
        tokio::select! {
            () = &mut driven => return,
            () = tokio::time::sleep(limits.first_request) => {}
        }
        if !asked.load(Ordering::Relaxed) {
            tracing::debug!(
                "closing the connection from {peer}: no request within {} s",
                limits.first_request.as_secs()
            );
            return;
        }
        driven.await;
    }
}

type Request = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A connection's HTTP/2 requests: hyper hands them over through [`Spawner`], and
/// [`Requests::drive`] polls them in the connection's task.
#[derive(Default)]
struct Requests {
    handed: Arc<Handed>,
}

#[derive(Default)]
struct Handed {
    new: Mutex<Vec<Request>>,
    /// The connection's task, woken when a request is handed over from elsewhere (hyper does
    /// it while the connection is polled, but nothing requires that).
    task: AtomicWaker,
}

impl Handed {
    fn is_empty(&self) -> bool {
        self.new
            .lock()
            .expect("no panics holding the lock")
            .is_empty()
    }
}

/// hyper's executor for one connection.
#[derive(Clone)]
struct Spawner(Arc<Handed>);

impl<F> hyper::rt::Executor<F> for Spawner
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, request: F) {
        self.0
            .new
            .lock()
            .expect("no panics holding the lock")
            .push(Box::pin(request));
        self.0.task.wake();
    }
}

impl Requests {
    fn spawner(&self) -> Spawner {
        Spawner(Arc::clone(&self.handed))
    }

    fn drive<C: Future>(self, conn: C, cork: Option<Cork>) -> Driven<C> {
        Driven {
            conn: Some(Box::pin(conn)),
            running: FuturesUnordered::new(),
            handed: self.handed,
            cork,
        }
    }
}

/// The connection and its requests, polled together; ends when the connection has ended and
/// its last request with it.
struct Driven<C> {
    conn: Option<Pin<Box<C>>>,
    running: FuturesUnordered<Request>,
    handed: Arc<Handed>,
    /// The socket's cork over TLS: armed while HTTP/2 requests run, so that their frames
    /// leave in full segments, and released at the end of each poll.
    cork: Option<Cork>,
}

impl<C: Future> Driven<C> {
    /// Polls the requests until none can go on, taking in those handed over meanwhile.
    fn poll_requests(&mut self, cx: &mut Context<'_>) {
        loop {
            let new =
                std::mem::take(&mut *self.handed.new.lock().expect("no panics holding the lock"));
            for request in new {
                // A panicking handler ends its own request (hyper resets the stream when the
                // future is dropped), not the connection and every request on it.
                self.running.push(Box::pin(
                    AssertUnwindSafe(request).catch_unwind().map(|_| ()),
                ));
            }
            match self.running.poll_next_unpin(cx) {
                Poll::Ready(Some(())) => {}
                Poll::Ready(None) | Poll::Pending => return,
            }
        }
    }
}

/// How many times one poll of a connection with HTTP/2 requests goes round the connection and
/// its requests. Each round moves up to [`HTTP2_MAX_SEND_BUF`] per download to the socket,
/// and over TLS the turn's writes leave corked, so a longer turn means fuller segments and
/// fewer wake-ups of the clients. Under 100 parallel 100 MiB downloads over TLS (`bench/serve.sh
/// 10 cost`), 2 rounds gave 0.91-0.98x nginx's MiB/s and ~92,000 wake-ups per 10,000 MiB, 4
/// rounds 1.04-1.07x and 71,000-82,000; 8 were no better than 4. The turn stays short: 4 x
/// 128 KiB per download.
const TURN_ROUNDS: usize = 4;

impl<C: Future> Future for Driven<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.handed.task.register(cx.waker());
        // The connection, its requests, and, while there are any, the connection again, up to
        // TURN_ROUNDS times: what the requests have just queued (a body's next chunk) is
        // written in this same turn instead of after a trip through the scheduler. An
        // HTTP/1.1 connection (no requests here) is polled once, as in a task of its own.
        for _ in 0..TURN_ROUNDS {
            if let Some(conn) = &mut this.conn {
                if let Some(cork) = &this.cork {
                    cork.arm(!this.running.is_empty());
                }
                if conn.as_mut().poll(cx).is_ready() {
                    this.conn = None;
                }
            }
            if this.running.is_empty() && this.handed.is_empty() {
                break;
            }
            this.poll_requests(cx);
        }
        if let Some(cork) = &this.cork {
            cork.end_turn();
        }
        if this.conn.is_none() {
            // The I/O has gone with the connection; close the socket now rather than when the
            // last request ends.
            this.cork = None;
        }
        if this.conn.is_none()
            && this.running.is_empty()
            && this
                .handed
                .new
                .lock()
                .expect("no panics holding the lock")
                .is_empty()
        {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

// `Driven` owns its futures boxed: moving it is fine.
impl<C> Unpin for Driven<C> {}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    fn short() -> Limits {
        Limits {
            shutdown_grace: Duration::from_secs(5),
            first_request: Duration::from_millis(300),
            handshake: Duration::from_millis(300),
        }
    }

    fn app() -> Router {
        Router::new()
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/panic",
                get(|| async {
                    if true {
                        panic!("a handler that panics (expected by this test)");
                    }
                    "unreachable"
                }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    "done"
                }),
            )
    }

    fn start(
        limits: Limits,
    ) -> (
        SocketAddr,
        Stop,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Stop::default();
        let task = tokio::spawn(serve(listener, None, app(), stop.clone(), limits));
        (addr, stop, task)
    }

    fn client(h2: bool) -> reqwest::Client {
        let builder = reqwest::Client::builder().no_proxy();
        let builder = if h2 {
            builder.http2_prior_knowledge()
        } else {
            builder
        };
        builder.build().unwrap()
    }

    /// One HTTP/1.1 response on `stream`, as text (head and body).
    async fn response(stream: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("a content-length")
                    .parse()
                    .unwrap();
                if got.len() >= end + 4 + length {
                    return text;
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_http2_connections_requests_run_beside_it_and_a_panic_ends_only_its_own() {
        let (addr, stop, task) = start(short());
        let client = client(true);
        let url = format!("http://{addr}/peer");
        let peers = futures_util::future::join_all((0..64).map(|_| async {
            let response = client.get(&url).send().await.unwrap();
            assert_eq!(response.version(), reqwest::Version::HTTP_2);
            response.text().await.unwrap()
        }))
        .await;
        // All on one connection, and each request knew who asked.
        assert!(peers.iter().all(|p| *p == peers[0]), "{peers:?}");
        assert!(peers[0].parse::<SocketAddr>().unwrap().port() != addr.port());

        let panicked = client.get(format!("http://{addr}/panic")).send().await;
        assert!(
            panicked.is_err() || panicked.as_ref().unwrap().status().is_server_error(),
            "{panicked:?}"
        );
        // The connection, and the requests on it, go on.
        let again = client.get(&url).send().await.unwrap().text().await.unwrap();
        assert_eq!(again, peers[0]);
        stop.stop();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_connection_without_a_request_is_closed_one_that_asked_is_kept() {
        let (addr, stop, task) = start(short());
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut talking = TcpStream::connect(addr).await.unwrap();
        let request = b"GET /peer HTTP/1.1\r\nHost: localhost\r\n\r\n";
        talking.write_all(request).await.unwrap();
        assert!(response(&mut talking).await.starts_with("HTTP/1.1 200"));

        let started = Instant::now();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
            .await
            .expect("the silent connection is closed within the deadline");
        assert_eq!(read.unwrap(), 0, "closed without an answer");
        assert!(started.elapsed() < Duration::from_secs(2));

        // Past the deadline, the connection that made a request still answers.
        tokio::time::sleep(Duration::from_millis(200)).await;
        talking.write_all(request).await.unwrap();
        assert!(response(&mut talking).await.starts_with("HTTP/1.1 200"));
        stop.stop();
        task.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_lets_requests_in_flight_finish_then_refuses_connections() {
        for h2 in [false, true] {
            let (addr, stop, task) = start(short());
            let client = client(h2);
            let slow = tokio::spawn(async move {
                let response = client.get(format!("http://{addr}/slow")).send().await?;
                response.text().await
            });
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.stop();
            assert_eq!(slow.await.unwrap().unwrap(), "done", "HTTP/2: {h2}");
            tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .expect("the server returns once the request is done")
                .unwrap()
                .unwrap();
            assert!(TcpStream::connect(addr).await.is_err());
        }
    }

    #[tokio::test]
    async fn a_stop_asked_for_before_the_start_ends_the_server_at_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stop = Stop::default();
        stop.stop();
        let served = tokio::time::timeout(
            Duration::from_secs(2),
            serve(listener, None, app(), stop, short()),
        )
        .await;
        served.expect("returned at once").unwrap();
    }

    /// What a connection writes while its HTTP/2 requests run is corked for the turn and sent
    /// when the turn ends, not 200 ms later when the kernel gives up holding it.
    #[tokio::test]
    async fn a_turn_sends_what_its_requests_had_written_before_it_ends() {
        let (mut io, cork, client) = super::super::cork::loopback_pair().await;
        let started = Instant::now();
        // A connection that writes a byte each time it is polled, with one request in flight
        // (a download that goes on).
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let conn = {
            let polls = Arc::clone(&polls);
            std::future::poll_fn(move |cx| {
                polls.fetch_add(1, Ordering::Relaxed);
                assert!(matches!(
                    Pin::new(&mut io).poll_write(cx, b"x"),
                    Poll::Ready(Ok(1))
                ));
                Poll::<()>::Pending
            })
        };
        let requests = Requests::default();
        hyper::rt::Executor::execute(&requests.spawner(), std::future::pending::<()>());
        let mut driven = requests.drive(conn, Some(cork));
        // One turn: the connection (no request running yet: not corked), the request taken
        // in, the connection again (corked) and so on, the end of the turn.
        assert!((&mut driven).now_or_never().is_none());
        let polls = polls.load(Ordering::Relaxed);
        assert!(
            polls > 1,
            "the connection is polled again once a request runs"
        );
        let cork = driven.cork.as_ref().expect("the connection goes on");
        assert_eq!(
            cork.corkings(),
            1,
            "the second write, not the first, corked the socket"
        );
        assert!(!cork.is_corked(), "the end of the turn clears TCP_CORK");
        let arrived = rustix::io::ioctl_fionread(&client).unwrap();
        if started.elapsed() < Duration::from_millis(100) {
            assert_eq!(arrived, polls as u64, "every byte left within the turn");
        }
    }
}
