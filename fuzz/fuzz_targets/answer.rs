//! The relay's answer-head parser and body reader on arbitrary bytes: no panic; the head
//! the relay writes to the client frames the body the same way; and the body decoded (and
//! relayed) does not depend on how the bytes were split into reads.
//!
//! Input: byte 0 = flags (bit 0: answer to a HEAD, bit 1: the client asked to close,
//! bits 2..: how big the reads are), byte 1 = seed of the read sizes, then the answer.
#![no_main]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use wa_breaker::h1::body::{BodyReader, Decoder};
use wa_breaker::h1::response::parse_response;
use wa_breaker::h1::{Framing, MAX_HEAD};

/// An upstream that delivers its bytes in fixed pieces, never pending.
struct Pieces {
    pieces: Vec<Vec<u8>>,
    at: usize,
    off: usize,
}

impl AsyncRead for Pieces {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.at < this.pieces.len() && this.off == this.pieces[this.at].len() {
            this.at += 1;
            this.off = 0;
        }
        if let Some(p) = this.pieces.get(this.at) {
            let n = buf.remaining().min(p.len() - this.off);
            buf.put_slice(&p[this.off..this.off + n]);
            this.off += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// Runs a future over [`Pieces`] (which is never pending) to its end.
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("pending on an in-memory upstream"),
    }
}

/// Cuts `bytes` into pieces whose sizes come from `seed`.
fn split(bytes: &[u8], flags: u8, seed: u8) -> Vec<Vec<u8>> {
    let max = [1usize, 2, 3, 7, 64, 1024, 16 * 1024, usize::MAX][(flags >> 2) as usize % 8];
    let mut state = u32::from(seed).wrapping_mul(2654435761) | 1;
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = 1 + (state as usize % max.min(bytes.len() - at));
        out.push(bytes[at..at + n].to_vec());
        at += n;
    }
    out
}

/// The decoder fed `pieces` one after the other, the unconsumed rest kept as the reader
/// keeps it: (result, consumed, de-chunked data, done).
fn decode_pieces(framing: Framing, pieces: &[Vec<u8>]) -> (bool, usize, Vec<u8>, bool) {
    let mut d = Decoder::new(framing);
    let mut data = Vec::new();
    let mut buf = Vec::new();
    let mut consumed = 0;
    for p in pieces {
        buf.extend_from_slice(p);
        match d.decode(&buf, Some(&mut data)) {
            Ok(n) => {
                consumed += n;
                buf.drain(..n);
            }
            Err(_) => return (false, consumed, data, d.is_done()),
        }
    }
    let eof = d.eof().is_ok();
    (eof, consumed, data, d.is_done())
}

fuzz_target!(|data: &[u8]| {
    let [flags, seed, input @ ..] = data else {
        return;
    };
    let (head_request, close_client) = (flags & 1 == 1, flags & 2 == 2);
    let mut client = Vec::new();
    let head = match parse_response(input, head_request, close_client, &mut client) {
        Ok(None) => {
            assert!(input.len() <= MAX_HEAD);
            return;
        }
        Err(_) => return,
        Ok(Some(h)) => h,
    };
    assert!(head.head_len <= input.len());
    assert!((200..=599).contains(&head.status));
    if head_request || head.status == 204 || head.status == 304 {
        assert_eq!(head.framing, Framing::Empty);
    }
    let _ = head.content_encoding(input).count();

    // The head written to the client frames the body as the relay relays it.
    let mut again = Vec::new();
    match parse_response(&client, head_request, false, &mut again) {
        Ok(Some(h)) => {
            assert_eq!((h.status, h.framing), (head.status, head.framing));
            assert_eq!(h.head_len, client.len());
        }
        other => panic!("client head re-parses as {other:?}"),
    }

    // Decoded at once or in pieces: the same verdict, bytes and data.
    let body = &input[head.head_len..];
    let whole = decode_pieces(head.framing, &[body.to_vec()]);
    let pieces = split(body, *flags, *seed);
    let cut = decode_pieces(head.framing, &pieces);
    assert_eq!(whole.0, cut.0, "verdict depends on the split");
    if whole.0 {
        assert_eq!(whole, cut, "decoding depends on the split");
    }

    // The reader relays the framed bytes as they came, whatever the reads.
    let first = pieces.first().cloned().unwrap_or_default();
    let mut buf = input[..head.head_len].to_vec();
    buf.extend_from_slice(&first);
    let mut upstream = Pieces {
        pieces: pieces.iter().skip(1).cloned().collect(),
        at: 0,
        off: 0,
    };
    let mut reader = BodyReader::new(head.framing, buf.clone(), head.head_len);
    let relayed = block_on(async {
        let mut out = Vec::new();
        while let Some(p) = reader.next(&mut upstream).await? {
            out.extend_from_slice(p);
        }
        Ok::<_, io::Error>(out)
    });
    match relayed {
        Ok(out) => {
            assert!(whole.0, "the reader accepted what the decoder refused");
            assert_eq!(out, &body[..whole.1]);
            // Reusable only after a body that ended by its framing (bytes past its end may
            // not have been read yet, so the converse is not checked).
            assert!(!reader.reusable() || head.framing != Framing::Close);
        }
        Err(_) => assert!(!whole.0, "the reader refused what the decoder accepted"),
    }

    // Buffered for the classifier: the de-chunked data, and the raw bytes kept.
    let mut upstream = Pieces {
        pieces: pieces.iter().skip(1).cloned().collect(),
        at: 0,
        off: 0,
    };
    let mut reader = BodyReader::new(head.framing, buf, head.head_len);
    let mut judged = Vec::new();
    if let Ok(true) = block_on(reader.buffer(&mut upstream, 64 * 1024, &mut judged)) {
        assert!(whole.0);
        assert_eq!(reader.framed(), &body[..whole.1]);
        if head.framing == Framing::Chunked {
            assert_eq!(judged, whole.2);
        }
    }
});
