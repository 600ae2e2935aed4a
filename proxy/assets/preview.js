// The status page's "who moves" box (SPEC 14): an operator types a percentage (and may
// pick a feature) and sees who that change would move, from GET /-/preview: the exact
// share of buckets that change side and, from this proxy's activity counters, the
// recently active sessions and their share of recent requests.
//
// Use: renderPreview(container, token) where `token` is the admin token, null, or a
// function returning it (so a token typed later is picked up). No dependency; data is
// written with textContent only.
(function () {
  "use strict";

  const pct = (x) => `${Number(x).toFixed(2)} %`;
  const held = (p, why) => (why ? `${p} % (${why})` : `${p} %`);

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function moved(side, share, activity) {
    if (!share && (!activity || !activity.requests)) return `to ${side}: nobody`;
    let text = `to ${side}: ${pct(share)} of buckets`;
    if (activity) {
      const floor = activity.saturated ? "at least " : "";
      text += `, ${floor}~${Math.round(activity.sessions)} recent sessions, ` +
        `${pct(activity.request_share)} of recent requests (${activity.requests})`;
    }
    return text;
  }

  // The document as lines of text, one list per feature (also what a test can check).
  function previewRows(doc) {
    if (!doc.changed) return [["nobody moves: the change routes every session as now"]];
    return doc.features.map((f) => {
      const rows = [
        `${f.feature}: ${held(f.before, f.before_held)} -> ${held(f.after, f.after_held)}, ` +
          `${pct(f.share)} of buckets change side` +
          (f.expected ? " (expected, not exact)" : ""),
        moved("signal", f.to_signal_share, f.to_signal),
        moved("legacy", f.to_legacy_share, f.to_legacy),
      ];
      if (f.test_sessions_to_signal || f.test_sessions_to_legacy) {
        rows.push(`test sessions: ${f.test_sessions_to_signal} to signal, ` +
          `${f.test_sessions_to_legacy} to legacy`);
      }
      return rows;
    });
  }

  function renderPreview(container, token) {
    const form = el("form", { class: "preview-form" });
    const input = el("input", {
      type: "number", min: "0", max: "100", step: "0.01", required: "",
      placeholder: "percentage", "aria-label": "proposed percentage",
    });
    const feature = el("input", {
      type: "text", placeholder: "feature (blank: global)", "aria-label": "feature",
    });
    form.append(input, feature, el("button", { type: "submit" }, "Preview"));
    const out = el("div", { class: "preview-result", "aria-live": "polite" });
    container.replaceChildren(el("h2", {}, "Who would move"), form, out);

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const params = new URLSearchParams({ percentage: input.value });
      if (feature.value.trim()) params.set("feature", feature.value.trim());
      const t = typeof token === "function" ? token() : token;
      const headers = t ? { Authorization: `Bearer ${t}` } : {};
      out.replaceChildren(el("p", {}, "…"));
      try {
        const res = await fetch(`/-/preview?${params}`, { headers, cache: "no-store" });
        const doc = await res.json();
        if (!res.ok) {
          out.replaceChildren(el("p", { class: "preview-error" },
            res.status === 401 ? "admin token needed" : doc.error));
          return;
        }
        const nodes = doc.warnings.map((w) => el("p", { class: "preview-warning" }, w));
        for (const rows of previewRows(doc)) {
          const list = el("ul");
          for (const row of rows) list.append(el("li", {}, row));
          nodes.push(list);
        }
        nodes.push(el("p", { class: "preview-scope" },
          `activity of the last ${doc.window_seconds / 60} min, ${doc.scope}`));
        out.replaceChildren(...nodes);
      } catch (err) {
        out.replaceChildren(el("p", { class: "preview-error" }, `admin listener: ${err}`));
      }
    });
  }

  if (typeof module !== "undefined") module.exports = { renderPreview, previewRows };
  else Object.assign(window, { renderPreview, previewRows });
})();
