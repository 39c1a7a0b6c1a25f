//! Warnings over real sockets (issue 22): Meta's first enforcement steps — a signed
//! ACCOUNT_VIOLATION, a template's quality falling to RED, a template moved to MARKETING,
//! a lowered messaging limit, a scheduled disablement, a restriction on adding numbers, an
//! episode of 131048 answers — are recorded per WABA with their evidence
//! (`/admin/warnings`), counted, and announced to the `[[notify]]` sinks once across two
//! replicas sharing a real redis-server, though Meta delivers them again; sends still flow.

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{json, Value};

const PHONE: &str = "106540352242922";
const WABA: &str = "102290129340398";
const ADMIN: &str = "warn-admin-token-0123456789";
const APP_SECRET: &str = "warn-app-secret-0123";
const SINK_SECRET: &str = "warn-sink-secret-0123";
const LIMIT: Duration = Duration::from_secs(120);

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test exceeded its time limit");
}

fn config(engine_line: &str, upstream: &str, redis_url: Option<&str>, sinks: &str) -> String {
    let redis = redis_url
        .map(|u| {
            format!("redis_url = \"{u}\"\nredis_prefix = \"w\"\nredis_retry_max = \"300ms\"\n")
        })
        .unwrap_or_default();
    format!(
        r#"
listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{upstream}"
admin_token = "{ADMIN}"
log_level = "info,wa_breaker=debug"
{engine_line}
{redis}
[webhook]
app_secret = "{APP_SECRET}"

[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}"]

{sinks}
"#
    )
}

fn sinks(hooks: &FakeCloud, slack: &FakeCloud) -> String {
    format!(
        "[[notify]]\nkind = \"webhook\"\nurl = \"{}/hooks\"\nsecret = \"{SINK_SECRET}\"\nretry_max = \"200ms\"\n\
         [[notify]]\nkind = \"slack\"\nurl = \"{}/services/T0/B0/SLACKPATHSECRET\"\ntransitions = [\"warning\"]\nretry_max = \"200ms\"\n",
        hooks.url(),
        slack.url()
    )
}

async fn post(gw: &Gateway, body: &Value) {
    let bytes = body.to_string().into_bytes();
    let r = post_signed(&format!("{}/webhook", gw.url()), APP_SECRET, &bytes).await;
    assert_eq!(r.status(), 200, "webhook answered {}", r.status());
}

