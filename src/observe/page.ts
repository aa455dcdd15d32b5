/**
 * The live page served at `/`: the counters, traffic per inside host as a chart, and the flow table
 * with both tuples, kept current by the `/live` event stream. One self-contained HTML document, no
 * external resources (a lab gateway has no internet to fetch them from), values inserted with
 * textContent only.
 *
 * The kernel engine serves the same page: its snapshots leave out what the kernel does not count
 * (those cards are not drawn) and list it under "Not available", so no blank reads as a zero.
 *
 * The script is plain ES2017 without template literals, so it can live in this TypeScript string. The
 * chart's axes (page-axes.ts) are pasted in, so their unit test runs the very code the page does.
 */
import { CHART_AXES_JS } from './page-axes.js';

export const LIVE_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tunnat — live</title>
<style>
  :root { --fg: #1d232a; --muted: #65707c; --line: #d8dde3; --bg: #f6f7f9; --card: #fff; --accent: #1f6feb; --bad: #c62828; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg); }
  header { display: flex; gap: 1.5em; align-items: baseline; padding: 12px 20px; background: var(--card); border-bottom: 1px solid var(--line); flex-wrap: wrap; }
  header h1 { font-size: 18px; margin: 0; }
  #status { font-size: 12px; padding: 2px 8px; border-radius: 10px; background: #eee; }
  #status.live { background: #dff5e3; color: #1a7f37; }
  #status.down { background: #fde7e7; color: var(--bad); }
  main { padding: 16px 20px; display: grid; gap: 16px; }
  section { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px; }
  h2 { font-size: 14px; margin: 0 0 8px; color: var(--muted); font-weight: 600; text-transform: uppercase; letter-spacing: .04em; }
  .cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: 8px; }
  .card { border: 1px solid var(--line); border-radius: 4px; padding: 6px 10px; }
  .card .k { color: var(--muted); font-size: 12px; }
  .card .v { font-size: 18px; font-variant-numeric: tabular-nums; }
  .card.bad .v { color: var(--bad); }
  table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
  th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); white-space: nowrap; }
  th { color: var(--muted); font-weight: 600; font-size: 12px; }
  td.n { text-align: right; }
  .arrow { color: var(--muted); }
  canvas { width: 100%; height: 220px; display: block; }
  #legend span { display: inline-block; margin-right: 12px; font-size: 12px; }
  #legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; border-radius: 2px; }
  input { font: inherit; padding: 3px 6px; border: 1px solid var(--line); border-radius: 4px; }
  .muted { color: var(--muted); }
</style>
</head>
<body>
<header>
  <h1>tunnat</h1>
  <span>public address <b id="public">…</b></span>
  <span id="ha-role" hidden>pair <b id="ha-text"></b></span>
  <span>flows <b id="flowcount">…</b></span>
  <span id="status">connecting</span>
</header>
<main>
  <section id="lacking" hidden>
    <h2>Not available with the <span id="engine"></span> engine</h2>
    <ul id="unavailable"></ul>
  </section>
  <section>
    <h2>Counters</h2>
    <div class="cards" id="counters"></div>
  </section>
  <section>
    <h2>Traffic per inside host (bytes/s, both directions)</h2>
    <canvas id="chart" width="1200" height="220" role="img"></canvas>
    <div id="legend"></div>
    <table id="hosts">
      <thead><tr><th>inside host</th><th class="n">sent bytes</th><th class="n">received bytes</th><th class="n">sent pkts</th><th class="n">received pkts</th><th class="n">flows</th><th class="n">bytes/s</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
  <section>
    <h2>Flows <span class="muted" id="flowsnote"></span></h2>
    <p><input id="filter" placeholder="filter: address, port, protocol or state" size="40"></p>
    <table id="flows">
      <thead><tr><th>proto</th><th>inside (original tuple)</th><th></th><th>remote</th><th>as the WAN sees it (reply tuple, reversed)</th><th>state</th><th class="n">expires</th><th class="n">pkts out/in</th><th class="n">bytes out/in</th></tr></thead>
      <tbody></tbody>
    </table>
  </section>
