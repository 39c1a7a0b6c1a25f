//! `/admin/warnings…`: the warnings the records hold (Meta's first enforcement steps,
//! recorded and announced, never a block), newest first.
//!
//! - `GET /admin/warnings` — every WABA's, flat rows (what the console's table shows);
//!   `?waba_id=` and `?kind=` filter, `?limit=` caps (default and most: [`MAX_ROWS`]).
//! - `GET /admin/warnings/{waba_id}` — one WABA's, each with its evidence (the webhook
//!   change's value or the send's answer: what an appeal quotes).

use chrono::{DateTime, Utc};
use http::{Response, StatusCode};
use serde::Serialize;

use super::{json, json_error, Admin};
use crate::circuit::{Evidence, Source, Transition, WarningKind};
use crate::common::Body;
use crate::graph::GraphId;

/// Most rows one answer holds.
pub const MAX_ROWS: usize = 1_000;

/// One warning as the API lists it.
#[derive(Serialize)]
struct WarningView {
    /// The WABA (empty: a phone number whose WABA is not known yet).
    waba_id: String,
    kind: WarningKind,
    at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    phone_number_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    source: Source,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    evidence: Option<Evidence>,
}

impl WarningView {
    fn new(waba_id: String, t: Transition, evidence: bool) -> Option<WarningView> {
        let w = t.warning?;
        let (template, language) = match w.template {
            Some(t) => (Some(t.name), Some(t.language)),
            None => (None, None),
        };
        Some(WarningView {
            waba_id,
            kind: w.kind,
            at: t.at,
            template,
            language,
            phone_number_id: w.phone_number_id,
            detail: w.detail,
            source: t.source,
            reason: t.reason,
            evidence: if evidence { t.evidence } else { None },
        })
    }
}

impl Admin {
    /// `GET /admin/warnings[?waba_id=&kind=&limit=]`.
    pub(super) fn list_warnings(&self, query: Option<&str>) -> Response<Body> {
        let mut waba = None;
        let mut kind = None;
        let mut limit = MAX_ROWS;
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match k.as_ref() {
                "waba_id" if GraphId::is_valid(&v) => waba = Some(v.into_owned()),
                "kind" => match serde_json::from_value::<WarningKind>(v.as_ref().into()) {
                    Ok(k) if k != WarningKind::Other => kind = Some(k),
                    _ => {
                        let known: Vec<&str> =
                            WarningKind::ALL.iter().map(|k| k.as_str()).collect();
                        return json_error(
                            StatusCode::BAD_REQUEST,
                            &format!("kind must be one of {}", known.join(", ")),
                        );
                    }
                },
                "limit" => match v.parse::<usize>() {
                    Ok(n) if n >= 1 => limit = n.min(MAX_ROWS),
                    _ => {
                        return json_error(
                            StatusCode::BAD_REQUEST,
                            &format!("limit must be a number from 1 to {MAX_ROWS}"),
                        )
                    }
                },
                "waba_id" => {
                    return json_error(StatusCode::BAD_REQUEST, "waba_id must be a numeric id")
                }
                other => {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        &format!("unknown query parameter {other:?} (waba_id, kind, limit)"),
                    )
                }
            }
        }
        let rows: Vec<WarningView> = self
            .table
            .warnings(waba.as_deref())
            .into_iter()
            .filter(|(_, t)| kind.is_none() || t.warning.as_ref().map(|w| w.kind) == kind)
            .take(limit)
            .filter_map(|(w, t)| WarningView::new(w, t, false))
            .collect();
        json(StatusCode::OK, &rows)
    }

    /// `GET /admin/warnings/{waba_id}`: one WABA's, with their evidence.
    pub(super) fn waba_warnings(&self, waba_id: &str) -> Response<Body> {
        if !GraphId::is_valid(waba_id) {
            return json_error(StatusCode::BAD_REQUEST, "waba_id must be a numeric id");
        }
        let rows: Vec<WarningView> = self
            .table
            .warnings(Some(waba_id))
            .into_iter()
            .take(MAX_ROWS)
            .filter_map(|(w, t)| WarningView::new(w, t, true))
            .collect();
        json(StatusCode::OK, &rows)
    }
}
