//! The HTTP/1.1 exchange the load generators share (`soak_load`, `fixed_rate`): write one
//! request, read one answer framed by `content-length` (what every server under test
//! sends for a send or its local answer). Included with `#[path]`; not an example itself.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the load generators need of an answer.
#[allow(dead_code)] // each generator reads the fields it needs
pub struct Answer {
    /// Its status code.
    pub status: u16,
    /// The gateway answered it itself (`x-wa-breaker`).
    pub local: bool,
    /// The connection stays open (no `connection: close`).
    pub keep: bool,
}

/// Sends `req` on `s` and reads the answer into `buf`.
pub async fn exchange(s: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> std::io::Result<Answer> {
    s.write_all(req).await?;
    buf.clear();
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let mut answer = Answer {
                    status: r.code.unwrap_or(0),
                    local: false,
                    keep: true,
                };
                let mut len = None;
                for h in r.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        len = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse::<usize>().ok());
                    } else if h.name.eq_ignore_ascii_case("x-wa-breaker") {
                        answer.local = true;
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        answer.keep = !h.value.eq_ignore_ascii_case(b"close");
                    }
                }
                let Some(len) = len else {
                    return Err(std::io::Error::other("answer without content-length"));
                };
                while buf.len() < n + len {
                    if s.read_buf(buf).await? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                return Ok(answer);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        }
        if s.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}
