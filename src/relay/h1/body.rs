//! An answer's body as it arrives: a framing decoder ([`Decoder`], pure) and a reader that
//! owns the connection's read buffer ([`BodyReader`]) so a chunk-size line or a trailer split
//! across reads is kept, not lost, and bytes read past the body's end are noticed (the
//! connection is then not reused). Chunked bytes are relayed as they came; only the
//! classifier's copy is de-chunked.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{BadResponse, Framing};

/// Longest chunk-size line, extensions included.
pub const MAX_CHUNK_HEAD: usize = 4 * 1024;
/// The trailer section (all trailer lines and the final blank line) is shorter than this.
pub const MAX_TRAILERS: usize = 16 * 1024;
/// Most trailer lines.
pub const MAX_TRAILER_LINES: usize = 100;
/// The chunk extensions of one body (the bytes after each `;`) are shorter than this.
pub const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;
/// Read size when more of a body is needed.
const READ_CHUNK: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; bytes and lines seen so far.
    Trailer(usize, usize),
}

/// The framing state of one body: consumes whole framing units (a chunk-size line, a
/// trailer line, the CRLF after data) and data bytes as they come.
#[derive(Debug)]
pub struct Decoder {
    framing: Framing,
    /// Body bytes left (`Length`).
    left: u64,
    chunk: Chunk,
    /// Chunk-extension bytes seen so far.
    extensions: usize,
    done: bool,
}

impl Decoder {
    /// A decoder for a body framed by `framing`.
    pub fn new(framing: Framing) -> Decoder {
        Decoder {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunk: Chunk::Size,
            extensions: 0,
            done: matches!(framing, Framing::Empty | Framing::Length(0)),
        }
    }

    /// The body is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Consumes what it can of `input` and returns how many bytes; the rest (a partial
    /// line) must be offered again with more bytes after it. Chunk data is appended to
    /// `data` when given (the other framings' bytes are their data).
    pub fn decode(
        &mut self,
        input: &[u8],
        mut data: Option<&mut Vec<u8>>,
    ) -> Result<usize, BadResponse> {
        match self.framing {
            _ if self.done => Ok(0),
            Framing::Empty => Ok(0),
            Framing::Close => Ok(input.len()),
            Framing::Length(_) => {
                let n = self.left.min(input.len() as u64);
                self.left -= n;
                self.done = self.left == 0;
                Ok(n as usize)
            }
            Framing::Chunked => {
                let mut at = 0;
                loop {
                    if self.done {
                        return Ok(at);
                    }
                    let rest = &input[at..];
                    match self.chunk {
                        Chunk::Size => match httparse::parse_chunk_size(rest) {
                            Ok(httparse::Status::Complete((n, _))) if n > MAX_CHUNK_HEAD => {
                                return Err(BadResponse::Chunked("chunk-size line too long"))
                            }
                            Ok(httparse::Status::Complete((n, size))) => {
                                self.size_line(&rest[..n - 2])?;
                                at += n;
                                self.chunk = if size == 0 {
                                    Chunk::Trailer(0, 0)
                                } else {
                                    Chunk::Data(size)
                                };
                            }
                            Ok(httparse::Status::Partial) if rest.len() > MAX_CHUNK_HEAD => {
                                return Err(BadResponse::Chunked("chunk-size line too long"))
                            }
                            Ok(httparse::Status::Partial) => return Ok(at),
                            Err(_) => return Err(BadResponse::Chunked("bad chunk-size line")),
                        },
                        Chunk::Data(left) => {
                            if rest.is_empty() {
                                return Ok(at);
                            }
                            let take = left.min(rest.len() as u64) as usize;
                            if let Some(d) = data.as_deref_mut() {
                                d.extend_from_slice(&rest[..take]);
                            }
                            at += take;
                            self.chunk = if take as u64 == left {
                                Chunk::DataEnd
                            } else {
                                Chunk::Data(left - take as u64)
                            };
                        }
                        Chunk::DataEnd => {
                            if rest.len() < 2 {
                                if rest.first().is_some_and(|b| *b != b'\r') {
                                    return Err(BadResponse::Chunked(
                                        "chunk data overruns its size",
                                    ));
                                }
                                return Ok(at);
                            }
                            if &rest[..2] != b"\r\n" {
                                return Err(BadResponse::Chunked("chunk data overruns its size"));
                            }
                            at += 2;
                            self.chunk = Chunk::Size;
                        }
                        Chunk::Trailer(seen, lines) => {
                            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                                if seen + rest.len() >= MAX_TRAILERS {
                                    return Err(BadResponse::Chunked("trailers too long"));
                                }
                                return Ok(at);
                            };
                            if seen + eol + 2 >= MAX_TRAILERS {
                                return Err(BadResponse::Chunked("trailers too long"));
                            }
                            if eol == 0 {
                                at += 2;
                                self.done = true;
                                continue;
                            }
                            if lines == MAX_TRAILER_LINES {
                                return Err(BadResponse::Chunked("too many trailer lines"));
                            }
                            if !trailer_line(&rest[..eol]) {
                                return Err(BadResponse::Chunked("malformed trailer line"));
                            }
                            at += eol + 2;
                            self.chunk = Chunk::Trailer(seen + eol + 2, lines + 1);
                        }
                    }
                }
            }
        }
    }

    /// Checks a whole chunk-size line (without its CRLF) beyond what httparse does, so that
    /// the relay never passes on a chunked body its client's parser could frame otherwise
    /// (hyper's rules): a size digit first (httparse reads an empty size as 0, the last
    /// chunk), no bare LF in an extension, and a bounded total of extension bytes.
    fn size_line(&mut self, line: &[u8]) -> Result<(), BadResponse> {
        if !line.first().is_some_and(u8::is_ascii_hexdigit) || line.contains(&b'\n') {
            return Err(BadResponse::Chunked("bad chunk-size line"));
        }
        if let Some(semi) = line.iter().position(|b| *b == b';') {
            self.extensions += line.len() - semi - 1;
            if self.extensions >= MAX_CHUNK_EXTENSIONS {
                return Err(BadResponse::Chunked("chunk extensions too long"));
            }
        }
        Ok(())
    }

    /// The connection ended: that ends a body framed by the close, and breaks any other.
    pub fn eof(&mut self) -> Result<(), BadResponse> {
        if self.framing == Framing::Close {
            self.done = true;
        }
        if self.done {
            Ok(())
        } else {
            Err(BadResponse::Truncated)
        }
    }
}

