//! Writing HTTP/1.1 bytes: status lines, header lines, the cached `date`, and a whole
//! gateway-made answer with a buffered body.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;

/// `HTTP/1.1 {code} {reason}\r\n` (the reason phrase from the code; empty when unknown).
pub fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    status_line_with(out, status, status.canonical_reason().unwrap_or(""));
}

/// `HTTP/1.1 {code} {reason}\r\n` with the upstream's own reason phrase.
pub fn status_line_with(out: &mut Vec<u8>, status: StatusCode, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `{name}: {value}\r\n`.
pub fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// `n` in lowercase hexadecimal, no leading zeros (a chunk size).
pub fn hex(out: &mut Vec<u8>, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.push(b"0123456789abcdef"[(n >> (i * 4)) & 0xf]);
    }
}

/// `{name}: {n}\r\n` without formatting machinery.
pub fn header_decimal(out: &mut Vec<u8>, name: &[u8], n: u64) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    decimal(out, n);
    out.extend_from_slice(b"\r\n");
}

/// The end of a gateway-made answer: `content-length`, `date`, `connection: close` when
/// closing, the blank line, the body.
pub fn finish(out: &mut Vec<u8>, body: &[u8], close: bool) {
    header_decimal(out, b"content-length", body.len() as u64);
    out.extend_from_slice(b"date: ");
    with_date(|d| out.extend_from_slice(d));
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// `n` in decimal.
pub fn decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

thread_local! {
    // The `date` value, rendered once per second per thread (as hyper does).
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

fn with_date(f: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs || cached.1.is_empty() {
            *cached = (secs, httpdate::fmt_http_date(now));
        }
        f(cached.1.as_bytes());
    });
}

/// A gateway-made answer as HTTP/1.1 bytes, appended to `out`: the status, headers and body
/// `proxy::render` gives hyper, plus `content-length`, `date` and — when `close` or the
/// reply asks for it — `connection: close`. A test keeps the two engines' renderings alike.
pub fn reply(reply: &crate::policy::Reply<'_>, close: bool, out: &mut Vec<u8>) {
    use crate::policy::reply::MARKER;
    status_line(out, reply.status());
    header(out, b"content-type", b"application/json");
    header(out, MARKER.as_bytes(), reply.marker().as_bytes());
    if let Some(secs) = reply.retry_after() {
        header_decimal(out, b"retry-after", secs as u64);
    }
    finish(out, reply.body(), close || reply.close());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_lines() {
        let mut n = Vec::new();
        for v in [0u64, 7, 10, 1234567890123, u64::MAX] {
            n.clear();
            decimal(&mut n, v);
            assert_eq!(n, v.to_string().as_bytes());
            n.clear();
            hex(&mut n, v as usize);
            assert_eq!(n, format!("{:x}", v as usize).as_bytes());
        }
        let mut out = Vec::new();
        status_line(&mut out, StatusCode::FORBIDDEN);
        header(&mut out, b"x-a", b"1");
        finish(&mut out, b"{}", true);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 403 Forbidden\r\nx-a: 1\r\ncontent-length: 2\r\ndate: "));
        assert!(s.ends_with(" GMT\r\nconnection: close\r\n\r\n{}"), "{s}");
    }
}
