//! Errors as one log line: the boxed error type the I/O modules share, and its chain.

/// An error boxed with its sources.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and its sources, `a: b: c`, for one log line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
