//! The webhook receiver, over real sockets against the built binary: subscription check,
//! signatures, every documented `account_update` event, batching, duplicates and order,
//! the relay to `forward_url`, and the scope a restriction sets.

use std::time::Duration;

use crate::signals_util::*;
use crate::support::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEC: Duration = Duration::from_secs(3);

async fn gateway(fake: &FakeCloud, webhook: &str) -> Gateway {
    Gateway::start(&config(&fake.url(), webhook, "")).await
}

#[tokio::test]
async fn subscription_challenge() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;

    let r = gw.webhook_verify("/webhook", VERIFY, "1158201444").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "1158201444");

    let r = gw
        .webhook_verify("/webhook", "wrong-token", "1158201444")
        .await;
    assert_eq!(r.status(), 403);
    for q in [
        format!("hub.mode=unsubscribe&hub.verify_token={VERIFY}&hub.challenge=1"),
        format!("hub.mode=subscribe&hub.verify_token={VERIFY}"),
        "hub.mode=subscribe&hub.challenge=1".to_string(),
        String::new(),
    ] {
        let r = gw
            .client()
            .get(format!("{}/webhook?{q}", gw.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{q}");
    }
    // Other methods.
    let r = gw
        .client()
        .put(format!("{}/webhook", gw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // Nothing reached the upstream.
    assert_eq!(fake.count(), 0);
}

#[tokio::test]
async fn bad_signatures_are_401_and_change_nothing() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let body = account_update(WABA, now_unix(), disabled("DISABLE")).to_string();
    let body = body.as_bytes();
    let url = format!("{}/webhook", gw.url());
    let good = sign(SECRET, body);
    let sha1 = format!("sha1={}", &good["sha256=".len()..good.len() - 24]);
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("wrong secret", Some(sign("not-the-secret", body))),
        ("other body", Some(sign(SECRET, b"{}"))),
        ("sha1", Some(sha1)),
        ("no algorithm", Some(good["sha256=".len()..].to_string())),
        ("garbage", Some("sha256=xyz".to_string())),
        ("truncated", Some(good[..good.len() - 2].to_string())),
    ];
    for (what, sig) in &cases {
        let r = post_with_signature(&url, sig.as_deref(), body).await;
        assert_eq!(r.status(), 401, "{what}");
    }
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "closed");
    assert_eq!(c["history"].as_array().map_or(0, |h| h.len()), 0, "{c}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wa_breaker_webhooks_total",
            &[("result", "rejected_signature")]
        ),
        Some(cases.len() as f64)
    );
    // The valid one applies.
    let r = post_with_signature(&url, Some(&good), body).await;
    assert_eq!(r.status(), 200);
    wait_state(&gw, WABA, "open", SEC).await;
}

#[tokio::test]
async fn any_configured_app_secret_verifies() {
    let fake = FakeCloud::start().await;
    let cfg = config(&fake.url(), "", "").replace(
        &format!("app_secret = \"{SECRET}\""),
        &format!("app_secret = [\"{SECRET}\", \"{SECRET2}\"]"),
    );
    let gw = Gateway::start(&cfg).await;
    let body = account_update(WABA, now_unix(), disabled("DISABLE")).to_string();
    let r = gw.webhook_post("/webhook", SECRET2, body.as_bytes()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(circuit(&gw, WABA).await["state"], "open");
}

#[tokio::test]
async fn no_app_secret_refuses_posts() {
    let fake = FakeCloud::start().await;
    let cfg = config(&fake.url(), "", "").replace(&format!("app_secret = \"{SECRET}\""), "");
    let gw = Gateway::start(&cfg).await;
    let body = account_update(WABA, now_unix(), disabled("DISABLE")).to_string();
    for _ in 0..2 {
        let r = gw.webhook_post("/webhook", SECRET, body.as_bytes()).await;
        assert_eq!(r.status(), 503);
        assert!(r.text().await.unwrap().contains("app_secret"));
    }
    assert_eq!(circuit(&gw, WABA).await["state"], "closed");
    assert!(
        gw.wait_for_log("webhook.app_secret is not configured", SEC)
            .await
    );
    assert_eq!(gw.logs().matches("(this is logged once)").count(), 1);
}

#[tokio::test]
async fn body_limits_and_unparseable_bodies() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "max_body = 1024").await;
    let big = vec![b' '; 4096];
    let r = gw.webhook_post("/webhook", SECRET, &big).await;
    assert_eq!(r.status(), 413);
    // A chunked body (no content-length) is cut off at the limit too.
    let big = vec![b' '; 8192];
    let head = format!(
        "POST /webhook HTTP/1.1\r\nhost: x\r\nx-hub-signature-256: {}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        sign(SECRET, &big)
    );
    let mut tcp = tokio::net::TcpStream::connect(gw.listen_addr())
        .await
        .unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    for part in big.chunks(1000) {
        let chunk = format!("{:x}\r\n{}\r\n", part.len(), String::from_utf8_lossy(part));
        if tcp.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    for junk in [&b"not json"[..], b"{}", b"[]", br#"{"entry":{}}"#] {
        let r = gw.webhook_post("/webhook", SECRET, junk).await;
        assert_eq!(r.status(), 400, "{}", String::from_utf8_lossy(junk));
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_webhooks_total", &[("result", "invalid")]),
        Some(6.0)
    );
    assert_eq!(
        circuit(&gw, WABA).await["history"]
            .as_array()
            .map_or(0, |h| h.len()),
        0
    );
}

