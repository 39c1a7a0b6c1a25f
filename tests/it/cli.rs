//! The operator's CLI (`wa-breaker circuits …`, `wa-breaker accounts …`) against a running
//! gateway's admin API over real sockets: every command, table and `--json` output, each
//! exit code, the token from the environment, a file or the config — and never the token
//! in any output or error.

use std::process::Output;
use std::time::Duration;

use crate::support::*;
use chrono::{DateTime, Utc};
use serde_json::Value;

const W: &str = "102290129340398";
const W2: &str = "102290129340399";
const P1: &str = "106540352242922";
const P3: &str = "106540352242924";
const P9: &str = "106540352242999";
const ADMIN: &str = "cli-admin-token-0123456789";
const LIMIT: Duration = Duration::from_secs(120);

fn config(upstream: &str) -> String {
    format!(
        r#"listen = "{{listen}}"
admin_listen = "{{admin_listen}}"
state_dir = "{{state_dir}}"
upstream = "{upstream}"
admin_token = "{ADMIN}"

[[accounts]]
waba_id = "{W}"
phone_number_ids = ["{P1}"]

[[accounts]]
waba_id = "{W2}"
phone_number_ids = ["{P3}"]
"#
    )
}

async fn bounded<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test exceeded its time limit");
}

/// One CLI run (off the test's runtime): exit code, stdout, stderr. Every output is
/// checked for the admin token.
async fn cli(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let envs: Vec<(String, String)> = envs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let out: Output = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let e: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Gateway::run_cli(&a, &e)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    for (what, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(
            !text.contains(ADMIN) && !text.contains("wrong-token-0123456789"),
            "a token leaked to {what}:\n{text}"
        );
    }
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// `cli` with `--admin-url` and the token from `WA_BREAKER_ADMIN_TOKEN`.
async fn admin(gw: &Gateway, args: &[&str]) -> (i32, String, String) {
    let url = gw.admin_url();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--admin-url", &url]);
    cli(&all, &[("WA_BREAKER_ADMIN_TOKEN", ADMIN)]).await
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

fn time(v: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(v.as_str().unwrap_or_else(|| panic!("no time: {v}")))
        .unwrap()
        .with_timezone(&Utc)
}

/// Every circuits command, in both outputs, against one gateway.
#[tokio::test]
async fn circuits_list_show_open_close() {
    bounded(async {
        let fake = FakeCloud::start().await;
        fake.on_phone(P1, Reply::blocked_368());
        let gw = Gateway::start(&config(&fake.url())).await;

        let (code, out, _) = admin(&gw, &["circuits", "list"]).await;
        assert_eq!((code, out.as_str()), (0, "no circuits\n"));
        let (code, out, _) = admin(&gw, &["circuits", "list", "--json"]).await;
        assert_eq!(code, 0);
        assert_eq!(json(&out), serde_json::json!([]));

        // A send trips W.
        assert_eq!(gw.send(P1, &text_body()).await.status(), 403);

        // The contract: `circuits list --json --admin-url URL` prints the circuits as JSON.
        let url = gw.admin_url();
        let (code, out, _) = cli(
            &["circuits", "list", "--json", "--admin-url", &url],
            &[("WA_BREAKER_ADMIN_TOKEN", ADMIN)],
        )
        .await;
        assert_eq!(code, 0);
        let list = json(&out);
        assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
        assert_eq!(list[0]["waba_id"], W);
        assert_eq!(list[0]["state"], "open");
        assert_eq!(list[0]["code"], 368);

        let (code, out, _) = admin(&gw, &["circuits", "list"]).await;
        assert_eq!(code, 0);
        let mut lines = out.lines();
        let header = lines.next().unwrap();
        for col in [
            "CIRCUIT", "STATE", "SCOPE", "CODE", "SOURCE", "SINCE", "UNTIL", "REASON",
        ] {
            assert!(header.contains(col), "{out}");
        }
        let row = lines.next().unwrap();
        assert!(row.starts_with(W), "{out}");
        for cell in [
            "open",
            "all_sends",
            "368",
            "send",
            "(#368) Temporarily blocked",
        ] {
            assert!(row.contains(cell), "{cell}: {out}");
        }
        let (_, out, _) = admin(&gw, &["circuits", "list", "--state", "closed"]).await;
        assert_eq!(out, "no circuits\n");

        // `--phone`: the circuits guarding that number (its WABA's: open for P1, closed for
        // P3 of the other WABA), and a usage error for something that is not an id.
        for (phone, waba, state) in [(P1, W, "open"), (P3, W2, "closed")] {
            let (code, out, _) =
                admin(&gw, &["circuits", "list", "--phone", phone, "--json"]).await;
            assert_eq!(code, 0);
            let by_phone = json(&out);
            assert_eq!(by_phone.as_array().map(Vec::len), Some(1), "{by_phone}");
            assert_eq!(
                (&by_phone[0]["waba_id"], &by_phone[0]["state"]),
                (&serde_json::json!(waba), &serde_json::json!(state)),
                "{phone}: {by_phone}"
            );
        }
        let (code, _, err) = admin(&gw, &["circuits", "list", "--phone", "+1 555"]).await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("not a numeric phone-number id"), "{err}");

        let (code, out, _) = admin(&gw, &["circuits", "show", W]).await;
        assert_eq!(code, 0);
        assert!(out.contains("state     open"), "{out}");
        assert!(
            out.contains("fbtrace_id AbCdEfGhIjK"),
            "the appeal evidence: {out}"
        );
        assert!(out.contains("history (oldest first):"), "{out}");
        let (_, out, _) = admin(&gw, &["circuits", "show", W, "--json"]).await;
        assert_eq!(
            json(&out)["history"][0]["evidence"]["fbtrace_id"],
            FBTRACE_ID
        );

        // Close after the appeal.
        let (code, out, _) =
            admin(&gw, &["circuits", "close", W, "--reason", "appeal granted"]).await;
        assert_eq!(code, 0);
        assert_eq!(out, format!("{W}: closed\n"));
        let (_, c) = gw.circuit(ADMIN, W).await;
        assert_eq!(c["state"], "closed");
        assert_eq!(c["source"], "admin");
        assert!(c.to_string().contains("appeal granted"), "{c}");
        assert_eq!(
            gw.send(P1, &text_body()).await.status(),
            403,
            "Meta's own again"
        );
        let (_, c) = gw.circuit(ADMIN, W).await;
        assert_eq!(c["state"], "open", "re-tripped by the next send");

        // Open with a scope and an end.
        let until = (Utc::now() + chrono::Duration::hours(3))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (code, out, _) = admin(
            &gw,
            &[
                "circuits",
                "open",
                W2,
                "--reason",
                "pausing campaigns",
                "--scope",
                "business_initiated",
                "--until",
                &until,
            ],
        )
        .await;
        assert_eq!(code, 0);
        assert!(
            out.starts_with(&format!("{W2}: open (business_initiated, code 368, until ")),
            "{out}"
        );
        let (_, c) = gw.circuit(ADMIN, W2).await;
        assert_eq!(c["scope"], "business_initiated");
        assert_eq!(
            time(&c["until"]).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            until
        );
        let (code, out, _) = admin(&gw, &["circuits", "close", W2, "--json"]).await;
        assert_eq!(code, 0);
        assert_eq!(json(&out)["state"], "closed");

        // A phone number's own circuit.
        let phone = format!("phone:{P9}");
        let (code, out, _) = admin(&gw, &["circuits", "open", &phone, "--code", "133010"]).await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(out, format!("{phone}: open (all_sends, code 133010)\n"));
        let (code, _, _) = admin(&gw, &["circuits", "close", &phone]).await;
        assert_eq!(code, 0);
    })
    .await
}

/// `--for 2h` is sent as `{"for": "2h"}` (issue 23's contract). A gateway that does not
/// know `for` yet answers 400; the CLI then sends the same end as `until` and says so. A
/// gateway with the console page (same issue) must take `for` itself: this test fails if
/// the two halves of the issue disagree on the field.
#[tokio::test]
async fn open_for_a_duration() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let gw = Gateway::start(&config(&fake.url())).await;
        let page = gw.admin_get("/", None).await;
        let console = page.status() == 200
            && page
                .headers()
                .get("content-type")
                .is_some_and(|v| v.to_str().unwrap_or_default().starts_with("text/html"));

        let before = Utc::now();
        let (code, out, err) = admin(&gw, &["circuits", "open", W, "--for", "2h"]).await;
        assert_eq!(code, 0, "{out}{err}");
        let fell_back = err.contains("does not know \"for\"");
        assert_eq!(
            fell_back, !console,
            "a gateway with the console page takes `for` itself; one without falls back: {err}"
        );
        let (_, c) = gw.circuit(ADMIN, W).await;
        let until = time(&c["until"]);
        let want = before + chrono::Duration::hours(2);
        assert!(
            until >= want - chrono::Duration::seconds(5)
                && until <= want + chrono::Duration::seconds(60),
            "until {until}, wanted about {want}"
        );
        let (code, _, err) = admin(&gw, &["circuits", "open", W, "--for", "0s"]).await;
        assert_eq!(code, 2, "{err}");
        let (code, _, err) = admin(
            &gw,
            &[
                "circuits",
                "open",
                W,
                "--for",
                "2h",
                "--until",
                "2030-01-01T00:00:00Z",
            ],
        )
        .await;
        assert_eq!(code, 2, "--for and --until exclude each other: {err}");
    })
    .await
}

