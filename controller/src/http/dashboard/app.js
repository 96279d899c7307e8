// The hub dashboard: a snapshot at load, then server-sent events (the fleet
// every second, log lines as they arrive). Everything is drawn with the DOM
// and a canvas per chart; nothing is fetched from anywhere but the hub.
'use strict';

const HISTORY_MS = 15 * 60 * 1000;
const LOG_LINES_KEPT = 1000;

const RED = '#ff0000', GREEN = '#00ff00', BLUE = '#0000ff', ORANGE = '#ff7800',
  YELLOW = '#ffff00', PURPLE = '#8000ff', YELLOW_GREEN = '#a0ff00', AMBER = '#ffc800';

// Colours follow the LED rules the plugins apply, so the page and the strip agree.
function roomColour(v, node) {
  const high = latest(node, 'dht22', 'high_temp') ?? 30;
  if (v > high) return RED;
  if (v < 15) return BLUE;
  if (v < 25) return GREEN;
  return ORANGE;
}
function cpuColour(v) { return v > 70 ? RED : v >= 50 ? YELLOW : GREEN; }
function iaqColour(v, node) {
  if (latest(node, 'bme680', 'calibrating') === 1) return PURPLE;
  if (v <= 50) return GREEN;
  if (v <= 100) return YELLOW_GREEN;
  if (v <= 150) return AMBER;
  if (v < 200) return ORANGE;
  return RED;
}
function iaqWord(v) {
  return v <= 50 ? 'good' : v <= 100 ? 'moderate' : v <= 150 ? 'unhealthy for some' : v < 200 ? 'unhealthy' : 'very unhealthy';
}

// What to show for each series, in this order; anything else comes after.
const KNOWN = [
  { plugin: 'dht22', name: 'temperature', label: 'Room temperature', digits: 1, colour: roomColour,
    note: (v, node) => `alarm above ${fmt(latest(node, 'dht22', 'high_temp') ?? 30, 1)} °C` },
  { plugin: 'dht22', name: 'humidity', label: 'Room humidity', digits: 0 },
  { plugin: 'bme680', name: 'iaq', label: 'Air quality (IAQ)', digits: 0, colour: iaqColour,
    note: (v, node) => latest(node, 'bme680', 'calibrating') === 1 ? 'calibrating' : iaqWord(v) },
  { plugin: 'bme680', name: 'temperature', label: 'BME680 temperature', digits: 1 },
  { plugin: 'bme680', name: 'humidity', label: 'BME680 humidity', digits: 0 },
  { plugin: 'bme680', name: 'pressure', label: 'Pressure', digits: 0 },
  { plugin: 'bme680', name: 'gas_resistance', label: 'Gas resistance', digits: 0, scale: 0.001, unit: 'kΩ' },
  { plugin: 'system', name: 'cpu_temperature', label: 'CPU temperature', digits: 1, colour: cpuColour },
  { plugin: 'system', name: 'load1', label: 'Load (1 min)', digits: 2 },
  { plugin: 'netmon', prefix: 'rtt_', label: 'Ping', digits: 2, scale: 1000, unit: 'ms',
    colour: (v, node, s) => latest(node, 'netmon', 'up_' + s.name.slice(4)) === 0 ? RED : GREEN,
    note: (v, node, s) => (latest(node, 'netmon', 'up_' + s.name.slice(4)) === 0 ? 'unreachable: ' : 'reachable: ') + s.name.slice(4).replaceAll('_', '.') },
];
// Shown through other cards, or not worth a card.
const HIDDEN = new Set(['dht22/high_temp', 'bme680/calibrating', 'system/load5', 'system/uptime', 'buzzer/patterns_played']);
const UNITS = { celsius: '°C', percent: '%', hpa: 'hPa', iaq: '', ratio: '', bool: '', count: '', seconds: 's', ohms: 'Ω' };

const page = {
  snapshot: null,
  series: new Map(),   // "node/plugin/name" -> {node, plugin, name, unit, points: [[ms, v]]}
  cards: new Map(),    // same key -> card elements
  logs: new Map(),     // node -> [line]
  activeTab: null,
  tz: 'UTC',
  timeFmt: null,
  lastState: 0,
};

