// The status page: polls GET /-/page every second and redraws. With admin.token set the
// token typed into the form is kept in sessionStorage and sent as a Bearer header; a 401
// shows the form again. Text from the proxy is set with textContent, never as HTML.
"use strict";
(function () {
  const KEY = "rollout-admin-token";
  const REFRESH_MS = 1000;
  const COLORS = { signal: "#2463eb", legacy: "#7a4fd6", p50: "#12805c", p95: "#b26a00", p99: "#c62828" };
  const $ = (id) => document.getElementById(id);
  let timer = null;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  const pct = (v) => (v === null || v === undefined ? "–" : `${+(v * 100).toFixed(2)} %`);
  const ms = (v) => (v === null || v === undefined ? "–" : `${+v.toFixed(1)} ms`);
  const num = (v) => (v === null || v === undefined ? "–" : `${+(+v).toFixed(2)}`);
  const clock = (t) => new Date(t * 1000).toLocaleTimeString();

  function showForm(refused) {
    $("main").hidden = true;
    $("token-form").hidden = false;
    $("token-error").hidden = !refused;
    $("conn").textContent = "admin token needed";
  }

  async function refresh() {
    timer = null;
    const token = sessionStorage.getItem(KEY);
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    let doc;
    try {
      const res = await fetch("/-/page", { headers, cache: "no-store" });
      if (res.status === 401) { showForm(Boolean(token)); return; }
      if (!res.ok) throw new Error(`GET /-/page answered ${res.status}`);
      doc = await res.json();
    } catch (err) {
      $("conn").textContent = `cannot reach the admin listener: ${err.message}`;
      $("conn").className = "bad";
      timer = setTimeout(refresh, REFRESH_MS);
      return;
    }
    $("token-form").hidden = true;
    $("main").hidden = false;
    render(doc);
    $("conn").textContent = `updated ${clock(doc.generated_at)}`;
    $("conn").className = "muted";
    timer = setTimeout(refresh, REFRESH_MS);
  }

  function render(doc) {
    const s = doc.status;
    $("version").textContent = `${s.version} · ${s.config.path} · generation ${s.config.generation}` +
      (s.config.last_reload.ok ? "" : ` · last reload FAILED: ${s.config.last_reload.error}`);
    const emergency = $("emergency");
    emergency.textContent = s.emergency ? "ON: all traffic to legacy" : "off";
    emergency.className = "big " + (s.emergency ? "bad" : "good");
    const guard = $("guard");
    const tripped = s.guard.tripped;
    guard.textContent = !s.guard.enabled ? "disabled" : tripped ? "TRIPPED" : "watching";
    guard.className = "big " + (tripped ? "bad" : s.guard.enabled ? "good" : "warn");
    $("guard-detail").textContent = tripped
      ? `${s.guard.reason} (at ${clock(s.guard.tripped_at)}); clear with POST /-/guard/reset`
      : `judges signal over ${s.guard.window_seconds} s`;
    renderEffective(s);
    renderShadow(doc.shadow);
    renderPlan(doc.plan);
    renderAutopilot(doc.autopilot);
    renderUpstreams(doc);
    renderHistory(doc.history);
  }

  function renderEffective(s) {
    const table = $("effective");
    table.replaceChildren();
    for (const [feature, eff] of Object.entries(s.effective_percentages)) {
      const tr = el("tr");
      tr.dataset.feature = feature;
      const configured = s.percentages[feature];
      const shown = `${eff} %` + (configured !== eff ? ` (configured ${configured} %)` : "");
      const value = el("td", eff !== configured ? "warn" : "", shown);
      value.id = `pct-${feature}`;
      tr.append(el("td", "", feature), value);
      table.append(tr);
    }
  }

  function renderShadow(shadow) {
    $("shadow-rate").textContent = !shadow.enabled && shadow.compared === 0 ? "off" : pct(shadow.match_rate);
    $("shadow-detail").textContent = `${shadow.compared} comparisons since start`;
  }

  function renderPlan(plan) {
    const ol = $("plan");
    ol.replaceChildren();
    plan.stages.forEach((stage, i) => {
      const li = el("li", "", `${stage} %`);
      if (i === plan.current_stage) li.className = "current";
      else if (plan.current_stage !== null && i < plan.current_stage) li.className = "done";
      ol.append(li);
    });
    $("stage-text").textContent = plan.current_stage === null
      ? `at ${plan.percentage} %, between stages`
      : `stage ${plan.current_stage + 1} of ${plan.stages.length}: ${plan.percentage} %`;
  }

  function renderAutopilot(ap) {
    $("autopilot-running").textContent = (ap.running ? "running" : "not running") +
      (ap.enabled ? "" : " · autopilot.enabled is false");
    const st = ap.state;
    let text = ap.message || "";
    if (st) {
      text = `at ${st.percentage} %; passes ${st.passes}, failures ${st.failures}, inconclusive ${st.inconclusive}`;
      if (st.pause) text += ` · PAUSED (${st.pause}): ${st.pause_reason || ""}`;
      if (ap.paused_by) text += ` · paused by ${ap.paused_by}`;
      if (st.waiting_gate !== null) text += ` · gate ${st.waiting_gate} %: waiting for rollout approve`;
    }
    $("autopilot-state").textContent = text;
    $("autopilot-state").className = st && st.pause ? "warn" : "";
    const when = ap.next_at && ap.running ? ` (next analysis at ${clock(ap.next_at)})` : "";
    $("autopilot-next").textContent = (ap.next_action || "–") + when;
    const a = ap.last_analysis;
    $("autopilot-analysis").textContent = a
      ? `last analysis ${clock(a.time)} at ${a.percentage} %: ${a.analysis.outcome}, ${a.analysis.reason}` : "";
  }

  // Promotion needs a figure strictly under its limit ("error rate < 1 %"); the guard
  // trips only beyond its own ("> 5 %"), so exactly at it is still fine there.
  function thresholdCell(value, limit, fmt, worse, strict) {
    if (limit === null || limit === undefined) return el("td", "muted", "–");
    const judged = value !== null && value !== undefined;
    const over = strict ? value >= limit : value > limit;
    const fails = judged && (worse === "below" ? value < limit : over);
    const mark = !judged ? "" : fails ? " ✗" : " ✓";
    const rule = worse === "below" ? "≥" : strict ? "<" : "≤";
    return el("td", fails ? "bad" : judged ? "good" : "muted", `${rule} ${fmt(limit)}${mark}`);
  }

  function figuresTable(name, w, doc) {
    const p = doc.status.promotion, g = doc.guard_thresholds;
    const table = el("table", "figures");
    const head = el("tr");
    for (const h of ["figure", "live", "promotion", "guard", "samples"]) head.append(el("th", "", h));
    table.append(head);
    const rows = [
      ["requests", w.requests, num, p.min_requests, g.min_requests, "below"],
      ["error rate", w.error_rate, pct, p.max_error_rate, g.max_error_rate, "above"],
      ["p50", w.p50_ms, ms, null, null],
      ["p95", w.p95_ms, ms, p.max_p95_ms, g.max_p95_ms, "above"],
      ["p99", w.p99_ms, ms, null, null],
    ];
    for (const [label, value, fmt, promo, guard, worse] of rows) {
      const tr = el("tr");
      const live = el("td", "", fmt(value));
      live.id = `live-${name}-${label.replace(" ", "-")}`;
      tr.append(el("td", "", label), live,
        thresholdCell(value, promo, fmt === num ? (v) => String(v) : fmt, worse, true),
        thresholdCell(value, guard, fmt === num ? (v) => String(v) : fmt, worse, false),
        el("td", "muted", String(w.requests)));
      table.append(tr);
    }
    return table;
  }

  function renderUpstreams(doc) {
    const box = $("upstreams");
    const series = doc.series;
    const now = series.at.length ? series.at[series.at.length - 1] : doc.generated_at;
    const span = series.seconds;
    for (const name of ["signal", "legacy"]) {
      let card = $(`up-${name}`);
      if (!card) {
        card = el("section", "card");
        card.id = `up-${name}`;
        box.append(card);
      }
      const w = doc.status.upstreams[name];
      const ring = series.upstreams[name];
      card.replaceChildren();
      const h = el("h3", "", `${name} `);
      h.append(el("span", "muted", w.url));
      card.append(h);
      const intro = el("p", "muted", `live window (last ${doc.guard_thresholds.window_seconds} s of this process; promotion and guard judge signal):`);
      card.append(intro, figuresTable(name, w, doc));
      const total = el("p", "");
      const count = el("strong", "", String(ring.requests));
      count.id = `total-${name}`;
      total.append(count, document.createTextNode(` requests in the last ${Math.round(span / 60)} min (every worker), ${ring.fallbacks} fallbacks, ${w.upgraded} upgraded open now`));
      card.append(total);
      const charts = el("div", "charts");
      const add = (title, lines, format) => {
        const c = el("div", "chart");
        charts.append(c);
        window.RolloutCharts.chart(c, { title, at: series.at, lines, format, now, span });
      };
      const color = COLORS[name];
      add("requests/s", [{ name: "req/s", values: ring.requests_per_s, color }], num);
      add("error rate", [{ name: "errors", values: ring.error_rate, color: COLORS.p99 }], pct);
      add("latency p50 / p95 / p99", [
        { name: "p50", values: ring.p50_ms, color: COLORS.p50 },
        { name: "p95", values: ring.p95_ms, color: COLORS.p95 },
        { name: "p99", values: ring.p99_ms, color: COLORS.p99 },
      ], ms);
      add("fallbacks/s", [{ name: "fallbacks/s", values: ring.fallbacks_per_s, color: COLORS.p95 }], num);
      add("upgraded connections", [{ name: "open", values: ring.upgraded, color }], num);
      card.append(charts);
    }
  }

  // {"rollout.percentage": 30} -> {"rollout.percentage": 50} reads "rollout.percentage 30 → 50".
  function change(entry) {
    const show = (v) => (v === null || v === undefined ? "–" : typeof v === "object" ? JSON.stringify(v) : String(v));
    const b = entry.before, a = entry.after;
    if (b && a && typeof b === "object" && typeof a === "object") {
      const keys = [...new Set([...Object.keys(b), ...Object.keys(a)])];
      const parts = keys.filter((k) => show(b[k]) !== show(a[k]))
        .map((k) => `${k} ${show(b[k])} → ${show(a[k])}`);
      if (parts.length) return parts.join(", ");
    }
    return `${show(b)} → ${show(a)}`;
  }

  function renderHistory(history) {
    $("history-message").textContent = history.message || "";
    const ol = $("history");
    ol.replaceChildren();
    for (const entry of history.entries.slice().reverse()) {
      const li = el("li");
      li.append(el("span", "when", entry.time), el("span", "what", entry.command),
        el("span", "", change(entry)), el("span", "muted", `by ${entry.user}`));
      if (entry.event) li.append(el("span", "warn", entry.event));
      if (entry.reason) li.append(el("span", "muted", `“${entry.reason}”`));
      ol.append(li);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, $("token").value.trim());
      $("token").value = "";
      if (timer !== null) clearTimeout(timer);
      refresh();
    });
    // The "who would move" box (preview.js): the same token as every data request.
    if (typeof window.renderPreview === "function") {
      window.renderPreview($("preview"), () => sessionStorage.getItem(KEY));
    }
    refresh();
  });
})();
