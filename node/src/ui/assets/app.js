// The store's tablet UI. Plain JavaScript, served by the node itself: no framework, nothing from the
// internet. Talks to the node's JSON API and listens to its live stream of incident changes.
'use strict';

const $ = (s) => document.querySelector(s);
const KINDS = ['loitering', 'shelf_interaction', 'shelf_sweep', 'exit_without_checkout', 'after_hours',
  'restricted_entry', 'crowding', 'camera_tamper', 'camera_offline', 'line_crossing'];
const SEVERITY = { info: 0, low: 1, medium: 2, high: 3, critical: 4 };
let me = null;
let source = null;
let alertsOn = false;
let audio = null;
const feed = new Map();

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else if (k.startsWith('data-')) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? '' : String(c)));
  return e;
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && me) headers['X-CSRF-Token'] = me.csrf;
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), credentials: 'same-origin' });
  if (r.status === 401 && path !== '/api/login') { showLogin(); throw new Error('log in first'); }
  const type = r.headers.get('content-type') || '';
  const data = type.includes('json') ? await r.json() : await r.text();
  if (!r.ok) throw new Error((data && data.error) || r.statusText);
  return data;
}

const fmtTime = (ms) => (ms ? new Date(ms).toLocaleString() : '');
const label = (k) => k.replace(/_/g, ' ');

function showLogin() {
  if (source) { source.close(); source = null; }
  me = null;
  $('#app').classList.add('hidden');
  $('#login').classList.remove('hidden');
  $('#login-name').focus();
  showTrust();
}

// Where a tablet gets the store's certificate, shown under the login form.
async function showTrust() {
  try {
    const r = await fetch('/api/trust', { credentials: 'same-origin' });
    const t = await r.json();
    if (!t.https) return;
    $('#trust-fp').textContent = t.fingerprint;
    $('#trust-scope').textContent = t.store_wide
      ? `Store ${t.store}: one certificate for all its nodes.`
      : 'This store has no certificate authority of its own yet: this certificate is this node\'s only.';
    $('#trust-qr').innerHTML = t.qr_svg;
    $('#trust').classList.remove('hidden');
  } catch (e) { /* the login works without it */ }
}

async function start() {
  $('#login').classList.add('hidden');
  $('#app').classList.remove('hidden');
  $('#brand').textContent = `lpmesh · ${me.store} · ${me.node}`;
  $('#user').textContent = `${me.name} (${me.role})`;
  document.querySelectorAll('.manager-only').forEach((e) => e.classList.toggle('hidden', me.role !== 'manager'));
  const kindSel = document.querySelector('#filters select[name=kind]');
  if (kindSel.options.length === 1) KINDS.forEach((k) => kindSel.append(el('option', { value: k }, label(k))));
  connect();
  await loadFeed();
  route();
}

function connect() {
  if (source) source.close();
  source = new EventSource('/api/stream');
  source.addEventListener('incident', (ev) => {
    const msg = JSON.parse(ev.data);
    upsertFeed(msg.incident, msg.new);
    if (msg.new) notify(msg.incident);
    if (location.hash === `#/incident/${encodeURIComponent(msg.incident.id)}`) renderIncident(msg.incident);
  });
  source.addEventListener('resync', () => loadFeed());
  source.onerror = () => {
    $('#banner').textContent = 'Connection to the node lost; reconnecting…';
    $('#banner').classList.remove('hidden');
    // A session ended elsewhere (the user removed or changed on any node) closes the stream: the
    // node says 401 and the page goes back to the login.
    api('GET', '/api/me').catch(() => {});
  };
  source.onopen = () => $('#banner').classList.add('hidden');
}

// Repeats of one kind at one camera and zone within this long fold into one row: a guard reads what
// is going on, not 300 lines of the same crowding.
const FOLD_MS = 10 * 60 * 1000;
let feedAll = localStorage.getItem('lpmesh-feed-all') === '1';