function fmt(v, digits) {
  return Number.isFinite(v) ? v.toFixed(digits) : '—';
}

function latest(node, plugin, name) {
  const s = page.series.get(`${node}/${plugin}/${name}`);
  return s && s.points.length ? s.points[s.points.length - 1][1] : undefined;
}

function setTimeZone(tz) {
  if (tz === page.tz && page.timeFmt) return;
  try {
    page.timeFmt = new Intl.DateTimeFormat('en-GB', { timeZone: tz, hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
    page.dateFmt = new Intl.DateTimeFormat('en-CA', { timeZone: tz, year: 'numeric', month: '2-digit', day: '2-digit' });
    page.tz = tz;
  } catch (e) {
    page.timeFmt = new Intl.DateTimeFormat('en-GB', { timeZone: 'UTC', hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
    page.dateFmt = new Intl.DateTimeFormat('en-CA', { timeZone: 'UTC', year: 'numeric', month: '2-digit', day: '2-digit' });
    page.tz = 'UTC';
  }
  document.getElementById('tz').textContent = page.tz;
}

function time(ms) { return page.timeFmt.format(new Date(ms)); }

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'role' || k === 'title' || k === 'tabindex' || k === 'type' || k === 'datetime') e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function nodeName(n) { return n.metadata.name; }

// ---- readings ----

function describe(s) {
  const known = KNOWN.find(k => k.plugin === s.plugin && (k.name === s.name || (k.prefix && s.name.startsWith(k.prefix))));
  return known || { label: `${s.plugin} ${s.name.replaceAll('_', ' ')}`, digits: 2 };
}

function order(s) {
  const i = KNOWN.findIndex(k => k.plugin === s.plugin && (k.name === s.name || (k.prefix && s.name.startsWith(k.prefix))));
  return i < 0 ? KNOWN.length : i;
}

// Points in time order, each once, whichever came first: the history
// answer may arrive after live updates newer than all of it.
function mergePoints(points, incoming) {
  for (const p of incoming) {
    const last = points[points.length - 1];
    if (!last || p[0] > last[0]) {
      points.push(p);
      continue;
    }
    let i = points.length - 1;
    while (i >= 0 && points[i][0] > p[0]) i--;
    if (i >= 0 && points[i][0] === p[0]) continue;
    points.splice(i + 1, 0, p);
  }
}

function ingestSeries(node, list) {
  for (const s of list) {
    const key = `${node}/${s.plugin}/${s.name}`;
    let mine = page.series.get(key);
    if (!mine) {
      mine = { node, plugin: s.plugin, name: s.name, unit: s.unit, points: [] };
      page.series.set(key, mine);
    }
    mine.unit = s.unit;
    mergePoints(mine.points, s.points);
    const cutoff = Date.now() - HISTORY_MS;
    while (mine.points.length > 2 && mine.points[0][0] < cutoff) mine.points.shift();
  }
}

function renderReadings() {
  const box = document.getElementById('readings');
  const shown = [...page.series.values()].filter(s => !HIDDEN.has(`${s.plugin}/${s.name}`) && !s.name.startsWith('up_'));
  shown.sort((a, b) => order(a) - order(b) || a.node.localeCompare(b.node) || a.name.localeCompare(b.name));
  if (shown.length) document.getElementById('readings-empty')?.remove();
  let previous = null;
  for (const s of shown) {
    const key = `${s.node}/${s.plugin}/${s.name}`;
    let card = page.cards.get(key);
    if (!card) {
      const d = describe(s);
      const unit = d.unit ?? UNITS[s.unit] ?? s.unit;
      card = {
        root: el('article', { class: 'card', 'data-reading': key }),
        value: el('span', { class: 'num', text: '—' }),
        note: el('div', { class: 'note' }),
        canvas: el('canvas', { 'aria-hidden': 'true' }),
        describe: d,
      };
      card.root.append(
        el('div', { class: 'label', text: `${d.label} · ${s.node}` }),
        el('div', { class: 'value' }, card.value, el('span', { class: 'unit', text: unit })),
        card.note,
        card.canvas,
      );
      page.cards.set(key, card);
    }
    // Keep cards in order without rebuilding them (no flicker, focus kept).
    const want = previous ? previous.nextSibling : box.firstChild;
    if (want !== card.root) box.insertBefore(card.root, want);
    previous = card.root;
    updateCard(card, s);
  }
}

function updateCard(card, s) {
  const d = card.describe;
  const v = s.points.length ? s.points[s.points.length - 1][1] : NaN;
  const scaled = v * (d.scale ?? 1);
  const text = fmt(scaled, d.digits);
  if (card.value.textContent !== text) card.value.textContent = text;
  card.root.dataset.value = String(v);
  card.root.dataset.at = String(s.points.length ? s.points[s.points.length - 1][0] : 0);
  card.root.dataset.since = String(s.points.length ? s.points[0][0] : 0);
  const colour = d.colour ? d.colour(v, s.node, s) : null;
  if (colour) {
    card.root.style.setProperty('--state', colour);
    card.root.dataset.color = colour;
  }
  const note = d.note ? d.note(v, s.node, s) : (s.points.length ? `updated ${time(s.points[s.points.length - 1][0])}` : '');
  if (note === 'calibrating') {
    if (!card.note.querySelector('.badge')) card.note.replaceChildren(el('span', { class: 'badge', text: 'calibrating' }), ' gas baseline');
  } else if (card.note.textContent !== note) {
    card.note.textContent = note;
  }
  drawChart(card.canvas, s.points, d.scale ?? 1, colour || '#4fc3f7');
}

function drawChart(canvas, points, scale, colour) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (!w || !h) return;
  if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
  }
  const g = canvas.getContext('2d');
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  if (points.length < 2) return;
  const t1 = points[points.length - 1][0], t0 = Math.max(points[0][0], t1 - HISTORY_MS);
  let lo = Infinity, hi = -Infinity;
  for (const [, v] of points) { lo = Math.min(lo, v * scale); hi = Math.max(hi, v * scale); }
  if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
  const pad = 12;
  const x = t => ((t - t0) / Math.max(1, t1 - t0)) * (w - 2) + 1;
  const y = v => h - pad / 2 - ((v * scale - lo) / (hi - lo)) * (h - pad * 1.5);
  g.strokeStyle = colour === '#000000' ? '#4fc3f7' : colour;
  g.lineWidth = 2;
  g.beginPath();
  points.forEach(([t, v], i) => (i ? g.lineTo(x(t), y(v)) : g.moveTo(x(t), y(v))));
  g.stroke();
  g.fillStyle = '#93a4b3';
  g.font = '10px system-ui, sans-serif';
  g.fillText(String(+hi.toFixed(2)), 2, 9);
  g.fillText(String(+lo.toFixed(2)), 2, h - 1);
}

// ---- LED strips ----

function renderStrips(nodes) {
  const box = document.getElementById('strips');
  const withLeds = nodes.filter(n => n.live && Array.isArray(n.live.leds) && n.live.leds.length);
  if (!withLeds.length) return;
  box.querySelector('.empty')?.remove();
  for (const n of withLeds) {
    const name = nodeName(n);
    let strip = box.querySelector(`.strip[data-node="${CSS.escape(name)}"]`);
    if (!strip) {
      strip = el('div', { class: 'strip', 'data-node': name }, el('span', { class: 'name', text: name }), el('div', { class: 'leds', role: 'list', 'aria-label': `LED strip of ${name}` }));
      box.append(strip);
    }
    const leds = strip.querySelector('.leds');
    n.live.leds.forEach((hex, i) => {
      let led = leds.children[i];
      if (!led) {
        led = el('div', { class: 'led', role: 'listitem', 'data-led': `${name}/${i}` }, el('span', { text: String(i) }));
        leds.append(led);
      }
      if (led.dataset.color !== hex) {
        led.dataset.color = hex;
        led.style.setProperty('--c', hex);
        led.style.setProperty('--glow', hex === '#000000' ? 'transparent' : hex + '88');
        led.title = `LED ${i}: ${hex === '#000000' ? 'off' : hex}`;
        led.setAttribute('aria-label', led.title);
      }
    });
  }
}

// ---- buzzer ----

async function buzz(pattern, button) {
  const result = document.getElementById('buzzer-result');
  const buttons = document.querySelectorAll('[data-buzzer]');
  buttons.forEach(b => (b.disabled = true));
  result.className = 'result';
  result.textContent = `sending ${pattern}…`;
  try {
    const r = await fetch(`/api/plugins/buzzer/commands/${encodeURIComponent(pattern)}`, {
      method: 'POST', headers: { 'X-Harvester': '1' },
    });
    const body = await r.json().catch(() => ({}));
    if (r.ok) {
      result.className = 'result ok';
      result.textContent = body.results.map(x => `${x.node}: ${x.message}`).join(', ');
    } else {
      result.className = 'result bad';
      result.textContent = body.message || (body.results || []).map(x => `${x.node}: ${x.message}`).join(', ') || `failed (${r.status})`;
    }
  } catch (e) {
    result.className = 'result bad';
    result.textContent = 'the hub did not answer';
  } finally {
    buttons.forEach(b => (b.disabled = false));
    button.focus();
  }
}

function renderBuzzer(nodes) {
  const all = [];
  for (const n of nodes) for (const b of (n.live && n.live.buzzer) || []) all.push({ ...b, node: nodeName(n) });
  all.sort((a, b) => b.at - a.at);
  const list = document.getElementById('buzzer-activity');
  const items = all.slice(0, 6).map(b => el('li', { 'data-action': b.action, 'data-node': b.node }, `${time(b.at)} · ${b.action} on ${b.node}`));
  const sig = items.map(i => i.textContent).join('|');
  if (list.dataset.sig !== sig) {
    list.dataset.sig = sig;
    list.replaceChildren(...items);
  }
}

// ---- plugins and nodes ----

function condPill(c) {
  const good = (c.type === 'Ready' || c.type === 'Verified') && c.status === 'True';
  const bad = (c.type === 'Degraded' && c.status === 'True') || (c.type === 'Ready' && c.status === 'False');
  const busy = c.type === 'Progressing' && c.status === 'True';
  return el('span', { class: 'cond' + (good ? ' good' : bad ? ' bad' : busy ? ' busy' : ''), title: c.message || c.reason, text: `${c.type}${c.status === 'True' ? '' : '=' + c.status} ${c.reason}` });
}

// Where a progressive rollout stands: the revision, the strategy's step,
// nodes per revision, and a badge when it waits or went back.
function rolloutLines(p) {
  const r = (p.status || {}).rollout;
  if (!r) return [];
  const strategy = ((p.spec.rollout || {}).strategy) || 'AllAtOnce';
  const counts = {};
  for (const rev of Object.values(r.nodes || {})) counts[rev] = (counts[rev] || 0) + 1;
  // Once complete, every node the plugin is placed on runs the newest.
  if (r.phase === 'Complete') counts[r.revision] = Object.keys((p.status || {}).nodes || {}).length;
  const perRevision = Object.entries(counts).sort((a, b) => b[0] - a[0]).map(([rev, n]) => `${n} on revision ${rev}`).join(', ');
  const steps = ((p.spec.rollout || {}).steps || []).length;
  const badge = { Aborted: ['bad', 'rolled back'], Paused: ['busy', 'paused'] }[r.phase];
  return [
    el('div', { class: 'rollout', 'data-phase': r.phase },
      badge ? el('span', { class: `cond ${badge[0]}`, text: badge[1] }) : null,
      el('span', { text: `revision ${r.revision} · ${strategy}${steps ? ` · step ${Math.min(r.step + 1, steps)}/${steps}` : ''} · ${perRevision}` })),
    r.message ? el('div', { class: 'rollout-note', text: r.message }) : null,
  ].filter(Boolean);
}

function renderPlugins(plugins) {
  const body = document.querySelector('#plugins tbody');
  const rows = plugins.map(p => {
    const st = p.status || {};
    const nodes = Object.entries(st.nodes || {});
    const gen = p.metadata.generation;
    const updated = nodes.filter(([, n]) => n.generation === gen && n.phase === 'Running').length;
    const digest = (p.spec.digest || st.digest || '').replace('sha256:', '').slice(0, 12);
    const pct = nodes.length ? Math.round((100 * updated) / nodes.length) : 0;
    return el('tr', { 'data-plugin': p.metadata.name },
      el('td', { 'data-label': 'Plugin' }, el('b', { text: p.metadata.name })),
      el('td', { 'data-label': 'Version' }, el('div', {}, `generation ${gen}`, el('br'), el('code', { text: p.spec.image }), digest ? el('br') : null, digest ? el('code', { text: 'artifact sha256:' + digest, title: 'The artifact digest: of the OCI manifest, what signatures sign (node logs name the component digest, of the .wasm bytes)' }) : null)),
      el('td', { 'data-label': 'Rollout' }, el('div', {}, el('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': String(nodes.length), 'aria-valuenow': String(updated) }, el('i', { style: `width:${pct}%` })),
        el('span', { class: 'progress-label', text: `${updated}/${nodes.length} nodes on generation ${gen}` }),
        ...rolloutLines(p))),
      el('td', { 'data-label': 'Conditions' }, el('div', {}, ...(st.conditions || []).map(condPill))),
      el('td', { 'data-label': 'Nodes' }, el('div', {}, ...nodes.map(([name, n]) => el('div', { text: `${name}: ${n.phase} (gen ${n.generation})${n.reason ? ' ' + n.reason : ''}`, title: n.message || '' })))),
    );
  });
  patchRows(body, rows);
}