async fn warnings(gw: &Gateway, query: &str) -> Vec<Value> {
    let r = client()
        .get(format!("{}/admin/warnings{query}", gw.admin_url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Vec<Value>>().await.unwrap()
}

async fn wait_warnings(gw: &Gateway, n: usize) -> Vec<Value> {
    let t = Instant::now();
    loop {
        let w = warnings(gw, "").await;
        if w.len() >= n {
            return w;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{n} warnings not seen: {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn counter(gw: &Gateway, kind: &str) -> f64 {
    metric(
        &gw.metrics().await,
        "wa_breaker_warnings_total",
        &[("kind", kind)],
    )
    .unwrap_or(0.0)
}

fn violation_body(t: i64) -> Value {
    account_update(WABA, t, violation("ADULT"))
}

fn quality_body(t: i64) -> Value {
    envelope(vec![entry(
        WABA,
        t,
        vec![change(
            "message_template_quality_update",
            json!({"previous_quality_score": "GREEN", "new_quality_score": "RED",
                   "message_template_id": 806312974732579u64,
                   "message_template_name": "order_update", "message_template_language": "en_US"}),
        )],
    )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_violation_and_a_red_template_reach_the_sinks_once_across_two_replicas() {
    bounded(async {
        let redis = RedisServer::start();
        let fake = FakeCloud::start().await;
        let hooks = FakeCloud::start_webhook_sink().await;
        let slack = FakeCloud::start_webhook_sink().await;
        let cfg = config("", &fake.url(), Some(&redis.url()), &sinks(&hooks, &slack));
        let a = Gateway::start(&cfg).await;
        let b = Gateway::start(&cfg).await;
        let t = now_unix() - 60;

        // Meta delivers each event to one replica, then again (a redelivery) to the other,
        // once that one has heard of it over Redis.
        post(&a, &violation_body(t)).await;
        wait_warnings(&b, 1).await;
        post(&b, &violation_body(t)).await;
        post(&b, &quality_body(t + 1)).await;
        wait_warnings(&a, 2).await;
        post(&a, &quality_body(t + 1)).await;
        post(&b, &quality_body(t + 1)).await;

        assert!(
            hooks.wait_count(2, Duration::from_secs(5)).await,
            "warnings not announced"
        );
        assert!(slack.wait_count(2, Duration::from_secs(5)).await);
        // Anything a second replica or a redelivery would send arrives within this time.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let got: Vec<Value> = hooks.requests().iter().map(|r| r.json()).collect();
        assert_eq!(got.len(), 2, "once per fleet: {got:?}");
        let kinds: Vec<&str> = got
            .iter()
            .map(|v| v["warning"]["kind"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(kinds, ["account_violation", "template_quality"]);
        for v in &got {
            assert_eq!(v["event"], "warning");
            assert_eq!(v["waba_id"], WABA);
            assert_eq!(v["to"], "closed", "a warning blocks nothing");
            assert_eq!(v["source"], "webhook");
        }
        assert_eq!(got[0]["warning"]["detail"], "ADULT");
        assert_eq!(got[0]["evidence"]["event"], "ACCOUNT_VIOLATION");
        assert_eq!(got[1]["warning"]["template"]["name"], "order_update");
        assert_eq!(got[1]["warning"]["template"]["language"], "en_US");
        assert_eq!(got[1]["warning"]["detail"], "RED (was GREEN)");
        for r in hooks.requests() {
            assert_eq!(
                r.header("x-wa-breaker-signature"),
                Some(sign(SINK_SECRET, &r.body).as_str())
            );
        }
        let texts: Vec<String> = slack
            .requests()
            .iter()
            .map(|r| r.json()["text"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(texts.len(), 2, "{texts:?}");
        assert!(
            texts[0].contains(WABA)
                && texts[0].contains("ACCOUNT_VIOLATION")
                && texts[0].contains("ADULT"),
            "{}",
            texts[0]
        );
        assert!(
            texts[1].contains("order_update (en_US)") && texts[1].contains("RED"),
            "{}",
            texts[1]
        );
        eprintln!("slack text:\n{}", texts[1]);

        // Recorded with its evidence on both replicas; counted once in the fleet.
        for gw in [&a, &b] {
            let w = warnings(gw, "").await;
            assert_eq!(w.len(), 2, "{w:?}");
            assert_eq!(w[0]["kind"], "template_quality", "newest first");
            assert_eq!(w[0]["template"], "order_update");
            assert!(w[0].get("evidence").is_none(), "the list is flat");
            let r = client()
                .get(format!("{}/admin/warnings/{WABA}", gw.admin_url()))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap();
            let one: Vec<Value> = r.json().await.unwrap();
            assert_eq!(
                one[1]["evidence"]["value"]["violation_info"]["violation_type"],
                "ADULT"
            );
            assert_eq!(warnings(gw, "?kind=account_violation").await.len(), 1);
        }
        for kind in ["account_violation", "template_quality"] {
            assert_eq!(
                counter(&a, kind).await + counter(&b, kind).await,
                1.0,
                "{kind}"
            );
        }
        // Sends still flow, the template's too.
        for gw in [&a, &b] {
            assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 200);
            let c = gw.circuit(ADMIN, WABA).await.1;
            assert_eq!(c["state"], "closed", "{c}");
        }
        for gw in [&a, &b] {
            let logs = gw.logs();
            assert!(!logs.contains("SLACKPATHSECRET") && !logs.contains(SINK_SECRET));
        }
    })
    .await;
}

/// The other warning kinds from signed webhooks, and a bad query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn category_limit_disable_and_restriction_warnings_are_recorded() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let hooks = FakeCloud::start_webhook_sink().await;
        let slack = FakeCloud::start_webhook_sink().await;
        let gw = Gateway::start(&config("", &fake.url(), None, &sinks(&hooks, &slack))).await;
        let t = now_unix() - 60;
        let capability = |t: i64, tier: &str| {
            envelope(vec![entry(
                WABA,
                t,
                vec![change(
                    "business_capability_update",
                    json!({"max_daily_conversations_per_business": tier, "max_phone_numbers_per_business": 2}),
                )],
            )])
        };
        // The first limit heard of, then a raise: notes. A lowering: a warning.
        post(&gw, &capability(t, "TIER_2K")).await;
        post(&gw, &capability(t + 1, "TIER_10K")).await;
        post(&gw, &capability(t + 2, "TIER_250")).await;
        post(
            &gw,
            &envelope(vec![entry(
                WABA,
                t + 3,
                vec![change(
                    "template_category_update",
                    json!({"message_template_id": 1, "message_template_name": "order_update",
                           "message_template_language": "en_US", "correct_category": "MARKETING",
                           "category_update_timestamp": t + 86_400}),
                )],
            )]),
        )
        .await;
        post(&gw, &account_update(WABA, t + 4, disabled("SCHEDULE_FOR_DISABLE"))).await;
        post(
            &gw,
            &account_update(WABA, t + 5, restriction(&["RESTRICTED_ADD_PHONE_NUMBER_ACTION"], json!(t + 86_400))),
        )
        .await;
        // Quality back to GREEN is recorded, not a warning.
        post(
            &gw,
            &envelope(vec![entry(
                WABA,
                t + 6,
                vec![change(
                    "message_template_quality_update",
                    json!({"previous_quality_score": "YELLOW", "new_quality_score": "GREEN",
                           "message_template_name": "order_update", "message_template_language": "en_US"}),
                )],
            )]),
        )
        .await;

        let w = wait_warnings(&gw, 4).await;
        let kinds: Vec<&str> = w.iter().map(|v| v["kind"].as_str().unwrap_or("")).collect();
        assert_eq!(
            kinds,
            ["restriction", "disable_scheduled", "template_category", "messaging_limit"],
            "{w:?}"
        );
        assert_eq!(w[0]["detail"], "RESTRICTED_ADD_PHONE_NUMBER_ACTION");
        assert_eq!(w[3]["detail"], "TIER_10K -> TIER_250");
        assert!(w[2]["detail"].as_str().unwrap_or("").starts_with("to be moved to MARKETING on "), "{}", w[2]);
        assert!(hooks.wait_count(4, Duration::from_secs(5)).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(hooks.count(), 4, "only the warnings are announced");
        // Nothing is blocked.
        assert_eq!(gw.send_str(PHONE, TEMPLATE_BODY).await.status(), 200);
        assert_eq!(gw.circuit(ADMIN, WABA).await.1["state"], "closed");
        // Bad filters are refused with what is accepted.
        let r = client()
            .get(format!("{}/admin/warnings?kind=bogus", gw.admin_url()))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        assert!(r.text().await.unwrap().contains("account_violation"));
        let r = client()
            .get(format!("{}/admin/warnings", gw.admin_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "the list needs the admin token");
    })
    .await;
}

/// 131048 answers: forwarded as Meta sent them; the first of an episode is one warning
/// naming the phone number, the rest of the episode none.
async fn spam_rate_answers_warn_once_per_episode(engine: Engine) {
    bounded(async {
        let fake = FakeCloud::start().await;
        let hooks = FakeCloud::start_webhook_sink().await;
        let slack = FakeCloud::start_webhook_sink().await;
        let gw = Gateway::start(&config(
            engine.config_line(),
            &fake.url(),
            None,
            &sinks(&hooks, &slack),
        ))
        .await;
        fake.on_phone(
            PHONE,
            Reply::graph_error(400, 131048, "Spam rate limit hit"),
        );
        for _ in 0..3 {
            let r = gw.send_str(PHONE, TEXT_BODY).await;
            assert_eq!(r.status(), 400, "{}", engine.name());
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], 131048, "Meta's answer, unchanged");
        }
        assert_eq!(fake.count_for_phone(PHONE), 3, "nothing held");
        assert!(hooks.wait_count(1, Duration::from_secs(5)).await);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = hooks.requests();
        assert_eq!(got.len(), 1, "one warning per episode ({})", engine.name());
        let v = got[0].json();
        assert_eq!(v["warning"]["kind"], "spam_rate");
        assert_eq!(v["warning"]["phone_number_id"], PHONE);
        assert_eq!(v["source"], "send");
        assert_eq!(v["evidence"]["code"], 131048);
        let w = warnings(&gw, "?kind=spam_rate").await;
        assert_eq!(w.len(), 1);
        assert_eq!(w[0]["waba_id"], WABA);
        assert_eq!(counter(&gw, "spam_rate").await, 1.0);
        fake.on_phone(PHONE, Reply::ok_send());
        assert_eq!(gw.send_str(PHONE, TEXT_BODY).await.status(), 200);
    })
    .await;
}

/// A `messages` change reporting template statuses (`sent`, priced `marketing`) for `users`.
fn statuses(t: i64, users: &[u64], category: &str) -> Value {
    let st: Vec<Value> = users
        .iter()
        .map(|u| {
            json!({"id": format!("wamid.{u}"), "status": "sent", "timestamp": t.to_string(),
                   "recipient_id": u.to_string(),
                   "pricing": {"billable": true, "pricing_model": "PMP", "category": category}})
        })
        .collect();
    envelope(vec![entry(
        WABA,
        t,
        vec![change(
            "messages",
            json!({"messaging_product": "whatsapp",
                   "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE},
                   "statuses": st}),
        )],
    )])
}

async fn gauge(gw: &Gateway, name: &str) -> Option<f64> {
    metric(&gw.metrics().await, name, &[("waba_id", WABA)])
}

async fn wait_gauge(gw: &Gateway, name: &str, want: f64) {
    let t = Instant::now();
    while gauge(gw, name).await != Some(want) {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{name} not {want}: {:?}",
            gauge(gw, name).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two replicas hear different statuses of one WABA: the fleet's count (Redis) reaches 80 %
/// and then 100 % of the operator's limit, each announced once; replies in a service
/// window and repeats are not new users; nothing is blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_counts_template_reach_and_warns_at_80_and_100_percent() {
    bounded(async {
        let redis = RedisServer::start();
        let fake = FakeCloud::start().await;
        let hooks = FakeCloud::start_webhook_sink().await;
        let slack = FakeCloud::start_webhook_sink().await;
        let extra = format!(
            "{}[messaging_limit.limits]\n\"{WABA}\" = 10\n",
            sinks(&hooks, &slack)
        );
        let cfg = config("", &fake.url(), Some(&redis.url()), &extra);
        let a = Gateway::start(&cfg).await;
        let b = Gateway::start(&cfg).await;
        let t = now_unix() - 30;
        // Each replica counts asynchronously: wait for one's count before the other's
        // delivery, as Meta's deliveries are spread out in time.
        post(&a, &statuses(t, &[1, 2, 3, 4, 5], "marketing")).await;
        wait_gauge(&a, "wa_breaker_messaging_limit_users", 5.0).await;
        post(&b, &statuses(t + 1, &[20, 21, 22, 23], "service")).await;
        post(&b, &statuses(t + 1, &[1, 2, 6, 7], "utility")).await;
        wait_gauge(&b, "wa_breaker_messaging_limit_users", 7.0).await;
        assert_eq!(gauge(&b, "wa_breaker_messaging_limit").await, Some(10.0));
        assert_eq!(hooks.count(), 0, "70 %: nothing yet");
        post(&a, &statuses(t + 2, &[8], "authentication")).await;
        wait_gauge(&a, "wa_breaker_messaging_limit_users", 8.0).await;
        assert!(
            hooks.wait_count(1, Duration::from_secs(5)).await,
            "80 % not announced"
        );
        post(&b, &statuses(t + 3, &[3, 9], "marketing")).await;
        wait_gauge(&b, "wa_breaker_messaging_limit_users", 9.0).await;
        post(&a, &statuses(t + 4, &[10, 11], "marketing")).await;
        assert!(
            hooks.wait_count(2, Duration::from_secs(5)).await,
            "100 % not announced"
        );
        post(&b, &statuses(t + 5, &[12], "marketing")).await;
        wait_gauge(&b, "wa_breaker_messaging_limit_users", 12.0).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got: Vec<Value> = hooks.requests().iter().map(|r| r.json()).collect();
        let details: Vec<&str> = got
            .iter()
            .map(|v| v["warning"]["detail"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            details,
            [
                "80% of 10: 8 of 10 unique users in 24 h",
                "100% of 10: 11 of 10 unique users in 24 h"
            ],
            "each level once in the fleet"
        );
        assert!(got
            .iter()
            .all(|v| v["warning"]["kind"] == "messaging_budget"));
        assert_eq!(
            warnings(&a, "?kind=messaging_budget").await.len(),
            2,
            "recorded on the shared record"
        );
        assert_eq!(
            a.send_str(PHONE, TEMPLATE_BODY).await.status(),
            200,
            "never a block"
        );
    })
    .await;
}

fn template_send(name: &str) -> String {
    json!({"messaging_product": "whatsapp", "to": "15551234567", "type": "template",
           "template": {"name": name, "language": {"code": "en_US"}}})
    .to_string()
}

fn approved(t: i64, name: &str, category: &str) -> Value {
    envelope(vec![entry(
        WABA,
        t,
        vec![change(
            "message_template_status_update",
            json!({"event": "APPROVED", "message_template_id": 1, "message_template_name": name,
                   "message_template_language": "en_US", "message_template_category": category,
                   "reason": "NONE"}),
        )],
    )])
}

/// Category scopes, once categories are known: a warning an operator opted in to holds
/// the WABA's MARKETING template sends (and nothing else); a utility-templates
/// restriction holds UTILITY template sends (and nothing else). Templates of unknown
/// category are forwarded.
async fn category_scopes_hold_only_their_templates(engine: Engine) {
    bounded(async {
        let fake = FakeCloud::start().await;
        let name = engine.name();
        let warnings = "[warnings]\nhold_marketing = [\"template_quality\"]\nhold_for = \"1h\"\n";
        let gw = Gateway::start(&config(engine.config_line(), &fake.url(), None, warnings)).await;
        let t = now_unix() - 60;
        post(&gw, &approved(t, "promo_offer", "MARKETING")).await;
        post(&gw, &approved(t, "order_update", "UTILITY")).await;
        let status = |body: String| {
            let gw = &gw;
            async move { gw.send_str(PHONE, &body).await.status().as_u16() }
        };
        assert_eq!(
            status(template_send("promo_offer")).await,
            200,
            "{name}: no hold yet"
        );

        // A RED template (the utility one): the opted-in hold holds MARKETING templates.
        post(&gw, &quality_body(t + 1)).await;
        let t0 = Instant::now();
        while gw.circuit(ADMIN, WABA).await.1["state"] != "open" {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{name}: the hold did not open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = gw.circuit(ADMIN, WABA).await.1;
        assert_eq!(c["scope"], "marketing_templates", "{name}: {c}");
        assert!(c["until"].is_string(), "{name}: {c}");
        let before = fake.count_for_phone(PHONE);
        let r = gw.send_str(PHONE, &template_send("promo_offer")).await;
        assert_eq!(r.status(), 403, "{name}");
        assert_eq!(r.headers()["x-wa-breaker"], "open");
        assert_eq!(
            fake.count_for_phone(PHONE),
            before,
            "{name}: not sent to Meta"
        );
        for body in [
            template_send("order_update"),
            template_send("not_categorized"),
            TEXT_BODY.to_string(),
        ] {
            assert_eq!(status(body.clone()).await, 200, "{name}: {body}");
        }
        gw.admin_post(&format!("/admin/circuits/{WABA}/close"), Some(ADMIN), None)
            .await;

        // RESTRICTED_UTILITY_TEMPLATES: utility templates held, marketing ones flow.
        post(
            &gw,
            &account_update(
                WABA,
                now_unix() + 1,
                restriction(&["RESTRICTED_UTILITY_TEMPLATES"], json!(now_unix() + 3600)),
            ),
        )
        .await;
        let c = gw.circuit(ADMIN, WABA).await.1;
        assert_eq!(
            (c["state"].as_str(), c["scope"].as_str()),
            (Some("open"), Some("utility_templates")),
            "{name}: {c}"
        );
        assert_eq!(status(template_send("order_update")).await, 403, "{name}");
        for body in [
            template_send("promo_offer"),
            template_send("not_categorized"),
            TEXT_BODY.to_string(),
        ] {
            assert_eq!(status(body.clone()).await, 200, "{name}: {body}");
        }
    })
    .await;
}

both_engines!(
    spam_rate_answers_warn_once_per_episode,
    category_scopes_hold_only_their_templates,
);
