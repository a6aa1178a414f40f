/* tts-batch dashboard: polls /metrics/json and draws SVG line charts. No libraries, no CDN.
 *
 * On load it seeds the charts from /api/metrics/history (samples stored in Redis), then polls
 * /metrics/json every data-refresh seconds and keeps the last WINDOW_SECONDS in memory.
 * Each chart's <svg> carries data-points (points drawn) and <body> carries data-updates
 * (successful polls), so a test can see the page update.
 */
(function () {
  "use strict";

  var SVG_NS = "http://www.w3.org/2000/svg";
  var WINDOW_SECONDS = 15 * 60;
  var MAX_POINTS = 2000;
  var W = 600, H = 200, LEFT = 48, RIGHT = 10, TOP = 10, BOTTOM = 24;
  var COLORS = ["#2f5fd0", "#d0452f", "#1f9d55", "#a05fd0", "#d08a2f"];

  var body = document.body;
  var refreshMs = Math.max(1, Number(body.dataset.refresh) || 2) * 1000;
  var metricsUrl = body.dataset.metricsUrl || "/metrics/json";
  var historyUrl = (body.dataset.historyUrl || "/api/metrics/history") + "?hours=" + (body.dataset.historyHours || 1);

  /* Each point: {t (seconds), queue, reserved, succeeded, failed, p50, p95, p99, jobP95, hitRate, cpu, mem}. */
  var points = [];
  var previous = null; // the previous poll's totals, for per-second throughput
  var updates = 0;

  var CHARTS = [
    { id: "queue", series: [["queue", "waiting"], ["reserved", "reserved"]], format: fmtInt, minMax: 4 },
    { id: "throughput", series: [["succeeded", "succeeded/s"], ["failed", "failed/s"]], format: fmtRate },
    { id: "latency", series: [["p50", "p50"], ["p95", "p95"], ["p99", "p99"], ["jobP95", "job p95"]], format: fmtMs },
    { id: "cache", series: [["hitRate", "hit rate"]], format: fmtPct, fixedMax: 100 },
    { id: "system", series: [["cpu", "CPU"], ["mem", "memory"]], format: fmtPct, fixedMax: 100 }
  ];

  function fmtInt(v) { return v == null ? "–" : String(Math.round(v)); }
  function fmtRate(v) { return v == null ? "–" : (v >= 10 ? v.toFixed(0) : v.toFixed(2)); }
  function fmtMs(v) { return v == null ? "–" : (v >= 1000 ? (v / 1000).toFixed(2) + " s" : v.toFixed(0) + " ms"); }
  function fmtPct(v) { return v == null ? "–" : v.toFixed(1) + "%"; }
  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function ms(seconds) { return num(seconds) == null ? null : seconds * 1000; }

  function text(id, value) {
    var el = document.getElementById(id);
    if (el) { el.textContent = value; }
  }

  function svgEl(name, attrs, content) {
    var el = document.createElementNS(SVG_NS, name);
    Object.keys(attrs).forEach(function (k) { el.setAttribute(k, attrs[k]); });
    if (content != null) { el.textContent = content; }
    return el;
  }

  function niceMax(v) {
    if (!(v > 0)) { return 1; }
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) {
      if (v <= steps[i] * p) { return steps[i] * p; }
    }
    return 10 * p;
  }

  function clock(t) {
    var d = new Date(t * 1000);
    return String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0") + ":" +
      String(d.getSeconds()).padStart(2, "0");
  }

  function drawChart(chart) {
    var svg = document.getElementById("chart-" + chart.id);
    var legend = document.getElementById("legend-" + chart.id);
    if (!svg) { return; }
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var now = points.length ? points[points.length - 1].t : Date.now() / 1000;
    var t0 = Math.min(now - 60, points.length ? points[0].t : now - 60);
    var t1 = now;
    var max = 0, drawn = 0;
    chart.series.forEach(function (s) {
      points.forEach(function (p) { var v = p[s[0]]; if (v != null && v > max) { max = v; } });
    });
    var yMax = chart.fixedMax || niceMax(Math.max(max, chart.minMax || 0));
    var x = function (t) { return LEFT + (W - LEFT - RIGHT) * (t - t0) / Math.max(1, t1 - t0); };
    var y = function (v) { return TOP + (H - TOP - BOTTOM) * (1 - Math.min(v, yMax) / yMax); };
    for (var g = 0; g <= 4; g++) {
      var gv = yMax * g / 4;
      svg.appendChild(svgEl("line", { x1: LEFT, x2: W - RIGHT, y1: y(gv), y2: y(gv), "class": "grid" }));
      svg.appendChild(svgEl("text", { x: LEFT - 6, y: y(gv) + 4, "text-anchor": "end", "class": "axis" },
        chart.format(gv)));
    }
    svg.appendChild(svgEl("text", { x: LEFT, y: H - 6, "class": "axis" }, clock(t0)));
    svg.appendChild(svgEl("text", { x: W - RIGHT, y: H - 6, "text-anchor": "end", "class": "axis" }, clock(t1)));
    if (legend) { legend.textContent = ""; }
    chart.series.forEach(function (s, i) {
      var color = COLORS[i % COLORS.length];
      var segment = [];
      var flush = function () {
        if (segment.length === 1) {
          svg.appendChild(svgEl("circle", { cx: segment[0][0], cy: segment[0][1], r: 2.5, fill: color }));
        } else if (segment.length > 1) {
          svg.appendChild(svgEl("polyline", {
            points: segment.map(function (p) { return p[0].toFixed(1) + "," + p[1].toFixed(1); }).join(" "),
            stroke: color, "class": "line", "data-series": s[0]
          }));
        }
        segment = [];
      };
      var last = null;
      points.forEach(function (p) {
        var v = p[s[0]];
        if (v == null) { flush(); return; }
        segment.push([x(p.t), y(v)]);
        drawn += 1;
        last = v;
      });
      flush();
      if (legend) {
        var item = document.createElement("span");
        var swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = color;
        var value = document.createElement("b");
        value.textContent = chart.format(last);
        item.appendChild(swatch);
        item.appendChild(document.createTextNode(s[1] + " "));
        item.appendChild(value);
        legend.appendChild(item);
      }
    });
    if (!drawn) {
      svg.appendChild(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle", "class": "empty" },
        "waiting for data…"));
    }
    svg.setAttribute("data-points", String(drawn));
  }

  function drawAll() { CHARTS.forEach(drawChart); }

  function trim() {
    if (!points.length) { return; }
    var cutoff = points[points.length - 1].t - WINDOW_SECONDS;
    while (points.length && (points[0].t < cutoff || points.length > MAX_POINTS)) { points.shift(); }
  }

  function hitRate(hits, misses) {
    hits = num(hits); misses = num(misses);
    if (hits == null || misses == null || hits + misses <= 0) { return null; }
    return 100 * hits / (hits + misses);
  }

  function fromSample(s) {
    return {
      t: s.ts, queue: num(s.queue_length), reserved: null,
      succeeded: num(s.succeeded_per_second), failed: num(s.failed_per_second),
      p50: ms(s.synthesis_p50), p95: ms(s.synthesis_p95), p99: ms(s.synthesis_p99), jobP95: ms(s.job_duration_p95),
      hitRate: hitRate(s.cache_hits, s.cache_misses), cpu: num(s.cpu_percent), mem: num(s.memory_percent)
    };
  }

  function fromDocument(doc) {
    var jobs = doc.jobs || {}, lat = doc.latency_seconds || {}, syn = lat.synthesis || {};
    var job = lat.job_duration || {}, sys = doc.system || {}, q = doc.queues || {}, cache = doc.cache || {};
    var point = {
      t: doc.timestamp, queue: num(q.total), reserved: num(q.reserved), succeeded: null, failed: null,
      p50: ms(syn.p50), p95: ms(syn.p95), p99: ms(syn.p99), jobP95: ms(job.p95),
      hitRate: hitRate(cache.hits, cache.misses),
      cpu: sys.cpu ? num(sys.cpu.percent) : null, mem: sys.memory ? num(sys.memory.percent) : null
    };
    if (previous && doc.timestamp > previous.t) {
      var dt = doc.timestamp - previous.t;
      var ds = jobs.succeeded - previous.succeeded, df = jobs.failed - previous.failed;
      point.succeeded = ds >= 0 ? ds / dt : null;
      point.failed = df >= 0 ? df / dt : null;
    }
    previous = { t: doc.timestamp, succeeded: jobs.succeeded, failed: jobs.failed };
    return point;
  }

  function setStatus(label, kind) {
    var el = document.getElementById("status");
    if (!el) { return; }
    el.textContent = label;
    el.className = "badge badge-" + kind;
  }

  function banner(message) {
    var el = document.getElementById("banner");
    if (!el) { return; }
    el.hidden = !message;
    el.textContent = message || "";
  }

  function renderFailures(items) {
    var tbody = document.getElementById("failures");
    if (!tbody) { return; }
    tbody.textContent = "";
    if (!items || !items.length) {
      var row = document.createElement("tr");
      var cell = document.createElement("td");
      cell.colSpan = 5;
      cell.className = "muted";
      cell.textContent = "none";
      row.appendChild(cell);
      tbody.appendChild(row);
      return;
    }
    items.forEach(function (f) {
      var row = document.createElement("tr");
      var when = String(f.failed_at || "").replace("T", " ").replace(/\.\d+Z?$/, "").replace(/Z$/, "");
      var cells = [when, f.job_id || "", f.voice || "", String(f.attempts == null ? "" : f.attempts),
        (f.error_type ? f.error_type + ": " : "") + (f.error || "")];
      cells.forEach(function (value, i) {
        var cell = document.createElement("td");
        if (i === 1) {
          var code = document.createElement("code");
          code.textContent = value;
          cell.appendChild(code);
        } else {
          cell.textContent = value;
        }
        if (i === 4) { cell.className = "error"; }
        row.appendChild(cell);
      });
      tbody.appendChild(row);
    });
  }

  function renderTiles(doc) {
    var jobs = doc.jobs || {}, q = doc.queues || {}, workers = doc.workers || {};
    text("queue-total", fmtInt(q.total));
    text("queue-reserved", fmtInt(q.reserved));
    text("workers-online", fmtInt(workers.online));
    text("jobs-submitted", fmtInt(jobs.submitted));
    text("jobs-succeeded", fmtInt(jobs.succeeded));
    text("jobs-failed", fmtInt(jobs.failed));
    text("dead-letter", fmtInt(q.dead_letter));
    text("error-rate", num(jobs.error_rate) == null ? "–" : (100 * jobs.error_rate).toFixed(1) + "%");
    text("last-update", clock(doc.timestamp));
    if (!workers.online) {
      setStatus("no workers", "bad");
    } else if (q.dead_letter > 0 || (jobs.error_rate || 0) > 0.05) {
      setStatus("degraded", "warn");
    } else {
      setStatus("healthy", "ok");
    }
  }

  function getJSON(url) {
    return fetch(url, { cache: "no-store", headers: { Accept: "application/json" } }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (!r.ok) {
          var message = data && data.error ? data.error.message : "HTTP " + r.status;
          throw new Error(message);
        }
        return data;
      });
    });
  }

  function poll() {
    getJSON(metricsUrl).then(function (doc) {
      points.push(fromDocument(doc));
      trim();
      renderTiles(doc);
      renderFailures(doc.recent_failures);
      drawAll();
      banner("");
      updates += 1;
      body.setAttribute("data-updates", String(updates));
      body.setAttribute("data-last-update", String(doc.timestamp));
    }).catch(function (err) {
      setStatus("unreachable", "bad");
      banner("Cannot read metrics: " + err.message);
    }).then(function () {
      window.setTimeout(poll, refreshMs);
    });
  }

  function start() {
    drawAll();
    getJSON(historyUrl).then(function (data) {
      (data.samples || []).forEach(function (s) { points.push(fromSample(s)); });
      trim();
      drawAll();
    }).catch(function () { /* history is optional: live points follow */ }).then(poll);
  }

  start();
})();
