//! `/admin/holds…` and `/admin/templates…`: the shaping's holds — marketing cooldowns and
//! pair holds, the fleet's (records of the circuit table, shared over Redis) — listed and
//! cleared, and a template's category set by an operator.

use std::time::Instant;

use chrono::{DateTime, SecondsFormat, Utc};
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{json, json_error, Admin};
use crate::circuit::cooldown::normalize;
use crate::circuit::{Action, Change, Evidence, Source, TemplateRef};
use crate::common::Body;
use crate::graph::GraphId;
use crate::policy::cooldown::digits;

/// One hold as `GET /admin/holds` lists it (a flat object: the console renders a table).
#[derive(Debug, Serialize)]
struct Hold {
    /// `marketing` (a cooldown after 131049) or `pair` (after 131056).
    kind: &'static str,
    /// A pair hold's phone number.
    #[serde(skip_serializing_if = "Option::is_none")]
    phone_number_id: Option<String>,
    /// A cooldown's WABA.
    #[serde(skip_serializing_if = "Option::is_none")]
    waba_id: Option<String>,
    /// The recipient's digits.
    recipient: String,
    /// The hold's end (RFC 3339).
    until: String,
    /// A pair hold's repeats so far (its hold was four times longer for each).
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<u32>,
}

/// `POST /admin/templates/{waba}/{name}/{language}/category`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CategoryBody {
    /// `MARKETING`, `UTILITY`, `AUTHENTICATION` (any case).
    category: Option<String>,
    /// Why, for the record.
    reason: Option<String>,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Admin {
    /// `GET /admin/holds`: the marketing cooldowns and pair holds held (the fleet's),
    /// soonest end first.
    pub(super) fn list_holds(&self) -> Response<Body> {
        let now = Utc::now();
        let mut holds: Vec<(DateTime<Utc>, Hold)> = self
            .table
            .list()
            .into_iter()
            .filter(|c| c.is_cooldown() && c.is_open())
            .filter_map(|c| {
                let until = c.until?;
                Some((
                    until,
                    Hold {
                        kind: "marketing",
                        phone_number_id: None,
                        waba_id: Some(c.waba_id),
                        recipient: c.recipient?,
                        until: rfc3339(until),
                        level: None,
                    },
                ))
            })
            .collect();
        for (phone, to, until, level) in self.table.pairs().list() {
            if until <= now {
                continue;
            }
            holds.push((
                until,
                Hold {
                    kind: "pair",
                    phone_number_id: Some(phone.to_string()),
                    waba_id: None,
                    recipient: to.to_string(),
                    until: rfc3339(until),
                    level: Some(level),
                },
            ));
        }
        holds.sort_by_key(|(until, _)| *until);
        let shown: Vec<Hold> = holds.into_iter().map(|(_, h)| h).collect();
        json(StatusCode::OK, &shown)
    }

    /// `GET /admin/pace/{phone_number_id}`: the number's pace on this replica now.
    pub(super) fn pace(&self, id: &str) -> Response<Body> {
        let Some(phone) = GraphId::new(id) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "the id must be a numeric phone-number id",
            );
        };
        let Some(policy) = &self.policy else {
            return json_error(StatusCode::NOT_FOUND, "no pacer on this listener");
        };
        let pacer = policy.pacer();
        let view = pacer.view(&phone, Instant::now());
        json(
            StatusCode::OK,
            &serde_json::json!({
                "phone_number_id": id,
                "mode": pacer.mode().as_str(),
                "throughput": view.throughput,
                "source": view.source.as_str(),
                "level": view.level.map(|l| l.as_str()),
                "rate": (view.rate * 1000.0).round() / 1000.0,
                "lowered": view.rate + 1e-9 < f64::from(view.throughput),
                "backlog_secs": (view.backlog_secs * 1000.0).round() / 1000.0,
                "max_delay_ms": pacer.max_delay().as_millis() as u64,
            }),
        )
    }

    /// `DELETE /admin/holds/marketing/{waba_id}/{recipient}`: ends the cooldown;
    /// `DELETE /admin/holds/pair/{phone_number_id}/{recipient}`: ends the pair hold and its
    /// reach — both for the whole fleet. The recipient may be written as a send's `to` is.
    pub(super) async fn clear_hold(&self, kind: &str, id: &str, recipient: &str) -> Response<Body> {
        if !GraphId::is_valid(id) {
            return json_error(StatusCode::BAD_REQUEST, "the id must be a numeric Graph id");
        }
        // `+1 555-765-4321` arrives URL-encoded (`%2B1%20555-765-4321`).
        let recipient = percent_encoding::percent_decode_str(recipient).decode_utf8_lossy();
        let Some(to) = digits(&recipient) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "the recipient must have 1 to 18 digits",
            );
        };
        match kind {
            "pair" => {
                let active = GraphId::new(id)
                    .is_some_and(|phone| self.table.pairs().active(&phone, to, Utc::now()));
                if !active {
                    return json_error(
                        StatusCode::NOT_FOUND,
                        "no pair hold for that phone number and recipient",
                    );
                }
                let applied =
                    self.table
                        .apply(crate::policy::pair::end(id, to, Source::Admin, Utc::now()));
                tracing::info!(phone_number_id = id, "admin request: pair hold cleared");
                self.durable_answer(
                    applied.map(|(_, seq)| seq),
                    serde_json::json!({"cleared": true}),
                )
                .await
            }
            _ => {
                let key = crate::circuit::cooldown::key(id, &to.to_string());
                if !self.table.get(&key).is_some_and(|c| c.is_open()) {
                    return json_error(
                        StatusCode::NOT_FOUND,
                        "no marketing cooldown for that WABA and recipient",
                    );
                }
                let reason = "cleared by an operator".to_string();
                let applied = self.table.apply(Change {
                    waba_id: id.to_string(),
                    phone_number_id: None,
                    template: None,
                    recipient: Some(to.to_string()),
                    country: None,
                    action: Action::Close,
                    source: Source::Admin,
                    at: Utc::now(),
                    reason: reason.clone(),
                    evidence: Some(Evidence::Admin { reason }),
                });
                tracing::info!(waba_id = id, "admin request: marketing cooldown cleared");
                self.durable_answer(
                    applied.map(|(_, seq)| seq),
                    serde_json::json!({"cleared": true}),
                )
                .await
            }
        }
    }

    /// `POST /admin/templates/{waba}/{name}/{language}/category` `{"category": "MARKETING"}`:
    /// the operator's word on a template's category (it orders after what Meta said).
    pub(super) async fn set_category(
        &self,
        waba: &str,
        name: &str,
        language: &str,
        body: CategoryBody,
    ) -> Response<Body> {
        let template = TemplateRef {
            name: name.to_string(),
            language: language.to_string(),
        };
        if !GraphId::is_valid(waba) || !template.is_valid() {
            return json_error(
                StatusCode::BAD_REQUEST,
                "the path must be /admin/templates/{waba_id}/{name}/{language}/category with a numeric WABA id and Meta's template name and language",
            );
        }
        let Some(category) = body.category.as_deref().and_then(normalize) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "the body must be {\"category\": \"MARKETING\" | \"UTILITY\" | \"AUTHENTICATION\"}",
            );
        };
        let reason = format!(
            "category {category} set by an operator{}",
            body.reason
                .as_deref()
                .map(|r| format!(": {}", r.chars().take(1024).collect::<String>()))
                .unwrap_or_default()
        );
        let change = Change {
            waba_id: waba.to_string(),
            phone_number_id: None,
            template: Some(template),
            recipient: None,
            country: None,
            action: Action::Categorize {
                category: Some(category),
                coming: None,
            },
            source: Source::Admin,
            at: Utc::now(),
            reason: reason.clone(),
            evidence: Some(Evidence::Admin { reason }),
        };
        let key = change.key();
        let applied = self.table.apply(change);
        let Some(after) = self.table.get(&key) else {
            return json_error(
                StatusCode::INSUFFICIENT_STORAGE,
                "not recorded: the table is full (max_circuits)",
            );
        };
        tracing::info!(
            waba_id = waba,
            template = name,
            language,
            "admin request: template category set"
        );
        let body = serde_json::to_value(&after).unwrap_or_default();
        self.durable_answer(applied.map(|(_, seq)| seq), body).await
    }

    /// 200 with `body` (and `"durable": true`) once the change `seq` is durable; 202 when
    /// it is applied but not yet stored.
    async fn durable_answer(&self, seq: Option<u64>, mut body: Value) -> Response<Body> {
        let durable = match seq {
            Some(seq) => {
                self.table
                    .wait_durable(seq, crate::circuit::Waiter::Signal)
                    .await
            }
            None => true,
        };
        if let Some(obj) = body.as_object_mut() {
            obj.insert("durable".into(), durable.into());
        }
        json(
            if durable {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            },
            &body,
        )
    }
}
