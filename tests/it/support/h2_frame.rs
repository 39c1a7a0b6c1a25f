//! HTTP/2 frames by hand (RFC 9113 §4, §6), for tests that must say what the `h2` crate
//! never would: a client that reads nothing, a server whose GOAWAY names fewer streams than
//! it received. No HPACK here: callers write header blocks from the static table.

/// Frame types.
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;

/// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;

/// One frame read.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    /// Padding left in (see [`Frame::data`]).
    pub payload: Vec<u8>,
}

impl Frame {
    /// The payload without its padding (DATA and HEADERS may be `PADDED`).
    pub fn data(&self) -> &[u8] {
        let p = &self.payload;
        if self.flags & PADDED != 0 && matches!(self.kind, DATA | HEADERS) && !p.is_empty() {
            let pad = usize::from(p[0]);
            return p.get(1..p.len().saturating_sub(pad)).unwrap_or_default();
        }
        p
    }
}

/// One frame's bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The whole frame at the front of `buf`, taken out of it; `None` until one is whole.
pub fn take(buf: &mut Vec<u8>) -> Option<Frame> {
    let (f, used) = parse(buf)?;
    buf.drain(..used);
    Some(f)
}

/// Every whole frame in `b` (a partial last one is left out).
pub fn frames(mut b: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some((f, used)) = parse(b) {
        out.push(f);
        b = &b[used..];
    }
    out
}

fn parse(b: &[u8]) -> Option<(Frame, usize)> {
    if b.len() < 9 {
        return None;
    }
    let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
    let payload = b.get(9..9 + len)?.to_vec();
    let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
    Some((
        Frame {
            kind: b[3],
            flags: b[4],
            stream,
            payload,
        },
        9 + len,
    ))
}