// A node's roles are its labels node-role.harvester.dev/<role>, as
// Kubernetes's node-role.kubernetes.io/<role>.
const ROLE_PREFIX = 'node-role.harvester.dev/';
const ROLE_NOTES = {
  hub: 'The hub runs on this board: the API and store, this dashboard, and the code it compiles for the small boards.',
};

function roles(n) {
  return Object.keys(n.metadata.labels || {}).filter(k => k.startsWith(ROLE_PREFIX)).map(k => k.slice(ROLE_PREFIX.length)).filter(Boolean);
}

function renderNodes(nodes) {
  const body = document.querySelector('#nodes tbody');
  const now = page.snapshot ? page.snapshot.now : Date.now();
  const rows = nodes.map(n => {
    const st = n.status || {};
    const ready = (st.conditions || []).find(c => c.type === 'Ready');
    const ok = ready && ready.status === 'True';
    const plugins = Object.entries(st.plugins || {});
    const age = st.lastHeartbeat ? Math.max(0, Math.round((now - st.lastHeartbeat) / 1000)) : null;
    return el('tr', { 'data-node': nodeName(n) },
      el('td', { 'data-label': 'Node' }, el('div', {}, el('b', { text: nodeName(n) }),
        ...roles(n).map(r => el('span', { class: 'role', 'data-role': r, text: r, title: ROLE_NOTES[r] || `role ${r}` })),
        ...roles(n).filter(r => ROLE_NOTES[r]).map(r => el('div', { class: 'role-note', text: ROLE_NOTES[r] })),
        el('div', {}, el('code', { text: Object.entries(n.metadata.labels || {}).filter(([k]) => !k.startsWith(ROLE_PREFIX)).map(([k, v]) => `${k}=${v}`).join(', ') })))),
      el('td', { 'data-label': 'State', class: ok ? 'state-ready' : 'state-bad' }, el('span', { text: ok ? 'Ready' : (ready ? ready.reason : 'Unknown') })),
      el('td', { 'data-label': 'Board' }, el('span', { text: `${st.backend || '?'} · ${st.architecture || '?'}` })),
      el('td', { 'data-label': 'Devices' }, el('span', { text: (st.devices || []).join(', ') })),
      el('td', { 'data-label': 'Plugins' }, el('div', {}, ...plugins.map(([name, p]) => el('div', { text: `${name}: ${p.phase} (gen ${p.generation})` })))),
      el('td', { 'data-label': 'Last seen' }, el('span', { text: age == null ? '—' : `${time(st.lastHeartbeat)} (${age} s ago)` })),
    );
  });
  patchRows(body, rows);
}

