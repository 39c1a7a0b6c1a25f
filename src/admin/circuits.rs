//! `/admin/circuits…`: list (by state, page, phone number), one circuit, open and close.

use chrono::{DateTime, Utc};
use http::{Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::Value;

use super::{json, json_error, read_json, Admin};
use crate::circuit::country::KEY_PREFIX as COUNTRY_KEY_PREFIX;
use crate::circuit::template::KEY_PREFIX as TEMPLATE_KEY_PREFIX;
use crate::circuit::{
    key, Action, Change, Circuit, Evidence, Scope, Source, TemplateRef, PHONE_KEY_PREFIX,
};
use crate::common::Body;
use crate::graph::GraphId;

/// A circuit as the admin API shows it: `waba_id` is `null` for a phone number's circuit
/// whose WABA is not known yet (the stores keep it as `""`).
fn shown(c: &Circuit) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or_default();
    if c.waba_id.is_empty() {
        v["waba_id"] = Value::Null;
    }
    // A country circuit names the regions of its calling code, for people ("DE"; +1 is
    // the US, Canada and the rest of the NANP).
    if let Some(code) = c
        .country
        .as_deref()
        .and_then(crate::circuit::country::parse_code)
    {
        v["country_regions"] = crate::circuit::country::regions(code).into();
    }
    v
}

/// Longest operator reason.
const MAX_REASON: usize = 1024;

impl Admin {
    /// `GET /admin/circuits[?state=…&limit=…&after=…&phone=…]`.
    pub(super) fn list_circuits(&self, query: Option<&str>) -> Response<Body> {
        match ListQuery::parse(query) {
            Ok(q) => {
                let all = match &q.phone {
                    Some(p) => self.guarding(p),
                    None => self.table.list(),
                };
                // Marketing cooldowns are holds: `GET /admin/holds` lists them.
                let all = all.into_iter().filter(|c| !c.is_hold()).collect();
                let shown: Vec<Value> = q.apply(all).iter().map(shown).collect();
                json(StatusCode::OK, &shown)
            }
            Err(msg) => json_error(StatusCode::BAD_REQUEST, &msg),
        }
    }

    /// `GET /admin/circuits/{id}`: a phone number's id gets a 404 that points at `?phone=`.
    pub(super) fn get_circuit(&self, id: &str) -> Response<Body> {
        match self.view(id) {
            Some(c) => json(StatusCode::OK, &shown(&c)),
            None if self.is_phone_number(id) => json_error(
                StatusCode::NOT_FOUND,
                &format!(
                    "{id} is a phone number id, not a WABA id: GET /admin/circuits?phone={id} lists the circuits that guard it"
                ),
            ),
            None => json_error(StatusCode::NOT_FOUND, "no circuit for that WABA"),
        }
    }

