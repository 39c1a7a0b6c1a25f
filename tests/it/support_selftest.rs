//! Self-test of tests/support over real sockets (does not start the gateway).

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::json;

const PHONE: &str = "106540352242922";
const WABA: &str = "102290129340398";

async fn post(url: &str, body: &str) -> reqwest::Response {
    client()
        .post(url)
        .header("authorization", format!("Bearer {TEST_TOKEN}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn default_reply_is_ok_send_and_everything_is_recorded() {
    let fake = FakeCloud::start().await;
    assert!(fake.url().starts_with("http://127.0.0.1:"));

    let r = post(
        &format!("{}/v21.0/{PHONE}/messages", fake.url()),
        TEMPLATE_BODY,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert_eq!(r.text().await.unwrap(), OK_SEND_BODY);

    // Unversioned path, with a query string.
    let r = post(&format!("{}/{PHONE}/messages?x=1", fake.url()), TEXT_BODY).await;
    assert_eq!(r.status(), 200);
    // Something else entirely.
    let r = client()
        .get(format!("{}/v21.0/{WABA}/phone_numbers", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    assert_eq!(fake.count(), 3);
    assert_eq!(fake.count_for_phone(PHONE), 2);
    assert_eq!(fake.count_for_phone("999"), 0);
    let reqs = fake.requests();
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].path, format!("/v21.0/{PHONE}/messages"));
    assert_eq!(reqs[0].query, None);
    assert_eq!(
        reqs[0].header("authorization"),
        Some("Bearer test-token-SECRET123")
    );
    assert_eq!(&reqs[0].body[..], TEMPLATE_BODY.as_bytes());
    assert_eq!(reqs[0].json()["type"], "template");
    assert_eq!(reqs[1].query.as_deref(), Some("x=1"));
    assert_eq!(reqs[1].path_and_query(), format!("/{PHONE}/messages?x=1"));
    assert!(reqs[0].at <= reqs[1].at && reqs[1].at <= reqs[2].at);
    assert_eq!(reqs[2].method, "GET");
    assert_eq!(fake.sends_for(PHONE).len(), 2);
    assert_eq!(
        fake.last().unwrap().path,
        format!("/v21.0/{WABA}/phone_numbers")
    );
    assert_eq!(template_body()["template"]["name"], "order_update");
    assert_eq!(text_body()["text"]["body"], "hi");

    fake.clear();
    assert_eq!(fake.count(), 0);
}

#[tokio::test]
async fn phone_queue_then_phone_default_then_global_default() {
    let fake = FakeCloud::start().await;
    let url = format!("{}/v21.0/{PHONE}/messages", fake.url());
    fake.on_phone(PHONE, Reply::blocked_368());
    fake.queue_phone(
        PHONE,
        vec![
            Reply::ok_send().with_header("x-test", "first"),
            Reply::graph_error(400, 131047, "Re-engagement message"),
        ],
    );

    let r = post(&url, TEXT_BODY).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-test"], "first");

    let r = post(&url, TEXT_BODY).await;
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 131047);
    assert_eq!(v["error"]["message"], "Re-engagement message");
    assert_eq!(v["error"]["fbtrace_id"], FBTRACE_ID);

    for _ in 0..2 {
        let r = post(&url, TEXT_BODY).await;
        assert_eq!(r.status(), 403);
        assert_eq!(r.text().await.unwrap(), BLOCKED_368_BODY);
    }
    let v: serde_json::Value = serde_json::from_str(BLOCKED_368_BODY).unwrap();
    assert_eq!(v["error"]["code"], 368);
    assert_eq!(v["error"]["error_subcode"], 2494100);
    assert_eq!(v["error"]["fbtrace_id"], "AbCdEfGhIjK");

    // Another phone: the global default.
    let r = post(&format!("{}/v21.0/222/messages", fake.url()), TEXT_BODY).await;
    assert_eq!(r.status(), 200);

    // on_path beats everything; set_default / queue_default for the rest.
    fake.on_path(&format!("/v21.0/{PHONE}/messages"), Reply::raw(202, "path"));
    let r = post(&url, TEXT_BODY).await;
    assert_eq!(r.status(), 202);
    assert_eq!(r.text().await.unwrap(), "path");
    fake.set_default(Reply::graph_error(500, 131000, "Something went wrong"));
    fake.queue_default(vec![Reply::raw(201, "")]);
    let other = format!("{}/v21.0/333/messages", fake.url());
    assert_eq!(post(&other, TEXT_BODY).await.status(), 201);
    assert_eq!(post(&other, TEXT_BODY).await.status(), 500);

    fake.reset_phone(PHONE);
    assert_eq!(fake.count_for_phone(PHONE), 5);
}

#[tokio::test]
async fn health_status_answers() {
    let fake = FakeCloud::start().await;
    fake.set_health(WABA, health_json(WABA, "BLOCKED"));

    let r = client()
        .get(format!("{}/v21.0/{WABA}?fields=health_status", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["id"], WABA);
    assert_eq!(v["health_status"]["can_send_message"], "BLOCKED");
    let ents = v["health_status"]["entities"].as_array().unwrap();
    assert_eq!(ents.len(), 3);
    assert_eq!(ents[0]["entity_type"], "WABA");
    assert_eq!(ents[0]["id"], WABA);
    assert_eq!(ents[0]["errors"][0]["error_code"], 141006);
    assert_eq!(ents[1]["entity_type"], "BUSINESS");
    assert_eq!(ents[2]["entity_type"], "APP");
    assert_eq!(ents[2]["can_send_message"], "AVAILABLE");

    // Unversioned, then AVAILABLE (no errors).
    fake.set_health(WABA, health_json(WABA, "AVAILABLE"));
    let v: serde_json::Value = client()
        .get(format!("{}/{WABA}?fields=health_status", fake.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["health_status"]["can_send_message"], "AVAILABLE");
    assert!(v["health_status"]["entities"][0].get("errors").is_none());

    // A phone-number query names the parent WABA.
    let p = health_json_phone(PHONE, WABA, "AVAILABLE");
    assert_eq!(
        p["health_status"]["entities"][0]["entity_type"],
        "PHONE_NUMBER"
    );
    assert_eq!(p["health_status"]["entities"][1]["id"], WABA);

    // Error answers and unknown nodes.
    fake.set_health_reply(
        WABA,
        Reply::graph_error(401, 190, "Error validating access token"),
    );
    let r = client()
        .get(format!("{}/v21.0/{WABA}?fields=health_status", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 190);

    let r = client()
        .get(format!("{}/v21.0/42?fields=health_status", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], 100);

    assert_eq!(fake.count_health(WABA), 3);
    assert_eq!(fake.count_health("42"), 1);
    assert!(fake.wait_health(WABA, 3, Duration::from_millis(100)).await);
    assert!(!fake.wait_health(WABA, 4, Duration::from_millis(50)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_250_concurrent_requests() {
    let fake = FakeCloud::start().await;
    fake.hold();
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..250 {
        let c = c.clone();
        let url = format!("{}/v21.0/{}/messages", fake.url(), 1000 + i);
        tasks.push(tokio::spawn(async move {
            c.post(url).body(TEXT_BODY).send().await.unwrap().status()
        }));
    }
    assert!(
        fake.wait_in_flight(250, Duration::from_secs(20)).await,
        "only {} in flight",
        fake.in_flight()
    );
    assert_eq!(fake.count(), 250);
    assert!(fake.connection_count() >= 250);
    fake.release();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(fake.max_in_flight(), 250);
    assert!(fake.wait_for(Duration::from_secs(5), |_| true).await);
    assert_eq!(fake.in_flight(), 0);

    // A delayed reply really waits.
    fake.set_default(Reply::ok_send().with_delay(Duration::from_millis(200)));
    let t = Instant::now();
    assert_eq!(
        post(&format!("{}/v21.0/1/messages", fake.url()), TEXT_BODY)
            .await
            .status(),
        200
    );
    assert!(t.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let fake = FakeCloud::start().await;
    let c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = c
        .post(format!("{}/v21.0/{PHONE}/messages", fake.url()))
        .body(TEXT_BODY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(fake.last().unwrap().version, http::Version::HTTP_2);
}

#[tokio::test]
async fn drop_connection_stop_and_resume() {
    let fake = FakeCloud::start().await;
    let url = format!("{}/v21.0/{PHONE}/messages", fake.url());
    fake.queue_phone(PHONE, vec![Reply::drop_connection()]);
    assert!(client().post(&url).body(TEXT_BODY).send().await.is_err());
    assert_eq!(post(&url, TEXT_BODY).await.status(), 200);

    fake.stop();
    assert!(!fake.is_running());
    assert!(client().post(&url).body(TEXT_BODY).send().await.is_err());
    fake.resume().await;
    assert_eq!(post(&url, TEXT_BODY).await.status(), 200);
    assert_eq!(fake.count_for_phone(PHONE), 3);

    // Dropping the fake closes the port.
    let addr = fake.addr();
    drop(fake);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn webhook_sink_records_and_answers_scripted_status() {
    let sink = WebhookSink::start_webhook_sink().await;
    let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
    let r = post_signed(&format!("{}/webhook", sink.url()), "s3cret", body).await;
    assert_eq!(r.status(), 200);
    sink.set_status(500);
    let r = post_signed(
        &format!("{}/v21.0/{PHONE}/messages", sink.url()),
        "s3cret",
        body,
    )
    .await;
    assert_eq!(r.status(), 500);
    let reqs = sink.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].path, "/webhook");
    assert_eq!(&reqs[0].body[..], body);
    assert_eq!(
        reqs[0].header("x-hub-signature-256").unwrap(),
        sign("s3cret", body)
    );
    assert!(sink.wait_count(2, Duration::from_millis(10)).await);
}

#[test]
fn redis_server_start_cmd_stop_restart() {
    let redis = RedisServer::start();
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", redis.port()));
    assert_eq!(redis.cmd(&["PING"]), "PONG");
    assert_eq!(redis.cmd(&["SET", "wa:circuit:1", "open"]), "OK");
    assert_eq!(redis.cmd(&["SET", "wa:circuit:2", "closed"]), "OK");
    assert_eq!(redis.get("wa:circuit:1").as_deref(), Some("open"));
    assert_eq!(redis.get("nope"), None);
    assert_eq!(redis.cmd(&["GET", "nope"]), "(nil)");
    assert_eq!(redis.keys("wa:*"), vec!["wa:circuit:1", "wa:circuit:2"]);
    assert_eq!(redis.cmd(&["INCR", "n"]), "1");
    assert!(redis.cmd(&["NOPE"]).starts_with("(error) ERR"));

    let sub = redis.subscribe(&["wa-breaker:events", "wa:*"]);
    assert_eq!(redis.cmd(&["PUBLISH", "wa-breaker:events", "hello"]), "1");
    assert_eq!(redis.cmd(&["PUBLISH", "wa:x", "p"]), "1");
    let got: Vec<_> = (0..2)
        .filter_map(|_| sub.next(Duration::from_secs(5)))
        .collect();
    assert!(
        got.contains(&("wa-breaker:events".to_string(), "hello".to_string())),
        "{got:?}"
    );
    assert!(
        got.contains(&("wa:x".to_string(), "p".to_string())),
        "{got:?}"
    );
    drop(sub);

    let port = redis.port();
    redis.stop();
    assert!(!redis.is_running());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    redis.restart();
    assert!(redis.is_running());
    assert_eq!(redis.port(), port);
    assert_eq!(redis.cmd(&["PING"]), "PONG");
    assert_eq!(redis.get("wa:circuit:1"), None, "state is lost on restart");
}

#[test]
fn sign_matches_known_hmac_vectors() {
    // python3 -c "import hmac,hashlib; print(hmac.new(b'key', b'The quick brown fox jumps over the lazy dog', hashlib.sha256).hexdigest())"
    assert_eq!(
        sign("key", b"The quick brown fox jumps over the lazy dog"),
        "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8"
    );
    assert_eq!(
        sign(
            "app-secret-123",
            br#"{"object":"whatsapp_business_account","entry":[]}"#
        ),
        "sha256=20e391a99a86fc5adf7e3a453236d20c906360291977896cf2f671e03bb95703"
    );
}

#[test]
fn webhook_payload_builders() {
    let v = account_update(
        WABA,
        1731617831,
        restriction(&["RESTRICTED_BIZ_INITIATED_MESSAGING"], json!(1764003000)),
    );
    assert_eq!(
        v,
        json!({"object":"whatsapp_business_account","entry":[{"id":WABA,"time":1731617831,
            "changes":[{"field":"account_update","value":{"event":"ACCOUNT_RESTRICTION",
            "restriction_info":[{"restriction_type":"RESTRICTED_BIZ_INITIATED_MESSAGING","expiration":1764003000}]}}]}]})
    );
    assert!(
        restriction(&["X"], serde_json::Value::Null)["restriction_info"][0]
            .get("expiration")
            .is_none()
    );
    assert_eq!(disabled("DISABLE")["ban_info"]["waba_ban_state"], "DISABLE");
    assert_eq!(
        disabled(json!(["DISABLE"]))["ban_info"]["waba_ban_state"][0],
        "DISABLE"
    );
    assert_eq!(
        violation("ADULT")["violation_info"]["violation_type"],
        "ADULT"
    );
    assert_eq!(
        event("VERIFIED_ACCOUNT"),
        json!({"event":"VERIFIED_ACCOUNT"})
    );
    assert!(now_unix() > 1_700_000_000);
    assert_eq!(webhook::percent_encode("a b&c"), "a%20b%26c");
}

#[test]
fn prometheus_text_helpers() {
    let text = "# HELP wa_breaker_circuit_open open\n# TYPE wa_breaker_circuit_open gauge\n\
wa_breaker_circuit_open{waba_id=\"1\"} 1\n\
wa_breaker_circuit_open{waba_id=\"2\"} 0\n\
wa_breaker_requests_total{outcome=\"forwarded\",kind=\"send\"} 7\n\
wa_breaker_requests_total{outcome=\"blocked\",kind=\"send\"} 3\n\
up 1\n";
    assert_eq!(
        metric(text, "wa_breaker_circuit_open", &[("waba_id", "1")]),
        Some(1.0)
    );
    assert_eq!(
        metric(text, "wa_breaker_circuit_open", &[("waba_id", "2")]),
        Some(0.0)
    );
    assert_eq!(
        metric(text, "wa_breaker_circuit_open", &[("waba_id", "3")]),
        None
    );
    assert_eq!(metric_sum(text, "wa_breaker_requests_total", &[]), 10.0);
    assert_eq!(
        metric_sum(text, "wa_breaker_requests_total", &[("outcome", "blocked")]),
        3.0
    );
    assert_eq!(metric(text, "up", &[]), Some(1.0));
}

#[test]
fn temp_config_replaces_placeholders() {
    let c = write_config(
        "listen = \"{listen}\"\nadmin_listen = \"{admin_listen}\"\nstate_dir = \"{state_dir}\"\n",
    );
    assert!(!c.text.contains('{'));
    assert!(c.text.contains("127.0.0.1:"));
    assert!(std::fs::read_to_string(&c.path).unwrap() == c.text);
    assert!(c.dir.path().join("state").is_dir());
}
