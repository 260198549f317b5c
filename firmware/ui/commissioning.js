// cuecam commissioning page: the live view (boxes, skeletons, paths, zones) on black, the traffic
// map and the zone editor. Everything drawn comes as numbers from /v1/ui/*; there is no image here.
"use strict";

(function () {
  const KIND_COLOURS = { attraction: "#ffb000", entrance: "#4fc3f7", aisle: "#9ccc65", queue: "#ba68c8",
    excluded: "#ef5350", line: "#ffffff" };
  // a zone's corners: an area's polygon, or a counting line's polyline (kind "line")
  const pts = (z) => z.polygon || z.line || [];
  // COCO-17 keypoints: the limbs drawn between them
  const LIMBS = [[5, 7], [7, 9], [6, 8], [8, 10], [5, 6], [5, 11], [6, 12], [11, 12], [11, 13], [13, 15],
    [12, 14], [14, 16], [0, 1], [0, 2], [1, 3], [2, 4], [0, 5], [0, 6]];
  const KP_MIN = 0.3;
  const $ = (id) => document.getElementById(id);
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");

  // state, also read by the browser tests (window.cuecam)
  const state = {
    token: null, last: null, messages: 0, heat: null, zones: [], draft: null, selected: -1,
    drawing: null, mode: null, drag: null, canUndo: false, size: [640, 480], connected: false,
  };
  window.cuecam = state;

  // -- the token: from #token=... (kept off the server's logs), else this tab's session, else asked --------
  function initialToken() {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      history.replaceState(null, "", location.pathname);
      return decodeURIComponent(m[1]);
    }
    return sessionStorage.getItem("cuecam-token");
  }

  function headers(extra) {
    return Object.assign({ Authorization: "Bearer " + state.token }, extra || {});
  }

  async function api(method, path, body) {
    const opts = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}), cache: "no-store" };
    if (body) opts.body = JSON.stringify(body);
    const r = await fetch(path, opts);
    let data = null;
    try { data = await r.json(); } catch (e) { data = null; }
    if (r.status === 401) throw Object.assign(new Error("the token was refused"), { status: 401 });
    return { status: r.status, data };
  }

  // -- the live stream (server-sent events read with fetch, so the token goes in a header) --------------
  let abort = null;
  async function stream() {
    abort = new AbortController();
    let status;
    try {
      status = await cuecamSSE.read("/v1/ui/live", headers(), abort.signal, () => {
        setStatus("live", "live");
        state.connected = true;
      }, onMessage);
    } catch (e) {
      return;  // aborted: the token is being changed
    }
    if (status === 401) { logout("the token was refused"); return; }
    state.connected = false;
    setStatus("reconnecting", "down");
    setTimeout(stream, 2000);
  }

  function setStatus(text, cls) {
    const s = $("status");
    s.textContent = text;
    s.className = "status " + (cls || "");
  }

  function onMessage(msg) {
    state.last = msg;
    state.messages += 1;
    if (msg.size) resize(msg.size);
    setStatus(msg.paused ? "paused (opt-out): nothing is measured" : "live · " + msg.state, msg.paused ? "paused" : "live");
    $("people-count").textContent = msg.people.length + (msg.people.length === 1 ? " person" : " people");
    $("fps").textContent = msg.fps + " fps analysed";
    const tbody = $("zone-table").querySelector("tbody");
    tbody.replaceChildren(...msg.zones.map((z) => {
      const tr = document.createElement("tr");
      tr.dataset.zone = z.name;
      const cells = [z.name, z.kind, z.now, fmt(z.engagement), fmt(z.dwell_satisfaction), fmt(z.approach_avoid)];
      cells.forEach((v, i) => {
        const td = document.createElement("td");
        td.textContent = v;
        if (i >= 2) td.className = "num";
        tr.appendChild(td);
      });
      return tr;
    }));
    renderCompanions(msg.companions || []);
    draw();
  }

  function renderCompanions(list) {
    $("companion-none").hidden = list.length > 0;
    $("companion-table").querySelector("tbody").replaceChildren(...list.map((c) => {
      const tr = document.createElement("tr");
      tr.dataset.companion = c.name;
      const last = c.last_press_t ? new Date(c.last_press_t * 1000).toLocaleString() + " (" + c.last_action + ")" : "never";
      const refused = c.refusals ? c.refusals + " (last: " + c.last_refusal + ")" : "0";
      [c.name, c.position || "–", c.presses, last, refused].forEach((v, i) => {
        const td = document.createElement("td");
        td.textContent = v;
        if (i === 2) td.className = "num";
        tr.appendChild(td);
      });
      return tr;
    }));
  }

  function fmt(v) { return v === null || v === undefined ? "–" : Number(v).toFixed(2); }

  function resize(size) {
    if (size[0] === state.size[0] && size[1] === state.size[1]) return;
    state.size = size;
    canvas.width = 960;
    canvas.height = Math.round(960 * size[1] / size[0]);
  }

  // -- drawing ---------------------------------------------------------------------------------------
  const X = (x) => x * canvas.width;
  const Y = (y) => y * canvas.height;

  function draw() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    if ($("show-heatmap").checked && state.heat) drawHeat(state.heat);
    const zones = state.draft || state.zones;
    zones.forEach((z, i) => drawZone(z, i === state.selected && state.draft !== null, !!state.draft));
    if (state.drawing) drawOpen(state.drawing);
    const msg = state.last;
    if (msg && !msg.paused) msg.people.forEach(drawPerson);
  }

  function drawHeat(heat) {
    const [cols, rows] = heat.grid;
    const w = canvas.width / cols;
    const h = canvas.height / rows;
    for (const [c, r, n] of heat.cells) {
      const a = Math.min(1, 0.15 + 0.85 * Math.sqrt(n / Math.max(heat.max, 1)));
      ctx.fillStyle = `rgba(255, ${Math.round(200 * (1 - a))}, 0, ${0.75 * a})`;
      ctx.fillRect(c * w, r * h, Math.ceil(w), Math.ceil(h));
    }
  }

  function drawZone(z, selected, editing) {
    const colour = KIND_COLOURS[z.kind] || "#ccc";
    const corners = pts(z);
    if (!corners.length) return;
    ctx.beginPath();
    corners.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    if (z.polygon) {
      ctx.closePath();
      ctx.fillStyle = colour + (selected ? "40" : "1c");
      ctx.fill();
    }
    ctx.setLineDash(editing ? [6, 4] : []);
    ctx.lineWidth = selected ? 3 : 2;
    ctx.strokeStyle = colour;
    ctx.stroke();
    ctx.setLineDash([]);
    if (selected) {
      ctx.fillStyle = "#fff";
      corners.forEach(([x, y]) => ctx.fillRect(X(x) - 4, Y(y) - 4, 8, 8));
    }
    if (z.focus) {
      const [fx, fy] = z.focus;
      ctx.strokeStyle = colour;
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(X(fx), Y(fy), 7, 0, 2 * Math.PI);
      ctx.moveTo(X(fx) - 11, Y(fy)); ctx.lineTo(X(fx) + 11, Y(fy));
      ctx.moveTo(X(fx), Y(fy) - 11); ctx.lineTo(X(fx), Y(fy) + 11);
      ctx.stroke();
    }
    const live = state.last && state.last.zones.find((q) => q.name === z.name);
    const label = z.name + " · " + z.kind + (live && !editing ? " · " + live.now + " now" : "");
    const [lx, ly] = corners.reduce((a, p) => (p[1] < a[1] ? p : a), corners[0]);
    ctx.font = "13px system-ui, sans-serif";
    ctx.fillStyle = colour;
    const lw = ctx.measureText(label).width;
    ctx.fillText(label, Math.max(3, Math.min(X(lx) + 3, canvas.width - lw - 3)), Math.max(13, Y(ly) - 4));
  }

  function drawOpen(points) {
    ctx.strokeStyle = "#fff";
    ctx.setLineDash([4, 4]);
    ctx.beginPath();
    points.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "#fff";
    points.forEach(([x, y]) => ctx.fillRect(X(x) - 3, Y(y) - 3, 6, 6));
  }

  function drawPerson(p) {
    if ($("show-tails").checked && p.tail.length > 1) {
      ctx.strokeStyle = "rgba(120, 200, 255, 0.7)";
      ctx.lineWidth = 2;
      ctx.beginPath();
      p.tail.forEach(([x, y], i) => (i ? ctx.lineTo(X(x), Y(y)) : ctx.moveTo(X(x), Y(y))));
      ctx.stroke();
    }
    const [x0, y0, x1, y1] = p.box;
    ctx.strokeStyle = "#00e676";
    ctx.lineWidth = 2;
    ctx.strokeRect(X(x0), Y(y0), X(x1) - X(x0), Y(y1) - Y(y0));
    if (p.kp) {
      ctx.strokeStyle = "#e040fb";
      ctx.lineWidth = 2;
      ctx.beginPath();
      for (const [a, b] of LIMBS) {
        const ka = p.kp[a], kb = p.kp[b];
        if (ka[2] >= KP_MIN && kb[2] >= KP_MIN) { ctx.moveTo(X(ka[0]), Y(ka[1])); ctx.lineTo(X(kb[0]), Y(kb[1])); }
      }
      ctx.stroke();
      ctx.fillStyle = "#fff";
      p.kp.forEach(([x, y, s]) => { if (s >= KP_MIN) ctx.fillRect(X(x) - 2, Y(y) - 2, 4, 4); });
    }
  }

  // -- the traffic map --------------------------------------------------------------------------------
  async function refreshHeat() {
    if (!state.token) return;
    try {
      const r = await api("GET", "/v1/ui/heatmap");
      if (r.status === 200) {
        state.heat = r.data;
        $("heat-span").textContent = r.data.span_s >= 120 ? Math.round(r.data.span_s / 60) + " min" : r.data.span_s + " s";
      }
    } catch (e) { /* the stream reports the connection */ }
  }

  // -- the zone editor --------------------------------------------------------------------------------
  async function loadZones() {
    const r = await api("GET", "/v1/ui/zones");
    if (r.status !== 200) throw new Error("zones: HTTP " + r.status);
    state.zones = r.data.zones;
    state.canUndo = r.data.can_undo;
    if (r.data.size) resize(r.data.size);
    renderEditor();
    draw();
  }

  function editable() {
    if (!state.draft) state.draft = JSON.parse(JSON.stringify(state.zones));
    return state.draft;
  }

  function renderEditor() {
    const zones = state.draft || state.zones;
    $("zone-list").replaceChildren(...zones.map((z, i) => {
      const li = document.createElement("li");
      li.textContent = z.name + " (" + z.kind + ")";
      li.dataset.index = i;
      if (i === state.selected) li.className = "selected";
      li.addEventListener("click", () => select(i));
      return li;
    }));
    const z = state.selected >= 0 ? zones[state.selected] : null;
    $("zone-form").disabled = !z;
    $("delete-zone").disabled = !z;
    $("set-focus").disabled = !z || z.kind !== "attraction";
    $("zone-name").value = z ? z.name : "";
    $("zone-kind").value = z ? z.kind : "aisle";
    $("zone-influence").value = z && z.influence !== undefined && z.influence !== null ? z.influence : "";
    $("zone-dwell").value = z && z.expected_dwell_s !== undefined && z.expected_dwell_s !== null ? z.expected_dwell_s : "";
    $("undo").disabled = !state.canUndo;
    $("finish-zone").hidden = !state.drawing;
    $("hint").textContent = state.drawing ? "Click to add corners; Finish polygon (or double-click) closes it."
      : state.mode === "focus" ? "Click where the display stands (the focus point)."
      : state.draft ? "Unsaved edits: drag corners or a whole zone; Save and apply writes the board's config."
      : "Select a zone to edit it, or draw a new one.";
  }

  function select(i) {
    state.selected = i;
    state.mode = null;
    renderEditor();
    draw();
  }

  function point(ev) {
    const rect = canvas.getBoundingClientRect();
    const x = Math.min(1, Math.max(0, (ev.clientX - rect.left) / rect.width));
    const y = Math.min(1, Math.max(0, (ev.clientY - rect.top) / rect.height));
    return [Math.round(x * 10000) / 10000, Math.round(y * 10000) / 10000];
  }

  // on a zone: inside an area, or near a counting line
  function hits(z, p, tol) {
    if (z.polygon) return inside(z.polygon, p);
    const l = z.line || [];
    for (let i = 1; i < l.length; i++) {
      const [ax, ay] = l[i - 1], [bx, by] = l[i];
      const len2 = (bx - ax) ** 2 + (by - ay) ** 2 || 1e-9;
      const u = Math.max(0, Math.min(1, ((p[0] - ax) * (bx - ax) + (p[1] - ay) * (by - ay)) / len2));
      if (Math.hypot(p[0] - ax - u * (bx - ax), p[1] - ay - u * (by - ay)) < tol) return true;
    }
    return false;
  }

  function inside(poly, [x, y]) {
    let hit = false;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const [xi, yi] = poly[i], [xj, yj] = poly[j];
      if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) hit = !hit;
    }
    return hit;
  }

  canvas.addEventListener("mousedown", (ev) => {
    const p = point(ev);
    if (state.drawing) { state.drawing.push(p); renderEditor(); draw(); return; }
    if (state.mode === "focus") {
      const z = editable()[state.selected];
      z.focus = p;
      state.mode = null;
      renderEditor(); draw();
      return;
    }
    const zones = state.draft || state.zones;
    const tol = 8 / canvas.getBoundingClientRect().width;
    if (state.selected >= 0) {
      const z = zones[state.selected];
      const v = pts(z).findIndex(([x, y]) => Math.hypot(x - p[0], y - p[1]) < tol * 1.5);
      if (v >= 0) { editable(); state.drag = { vertex: v, from: p }; return; }
      if (hits(z, p, tol)) { editable(); state.drag = { vertex: -1, from: p }; return; }
    }
    const hit = zones.findIndex((z) => hits(z, p, tol));
    select(hit);
  });
  canvas.addEventListener("mousemove", (ev) => {
    if (!state.drag) return;
    const p = point(ev);
    const z = state.draft[state.selected];
    const key = z.polygon ? "polygon" : "line";
    if (state.drag.vertex >= 0) {
      z[key][state.drag.vertex] = p;
    } else {
      const dx = p[0] - state.drag.from[0], dy = p[1] - state.drag.from[1];
      const clamp = (v) => Math.round(Math.min(1, Math.max(0, v)) * 10000) / 10000;
      z[key] = z[key].map(([x, y]) => [clamp(x + dx), clamp(y + dy)]);
      if (z.focus) z.focus = [clamp(z.focus[0] + dx), clamp(z.focus[1] + dy)];
      state.drag.from = p;
    }
    draw();
  });
  window.addEventListener("mouseup", () => { if (state.drag) { state.drag = null; renderEditor(); } });
  canvas.addEventListener("dblclick", () => { if (state.drawing) finishPolygon(); });

  function finishPolygon() {
    const pts = state.drawing;
    state.drawing = null;
    // the double-click's own clicks add the same corner twice: drop repeats
    const poly = pts.filter((p, i) => i === 0 || Math.hypot(p[0] - pts[i - 1][0], p[1] - pts[i - 1][1]) > 1e-3);
    const zones = editable();
    let n = zones.length + 1;
    while (zones.some((z) => z.name === "zone-" + n)) n += 1;
    zones.push({ name: "zone-" + n, kind: "aisle", polygon: poly });
    state.selected = zones.length - 1;
    renderEditor();
    draw();
  }

  $("new-zone").addEventListener("click", () => { state.drawing = []; state.mode = null; renderEditor(); });
  $("finish-zone").addEventListener("click", finishPolygon);
  $("delete-zone").addEventListener("click", () => {
    if (state.selected < 0) return;
    editable().splice(state.selected, 1);
    state.selected = -1;
    renderEditor(); draw();
  });
  $("set-focus").addEventListener("click", () => { state.mode = "focus"; renderEditor(); });
  $("zone-name").addEventListener("input", (ev) => { editable()[state.selected].name = ev.target.value; renderList(); });
  $("zone-kind").addEventListener("change", (ev) => {
    const z = editable()[state.selected];
    z.kind = ev.target.value;
    if (z.kind !== "attraction") { delete z.focus; delete z.influence; }
    if (z.kind !== "queue") delete z.min_wait_s;
    // a counting line is a polyline (line), every other zone an area (polygon)
    if (z.kind === "line" && z.polygon) {
      z.line = z.polygon; delete z.polygon; delete z.expected_dwell_s;
      if (!z.in_side) z.in_side = "left";  // "in" is on the left walking the line from its first corner
    }
    if (z.kind !== "line" && z.line) {
      z.polygon = z.line; delete z.line; delete z.hysteresis; delete z.entrance; delete z.in_side;
    }
    renderEditor(); draw();
  });
  for (const [id, key] of [["zone-influence", "influence"], ["zone-dwell", "expected_dwell_s"]]) {
    $(id).addEventListener("input", (ev) => {
      const z = editable()[state.selected];
      if (ev.target.value === "") delete z[key]; else z[key] = Number(ev.target.value);
    });
  }
  function renderList() {
    const zones = state.draft || state.zones;
    document.querySelectorAll("#zone-list li").forEach((li, i) => { li.textContent = zones[i].name + " (" + zones[i].kind + ")"; });
    draw();
  }

  function showResult(r, okText) {
    const errors = $("editor-errors");
    errors.replaceChildren();
    if (r.status === 200) {
      $("editor-message").textContent = okText;
      state.zones = r.data.zones;
      state.canUndo = r.data.can_undo;
      state.draft = null;
      state.selected = -1;
    } else {
      $("editor-message").textContent = "";
      const e = (r.data && r.data.error) || { message: "HTTP " + r.status, problems: [] };
      const items = [e.message, ...(e.problems || [])];
      errors.replaceChildren(...items.map((t) => { const li = document.createElement("li"); li.textContent = t; return li; }));
    }
    renderEditor();
    draw();
  }

  $("save").addEventListener("click", async () => {
    const r = await api("POST", "/v1/ui/zones", { zones: state.draft || state.zones });
    showResult(r, "Saved and applied.");
  });
  $("undo").addEventListener("click", async () => {
    const r = await api("POST", "/v1/ui/zones/undo");
    showResult(r, "The previous zones are back.");
  });
  $("revert").addEventListener("click", () => {
    state.draft = null; state.drawing = null; state.mode = null; state.selected = -1;
    $("editor-errors").replaceChildren();
    $("editor-message").textContent = "";
    renderEditor(); draw();
  });
  $("show-heatmap").addEventListener("change", () => { refreshHeat().then(draw); });
  $("show-tails").addEventListener("change", draw);

  // -- start -------------------------------------------------------------------------------------------
  function logout(reason) {
    if (abort) abort.abort();
    sessionStorage.removeItem("cuecam-token");
    state.token = null;
    $("main").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = reason || "";
    setStatus("not connected", "down");
  }

  async function start(token) {
    state.token = token;
    try {
      await loadZones();
    } catch (e) {
      logout(e.status === 401 ? "the token was refused" : String(e.message || e));
      return;
    }
    sessionStorage.setItem("cuecam-token", token);
    $("login").hidden = true;
    $("main").hidden = false;
    refreshHeat();
    stream();
  }

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    start($("token").value.trim());
  });
  setInterval(() => { if ($("show-heatmap").checked) refreshHeat().then(draw); }, 5000);
  const t = initialToken();
  if (t) start(t); else logout("");
})();