    /// `POST /admin/circuits/{id}/open|close`: checks the id and the body, then operates.
    pub(super) async fn operate_request(
        &self,
        id: &str,
        op: &str,
        body: Incoming,
    ) -> Response<Body> {
        let Some(target) = Target::parse(id) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "the id must be a numeric WABA id, phone:{phone_number_id}, template:{waba_id}:{name}:{language} or country:{waba_id}:{calling_code}",
            );
        };
        let body = match read_json::<OpBody>(body).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        let now = Utc::now();
        match body.check(op == "open", now) {
            Ok(req) => self.operate(id, target, op, req, now).await,
            Err(msg) => json_error(StatusCode::BAD_REQUEST, &msg),
        }
    }

    /// A circuit by key; a configured WABA that never opened shows as closed.
    fn view(&self, id: &str) -> Option<Circuit> {
        self.table.get(id).or_else(|| {
            self.configured
                .contains(id)
                .then(|| Circuit::new(id, Utc::now()))
        })
    }

    /// The circuits that guard sends of phone number `phone`, sorted by key: its own, its
    /// WABA's (shown closed when it never opened) and its WABA's template and country circuits.
    fn guarding(&self, phone: &str) -> Vec<Circuit> {
        let own = key("", Some(phone));
        let waba = self.table.resolve(phone).map(|r| r.waba.to_string());
        let is_waba_level = |c: &Circuit| {
            c.phone_number_id.is_none() && waba.as_deref() == Some(c.waba_id.as_str())
        };
        let mut out: Vec<Circuit> = self
            .table
            .list()
            .into_iter()
            .filter(|c| !c.is_hold() && (c.key() == own || is_waba_level(c)))
            .collect();
        if let Some(w) = &waba {
            if !out.iter().any(|c| c.key() == *w) {
                out.push(Circuit::new(w, Utc::now()));
                out.sort_by_key(Circuit::key);
            }
        }
        out
    }

    /// True when `id` is known as a phone number (mapped, once mapped, or with a circuit of
    /// its own) and not as a WABA.
    fn is_phone_number(&self, id: &str) -> bool {
        let dir = self.table.directory();
        let phone = dir.resolve(id).is_some()
            || dir.record(id).is_some()
            || dir.is_configured(id)
            || self.table.get(&key("", Some(id))).is_some();
        phone && !dir.knows_waba(id) && !self.configured.contains(id)
    }

    /// A warning for an open of a WABA nothing routes sends to (a typo, or an operator
    /// holding an account before it is configured): the open still applies.
    fn unknown_waba(&self, id: &str) -> Option<String> {
        let dir = self.table.directory();
        if !GraphId::is_valid(id)
            || self.configured.contains(id)
            || dir.knows_waba(id)
            || self.table.get(id).is_some()
        {
            return None;
        }
        let hint = match dir.resolve(id) {
            Some(r) => format!(
                " ({id} is a phone number of WABA {}: to hold that number alone, open phone:{id})",
                r.waba
            ),
            None => String::new(),
        };
        Some(format!(
            "WABA {id} is not configured or learned; no send is routed to it yet{hint}"
        ))
    }

    async fn operate(
        &self,
        id: &str,
        target: Target,
        op: &str,
        req: OpRequest,
        now: DateTime<Utc>,
    ) -> Response<Body> {
        let want_open = op == "open";
        let reason = req.reason.unwrap_or_else(|| format!("{op} by operator"));
        // A template circuit only ever answers template sends.
        let default_scope = match target {
            Target::Template(..) => Scope::BusinessInitiated,
            _ => Scope::AllSends,
        };
        let action = if want_open {
            Action::Open {
                scope: req.scope.unwrap_or(default_scope),
                code: Some(req.code.unwrap_or(368)),
                until: req.until,
            }
        } else {
            Action::Close
        };
        let unknown = want_open.then(|| self.unknown_waba(id)).flatten();
        match &unknown {
            Some(w) => tracing::warn!(waba_id = id, op, "admin request: {w}"),
            None => tracing::info!(waba_id = id, op, "admin request"),
        }
        let (waba_id, phone_number_id, template, country) = match target {
            Target::Waba => (id.to_string(), None, None, None),
            // A phone number's circuit keeps the WABA it was recorded with, else takes the
            // one the number resolves to: with a WABA it holds that number alone (without
            // one, a trip code's circuit widens to the WABA once it is known).
            Target::Phone(p) => (
                self.table
                    .get(id)
                    .map(|c| c.waba_id)
                    .filter(|w| !w.is_empty())
                    .or_else(|| self.table.resolve(&p).map(|r| r.waba.to_string()))
                    .unwrap_or_default(),
                Some(p),
                None,
                None,
            ),
            Target::Template(w, t) => (w, None, Some(t), None),
            Target::Country(w, code) => (w, None, None, Some(code.to_string())),
        };
        let applied = self.table.apply(Change {
            waba_id,
            phone_number_id,
            template,
            country,
            recipient: None,
            action,
            source: Source::Admin,
            at: now,
            reason: reason.clone(),
            evidence: Some(Evidence::Admin { reason }),
        });
        // An operator's change orders after everything the circuit holds, so it always takes
        // effect; say so only when the circuit is in the asked state.
        let after = self.view(id).unwrap_or_else(|| Circuit::new(id, now));
        if after.is_open() != want_open {
            tracing::error!(waba_id = id, op, "admin change did not take effect");
            return json_error(
                StatusCode::CONFLICT,
                &format!(
                    "the circuit is still {}: the change did not take effect",
                    if after.is_open() { "open" } else { "closed" }
                ),
            );
        }
        // 200 once the change is durable; 202 if it is applied but not yet stored.
        let durable = match applied {
            Some((_, seq)) => {
                self.table
                    .wait_durable(seq, crate::circuit::Waiter::Signal)
                    .await
            }
            None => true,
        };
        let mut warnings: Vec<&str> = unknown.iter().map(String::as_str).collect();
        if !durable {
            tracing::warn!(waba_id = id, "admin change applied but not yet durable");
            warnings.push("applied in memory but not yet stored: the state store is not committing (see wa_breaker_store_durable); it is retried, and a restart before then would forget this change");
        }
        let mut body = shown(&after);
        if let Some(obj) = body.as_object_mut() {
            obj.insert("durable".into(), durable.into());
            if !warnings.is_empty() {
                obj.insert("warning".into(), warnings.join("; ").into());
            }
        }
        let status = if durable {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        json(status, &body)
    }
}