/// accounts list / set / delete.
#[tokio::test]
async fn accounts_list_set_delete() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let gw = Gateway::start(&config(&fake.url())).await;

        let (code, out, _) = admin(&gw, &["accounts", "list"]).await;
        assert_eq!(code, 0);
        assert!(out.starts_with("PHONE NUMBER"), "{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with(P1) && l.contains(W) && l.contains("config")),
            "{out}"
        );

        let (code, out, _) = admin(&gw, &["accounts", "set", P9, W2]).await;
        assert_eq!(code, 0);
        assert_eq!(out, format!("{P9} → WABA {W2} (source admin)\n"));
        let (_, out, _) = admin(&gw, &["accounts", "list", "--json"]).await;
        let list = json(&out);
        assert!(
            list.as_array()
                .unwrap()
                .iter()
                .any(|m| m["phone_number_id"] == P9
                    && m["waba_id"] == W2
                    && m["source"] == "admin"),
            "{list}"
        );
        // The gateway uses it: W2 open answers P9's sends locally.
        admin(&gw, &["circuits", "open", W2]).await;
        let r = gw.send(P9, &text_body()).await;
        assert_eq!(
            r.headers().get("x-wa-breaker").map(|v| v.to_str().unwrap()),
            Some("open")
        );

        let (code, out, _) = admin(&gw, &["accounts", "delete", P9]).await;
        assert_eq!(code, 0);
        assert_eq!(out, format!("{P9}: mapping removed\n"));
        let (code, _, err) = admin(&gw, &["accounts", "delete", P9]).await;
        assert_eq!(code, 1, "nothing left to delete: {err}");
        let (code, _, err) = admin(&gw, &["accounts", "delete", P1]).await;
        assert_eq!(code, 5, "a configured mapping belongs to the file: {err}");
        assert!(err.contains("[[accounts]]"), "{err}");
        let (code, _, _) = admin(&gw, &["accounts", "set", "12x", W]).await;
        assert_eq!(code, 2);
    })
    .await
}