function feedItem(g) {
  const i = g.latest;
  const li = el('li', { class: `sev-${g.severity}`, 'data-id': i.id, 'data-ids': g.ids.join(' '), 'data-count': String(g.count) },
    el('span', { class: `badge ${g.severity}` }, g.severity),
    el('b', { class: 'what' }, label(i.kind)),
    g.count > 1 ? el('span', { class: 'count', title: `${g.count} incidents` }, `×${g.count}`) : '',
    el('span', { class: 'where' }, `${i.camera}${i.zone ? ' · ' + i.zone : ''}`),
    el('span', { class: 'muted when' }, fmtTime(i.started_at_ms)),
    el('span', { class: 'state' }, `${label(i.state)}${i.ongoing ? ' · ongoing' : ''}`));
  li.addEventListener('click', () => { location.hash = `#/incident/${encodeURIComponent(i.id)}`; });
  return li;
}

// The feed's rows: newest first, repeats folded, below medium left out unless "all" is on.
function feedGroups() {
  const shown = [...feed.values()]
    .filter((i) => feedAll || SEVERITY[i.severity] >= SEVERITY.medium)
    .sort((a, b) => b.started_at_ms - a.started_at_ms);
  const groups = [];
  const open = new Map();
  for (const i of shown) {
    const key = `${i.kind}|${i.camera}|${i.zone || ''}`;
    const g = open.get(key);
    if (g && g.oldest - i.started_at_ms <= FOLD_MS) {
      g.count += 1;
      g.ids.push(i.id);
      g.oldest = i.started_at_ms;
      if (SEVERITY[i.severity] > SEVERITY[g.severity]) g.severity = i.severity;
      continue;
    }
    const fresh = { latest: i, ids: [i.id], count: 1, oldest: i.started_at_ms, severity: i.severity };
    open.set(key, fresh);
    groups.push(fresh);
  }
  return groups.slice(0, 100);
}

function renderFeed(freshId) {
  const rows = feedGroups().map((g) => {
    const li = feedItem(g);
    if (freshId && g.latest.id === freshId) li.classList.add('fresh');
    return li;
  });
  $('#feed').replaceChildren(...rows);
  $('#feed-empty').classList.toggle('hidden', rows.length > 0);
}

function upsertFeed(i, fresh) {
  if (i.kind === 'line_crossing') return;
  feed.set(i.id, i);
  // Bounded: the oldest incidents leave the page's memory (the Incidents tab has them all).
  if (feed.size > 1000) {
    const oldest = [...feed.values()].sort((a, b) => a.started_at_ms - b.started_at_ms).slice(0, feed.size - 1000);
    oldest.forEach((o) => feed.delete(o.id));
  }
  renderFeed(fresh ? i.id : null);
}

async function loadFeed() {
  const items = await api('GET', '/api/incidents?limit=200');
  feed.clear();
  items.forEach((i) => { if (i.kind !== 'line_crossing') feed.set(i.id, i); });
  renderFeed(null);
}

function beep() {
  try {
    audio = audio || new AudioContext();
    const o = audio.createOscillator();
    const g = audio.createGain();
    o.frequency.value = 880;
    g.gain.setValueAtTime(0.25, audio.currentTime);
    g.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.6);
    o.connect(g).connect(audio.destination);
    o.start();
    o.stop(audio.currentTime + 0.6);
  } catch (e) { /* no sound on this browser */ }
}

function notify(i) {
  if (SEVERITY[i.severity] < SEVERITY.medium || i.kind === 'line_crossing') return;
  if (alertsOn) beep();
  if (alertsOn && 'Notification' in window && Notification.permission === 'granted') {
    const n = new Notification(`${i.severity.toUpperCase()}: ${label(i.kind)}`, { body: `${i.camera}${i.zone ? ' · ' + i.zone : ''}`, tag: i.id });
    n.onclick = () => { window.focus(); location.hash = `#/incident/${encodeURIComponent(i.id)}`; };
  }
}