// Replaces only rows whose text changed, so the table does not flicker.
function patchRows(body, rows) {
  rows.forEach((row, i) => {
    const old = body.children[i];
    if (!old) body.append(row);
    else if (old.textContent !== row.textContent || old.innerHTML !== row.innerHTML) body.replaceChild(row, old);
  });
  while (body.children.length > rows.length) body.lastChild.remove();
}

function renderSummary(nodes, plugins) {
  const ready = nodes.filter(n => ((n.status || {}).conditions || []).some(c => c.type === 'Ready' && c.status === 'True')).length;
  const pReady = plugins.filter(p => ((p.status || {}).conditions || []).some(c => c.type === 'Ready' && c.status === 'True')).length;
  const ns = document.getElementById('nodes-summary');
  ns.textContent = `${ready}/${nodes.length} nodes ready`;
  ns.classList.toggle('bad', ready < nodes.length);
  const ps = document.getElementById('plugins-summary');
  ps.textContent = `${pReady}/${plugins.length} plugins ready`;
  ps.classList.toggle('bad', pReady < plugins.length);
}

// ---- logs ----

function logKey(l) { return `${l.node}|${l.at}|${l.source}|${l.plugin || ''}|${l.message}`; }

function addLog(line, render) {
  let list = page.logs.get(line.node);
  if (!list) {
    list = [];
    page.logs.set(line.node, list);
    renderTabs();
  }
  list.push(line);
  if (list.length > LOG_LINES_KEPT) list.splice(0, list.length - LOG_LINES_KEPT);
  if (render && line.node === page.activeTab) appendLogLine(line);
}

