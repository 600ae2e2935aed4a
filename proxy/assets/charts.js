// Minimal SVG line charts for the status page: no library, no external request.
// chart(el, {title, at, lines: [{name, values, color}], unit, format, now, span}) draws the
// last `span` seconds ending at `now`; a null value breaks the line (a second with no data).
"use strict";
(function () {
  const NS = "http://www.w3.org/2000/svg";
  const W = 300, H = 80;

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * p) return m * p;
    return 10 * p;
  }

  function path(at, values, now, span, top) {
    let d = "", pen = false;
    for (let i = 0; i < at.length; i++) {
      const v = values[i];
      if (v === null || v === undefined) { pen = false; continue; }
      const x = W - ((now - at[i]) / span) * W;
      const y = H - (v / top) * (H - 4);
      // a zero-length "l0 0" after each move: with round caps a lone second shows as a dot
      d += (pen ? "L" : "M") + x.toFixed(1) + " " + y.toFixed(1) + (pen ? "" : "l0 0");
      pen = true;
    }
    return d;
  }

  function chart(el, spec) {
    let top = 0;
    for (const line of spec.lines) for (const v of line.values) if (v > top) top = v;
    top = niceMax(top);
    const fmt = spec.format || ((v) => String(v));
    el.replaceChildren();
    const title = document.createElement("div");
    title.className = "title";
    const name = document.createElement("span");
    name.textContent = spec.title;
    const last = document.createElement("span");
    last.className = "last";
    const latest = spec.lines.map((l) => l.values.length ? l.values[l.values.length - 1] : null);
    last.textContent = latest.map((v) => (v === null ? "–" : fmt(v))).join(" / ");
    title.append(name, last);
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", spec.title);
    for (const frac of [0.5]) {
      const grid = document.createElementNS(NS, "line");
      const y = H - frac * (H - 4);
      grid.setAttribute("x1", "0"); grid.setAttribute("x2", String(W));
      grid.setAttribute("y1", String(y)); grid.setAttribute("y2", String(y));
      grid.setAttribute("stroke", "#e3e6eb"); grid.setAttribute("vector-effect", "non-scaling-stroke");
      svg.append(grid);
    }
    for (const line of spec.lines) {
      const p = document.createElementNS(NS, "path");
      p.setAttribute("d", path(spec.at, line.values, spec.now, spec.span, top));
      p.setAttribute("fill", "none");
      p.setAttribute("stroke", line.color);
      p.setAttribute("stroke-width", "1.5");
      p.setAttribute("stroke-linecap", "round");
      p.setAttribute("vector-effect", "non-scaling-stroke");
      svg.append(p);
    }
    const axis = document.createElement("div");
    axis.className = "axis";
    const left = document.createElement("span");
    left.textContent = `-${Math.round(spec.span / 60)} min`;
    const right = document.createElement("span");
    right.textContent = `max ${fmt(top)}`;
    axis.append(left, right);
    el.append(title, svg, axis);
    if (spec.lines.length > 1) {
      const legend = document.createElement("div");
      legend.className = "legend";
      for (const line of spec.lines) {
        const s = document.createElement("span");
        s.style.color = line.color;
        s.textContent = "— " + line.name;
        legend.append(s);
      }
      el.append(legend);
    }
  }

  window.RolloutCharts = { chart };
})();
