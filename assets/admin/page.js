// tollgate admin page: the live list of refusals (Server-Sent Events from
// /admin/events), a refusal's decision trace (/admin/decisions/{id}), and the explain
// form (POST /admin/explain). Everything from the server is set with textContent:
// nothing is parsed as HTML. Loaded from 'self' under the page's CSP; no inline code.
'use strict';

const MAX_ROWS = 200;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

// The trace lines that belong to the refusing gate (highlighted besides the result).
const GATE_LINES = {
  token: /^(token|issuer|signature|claims|verified-token|kid|key|introspection|session)/,
  scopes: /^(auth:|scopes granted|permission)/,
  client: /^(auth:|identity)/,
  permission: /^(permission)/,
  'rate limit': /^(rate limit|limit)/,
  route: /^(route|path|normalised)/,
  upstream: /^(upstream)/,
  'sender constraint': /^(sender constraint|dpop|mtls)/,
};

function renderSteps(list, steps, gate) {
  list.replaceChildren();
  const re = gate ? GATE_LINES[gate] : null;
  for (const s of steps) {
    const li = el('li', s);
    if (/^result: DENY/.test(s)) li.className = 'failing';
    else if (re && re.test(s)) li.className = 'gate';
    list.append(li);
  }
}

function summary(p, allowed, status, gate, reason) {
  p.replaceChildren();
  if (allowed) {
    p.append(el('span', `ALLOW (${status})`, 'summary-allow'));
  } else {
    p.append(el('span', `DENY ${status}`, 'summary-deny'));
    p.append(document.createTextNode(' refused by the '));
    p.append(el('strong', gate || 'tollgate', 'failing-gate'));
    p.append(document.createTextNode(' step' + (reason ? `, reason ${reason}` : '')));
  }
}

async function showDecision(id, row) {
  for (const r of document.querySelectorAll('#denials tbody tr.selected')) r.classList.remove('selected');
  if (row) row.classList.add('selected');
  const box = document.getElementById('trace');
  const r = await fetch(`/admin/decisions/${encodeURIComponent(id)}`, { headers: { accept: 'application/json' } });
  const d = await r.json();
  box.hidden = false;
  document.getElementById('trace-id').textContent = id;
  const p = document.getElementById('trace-summary');
  if (!r.ok) {
    p.textContent = d.error_description || `HTTP ${r.status}`;
    document.getElementById('trace-steps').replaceChildren();
    return;
  }
  summary(p, false, d.status, d.gate, d.reason);
  p.append(document.createTextNode(` — ${d.time} — ${d.description}`));
  renderSteps(document.getElementById('trace-steps'), d.steps, d.gate);
}

function addRow(d) {
  const body = document.querySelector('#denials tbody');
  if (body.querySelector(`tr[data-seq="${Number(d.seq)}"]`)) return;
  const tr = el('tr');
  tr.dataset.seq = String(Number(d.seq));
  tr.dataset.requestId = d.request_id;
  const time = new Date(d.time_ms).toLocaleTimeString();
  for (const v of [time, d.status, d.gate, d.reason || d.error, d.route, d.method, d.path, d.client, d.remote, d.request_id]) {
    tr.append(el('td', v));
  }
  tr.addEventListener('click', () => {
    showDecision(d.request_id, tr).catch((e) => console.warn('decision lookup failed', e));
  });
  body.prepend(tr);
  while (body.rows.length > MAX_ROWS) body.deleteRow(body.rows.length - 1);
}

function live() {
  const state = document.getElementById('stream-state');
  const es = new EventSource('/admin/events');
  es.addEventListener('open', () => { state.textContent = 'live'; });
  es.addEventListener('error', () => { state.textContent = 'reconnecting…'; });
  es.addEventListener('decision', (ev) => {
    try {
      addRow(JSON.parse(ev.data));
    } catch (e) {
      console.warn('bad event', e);
    }
  });
}

function explainForm() {
  const form = document.getElementById('explain-form');
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const v = (id) => document.getElementById(id).value;
    const body = { token: v('ex-token').trim() || null, method: v('ex-method'), path: v('ex-path'), host: v('ex-host') || null, origin: v('ex-origin') || null };
    const box = document.getElementById('explain-result');
    const p = document.getElementById('explain-summary');
    box.hidden = false;
    p.textContent = 'running…';
    try {
      const r = await fetch('/admin/explain', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      const d = await r.json();
      if (!r.ok) {
        p.textContent = d.error_description || `HTTP ${r.status}`;
        document.getElementById('explain-steps').replaceChildren();
        return;
      }
      summary(p, d.allowed, d.status, d.gate, d.reason);
      renderSteps(document.getElementById('explain-steps'), d.steps, d.gate);
    } catch (e) {
      p.textContent = `explain failed: ${e}`;
    }
  });
}

document.addEventListener('DOMContentLoaded', () => {
  live();
  explainForm();
});