function logLine(l) {
  return el('div', { class: `log-line ${l.level}`, 'data-node': l.node },
    el('time', { datetime: new Date(l.at).toISOString(), text: time(l.at) }), ' ',
    el('span', { class: 'lvl', text: l.level.toUpperCase() }), ' ',
    el('span', { class: 'src', text: l.plugin ? `[${l.plugin}${l.source === 'plugin' || l.source === 'node' ? '' : ' ' + l.source}]` : '[nodelet]' }), ' ',
    l.message);
}

function appendLogLine(l) {
  const panel = document.getElementById('log-panel');
  const atBottom = panel.scrollHeight - panel.scrollTop - panel.clientHeight < 40;
  panel.querySelector('.empty')?.remove();
  panel.append(logLine(l));
  while (panel.children.length > LOG_LINES_KEPT) panel.firstChild.remove();
  if (atBottom) panel.scrollTop = panel.scrollHeight;
}

function renderTabs() {
  const tabs = document.getElementById('log-tabs');
  const names = new Set([...page.logs.keys()]);
  if (page.snapshot) for (const n of page.snapshot.nodes) names.add(nodeName(n));
  const sorted = [...names].sort();
  if (!page.activeTab && sorted.length) page.activeTab = sorted.includes('pi4') ? 'pi4' : sorted[0];
  for (const name of sorted) {
    if (tabs.querySelector(`[data-node="${CSS.escape(name)}"]`)) continue;
    const tab = el('button', { type: 'button', role: 'tab', 'data-node': name, id: `tab-${name}`, 'aria-controls': 'log-panel', text: name });
    tab.addEventListener('click', () => selectTab(name, true));
    const before = [...tabs.children].find(t => t.dataset.node > name);
    tabs.insertBefore(tab, before || null);
  }
  for (const t of tabs.children) {
    const on = t.dataset.node === page.activeTab;
    t.setAttribute('aria-selected', on ? 'true' : 'false');
    t.tabIndex = on ? 0 : -1;
  }
}