#[tokio::test]
async fn biz_initiated_restriction_blocks_templates_and_lets_replies_through() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let expiration = now_unix() + 3600;
    let r = deliver(
        &gw,
        &account_update(
            WABA,
            now_unix(),
            restriction(&["RESTRICTED_BIZ_INITIATED_MESSAGING"], json!(expiration)),
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "open");
    assert_eq!(c["scope"], "business_initiated");
    assert_eq!(c["source"], "webhook");
    assert_eq!(until(&c).unwrap().timestamp(), expiration);

    // A free-form reply inside the customer-service window goes to Meta …
    let r = gw.send_str(PHONE, TEXT_BODY).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), OK_SEND_BODY);
    // … a template send is answered locally, with retry-after counting down to until.
    let r = gw.send_str(PHONE, TEMPLATE_BODY).await;
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-wa-breaker"], "open");
    let retry: i64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3590..=3600).contains(&retry), "retry-after {retry}");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], 368);
    let sends = fake.sends_for(PHONE);
    assert_eq!(sends.len(), 1);
    assert_eq!(&sends[0].body[..], TEXT_BODY.as_bytes());
}

#[tokio::test]
async fn customer_initiated_restriction_with_iso_expiration_blocks_replies() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let r = deliver(
        &gw,
        &account_update(
            WABA,
            now_unix(),
            restriction(
                &["RESTRICTED_CUSTOMER_INITIATED_MESSAGING"],
                json!("2099-04-19T13:59:20+0000"),
            ),
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "open");
    assert_eq!(c["scope"], "customer_initiated");
    assert_eq!(c["until"], "2099-04-19T13:59:20Z");
    assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 403);
    assert_eq!(fake.count_for_phone(PHONE), 0);
    // Alone it does not stop templates (they open conversations, which it does not restrict).
    assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 200);
    assert_eq!(fake.count_for_phone(PHONE), 1);
}

#[tokio::test]
async fn other_restrictions_lifecycle_and_schedule_are_recorded_without_blocking() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let t = now_unix();
    let body = envelope(vec![entry(
        WABA,
        t,
        vec![
            change(
                "account_update",
                restriction(&["RESTRICTED_ADD_PHONE_NUMBER_ACTION"], json!(t + 3600)),
            ),
            change("account_update", disabled("SCHEDULE_FOR_DISABLE")),
            change(
                "account_update",
                json!({"event": "PARTNER_REMOVED", "waba_info": {"waba_id": WABA}}),
            ),
            change("account_update", event("VERIFIED_ACCOUNT")),
            change(
                "account_update",
                json!({"event": "BRAND_NEW_EVENT", "x": {"y": 1}}),
            ),
            change(
                "messages",
                json!({"messaging_product": "whatsapp", "statuses": []}),
            ),
            change("phone_number_quality_update", json!({"event": "FLAGGED"})),
        ],
    )]);
    assert_eq!(deliver(&gw, &body).await.status(), 200);
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "closed");
    let reasons: Vec<String> = notes(&c)
        .iter()
        .map(|n| n["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("RESTRICTED_ADD_PHONE_NUMBER_ACTION"));
    assert!(reasons[1].contains("SCHEDULE_FOR_DISABLE"));
    assert!(reasons[2].contains("PARTNER_REMOVED"));
    assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 200);
    assert!(gw.wait_for_log("SCHEDULE_FOR_DISABLE", SEC).await);
}

