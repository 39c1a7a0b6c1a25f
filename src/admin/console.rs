//! The on-call console: one page at `GET /` with its script, style sheet and icon under
//! `/ui/`, embedded in the binary (no external assets: it works offline). The page is static;
//! everything it shows comes from the `/admin` API, called with the token the operator types
//! (kept in the tab's `sessionStorage`, sent as `Authorization: Bearer`; no cookies).
//!
//! Every asset is answered with a Content-Security-Policy that allows only this origin's
//! script and style (no inline script or style, no foreign origin, no framing).

use http::{header, HeaderName, HeaderValue, Method, Response, StatusCode};

use super::json_error;
use crate::common::Body;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// Script and style from this origin only; data from this origin only; nothing framed.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The console's answer for `path`, or `None` when the path is not one of its assets.
pub(super) fn serve(method: &Method, path: &str) -> Option<Response<Body>> {
    let (body, content_type) = match path {
        "/" => (INDEX_HTML, "text/html; charset=utf-8"),
        "/ui/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/ui/app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "/ui/icon.svg" => (ICON_SVG, "image/svg+xml"),
        _ => return None,
    };
    if method != Method::GET && method != Method::HEAD {
        let mut r = json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Some(r);
    }
    let mut r = Response::new(Body::full(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    // Assets change with the binary; a page that outlives an upgrade must not keep old ones.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_carries_the_security_headers() {
        for path in ["/", "/ui/app.js", "/ui/app.css", "/ui/icon.svg"] {
            let r = serve(&Method::GET, path).unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let h = r.headers();
            assert_eq!(h["content-security-policy"], CSP, "{path}");
            assert_eq!(h["x-content-type-options"], "nosniff");
            assert_eq!(h["referrer-policy"], "no-referrer");
        }
        assert!(serve(&Method::GET, "/ui/other.js").is_none());
        assert_eq!(
            serve(&Method::POST, "/").unwrap().status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn the_policy_allows_no_inline_or_foreign_script() {
        assert!(CSP.contains("script-src 'self';"));
        assert!(CSP.contains("frame-ancestors 'none'"));
        assert!(!CSP.contains("unsafe"));
        assert!(!CSP.contains("http"));
    }

    /// The page names its script and style as files (the policy would refuse inline ones)
    /// and the script never hands data to the HTML parser.
    #[test]
    fn the_page_has_no_inline_script_or_style() {
        assert!(INDEX_HTML.contains(r#"<script src="/ui/app.js" defer></script>"#));
        assert!(INDEX_HTML.contains(r#"<link rel="stylesheet" href="/ui/app.css">"#));
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(!INDEX_HTML.contains("<style"));
        assert!(!INDEX_HTML.contains("style="));
        // No inline event handler (` onclick=`, …): the policy would refuse it.
        let handler = INDEX_HTML.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!handler, "inline event handler in index.html");
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(sink), "app.js uses {sink}");
        }
        assert!(!APP_JS.contains("document.cookie"));
        assert!(APP_JS.contains("sessionStorage"));
    }
}
