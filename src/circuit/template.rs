//! Template circuits, the mechanics: a template as Meta keys it ([`TemplateRef`]), its
//! circuit's key, where a send names it ([`of_send`]), and the hot path's index of open
//! template circuits ([`TemplateIndex`]). When one opens or closes (a send answered
//! 132015/132016, a `message_template_status_update`) is decided in `policy::template`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::guard::OpenGuard;
use super::model::Circuit;

/// A message template as Meta keys it: name and language (`en_US`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TemplateRef {
    /// `template.name` of a send; `message_template_name` of a webhook.
    pub name: String,
    /// `template.language.code` of a send; `message_template_language` of a webhook.
    pub language: String,
}

impl TemplateRef {
    /// Both parts look like Meta's (name: lowercase letters, digits, `_`, at most 512;
    /// language: letters, digits, `_`, `-`, at most 16): what a key may be built from.
    pub fn is_valid(&self) -> bool {
        let name = !self.name.is_empty()
            && self.name.len() <= 512
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        let lang = !self.language.is_empty()
            && self.language.len() <= 16
            && self
                .language
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        name && lang
    }
}

/// Prefix of template circuit keys.
pub const KEY_PREFIX: &str = "template:";

/// The key of a template circuit: `template:{waba}:{name}:{language}`.
pub fn key(waba_id: &str, t: &TemplateRef) -> String {
    format!("{KEY_PREFIX}{waba_id}:{}:{}", t.name, t.language)
}

/// The template of a template send body: `template.name` and `template.language.code`
/// (`None` for other bodies, and for names or languages no template can have).
pub fn of_send(body: &[u8]) -> Option<TemplateRef> {
    use std::borrow::Cow;
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow)]
        template: Option<Tpl<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Tpl<'a> {
        #[serde(borrow)]
        name: Option<Cow<'a, str>>,
        #[serde(borrow)]
        language: Option<Lang<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Lang<'a> {
        #[serde(borrow)]
        code: Option<Cow<'a, str>>,
    }
    let m: Msg = serde_json::from_slice(body).ok()?;
    if m.kind.as_deref() != Some("template") {
        return None;
    }
    let t = m.template?;
    let r = TemplateRef {
        name: t.name?.into_owned(),
        language: t.language?.code?.into_owned(),
    };
    r.is_valid().then_some(r)
}

/// True when a send body is a template message (`"type": "template"`).
pub fn is_template(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(rename = "type", borrow)]
        kind: Option<std::borrow::Cow<'a, str>>,
    }
    serde_json::from_slice::<Msg>(body)
        .ok()
        .and_then(|m| m.kind)
        .is_some_and(|k| k == "template")
}

/// The open template circuits, by key, with the WABAs that have any and their count: a send
/// reads this only while a template circuit is open, and then only for a WABA that has one.
/// Country circuits (`circuit::country`), also keyed under a WABA, have an index of this
/// kind of their own.
#[derive(Default)]
pub struct TemplateIndex {
    open: DashMap<String, Arc<OpenGuard>>,
    wabas: DashMap<String, usize>,
    len: AtomicUsize,
}

impl TemplateIndex {
    /// True when the WABA has an open template circuit (one load when none is open).
    #[inline]
    pub fn has_open(&self, waba_id: &str) -> bool {
        self.len.load(Ordering::Acquire) > 0 && self.wabas.contains_key(waba_id)
    }

    /// Runs `f` on the guard of `template` of `waba_id`, if its circuit is open.
    pub fn with_guard<R>(
        &self,
        waba_id: &str,
        template: &TemplateRef,
        f: impl FnOnce(&OpenGuard) -> R,
    ) -> Option<R> {
        if !self.has_open(waba_id) {
            return None;
        }
        self.open.get(&key(waba_id, template)).map(|g| f(g.value()))
    }

    /// Runs `f` on the guard of the circuit keyed `key` under `waba_id`, if it is open.
    pub fn with_key<R>(
        &self,
        waba_id: &str,
        key: impl FnOnce() -> String,
        f: impl FnOnce(&OpenGuard) -> R,
    ) -> Option<R> {
        if !self.has_open(waba_id) {
            return None;
        }
        self.open.get(&key()).map(|g| f(g.value()))
    }

    /// Open template circuits.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// True when none is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Makes the index agree with the template circuit `c` (key `key`) after change `seq`.
    /// `Some(open)` when the circuit's open state in the index changed (it opened or it
    /// closed), `None` when it did not.
    pub fn sync(&self, key: &Arc<str>, c: &Circuit, seq: u64) -> Option<bool> {
        if c.is_open() {
            let fresh = self
                .open
                .insert(key.to_string(), Arc::new(OpenGuard::new(c, seq)))
                .is_none();
            if fresh {
                *self.wabas.entry(c.waba_id.clone()).or_insert(0) += 1;
                self.len.fetch_add(1, Ordering::AcqRel);
            }
            fresh.then_some(true)
        } else if self.open.remove(key.as_ref()).is_some() {
            self.len.fetch_sub(1, Ordering::AcqRel);
            let zero = match self.wabas.get_mut(&c.waba_id) {
                Some(mut n) => {
                    *n = n.saturating_sub(1);
                    *n == 0
                }
                None => false,
            };
            if zero {
                self.wabas.remove_if(&c.waba_id, |_, n| *n == 0);
            }
            Some(false)
        } else {
            None
        }
    }
}