#[tokio::test]
async fn disable_then_reinstate() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let t = now_unix();
    assert_eq!(
        deliver(&gw, &account_update(WABA, t, disabled("DISABLE")))
            .await
            .status(),
        200
    );
    let c = circuit(&gw, WABA).await;
    assert_eq!(
        (c["state"].as_str(), c["scope"].as_str()),
        (Some("open"), Some("all_sends"))
    );
    assert!(c["until"].is_null());
    assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 403);
    // The state as a one-element array, as Meta's reference shows it.
    let r = deliver(
        &gw,
        &account_update(WABA, t + 1, disabled(json!(["REINSTATE"]))),
    )
    .await;
    assert_eq!(r.status(), 200);
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "closed");
    assert_eq!(c["source"], "webhook");
    assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 200);
}

#[tokio::test]
async fn violation_without_token_is_a_note_unless_switched_on() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    assert_eq!(
        deliver(&gw, &account_update(WABA, now_unix(), violation("ADULT")))
            .await
            .status(),
        200
    );
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "closed");
    assert!(notes(&c)[0]["reason"].as_str().unwrap().contains("ADULT"));
    assert_eq!(fake.count_health(WABA), 0);

    let gw = gateway(&fake, "violation_opens = true").await;
    assert_eq!(
        deliver(&gw, &account_update(WABA, now_unix(), violation("SCAM")))
            .await
            .status(),
        200
    );
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "open");
    assert_eq!(c["history"][0]["evidence"]["event"], "ACCOUNT_VIOLATION");
}

#[tokio::test]
async fn batched_entries_and_changes_all_apply() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let t = now_unix();
    let body = envelope(vec![
        entry(
            WABA,
            t - 10,
            vec![
                change("account_update", violation("ADULT")),
                change("account_update", disabled("DISABLE")),
            ],
        ),
        entry(
            WABA2,
            t - 5,
            vec![change(
                "account_update",
                restriction(&["RESTRICTED_BIZ_INITIATED_MESSAGING"], json!(t + 600)),
            )],
        ),
    ]);
    assert_eq!(deliver(&gw, &body).await.status(), 200);
    let a = circuit(&gw, WABA).await;
    assert_eq!(a["state"], "open");
    assert_eq!(a["history"].as_array().unwrap().len(), 2);
    let b = circuit(&gw, WABA2).await;
    assert_eq!(
        (b["state"].as_str(), b["scope"].as_str()),
        (Some("open"), Some("business_initiated"))
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_webhooks_total", &[("result", "applied")]),
        Some(3.0)
    );
}

#[tokio::test]
async fn duplicates_and_out_of_order_events() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let t = now_unix() - 100;
    let disable = account_update(WABA, t + 20, disabled("DISABLE"));
    assert_eq!(deliver(&gw, &disable).await.status(), 200);
    let first = circuit(&gw, WABA).await;
    assert_eq!(first["state"], "open");
    // Redelivered: a no-op.
    assert_eq!(deliver(&gw, &disable).await.status(), 200);
    assert_eq!(circuit(&gw, WABA).await, first);
    // An older REINSTATE arriving late does not close the newer block.
    assert_eq!(
        deliver(&gw, &account_update(WABA, t + 10, disabled("REINSTATE")))
            .await
            .status(),
        200
    );
    assert_eq!(circuit(&gw, WABA).await, first);
    // A newer one does.
    assert_eq!(
        deliver(&gw, &account_update(WABA, t + 30, disabled("REINSTATE")))
            .await
            .status(),
        200
    );
    assert_eq!(circuit(&gw, WABA).await["state"], "closed");
    // The DISABLE redelivered once more (Meta retries for days): still closed.
    assert_eq!(deliver(&gw, &disable).await.status(), 200);
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "closed");
    assert_eq!(c["history"].as_array().unwrap().len(), 2);
    // A change's own timestamp orders it inside a batch (older than entry.time here).
    let mut late = account_update(WABA, t + 40, disabled("DISABLE"));
    late["entry"][0]["changes"][0]["timestamp"] = json!(t + 25);
    assert_eq!(deliver(&gw, &late).await.status(), 200);
    assert_eq!(circuit(&gw, WABA).await["state"], "closed");
}

#[tokio::test]
async fn restriction_already_over_is_recorded_not_opened() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let t = now_unix();
    let body = account_update(
        WABA,
        t - 7200,
        restriction(
            &["RESTRICTED_CUSTOMER_INITIATED_MESSAGING"],
            json!(t - 3600),
        ),
    );
    assert_eq!(deliver(&gw, &body).await.status(), 200);
    let c = circuit(&gw, WABA).await;
    assert_eq!(c["state"], "closed");
    assert_eq!(notes(&c).len(), 1);
}