/// A trailer line (without its CRLF) is one header field, `name: value`, as hyper reads
/// trailers: a token name right before the colon, no CR or LF (a bare LF would make two
/// lines of one), no control characters but HTAB in the value, no obs-fold.
fn trailer_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return false;
    };
    http::HeaderName::from_bytes(&line[..colon]).is_ok()
        && line[colon + 1..]
            .iter()
            .all(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f))
}

/// An answer body being read from the upstream connection, in the buffer the head was read
/// into (which the reader owns from then on and gives back with [`BodyReader::into_buffer`]).
#[derive(Debug)]
pub struct BodyReader {
    decoder: Decoder,
    buf: Vec<u8>,
    /// First byte not yet handed out.
    start: usize,
    /// End of the bytes the decoder has consumed (framed body bytes, ready to hand out).
    framed: usize,
    /// Where the body started in `buf`, until the buffer is first compacted.
    head: Option<usize>,
}

fn to_io(e: BadResponse) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl BodyReader {
    /// Takes `buf`, whose body starts at `body_start` (the head before it is done with).
    pub fn new(framing: Framing, buf: Vec<u8>, body_start: usize) -> BodyReader {
        BodyReader {
            decoder: Decoder::new(framing),
            buf,
            start: body_start,
            framed: body_start,
            head: Some(body_start),
        }
    }

    /// The bytes before the body (the answer's head), until [`BodyReader::next`] first
    /// needs to read more and drops them.
    pub fn head(&self) -> &[u8] {
        &self.buf[..self.head.unwrap_or(0)]
    }

    /// True for a chunked body (its data then differs from its bytes).
    pub fn chunked(&self) -> bool {
        self.decoder.framing == Framing::Chunked
    }

    /// Reads the whole body into the buffer, to judge it before relaying it: `Ok(true)` when
    /// complete within `limit` bytes of data (de-chunked into `data` for a chunked body;
    /// see [`BodyReader::framed`] for the others), `Ok(false)` when it is larger — it is
    /// then relayed unjudged, from what was read.
    pub async fn buffer<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        limit: usize,
        data: &mut Vec<u8>,
    ) -> io::Result<bool> {
        data.clear();
        loop {
            let chunked = self.chunked();
            let n = self
                .decoder
                .decode(&self.buf[self.framed..], chunked.then_some(&mut *data))
                .map_err(to_io)?;
            self.framed += n;
            let size = if chunked {
                data.len()
            } else {
                self.framed - self.start
            };
            if size > limit || self.framed - self.start > 2 * limit {
                return Ok(false);
            }
            if self.decoder.is_done() {
                return Ok(true);
            }
            if !self.fill(io).await? {
                self.decoder.eof().map_err(to_io)?;
                return Ok(true);
            }
        }
    }

    /// The framed bytes not yet handed out (after [`BodyReader::buffer`]: the whole body as
    /// it came).
    pub fn framed(&self) -> &[u8] {
        &self.buf[self.start..self.framed]
    }

    /// The next piece of the body's bytes (as they came, framing included), reading more
    /// from `io` when needed; `None` at the end.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> io::Result<Option<&[u8]>> {
        loop {
            if self.start == self.framed && !self.decoder.is_done() {
                let n = self
                    .decoder
                    .decode(&self.buf[self.framed..], None)
                    .map_err(to_io)?;
                self.framed += n;
            }
            if self.start < self.framed {
                let piece = self.start..self.framed;
                self.start = self.framed;
                return Ok(Some(&self.buf[piece]));
            }
            if self.decoder.is_done() {
                return Ok(None);
            }
            // Everything framed was handed out: keep the partial rest, read more after it.
            self.buf.drain(..self.start);
            self.framed -= self.start;
            self.start = 0;
            self.head = None;
            if !self.fill(io).await? {
                self.decoder.eof().map_err(to_io)?;
            }
        }
    }

    /// Reads more into the buffer; false at end of stream.
    async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> io::Result<bool> {
        self.buf.reserve(READ_CHUNK);
        Ok(io.read_buf(&mut self.buf).await? > 0)
    }

    /// The body ended cleanly, by its framing, with nothing read past its end: the
    /// connection can carry another exchange.
    pub fn reusable(&self) -> bool {
        self.decoder.is_done()
            && self.decoder.framing != Framing::Close
            && self.framed == self.buf.len()
    }

    /// Gives the buffer back (cleared), for the connection's next exchange.
    pub fn into_buffer(mut self) -> Vec<u8> {
        self.buf.clear();
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const CHUNKED: &[u8] = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n";

    #[test]
    fn decoder_in_every_split() {
        for split in 0..=CHUNKED.len() {
            let mut d = Decoder::new(Framing::Chunked);
            let mut data = Vec::new();
            let mut buf = CHUNKED[..split].to_vec();
            let n = d.decode(&buf, Some(&mut data)).unwrap();
            buf.drain(..n);
            buf.extend_from_slice(&CHUNKED[split..]);
            let n = d.decode(&buf, Some(&mut data)).unwrap();
            assert_eq!(n, buf.len(), "split {split}");
            assert!(d.is_done());
            assert_eq!(data, b"hello world");
        }
    }

    #[test]
    fn decoder_rejects_broken_chunking() {
        for bad in [
            &b"3\r\nabcdef"[..],
            b"zz\r\n",
            b"3\r\nabc\n",
            b"-1\r\n",
            b"fffffffffffffffffffff\r\n",
        ] {
            let mut d = Decoder::new(Framing::Chunked);
            assert!(d.decode(bad, None).is_err(), "{bad:?}");
        }
        for bad in [
            &b"\r\n\r\n"[..],
            b";x\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"0\r\nX: a\rb\r\n\r\n",
            b"0\r\nX: a\nY: b\r\n\r\n",
            b"0\r\nno colon\r\n\r\n",
            b"0\r\nX : a\r\n\r\n",
            b"0\r\n folded\r\n\r\n",
            b"0\r\nX: a\x01\r\n\r\n",
        ] {
            let mut d = Decoder::new(Framing::Chunked);
            assert!(
                d.decode(bad, None).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // Extensions: bounded per line and per body.
        let ext = format!("1;{}\r\nx\r\n", "e".repeat(1000));
        let mut d = Decoder::new(Framing::Chunked);
        let mut total = 0;
        let err = loop {
            match d.decode(ext.as_bytes(), None) {
                Ok(n) => total += n,
                Err(e) => break e,
            }
        };
        assert_eq!(err, BadResponse::Chunked("chunk extensions too long"));
        assert_eq!(total, 16 * ext.len());
        let many: String = (0..MAX_TRAILER_LINES)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect();
        let ok = format!("0\r\n{many}\r\n");
        let mut d = Decoder::new(Framing::Chunked);
        assert_eq!(d.decode(ok.as_bytes(), None), Ok(ok.len()));
        assert!(d.is_done());
        let over = format!("0\r\n{many}X: 1\r\n\r\n");
        assert_eq!(
            Decoder::new(Framing::Chunked).decode(over.as_bytes(), None),
            Err(BadResponse::Chunked("too many trailer lines"))
        );
        let long_ext = format!("5;{}\r\n", "e".repeat(MAX_CHUNK_HEAD));
        assert_eq!(
            Decoder::new(Framing::Chunked).decode(long_ext.as_bytes(), None),
            Err(BadResponse::Chunked("chunk-size line too long"))
        );
        let long_trailer = format!("0\r\nX: {}", "t".repeat(MAX_TRAILERS));
        assert_eq!(
            Decoder::new(Framing::Chunked).decode(long_trailer.as_bytes(), None),
            Err(BadResponse::Chunked("trailers too long"))
        );
        let many: String = (0..2000).map(|i| format!("X-{i}: 1\r\n")).collect();
        let many = format!("0\r\n{many}\r\n");
        assert!(Decoder::new(Framing::Chunked)
            .decode(many.as_bytes(), None)
            .is_err());
        let mut d = Decoder::new(Framing::Chunked);
        d.decode(b"5\r\nhel", None).unwrap();
        assert_eq!(d.eof(), Err(BadResponse::Truncated));
        let mut d = Decoder::new(Framing::Close);
        assert_eq!(d.decode(b"abc", None), Ok(3));
        assert_eq!(d.eof(), Ok(()));
    }

    /// What the relay writes to the client for `answer` (everything after the head), when
    /// the upstream sends it in two pieces split at `split` (or byte by byte).
    async fn relayed(framing: Framing, answer: &[u8], split: Option<usize>) -> (Vec<u8>, bool) {
        let (mut up, mut conn) = tokio::io::duplex(64);
        let answer = answer.to_vec();
        let writer = tokio::spawn(async move {
            let pieces: Vec<Vec<u8>> = match split {
                Some(s) => vec![answer[..s].to_vec(), answer[s..].to_vec()],
                None => answer.iter().map(|b| vec![*b]).collect(),
            };
            for p in pieces {
                up.write_all(&p).await.unwrap();
                up.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            up
        });
        let mut reader = BodyReader::new(framing, Vec::new(), 0);
        let mut out = Vec::new();
        while let Some(piece) = reader.next(&mut conn).await.unwrap() {
            out.extend_from_slice(piece);
        }
        let _up = writer.await.unwrap();
        (out, reader.reusable())
    }

    #[tokio::test]
    async fn every_split_of_a_chunked_body_is_relayed_whole() {
        for split in 0..=CHUNKED.len() {
            let (out, reuse) = relayed(Framing::Chunked, CHUNKED, Some(split)).await;
            assert_eq!(out, CHUNKED, "split {split}");
            assert!(reuse, "split {split}");
        }
        let (out, reuse) = relayed(Framing::Chunked, CHUNKED, None).await;
        assert_eq!((out.as_slice(), reuse), (CHUNKED, true));
    }

    #[tokio::test]
    async fn every_split_of_a_length_body_is_relayed_whole() {
        let body = b"{\"messages\":[{\"id\":\"wamid.1\"}]}";
        for split in 0..=body.len() {
            let (out, reuse) = relayed(Framing::Length(body.len() as u64), body, Some(split)).await;
            assert_eq!((out.as_slice(), reuse), (&body[..], true), "split {split}");
        }
    }

    #[tokio::test]
    async fn bytes_past_the_end_make_the_connection_unusable() {
        let (mut up, mut conn) = tokio::io::duplex(1024);
        up.write_all(b"0\r\n\r\nHTTP/1.1 200 OK\r\n").await.unwrap();
        let mut reader = BodyReader::new(Framing::Chunked, Vec::new(), 0);
        let mut out = Vec::new();
        while let Some(p) = reader.next(&mut conn).await.unwrap() {
            out.extend_from_slice(p);
        }
        assert_eq!(out, b"0\r\n\r\n");
        assert!(!reader.reusable());
    }

    #[tokio::test]
    async fn buffering_for_the_classifier_keeps_the_raw_bytes() {
        for split in 0..=CHUNKED.len() {
            let (mut up, mut conn) = tokio::io::duplex(1024);
            up.write_all(&CHUNKED[split..]).await.unwrap();
            drop(up);
            let mut reader = BodyReader::new(Framing::Chunked, CHUNKED[..split].to_vec(), 0);
            let mut data = Vec::new();
            assert!(reader.buffer(&mut conn, 1024, &mut data).await.unwrap());
            assert_eq!(data, b"hello world");
            assert_eq!(reader.framed(), CHUNKED);
            let mut out = Vec::new();
            while let Some(p) = reader.next(&mut conn).await.unwrap() {
                out.extend_from_slice(p);
            }
            assert_eq!(out, CHUNKED);
            assert!(reader.reusable());
        }
        // Over the limit: not judged, still relayed whole.
        let (mut up, mut conn) = tokio::io::duplex(1024);
        up.write_all(CHUNKED).await.unwrap();
        drop(up);
        let mut reader = BodyReader::new(Framing::Chunked, Vec::new(), 0);
        let mut data = Vec::new();
        assert!(!reader.buffer(&mut conn, 4, &mut data).await.unwrap());
        let mut out = Vec::new();
        while let Some(p) = reader.next(&mut conn).await.unwrap() {
            out.extend_from_slice(p);
        }
        assert_eq!(out, CHUNKED);
        // Truncated: an error.
        let (mut up, mut conn) = tokio::io::duplex(1024);
        up.write_all(b"5\r\nhel").await.unwrap();
        drop(up);
        let mut reader = BodyReader::new(Framing::Chunked, Vec::new(), 0);
        assert!(reader.buffer(&mut conn, 1024, &mut data).await.is_err());
    }
}