async function loadCameras() {
  const cams = await api('GET', '/api/cameras');
  const box = $('#cameras');
  box.replaceChildren(...cams.map((c) => {
    const occ = Object.entries(c.occupancy || {}).map(([z, n]) => `${z}: ${n}`).join(', ');
    const cls = !c.online ? 'cam offline' : c.tamper ? 'cam tamper' : 'cam';
    return el('div', { class: cls, 'data-camera': c.name },
      el('b', {}, c.name),
      el('span', { class: 'muted' }, c.node), el('br'),
      c.online ? `${c.fps.toFixed(1)} frames/s` : 'OFFLINE', el('br'),
      el('span', { class: 'muted' }, c.last_frame_ms ? `last frame ${fmtTime(c.last_frame_ms)}` : 'no frame yet'),
      c.tamper ? el('div', { class: 'error' }, `tamper: ${c.tamper}`) : '',
      occ ? el('div', {}, `people: ${occ}`) : '');
  }));
  $('#camera-names').replaceChildren(...cams.map((c) => el('option', { value: c.name })));
}

async function loadIncidents() {
  const form = new FormData($('#filters'));
  const q = new URLSearchParams();
  for (const [k, v] of form.entries()) {
    if (!v) continue;
    q.set(k, (k === 'from' || k === 'to') ? String(new Date(v).getTime()) : v);
  }
  const rows = await api('GET', `/api/incidents?${q}`);
  $('#incident-rows').replaceChildren(...rows.map((i) => {
    const tr = el('tr', { class: `sev-${i.severity}`, 'data-id': i.id },
      el('td', {}, fmtTime(i.started_at_ms)), el('td', {}, label(i.kind)),
      el('td', {}, el('span', { class: `badge ${i.severity}` }, i.severity)),
      el('td', {}, i.camera), el('td', {}, i.zone || ''), el('td', {}, label(i.state)));
    tr.addEventListener('click', () => { location.hash = `#/incident/${encodeURIComponent(i.id)}`; });
    return tr;
  }));
}

function renderIncident(i) {
  $('#incident-detail').replaceChildren(
    el('h2', {}, el('span', { class: `badge ${i.severity}` }, i.severity), label(i.kind)),
    el('p', {}, `Camera ${i.camera}${i.zone ? ', zone ' + i.zone : ''} on node ${i.node}`),
    el('p', {}, `Started ${fmtTime(i.started_at_ms)}${i.ended_at_ms ? ', ended ' + fmtTime(i.ended_at_ms) : i.ongoing ? ', ongoing' : ''}`),
    el('p', { id: 'incident-state' }, `State: ${label(i.state)}${i.acknowledged_by ? ' (first handled by ' + i.acknowledged_by + ')' : ''}`));
  $('#incident-detail').dataset.id = i.id;
  $('#history').replaceChildren(...i.history.map((h) => el('li', {},
    `${fmtTime(h.at_ms)} — ${label(h.what)}${h.by ? ' by ' + h.by : ''}${h.people ? ' (' + h.people + ' people)' : ''}${h.note ? ': ' + h.note : ''}`)));
}

async function showIncident(id) {
  $('#action-error').textContent = '';
  const i = await api('GET', `/api/incidents/${encodeURIComponent(id)}`);
  renderIncident(i);
  showEvidence(i);
}

// The still and the clip come from the node that keeps them, straight to this tablet (a grant from
// this node lets that node serve them). Evidence of a moment ago may still be being made: tried
// again for a while before the page says it is unavailable.
let evidenceTry = null;

