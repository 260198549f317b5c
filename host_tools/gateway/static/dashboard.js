// cuecam store dashboard: store now, trends (uPlot, vendored) and decisions, kept live over
// server-sent events. Store-, zone- and board-level numbers only: no session token is ever fetched.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = { token: sessionStorage.getItem("cuecam-gateway-token"), cursor: 0, decisions: [], now: null,
    trends: null, messages: 0, plots: {} };
  window.cuecamDashboard = state;  // read by the browser tests

  function headers() { return state.token ? { Authorization: "Bearer " + state.token } : {}; }

  async function getJSON(path) {
    const r = await fetch(path, { headers: headers(), cache: "no-store" });
    if (r.status === 401) throw Object.assign(new Error("the token was refused"), { status: 401 });
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }

  const fmt = (v, nd = 2) => (v === null || v === undefined ? "–" : Number(v).toFixed(nd));
  const pct = (v) => (v === null || v === undefined ? "–" : Math.round(v * 100) + " %");
  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });

  function setStatus(text, cls) { const s = $("status"); s.textContent = text; s.className = "status " + (cls || ""); }

  // -- store now -------------------------------------------------------------------------------------
  function renderNow(now) {
    state.now = now;
    $("store-name").textContent = now.store;
    $("visitors-now").textContent = now.visitors_now;
    $("now-window").textContent = "last " + Math.round(now.now_window_s / 60) + " min · " +
      (now.visitors_source === "footfall" ? "people in through the doors" : "sessions seen");
    $("visitors-today").textContent = now.visitors_today;
    $("today-since").textContent = "since " + clock(now.today_since) +
      (now.conversion_today !== null && now.conversion_today !== undefined ? " · conversion " + pct(now.conversion_today) : "");
    $("boards-healthy").textContent = now.boards_healthy + " / " + now.boards.length;
    $("boards-list").replaceChildren(...now.boards.map((b) => {
      const s = document.createElement("div");
      s.textContent = b.name + ": " + b.state + (b.error ? " (" + b.error + ")" : "");
      s.dataset.board = b.name;
      s.className = "board-" + b.state;
      return s;
    }));
    $("optouts").textContent = now.optouts;
    $("decisions-total").textContent = now.decisions_total;
    $("zones").querySelector("tbody").replaceChildren(...now.zones.map((z) => {
      const tr = document.createElement("tr");
      tr.dataset.zone = z.zone;
      [z.zone === "-" ? "(no zone)" : z.zone, z.sessions, fmt(z.engagement_mean), fmt(z.dwell_satisfaction_mean),
        fmt(z.approach_avoid_mean), pct(z.approaching_share), pct(z.avoiding_share)].forEach((v, i) => {
        const td = document.createElement("td");
        td.textContent = v;
        if (i) td.className = "num";
        tr.appendChild(td);
      });
      return tr;
    }));
  }

  // -- decisions -------------------------------------------------------------------------------------
  function addDecisions(ds) {
    const list = $("decisions");
    for (const d of ds) {
      if (state.decisions.some((x) => x.id === d.id)) continue;
      state.decisions.push(d);
      const li = document.createElement("li");
      li.dataset.id = d.id;
      const when = document.createElement("div");
      when.className = "when";
      when.textContent = clock(d.t) + " · " + d.kind + " · " + d.subject;
      const what = document.createElement("div");
      const rule = document.createElement("span");
      rule.className = "rule";
      rule.textContent = d.rule + " ";
      what.append(rule, document.createTextNode(d.explanation.replace(d.rule + ": ", "")));
      const inputs = document.createElement("div");
      inputs.className = "inputs";
      inputs.textContent = Object.entries(d.inputs).filter(([, v]) => v !== null).map(([k, v]) => k + "=" + v).join("  ");
      const acts = document.createElement("div");
      for (const a of d.actions) {
        const s = document.createElement("span");
        s.className = "action " + a.status;
        s.textContent = a.output + ": " + a.status;
        if (a.detail) s.title = typeof a.detail === "string" ? a.detail : JSON.stringify(a.detail);
        acts.appendChild(s);
      }
      li.append(when, what, inputs, acts);
      list.prepend(li);
    }
    while (list.children.length > 100) list.lastChild.remove();
    if (state.decisions.length > 100) state.decisions.splice(0, state.decisions.length - 100);
  }

  // -- trends ----------------------------------------------------------------------------------------
  function plot(id, el, opts, data) {
    if (state.plots[id]) { state.plots[id].setData(data); return; }
    state.plots[id] = new uPlot(opts, data, el);
  }

  function width(el) { return Math.max(320, Math.min(el.clientWidth || 600, 900) - 10); }

  function renderTrends(tr) {
    state.trends = tr;
    $("baseline-pct").textContent = tr.baseline_percentile;
    $("bucket-s").textContent = tr.bucket_s;
    const h = tr.hours;
    if (h.length) $("baseline-day").textContent = h[h.length - 1].label.split(" ")[0];
    const traffic = $("traffic-plot");
    const bars = uPlot.paths.bars({ size: [0.6, 60] });
    plot("traffic", traffic, {
      width: width(traffic), height: 240,
      scales: { x: { time: true } },
      series: [{}, { label: "visitors / hour", stroke: "#2f6fb3", fill: "#2f6fb355", paths: bars, points: { show: false } },
        { label: "past median", stroke: "#888", dash: [6, 4] },
        { label: "slow hour (p" + tr.baseline_percentile + ")", stroke: "#d2691e", dash: [2, 3] }],
      axes: [{}, { label: "sessions / hour" }],
    }, [h.map((x) => x.t + 1800), h.map((x) => x.per_hour), h.map((x) => x.baseline_median), h.map((x) => x.baseline_slow)]);

    const box = $("signal-plots");
    for (const [zone, rows] of Object.entries(tr.signals)) {
      let el = box.querySelector(`[data-zone="${CSS.escape(zone)}"]`);
      if (!el) {
        el = document.createElement("div");
        el.dataset.zone = zone;
        const title = document.createElement("h3");
        title.textContent = zone === "-" ? "(no zone)" : zone;
        el.appendChild(title);
        box.appendChild(el);
      }
      plot("zone:" + zone, el, {
        width: 440, height: 200, scales: { x: { time: true }, y: { range: [-1, 1] } },
        series: [{}, { label: "engagement", stroke: "#2e8b57" }, { label: "dwell satisfaction", stroke: "#6a5acd" },
          { label: "approach / avoid", stroke: "#d2691e" }],
      }, [rows.map((r) => r[0]), rows.map((r) => r[2]), rows.map((r) => r[3]), rows.map((r) => r[4])]);
    }
  }

  // -- live ------------------------------------------------------------------------------------------
  let abort = null;
  async function live() {
    abort = new AbortController();
    let status;
    try {
      status = await cuecamSSE.read("/v1/dashboard/live?since=" + state.cursor, headers(), abort.signal,
        () => setStatus("live", "live"), (msg) => {
          state.messages += 1;
          state.cursor = msg.cursor;
          renderNow(msg.now);
          addDecisions(msg.decisions);
        });
    } catch (e) {
      return;  // aborted: the token is being asked for
    }
    if (status === 401) { ask("the token was refused"); return; }
    setStatus("reconnecting", "down");
    setTimeout(live, 3000);
  }

  async function refreshTrends() {
    try { renderTrends((await getJSON("/v1/dashboard")).trends); } catch (e) { /* the stream shows the state */ }
  }

  function ask(reason) {
    if (abort) abort.abort();
    sessionStorage.removeItem("cuecam-gateway-token");
    state.token = null;
    $("main").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = reason || "";
    setStatus("not connected", "down");
  }

  async function start() {
    let snap;
    try {
      snap = await getJSON("/v1/dashboard");
    } catch (e) {
      if (e.status === 401) { ask(state.token ? "the token was refused" : ""); return; }
      setStatus(String(e.message || e), "down");
      setTimeout(start, 3000);
      return;
    }
    if (state.token) sessionStorage.setItem("cuecam-gateway-token", state.token);
    $("login").hidden = true;
    $("main").hidden = false;
    renderNow(snap.now);
    renderTrends(snap.trends);
    addDecisions(snap.decisions);
    state.cursor = snap.cursor;
    live();
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.token = $("token").value.trim();
    start();
  });
  setInterval(refreshTrends, 30000);
  start();
})();
