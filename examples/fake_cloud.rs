//! A stand-in Cloud API for trying wa-breaker locally (`cargo run --release --example fake_cloud`).
//!
//! Listens on 127.0.0.1:9999 (or `FAKE_CLOUD_ADDR`). Sends answer 200 with a send result,
//! except for the phone-number ids in `FAKE_BLOCKED` (comma-separated; default
//! `106540352242922`), which answer HTTP 403 with Graph error 368. Health Status reads answer
//! `AVAILABLE`. Every request is printed, Authorization masked (not with `FAKE_QUIET=1`, for
//! load runs).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

const OK: &str = r#"{"messaging_product":"whatsapp","contacts":[{"input":"15551234567","wa_id":"15551234567"}],"messages":[{"id":"wamid.HBgLMTU1NTEyMzQ1NjcVAgARGBI5QTNDQTVCM0Q0Q0Q2RTY3RTcA"}]}"#;
const BLOCKED: &str = r#"{"error":{"message":"(#368) Temporarily blocked for policies violations","type":"OAuthException","code":368,"error_data":{"messaging_product":"whatsapp","details":"The WhatsApp Business Account associated with the app has been restricted or disabled for violating a platform policy."},"error_subcode":2494100,"fbtrace_id":"AbCdEfGhIjK"}}"#;

async fn answer(
    req: Request<Incoming>,
    blocked: Arc<Vec<String>>,
    quiet: bool,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let auth = if req.headers().contains_key("authorization") {
        "Bearer ***"
    } else {
        "none"
    };
    let method = req.method().clone();
    let _ = req.into_body().collect().await;
    if !quiet {
        println!("fake-cloud: {method} {path} (authorization: {auth})");
    }
    let (status, body) = if query.contains("health_status") {
        let node = path.trim_matches('/').rsplit('/').next().unwrap_or("");
        (
            StatusCode::OK,
            format!(
                r#"{{"health_status":{{"can_send_message":"AVAILABLE","entities":[{{"entity_type":"WABA","id":"{node}","can_send_message":"AVAILABLE"}}]}},"id":"{node}"}}"#
            ),
        )
    } else if path.ends_with("/messages")
        && blocked.iter().any(|p| path.contains(&format!("/{p}/")))
    {
        (StatusCode::FORBIDDEN, BLOCKED.to_string())
    } else {
        (StatusCode::OK, OK.to_string())
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response"))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("FAKE_CLOUD_ADDR").unwrap_or_else(|_| "127.0.0.1:9999".into());
    let blocked: Vec<String> = std::env::var("FAKE_BLOCKED")
        .unwrap_or_else(|_| "106540352242922".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let blocked = Arc::new(blocked);
    let quiet = std::env::var("FAKE_QUIET").is_ok_and(|v| v == "1");
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("fake-cloud: listening on http://{addr}; blocked phone numbers: {blocked:?}");
    loop {
        let (stream, _) = listener.accept().await?;
        let blocked = blocked.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(req, blocked.clone(), quiet));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