/// What `POST /admin/circuits/{id}/…` changes, by the id's form (see [`Circuit::key`]).
#[derive(Debug, PartialEq)]
enum Target {
    /// A WABA id.
    Waba,
    /// `phone:{phone_number_id}`: a phone number's own circuit.
    Phone(String),
    /// `template:{waba_id}:{name}:{language}`: one template of a WABA.
    Template(String, TemplateRef),
    /// `country:{waba_id}:{calling_code}`: a WABA's sends to one country calling code.
    Country(String, u16),
}

impl Target {
    fn parse(id: &str) -> Option<Target> {
        if let Some(p) = id.strip_prefix(PHONE_KEY_PREFIX) {
            return GraphId::is_valid(p).then(|| Target::Phone(p.to_string()));
        }
        if let Some(rest) = id.strip_prefix(TEMPLATE_KEY_PREFIX) {
            let mut parts = rest.split(':');
            let (w, name, language) = (parts.next()?, parts.next()?, parts.next()?);
            let t = TemplateRef {
                name: name.to_string(),
                language: language.to_string(),
            };
            let ok = parts.next().is_none() && GraphId::is_valid(w) && t.is_valid();
            return ok.then(|| Target::Template(w.to_string(), t));
        }
        if let Some(rest) = id.strip_prefix(COUNTRY_KEY_PREFIX) {
            let (w, code) = rest.split_once(':')?;
            let code = crate::circuit::country::parse_code(code)?;
            return GraphId::is_valid(w).then(|| Target::Country(w.to_string(), code));
        }
        GraphId::is_valid(id).then_some(Target::Waba)
    }
}

/// `GET /admin/circuits` filters: `state=open|closed`, `limit=N` (at most [`MAX_LIMIT`],
/// [`DEFAULT_LIMIT`] when not given), `after=KEY` (the list is sorted by key as text: pass
/// the last id of a page for the next)
/// and `phone=PHONE_NUMBER_ID` (only the circuits that guard that number).
#[derive(Debug, Default)]
struct ListQuery {
    state: Option<bool>,
    limit: Option<usize>,
    after: Option<String>,
    phone: Option<String>,
}

/// Largest page of `GET /admin/circuits`.
const MAX_LIMIT: usize = 10_000;

/// The page of `GET /admin/circuits` without `limit`: the next page starts `after` the last
/// circuit's key.
pub const DEFAULT_LIMIT: usize = 1_000;

impl ListQuery {
    fn parse(query: Option<&str>) -> Result<ListQuery, String> {
        let mut q = ListQuery::default();
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*k {
                "state" => {
                    q.state = Some(match &*v {
                        "open" => true,
                        "closed" => false,
                        _ => return Err("state must be open or closed".into()),
                    })
                }
                "limit" => {
                    q.limit = Some(
                        v.parse::<usize>()
                            .ok()
                            .filter(|n| (1..=MAX_LIMIT).contains(n))
                            .ok_or(format!("limit must be between 1 and {MAX_LIMIT}"))?,
                    )
                }
                "after" if Target::parse(&v).is_some() => q.after = Some(v.into_owned()),
                "after" => {
                    return Err(
                        "after must be a circuit's id: a numeric WABA id, phone:{phone_number_id}, template:{waba_id}:{name}:{language} or country:{waba_id}:{calling_code} (the last of the previous page)"
                            .into(),
                    )
                }
                "phone" if GraphId::is_valid(&v) => q.phone = Some(v.into_owned()),
                "phone" => return Err("phone must be a numeric phone number id".into()),
                other => {
                    return Err(format!(
                        "unknown parameter {other:?} (state, limit, after, phone)"
                    ))
                }
            }
        }
        Ok(q)
    }

    /// The page of `all` (sorted by key): at most `limit` (else [`DEFAULT_LIMIT`]) circuits
    /// whose key sorts after `after`.
    fn apply(&self, all: Vec<Circuit>) -> Vec<Circuit> {
        all.into_iter()
            .filter(|c| self.state.is_none_or(|open| c.is_open() == open))
            .filter(|c| self.after.as_deref().is_none_or(|a| c.key().as_str() > a))
            .take(self.limit.unwrap_or(DEFAULT_LIMIT))
            .collect()
    }
}

