//! Bounds on a multipart body before the multipart parser sees it: the parser (multer) buffers a
//! part's headers until their end, however long (a 400 MB header was held in memory, then
//! stored), and takes any number of parts. A guard reads the raw body as it streams by, counts
//! the parts and the bytes of each part's headers, and stops the body at the first part too
//! many or header too long: the request is then answered 413 or 400 without reading the rest.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use futures_util::Stream;
use memchr::memmem::Finder;

/// Most bytes a part's headers may take (names, types, a file name).
pub(crate) const MAX_PART_HEADERS: usize = 8 << 10;

/// Most parts a request may have.
pub(crate) const MAX_PARTS: usize = 16;

/// What the guard stopped a body for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Violation {
    /// More than [`MAX_PARTS`] parts.
    TooManyParts,
    /// A part's headers longer than [`MAX_PART_HEADERS`].
    HeadersTooLong,
}

/// Where the scanner is in the body.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// In the preamble or a part's content: looking for the next delimiter.
    Content,
    /// Just after a delimiter: the next two bytes say whether it closed the body (`--`).
    AfterDelimiter(Vec<u8>),
    /// In a part's headers: looking for the empty line that ends them.
    Headers,
    /// After the closing delimiter: nothing more to check.
    Done,
}

/// The scanner: fed every chunk of the body in order.
#[derive(Debug)]
pub(crate) struct PartGuard {
    /// `\r\n--<boundary>`: a delimiter, as it appears after the preamble or a part.
    delimiter: Vec<u8>,
    finder: Finder<'static>,
    /// The last bytes seen, for a delimiter or a header end split across chunks.
    carry: Vec<u8>,
    state: State,
    parts: usize,
    header_bytes: usize,
}

impl PartGuard {
    pub(crate) fn new(boundary: &str) -> Self {
        let delimiter = format!("\r\n--{boundary}").into_bytes();
        Self {
            finder: Finder::new(&delimiter).into_owned(),
            delimiter,
            // A delimiter may open the body without a CRLF before it.
            carry: b"\r\n".to_vec(),
            state: State::Content,
            parts: 0,
            header_bytes: 0,
        }
    }

    /// Checks the next chunk of the body.
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Violation> {
        while !chunk.is_empty() {
            match &mut self.state {
                State::Done => return Ok(()),
                State::Content => match self.find(chunk, self.delimiter.len()) {
                    Some(end) => {
                        chunk = &chunk[end..];
                        self.state = State::AfterDelimiter(Vec::new());
                    }
                    None => return Ok(()),
                },
                State::AfterDelimiter(seen) => {
                    let take = (2 - seen.len()).min(chunk.len());
                    seen.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if seen.len() == 2 {
                        if seen == b"--" {
                            self.state = State::Done;
                        } else {
                            self.parts += 1;
                            if self.parts > MAX_PARTS {
                                return Err(Violation::TooManyParts);
                            }
                            self.header_bytes = 2;
                            self.carry = seen.clone();
                            self.state = State::Headers;
                        }
                    }
                }
                State::Headers => {
                    let found = Finder::new(b"\r\n\r\n");
                    let end = self.find_with(&found, chunk, 4);
                    let used = end.unwrap_or(chunk.len());
                    self.header_bytes += used;
                    if self.header_bytes > MAX_PART_HEADERS {
                        return Err(Violation::HeadersTooLong);
                    }
                    match end {
                        Some(end) => {
                            chunk = &chunk[end..];
                            // The content starts here; a delimiter needs its own CRLF.
                            self.carry = Vec::new();
                            self.state = State::Content;
                        }
                        None => return Ok(()),
                    }
                }
            }
        }
        Ok(())
    }

    /// The end, in `chunk`, of the first delimiter, whether it starts in the carried bytes or
    /// in `chunk`; keeps the carry up to date.
    fn find(&mut self, chunk: &[u8], len: usize) -> Option<usize> {
        let finder = self.finder.clone();
        self.find_with(&finder, chunk, len)
    }

    fn find_with(&mut self, finder: &Finder<'_>, chunk: &[u8], len: usize) -> Option<usize> {
        // A match that starts in the carry and ends in the chunk.
        let mut joined = std::mem::take(&mut self.carry);
        let carried = joined.len();
        joined.extend_from_slice(&chunk[..chunk.len().min(len)]);
        if let Some(i) = finder.find(&joined).filter(|&i| i < carried) {
            return Some(i + len - carried);
        }
        if let Some(i) = finder.find(chunk) {
            return Some(i + len);
        }
        // No match: keep the bytes a match could start in.
        let keep = len - 1;
        self.carry = if chunk.len() >= keep {
            chunk[chunk.len() - keep..].to_vec()
        } else {
            let all = &joined[..carried.min(joined.len())];
            let mut tail: Vec<u8> = all.to_vec();
            tail.extend_from_slice(chunk);
            tail[tail.len().saturating_sub(keep)..].to_vec()
        };
        None
    }
}

