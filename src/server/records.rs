//! HTTP/2 DATA frames cut to fill TLS records exactly.
//!
//! A TLS record carries at most 16 KiB of plaintext. hyper's HTTP/2 sends each chunk of a
//! response body as DATA frames of up to the client's maximum frame size, 16 KiB by default,
//! and a frame's 9-byte header makes 16,393 bytes: one full record and a 9-byte one, for
//! every frame. The client then decrypts and handles twice the records. nginx cuts its frames
//! so that header and payload make exactly one record; [`TlsRecordFrames`] does the same by
//! handing hyper every response body's chunks on an HTTP/2 connection over TLS in slices of
//! [`FRAME_PAYLOAD`] bytes (no copy: the slices share the chunk's buffer); `listen` wraps them.
//!
//! A 64 KiB read still ends in a 36-byte frame, a short record every fifth. Reads of four
//! whole frames (65,500 bytes) were tried: one 1 GiB download took 5 % less server CPU, but
//! 100 parallel ones took 10 % more and ran 4 % slower (this machine's TCP is BBR, which
//! paced those connections' segments more), and `bench/serve.sh` showed no gain overall.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Plaintext of a full TLS record (RFC 8446 §5.1) less an HTTP/2 frame header (RFC 9113 §4.1).
pub(super) const FRAME_PAYLOAD: usize = (16 << 10) - 9;

/// A body whose data comes out in slices of at most [`FRAME_PAYLOAD`] bytes.
pub(super) struct TlsRecordFrames<B> {
    inner: B,
    /// What is left of the last chunk, handed out before the next is read.
    rest: Bytes,
}

impl<B> TlsRecordFrames<B> {
    pub(super) fn new(inner: B) -> Self {
        TlsRecordFrames {
            inner,
            rest: Bytes::new(),
        }
    }
}

impl<B> Body for TlsRecordFrames<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if this.rest.is_empty() {
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.rest = data,
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                other => return Poll::Ready(other),
            }
        }
        let n = this.rest.len().min(FRAME_PAYLOAD);
        Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let rest = self.rest.len() as u64;
        // Upper first: `SizeHint` panics the moment lower would exceed upper.
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint.set_lower(inner.lower().saturating_add(rest));
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt as _, Full, StreamBody};

    #[tokio::test]
    async fn slices_fit_a_record_and_keep_every_byte_in_order() {
        let chunks: Vec<Bytes> = [40_000usize, 5, FRAME_PAYLOAD, FRAME_PAYLOAD + 1, 0, 70_000]
            .iter()
            .enumerate()
            .map(|(i, &n)| Bytes::from((0..n).map(|j| (i * 31 + j) as u8).collect::<Vec<_>>()))
            .collect();
        let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(c))),
        );
        let mut body = TlsRecordFrames::new(StreamBody::new(stream));
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            sizes.push(data.len());
            got.extend_from_slice(&data);
        }
        assert_eq!(got, whole);
        assert!(sizes.iter().all(|&n| n <= FRAME_PAYLOAD), "{sizes:?}");
        // 40,000 = 2 full + 7,250; 5; one full; one full + 1; an empty chunk passes; 70,000 =
        // 4 full + 4,500.
        assert_eq!(sizes.len(), 3 + 1 + 1 + 2 + 1 + 5, "{sizes:?}");
    }

    #[tokio::test]
    async fn the_size_hint_counts_what_is_held_back() {
        let mut body = TlsRecordFrames::new(Full::new(Bytes::from(vec![7u8; 50_000])));
        assert_eq!(body.size_hint().exact(), Some(50_000));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), FRAME_PAYLOAD);
        assert_eq!(
            body.size_hint().exact(),
            Some(50_000 - FRAME_PAYLOAD as u64)
        );
        assert!(!body.is_end_stream());
    }
}
