//! Tables and details for people, from the admin API's JSON (read loosely: a field the
//! gateway does not send shows as `-`, so an older or newer gateway still prints).

use chrono::{DateTime, Utc};
use serde_json::Value;

/// What a missing value prints as.
const NONE: &str = "-";
/// Longest reason in a table row.
const REASON_WIDTH: usize = 70;

/// The id an operator passes back: the WABA id, `phone:{id}`, the template or country key.
pub fn circuit_id(c: &Value) -> String {
    let waba = c["waba_id"].as_str().unwrap_or_default();
    if let Some(t) = c.get("template").filter(|t| t.is_object()) {
        return format!(
            "template:{waba}:{}:{}",
            t["name"].as_str().unwrap_or_default(),
            t["language"].as_str().unwrap_or_default()
        );
    }
    if let Some(code) = c["country"].as_str() {
        return format!("country:{waba}:{code}");
    }
    match c["phone_number_id"].as_str() {
        Some(p) => format!("phone:{p}"),
        None => waba.to_string(),
    }
}

fn is_open(c: &Value) -> bool {
    c["state"] == "open"
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => NONE.to_string(),
        Value::String(s) if s.is_empty() => NONE.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An RFC 3339 time to the second, `-` when absent.
fn time(v: &Value) -> String {
    match v
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
    {
        Some(t) => t
            .with_timezone(&Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => text(v),
    }
}

/// `3m ago` / `in 1h 59m`, to the minute past an hour.
fn relative(v: &Value, now: DateTime<Utc>) -> Option<String> {
    let t = DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()?
        .with_timezone(&Utc);
    let secs = (t - now).num_seconds();
    let mut abs = secs.unsigned_abs();
    if abs >= 3600 {
        abs -= abs % 60;
    }
    let d = humantime::format_duration(std::time::Duration::from_secs(abs));
    Some(match secs {
        0 => "now".to_string(),
        s if s > 0 => format!("in {d}"),
        _ => format!("{d} ago"),
    })
}

fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Rows under a header, columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let mut s = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                s.push_str(&cell);
            } else {
                let pad = width[i] - cell.chars().count();
                s.push_str(&cell);
                s.push_str(&" ".repeat(pad + 2));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// `circuits list`: open circuits first, then by id.
pub fn circuit_table(list: &Value) -> String {
    let mut items: Vec<&Value> = list
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if items.is_empty() {
        return "no circuits\n".to_string();
    }
    items.sort_by_key(|c| (!is_open(c), circuit_id(c)));
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|c| {
            vec![
                circuit_id(c),
                text(&c["state"]),
                text(&c["scope"]),
                text(&c["code"]),
                text(&c["source"]),
                if is_open(c) {
                    time(&c["opened_at"])
                } else {
                    NONE.into()
                },
                if is_open(c) {
                    time(&c["until"])
                } else {
                    NONE.into()
                },
                clip(&text(&c["reason"]), REASON_WIDTH),
            ]
        })
        .collect();
    table(
        &[
            "CIRCUIT", "STATE", "SCOPE", "CODE", "SOURCE", "SINCE", "UNTIL", "REASON",
        ],
        &rows,
    )
}

/// One line for an evidence object: what to paste into an appeal.
pub fn evidence(e: &Value) -> String {
    match e["kind"].as_str() {
        Some("send") => {
            let mut s = format!(
                "send answered {}: {}",
                text(&e["code"]),
                text(&e["message"])
            );
            if let Some(f) = e["fbtrace_id"].as_str() {
                s.push_str(&format!("; fbtrace_id {f}"));
            }
            if let Some(p) = e["phone_number_id"].as_str() {
                s.push_str(&format!("; phone number {p}"));
            }
            s
        }
        Some("webhook") => format!(
            "webhook {} {} (entry {})",
            text(&e["field"]),
            text(&e["event"]),
            text(&e["entry_id"])
        ),
        Some("health") => format!(
            "Health Status: can_send_message {}",
            text(&e["health_status"]["can_send_message"])
        ),
        Some("admin") => format!("operator: {}", text(&e["reason"])),
        Some("expiry") => format!("until {} passed", time(&e["until"])),
        _ => e.to_string(),
    }
}

/// `circuits show`: every field, the last evidence and the history.
pub fn circuit_detail(c: &Value, now: DateTime<Utc>) -> String {
    let mut out = String::new();
    let mut field = |k: &str, v: String| out.push_str(&format!("{k:<10}{v}\n"));
    field("circuit", circuit_id(c));
    let with_relative = |v: &Value| match relative(v, now) {
        Some(r) => format!("{} ({r})", time(v)),
        None => time(v),
    };
    field("state", text(&c["state"]));
    if c.get("waba_id").is_some_and(|w| !text(w).eq(NONE)) {
        field("waba", text(&c["waba_id"]));
    }
    if let Some(p) = c["phone_number_id"].as_str() {
        field("phone", p.to_string());
    }
    field("scope", text(&c["scope"]));
    field("code", text(&c["code"]));
    field("source", text(&c["source"]));
    if is_open(c) {
        field("since", with_relative(&c["opened_at"]));
        field("until", with_relative(&c["until"]));
    }
    field("updated", time(&c["updated_at"]));
    field("reason", text(&c["reason"]));
    let history: Vec<&Value> = c["history"]
        .as_array()
        .map(|h| h.iter().collect())
        .unwrap_or_default();
    if let Some(e) = history
        .iter()
        .rev()
        .find_map(|t| t.get("evidence").filter(|e| e.is_object()))
    {
        field("evidence", evidence(e));
    }
    if !history.is_empty() {
        out.push_str("history (oldest first):\n");
        for t in history {
            let to = if t["note"] == true {
                "note".to_string()
            } else {
                text(&t["to"])
            };
            out.push_str(&format!(
                "  {}  {:<6}  {:<7}  {}\n",
                time(&t["at"]),
                to,
                text(&t["source"]),
                text(&t["reason"])
            ));
            if let Some(e) = t.get("evidence").filter(|e| e.is_object()) {
                out.push_str(&format!("      evidence: {}\n", evidence(e)));
            }
        }
    }
    out
}

/// The one line after an open or close.
pub fn circuit_line(c: &Value) -> String {
    let mut s = format!("{}: {}", circuit_id(c), text(&c["state"]));
    if is_open(c) {
        s.push_str(&format!(
            " ({}, code {}",
            text(&c["scope"]),
            text(&c["code"])
        ));
        if !c["until"].is_null() {
            s.push_str(&format!(", until {}", time(&c["until"])));
        }
        s.push(')');
    }
    s
}

/// `accounts list`.
pub fn account_table(list: &Value) -> String {
    let items: Vec<&Value> = list
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    if items.is_empty() {
        return "no phone numbers known\n".to_string();
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|m| {
            vec![
                text(&m["phone_number_id"]),
                text(&m["waba_id"]),
                text(&m["source"]),
                time(&m["updated_at"]),
            ]
        })
        .collect();
    table(&["PHONE NUMBER", "WABA", "SOURCE", "UPDATED"], &rows)
}

/// The one line after a mapping change.
pub fn account_line(m: &Value) -> String {
    match m["waba_id"].as_str() {
        Some(w) => format!(
            "{} → WABA {w} (source {})",
            text(&m["phone_number_id"]),
            text(&m["source"])
        ),
        None => format!("{}: mapping removed", text(&m["phone_number_id"])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn open_circuits_come_first_with_their_ids() {
        let list = json!([
            {"waba_id": "1", "state": "closed", "scope": "all_sends", "source": "admin", "reason": "close by operator"},
            {"waba_id": "", "phone_number_id": "9", "state": "open", "scope": "all_sends", "code": 368,
             "source": "send", "opened_at": "2026-12-06T22:57:28.123Z", "reason": "(#368) blocked"},
            {"waba_id": "2", "template": {"name": "order_update", "language": "en_US"}, "state": "open",
             "scope": "business_initiated", "code": 132015, "source": "webhook", "reason": "PAUSED",
             "until": "2026-12-07T01:57:28Z", "opened_at": "2026-12-06T22:57:28Z"}
        ]);
        let t = circuit_table(&list);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("CIRCUIT"), "{t}");
        assert!(lines[1].starts_with("phone:9 "), "{t}");
        assert!(lines[1].contains("2026-12-06T22:57:28Z"), "{t}");
        assert!(lines[2].starts_with("template:2:order_update:en_US"), "{t}");
        assert!(lines[3].starts_with("1 "), "{t}");
        assert_eq!(circuit_table(&json!([])), "no circuits\n");
        let country = json!({"waba_id": "2", "country": "49", "country_regions": "DE"});
        assert_eq!(circuit_id(&country), "country:2:49");
    }

    #[test]
    fn detail_shows_the_evidence_to_appeal_with() {
        let c = json!({"waba_id": "102290129340398", "state": "open", "scope": "all_sends", "code": 368,
            "source": "send", "opened_at": "2026-12-06T22:00:00Z", "updated_at": "2026-12-06T22:00:00Z",
            "reason": "(#368) Temporarily blocked for policies violations",
            "history": [{"at": "2026-12-06T22:00:00Z", "to": "open", "source": "send", "reason": "(#368)",
                "evidence": {"kind": "send", "code": 368, "message": "(#368) Temporarily blocked",
                             "fbtrace_id": "AbCdEfGhIjK", "phone_number_id": "106540352242922"}}]});
        let now = DateTime::parse_from_rfc3339("2026-12-06T23:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let d = circuit_detail(&c, now);
        assert!(
            d.contains("since     2026-12-06T22:00:00Z (1h 30m ago)"),
            "{d}"
        );
        assert!(d.contains("fbtrace_id AbCdEfGhIjK"), "{d}");
        assert!(d.contains("history (oldest first):"), "{d}");
        assert_eq!(
            circuit_line(&c),
            "102290129340398: open (all_sends, code 368)"
        );
    }
}