/// A body stream that runs every chunk through a [`PartGuard`] and ends with an error at the
/// first violation, which it also leaves in `seen` for the answer.
struct Guarded<S> {
    inner: S,
    guard: PartGuard,
    seen: Arc<Mutex<Option<Violation>>>,
    stopped: bool,
}

impl<S> Stream for Guarded<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.stopped {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => match self.guard.feed(&chunk) {
                Ok(()) => Poll::Ready(Some(Ok(chunk))),
                Err(v) => {
                    self.stopped = true;
                    *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(v);
                    Poll::Ready(Some(Err(axum::Error::new(std::io::Error::other(
                        "multipart limits exceeded",
                    )))))
                }
            },
            other => other,
        }
    }
}

impl From<Violation> for crate::server::error::RequestError {
    fn from(v: Violation) -> Self {
        match v {
            Violation::TooManyParts => Self::TooManyParts { max: MAX_PARTS },
            Violation::HeadersTooLong => Self::PartHeadersTooLong {
                max: MAX_PART_HEADERS,
            },
        }
    }
}

/// The answer to a request whose multipart body was read through [`guard`]: a violation the
/// guard saw explains whatever error the parser or a part's reader then reported.
pub(crate) fn explain<T>(
    result: Result<T, crate::server::error::RequestError>,
    seen: &Mutex<Option<Violation>>,
) -> Result<T, crate::server::error::RequestError> {
    match (result, *seen.lock().unwrap_or_else(|e| e.into_inner())) {
        (Err(_), Some(v)) => Err(v.into()),
        (result, _) => result,
    }
}

/// `req` with its body guarded when it is multipart (its boundary known), and where a
/// violation will be noted.
pub(crate) fn guard(req: Request) -> (Request, Arc<Mutex<Option<Violation>>>) {
    let seen = Arc::new(Mutex::new(None));
    let boundary = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok());
    let Some(boundary) = boundary else {
        return (req, seen);
    };
    let (parts, body) = req.into_parts();
    let guarded = Guarded {
        inner: body.into_data_stream(),
        guard: PartGuard::new(&boundary),
        seen: Arc::clone(&seen),
        stopped: false,
    };
    (Request::from_parts(parts, Body::from_stream(guarded)), seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (headers, content) in parts {
            b.extend_from_slice(format!("--XB\r\n{headers}\r\n\r\n{content}\r\n").as_bytes());
        }
        b.extend_from_slice(b"--XB--\r\nepilogue");
        b
    }

    fn feed_in(bytes: &[u8], size: usize) -> Result<usize, Violation> {
        let mut g = PartGuard::new("XB");
        for chunk in bytes.chunks(size) {
            g.feed(chunk)?;
        }
        Ok(g.parts)
    }

    #[test]
    fn counts_parts_whatever_the_chunking() {
        let b = body(&[
            (
                "Content-Disposition: form-data; name=\"a\"",
                "one\r\n--X not it",
            ),
            (
                "Content-Disposition: form-data; name=\"f\"; filename=\"x\"",
                "two",
            ),
        ]);
        for size in [1, 2, 3, 5, 7, 64, 4096] {
            assert_eq!(feed_in(&b, size), Ok(2), "chunks of {size}");
        }
    }

    #[test]
    fn stops_long_headers_and_too_many_parts() {
        let long = format!("X-Pad: {}", "a".repeat(MAX_PART_HEADERS));
        let b = body(&[(&long, "x")]);
        for size in [1, 100, 1 << 20] {
            assert_eq!(feed_in(&b, size), Err(Violation::HeadersTooLong), "{size}");
        }
        let many: Vec<(&str, &str)> = (0..=MAX_PARTS).map(|_| ("H: v", "x")).collect();
        assert_eq!(feed_in(&body(&many), 4096), Err(Violation::TooManyParts));
        let enough: Vec<(&str, &str)> = (0..MAX_PARTS).map(|_| ("H: v", "x")).collect();
        assert_eq!(feed_in(&body(&enough), 4096), Ok(MAX_PARTS));
    }

    #[test]
    fn a_large_content_is_not_headers() {
        let content = "c".repeat(10 * MAX_PART_HEADERS);
        let b = body(&[("H: v", &content)]);
        assert_eq!(feed_in(&b, 1000), Ok(1));
    }
}
