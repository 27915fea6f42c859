// hookq's web console: one page over the admin API (/api/v1), no framework.
//
// Views are chosen by the URL's hash (#/overview, #/endpoints,
// #/endpoints/<app>/<endpoint>, #/dlq?<filters>, #/dlq/<id>). The admin
// token lives in sessionStorage only (this tab, until it closes) and goes to
// the API as `Authorization: Bearer`; a 401 forgets it and asks again, a 404
// whose answer says the API is off shows that instead.
//
// Everything the API returns is put on the page as text (textContent and
// text nodes, never parsed as HTML), and the page loads nothing but its own three
// files: the server's Content-Security-Policy allows nothing else.
'use strict';

(() => {
  const TOKEN_KEY = 'hookq.adminToken';
  const API = '/api/v1';
  const POLL_MS = 2000;
  const SPARK_POINTS = 60;
  const VIEWS = ['login', 'off', 'overview', 'endpoints', 'endpoint', 'dlq', 'entry'];

  const $ = (id) => document.getElementById(id);

  /** An element with attributes (`text` sets its text) and children (strings become text nodes). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name === 'text') node.textContent = String(value);
      else if (name === 'class') node.className = value;
      else if (name === 'dataset') Object.assign(node.dataset, value);
      else if (value === true) node.setAttribute(name, '');
      else node.setAttribute(name, String(value));
    }
    for (const child of children) {
      if (child === undefined || child === null) continue;
      node.append(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return node;
  }

  // ---- formatting -------------------------------------------------------

  const nf = new Intl.NumberFormat();
  const dash = '–';

  function num(n) {
    return typeof n === 'number' && Number.isFinite(n) ? nf.format(n) : dash;
  }

  function rate(r) {
    if (r === null || r === undefined) return 'measuring…';
    return r >= 100 ? nf.format(Math.round(r)) : r.toFixed(1);
  }

  function duration(s) {
    if (typeof s !== 'number' || !Number.isFinite(s) || s < 0) return dash;
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
    return `${(s / 86400).toFixed(1)} days`;
  }

  function when(ms) {
    if (typeof ms !== 'number' || ms <= 0) return dash;
    const age = (Date.now() - ms) / 1000;
    return `${new Date(ms).toLocaleString()} (${duration(Math.max(age, 0))} ago)`;
  }

  function latency(l) {
    if (!l || typeof l.mean_ms !== 'number') return dash;
    return `mean ${l.mean_ms.toFixed(1)} ms, max ${Number(l.max_ms).toFixed(1)} ms over the last ${num(l.samples)} requests`;
  }

  function text(v) {
    if (v === null || v === undefined || v === '') return dash;
    return typeof v === 'object' ? JSON.stringify(v) : String(v);
  }

  function pretty(v) {
    if (v === null || v === undefined) return dash;
    if (typeof v === 'string') {
      try {
        return JSON.stringify(JSON.parse(v), null, 2);
      } catch {
        return v;
      }
    }
    return JSON.stringify(v, null, 2);
  }

  /** Seconds from an age as typed: `90`, `90s`, `10m`, `2h`, `1d`; null when empty; NaN when not an age. */
  function parseAge(input) {
    const s = input.trim();
    if (s === '') return null;
    const m = /^(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?$/i.exec(s);
    if (!m) return NaN;
    const unit = { s: 1, m: 60, min: 60, h: 3600, d: 86400 }[(m[2] || 's').toLowerCase()];
    return Math.round(Number(m[1]) * unit);
  }

  // ---- token, status line, confirmation ---------------------------------

  const token = {
    get: () => sessionStorage.getItem(TOKEN_KEY),
    set: (t) => sessionStorage.setItem(TOKEN_KEY, t),
    clear: () => sessionStorage.removeItem(TOKEN_KEY),
  };

  function say(message, kind) {
    const s = $('status');
    s.textContent = message || '';
    s.className = kind || '';
  }

  /** Asks in a modal dialog; resolves true when the operator confirms. */
  function confirmAction(title, message, okLabel) {
    const dialog = $('confirm');
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = message;
    $('confirm-ok').textContent = okLabel;
    return new Promise((resolve) => {
      const done = (answer) => {
        $('confirm-ok').onclick = null;
        $('confirm-cancel').onclick = null;
        dialog.oncancel = null;
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      $('confirm-ok').onclick = () => done(true);
      $('confirm-cancel').onclick = () => done(false);
      dialog.oncancel = () => done(false);
      dialog.showModal();
      $('confirm-cancel').focus();
    });
  }

  // ---- the API ----------------------------------------------------------

  /** An answer the console does not go on from (the views show its message). */
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** Thrown after the console switched to the sign-in or API-off view. */
  class Handled extends Error {}

  function errorMessage(body, status) {
    if (body && typeof body === 'object') {
      const e = body.error;
      if (typeof e === 'string') return e;
      if (e && typeof e.message === 'string') return e.message;
      if (typeof body.message === 'string') return body.message;
    }
    if (typeof body === 'string' && body.trim() !== '') return body.trim();
    return `HTTP ${status}`;
  }

  /** Whether a 404 answer says the admin API is off (rather than that a thing is missing). */
  function saysApiOff(body) {
    if (body && typeof body === 'object') {
      if (body.code === 'api_off' || body.api_off === true) return true;
    }
    return /\b(api|admin)\b.*\boff\b|admin_token/i.test(errorMessage(body, 404));
  }

  async function api(method, path, payload) {
    const t = token.get();
    if (!t) {
      showLogin('');
      throw new Handled('no token');
    }
    const init = {
      method,
      headers: { Authorization: `Bearer ${t}`, Accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
    };
    if (payload !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(payload);
    }
    let resp;
    try {
      resp = await fetch(API + path, init);
    } catch (e) {
      throw new ApiError(0, `The worker did not answer (${e.message}).`);
    }
    const raw = await resp.text();
    let body = raw;
    try {
      body = raw === '' ? null : JSON.parse(raw);
    } catch {
      // Not JSON: keep the text for the message.
    }
    if (resp.status === 401) {
      token.clear();
      showLogin('The worker refused that token. Enter the admin token again.');
      throw new Handled('unauthorized');
    }
    // The overview always exists, so its 404 can only mean the API is off.
    if (resp.status === 404 && (path === '/overview' || saysApiOff(body))) {
      showOff(errorMessage(body, 404));
      throw new Handled('api off');
    }
    if (!resp.ok) throw new ApiError(resp.status, errorMessage(body, resp.status));
    return body;
  }

  const get = (path) => api('GET', path);
  const post = (path, payload) => api('POST', path, payload);

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
    }
    const s = q.toString();
    return s ? `?${s}` : '';
  }

  // ---- views ------------------------------------------------------------

  /** Bumped on every navigation, so an answer for a view left behind is dropped. */
  let generation = 0;
  let pollTimer = null;

  function show(view) {
    for (const v of VIEWS) $(`${v}-view`).hidden = v !== view;
    const signedIn = view !== 'login' && view !== 'off';
    $('nav').hidden = !signedIn;
    $('sign-out').hidden = !signedIn;
    const section = { overview: 'overview', endpoints: 'endpoints', endpoint: 'endpoints', dlq: 'dlq', entry: 'dlq' }[view];
    for (const a of $('nav').querySelectorAll('a')) {
      if (a.id === `nav-${section}`) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
  }

  function stopPolling() {
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = null;
  }

  function showLogin(message) {
    stopPolling();
    generation += 1;
    show('login');
    say('');
    $('login-error').textContent = message || '';
    $('token').value = '';
    $('token').focus();
  }

  function showOff(message) {
    stopPolling();
    generation += 1;
    show('off');
    say('');
    $('off-message').textContent = message;
  }

  /** Shows an error of a view's load (the sign-in and API-off views speak for themselves). */
  function failed(e) {
    if (e instanceof Handled) return;
    say(e.message || String(e), 'error');
  }

  function kvRows(tbody, rows) {
    tbody.replaceChildren(
      ...rows.map(([label, value, id]) =>
        el('tr', {}, el('th', { scope: 'row', text: label }),
          typeof value === 'string' ? el('td', { id, text: value }) : el('td', { id }, value))),
    );
  }

  function statePill(state) {
    return el('span', { class: `pill ${String(state || 'unknown')}`, text: text(state) });
  }

  /** The circuit breaker's state (closed, open, disabled), or a dash when not tracked. */
  function circuitPill(circuit) {
    if (circuit === null || circuit === undefined) return text(circuit);
    return el('span', { class: `pill circuit-${String(circuit)}`, text: text(circuit) });
  }

  function endpointHash(app, endpoint) {
    return `#/endpoints/${encodeURIComponent(app)}/${encodeURIComponent(endpoint)}`;
  }

  // Overview: polled every POLL_MS while shown; rates are the change of the
  // worker's totals between two polls over the time between them.

  let lastSample = null;
  const sparkRates = [];

  async function overview(gen) {
    show('overview');
    const poll = async () => {
      let o;
      try {
        o = await get('/overview');
      } catch (e) {
        if (gen === generation) failed(e);
        if (gen === generation && !(e instanceof Handled)) pollTimer = setTimeout(poll, POLL_MS * 2);
        return;
      }
      if (gen !== generation) return;
      say('');
      renderOverview(o);
      pollTimer = setTimeout(poll, POLL_MS);
    };
    await poll();
  }

  function renderOverview(o) {
    const queue = o.queue || {};
    const q = queue.depth || {};
    const w = o.worker || {};
    const t = o.totals || {};
    const e = o.endpoints || {};
    $('queue-ready').textContent = num(q.ready);
    $('queue-delayed').textContent = num(q.delayed);
    $('queue-held').textContent = num(q.held);
    $('queue-dead-link').textContent = num(q.dead);
    $('endpoints-healthy').textContent = num(e.healthy);
    $('endpoints-failing').textContent = num(e.failing);
    $('endpoints-idle').textContent = num(e.idle);
    $('worker-info').textContent =
      `${text(queue.driver)} queue · hookq ${text(w.version)} · up ${duration(w.uptime_s)} · ${num(w.held_jobs)} jobs held`;

    const now = performance.now();
    const sample = { at: now, uptime: w.uptime_s, totals: t };
    let rates = null;
    const prev = lastSample;
    if (prev && now - prev.at >= 500 && now - prev.at < 60000 && !(w.uptime_s < prev.uptime)) {
      const dt = (now - prev.at) / 1000;
      const d = (k) => Math.max(0, (t[k] || 0) - (prev.totals[k] || 0)) / dt;
      rates = {
        events: d('events_delivered'),
        requests: d('requests_delivered'),
        failed: d('requests_failed'),
        dead: d('dead_lettered'),
      };
    }
    if (!prev || rates || now - prev.at >= 60000) lastSample = sample;
    if (rates) {
      sparkRates.push(rates.events);
      if (sparkRates.length > SPARK_POINTS) sparkRates.shift();
    }
    $('rate-events').textContent = rate(rates && rates.events);
    $('rate-requests').textContent = rate(rates && rates.requests);
    $('rate-failed').textContent = rate(rates && rates.failed);
    $('rate-dead').textContent = rate(rates && rates.dead);
    drawSpark();

    kvRows($('totals').tBodies[0], [
      ['Events delivered', num(t.events_delivered), 'total-events-delivered'],
      ['Requests delivered', num(t.requests_delivered), 'total-requests-delivered'],
      ['Requests failed', num(t.requests_failed), 'total-requests-failed'],
      ['Retries scheduled', num(t.retries_scheduled), 'total-retries-scheduled'],
      ['Dead-lettered', num(t.dead_lettered), 'total-dead-lettered'],
    ]);
  }

  /** The sparkline of events/s over the polls so far (up to SPARK_POINTS), across the full width. */
  function drawSpark() {
    const svg = $('spark');
    const caption = $('spark-caption');
    const n = sparkRates.length;
    // An SVG element has no `hidden` property: set the attribute.
    svg.toggleAttribute('hidden', n < 2);
    caption.hidden = n < 2;
    if (n < 2) return;
    const max = Math.max(1, ...sparkRates);
    const step = 300 / (n - 1);
    const points = sparkRates
      .map((r, i) => `${(i * step).toFixed(1)},${(38 - (r / max) * 34).toFixed(1)}`)
      .join(' ');
    const line = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
    line.setAttribute('points', points);
    svg.replaceChildren(line);
    const peak = Math.max(...sparkRates);
    caption.textContent = `Events delivered/s over the last ${duration((n * POLL_MS) / 1000)}, peak ${rate(peak)}/s`;
  }

  // Endpoints.

  async function endpoints(gen, params) {
    show('endpoints');
    const app = params.get('app') || '';
    $('endpoints-app').value = app;
    const tbody = $('endpoints-table').tBodies[0];
    tbody.replaceChildren();
    $('endpoints-empty').hidden = true;
    let list;
    try {
      list = await get(`/endpoints${query({ app })}`);
    } catch (e) {
      if (gen === generation) failed(e);
      return;
    }
    if (gen !== generation) return;
    say('');
    const rows = (list && list.endpoints) || [];
    tbody.replaceChildren(
      ...rows.map((ep) => {
        return el('tr', {},
          el('td', { text: text(ep.app_id) }),
          el('td', {}, el('a', { href: endpointHash(ep.app_id, ep.endpoint), class: 'endpoint-link', text: text(ep.endpoint) })),
          el('td', {}, statePill(ep.state)),
          el('td', {}, circuitPill(ep.circuit)),
          el('td', { class: 'url', text: ep.url === null ? '(no longer configured)' : text(ep.url) }),
          el('td', { class: 'num', text: num(ep.events_delivered) }),
          el('td', { class: 'num', text: num(ep.requests_delivered) }),
          el('td', { class: 'num', text: num(ep.requests_failed) }),
          el('td', { text: text(ep.last_status) }),
          el('td', { class: 'reason', text: text(ep.last_error) }));
      }),
    );
    $('endpoints-empty').hidden = rows.length > 0;
  }

  async function endpoint(gen, app, id) {
    show('endpoint');
    $('endpoint-title').textContent = `Endpoint ${id} of ${app}`;
    $('endpoint-dlq-link').href = `#/dlq${query({ app, endpoint: id })}`;
    const tbody = $('endpoint-detail').tBodies[0];
    tbody.replaceChildren();
    let ep;
    try {
      ep = await get(`/endpoints/${encodeURIComponent(app)}/${encodeURIComponent(id)}`);
    } catch (e) {
      if (gen === generation) failed(e);
      return;
    }
    if (gen !== generation) return;
    say('');
    kvRows(tbody, [
      ['App', text(ep.app_id)],
      ['Endpoint', text(ep.endpoint)],
      ['State', statePill(ep.state), 'endpoint-state'],
      ['Circuit', circuitPill(ep.circuit), 'endpoint-circuit'],
      ['Target', ep.target === null ? '(no longer configured)' : `${text(ep.target)}: ${text(ep.url)}`, 'endpoint-url'],
      ['Events delivered', num(ep.events_delivered), 'endpoint-events-delivered'],
      ['Requests delivered', num(ep.requests_delivered), 'endpoint-requests-delivered'],
      ['Requests failed', num(ep.requests_failed), 'endpoint-requests-failed'],
      ['Retries scheduled', num(ep.retries_scheduled)],
      ['Dead-lettered', num(ep.dead_lettered), 'endpoint-dead-lettered'],
      ['In flight', num(ep.in_flight)],
      ['Last success', when(ep.last_success_ms)],
      ['Last failure', when(ep.last_error_ms)],
      ['Last error', text(ep.last_error), 'endpoint-last-error'],
      ['Last status', text(ep.last_status)],
      ['Latency', latency(ep.latency)],
    ]);
  }

  // The dead-letter queue: the filters live in the hash, so a view can be
  // linked to and the browser's back button goes back through pages.

  let lastDlqHash = '#/dlq';
  /** Said once the next view has loaded (the outcome of an action that navigated away). */
  let pendingMessage = null;

  function dlqFilterFrom(params) {
    return {
      app: params.get('app') || '',
      endpoint: params.get('endpoint') || '',
      reason: params.get('reason') || '',
      older: params.get('older') || '',
      newer: params.get('newer') || '',
    };
  }

  /** The API's filter object for the form's filter; throws on an age that is not one. */
  function apiFilter(f) {
    const older = parseAge(f.older);
    const newer = parseAge(f.newer);
    if (Number.isNaN(older)) throw new Error(`"${f.older}" is not an age (try 90s, 10m, 2h or 1d).`);
    if (Number.isNaN(newer)) throw new Error(`"${f.newer}" is not an age (try 90s, 10m, 2h or 1d).`);
    const out = {};
    if (f.app) out.app = f.app;
    if (f.endpoint) out.endpoint = f.endpoint;
    if (f.reason) out.reason = f.reason;
    if (older !== null) out.older_than_s = older;
    if (newer !== null) out.newer_than_s = newer;
    return out;
  }

  /** The list shown: its filter (as typed and as sent), page size, offset and the next page's. */
  const dlqState = { filter: {}, apiFilter: {}, limit: 50, offset: 0, nextOffset: null };

  async function dlq(gen, params) {
    show('dlq');
    lastDlqHash = location.hash || '#/dlq';
    const f = dlqFilterFrom(params);
    $('dlq-app').value = f.app;
    $('dlq-endpoint').value = f.endpoint;
    $('dlq-reason').value = f.reason;
    $('dlq-older').value = f.older;
    $('dlq-newer').value = f.newer;
    const limit = Number(params.get('limit')) || 50;
    const offset = Math.max(0, Number(params.get('offset')) || 0);
    // A limit from a link may be none of the select's; it becomes one.
    const select = $('dlq-limit');
    if (![...select.options].some((o) => o.value === String(limit))) {
      select.append(el('option', { text: String(limit) }));
    }
    select.value = String(limit);
    $('dlq-error').textContent = '';
    let filter;
    try {
      filter = apiFilter(f);
    } catch (e) {
      $('dlq-error').textContent = e.message;
      return;
    }
    Object.assign(dlqState, { filter: f, apiFilter: filter, limit, offset, nextOffset: null });
    // Rows of another filter or page must not stay clickable while this one loads.
    $('dlq-table').tBodies[0].replaceChildren();
    $('dlq-empty').hidden = true;
    $('dlq-range').textContent = '';
    selectionChanged();
    let page;
    try {
      page = await get(`/dlq${query({ ...filter, limit, offset })}`);
    } catch (e) {
      if (gen === generation) failed(e);
      return;
    }
    if (gen !== generation) return;
    say('');
    const entries = page.entries || [];
    $('dlq-table').tBodies[0].replaceChildren(...entries.map(dlqRow));
    $('dlq-empty').hidden = entries.length > 0;
    $('dlq-select-all').checked = false;
    const from = (page.offset ?? offset) + 1;
    const to = (page.offset ?? offset) + entries.length;
    $('dlq-range').textContent = entries.length ? `Entries ${num(from)}–${num(to)}` : '';
    $('dlq-prev').disabled = offset === 0;
    $('dlq-next').disabled = page.next_offset === null || page.next_offset === undefined;
    dlqState.nextOffset = page.next_offset;
    selectionChanged();
  }

  function dlqRow(entry) {
    const check = el('input', {
      type: 'checkbox',
      class: 'dlq-select',
      'aria-label': `Select entry ${entry.id}`,
      dataset: { id: entry.id },
    });
    check.addEventListener('change', selectionChanged);
    return el('tr', { dataset: { id: entry.id } },
      el('td', {}, check),
      el('td', { text: when(entry.failed_at_ms) }),
      el('td', { text: text(entry.app_id) }),
      el('td', {}, entry.endpoint
        ? el('a', { href: endpointHash(entry.app_id, entry.endpoint), text: entry.endpoint })
        : dash),
      el('td', { class: 'reason' },
        el('a', { href: `#/dlq/${encodeURIComponent(entry.id)}`, class: 'entry-link', dataset: { id: entry.id }, text: text(entry.reason) })),
      el('td', { class: 'num', text: num(entry.attempts) }),
      el('td', { text: text(entry.last_status) }),
      el('td', { class: 'num', text: num(entry.events) }));
  }

  function selectedIds() {
    return [...document.querySelectorAll('#dlq-table .dlq-select:checked')].map((c) => c.dataset.id);
  }

  function selectionChanged() {
    const n = selectedIds().length;
    $('dlq-replay-selected').disabled = n === 0;
    $('dlq-purge-selected').disabled = n === 0;
    $('dlq-replay-selected').textContent = n ? `Replay selected (${n})` : 'Replay selected';
    $('dlq-purge-selected').textContent = n ? `Purge selected (${n})` : 'Purge selected';
  }

  function describeFilter(filter) {
    const parts = [];
    if (filter.app) parts.push(`app ${filter.app}`);
    if (filter.endpoint) parts.push(`endpoint ${filter.endpoint}`);
    if (filter.reason) parts.push(`reason containing "${filter.reason}"`);
    if (filter.older_than_s !== undefined) parts.push(`older than ${duration(filter.older_than_s)}`);
    if (filter.newer_than_s !== undefined) parts.push(`newer than ${duration(filter.newer_than_s)}`);
    return parts.length ? parts.join(', ') : null;
  }

  /**
   * Replays or purges, after the operator confirms; `what` is {ids} or
   * {filter}, `label` names what it selects, `one` whether that is one entry.
   */
  async function act(action, what, label, one) {
    const replay = action === 'replay';
    let consequence;
    if (replay) {
      consequence = one
        ? 'Its job goes back on the queue for its endpoint, and it leaves the dead-letter queue.'
        : 'Their jobs go back on the queue for their endpoints, and they leave the dead-letter queue.';
    } else {
      consequence = one
        ? 'It is deleted for good: nothing will deliver it.'
        : 'They are deleted for good: nothing will deliver them.';
    }
    const ok = await confirmAction(
      replay ? 'Replay dead letters' : 'Purge dead letters',
      `${replay ? 'Replay' : 'Purge'} ${label}? ${consequence}`,
      replay ? 'Replay' : 'Purge',
    );
    if (!ok) {
      say('Nothing was changed.');
      return null;
    }
    let body = what;
    // The API asks for `all: true` to purge everything (a filter left empty by mistake must not).
    if (!replay && what.filter && Object.keys(what.filter).length === 0) body = { all: true };
    try {
      const answer = await post(`/dlq/${action}`, body);
      const n = replay ? answer.replayed : answer.purged;
      const message = `${replay ? 'Replayed' : 'Purged'} ${num(n)} ${n === 1 ? 'entry' : 'entries'}.`;
      say(message, 'ok');
      // Said again once the list has reloaded (a view clears the status line as it loads).
      pendingMessage = message;
      return n;
    } catch (e) {
      failed(e);
      return null;
    }
  }

  async function actOnSelected(action) {
    const ids = selectedIds();
    if (!ids.length) return;
    const n = await act(action, { ids }, `${ids.length} selected ${ids.length === 1 ? 'entry' : 'entries'}`, ids.length === 1);
    if (n !== null) route();
  }

  async function actOnMatching(action) {
    const filter = dlqState.apiFilter;
    const d = describeFilter(filter);
    const n = await act(action, { filter }, d ? `every entry matching ${d}` : 'every entry in the dead-letter queue', false);
    if (n !== null) route();
  }

  async function entry(gen, id) {
    show('entry');
    $('entry-back').href = lastDlqHash;
    $('entry-title').textContent = `Dead letter ${id.slice(0, 12)}…`;
    const tbody = $('entry-detail').tBodies[0];
    tbody.replaceChildren();
    for (const pre of ['entry-body', 'entry-events', 'entry-job']) $(pre).textContent = '';
    $('entry-replay').disabled = true;
    $('entry-purge').disabled = true;
    let d;
    try {
      d = await get(`/dlq/${encodeURIComponent(id)}`);
    } catch (e) {
      if (gen !== generation) return;
      if (e instanceof ApiError && e.status === 404) say(`There is no dead letter ${id} (replayed or purged already?).`, 'error');
      else failed(e);
      return;
    }
    if (gen !== generation) return;
    say('');
    const events = Array.isArray(d.event_list) ? d.event_list : [];
    kvRows(tbody, [
      ['Id', text(d.id), 'entry-id'],
      ['Reason', text(d.reason), 'entry-reason'],
      ['App', text(d.app_id), 'entry-app'],
      ['Endpoint', d.endpoint
        ? el('a', { href: endpointHash(d.app_id, d.endpoint), text: d.endpoint })
        : dash, 'entry-endpoint'],
      ['Attempts', num(d.attempts), 'entry-attempts'],
      ['Last status', text(d.last_status), 'entry-status'],
      ['Failed at', when(d.failed_at_ms), 'entry-failed-at'],
      ['Kind', text(d.kind), 'entry-kind'],
      ['Webhook id', text(d.webhook_id), 'entry-webhook-id'],
      ['Events', num(d.events), 'entry-event-count'],
    ]);
    $('entry-body').textContent = d.body_excerpt ? d.body_excerpt : '(none)';
    $('entry-events').textContent = events.length ? pretty(events) : '(none)';
    $('entry-job').textContent = pretty(d.job);
    $('entry-replay').disabled = false;
    $('entry-purge').disabled = false;
    $('entry-replay').onclick = () => entryAction('replay', id);
    $('entry-purge').onclick = () => entryAction('purge', id);
  }

  async function entryAction(action, id) {
    const n = await act(action, { ids: [id] }, `dead letter ${id}`, true);
    if (n === null) return;
    if (n === 0) {
      pendingMessage = null;
      say(`Dead letter ${id} was no longer there: nothing ${action === 'replay' ? 'replayed' : 'purged'}.`, 'error');
      return;
    }
    go(lastDlqHash);
  }

  // ---- routing ----------------------------------------------------------

  function route() {
    stopPolling();
    generation += 1;
    const gen = generation;
    say('');
    if (!token.get()) {
      showLogin('');
      return;
    }
    const hash = location.hash.replace(/^#\/?/, '');
    const [path, q] = hash.split('?');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    const params = new URLSearchParams(q || '');
    let load;
    if (parts[0] === 'endpoints' && parts.length >= 3) load = endpoint(gen, parts[1], parts.slice(2).join('/'));
    else if (parts[0] === 'endpoints') load = endpoints(gen, params);
    else if (parts[0] === 'dlq' && parts.length >= 2) load = entry(gen, parts.slice(1).join('/'));
    else if (parts[0] === 'dlq') load = dlq(gen, params);
    else load = overview(gen);
    load.then(() => {
      if (pendingMessage && gen === generation) say(pendingMessage, 'ok');
      pendingMessage = null;
    }).catch(failed);
    $('main').focus({ preventScroll: true });
  }

  /** The hash of a DLQ view: a filter as the form holds it, a page size and an offset. */
  function dlqHash(f, limit, offset) {
    return `#/dlq${query({ ...f, limit: Number(limit) === 50 ? '' : limit, offset: offset || '' })}`;
  }

  function dlqFormFilter() {
    const v = (id) => $(id).value.trim();
    return { app: v('dlq-app'), endpoint: v('dlq-endpoint'), reason: v('dlq-reason'), older: v('dlq-older'), newer: v('dlq-newer') };
  }

  function go(hash) {
    if (location.hash === hash) route();
    else location.hash = hash;
  }

  function wire() {
    $('login-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const t = $('token').value.trim();
      if (!t) return;
      token.set(t);
      $('token').value = '';
      $('login-error').textContent = '';
      if (!location.hash || location.hash === '#' || location.hash === '#/') location.hash = '#/overview';
      else route();
    });
    $('sign-out').addEventListener('click', () => {
      token.clear();
      showLogin('Signed out.');
    });
    $('endpoints-filter').addEventListener('submit', (ev) => {
      ev.preventDefault();
      go(`#/endpoints${query({ app: $('endpoints-app').value.trim() })}`);
    });
    $('dlq-filter').addEventListener('submit', (ev) => {
      ev.preventDefault();
      go(dlqHash(dlqFormFilter(), $('dlq-limit').value, 0));
    });
    $('dlq-clear').addEventListener('click', () => go('#/dlq'));
    // The pager pages through the list shown, not through what the form holds unapplied.
    $('dlq-prev').addEventListener('click', () =>
      go(dlqHash(dlqState.filter, dlqState.limit, Math.max(0, dlqState.offset - dlqState.limit))));
    $('dlq-next').addEventListener('click', () => {
      if (dlqState.nextOffset !== null && dlqState.nextOffset !== undefined) {
        go(dlqHash(dlqState.filter, dlqState.limit, dlqState.nextOffset));
      }
    });
    $('dlq-select-all').addEventListener('change', (ev) => {
      for (const c of document.querySelectorAll('#dlq-table .dlq-select')) c.checked = ev.target.checked;
      selectionChanged();
    });
    $('dlq-replay-selected').addEventListener('click', () => actOnSelected('replay'));
    $('dlq-purge-selected').addEventListener('click', () => actOnSelected('purge'));
    $('dlq-replay-matching').addEventListener('click', () => actOnMatching('replay'));
    $('dlq-purge-matching').addEventListener('click', () => actOnMatching('purge'));
    window.addEventListener('hashchange', () => route());
  }

  document.addEventListener('DOMContentLoaded', () => {
    wire();
    route();
  });
})();