#[tokio::test]
async fn relays_every_delivery_unchanged() {
    let fake = FakeCloud::start().await;
    let sink = FakeCloud::start_webhook_sink().await;
    let gw = gateway(&fake, &format!("forward_url = \"{}/hooks/wa\"", sink.url())).await;
    // A messages delivery (not acted on) and an account_update: both relayed byte for byte.
    let messages = br#"{"object":"whatsapp_business_account","entry":[{"id":"102290129340398","changes":[{"value":{"messaging_product":"whatsapp","statuses":[{"id":"wamid.X","status":"delivered"}]},"field":"messages"}]}]}"#;
    let update = account_update(WABA, now_unix(), disabled("DISABLE")).to_string();
    for body in [&messages[..], update.as_bytes()] {
        let r = gw.webhook_post("/webhook", SECRET, body).await;
        assert_eq!(r.status(), 200);
    }
    let got = sink.requests();
    assert_eq!(got.len(), 2);
    for (r, body) in got.iter().zip([&messages[..], update.as_bytes()]) {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hooks/wa");
        assert_eq!(&r.body[..], body);
        assert_eq!(
            r.header("x-hub-signature-256"),
            Some(sign(SECRET, body).as_str())
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(circuit(&gw, WABA).await["state"], "open");
    // Rejected deliveries are not relayed.
    let r = post_with_signature(&format!("{}/webhook", gw.url()), None, messages).await;
    assert_eq!(r.status(), 401);
    assert_eq!(sink.count(), 2);
}

#[tokio::test]
async fn relay_failure_answers_non_2xx_and_redelivery_is_idempotent() {
    let fake = FakeCloud::start().await;
    let sink = FakeCloud::start_webhook_sink().await;
    let gw = gateway(
        &fake,
        &format!(
            "forward_url = \"{}/hook\"\nforward_timeout = \"300ms\"",
            sink.url()
        ),
    )
    .await;
    let body = account_update(WABA, now_unix(), disabled("DISABLE")).to_string();

    sink.set_status(500);
    let r = gw.webhook_post("/webhook", SECRET, body.as_bytes()).await;
    assert_eq!(r.status(), 502);
    // The circuit action does not wait for the app.
    let opened = circuit(&gw, WABA).await;
    assert_eq!(opened["state"], "open");

    // Too slow is a failure too.
    sink.set_default(Reply::raw(200, "").with_delay(Duration::from_secs(1)));
    let r = gw.webhook_post("/webhook", SECRET, body.as_bytes()).await;
    assert_eq!(r.status(), 502);

    // Meta delivers again once the app is back: 200, and nothing is applied twice.
    sink.set_status(200);
    let r = gw.webhook_post("/webhook", SECRET, body.as_bytes()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(circuit(&gw, WABA).await, opened);
    assert_eq!(sink.count(), 3);

    // An app that is not listening at all.
    sink.stop();
    let r = gw.webhook_post("/webhook", SECRET, body.as_bytes()).await;
    assert_eq!(r.status(), 502);
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "wa_breaker_webhooks_total",
            &[("result", "relay_failed")]
        ),
        Some(3.0)
    );
}

/// Shapes Meta sends today, in one signed delivery: `account_alerts` about a
/// `CURRENT_STATUS_ID` entity and a calling restriction with its `remediation`. Both are
/// read (200), neither opens anything, the remediation is in the note; sends flow.
#[tokio::test]
async fn current_status_alerts_and_calling_restrictions_are_read_and_block_nothing() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let t = now_unix();
    let alert = json!({"entity_type": "CURRENT_STATUS_ID", "entity_id": "1234567890",
        "alert_info": {"alert_severity": "INFORMATIONAL", "alert_status": "NONE",
                       "alert_type": "INCREASED_CAPABILITIES_ELIGIBILITY_PENDING",
                       "alert_description": "…"}});
    let calling = json!({"event": "ACCOUNT_RESTRICTION", "restriction_info": [
        {"restriction_type": "RESTRICTED_USER_INITIATED_CALLING", "expiration": t + 86400,
         "remediation": "Lower your call rejection rate"}]});
    let body = envelope(vec![entry(
        WABA,
        t,
        vec![
            change("account_alerts", alert),
            change("account_update", calling),
        ],
    )]);
    assert_eq!(deliver(&gw, &body).await.status(), 200);
    let c = circuit(&gw, WABA).await;
    assert_ne!(c["state"], "open", "{c:#}");
    let n = notes(&c);
    assert_eq!(n.len(), 1, "{c:#}");
    assert!(
        n[0]["reason"]
            .as_str()
            .unwrap()
            .contains("remediation: Lower your call rejection rate"),
        "{}",
        n[0]
    );
    for b in [TEMPLATE_BODY, TEXT_BODY] {
        assert_eq!(gw.send_str(PHONE, b).await.status(), 200);
    }
}