/// Body of `POST /admin/circuits/{id}/open|close` as sent (all optional). `until` and `for`
/// are read as any JSON value so a wrong one gets an answer that names the field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpBody {
    reason: Option<String>,
    until: Option<Value>,
    #[serde(rename = "for")]
    for_: Option<Value>,
    scope: Option<Scope>,
    code: Option<i64>,
}

/// A checked [`OpBody`]: `for` turned into `until`.
#[derive(Debug, PartialEq)]
struct OpRequest {
    reason: Option<String>,
    until: Option<DateTime<Utc>>,
    scope: Option<Scope>,
    code: Option<i64>,
}

impl OpBody {
    /// Checks the body; an open's end must lie ahead (`for` counts from `now`). A close
    /// ignores the other fields, but they must still be well formed.
    fn check(self, open: bool, now: DateTime<Utc>) -> Result<OpRequest, String> {
        if self.reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
            return Err(format!("reason is longer than {MAX_REASON} bytes"));
        }
        let until =
            match (self.until, self.for_) {
                (Some(_), Some(_)) => return Err(
                    "give until (an RFC 3339 time) or for (a duration such as \"2h\"), not both"
                        .into(),
                ),
                (Some(u), None) => Some(parse_until(&u)?),
                (None, Some(f)) => Some(parse_for(&f, now)?),
                (None, None) => None,
            };
        if open && until.is_some_and(|u| u <= now) {
            return Err("until must be in the future".into());
        }
        Ok(OpRequest {
            reason: self.reason,
            until,
            scope: self.scope,
            code: self.code,
        })
    }
}

/// `until`: an RFC 3339 time. A duration given there gets a hint to use `for`.
fn parse_until(v: &Value) -> Result<DateTime<Utc>, String> {
    let s = v.as_str().unwrap_or_default();
    if let Ok(t) = s.parse::<DateTime<Utc>>() {
        return Ok(t);
    }
    let shown = shorten(&v.to_string());
    let hint = if humantime::parse_duration(s).is_ok() {
        format!("; for a duration from now, use {{\"for\": {shown}}}")
    } else {
        "; for a duration from now, use {\"for\": \"2h\"}".to_string()
    };
    Err(format!(
        "until must be an RFC 3339 time such as \"2026-12-04T06:00:00Z\" (got {shown}){hint}"
    ))
}

/// `for`: a duration from `now` (`"90m"`, `"2h"`, `"3d"`, `"1h 30m"`).
fn parse_for(v: &Value, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let shown = shorten(&v.to_string());
    let bad = || format!("for must be a duration such as \"90m\", \"2h\" or \"3d\" (got {shown})");
    let d = v
        .as_str()
        .and_then(|s| humantime::parse_duration(s).ok())
        .ok_or_else(bad)?;
    if d.is_zero() {
        return Err("for must be longer than zero".into());
    }
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| format!("for is too long (got {shown})"))
}

