// hubbub operator console: a page per view, fed by the /api/live WebSocket once a second.
// Every value from the server is put into the page as text (never as HTML): device IDs, space
// URIs and player names come from clients.
"use strict";

const state = { me: null, view: "cluster", arg: "", ws: null, last: 0, views: {}, retry: 500 };

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const $ = (id) => document.getElementById(id);
const isAdmin = () => state.me && state.me.role === "admin";

function fmtAge(s) {
  if (s === null || s === undefined) return "-";
  s = Math.max(0, Math.round(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
  return Math.floor(s / 86400) + "d" + Math.floor(s / 3600) % 24 + "h";
}
function fmtBytes(b) {
  if (b === null || b === undefined) return "-";
  const u = ["B", "KiB", "MiB", "GiB"]; let i = 0;
  while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
  return b.toFixed(i ? 1 : 0) + " " + u[i];
}
function fmtBits(b) {
  const u = ["b/s", "kb/s", "Mb/s", "Gb/s"]; let i = 0; b = b || 0;
  while (b >= 1000 && i < u.length - 1) { b /= 1000; i++; }
  return b.toFixed(i ? 1 : 0) + " " + u[i];
}
const num = (v, d = 1) => (v === null || v === undefined ? "-" : Number(v).toFixed(d));
function when(t) {
  if (!t) return "-";
  const d = new Date(t * 1000);
  return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}

function table(cols, rows, opts = {}) {
  const head = h("tr", {}, cols.map((c) => h("th", { class: c.cls }, c.label)));
  const body = rows.map((r) => {
    const tr = h("tr", { class: opts.rowClass ? opts.rowClass(r) : null,
                         onclick: opts.onclick ? () => opts.onclick(r) : null },
                 cols.map((c) => h("td", { class: c.cls }, c.get(r))));
    return tr;
  });
  if (!rows.length) body.push(h("tr", {}, h("td", { colspan: cols.length, class: "muted" }, opts.empty || "none")));
  return h("div", { class: "scroll" }, h("table", { "data-table": opts.name || null }, h("thead", {}, head), h("tbody", {}, body)));
}
function stat(label, value, id) {
  return h("div", { class: "stat", "data-stat": id || null }, h("div", { class: "v" }, value), h("div", { class: "k" }, label));
}
function fill(el, ...children) { el.replaceChildren(...children.flat()); }
// Rebuild ``el`` only when its data changed, so rows stay put under the pointer between updates.
function render(el, data, build) {
  const key = JSON.stringify(data);
  if (el.dataset.key === key) return;
  el.dataset.key = key;
  fill(el, build());
}

// ------------------------------------------------------------------ API
async function api(method, path, data) {
  const headers = {};
  if (data !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.me && state.me.csrf) headers["X-CSRF-Token"] = state.me.csrf;
  const resp = await fetch(path, { method, headers, credentials: "same-origin",
                                   body: data === undefined ? undefined : JSON.stringify(data) });
  let out = null;
  try { out = await resp.json(); } catch (e) { out = null; }
  if (resp.status === 401 && path !== "/api/login") showLogin();
  return { status: resp.status, data: out };
}
async function act(path, data, msgEl) {
  const r = await api("POST", path, data);
  const text = (r.data && (r.data.text || r.data.error)) || ("HTTP " + r.status);
  if (msgEl) { msgEl.textContent = text; msgEl.className = "msg" + (r.status === 200 ? "" : " bad"); }
  return r;
}

// ---------------------------------------------------------------- login
function showLogin() {
  state.me = null;
  if (state.ws) { state.ws.onclose = null; state.ws.close(); state.ws = null; }
  $("app").hidden = true; $("login").hidden = false; $("login-user").focus();
}
async function start() {
  const r = await api("GET", "/api/me");
  if (r.status !== 200) { showLogin(); return; }
  state.me = r.data;
  $("login").hidden = true; $("app").hidden = false;
  fill($("who"), state.me.user, " ", h("span", { class: "role" }, state.me.role));
  document.body.classList.toggle("viewer", !isAdmin());
  route();
  connect();
}
$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const r = await api("POST", "/api/login", { user: $("login-user").value, password: $("login-password").value });
  if (r.status === 200) { $("login-error").textContent = ""; $("login-password").value = ""; start(); }
  else $("login-error").textContent = (r.data && r.data.error) || "login failed";
});
$("logout").addEventListener("click", async () => { await api("POST", "/api/logout", {}); showLogin(); });

