//! The access log: one line per request, written when its response has been sent or the
//! client went away, with the body bytes that really left and the time the whole exchange
//! took (nginx's `$body_bytes_sent` and `$request_time`). A download cut short says so
//! (`complete=false`) instead of claiming the file's whole length. The line goes through
//! `tracing` under [`super::ACCESS_LOG`]; the binary gives that target a buffered writer on its
//! own thread, so no request waits for the log.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

/// The middleware: runs the request, then hands the response a body that logs its line when
/// hyper is done with it.
pub(super) async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| *addr);
    let response = next.run(req).await;
    let length = super::content_length(response.headers());
    let line = Line {
        start,
        peer,
        // A HEAD answer has a length but sends no body: nothing is owed.
        owed: if method == Method::HEAD {
            Some(0)
        } else {
            length
        },
        method,
        path,
        status: response.status().as_u16(),
        sent: 0,
        ended: false,
    };
    response.map(|inner| Body::new(Logged { inner, line }))
}

/// What the line says, filled in as the body goes out.
struct Line {
    start: Instant,
    peer: Option<SocketAddr>,
    method: Method,
    path: String,
    status: u16,
    /// The body's length when the response announced one.
    owed: Option<u64>,
    sent: u64,
    /// The body said it had no more.
    ended: bool,
}

impl Line {
    fn complete(&self) -> bool {
        self.ended || self.owed == Some(self.sent)
    }
}

/// A response body that counts what leaves and writes the access line when dropped.
struct Logged {
    inner: Body,
    line: Line,
}

impl http_body::Body for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    this.line.sent += data.len() as u64;
                }
            }
            None => this.line.ended = true,
            Some(Err(_)) => {}
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let line = &self.line;
        let complete = line.complete() || http_body::Body::is_end_stream(&self.inner);
        tracing::info!(
            target: super::ACCESS_LOG,
            peer = line.peer.map(tracing::field::display),
            method = %line.method,
            path = %line.path,
            status = line.status,
            bytes = line.sent,
            complete,
            duration_ms = %format_args!("{:.3}", line.start.elapsed().as_secs_f64() * 1000.0),
            "request"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::routing::get;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Every access line written while `f` runs, as `tracing`'s default formatter prints it.
    async fn lines_of<F: Future<Output = ()>>(f: F) -> Vec<String> {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let out = sink.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || out.clone()),
        );
        let _guard = tracing::subscriber::set_default(subscriber);
        f.await;
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .filter(|l| l.contains(super::super::ACCESS_LOG))
            .map(str::to_owned)
            .collect()
    }

    fn app() -> Router {
        Router::new()
            .route("/big", get(|| async { vec![7u8; 100_000] }))
            .layer(axum::middleware::from_fn(access_log))
    }

    fn request(method: Method, uri: &str) -> Request {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn a_sent_body_is_logged_whole_once_it_has_gone() {
        let lines = lines_of(async {
            let response = app().oneshot(request(Method::GET, "/big")).await.unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), 100_000);
        })
        .await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        let l = &lines[0];
        for field in [
            "method=GET",
            "path=/big",
            "status=200",
            "bytes=100000",
            "complete=true",
        ] {
            assert!(l.contains(field), "{field} in {l}");
        }
    }

    #[tokio::test]
    async fn nothing_is_logged_before_the_body_is_done_and_a_dropped_one_is_incomplete() {
        let lines = lines_of(async {
            let response = app().oneshot(request(Method::GET, "/big")).await.unwrap();
            // The head is out; the client goes away before the body.
            drop(response);
        })
        .await;
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("bytes=0"), "{}", lines[0]);
        assert!(lines[0].contains("complete=false"), "{}", lines[0]);
    }

    #[tokio::test]
    async fn head_and_not_found_are_complete_with_no_body_bytes() {
        let lines = lines_of(async {
            for (method, uri) in [(Method::HEAD, "/big"), (Method::GET, "/nope")] {
                let response = app().oneshot(request(method, uri)).await.unwrap();
                drop(response.into_body().collect().await.unwrap());
            }
        })
        .await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        for field in ["method=HEAD", "bytes=0 ", "complete=true"] {
            assert!(lines[0].contains(field), "{field} in {}", lines[0]);
        }
        assert!(lines[1].contains("status=404") && lines[1].contains("complete=true"));
    }
}