/// Each documented exit code, with a message that says what to do — and no token in it.
#[tokio::test]
async fn exit_codes() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let gw = Gateway::start(&config(&fake.url())).await;
        let url = gw.admin_url();

        // 1: not found.
        let (code, _, err) = admin(&gw, &["circuits", "show", "999999"]).await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("404"), "{err}");
        // 2: usage, checked here or by the gateway.
        let (code, _, _) = admin(&gw, &["circuits", "open", "abc"]).await;
        assert_eq!(code, 2);
        let (code, _, err) = admin(
            &gw,
            &["circuits", "open", W, "--until", "2000-01-01T00:00:00Z"],
        )
        .await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("until must be in the future"), "{err}");
        let (code, _, _) = admin(&gw, &["circuits", "open"]).await;
        assert_eq!(code, 2, "clap: missing ID");
        let (code, _, _) = admin(&gw, &["circuits", "open", W, "--scope", "some"]).await;
        assert_eq!(code, 2);
        // 3: unauthorized — a wrong token, none at all.
        let (code, _, err) = cli(
            &["circuits", "list", "--admin-url", &url],
            &[("WA_BREAKER_ADMIN_TOKEN", "wrong-token-0123456789")],
        )
        .await;
        assert_eq!(code, 3, "{err}");
        assert!(
            err.contains("WA_BREAKER_ADMIN_TOKEN"),
            "says what to set: {err}"
        );
        let (code, _, _) = cli(&["circuits", "list", "--admin-url", &url], &[]).await;
        assert_eq!(code, 3);
        // 4: unreachable.
        let closed = format!("http://127.0.0.1:{}", free_port());
        let (code, _, err) = cli(
            &["circuits", "list", "--admin-url", &closed],
            &[("WA_BREAKER_ADMIN_TOKEN", ADMIN)],
        )
        .await;
        assert_eq!(code, 4, "{err}");
        assert!(err.contains("cannot reach the admin API"), "{err}");
        let (code, _, _) = cli(&["circuits", "list", "--admin-url", "ftp://x"], &[]).await;
        assert_eq!(code, 2);

        // 3 also when the gateway has no admin API at all.
        let bare = Gateway::start(
            &config(&fake.url()).replace(&format!("admin_token = \"{ADMIN}\"\n"), ""),
        )
        .await;
        let (code, _, err) = cli(
            &["circuits", "list", "--admin-url", &bare.admin_url()],
            &[("WA_BREAKER_ADMIN_TOKEN", ADMIN)],
        )
        .await;
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("admin API is disabled"), "{err}");
    })
    .await
}

