//! Content decoding for the classifier. Clients send `Accept-Encoding: gzip` by default
//! (Python's httpx and requests, Node's fetch, Go's net/http), the gateway forwards it, and
//! an upstream may then compress its error answer: the Graph code is only readable after
//! decoding. Only the classifier's copy is decoded — the app gets the original bytes — and
//! only for non-2xx answers; the decoded size is capped, so a small compressed body cannot
//! expand into a large allocation.

use std::borrow::Cow;
use std::io::Read;

/// Why a body could not be decoded for judging (it is then passed on unjudged).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A `content-encoding` the gateway does not decode.
    #[error("unsupported content-encoding {0:?}")]
    Unsupported(String),
    /// Decoded, the body would be larger than the cap.
    #[error("decoded body larger than {0} bytes")]
    TooLarge(usize),
    /// The bytes are not valid for their encoding.
    #[error("corrupt {encoding} body")]
    Corrupt {
        /// The coding that failed.
        encoding: &'static str,
        /// The decoder's error.
        #[source]
        source: std::io::Error,
    },
}

/// The codings applied to a body, from its `content-encoding` header values, in the order
/// they were applied; `identity` is left out.
fn codings(values: &[&[u8]]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| super::hop::tokens(v))
        .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase())
        .filter(|t| t != "identity")
        .collect()
}

/// Decodes `body` as its `content-encoding` values say (gzip / x-gzip, deflate — zlib as
/// RFC 9110 says, raw deflate as some servers send — and br; several codings are undone
/// last first). At most `cap` decoded bytes.
pub fn decode<'a>(
    content_encoding: &[&[u8]],
    body: &'a [u8],
    cap: usize,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    let mut out: Cow<'a, [u8]> = Cow::Borrowed(body);
    for coding in codings(content_encoding).iter().rev() {
        out = Cow::Owned(decode_one(coding, &out, cap)?);
    }
    Ok(out)
}

fn decode_one(coding: &str, input: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    match coding {
        "gzip" | "x-gzip" => read_capped(flate2::read::MultiGzDecoder::new(input), "gzip", cap),
        "deflate" => read_capped(flate2::read::ZlibDecoder::new(input), "deflate", cap).or_else(
            |e| match e {
                DecodeError::Corrupt { .. } => {
                    read_capped(flate2::read::DeflateDecoder::new(input), "deflate", cap)
                }
                other => Err(other),
            },
        ),
        "br" => read_capped(
            brotli_decompressor::Decompressor::new(input, 4096),
            "br",
            cap,
        ),
        other => Err(DecodeError::Unsupported(other.to_string())),
    }
}

fn read_capped(r: impl Read, encoding: &'static str, cap: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    r.take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| DecodeError::Corrupt { encoding, source })?;
    if out.len() > cap {
        return Err(DecodeError::TooLarge(cap));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const TEXT: &[u8] = br#"{"error":{"code":368,"message":"blocked"}}"#;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn zlib(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn brotli(b: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = ::brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(b).unwrap();
        }
        out
    }

    #[test]
    fn every_coding_decodes() {
        assert_eq!(decode(&[], TEXT, 1024).unwrap(), TEXT);
        assert_eq!(decode(&[b"identity"], TEXT, 1024).unwrap(), TEXT);
        assert_eq!(decode(&[b"gzip"], &gzip(TEXT), 1024).unwrap(), TEXT);
        assert_eq!(decode(&[b"X-Gzip"], &gzip(TEXT), 1024).unwrap(), TEXT);
        assert_eq!(decode(&[b"deflate"], &zlib(TEXT), 1024).unwrap(), TEXT);
        assert_eq!(
            decode(&[b"deflate"], &raw_deflate(TEXT), 1024).unwrap(),
            TEXT
        );
        assert_eq!(decode(&[b"br"], &brotli(TEXT), 1024).unwrap(), TEXT);
        // Applied in order gzip then br: undone br first.
        let both = brotli(&gzip(TEXT));
        assert_eq!(decode(&[b"gzip, br"], &both, 1024).unwrap(), TEXT);
        assert_eq!(decode(&[b"gzip", b"br"], &both, 1024).unwrap(), TEXT);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(
            decode(&[b"gzip"], b"\x1f\x8bnot really gzip", 1024),
            Err(DecodeError::Corrupt { .. })
        ));
        assert!(matches!(
            decode(&[b"br"], b"\xff\xff\xff", 1024),
            Err(DecodeError::Corrupt { .. })
        ));
        assert!(matches!(
            decode(&[b"compress"], TEXT, 1024),
            Err(DecodeError::Unsupported(_))
        ));
    }

    #[test]
    fn the_decoded_size_is_capped() {
        let bomb = gzip(&vec![b' '; 20 * 1024 * 1024]);
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        assert!(matches!(
            decode(&[b"gzip"], &bomb, 64 * 1024),
            Err(DecodeError::TooLarge(65536))
        ));
        assert_eq!(decode(&[b"gzip"], &gzip(TEXT), TEXT.len()).unwrap(), TEXT);
        assert!(decode(&[b"gzip"], &gzip(TEXT), TEXT.len() - 1).is_err());
    }
}