function selectTab(name, focus) {
  page.activeTab = name;
  renderTabs();
  const panel = document.getElementById('log-panel');
  panel.setAttribute('aria-labelledby', `tab-${name}`);
  panel.dataset.node = name;
  const lines = page.logs.get(name) || [];
  panel.replaceChildren(...(lines.length ? lines.map(logLine) : [el('p', { class: 'empty', text: `No log lines from ${name} yet.` })]));
  panel.scrollTop = panel.scrollHeight;
  if (focus) document.getElementById(`tab-${name}`)?.focus();
}

function tabKeys(ev) {
  const tabs = [...document.querySelectorAll('#log-tabs [role="tab"]')];
  const i = tabs.findIndex(t => t.dataset.node === page.activeTab);
  let j = null;
  if (ev.key === 'ArrowRight') j = (i + 1) % tabs.length;
  else if (ev.key === 'ArrowLeft') j = (i - 1 + tabs.length) % tabs.length;
  else if (ev.key === 'Home') j = 0;
  else if (ev.key === 'End') j = tabs.length - 1;
  if (j == null || !tabs.length) return;
  ev.preventDefault();
  selectTab(tabs[j].dataset.node, true);
}

// ---- state ----

function applySnapshot(s) {
  page.snapshot = s;
  page.lastState = Date.now();
  setTimeZone(s.timezone || 'UTC');
  for (const n of s.nodes) if (n.live) ingestSeries(nodeName(n), n.live.series || []);
  renderSummary(s.nodes, s.plugins);
  renderReadings();
  renderStrips(s.nodes);
  renderBuzzer(s.nodes);
  renderPlugins(s.plugins);
  renderNodes(s.nodes);
  const before = page.activeTab;
  renderTabs();
  if (!before && page.activeTab) selectTab(page.activeTab, false);
}