</main>
<script>
(function () {
  'use strict';
${CHART_AXES_JS}
  var COLORS = ['#1f6feb', '#d97706', '#16a34a', '#db2777', '#7c3aed', '#0891b2', '#b91c1c', '#4d7c0f', '#a16207', '#475569'];
  /** Seconds the chart shows, and between time labels. */
  var WINDOW = 120;
  var TIME_STEP = 30;
  var GRID_LINES = 4;
  /** Per host: [{ t: seconds, v: bytes/s }], the last WINDOW seconds. */
  var history = {};
  var last = null;
  var snap = null;

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function fmt(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(2) + ' G';
    if (n >= 1e6) return (n / 1e6).toFixed(2) + ' M';
    if (n >= 1e4) return (n / 1e3).toFixed(1) + ' k';
    return String(Math.round(n));
  }
  function ep(t, proto, src) {
    var a = src ? t.src : t.dst;
    var p = src ? t.srcPort : t.dstPort;
    return proto === 'icmp' ? a : a + ':' + p;
  }
  function card(box, k, v, bad) {
    if (v === undefined) return;
    var c = el('div', null, 'card' + (bad ? ' bad' : ''));
    c.appendChild(el('div', k, 'k'));
    c.appendChild(el('div', v, 'v'));
    box.appendChild(c);
  }

  function num(n) { return n === undefined ? undefined : fmt(n); }

  function renderCounters(s) {
    var c = s.counters;
    var box = document.getElementById('counters');
    box.textContent = '';
    card(box, 'packets out', num(c.packets.outbound));
    card(box, 'packets in', num(c.packets.inbound));
    card(box, 'packets to gateway', num(c.packets.local));
    card(box, 'bytes out', num(c.bytes.outbound));
    card(box, 'bytes in', num(c.bytes.inbound));
    card(box, 'flows / max', c.flows + ' / ' + fmt(c.flowsMax));
    card(box, 'flows created', fmt(c.flowsCreated));
    card(box, 'flows expired', num(c.flowsRemoved.expired));
    card(box, 'early-dropped', fmt(c.flowsRemoved['early-drop'] || 0), (c.flowsRemoved['early-drop'] || 0) > 0);
    var totalDrops = 0;
    Object.keys(c.drops).forEach(function (r) {
      totalDrops += c.drops[r];
      if (c.drops[r] > 0) card(box, 'dropped: ' + r, fmt(c.drops[r]), true);
    });
    if (totalDrops === 0) card(box, 'dropped', '0');
    var pooled = c.portPools.some(function (p) { return p.address !== c.portPools[0].address; });
    c.portPools.forEach(function (p) { card(box, p.protocol + ' ports used' + (pooled ? ' on ' + p.address : ''), fmt(p.used) + ' / ' + fmt(p.size)); });
  }

  function renderHosts(s, t, dt) {
    var body = document.querySelector('#hosts tbody');
    body.textContent = '';
    s.hosts.forEach(function (h) {
      var total = h.bytes.outbound + h.bytes.inbound;
      var prev = last && last.hostBytes[h.host];
      var rate = prev !== undefined && dt > 0 ? Math.max(0, (total - prev) / dt) : 0;
      if (!history[h.host]) history[h.host] = [];
      var pts = history[h.host];
      pts.push({ t: t, v: rate });
      while (pts.length > 0 && pts[0].t < t - WINDOW) pts.shift();
      var tr = el('tr');
      tr.setAttribute('data-host', h.host);
      tr.appendChild(el('td', h.host));
      tr.appendChild(el('td', fmt(h.bytes.outbound), 'n'));
      tr.appendChild(el('td', fmt(h.bytes.inbound), 'n'));
      tr.appendChild(el('td', fmt(h.packets.outbound), 'n'));
      tr.appendChild(el('td', fmt(h.packets.inbound), 'n'));
      tr.appendChild(el('td', h.flows, 'n'));
      tr.appendChild(el('td', fmt(rate), 'n'));
      body.appendChild(tr);
    });
  }

  function renderChart(end) {
    var canvas = document.getElementById('chart');
    var ctx = canvas.getContext('2d');
    var W = canvas.width, H = canvas.height, left = 72, right = 8, top = 8, bottom = 22;
    var plotW = W - left - right, plotH = H - top - bottom;
    ctx.clearRect(0, 0, W, H);
    var hosts = Object.keys(history);
    var max = 0;
    hosts.forEach(function (h) { history[h].forEach(function (p) { if (p.v > max) max = p.v; }); });
    var y = rateAxis(max, GRID_LINES);
    var x = timeAxis(end, WINDOW, TIME_STEP);
    function px(t) { return left + plotW * (1 - (end - t) / WINDOW); }
    function py(v) { return top + plotH * (1 - v / y.top); }
    ctx.lineWidth = 1;
    ctx.strokeStyle = '#d8dde3';
    ctx.fillStyle = '#65707c';
    ctx.font = '12px system-ui, sans-serif';
    ctx.textAlign = 'right';
    y.labels.forEach(function (label, g) {
      var gy = py(y.top * g / GRID_LINES);
      ctx.beginPath(); ctx.moveTo(left, gy); ctx.lineTo(W - right, gy); ctx.stroke();
      ctx.fillText(label, left - 6, gy + 4);
    });
    ctx.textAlign = 'center';
    x.forEach(function (tick) {
      var tx = px(tick.t);
      ctx.beginPath(); ctx.moveTo(tx, top); ctx.lineTo(tx, top + plotH); ctx.stroke();
      ctx.fillText(tick.label, Math.min(Math.max(tx, left + 28), W - right - 28), H - 6);
    });
    // What is drawn, in words: for screen readers (and the browser test).
    canvas.setAttribute('data-y-labels', y.labels.join('|'));
    canvas.setAttribute('data-x-labels', x.map(function (tick) { return tick.label; }).join('|'));
    canvas.setAttribute('aria-label', 'bytes per second per inside host, ' + y.labels[0] + ' to ' + y.labels[GRID_LINES] +
      ', the last ' + WINDOW + ' seconds up to ' + clockLabel(end));
    var legend = document.getElementById('legend');
    legend.textContent = '';
    hosts.forEach(function (h, i) {
      var color = COLORS[i % COLORS.length];
      var pts = history[h];
      ctx.strokeStyle = color;
      ctx.fillStyle = color;
      ctx.lineWidth = 2;
      ctx.beginPath();
      pts.forEach(function (p, j) {
        if (j === 0) ctx.moveTo(px(p.t), py(p.v)); else ctx.lineTo(px(p.t), py(p.v));
      });
      ctx.stroke();
      // A lone first point draws no line: mark it.
      if (pts.length === 1) { ctx.beginPath(); ctx.arc(px(pts[0].t), py(pts[0].v), 3, 0, 2 * Math.PI); ctx.fill(); }
      var item = el('span');
      var sw = el('i');
      sw.style.background = color;
      item.appendChild(sw);
      item.appendChild(document.createTextNode(h));
      legend.appendChild(item);
    });
  }

  function renderFlows(s) {
    var q = document.getElementById('filter').value.trim().toLowerCase();
    var body = document.querySelector('#flows tbody');
    body.textContent = '';
    var shown = 0;
    s.flows.forEach(function (f) {
      var inside = ep(f.original, f.protocol, true);
      var remote = ep(f.original, f.protocol, false);
      var wan = ep(f.reply, f.protocol, false) + (f.protocol === 'icmp' ? ' id ' + f.reply.dstPort : '');
      var text = [f.protocol, inside, remote, wan, f.state].join(' ').toLowerCase();
      if (q && text.indexOf(q) < 0) return;
      shown++;
      var tr = el('tr');
      tr.setAttribute('data-flow', String(f.id));
      tr.appendChild(el('td', f.protocol));
      tr.appendChild(el('td', inside + (f.protocol === 'icmp' ? ' id ' + f.original.srcPort : '')));
      tr.appendChild(el('td', '→', 'arrow'));
      tr.appendChild(el('td', remote));
      tr.appendChild(el('td', wan));
      tr.appendChild(el('td', f.state));
      tr.appendChild(el('td', f.secondsLeft + ' s', 'n'));
      tr.appendChild(el('td', f.packets.original + '/' + f.packets.reply, 'n'));
      tr.appendChild(el('td', fmt(f.bytes.original) + '/' + fmt(f.bytes.reply), 'n'));
      body.appendChild(tr);
    });
    document.getElementById('flowsnote').textContent =
      '(' + shown + ' shown of ' + s.flowsTotal + (s.flowsTotal > s.flows.length ? ', the ' + s.flows.length + ' busiest sent' : '') + ')';
  }

  function renderLacking(s) {
    var list = s.unavailable || [];
    document.getElementById('lacking').hidden = list.length === 0;
    document.getElementById('engine').textContent = s.engine || 'userspace';
    var ul = document.getElementById('unavailable');
    ul.textContent = '';
    list.forEach(function (line) { ul.appendChild(el('li', line)); });
  }

  function render(s) {
    var t = Date.parse(s.time) / 1000;
    renderLacking(s);
    var dt = last ? t - last.t : 0;
    document.getElementById('public').textContent = s.publicAddress;
    var ha = document.getElementById('ha-role');
    ha.hidden = !s.ha;
    if (s.ha) document.getElementById('ha-text').textContent = s.ha.role + ' (node ' + s.ha.node + '; peer ' + s.ha.peer + ')';
    document.getElementById('flowcount').textContent = s.counters.flows + ' / ' + s.counters.flowsMax;
    renderCounters(s);
    renderHosts(s, t, dt);
    renderChart(t);
    renderFlows(s);
    var hb = {};
    s.hosts.forEach(function (h) { hb[h.host] = h.bytes.outbound + h.bytes.inbound; });
    last = { t: t, hostBytes: hb };
  }

  document.getElementById('filter').addEventListener('input', function () { if (snap) renderFlows(snap); });

  var status = document.getElementById('status');
  var es = new EventSource('live');
  es.addEventListener('snapshot', function (ev) {
    snap = JSON.parse(ev.data);
    render(snap);
    status.textContent = 'live';
    status.className = 'live';
  });
  es.onerror = function () {
    status.textContent = 'reconnecting';
    status.className = 'down';
  };
})();
</script>
</body>
</html>
`;
