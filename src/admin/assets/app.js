// wa-breaker on-call console. Served by the gateway itself; talks only to its own /admin API.
//
// Rules kept throughout: every value from the API reaches the page through textContent or
// DOM properties (never parsed as HTML); the admin token lives in this tab's sessionStorage
// and travels only as `Authorization: Bearer`; no cookies.
'use strict';

(function () {
  const TOKEN_KEY = 'wa-breaker.admin-token';
  const POLL_MS = 1000;        // a trip shows within about a second
  const FULL_EVERY = 10;       // the whole list and the accounts every 10 polls (and on change)
  const EXTRAS_EVERY = 30;     // probe optional endpoints (warnings, holds) every 30 polls
  const STALE_MS = 5000;       // no good answer for this long: say the view is stale
  const MAX_ROWS = 500;        // rows rendered per table; the filter narrows the rest
  const PAGE = 1000;           // circuits per GET /admin/circuits page (the API pages by default)
  const CLOSED_PAGES = 2;      // closed circuits loaded: the newest pages by id, open ones all
  const ID_RE = /^(?:phone:\d{1,32}|template:\d{1,32}:[a-z0-9_]{1,512}:[A-Za-z0-9_-]{1,16}|country:\d{1,32}:[1-9]\d{0,2}|\d{1,32})$/;

  const $ = (id) => document.getElementById(id);

  const st = {
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    circuits: new Map(),   // key -> circuit
    accounts: [],
    closedMore: false,     // more closed circuits exist than were loaded
    openKeys: null,
    ticks: 0,
    timer: null,
    running: false,
    lastOk: 0,
    expanded: new Set(),
    circuitSig: '',
    accountSig: '',
    extras: {},            // section id -> last signature
    bannerAt: 0,
  };

  // ---------- small DOM helpers (text only) ----------

  function el(tag, opts, ...children) {
    const e = document.createElement(tag);
    if (opts) {
      for (const [k, v] of Object.entries(opts)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = String(v);
        else if (k === 'title') e.title = String(v);
        else if (k === 'on') for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
        else e.setAttribute(k, String(v));
      }
    }
    add(e, children);
    return e;
  }

  // Appends nodes, strings (as text) and arrays of them.
  function add(parent, children) {
    for (const c of children) {
      if (c === undefined || c === null || c === false) continue;
      if (Array.isArray(c)) add(parent, c);
      else parent.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function show(id, on) {
    $(id).hidden = !on;
  }

  // One message line: errors stay until the next good poll, information for 10 s.
  function banner(msg, kind) {
    const b = $('banner');
    b.textContent = msg || '';
    b.className = 'banner' + (kind ? ' ' + kind : '');
    b.hidden = !msg;
    st.bannerAt = Date.now();
  }

  function clearBanner() {
    const info = $('banner').classList.contains('info');
    if (!info || Date.now() - st.bannerAt > 10000) banner('');
  }

  // ---------- time ----------

  function fmtTime(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    if (isNaN(d)) return String(iso);
    return d.toISOString().replace('T', ' ').slice(0, 19) + ' UTC';
  }

  function fmtDur(ms) {
    let s = Math.max(0, Math.floor(ms / 1000));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    const pad = (n) => String(n).padStart(2, '0');
    if (d > 0) return d + 'd ' + h + 'h ' + pad(m) + 'm';
    if (h > 0) return h + 'h ' + pad(m) + 'm ' + pad(s) + 's';
    if (m > 0) return m + 'm ' + pad(s) + 's';
    return s + 's';
  }

  function ago(iso) {
    const t = Date.parse(iso);
    return isNaN(t) ? '' : fmtDur(Date.now() - t) + ' ago';
  }

  // ---------- the API ----------

  async function api(method, path, body) {
    const headers = { 'Accept': 'application/json' };
    if (st.token) headers['Authorization'] = 'Bearer ' + st.token;
    const init = { method, headers, credentials: 'omit', cache: 'no-store', referrerPolicy: 'no-referrer' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    return { status: r.status, ok: r.ok, data };
  }

  function errorText(res) {
    if (res && res.data && typeof res.data.error === 'string') return res.data.error;
    return 'HTTP ' + (res ? res.status : '?');
  }

  // ---------- circuits: keys, labels, evidence ----------

  function keyOf(c) {
    if (c.template) return 'template:' + c.waba_id + ':' + c.template.name + ':' + c.template.language;
    if (c.country) return 'country:' + c.waba_id + ':' + c.country;
    if (c.phone_number_id) return 'phone:' + c.phone_number_id;
    return c.waba_id;
  }

  function levelOf(c) {
    if (c.template) return 'template';
    if (c.country) return 'country';
    if (c.phone_number_id) return 'phone';
    return 'waba';
  }

  function lastEvidence(c) {
    const h = Array.isArray(c.history) ? c.history : [];
    for (let i = h.length - 1; i >= 0; i--) {
      if (h[i] && h[i].evidence) return h[i];
    }
    return h.length ? h[h.length - 1] : null;
  }

  function evidenceNodes(t) {
    if (!t) return [el('span', { class: 'muted', text: 'none recorded' })];
    const ev = t.evidence;
    if (!ev) return [el('span', { text: t.reason || '' })];
    switch (ev.kind) {
      case 'send': {
        const out = [];
        if (ev.fbtrace_id) out.push('fbtrace_id ', el('span', { class: 'trace', text: ev.fbtrace_id }));
        out.push(el('div', { class: 'sub', text: '#' + ev.code + (ev.error_subcode ? '/' + ev.error_subcode : '') + ' · ' + (ev.message || '') + (ev.phone_number_id ? ' · phone ' + ev.phone_number_id : '') }));
        return out;
      }
      case 'webhook':
        return ['webhook ', el('b', { text: (ev.field || '') + (ev.event ? ': ' + ev.event : '') }),
          el('div', { class: 'sub', text: 'entry ' + (ev.entry_id || '?') + ' · ' + fmtTime(t.at) })];
      case 'health': {
        const hs = ev.health_status || {};
        return ['health status: can_send ', el('b', { text: String(hs.can_send || '?') }),
          el('div', { class: 'sub', text: fmtTime(t.at) })];
      }
      case 'admin':
        return ['operator: ', el('span', { text: ev.reason || '' }), el('div', { class: 'sub', text: fmtTime(t.at) })];
      case 'expiry':
        return ['known end passed: ', el('span', { text: fmtTime(ev.until) })];
      default:
        return [el('span', { text: t.reason || ev.kind || '' })];
    }
  }

  function whoNodes(c) {
    const lvl = levelOf(c);
    if (lvl === 'template') {
      return [el('div', { class: 'main', text: c.template.name + ' (' + c.template.language + ')' }),
        el('div', { class: 'sub' }, el('span', { class: 'badge level', text: 'template' }), ' of WABA ', c.waba_id)];
    }
    if (lvl === 'country') {
      return [el('div', { class: 'main', text: '+' + c.country + (c.country_regions ? ' (' + c.country_regions + ')' : '') }),
        el('div', { class: 'sub' }, el('span', { class: 'badge level', text: 'country' }), ' sends of WABA ', c.waba_id)];
    }
    if (lvl === 'phone') {
      return [el('div', { class: 'main', text: c.phone_number_id }),
        el('div', { class: 'sub' }, el('span', { class: 'badge level', text: 'phone number' }), ' ', c.waba_id ? 'of WABA ' + c.waba_id : 'WABA not known yet')];
    }
    const phones = st.accounts.filter((a) => a.waba_id === c.waba_id).map((a) => a.phone_number_id);
    return [el('div', { class: 'main', text: c.waba_id }),
      el('div', { class: 'sub' }, el('span', { class: 'badge level', text: 'WABA' }), ' ',
        phones.length ? phones.length + ' phone number' + (phones.length > 1 ? 's' : '') + ': ' + phones.slice(0, 3).join(', ') + (phones.length > 3 ? ', …' : '') : 'no phone number known')];
  }

  // ---------- rendering ----------

  function sortedCircuits() {
    const all = Array.from(st.circuits.values());
    const open = (c) => c.state === 'open';
    all.sort((a, b) => {
      if (open(a) !== open(b)) return open(a) ? -1 : 1;
      const ta = Date.parse(open(a) ? (a.opened_at || a.updated_at) : a.updated_at) || 0;
      const tb = Date.parse(open(b) ? (b.opened_at || b.updated_at) : b.updated_at) || 0;
      return tb - ta || keyOf(a).localeCompare(keyOf(b));
    });
    return all;
  }

  function matches(c) {
    const fs = $('f-state').value, fl = $('f-level').value, fsrc = $('f-source').value;
    if (fs && c.state !== fs) return false;
    if (fl && levelOf(c) !== fl) return false;
    if (fsrc && c.source !== fsrc) return false;
    const q = $('f-text').value.trim().toLowerCase();
    if (!q) return true;
    const ev = lastEvidence(c);
    const hay = [keyOf(c), c.waba_id, c.phone_number_id, c.reason, c.template && c.template.name, c.country_regions,
      ev && ev.evidence && ev.evidence.fbtrace_id, ev && ev.reason]
      .concat(st.accounts.filter((a) => a.waba_id === c.waba_id).map((a) => a.phone_number_id))
      .filter(Boolean).join(' ').toLowerCase();
    return hay.includes(q);
  }

  function renderTiles() {
    const all = Array.from(st.circuits.values());
    const open = all.filter((c) => c.state === 'open');
    $('open-count').textContent = String(open.length);
    const by = { waba: 0, phone: 0, template: 0, country: 0 };
    for (const c of open) by[levelOf(c)]++;
    $('open-detail').textContent = open.length
      ? by.waba + ' WABA · ' + by.phone + ' phone · ' + by.template + ' template' + (by.country ? ' · ' + by.country + ' country' : '')
      : 'all sends flow';
    $('tile-open').classList.toggle('alert', open.length > 0);
    const live = st.accounts.filter((a) => a.waba_id);
    $('phone-count').textContent = String(live.length);
    const src = {};
    for (const a of live) src[a.source] = (src[a.source] || 0) + 1;
    $('phone-detail').textContent = Object.keys(src).sort().map((k) => src[k] + ' ' + k).join(' · ') || 'none';
    const wabas = new Set(live.map((a) => a.waba_id));
    for (const c of all) if (c.waba_id) wabas.add(c.waba_id);
    $('waba-count').textContent = String(wabas.size);
  }

  function renderCircuits(force) {
    const rows = sortedCircuits().filter(matches);
    const shown = rows.slice(0, MAX_ROWS);
    const sig = shown.map((c) => keyOf(c) + '@' + c.version + c.state + c.updated_at).join('|') +
      '#' + Array.from(st.expanded).join(',') + '#' + st.accounts.length;
    if (!force && sig === st.circuitSig) return;
    st.circuitSig = sig;
    const body = $('circuit-rows');
    clear(body);
    for (const c of shown) {
      const key = keyOf(c);
      const isOpen = c.state === 'open';
      const expanded = st.expanded.has(key);
      const tr = el('tr', { class: isOpen ? 'row-open' : 'row-closed', 'data-key': key, 'data-state': c.state });
      tr.append(
        el('td', null, el('button', {
          type: 'button', class: 'link toggle', 'data-action': 'history', 'aria-expanded': String(expanded),
          title: 'history', text: expanded ? '▾' : '▸',
          on: { click: () => { toggle(key); } },
        })),
        el('td', null, el('span', { class: 'badge ' + (isOpen ? 'open' : 'closed'), text: c.state })),
        el('td', { class: 'who' }, ...whoNodes(c)),
        // A closed circuit keeps the scope and code it last opened with: shown muted.
        el('td', { class: isOpen ? 'scope' : 'scope muted', text: (c.scope || '').replace(/_/g, ' ') }),
        el('td', { class: isOpen ? 'mono' : 'mono muted', text: c.code != null ? String(c.code) : '—' }),
        el('td', null, el('span', { class: 'badge source', text: c.source })),
        el('td', { class: 'when' }, isOpen && c.opened_at
          ? [el('div', { text: fmtTime(c.opened_at) }), el('div', { class: 'sub', 'data-since': c.opened_at, text: ago(c.opened_at) })]
          : [el('div', { class: 'muted', text: 'closed ' + fmtTime(c.updated_at) }), el('div', { class: 'sub', 'data-since': c.updated_at, text: ago(c.updated_at) })]),
        el('td', { class: 'when' }, untilNodes(c)),
        el('td', { class: 'evidence' }, ...evidenceNodes(lastEvidence(c))),
        el('td', { class: 'actions' }, isOpen
          ? el('button', { type: 'button', class: 'primary small', 'data-action': 'close', text: 'Close…', on: { click: () => askClose(key) } })
          : el('button', { type: 'button', class: 'small', 'data-action': 'open', text: 'Open…', on: { click: () => askOpen(key) } })),
      );
      body.append(tr);
      if (expanded) body.append(historyRow(c));
    }
    const note = $('circuits-note');
    if (!rows.length) {
      note.textContent = st.circuits.size ? 'No circuit matches the filter.' : 'No circuits yet: nothing has tripped, and no operator has opened one.';
      note.hidden = false;
    } else if (rows.length > shown.length) {
      note.textContent = 'Showing ' + shown.length + ' of ' + rows.length + ' circuits: narrow them with the filter.';
      note.hidden = false;
    } else if (st.closedMore) {
      note.textContent = 'Every open circuit is listed; only the first ' + (PAGE * CLOSED_PAGES) + ' closed ones (wa-breaker circuits list shows them all).';
      note.hidden = false;
    } else {
      note.hidden = true;
    }
  }

  function untilNodes(c) {
    if (c.state !== 'open') return el('span', { class: 'muted', text: '—' });
    if (!c.until) return el('span', { class: 'muted', text: 'until a close signal' });
    const wrap = el('div');
    wrap.append(el('div', { class: 'countdown', 'data-until': c.until, text: countdown(c.until) }),
      el('div', { class: 'sub', text: fmtTime(c.until) }));
    return wrap;
  }

  function countdown(iso) {
    const ms = Date.parse(iso) - Date.now();
    return ms > 0 ? 'in ' + fmtDur(ms) : 'ended ' + fmtDur(-ms) + ' ago · awaiting close';
  }

  function historyRow(c) {
    const h = Array.isArray(c.history) ? c.history.slice().reverse() : [];
    const table = el('table', { class: 'history-list' },
      el('thead', null, el('tr', null, el('th', { text: 'When' }), el('th', { text: 'Change' }),
        el('th', { text: 'Source' }), el('th', { text: 'Reason and evidence' }))));
    const tb = el('tbody');
    for (const t of h) {
      const change = t.note ? 'note' : '→ ' + t.to;
      const ev = t.evidence ? el('pre', { text: JSON.stringify(t.evidence, null, 2) }) : null;
      tb.append(el('tr', null,
        el('td', { class: 'when', text: fmtTime(t.at) }),
        el('td', null, el('span', { class: 'badge ' + (t.note ? 'level' : t.to), text: change })),
        el('td', { text: t.source }),
        el('td', null, el('div', { text: t.reason || '' }), ev)));
    }
    table.append(tb);
    const copy = el('button', {
      type: 'button', class: 'small', text: 'Copy circuit JSON',
      on: { click: () => copyJson(c) },
    });
    const head = el('div', { class: 'history-head' },
      el('b', { text: 'History (newest first, ' + h.length + ')' }),
      el('span', { class: 'muted', text: 'version ' + c.version + (c.origin ? ' · last change by ' + c.origin : '') }),
      copy);
    return el('tr', { class: 'history', 'data-history-for': keyOf(c) },
      el('td', { colspan: '10' }, head, h.length ? table : el('p', { class: 'muted', text: 'No history recorded.' })));
  }

  async function copyJson(c) {
    try {
      await navigator.clipboard.writeText(JSON.stringify(c, null, 2));
      banner('Copied the circuit of ' + keyOf(c) + ' (with its evidence) to the clipboard.', 'info');
    } catch (_) {
      banner('The browser refused the clipboard; expand the history and select the evidence instead.');
    }
  }

  function toggle(key) {
    if (st.expanded.has(key)) st.expanded.delete(key); else st.expanded.add(key);
    renderCircuits(true);
  }

  function renderAccounts() {
    const rows = st.accounts.filter((a) => a.waba_id);
    const sig = rows.map((a) => a.phone_number_id + a.waba_id + a.source + a.updated_at).join('|') +
      '#' + Array.from(st.circuits.values()).filter((c) => c.state === 'open').map(keyOf).join(',');
    if (sig === st.accountSig) return;
    st.accountSig = sig;
    const body = $('account-rows');
    clear(body);
    for (const a of rows.slice(0, MAX_ROWS)) {
      const guards = [];
      const w = st.circuits.get(a.waba_id);
      const p = st.circuits.get('phone:' + a.phone_number_id);
      if (w && w.state === 'open') guards.push('WABA circuit open');
      if (p && p.state === 'open') guards.push('phone circuit open');
      const tpl = Array.from(st.circuits.values()).filter((c) => c.template && c.waba_id === a.waba_id && c.state === 'open').length;
      if (tpl) guards.push(tpl + ' template circuit' + (tpl > 1 ? 's' : '') + ' open');
      body.append(el('tr', { 'data-phone': a.phone_number_id },
        el('td', { class: 'mono', text: a.phone_number_id }),
        el('td', { class: 'mono', text: a.waba_id }),
        el('td', null, el('span', { class: 'badge source', text: a.source })),
        el('td', { class: 'when', text: fmtTime(a.updated_at) }),
        el('td', null, guards.length
          ? el('span', { class: 'badge open', text: guards.join(' · ') })
          : el('span', { class: 'badge closed', text: 'sends flow' }))));
    }
    const note = $('accounts-note');
    note.hidden = rows.length > 0 && rows.length <= MAX_ROWS;
    note.textContent = rows.length ? 'Showing ' + MAX_ROWS + ' of ' + rows.length + '.' :
      'No phone number is known: configure [[accounts]], or let the gateway learn them from webhooks and health reads.';
  }

  // A generic table for the optional sections (warnings, holds): columns are the fields
  // of the records, values shown as text.
  function renderExtra(section, items) {
    const sig = JSON.stringify(items);
    if (st.extras[section.id] === sig) return;
    st.extras[section.id] = sig;
    const box = section.querySelector('.extra-body');
    clear(box);
    if (!items.length) {
      box.append(el('p', { class: 'empty', text: 'None.' }));
      return;
    }
    const cols = [];
    for (const it of items.slice(0, 50)) {
      if (it && typeof it === 'object') for (const k of Object.keys(it)) if (!cols.includes(k)) cols.push(k);
    }
    const table = el('table', null, el('thead', null, el('tr', null, ...cols.map((k) => el('th', { text: k.replace(/_/g, ' ') })))));
    const tb = el('tbody');
    for (const it of items.slice(0, MAX_ROWS)) {
      tb.append(el('tr', null, ...cols.map((k) => {
        const v = it ? it[k] : undefined;
        const text = v === undefined || v === null ? '—' : typeof v === 'object' ? JSON.stringify(v) : String(v);
        return el('td', { text });
      })));
    }
    table.append(tb);
    box.append(el('div', { class: 'table-wrap' }, table));
  }

  async function probeExtras() {
    for (const section of document.querySelectorAll('section.extra[data-endpoint]')) {
      try {
        const r = await api('GET', section.getAttribute('data-endpoint'));
        if (r.ok && Array.isArray(r.data)) {
          renderExtra(section, r.data);
          section.hidden = false;
        } else {
          section.hidden = true;
        }
      } catch (_) {
        section.hidden = true;
      }
    }
  }

  function tickClocks() {
    for (const n of document.querySelectorAll('[data-until]')) {
      const iso = n.getAttribute('data-until');
      n.textContent = countdown(iso);
      n.classList.toggle('passed', Date.parse(iso) <= Date.now());
    }
    for (const n of document.querySelectorAll('[data-since]')) n.textContent = ago(n.getAttribute('data-since'));
    if (st.running) {
      const age = Date.now() - st.lastOk;
      if (st.lastOk && age > STALE_MS) setLive('stale', 'stale: no answer for ' + fmtDur(age));
      if (st.lastOk) $('refreshed').textContent = fmtDur(age) + ' ago';
    }
  }

  function setLive(state, text) {
    $('live').setAttribute('data-state', state);
    $('live-text').textContent = text;
  }

  // ---------- states of the page ----------

  function showLogin(msg, kind) {
    stop();
    show('console', false);
    show('disabled', false);
    show('sign-out', false);
    show('login', true);
    setLive('idle', 'not connected');
    banner(msg || '', kind);
    $('token').value = '';
    $('token').focus();
  }

  function showDisabled() {
    stop();
    show('login', false);
    show('console', false);
    show('sign-out', false);
    show('disabled', true);
    setLive('idle', 'admin API disabled');
    banner('');
  }

  function unauthorized() {
    const had = !!st.token;
    st.token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin(had ? 'Unauthorized: the gateway refused this admin token (401). Enter the current one.' : '');
  }

  // Answers every poll's status; false when polling must stop.
  function accept(res) {
    if (res.status === 401) { unauthorized(); return false; }
    if (res.status === 404 && res.data && /disabled/.test(String(res.data.error))) { showDisabled(); return false; }
    if (!res.ok) throw new Error(errorText(res));
    return true;
  }

  function stop() {
    st.running = false;
    if (st.timer) clearTimeout(st.timer);
    st.timer = null;
  }

  function start() {
    stop();
    st.running = true;
    st.ticks = 0;
    st.openKeys = null;
    show('login', false);
    show('disabled', false);
    show('console', true);
    show('sign-out', true);
    setLive('stale', 'connecting…');
    poll();
  }

  // Every page of GET /admin/circuits?{query} (at most maxPages): each next page starts after
  // the last circuit's id. Answers like api(), data being the circuits of every page, and
  // `more` when pages were left.
  async function pages(query, maxPages) {
    let data = [];
    let after = null;
    for (let n = 0; n < maxPages; n++) {
      let path = '/admin/circuits?' + query + '&limit=' + PAGE;
      if (after !== null) path += '&after=' + encodeURIComponent(after);
      const r = await api('GET', path);
      if (!r.ok) return r;
      if (!Array.isArray(r.data)) return { status: r.status, ok: false, data: null };
      data = data.concat(r.data);
      if (r.data.length < PAGE) return { status: r.status, ok: true, data, more: false };
      after = keyOf(r.data[r.data.length - 1]);
    }
    return { status: 200, ok: true, data, more: true };
  }

  async function refreshAll() {
    const [open, closed, acc] = await Promise.all([
      pages('state=open', Infinity), pages('state=closed', CLOSED_PAGES), api('GET', '/admin/accounts'),
    ]);
    if (!accept(open) || !accept(closed) || !accept(acc)) return false;
    st.circuits = new Map(open.data.concat(closed.data).map((c) => [keyOf(c), c]));
    st.closedMore = closed.more;
    st.accounts = acc.data;
    return true;
  }

  async function poll() {
    if (!st.running) return;
    try {
      const open = await pages('state=open', Infinity);
      if (!accept(open)) return;
      const keys = open.data.map(keyOf).sort().join(',');
      let ok = true;
      if (st.ticks % FULL_EVERY === 0 || keys !== st.openKeys) {
        ok = await refreshAll();
      }
      if (!ok) return;
      // The open list is the freshest word on open circuits.
      for (const c of open.data) st.circuits.set(keyOf(c), c);
      st.openKeys = keys;
      if (st.ticks % EXTRAS_EVERY === 0) probeExtras();
      st.lastOk = Date.now();
      setLive('ok', 'live');
      clearBanner();
      render();
    } catch (e) {
      setLive('error', 'admin API unreachable');
      banner('Cannot reach the admin API: ' + (e && e.message ? e.message : e) + '. Retrying every second.');
    } finally {
      st.ticks++;
      if (st.running) st.timer = setTimeout(poll, POLL_MS);
    }
  }

  function render() {
    renderTiles();
    renderCircuits(false);
    renderAccounts();
    tickClocks();
  }

  // ---------- actions ----------

  function dialogError(id, msg) {
    const p = $(id);
    p.textContent = msg || '';
    p.hidden = !msg;
  }

  function askOpen(key) {
    $('open-form').reset();
    dialogError('o-error', '');
    $('o-id').value = key || '';
    $('open-dialog').showModal();
    (key ? $('o-reason') : $('o-id')).focus();
  }

  function askClose(key) {
    $('close-form').reset();
    dialogError('c-error', '');
    $('c-id').textContent = key;
    $('close-dialog').setAttribute('data-key', key);
    $('close-dialog').showModal();
    $('c-reason').focus();
  }

  async function submitOpen(ev) {
    ev.preventDefault();
    const id = $('o-id').value.trim();
    if (!ID_RE.test(id)) {
      dialogError('o-error', 'The circuit is a numeric WABA id, phone:{phone number id} or template:{waba}:{name}:{language}.');
      return;
    }
    const body = {};
    if ($('o-scope').value) body.scope = $('o-scope').value;
    const reason = $('o-reason').value.trim();
    if (reason) body.reason = reason;
    const end = document.querySelector('input[name="o-end"]:checked').value;
    if (end === 'for') {
      const f = $('o-for').value.trim();
      if (!f) { dialogError('o-error', 'Give a duration, such as 2h or 90m.'); return; }
      body.for = f;
    } else if (end === 'until') {
      const v = $('o-until').value;
      const d = new Date(v);
      if (!v || isNaN(d)) { dialogError('o-error', 'Pick a date and time.'); return; }
      body.until = d.toISOString();
    }
    await operate(id, 'open', body, 'o-error', $('open-dialog'));
  }

  async function submitClose(ev) {
    ev.preventDefault();
    const key = $('close-dialog').getAttribute('data-key') || '';
    const body = {};
    const reason = $('c-reason').value.trim();
    if (reason) body.reason = reason;
    await operate(key, 'close', body, 'c-error', $('close-dialog'));
  }

  async function operate(key, op, body, errId, dialog) {
    if (!ID_RE.test(key)) { dialogError(errId, 'Not a circuit id: ' + key); return; }
    let r;
    try {
      r = await api('POST', '/admin/circuits/' + key + '/' + op, body);
    } catch (e) {
      dialogError(errId, 'Cannot reach the admin API: ' + (e && e.message ? e.message : e));
      return;
    }
    if (r.status === 401) { dialog.close(); unauthorized(); return; }
    if (!r.ok) { dialogError(errId, errorText(r)); return; }
    dialog.close();
    const notes = [];
    if (r.data && r.data.warning) notes.push(r.data.warning);
    banner((op === 'open' ? 'Opened ' : 'Closed ') + key + (notes.length ? ' — ' + notes.join('; ') : '') + '.', 'info');
    if (r.data) st.circuits.set(keyOf(r.data), r.data);
    st.openKeys = null; // refetch everything on the next poll
    render();
    if (st.running) { if (st.timer) clearTimeout(st.timer); st.timer = setTimeout(poll, 50); }
  }

  // ---------- wiring ----------

  async function connect(token) {
    st.token = token;
    let r;
    try {
      r = await api('GET', '/admin/circuits?state=open&limit=1');
    } catch (e) {
      showLogin('Cannot reach the admin API: ' + (e && e.message ? e.message : e));
      return;
    }
    if (r.status === 404 && r.data && /disabled/.test(String(r.data.error))) { showDisabled(); return; }
    if (r.status === 401) {
      if (token) { unauthorized(); } else { showLogin(''); }
      return;
    }
    if (!r.ok) { showLogin('The admin API answered: ' + errorText(r)); return; }
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    banner('');
    start();
  }

  function init() {
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const t = $('token').value.trim();
      if (t) connect(t);
    });
    $('sign-out').addEventListener('click', () => {
      st.token = '';
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin('The token is forgotten in this tab.', 'info');
    });
    $('open-new').addEventListener('click', () => askOpen(''));
    $('open-form').addEventListener('submit', submitOpen);
    $('close-form').addEventListener('submit', submitClose);
    $('o-cancel').addEventListener('click', () => $('open-dialog').close());
    $('c-cancel').addEventListener('click', () => $('close-dialog').close());
    $('o-for').addEventListener('focus', () => { document.querySelector('input[name="o-end"][value="for"]').checked = true; });
    $('o-until').addEventListener('focus', () => { document.querySelector('input[name="o-end"][value="until"]').checked = true; });
    for (const id of ['f-text', 'f-state', 'f-level', 'f-source']) {
      $(id).addEventListener('input', () => renderCircuits(true));
    }
    setInterval(tickClocks, 1000);
    // Probe first: the page says whether the admin API is disabled even without a token.
    connect(st.token);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