async function showEvidence(i, waited = 0) {
  const box = $('#evidence');
  const still = $('#evidence-still');
  const clip = $('#evidence-clip');
  const note = $('#evidence-note');
  const dl = $('#evidence-download');
  clearTimeout(evidenceTry);
  box.dataset.for = i.id;
  for (const e of [still, clip, dl]) e.classList.add('hidden');
  still.removeAttribute('src');
  clip.removeAttribute('src');
  if (!i.evidence) { box.classList.add('hidden'); box.dataset.state = 'none'; return; }
  box.classList.remove('hidden');
  box.dataset.state = 'loading';
  note.textContent = `Evidence kept on node ${i.evidence.node}: loading…`;
  const unavailable = (why) => {
    box.dataset.state = 'unavailable';
    note.textContent = `Evidence kept on node ${i.evidence.node} is unavailable: ${why}.`;
  };
  let links;
  try {
    links = await api('GET', `/api/incidents/${encodeURIComponent(i.id)}/evidence`);
  } catch (e) { unavailable(e.message); return; }
  if (box.dataset.for !== i.id) return;
  if (links.status !== 'ok') {
    // The incident came before its node's heartbeat said where tablets reach it: asked again for
    // half a minute before the page says it is unavailable.
    if (links.retry && waited < 10) {
      note.textContent = `Evidence kept on node ${i.evidence.node}: waiting to hear from that node…`;
      evidenceTry = setTimeout(() => { if (box.dataset.for === i.id) showEvidence(i, waited + 1); }, 3000);
      return;
    }
    unavailable(links.why || 'none was kept');
    return;
  }
  let tries = 0;
  // The links' grants last minutes: a clip played (or downloaded) later asks for fresh ones.
  const fresh = async () => {
    const l = await api('GET', `/api/incidents/${encodeURIComponent(i.id)}/evidence`);
    if (l.status === 'ok') links = l;
    return links;
  };
  let clipRetried = false;
  clip.onerror = async () => {
    if (clipRetried || box.dataset.for !== i.id) return;
    clipRetried = true;
    const at = clip.currentTime;
    clip.src = (await fresh()).clip;
    clip.currentTime = at;
  };
  dl.onclick = async (ev) => {
    ev.preventDefault();
    const l = await fresh().catch(() => links);
    if (l.download) location.href = l.download;
  };
  still.onload = () => {
    if (box.dataset.for !== i.id) return;
    still.classList.remove('hidden');
    clip.src = links.clip;
    clip.classList.remove('hidden');
    if (links.download) { dl.href = links.download; dl.classList.remove('hidden'); }
    box.dataset.state = 'shown';
    note.textContent = `From node ${links.owner}; faces are hidden. It stays on that node.`;
  };
  still.onerror = () => {
    if (box.dataset.for !== i.id) return;
    const recent = Date.now() - i.started_at_ms < 60000;
    if (recent && tries++ < 15) {
      note.textContent = `Evidence kept on node ${links.owner}: being made…`;
      evidenceTry = setTimeout(() => { still.src = `${links.still}&try=${tries}`; }, 3000);
      return;
    }
    unavailable(`node ${links.owner} cannot be reached from this tablet now, or the evidence was deleted`);
  };
  // This page's policy lists the store's nodes it knew when it loaded: evidence on a node heard
  // from only since needs the page loaded again. Said, with a button; never reloaded under a
  // guard's finger.
  const origin = new URL(links.still, location.href).origin;
  const allowed = (document.querySelector('meta[name=lpmesh-evidence-origins]')?.content || '')
    .split(' ').filter(Boolean).map((o) => new URL(o).origin);
  if (origin !== location.origin && !allowed.includes(origin)) {
    box.dataset.state = 'reload';
    note.replaceChildren(`Evidence kept on node ${links.owner}, which this page did not know when it opened. `,
      el('button', { class: 'small secondary', onclick: () => location.reload() }, 'Reload to show it'));
    return;
  }
  still.src = links.still;
}

async function act(action) {
  const id = $('#incident-detail').dataset.id;
  const note = $('#note').value;
  try {
    const i = await api('POST', `/api/incidents/${encodeURIComponent(id)}/actions`, { action, note: note || null });
    $('#note').value = '';
    $('#action-error').textContent = '';
    renderIncident(i);
    upsertFeed(i, false);
  } catch (e) { $('#action-error').textContent = e.message; }
}

function loadCharts(days) {
  const t = Date.now();
  $('#chart-footfall').src = `/api/charts/footfall.svg?days=${days}&t=${t}`;
  $('#chart-incidents').src = `/api/charts/incidents.svg?days=${days}&t=${t}`;
}