/// The token from `--token-file`, and URL and token from `--config` alone.
#[tokio::test]
async fn token_from_a_file_or_the_config() {
    bounded(async {
        let fake = FakeCloud::start().await;
        let gw = Gateway::start(&config(&fake.url())).await;
        admin(&gw, &["circuits", "open", W, "--reason", "drill"]).await;

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{ADMIN}\n")).unwrap();
        let url = gw.admin_url();
        let file_s = file.display().to_string();
        let (code, out, _) = cli(
            &[
                "circuits",
                "show",
                W,
                "--admin-url",
                &url,
                "--token-file",
                &file_s,
            ],
            &[],
        )
        .await;
        assert_eq!(code, 0);
        assert!(out.contains("operator: drill"), "{out}");
        // The file wins over the environment.
        let (code, _, _) = cli(
            &[
                "circuits",
                "list",
                "--admin-url",
                &url,
                "--token-file",
                &file_s,
            ],
            &[("WA_BREAKER_ADMIN_TOKEN", "wrong-token-0123456789")],
        )
        .await;
        assert_eq!(code, 0);
        let (code, _, err) = cli(
            &[
                "circuits",
                "list",
                "--admin-url",
                &url,
                "--token-file",
                "/nonexistent/token",
            ],
            &[],
        )
        .await;
        assert_eq!(code, 2, "{err}");

        // On the gateway's host: --config gives admin_listen and admin_token.
        let cfg = gw.config_path().display().to_string();
        let (code, out, err) = cli(&["--config", &cfg, "circuits", "list", "--json"], &[]).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(json(&out)[0]["waba_id"], W);
        let (code, _, _) = cli(&["circuits", "list", "--config", &cfg], &[]).await;
        assert_eq!(code, 0, "--config also after the subcommand");
    })
    .await
}