/// Issue 25, item 6: a signed DISABLE dated 30 days back (past `max_event_age`, 7 days by
/// default: Meta redelivers for no longer) is acknowledged and opens nothing, counted as
/// `stale`.
#[tokio::test]
async fn an_event_older_than_max_event_age_is_acknowledged_and_ignored() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let old = now_unix() - 30 * 24 * 3600;
    let r = deliver(&gw, &account_update(WABA, old, disabled("DISABLE"))).await;
    assert_eq!(r.status(), 200);
    assert_eq!(circuit(&gw, WABA).await["state"], "closed");
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "wa_breaker_webhooks_total", &[("result", "stale")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "wa_breaker_webhooks_total", &[("result", "applied")]),
        Some(0.0)
    );
    // One a day old still counts.
    let r = deliver(
        &gw,
        &account_update(WABA, now_unix() - 24 * 3600, disabled("DISABLE")),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(circuit(&gw, WABA).await["state"], "open");
}

/// Issue 25, item 6: an event without `time` is dated `max_event_age` ago, not at its
/// arrival, so replaying a time-less DISABLE after a REINSTATE does not re-open.
#[tokio::test]
async fn a_timeless_replay_after_a_reinstate_does_not_reopen() {
    let fake = FakeCloud::start().await;
    let gw = gateway(&fake, "").await;
    let timeless = json!({"object": "whatsapp_business_account", "entry": [
        {"id": WABA, "changes": [change("account_update", disabled("DISABLE"))]}
    ]});
    assert_eq!(deliver(&gw, &timeless).await.status(), 200);
    assert_eq!(
        circuit(&gw, WABA).await["state"],
        "open",
        "nothing newer: it opens"
    );
    let r = deliver(
        &gw,
        &account_update(WABA, now_unix(), disabled("REINSTATE")),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(circuit(&gw, WABA).await["state"], "closed");
    assert_eq!(deliver(&gw, &timeless).await.status(), 200);
    assert_eq!(
        circuit(&gw, WABA).await["state"],
        "closed",
        "the replay orders before the REINSTATE"
    );
}

/// A signed batch far larger than Meta sends (50 000 entries, ~12 MB, `max_body` raised)
/// is checked, parsed and applied off the worker: a send made on the same worker
/// (`workers = 1`) while the batch is applied is answered in a fraction of the batch's
/// time. Applied inline, the send waited for the whole apply (1.7 s of the batch's 2.2 s
/// here; a 100 000-entry batch held every connection of its worker for 3.9–6.7 s).
async fn a_huge_signed_batch_does_not_hold_up_sends(engine: Engine) {
    let fake = FakeCloud::start().await;
    let cfg = format!(
        "{}\nworkers = 1\n{}",
        engine.config_line(),
        config(&fake.url(), "max_body = 104857600", "")
    );
    let gw = Gateway::start(&cfg).await;
    let t = now_unix();
    let entries: Vec<Value> = (0..50_000u64)
        .map(|i| {
            json!({"id": (300_000_000_000_000u64 + i).to_string(), "time": t, "changes": [{
                "field": "account_update",
                "value": {"event": "ACCOUNT_RESTRICTION", "restriction_info": [
                    {"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": t + 3600}]}
            }]})
        })
        .collect();
    let body = json!({"object": "whatsapp_business_account", "entry": entries}).to_string();
    let started = std::time::Instant::now();
    let batch = async {
        let r = gw.webhook_post("/webhook", SECRET, body.as_bytes()).await;
        (r.status().as_u16(), started.elapsed())
    };
    let send = async {
        // Once the batch's body is on its way.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t0 = std::time::Instant::now();
        let r = gw.send_str(PHONE, TEXT_BODY).await;
        (r.status().as_u16(), t0.elapsed())
    };
    let ((batch_status, batch_took), (send_status, send_took)) = tokio::join!(batch, send);
    let name = engine.name();
    assert_eq!((batch_status, send_status), (200, 200), "{name}");
    assert!(
        send_took * 4 < batch_took,
        "{name}: the send took {send_took:?} while the batch took {batch_took:?}: it waited for the apply"
    );
    // And it was applied: the first and the last entry's restriction opened their WABAs.
    for id in ["300000000000000", "300000000049999"] {
        assert_eq!(circuit(&gw, id).await["state"], "open", "{name}: {id}");
    }
}

both_engines!(a_huge_signed_batch_does_not_hold_up_sends);