/// An operator's value as echoed in an error: at most 64 characters.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> OpBody {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn for_is_a_duration_from_now() {
        let now = Utc::now();
        let r = body(json!({"for": "2h"})).check(true, now).unwrap();
        assert_eq!(r.until, Some(now + chrono::Duration::hours(2)));
        let r = body(json!({"for": "1h 30m", "reason": "appeal"}))
            .check(true, now)
            .unwrap();
        assert_eq!(r.until, Some(now + chrono::Duration::minutes(90)));
        assert_eq!(r.reason.as_deref(), Some("appeal"));
        assert_eq!(
            body(json!({"for": null})).check(true, now).unwrap().until,
            None
        );
    }

    #[test]
    fn bad_ends_name_the_field_and_the_fix() {
        let now = Utc::now();
        let err = |v: Value| body(v).check(true, now).unwrap_err();
        let e = err(json!({"until": "2h"}));
        assert!(e.contains("until must be an RFC 3339 time"), "{e}");
        assert!(e.contains(r#"{"for": "2h"}"#), "{e}");
        assert!(!e.contains("invalid JSON"), "{e}");
        let e = err(json!({"until": 5}));
        assert!(
            e.contains("until must be an RFC 3339 time") && e.contains("got 5"),
            "{e}"
        );
        let e = err(json!({"until": "2001-01-01T00:00:00Z"}));
        assert_eq!(e, "until must be in the future");
        let e = err(json!({"for": "2h", "until": "2030-01-01T00:00:00Z"}));
        assert!(e.contains("not both"), "{e}");
        for bad in [json!("soon"), json!(7200), json!("-2h"), json!("")] {
            let e = err(json!({ "for": bad }));
            assert!(e.starts_with("for must be a duration"), "{bad}: {e}");
        }
        assert_eq!(err(json!({"for": "0s"})), "for must be longer than zero");
        let e = err(json!({"for": "100000000000y"}));
        assert!(
            e.starts_with("for is too long") || e.starts_with("for must be"),
            "{e}"
        );
        let e = err(json!({"until": "x".repeat(500)}));
        assert!(e.len() < 300, "{e}");
        let e = err(json!({"reason": "r".repeat(1025)}));
        assert!(e.contains("longer than 1024"), "{e}");
    }

    #[test]
    fn a_close_ignores_a_past_end_but_not_a_broken_one() {
        let now = Utc::now();
        assert!(body(json!({"until": "2001-01-01T00:00:00Z"}))
            .check(false, now)
            .is_ok());
        assert!(body(json!({"until": "2h"})).check(false, now).is_err());
    }

    #[test]
    fn rfc3339_until_still_parses() {
        let now = Utc::now();
        let r = body(json!({"until": "2099-01-02T03:04:05+01:00"}))
            .check(true, now)
            .unwrap();
        assert_eq!(r.until.unwrap().to_rfc3339(), "2099-01-02T02:04:05+00:00");
    }

    #[test]
    fn pages_by_default_and_after_takes_any_circuit_key() {
        let now = Utc::now();
        let mut all: Vec<Circuit> = (0..DEFAULT_LIMIT + 5)
            .map(|i| Circuit::new(&(100_000_000_000_000 + i).to_string(), now))
            .collect();
        let mut phone = Circuit::new("", now);
        phone.phone_number_id = Some("106540352242922".into());
        all.push(phone);
        all.sort_by_key(Circuit::key);
        let q = ListQuery::parse(None).unwrap();
        assert_eq!(q.apply(all.clone()).len(), DEFAULT_LIMIT);
        let last = all[all.len() - 2].key();
        let q = ListQuery::parse(Some(&format!("after={last}"))).unwrap();
        let page = q.apply(all.clone());
        assert_eq!(
            page.len(),
            1,
            "the phone number's circuit sorts after every WABA"
        );
        assert_eq!(page[0].key(), "phone:106540352242922");
        let q = ListQuery::parse(Some("after=phone:106540352242922")).unwrap();
        assert!(q.apply(all).is_empty());
        assert!(ListQuery::parse(Some("after=phone:x")).is_err());
    }

    #[test]
    fn targets_by_the_form_of_the_id() {
        assert_eq!(Target::parse("102290129340398"), Some(Target::Waba));
        assert_eq!(
            Target::parse("phone:106540352242922"),
            Some(Target::Phone("106540352242922".into()))
        );
        assert_eq!(
            Target::parse("template:102290129340398:order_update:en_US"),
            Some(Target::Template(
                "102290129340398".into(),
                TemplateRef {
                    name: "order_update".into(),
                    language: "en_US".into()
                }
            ))
        );
        assert_eq!(
            Target::parse("country:102290129340398:49"),
            Some(Target::Country("102290129340398".into(), 49))
        );
        for bad in [
            "",
            "abc",
            "phone:",
            "phone:12a",
            "template:102290129340398:order_update",
            "template:102290129340398:Order:en_US",
            "template:102290129340398:order_update:en_US:x",
            "template:x:order_update:en_US",
            "waba:1",
            "country:102290129340398",
            "country:102290129340398:",
            "country:102290129340398:999",
            "country:102290129340398:049",
            "country:102290129340398:DE",
            "country:102290129340398:49:1",
            "country:x:49",
        ] {
            assert_eq!(Target::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn list_query_takes_a_phone() {
        let q = ListQuery::parse(Some("phone=106540352242922&state=open")).unwrap();
        assert_eq!(q.phone.as_deref(), Some("106540352242922"));
        assert_eq!(q.state, Some(true));
        assert!(ListQuery::parse(Some("phone=abc")).is_err());
        assert!(ListQuery::parse(Some("phone=")).is_err());
        let e = ListQuery::parse(Some("phones=1")).unwrap_err();
        assert!(e.contains("phone"), "{e}");
    }
}