async function loadMesh() {
  const m = await api('GET', '/api/mesh');
  const u = m.uplink;
  const card = (t, v) => el('div', { class: 'card' }, el('span', { class: 'muted' }, t), el('b', {}, v));
  $('#mesh-summary').replaceChildren(
    card('Nodes online', `${m.nodes.filter((n) => n.online).length} of ${m.nodes.length}`),
    card('Uplink leader', (m.nodes.find((n) => n.leader) || {}).name || 'none'),
    card('Last HQ sync', u && u.last_sync_ms ? fmtTime(u.last_sync_ms) : (u ? 'never from this node' : 'HQ not configured')),
    card('Outbox', u ? `${u.outbox} period(s)` : '-'),
    card('Records in the log', String(m.records)));
  $('#mesh-rows').replaceChildren(...m.nodes.map((n) => el('tr', {},
    el('td', {}, `${n.name}${n.this ? ' (this node)' : ''}`),
    el('td', {}, n.online ? 'online' : `silent ${n.silent_secs} s`),
    el('td', {}, n.leader ? 'leader' : ''), el('td', {}, n.hq_reachable ? 'reachable' : 'no'),
    el('td', {}, String(n.cameras)))));
  const names = Object.fromEntries(m.nodes.map((n) => [n.id, n.name]));
  const who = (id) => (names[id] && names[id] !== id ? `${names[id]} (${id.slice(-8)})` : id);
  $('#members-note').textContent = m.members ? 'Only these node keys may connect to the store.' : 'This store keeps no member list: every node holding its network key may connect.';
  $('#member-rows').replaceChildren(...(m.members || []).map((x) => el('tr', {},
    el('td', {}, who(x.node)),
    el('td', {}, x.name || ''),
    el('td', {}, x.founder ? 'founder' : (x.admitted_by ? who(x.admitted_by) : '')),
    el('td', {}, x.admitted_at_ms ? fmtTime(x.admitted_at_ms) : ''),
    el('td', {}, x.priority === null || x.priority === undefined ? 'own setting' : String(x.priority)),
    el('td', {}, revokeButton(x, m)))));
}

// Managers take a node out of the store (a stolen or retired box); never the founder or this node.
function revokeButton(x, m) {
  const here = (m.nodes.find((n) => n.this) || {}).id;
  if (!me || me.role !== 'manager' || x.founder || x.node === here) return '';
  const b = el('button', { class: 'secondary' }, 'Revoke');
  b.addEventListener('click', async () => {
    if (!confirm(`Take ${x.node} out of the store for good? Every node drops it at once.`)) return;
    try {
      await api('POST', `/api/members/${encodeURIComponent(x.node)}/revoke`, {});
      await loadMesh();
    } catch (e) { $('#banner').textContent = e.message; $('#banner').classList.remove('hidden'); }
  });
  return b;
}

// The store's users, for managers: one row each, with a removal button (not for oneself).
async function loadUsers() {
  const r = await api('GET', '/api/users');
  const rows = r.users.map((u) => {
    const remove = el('button', { class: 'secondary', type: 'button', 'data-user': u.name }, 'Remove');
    remove.disabled = u.name === me.name;
    remove.addEventListener('click', async () => {
      if (!confirm(`Remove ${u.name} from every node of the store?`)) return;
      try {
        await api('DELETE', `/api/users/${encodeURIComponent(u.name)}`);
        setTimeout(() => loadUsers().catch(() => {}), 1500);
      } catch (e) { $('#user-error').textContent = e.message; }
    });
    return el('tr', { 'data-user': u.name }, el('td', {}, u.name), el('td', {}, u.role), el('td', {}, remove));
  });
  $('#users-rows').replaceChildren(...rows);
}

let timer = null;
function route() {
  if (!me) return;
  const h = location.hash || '#/live';
  const [, tab, arg] = h.split('/');
  document.querySelectorAll('main > .view').forEach((v) => v.classList.add('hidden'));
  document.querySelectorAll('header nav a').forEach((a) => a.classList.toggle('active', a.dataset.tab === tab));
  clearInterval(timer);
  const show = (id) => $(`#view-${id}`).classList.remove('hidden');
  const guard = (p) => p.catch((e) => { $('#banner').textContent = e.message; $('#banner').classList.remove('hidden'); });
  switch (tab) {
    case 'incidents': show('incidents'); guard(loadIncidents()); break;
    case 'incident': show('incident'); guard(showIncident(decodeURIComponent(arg || ''))); break;
    case 'charts': show('charts'); loadCharts(1); break;
    case 'mesh': show('mesh'); guard(loadMesh()); timer = setInterval(() => guard(loadMesh()), 5000); break;
    case 'zones': show('zones'); if (window.lpZones) guard(window.lpZones.open()); break;
    case 'invite': show('invite'); break;
    case 'users': show('users'); guard(loadUsers()); break;
    default: show('live'); guard(loadCameras()); timer = setInterval(() => guard(loadCameras()), 3000);
  }
}

