//! `/admin/accounts…`: the phone → WABA directory as operators read and change it.

use chrono::{DateTime, Utc};
use http::{Response, StatusCode};
use serde::Deserialize;

use super::{json, json_error, Admin};
use crate::circuit::{Mapping, MappingSource};
use crate::common::Body;
use crate::graph::GraphId;
use crate::metrics::METRICS;

/// One phone number's mapping as `GET /admin/accounts` lists it.
#[derive(serde::Serialize)]
struct AccountView<'a> {
    phone_number_id: &'a str,
    waba_id: Option<&'a str>,
    source: MappingSource,
    updated_at: DateTime<Utc>,
}

impl<'a> From<&'a Mapping> for AccountView<'a> {
    fn from(m: &'a Mapping) -> Self {
        AccountView {
            phone_number_id: &m.phone_number_id,
            waba_id: m.waba_id.as_deref(),
            source: m.source,
            updated_at: m.updated_at,
        }
    }
}

/// Body of `PUT /admin/accounts/phones/{id}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PutAccount {
    waba_id: Option<String>,
}

impl Admin {
    /// `GET /admin/accounts`.
    pub(super) fn list_accounts(&self) -> Response<Body> {
        let all = self.table.directory().list(self.started);
        let views: Vec<AccountView<'_>> = all.iter().map(AccountView::from).collect();
        json(StatusCode::OK, &views)
    }

    /// Adds or moves one phone number (an operator's entry wins over the configuration and
    /// over anything learned).
    pub(super) async fn put_account(&self, phone: &str, body: PutAccount) -> Response<Body> {
        if !GraphId::is_valid(phone) {
            return json_error(
                StatusCode::BAD_REQUEST,
                "phone_number_id must be a numeric id",
            );
        }
        let Some(waba) = body.waba_id.filter(|w| GraphId::is_valid(w)) else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "body must be {\"waba_id\": \"<numeric id>\"}",
            );
        };
        let m = Mapping {
            phone_number_id: phone.to_string(),
            waba_id: Some(waba.clone()),
            source: MappingSource::Admin,
            updated_at: Utc::now(),
            origin: String::new(),
        };
        tracing::info!(phone_number_id = phone, waba_id = %waba, "admin request: map phone number");
        let seq = self.table.learn(m);
        if seq.is_some() {
            METRICS.mappings_learned.with_label_values(&["admin"]).inc();
        }
        let held = self
            .table
            .directory()
            .record(phone)
            .filter(|r| r.waba_id.as_deref() == Some(waba.as_str()));
        match held {
            Some(r) => self.answer_durable(seq, &r).await,
            None => json_error(StatusCode::CONFLICT, "the mapping did not take effect"),
        }
    }

    /// Removes a learned or operator-set mapping; a configured one is the config file's.
    pub(super) async fn delete_account(&self, phone: &str) -> Response<Body> {
        if !GraphId::is_valid(phone) {
            return json_error(
                StatusCode::BAD_REQUEST,
                "phone_number_id must be a numeric id",
            );
        }
        let dir = self.table.directory();
        let held = dir.record(phone).filter(|r| r.waba_id.is_some());
        let Some(held) = held else {
            return if dir.is_configured(phone) {
                json_error(
                    StatusCode::CONFLICT,
                    "this phone number is configured under [[accounts]]: change the configuration file (or PUT an operator mapping, which wins over it)",
                )
            } else {
                json_error(StatusCode::NOT_FOUND, "no mapping for that phone number")
            };
        };
        tracing::info!(phone_number_id = phone, waba_id = ?held.waba_id, "admin request: remove phone number mapping");
        let gone = Mapping {
            waba_id: None,
            source: MappingSource::Admin,
            updated_at: Utc::now().max(held.updated_at),
            ..held
        };
        let seq = self.table.learn(gone.clone());
        match dir.record(phone) {
            Some(r) if r.waba_id.is_none() => self.answer_durable(seq, &r).await,
            _ => json_error(StatusCode::CONFLICT, "the removal did not take effect"),
        }
    }

    /// 200 with the record once durable, 202 (with `durable: false`) when not yet stored.
    async fn answer_durable(&self, seq: Option<u64>, m: &Mapping) -> Response<Body> {
        let durable = match seq {
            Some(seq) => {
                self.table
                    .wait_durable(seq, crate::circuit::Waiter::Signal)
                    .await
            }
            None => true,
        };
        let mut body = serde_json::to_value(AccountView::from(m)).unwrap_or_default();
        if let Some(obj) = body.as_object_mut() {
            obj.insert("durable".into(), durable.into());
            if !durable {
                obj.insert(
                    "warning".into(),
                    "applied in memory but not yet stored: the state store is not committing (see wa_breaker_store_durable)".into(),
                );
            }
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