// ----------------------------------------------------------------- feed
function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/api/live");
  state.ws = ws;
  ws.onopen = () => { state.retry = 500; send(); };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    state.last = Date.now();
    if (msg.view !== state.view || !state.views[msg.view]) return;
    const view = state.views[msg.view];
    if (!msg.same) {
      $("banner").hidden = !msg.error;
      if (msg.error) $("banner").textContent = msg.error;
      if (msg.data) view.update(msg.data);
    }
    if (view.tick) view.tick();
  };
  ws.onclose = (ev) => {
    state.ws = null;
    if (ev.code === 4401) { showLogin(); return; }
    if (state.me) setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 8000);
  };
}
function send() {
  if (state.ws && state.ws.readyState === 1) state.ws.send(JSON.stringify({ view: state.view, arg: state.arg }));
}
setInterval(() => {
  const age = (Date.now() - state.last) / 1000;
  const el = $("live");
  el.className = "live " + (state.last && age < 3 ? "on" : "off");
  el.title = state.last ? "updated " + age.toFixed(1) + " s ago" : "connecting";
}, 500);

// ---------------------------------------------------------------- views
function route() {
  const name = (location.hash || "#cluster").slice(1);
  state.view = VIEWS[name] ? name : "cluster";
  state.arg = "";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === state.view);
  const main = $("main");
  main.replaceChildren();
  state.views[state.view] = VIEWS[state.view](main);
  send();
}
window.addEventListener("hashchange", () => { if (state.me) route(); });