document.addEventListener('DOMContentLoaded', async () => {
  $('#login-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('#login-error').textContent = '';
    try {
      me = await api('POST', '/api/login', { name: $('#login-name').value, password: $('#login-password').value });
      $('#login-password').value = '';
      await start();
    } catch (e) { $('#login-error').textContent = e.message; }
  });
  $('#logout').addEventListener('click', async () => { try { await api('POST', '/api/logout'); } finally { showLogin(); } });
  $('#filters').addEventListener('submit', (ev) => { ev.preventDefault(); loadIncidents(); });
  document.querySelectorAll('#incident-actions button').forEach((b) => b.addEventListener('click', () => act(b.dataset.action)));
  document.querySelectorAll('button.days').forEach((b) => b.addEventListener('click', () => loadCharts(b.dataset.days)));
  $('#feed-all').checked = feedAll;
  $('#feed-all').addEventListener('change', () => {
    feedAll = $('#feed-all').checked;
    localStorage.setItem('lpmesh-feed-all', feedAll ? '1' : '0');
    renderFeed(null);
  });
  $('#enable-alerts').addEventListener('click', async () => {
    alertsOn = true;
    beep();
    if ('Notification' in window && Notification.permission === 'default') await Notification.requestPermission();
    $('#enable-alerts').textContent = 'Sound and notifications on';
  });
  $('#user-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('#user-error').textContent = '';
    try {
      await api('POST', '/api/users', {
        name: $('#user-name').value.trim(), role: $('#user-role').value, password: $('#user-password').value,
      });
      $('#user-password').value = '';
      await loadUsers();
    } catch (e) { $('#user-error').textContent = e.message; }
  });
  $('#invite-show').addEventListener('click', async () => {
    const p = Math.max(0, Math.min(255, parseInt($('#invite-priority').value, 10) || 0));
    const n = $('#invite-node').value.trim();
    const r = await api('GET', `/api/invite?priority=${p}${n ? `&node=${encodeURIComponent(n)}` : ''}`);
    $('#invite-qr').innerHTML = r.qr_svg;
    $('#invite-token').value = r.token;
    $('#invite-token').classList.remove('hidden');
  });
  window.addEventListener('hashchange', route);
  try { me = await api('GET', '/api/me'); await start(); } catch (e) { showLogin(); }
});

