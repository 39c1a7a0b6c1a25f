//! Issue 12, edges that hold, over real sockets on both engines: no guard bypass by
//! spelling, clean drains, client deadlines.
//!
//! Tests listed in `both_engines!` (at the end) run as `relay::…` (`fast_path = true`) and
//! `hyper::…` (`fast_path = false`).

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const WABA_A: &str = "102290129340398";
const PHONE_A1: &str = "106540352242922";
const ADMIN: &str = "test-admin-token-0123456789";

fn config(engine: Engine, extra: &str) -> String {
    let engine_line = engine.config_line();
    format!(
        r#"
{engine_line}
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{{upstream}}"
admin_token = "{ADMIN}"
request_timeout = "3s"
{extra}

[[accounts]]
waba_id = "{WABA_A}"
phone_number_ids = ["{PHONE_A1}"]
"#
    )
}

async fn start(engine: Engine, upstream: &str, extra: &str) -> Gateway {
    Gateway::builder(&config(engine, extra))
        .var("upstream", upstream)
        .start()
        .await
}

/// One raw request on a fresh connection; the answer read.
async fn raw_request(gw: &Gateway, req: &str) -> Answer {
    let mut s = TcpStream::connect(gw.listen_addr()).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    read_answer(&mut s, &mut buf).await
}

/// Every spelling of a send that reached the upstream past an open circuit (issue 12) is
/// answered locally; the upstream sees none of them. A plain read still passes, byte for
/// byte as the client spelled it.
async fn every_spelling_of_a_send_to_an_open_circuit_is_answered_locally(engine: Engine) {
    let fake = FakeCloud::start().await;
    let gw = start(engine, &fake.url(), "").await;
    let open = format!("/admin/circuits/{WABA_A}/open");
    assert!(gw.admin_post(&open, Some(ADMIN), None).await.status().is_success());

    let p = PHONE_A1;
    let body = TEMPLATE_BODY;
    let spellings = [
        ("POST", format!("//v21.0/{p}/messages")),
        ("POST", format!("/v21.0//{p}/messages")),
        ("POST", format!("/v21.0/{p}//messages")),
        ("POST", format!("/v21.0/{p}/messages/")),
        ("POST", format!("/V21.0/{p}/messages")),
        ("POST", format!("/v21.0/./{p}/messages")),
        ("POST", format!("/v21.0/{p}/./messages")),
        ("POST", format!("/v21.0/x/../{p}/messages")),
        ("POST", format!("/v21.0/%31%30%36540352242922/messages")),
        ("POST", format!("/v21.0/{p}/%6Dessages")),
        ("POST", format!("/v21.0/{p}%2Fmessages")),
        ("POST", format!("/{p}/messages")),
        ("POST", format!("//{p}/messages")),
        ("post", format!("/v21.0/{p}/messages")),
        ("Post", format!("/v21.0/{p}/messages?x=1")),
    ];
    let mut wrong = Vec::new();
    for (method, path) in &spellings {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TEST_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let a = raw_request(&gw, &req).await;
        if a.status != 403 || a.header("x-wa-breaker").as_deref() != Some("open") {
            wrong.push(format!("{method} {path}: {} {}", a.status, a.head));
        }
    }
    assert!(wrong.is_empty(), "{}:\n{}", engine.name(), wrong.join("\n"));
    assert_eq!(fake.count(), 0, "{}: {:?}", engine.name(), fake.requests());

    // Reads pass, forwarded as spelled.
    let a = raw_request(
        &gw,
        &format!("GET /v21.0//{p}/./whatsapp_business_profile HTTP/1.1\r\nHost: gw\r\n\r\n"),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(
        fake.last().unwrap().path_and_query(),
        format!("/v21.0//{p}/./whatsapp_business_profile")
    );
}

both_engines!(every_spelling_of_a_send_to_an_open_circuit_is_answered_locally,);