const VIEWS = {
  cluster(root) {
    const alerts = h("div", { class: "alerts", id: "alerts" });
    const stats = h("div", { class: "stats" });
    const hosts = h("div", { class: "stack", id: "hosts" });
    root.append(h("div", { class: "card" }, h("h2", {}, "Alerts"), alerts), stats, hosts);
    return {
      update(d) {
        fill(alerts, d.alerts.length ? d.alerts.map((a) => h("div", { class: "alert " + a.level }, a.text))
                                     : h("div", { class: "alert ok" }, "all processes up"));
        const by = (r) => d.processes.filter((p) => p.role === r).length;
        fill(stats, stat("hosts", d.hosts.length), stat("gateways", by("gateway"), "gateways"),
             stat("shards", by("shard"), "shards"), stat("missing", (d.missing || []).length));
        fill(hosts, d.hosts.map((host) => h("div", { class: "card" },
          h("div", { class: "host-head" }, h("h2", {}, "host " + host.host),
            h("span", { class: "muted" }, host.processes.length + " processes")),
          table([
            { label: "role", get: (p) => p.role },
            { label: "name", get: (p) => p.name || "-" },
            { label: "pid", cls: "hide-sm", get: (p) => p.pid },
            { label: "slot", cls: "hide-sm", get: (p) => (p.slot === null || p.slot === undefined ? "-" : p.slot) },
            { label: "state", get: (p) => h("span", { class: "pill " + p.state }, p.state) },
            { label: "age", cls: "hide-sm", get: (p) => fmtAge(p.age) },
            { label: "CPU", get: (p) => (p.cpu === null ? "-" : num(p.cpu) + "%") },
            { label: "RSS", get: (p) => fmtBytes(p.rss) },
            { label: "ports", cls: "hide-sm words", get: (p) => Object.entries(p.ports).map(([k, v]) => k + ":" + v).join(" ") },
            { label: "load", cls: "hide-sm words", get: (p) => Object.entries(p.load || {}).map(([k, v]) => k + "=" + v).join(" ") },
            { label: "id", cls: "hide-sm muted", get: (p) => p.id },
          ], host.processes, { name: "processes", rowClass: () => "proc" }))));
      },
    };
  },

  rustdesk(root) {
    const stats = h("div", { class: "stats" });
    const outcomes = h("div");
    const q = h("input", { id: "device-q", placeholder: "device ID or prefix", autocomplete: "off" });
    const results = h("div", { id: "devices" });
    const devMsg = h("p", { class: "msg" });
    let query = "";
    const search = async () => {
      if (!query) { fill(results); return; }
      const r = await api("GET", "/api/devices?q=" + encodeURIComponent(query));
      if (r.status !== 200) return;
      fill(results, table([
        { label: "ID", get: (d) => d.id },
        { label: "status", get: (d) => h("span", { class: "pill " + (d.online ? "online" : "offline") }, d.online ? "online" : "offline") },
        { label: "last seen", get: (d) => (d.last_seen ? fmtAge(Date.now() / 1000 - d.last_seen) + " ago" : "-") },
        { label: "address", get: (d) => d.address || d.registered_ip || "-" },
        { label: "mode", cls: "hide-sm", get: (d) => d.mode || "-" },
        { label: "key fingerprint", cls: "hide-sm", get: (d) => (d.fingerprint ? h("span", { title: d.fingerprint }, d.fingerprint.slice(0, 22) + "…") : "-") },
        { label: "", get: (d) => (isAdmin() ? h("button", { class: "small admin", onclick: () => changeId(d.id) }, "change ID") : "") },
      ], r.data.devices, { name: "devices", empty: "no device matches" }));
    };
    const changeId = async (id) => {
      const next = window.prompt("New ID for " + id + " (a letter, then 5-15 letters, digits, _ or -)");
      if (!next) return;
      await act("/api/devices/change-id", { id, new_id: next }, devMsg);
      query = next; q.value = next; search();
    };
    q.addEventListener("keydown", (ev) => { if (ev.key === "Enter") { query = q.value.trim(); search(); } });
    const shards = h("div"); const pairs = h("div");
    const lists = {};
    const listMsg = h("p", { class: "msg" });
    const listCard = (name, what) => {
      const chips = h("div", { class: "chips", id: name + "-chips" });
      const input = h("input", { id: name + "-add", placeholder: "IP address" });
      const add = async () => {
        if (!input.value.trim()) return;
        const r = await act("/api/relay/lists", { list: name, add: [input.value.trim()] }, listMsg);
        if (r.status === 200 && r.data.ok) input.value = "";
      };
      input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") add(); });
      lists[name] = chips;
      return h("div", { class: "card" }, h("h2", {}, name), h("div", { class: "muted" }, what), chips,
        isAdmin() ? h("div", { class: "row admin" }, input, h("button", { id: name + "-add-btn", onclick: add }, "Add")) : null);
    };
    const key = h("div", { class: "key", id: "public-key" }, "-");
    root.append(stats,
      h("div", { class: "card" }, h("h2", {}, "Find a device"),
        h("div", { class: "row" }, q, h("button", { id: "device-search", onclick: () => { query = q.value.trim(); search(); } }, "Search")),
        results, devMsg),
      h("div", { class: "grid" },
        h("div", { class: "card" }, h("h2", {}, "Outcomes"), outcomes),
        h("div", { class: "card" }, h("h2", {}, "Relay shards"), shards)),
      h("div", { class: "card" }, h("h2", {}, "Relay pairs"), pairs),
      h("div", { class: "grid" }, listCard("blocklist", "refused; running pairs are closed"),
        listCard("blacklist", "limited to LIMIT_SPEED")),
      listMsg,
      h("div", { class: "card" }, h("h2", {}, "Server public key (the clients' Key setting)"), key,
        h("div", { class: "row gap-top" }, h("button", { onclick: () => navigator.clipboard && navigator.clipboard.writeText(key.textContent) }, "Copy"))));
    return {
      update(d) {
        fill(stats, stat("registered", d.registered === null || d.registered === undefined ? "…" : d.registered + (d.registered_complete === false ? "+" : ""), "registered"),
             stat("online", d.online === undefined ? "-" : d.online, "online"),
             stat("registrations/s", num(d.reg_s)), stat("heartbeats/s", num(d.hb_s)),
             stat("punches/s", num(d.punch_s)), stat("relay pairs", (d.relay || {}).pairs || 0),
             stat("relay in = out", fmtBits((d.relay || {}).bps)));
        const rows = [...Object.entries(d.outcomes_total || {}).map(([k, v]) => ["punch", k, v, (d.outcomes || {})[k]]),
                      ...Object.entries(d.results_total || {}).map(([k, v]) => ["registration", k, v, (d.results || {})[k]])];
        fill(outcomes, table([{ label: "kind", get: (r) => r[0] }, { label: "outcome", get: (r) => r[1] },
                              { label: "since start", get: (r) => r[2] }, { label: "/s", get: (r) => num(r[3], 2) }],
                             rows, { name: "outcomes", empty: "nothing yet" }));
        const rv = d.relay_view || { shards: [], blocklist: [], blacklist: [] };
        const per = (d.relay || {}).shards || {};
        fill(shards, table([
          { label: "shard", get: (s) => s.shard },
          { label: "pairs", get: (s) => s.pairs.length },
          { label: "waiting", get: (s) => s.waiting },
          { label: "in", get: (s) => fmtBits((per[s.shard] || {}).bps) },
          { label: "out", get: (s) => fmtBits((per[s.shard] || {}).bps) },
        ], rv.shards, { name: "shards", empty: "no shard answered" }));
        const all = rv.shards.flatMap((s) => s.pairs.map((p) => Object.assign({ shard: s.shard }, p)));
        fill(pairs, table([
          { label: "a", get: (p) => p.a }, { label: "b", get: (p) => p.b },
          { label: "age", get: (p) => fmtAge(p.elapsed) },
          { label: "MB", get: (p) => num(p.total_mb, 2) },
          { label: "now", get: (p) => num(p.current_kbps, 0) + " kb/s" },
          { label: "mode", cls: "hide-sm", get: (p) => p.mode + (p.limited ? " (limited)" : "") },
        ], all, { empty: "no relay pairs" }));
        for (const name of ["blocklist", "blacklist"]) {
          render(lists[name], rv[name], () => (rv[name].length ? rv[name].map((ip) => h("span", { class: "chip" }, ip,
            isAdmin() ? h("button", { class: "admin", title: "remove", "aria-label": "remove " + ip,
              onclick: () => act("/api/relay/lists", { list: name, remove: [ip] }, listMsg) }, "×") : null))
            : [h("span", { class: "muted" }, "empty")]));
        }
        key.textContent = d.public_key || "-";
      },
      tick() { if (query) search(); },
    };
  },

  spaces(root) {
    const stats = h("div", { class: "stats" });
    const list = h("div");
    const players = h("div", { id: "players" });
    const title = h("h2", {}, "Players");
    const msg = h("p", { class: "msg" });
    root.append(stats, h("div", { class: "grid" },
      h("div", { class: "card" }, h("h2", {}, "Spaces"), list),
      h("div", { class: "card" }, title, players, msg)));
    return {
      update(d) {
        const m = d.media || {};
        const total = d.spaces.reduce((n, s) => n + s.players, 0);
        fill(stats, stat("spaces", d.spaces.length, "spaces"), stat("players", total, "players"),
             stat("sockets", (d.totals || {}).sockets || 0),
             stat("WebRTC sessions", m.sessions || 0), stat("transports", m.transports || 0),
             stat("forwarded pkt/s", num(m.fwd_s)), stat("loss", num(m.loss, 2) + "%"));
        render(list, [d.spaces, state.arg], () => table([
          { label: "space", cls: "wrap", get: (s) => s.uri },
          { label: "players", get: (s) => s.players },
          { label: "media shard", cls: "hide-sm", get: (s) => s.shard || "-" },
        ], d.spaces, { name: "spaces", empty: "no space has players",
          rowClass: (s) => "click" + (s.uri === state.arg ? " selected" : ""),
          onclick: (s) => { state.arg = s.uri; send(); } }));
        if (!d.uri || d.uri !== state.arg) {
          title.textContent = "Players"; render(players, null, () => h("p", { class: "muted" }, "pick a space"));
          return;
        }
        title.textContent = "Players of " + d.uri;
        render(players, [d.uri, d.players], () => table([
          { label: "id", get: (p) => p.player_id },
          { label: "name", get: (p) => p.name || "-" },
          { label: "address", cls: "hide-sm", get: (p) => p.address || "-" },
          { label: "gateway", cls: "hide-sm muted", get: (p) => p.gateway },
          { label: "", get: (p) => (isAdmin() ? h("button", { class: "small danger admin",
              onclick: () => act("/api/spaces/kick", { uri: d.uri, player_id: p.player_id }, msg) }, "Disconnect") : "") },
        ], d.players || [], { name: "players", empty: "nobody here" }));
      },
    };
  },

  history(root) {
    const specs = [
      { title: "RustDesk (per second)", series: [["reg_s", "registrations/s", "#4fb3ff"], ["hb_s", "heartbeats/s", "#3ecf8e"], ["punch_s", "punches/s", "#f5b94a"]] },
      { title: "Devices online", series: [["online", "online", "#3ecf8e"]] },
      { title: "Relay bandwidth (b/s)", series: [["relay_bps", "relayed", "#c792ea"]] },
      { title: "Spaces and relay", series: [["players", "players", "#4fb3ff"], ["pairs", "relay pairs", "#f5b94a"]] },
      { title: "Media forwarded (packets/s)", series: [["fwd_s", "forwarded/s", "#3ecf8e"]] },
      { title: "Media loss (%)", series: [["loss", "loss %", "#ff6b6b"]] },
    ];
    const grid = h("div", { class: "charts" });
    root.append(grid);
    const charts = specs.map((s) => {
      const el = h("div", { class: "chart" });
      grid.append(h("div", { class: "card" }, h("h2", {}, s.title), el));
      return { spec: s, el, plot: null };
    });
    const size = (el) => ({ width: Math.max(260, el.clientWidth), height: 200 });
    const resize = () => charts.forEach((c) => c.plot && c.plot.setSize(size(c.el)));
    window.addEventListener("resize", resize);
    return {
      update(d) {
        const pts = d.points || [];
        const xs = pts.map((p) => p.t);
        for (const c of charts) {
          const data = [xs, ...c.spec.series.map(([k]) => pts.map((p) => p[k]))];
          if (!c.plot) {
            c.plot = new uPlot(Object.assign(size(c.el), {
              series: [{}, ...c.spec.series.map(([, label, color]) => ({ label, stroke: color, width: 2, fill: color + "22" }))],
              axes: [{ stroke: "#8a98a8", grid: { stroke: "#2a3541" } }, { stroke: "#8a98a8", grid: { stroke: "#2a3541" }, size: 60 }],
              scales: { x: { time: true } },
              cursor: { drag: { x: false, y: false } },
            }), data, c.el);
          } else c.plot.setData(data);
        }
      },
    };
  },

  audit(root) {
    const users = h("div"); const entries = h("div"); const msg = h("p", { class: "msg" });
    const name = h("input", { placeholder: "name", id: "new-user" });
    const pw = h("input", { placeholder: "password (8+)", type: "password", id: "new-user-pw", autocomplete: "new-password" });
    const role = h("select", { id: "new-user-role" }, h("option", { value: "viewer" }, "viewer"), h("option", { value: "admin" }, "admin"));
    const add = async () => {
      const r = await act("/api/users", { name: name.value.trim(), role: role.value, password: pw.value }, msg);
      if (r.status === 200 && r.data.ok) { name.value = ""; pw.value = ""; }
    };
    root.append(
      h("div", { class: "card" }, h("h2", {}, "Users"), users,
        isAdmin() ? h("div", { class: "row admin gap-top" }, name, pw, role, h("button", { onclick: add }, "Add user")) : null, msg),
      h("div", { class: "card" }, h("h2", {}, "Audit log"), entries));
    return {
      update(d) {
        render(users, d.users, () => table([
          { label: "user", get: (u) => u.name }, { label: "role", get: (u) => u.role },
          { label: "since", cls: "hide-sm", get: (u) => when(u.created) },
          { label: "", get: (u) => (isAdmin() ? h("span", { class: "row" },
              h("button", { class: "small admin", onclick: () => {
                const pw = window.prompt("New password for " + u.name + " (8 or more characters)");
                if (pw) act("/api/users/password", { name: u.name, password: pw }, msg); } }, "Password"),
              u.name !== state.me.user ? h("button", { class: "small danger admin",
                onclick: () => { if (window.confirm("Remove " + u.name + "?")) act("/api/users/remove", { name: u.name }, msg); } }, "Remove") : null) : "") },
        ], d.users, { name: "users" }));
        render(entries, d.entries, () => table([
          { label: "when", get: (e) => when(e.t) }, { label: "who", get: (e) => e.user },
          { label: "action", get: (e) => e.action }, { label: "detail", cls: "wrap", get: (e) => e.detail },
          { label: "from", get: (e) => e.source },
          { label: "", get: (e) => h("span", { class: "pill " + (e.ok ? "online" : "offline") }, e.ok ? "ok" : "refused") },
        ], d.entries, { name: "audit", empty: "no entries" }));
      },
    };
  },
};

start();
