/* Darkboard: charts of pydarknet training runs (uPlot), kept current by polling /api/state.
 * In an exported report, window.DARKBOARD_DATA holds the state and nothing is polled. */
(function () {
  "use strict";

  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    "#7f7f7f", "#bcbd22"];
  const DASHES = [[], [6, 4], [2, 3], [10, 3, 2, 3]];
  const POINTS = 2000;
  const POLL_MS = Number(new URLSearchParams(location.search).get("refresh") || 2) * 1000;
  const STATIC = window.DARKBOARD_DATA || null;

  const pct = (v) => (v == null ? null : 100 * v);
  const { lineColor, forLogAxis } = window.DarkboardSeries;

  // Each chart: lines(run, series) -> [{label, y, x?, width?, alpha?, dash?}]. A run's lines in one chart get
  // distinct colours (see lineColor) unless the chart says sameColor (loss and its average: alpha tells them
  // apart). logOption: the chart offers a logarithmic y axis.
  const CHARTS = [
    { id: "loss", title: "Loss and average loss", sameColor: true, logOption: true,
      lines: (r, s) => [
        { label: `${r} loss`, y: s.loss, width: 1, alpha: 0.35 },
        { label: `${r} avg loss`, y: s.avg_loss, width: 2 }] },
    { id: "iou", title: "Average IoU per [yolo] layer",
      lines: (r, s) => s.layers.iou.map((y, l) => ({ label: `${r} layer ${l}`, y, dash: DASHES[l % 4] })) },
    { id: "giou", title: "Average GIoU per [yolo] layer",
      lines: (r, s) => s.layers.giou.map((y, l) => ({ label: `${r} layer ${l}`, y, dash: DASHES[l % 4] })) },
    { id: "losses", title: "IoU loss and class loss (sum over layers)", logOption: true,
      lines: (r, s) => [
        { label: `${r} IoU loss`, y: s.iou_loss, width: 2 },
        { label: `${r} class loss`, y: s.cls_loss, dash: DASHES[1] }] },
    { id: "share", title: "Share of the total cost (%)",
      lines: (r, s) => [
        { label: `${r} IoU loss %`, y: s.iou_share, width: 2 },
        { label: `${r} class loss %`, y: s.cls_share, dash: DASHES[1] }] },
    { id: "lr", title: "Learning rate", raw: true,
      lines: (r, s) => [{ label: r, y: s.lr }] },
    { id: "ips", title: "Images / s",
      lines: (r, s) => [{ label: r, y: s.ips }] },
    { id: "map", title: "mAP per checkpoint (%)", raw: true, points: true,
      lines: (r, s) => Object.keys(s.map).map((metric, i) => ({
        label: `${r} ${metric}`, x: s.map[metric].x, y: s.map[metric][ui.mapValue.value].map(pct),
        dash: DASHES[i % 4], width: 2 })) },
  ];

  const ui = {
    status: document.getElementById("status"),
    root: document.getElementById("root"),
    runs: document.getElementById("runs"),
    hidden: document.getElementById("hidden-runs"),
    hiddenTitle: document.getElementById("hidden-title"),
    emptyHint: document.getElementById("empty-hint"),
    charts: document.getElementById("charts"),
    smoothing: document.getElementById("smoothing"),
    smoothingValue: document.getElementById("smoothing-value"),
    xmin: document.getElementById("xmin"),
    xmax: document.getElementById("xmax"),
    resetX: document.getElementById("reset-x"),
    mapValue: document.getElementById("map-value"),
  };

  const state = { runs: [], series: {}, colors: new Map(), xmin: null, xmax: null, ylim: {}, logY: {}, polls: 0 };
  const plots = {};  // chart id -> {u, signature, el}

  // ----- helpers ----------------------------------------------------------------------------------------
  /* a run keeps its colour for the life of the page, whatever runs appear or hide later */
  function colorOf(runId) {
    if (!state.colors.has(runId)) {
      const used = new Set(state.colors.values());
      const free = PALETTE.find((c) => !used.has(c));
      state.colors.set(runId, free || PALETTE[state.colors.size % PALETTE.length]);
    }
    return state.colors.get(runId);
  }

  function withAlpha(hex, alpha) {
    if (alpha == null || alpha >= 1) return hex;
    const a = Math.round(alpha * 255).toString(16).padStart(2, "0");
    return hex + a;
  }

  /* trailing moving average over `w` points, nulls skipped (and kept as gaps) */
  function smooth(y, w) {
    if (w <= 1 || !y) return y;
    const out = new Array(y.length);
    let sum = 0, n = 0;
    for (let i = 0; i < y.length; i++) {
      if (y[i] != null) { sum += y[i]; n++; }
      const j = i - w;
      if (j >= 0 && y[j] != null) { sum -= y[j]; n--; }
      out[i] = y[i] == null || n === 0 ? null : sum / n;
    }
    return out;
  }

  /* tick labels: 4 significant digits, exponent notation for tiny values (learning rates) */
  function fmtTick(v) {
    if (v == null) return "";
    if (v !== 0 && Math.abs(v) < 1e-3) return v.toExponential(1);
    return Math.abs(v) >= 1e5 ? v.toExponential(2) : String(Number(v.toPrecision(4)));
  }

  function numberOrNull(input) {
    const v = input.value.trim();
    return v === "" || !isFinite(Number(v)) ? null : Number(v);
  }

  function visibleRuns() {
    return state.runs.filter((r) => !r.hidden && state.series[r.id]);
  }

  // ----- charts -----------------------------------------------------------------------------------------
  function chartData(chart) {
    const tables = [];
    const series = [{}];
    const w = chart.raw ? 1 : Number(ui.smoothing.value);
    const log = !!state.logY[chart.id];
    for (const run of visibleRuns()) {
      const s = state.series[run.id];
      const lines = chart.lines(run.id, s).filter((line) => line.y && line.y.some((v) => v != null));
      lines.forEach((line, k) => {
        const x = line.x || s.x;
        const color = chart.sameColor ? colorOf(run.id) : lineColor(colorOf(run.id), k, lines.length);
        const y = smooth(line.y, w);
        tables.push([x, log ? forLogAxis(y) : y]);
        series.push({
          label: line.label, stroke: withAlpha(color, line.alpha), width: line.width || 1.5,
          dash: line.dash && line.dash.length ? line.dash : undefined,
          points: chart.points ? { show: true, size: 7, fill: color } : { show: false },
          spanGaps: !!chart.points,
        });
      });
    }
    const data = tables.length ? uPlot.join(tables) : [[]];
    return { data, series };
  }

  function xRange(u, min, max) {
    if (min == null) return [0, 1];
    const lo = state.xmin != null ? state.xmin : min;
    const hi = state.xmax != null ? state.xmax : max;
    return hi > lo ? [lo, hi] : [lo, lo + 1];
  }

  function yRange(chartId) {
    return (u, min, max) => {
      const lim = state.ylim[chartId] || {};
      if (state.logY[chartId]) {
        const auto = min == null ? [0.1, 1] : uPlot.rangeLog(min, max, 10, true);
        const lo = lim.min != null && lim.min > 0 ? lim.min : auto[0];
        const hi = lim.max != null && lim.max > 0 ? lim.max : auto[1];
        return hi > lo ? [lo, hi] : [lo, lo * 10];
      }
      const auto = min == null ? [0, 1] : uPlot.rangeNum(min, max, 0.1, true);
      const lo = lim.min != null ? lim.min : auto[0];
      const hi = lim.max != null ? lim.max : auto[1];
      return hi > lo ? [lo, hi] : [lo, lo + 1];
    };
  }

  function makePlot(chart, el, built) {
    const width = Math.max(el.clientWidth, 300);
    const opts = {
      width, height: 260,
      series: built.series,
      scales: { x: { time: false, range: xRange },
        y: state.logY[chart.id] ? { distr: 3, log: 10, range: yRange(chart.id) } : { range: yRange(chart.id) } },
      axes: [{ label: "iteration", size: 40 }, { size: 60, values: (u, splits) => splits.map(fmtTick) }],
      legend: { live: false },
      cursor: { sync: { key: "darkboard" }, drag: { x: true, y: false, setScale: false } },
      hooks: {
        setSelect: [(u) => {
          if (u.select.width > 4) {
            setXLimits(u.posToVal(u.select.left, "x"), u.posToVal(u.select.left + u.select.width, "x"));
          }
          u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
        }],
      },
    };
    const u = new uPlot(opts, built.data, el);
    u.over.addEventListener("dblclick", () => setXLimits(null, null));
    return u;
  }

  function renderCharts() {
    for (const chart of CHARTS) {
      let p = plots[chart.id];
      if (!p) {
        const box = document.createElement("div");
        box.className = "chart";
        box.id = `chart-${chart.id}`;
        box.innerHTML = `<div class="chart-head"><h3></h3>
          <input type="number" step="any" placeholder="y min" data-lim="min">
          <input type="number" step="any" placeholder="y max" data-lim="max">${chart.logOption ?
            '<label class="log-y" title="logarithmic y axis"><input type="checkbox" data-log> log</label>' : ""}</div>
          <div class="plot"></div><div class="empty" hidden>no data</div>`;
        box.querySelector("h3").textContent = chart.title;
        for (const input of box.querySelectorAll("input[data-lim]")) {
          input.addEventListener("change", () => {
            const lim = state.ylim[chart.id] || (state.ylim[chart.id] = {});
            lim[input.dataset.lim] = numberOrNull(input);
            renderCharts();
          });
        }
        const logBox = box.querySelector("input[data-log]");
        if (logBox) {
          logBox.addEventListener("change", () => {
            state.logY[chart.id] = logBox.checked;
            renderCharts();
          });
        }
        ui.charts.appendChild(box);
        p = plots[chart.id] = { box, el: box.querySelector(".plot"), empty: box.querySelector(".empty"),
          u: null, signature: null };
      }
      const built = chartData(chart);
      const signature = (state.logY[chart.id] ? "log\n" : "") + built.series.map((s) => `${s.label}|${s.stroke}`).join("\n");
      const hasData = built.series.length > 1;
      p.empty.hidden = hasData;
      p.el.hidden = !hasData;
      if (!hasData) {
        if (p.u) { p.u.destroy(); p.u = null; p.signature = null; }
        continue;
      }
      if (p.u && p.signature === signature) {
        p.u.setData(built.data, true);
      } else {
        if (p.u) p.u.destroy();
        p.u = makePlot(chart, p.el, built);
        p.signature = signature;
      }
    }
  }

  function setXLimits(lo, hi) {
    state.xmin = lo;
    state.xmax = hi;
    ui.xmin.value = lo == null ? "" : Math.round(lo);
    ui.xmax.value = hi == null ? "" : Math.round(hi);
    renderCharts();
  }

  // ----- run list ---------------------------------------------------------------------------------------
  function runItem(run) {
    const li = document.createElement("li");
    li.className = "run";
    li.dataset.run = run.id;
    li.dataset.last = run.iterations == null ? "" : run.iterations;
    li.dataset.points = run.points;
    if (isActive(run)) {
      li.classList.add("active");
      li.title = "new data in the last minute";
    }
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = run.hidden ? "#ccc" : colorOf(run.id);
    const name = document.createElement("span");
    name.className = "name grow";
    name.textContent = run.id === "." ? (state.rootName || ".") : run.id;
    const info = document.createElement("span");
    info.className = "info";
    const parts = [run.iterations == null ? "no iterations yet" : `iteration ${run.iterations.toLocaleString("en")}`];
    if (run.source === "log.csv") parts.push("log.csv");
    if (run.loading != null) parts.push(`loading ${Math.round(100 * run.loading)}%`);
    if (run.bad_lines) parts.push(`${run.bad_lines} bad lines`);
    info.textContent = parts.join(" · ");
    name.appendChild(info);
    li.append(swatch, name);
    if (!STATIC) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = run.hidden ? "unhide" : "hide";
      button.textContent = run.hidden ? "show" : "hide";
      button.addEventListener("click", () => setHidden(run.id, !run.hidden));
      li.appendChild(button);
    }
    return li;
  }

  function isActive(run) {
    return !STATIC && !!run.updated && Date.now() / 1000 - run.updated < 60;
  }

  let runsSignature = null;
  function renderRuns() {
    const signature = JSON.stringify(state.runs.map((r) => [r, isActive(r)]));
    if (signature === runsSignature) return;  // unchanged: keep the DOM (and the button under the mouse)
    runsSignature = signature;
    const shown = state.runs.filter((r) => !r.hidden);
    const hidden = state.runs.filter((r) => r.hidden);
    ui.runs.replaceChildren(...shown.map(runItem));
    ui.hidden.replaceChildren(...hidden.map(runItem));
    ui.hiddenTitle.hidden = hidden.length === 0;
    ui.emptyHint.hidden = state.runs.length > 0;
  }

  // ----- data -------------------------------------------------------------------------------------------
  function apply(payload) {
    state.runs = payload.runs;
    for (const run of state.runs) colorOf(run.id);  // in sorted order on the first load
    state.rootName = payload.root ? payload.root.split("/").filter(Boolean).pop() : null;
    ui.root.textContent = payload.root || "";
    for (const [id, s] of Object.entries(payload.series)) state.series[id] = s;
    const visible = new Set(state.runs.filter((r) => !r.hidden).map((r) => r.id));
    for (const id of Object.keys(state.series)) if (!visible.has(id)) delete state.series[id];
    renderRuns();
    renderCharts();
  }

  async function poll() {
    const known = {};
    for (const [id, s] of Object.entries(state.series)) known[id] = s.version;
    try {
      const response = await fetch(`api/state?points=${POINTS}&known=${encodeURIComponent(JSON.stringify(known))}`,
        { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      apply(await response.json());
      state.polls++;
      ui.status.dataset.polls = state.polls;
      ui.status.classList.remove("error");
      ui.status.textContent = `${state.runs.length} runs · updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      ui.status.classList.add("error");
      ui.status.textContent = `board unreachable (${err.message}); retrying`;
    }
  }

  /* A board started with --token hides and shows runs only for requests that carry it; the page asks once per
   * tab and keeps it in sessionStorage. */
  const TOKEN_KEY = "darkboard-token";

  function postHide(runId, hidden) {
    const headers = { "Content-Type": "application/json", "X-Board": "1" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    return fetch("api/hide", { method: "POST", headers, body: JSON.stringify({ run: runId, hidden }) });
  }

  async function setHidden(runId, hidden) {
    try {
      let response = await postHide(runId, hidden);
      if (response.status === 401) {
        const token = window.prompt("This board needs its token to hide or show runs:");
        if (token) {
          sessionStorage.setItem(TOKEN_KEY, token.trim());
          response = await postHide(runId, hidden);
        }
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
    } catch (err) {
      ui.status.classList.add("error");
      ui.status.textContent = `could not ${hidden ? "hide" : "show"} ${runId}: ${err.message}`;
    }
    await poll();
  }

  async function loop() {
    await poll();
    setTimeout(loop, POLL_MS);
  }

  // ----- controls ---------------------------------------------------------------------------------------
  ui.smoothing.addEventListener("input", () => {
    ui.smoothingValue.textContent = ui.smoothing.value;
    renderCharts();
  });
  ui.xmin.addEventListener("change", () => setXLimits(numberOrNull(ui.xmin), numberOrNull(ui.xmax)));
  ui.xmax.addEventListener("change", () => setXLimits(numberOrNull(ui.xmin), numberOrNull(ui.xmax)));
  ui.resetX.addEventListener("click", () => setXLimits(null, null));
  ui.mapValue.addEventListener("change", renderCharts);
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const p of Object.values(plots)) if (p.u) p.u.setSize({ width: Math.max(p.el.clientWidth, 300), height: 260 });
    }, 100);
  });

  window.darkboard = { state, plots, CHARTS };  // for the console and the browser tests

  if (STATIC) {
    apply(STATIC);
    ui.status.textContent = `report of ${state.runs.length} runs, ${new Date(STATIC.time * 1000).toLocaleString()}`;
  } else {
    loop();
  }
})();