function setLink(state, text) {
  const link = document.getElementById('link');
  link.dataset.state = state;
  link.textContent = text;
}

function tickClock() {
  if (!page.timeFmt) return;
  const now = new Date();
  document.getElementById('clock').textContent = `${page.dateFmt.format(now)} ${page.timeFmt.format(now)}`;
  if (page.lastState && Date.now() - page.lastState > 5000) setLink('lost', 'no updates');
}

// A page whose session ended (expired, signed out elsewhere, user deleted)
// goes back to the sign-in page.
async function checkSession() {
  const r = await fetch('/api/state').catch(() => null);
  if (r && r.status === 401) location.replace('/');
}

async function signOut() {
  await fetch('/api/session', { method: 'DELETE', headers: { 'X-Harvester': '1' } }).catch(() => null);
  location.replace('/');
}

async function start() {
  setTimeZone('UTC');
  document.getElementById('signout').addEventListener('click', signOut);
  document.querySelectorAll('[data-buzzer]').forEach(b => b.addEventListener('click', () => buzz(b.dataset.buzzer, b)));
  document.getElementById('log-tabs').addEventListener('keydown', tabKeys);
  setInterval(tickClock, 1000);

  // The hub served the page with the fleet's state and recent lines in
  // it: the first paint shows them, never placeholders.
  const initial = JSON.parse(document.getElementById('initial')?.textContent || 'null');
  const shown = new Set();
  if (initial) {
    showUser(initial.state.user);
    applySnapshot(initial.state);
    for (const l of initial.logs) {
      shown.add(logKey(l));
      addLog(l, false);
    }
    if (page.activeTab) selectTab(page.activeTab, false);
    tickClock();
  }
  document.documentElement.classList.remove('booting');

  // Lines logged between serving the page and opening the stream come
  // with the backlog, merged without repeats; lines the stream brings
  // meanwhile wait for it.
  let early = [];
  const events = new EventSource('/api/events');
  events.addEventListener('open', () => setLink('live', 'live'));
  events.addEventListener('error', () => {
    setLink('lost', 'reconnecting');
    checkSession();
  });
  events.addEventListener('state', ev => {
    applySnapshot(JSON.parse(ev.data));
    setLink('live', 'live');
  });
  events.addEventListener('log', ev => {
    const line = JSON.parse(ev.data);
    if (early) early.push(line);
    else addLog(line, true);
  });

  const [state, logs] = await Promise.all([
    initial ? null : fetch('/api/state?history=true').then(r => {
      if (r.status === 401) location.replace('/');
      return r.json();
    }),
    fetch('/api/logs?tail=500').then(r => r.json()),
  ]);
  if (state) {
    showUser(state.user);
    applySnapshot(state);
  }
  for (const l of logs) {
    const key = logKey(l);
    if (shown.has(key)) continue;
    shown.add(key);
    addLog(l, false);
  }
  for (const l of early) if (!shown.has(logKey(l))) addLog(l, false);
  early = null;
  if (page.activeTab) selectTab(page.activeTab, false);
  tickClock();
}

function showUser(user) {
  if (user) document.getElementById('whoami').textContent = `${user.name} (${user.role})`;
}

start().catch(e => setLink('lost', 'hub unreachable'));