// ---- Zone editor: the node's own cameras, drawn on a still frame only this node serves ----
window.lpZones = (() => {
  const KINDS_Z = ['shelf', 'checkout', 'exit', 'entrance', 'restricted', 'general'];
  const NS = 'http://www.w3.org/2000/svg';
  let camera = null;
  let zones = [];
  let selected = -1;
  let drawing = null;
  let drag = null;

  const svg = () => $('#zone-svg');
  const point = (ev) => {
    const r = svg().getBoundingClientRect();
    const clamp = (v) => Math.min(1, Math.max(0, v));
    return [clamp((ev.clientX - r.left) / r.width), clamp((ev.clientY - r.top) / r.height)];
  };
  const svgEl = (tag, attrs) => {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    return e;
  };

  function render() {
    const s = svg();
    s.replaceChildren();
    zones.forEach((z, i) => {
      const poly = svgEl('polygon', { points: z.polygon.map((p) => p.join(',')).join(' '), class: i === selected ? 'selected' : '' });
      poly.dataset.index = i;
      poly.addEventListener('pointerdown', (ev) => { if (!drawing) { selected = i; render(); ev.stopPropagation(); } });
      s.append(poly);
    });
    const active = drawing ? drawing.polygon : (zones[selected] || {}).polygon;
    (active || []).forEach((p, j) => {
      const c = svgEl('circle', { cx: p[0], cy: p[1], r: 0.012 });
      c.addEventListener('pointerdown', (ev) => { if (!drawing) { drag = j; s.setPointerCapture(ev.pointerId); ev.stopPropagation(); } });
      s.append(c);
    });
    if (drawing && drawing.polygon.length > 1) s.append(svgEl('polyline', { points: drawing.polygon.map((p) => p.join(',')).join(' '), fill: 'none', stroke: '#f59e0b', 'stroke-width': 0.004 }));
    list();
  }

  function list() {
    $('#zone-list').replaceChildren(...zones.map((z, i) => {
      const name = el('input', { value: z.name, size: 14, 'data-field': 'name' });
      name.addEventListener('change', () => { z.name = name.value.trim(); });
      const kind = el('select', { 'data-field': 'kind' }, ...KINDS_Z.map((k) => el('option', { value: k, selected: k === z.kind }, k)));
      kind.addEventListener('change', () => { z.kind = kind.value; });
      const pick = el('button', { class: 'small secondary' }, i === selected ? 'editing' : 'edit');
      pick.addEventListener('click', () => { selected = i; render(); });
      const del = el('button', { class: 'small secondary' }, 'delete');
      del.addEventListener('click', () => { zones.splice(i, 1); selected = -1; render(); });
      return el('p', { class: 'actions' }, el('label', {}, 'Name', name), el('label', {}, 'Kind', kind), pick, del);
    }));
  }

  async function load(cam) {
    camera = cam;
    const r = await api('GET', `/api/zones/${encodeURIComponent(cam)}`);
    zones = r.zones.map((z) => ({ ...z, polygon: z.polygon.map((p) => [p[0], p[1]]) }));
    selected = -1;
    drawing = null;
    $('#zone-add').textContent = 'Draw a new zone';
    $('#zone-error').textContent = '';
    $('#zone-still').src = `/api/zones/${encodeURIComponent(cam)}/still.bmp?t=${Date.now()}`;
    render();
  }

  async function open() {
    const cams = await api('GET', '/api/zones');
    const sel = $('#zone-camera');
    sel.replaceChildren(...cams.map((c) => el('option', { value: c }, c)));
    $('#zone-hint').textContent = cams.length ? '' : 'This node has no cameras: edit zones on the UI of the node that has the camera.';
    if (cams.length) await load(camera && cams.includes(camera) ? camera : cams[0]);
  }

  document.addEventListener('DOMContentLoaded', () => {
    const s = svg();
    s.addEventListener('pointerdown', (ev) => {
      if (drawing) { drawing.polygon.push(point(ev)); render(); }
    });
    s.addEventListener('pointermove', (ev) => {
      if (drag !== null && zones[selected]) { zones[selected].polygon[drag] = point(ev); render(); }
    });
    s.addEventListener('pointerup', () => { drag = null; });
    $('#zone-camera').addEventListener('change', (ev) => load(ev.target.value));
    $('#zone-still').addEventListener('error', () => { $('#zone-hint').textContent = 'No frame from this camera yet; zones can still be edited.'; });
    $('#zone-add').addEventListener('click', () => {
      if (!drawing) {
        drawing = { name: `zone-${zones.length + 1}`, kind: 'general', polygon: [] };
        $('#zone-add').textContent = 'Finish the zone';
        $('#zone-hint').textContent = 'Tap the corners of the new zone on the picture, then finish.';
      } else {
        if (drawing.polygon.length >= 3) { zones.push(drawing); selected = zones.length - 1; }
        drawing = null;
        $('#zone-add').textContent = 'Draw a new zone';
        $('#zone-hint').textContent = '';
      }
      render();
    });
    $('#zone-save').addEventListener('click', async () => {
      $('#zone-error').textContent = '';
      try {
        const r = await api('PUT', `/api/zones/${encodeURIComponent(camera)}`, { zones });
        $('#zone-hint').textContent = `Saved ${r.saved} zone(s); the camera uses them now.`;
      } catch (e) { $('#zone-error').textContent = e.message; }
    });
  });
  return { open };
})();
