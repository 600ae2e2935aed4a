"""What a benchmark run produced: one record per measured run, summaries, the printed table.

Summaries take the median over rounds (max for max latency, peak RSS and disturbance;
sums for errors), so one disturbed round moves them little.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONFIGS = ("direct", "nginx", "minimal", "floor", "rollout", "rollout-base", "rollout-aio")
# The configurations under test, each compared with every reference that ran beside it.
CANDIDATES = ("rollout", "rollout-aio")
REFERENCES = ("nginx", "minimal", "floor")
# Two rollout builds side by side (`--baseline-rev`): is the working tree a regression?
BASELINE_PAIR = ("rollout", "rollout-base")
ROLLOUT_TARGETS = ("rollout", "rollout-base", "rollout-aio")


@dataclass
class Run:
    """One measured wrk run against one configuration, with the proxy's resource figures."""

    config: str
    connections: int
    round: int
    rps: float
    requests: int
    p50_us: int
    p90_us: int
    p99_us: int
    p999_us: int
    max_us: int
    socket_errors: int
    errors: dict[str, int]
    non_2xx_3xx: int
    cpu_us_per_req: float | None  # proxy utime + stime / requests
    sys_share_pct: float | None  # of which kernel (stime)
    proxy_core_pct: float | None  # proxy CPU time / wall time
    others_core_pct: float  # other processes on the proxy core (another load = a bad run)
    load_others_pct: float  # processes other than wrk and the upstream on the load core
    irq_core_pct: float  # irq + softirq on the proxy core (loopback packet processing)
    steal_core_pct: float  # hypervisor steal on the proxy core
    load_core_pct: float  # the wrk + upstream core's busy time
    peak_rss_mib: float | None
    calib_ms: float  # fixed pure-Python work on the proxy core just before the run
    guard_tripped: bool | None = None
    attempts: int = 1

    @property
    def disturbance_pct(self) -> float:
        """CPU share other processes took from the cores this run depends on."""
        if self.proxy_core_pct is None:  # direct: only the load core matters
            return self.load_others_pct
        return max(self.others_core_pct, self.load_others_pct)


def run_record(run: Run) -> dict[str, Any]:
    return {**asdict(run), "disturbance_pct": run.disturbance_pct}


_LOG_MARKERS = ("WARNING", "ERROR", "CRITICAL", "[error]", "[crit]", "[alert]", "[emerg]")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")
_TIMESTAMP = re.compile(r"^\d{4}[-/]\d\d[-/]\d\d \d\d:\d\d:\d\d(,\d+)? ")


def log_problems(tmp: Path) -> dict[str, list[str]]:
    """Warnings, errors and exceptions the servers logged, counted per distinct message."""
    found: dict[str, list[str]] = {}
    for path in sorted(tmp.glob("*.log")) + sorted((tmp / "logs").glob("*.error.log")):
        counts: Counter[str] = Counter()
        for line in path.read_text(errors="replace").splitlines():
            if any(m in line for m in _LOG_MARKERS) or _EXCEPTION_LINE.match(line):
                message = _TIMESTAMP.sub("", line)
                counts[re.sub(r"\d+#\d+: ", "", message)[:200]] += 1
        if counts:
            found[path.name] = [f"{n:>6} x {message}" for message, n in counts.most_common(8)]
    return found


def summarise(runs: list[Run]) -> dict[str, Any]:
    """Median over rounds; max for max latency, RSS and disturbances; sums for errors."""

    def med(values: Sequence[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    rps = [r.rps for r in runs]
    rss = [r.peak_rss_mib for r in runs if r.peak_rss_mib is not None]
    middle = statistics.median(rps)
    return {
        "rounds": len(runs),
        "rps": middle,
        "rps_spread_pct": 100 * (max(rps) - min(rps)) / middle if middle else 0.0,
        "p50_us": med([r.p50_us for r in runs]),
        "p99_us": med([r.p99_us for r in runs]),
        "max_us": max(r.max_us for r in runs),
        "cpu_us_per_req": med([r.cpu_us_per_req for r in runs]),
        "sys_share_pct": med([r.sys_share_pct for r in runs]),
        "proxy_core_pct": med([r.proxy_core_pct for r in runs]),
        "others_core_pct": max(r.others_core_pct for r in runs),
        "irq_core_pct": med([r.irq_core_pct for r in runs]),
        "steal_core_pct": max(r.steal_core_pct for r in runs),
        "load_core_pct": med([r.load_core_pct for r in runs]),
        "peak_rss_mib": max(rss) if rss else None,
        "socket_errors": sum(r.socket_errors for r in runs),
        "non_2xx_3xx": sum(r.non_2xx_3xx for r in runs),
        "guard_trips": sum(1 for r in runs if r.guard_tripped),
        "load_others_pct": max(r.load_others_pct for r in runs),
        "disturbance_pct": max(r.disturbance_pct for r in runs),
        "attempts": sum(r.attempts for r in runs),
        "calib_ms": [min(r.calib_ms for r in runs), max(r.calib_ms for r in runs)],
    }


RATIO_KEYS = ("rps", "p50_us", "p99_us", "max_us", "cpu_us_per_req", "peak_rss_mib")
# What `--baseline-rev` compares, per round: the build under test over the baseline.
COMPARISON_KEYS = ("rps", "cpu_us_per_req", "p50_us", "p99_us", "added_p50_us")


def _by_round(runs: list[Run]) -> list[dict[str, Run]]:
    rounds: dict[int, dict[str, Run]] = {}
    for run in runs:
        rounds.setdefault(run.round, {})[run.config] = run
    return [rounds[r] for r in sorted(rounds)]


def _value(pair: dict[str, Run], name: str, key: str) -> float | None:
    """A run's figure; `added_p50_us` is its p50 minus `direct`'s in the same round."""
    if key != "added_p50_us":
        value: float | None = getattr(pair[name], key)
        return value
    if "direct" not in pair:
        return None
    return pair[name].p50_us - pair["direct"].p50_us


def per_round_ratios(runs: list[Run], name: str, base: str, key: str) -> list[float]:
    """`name`/`base` within each round where both ran (and the base is not 0)."""
    values = []
    for pair in _by_round(runs):
        if name in pair and base in pair:
            a, b = _value(pair, name, key), _value(pair, base, key)
            if a is not None and b:
                values.append(a / b)
    return values


def paired_ratios(runs: list[Run], name: str, base: str) -> dict[str, float | None]:
    """Median over rounds of `name`/`base` within each round.

    Runs of one round are seconds apart, so a machine that speeds up or slows down between
    rounds (a shared VM does) moves both sides of each ratio together. `rps_spread_pct` is
    (max - min) / median of the per-round req/s ratios: how repeatable the ratio itself is.
    """
    out: dict[str, float | None] = {}
    for key in (*RATIO_KEYS, "added_p50_us"):
        values = per_round_ratios(runs, name, base, key)
        out[key] = statistics.median(values) if values else None
    rps = per_round_ratios(runs, name, base, "rps")
    middle = statistics.median(rps) if rps else 0.0
    out["rps_spread_pct"] = 100 * (max(rps) - min(rps)) / middle if middle else None
    return out


def _spread(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "per_round": values,
    }


def comparison(runs: list[Run], name: str, base: str) -> dict[str, Any]:
    """`name` against `base`, per round: each ratio's median, min, max and every round.

    The min-max is the noise to read a median against; `p50_delta_us` (p50 difference in
    µs) is the added p50's difference too, and needs no `direct` run.
    """
    out: dict[str, Any] = {
        "rounds": sum(1 for pair in _by_round(runs) if name in pair and base in pair)
    }
    for key in COMPARISON_KEYS:
        out[key] = _spread(per_round_ratios(runs, name, base, key))
    deltas = [
        float(pair[name].p50_us - pair[base].p50_us)
        for pair in _by_round(runs)
        if name in pair and base in pair
    ]
    out["p50_delta_us"] = _spread(deltas)
    return out


def summarise_levels(runs: list[Run], levels: Sequence[int]) -> list[dict[str, Any]]:
    """Per connection level: each configuration's summary and rollout's paired ratios."""
    out = []
    for connections in levels:
        level = [r for r in runs if r.connections == connections]
        summary = {
            name: summarise(chosen)
            for name in CONFIGS
            if (chosen := [r for r in level if r.config == name])
        }
        if not summary:
            continue
        ratios = {
            f"{name}/{base}": paired_ratios(level, name, base)
            for name, base in [BASELINE_PAIR]
            + [(name, base) for name in CANDIDATES for base in REFERENCES]
            if name in summary and base in summary
        }
        name, base = BASELINE_PAIR
        compared = {}
        if name in summary and base in summary:
            compared[f"{name}/{base}"] = comparison(level, name, base)
        out.append(
            {
                "connections": connections,
                "summary": summary,
                "ratios": ratios,
                "comparison": compared,
            }
        )
    return out


def progress_line(run: Run, rounds: int) -> str:
    return (
        f"  c={run.connections:<4} round {run.round + 1}/{rounds} {run.config:<12}"
        f" {run.rps:>9,.0f} req/s  p50 {run.p50_us:>7,} µs  p99 {run.p99_us:>8,} µs"
        f"  CPU {_fmt(run.cpu_us_per_req, 1)} µs/req  errors {run.socket_errors}"
        f"  non-2xx {run.non_2xx_3xx}  disturbance {run.disturbance_pct:.0f}%"
    )


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def table(
    connections: int,
    summary: dict[str, dict[str, Any]],
    ratios: dict[str, dict[str, float | None]],
) -> str:
    direct_p50 = summary.get("direct", {}).get("p50_us")
    head = (
        "config",
        "req/s",
        "±%",
        "p50 µs",
        "p99 µs",
        "max ms",
        "+p50 µs",
        "CPU µs/req",
        "proxy core%",
        "RSS MiB",
        "sock err",
        "non-2xx",
    )
    rows: list[tuple[str, ...]] = []
    for name in CONFIGS:
        s = summary.get(name)
        if s is None:
            continue
        added = s["p50_us"] - direct_p50 if direct_p50 is not None and name != "direct" else None
        rows.append(
            (
                name,
                _fmt(s["rps"]),
                _fmt(s["rps_spread_pct"], 1),
                _fmt(s["p50_us"]),
                _fmt(s["p99_us"]),
                _fmt(s["max_us"] / 1000, 1),
                _fmt(added),
                _fmt(s["cpu_us_per_req"], 1),
                _fmt(s["proxy_core_pct"]),
                _fmt(s["peak_rss_mib"], 1),
                str(s["socket_errors"]),
                str(s["non_2xx_3xx"]),
            )
        )
    for label, ratio in ratios.items():
        rows.append(
            (
                label,
                _ratio(ratio["rps"]),
                _fmt(ratio.get("rps_spread_pct"), 1),
                _ratio(ratio["p50_us"]),
                _ratio(ratio["p99_us"]),
                _ratio(ratio["max_us"]),
                _ratio(ratio.get("added_p50_us")),
                _ratio(ratio["cpu_us_per_req"]),
                "",
                _ratio(ratio["peak_rss_mib"]),
                "",
                "",
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [
        f"connections={connections}",
        "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def conditions(summary: dict[str, dict[str, Any]]) -> str:
    """How clean the runs were: wrk's core saturated or another load skews the table."""
    parts = [
        f"{name} {s['load_core_pct']:.0f}%/{s['irq_core_pct']:.0f}%/"
        f"{s['disturbance_pct']:.0f}% ({s['attempts'] - s['rounds']} repeated)"
        for name, s in summary.items()
    ]
    calib = [ms for s in summary.values() for ms in s["calib_ms"]]
    return (
        "  load core busy / irq+softirq on proxy core / worst disturbance by other processes: "
        + ", ".join(parts)
        + f"\n  machine speed, calibration loop on the proxy core: {min(calib):.1f}"
        + f"-{max(calib):.1f} ms (lower is faster)"
    )


_COMPARISON_LABELS = {
    "rps": "req/s",
    "cpu_us_per_req": "CPU/req",
    "p50_us": "p50",
    "p99_us": "p99",
    "added_p50_us": "+p50",
}


def comparison_lines(label: str, compared: dict[str, Any]) -> list[str]:
    """The per-round ratios of two builds: median and min-max, the noise to read it by."""
    rounds = compared["rounds"]

    def show(value: dict[str, Any], fmt: str, unit: str, sep: str = "-") -> str:
        middle = format(value["median"], fmt) + unit
        if rounds < 2:
            return middle
        return f"{middle} ({format(value['min'], fmt)}{sep}{format(value['max'], fmt)}{unit})"

    parts = []
    for key, name in _COMPARISON_LABELS.items():
        value = compared.get(key)
        if value is not None:
            parts.append(f"{name} {show(value, '.3f', 'x')}")
    delta = compared.get("p50_delta_us")
    if delta is not None:
        parts.append(f"p50 difference {show(delta, '+,.0f', ' µs', ' to ')}")
    if rounds > 1:
        head = f"  {label}, median of {rounds} per-round ratios (min-max):"
    else:
        head = f"  {label}, {rounds} round (no spread to judge noise by: use --rounds 3+):"
    lines = [head, "    " + ", ".join(parts)]
    if compared.get("added_p50_us") is None:
        lines.append("    (+p50, p50 minus direct's, needs `direct` in the run)")
    return lines


# Issue 19's table: rollout against the floor proxy and nginx, each figure from this run.
# (figure, connection level, how it is read from that level, goal, whether it is met)
_TARGETS: list[tuple[str, str, Any, str, Any]] = [
    (
        "req/s, rollout / floor",
        "main",
        lambda lv: lv["ratios"].get("rollout/floor", {}).get("rps"),
        ">= 0.7x",
        lambda v: v >= 0.7,
    ),
    (
        "CPU µs per request, rollout / floor",
        "main",
        lambda lv: lv["ratios"].get("rollout/floor", {}).get("cpu_us_per_req"),
        "<= 1.5x",
        lambda v: v <= 1.5,
    ),
    (
        "req/s, rollout / nginx",
        "main",
        lambda lv: lv["ratios"].get("rollout/nginx", {}).get("rps"),
        ">= 0.5x",
        lambda v: v >= 0.5,
    ),
    (
        "added p50, rollout / floor",
        1,
        lambda lv: lv["ratios"].get("rollout/floor", {}).get("added_p50_us"),
        "<= 1.5x",
        lambda v: v <= 1.5,
    ),
    (
        "max latency ms (errors)",
        500,
        lambda lv: _max_and_errors(lv["summary"].get("rollout")),
        "< 500 ms, 0",
        lambda v: v[0] < 500 and v[1] == 0,
    ),
    (
        "p99 / p50",
        "main",
        lambda lv: _tail(lv["summary"].get("rollout")),
        "<= 2",
        lambda v: v <= 2,
    ),
]


def _max_and_errors(summary: dict[str, Any] | None) -> tuple[float, int] | None:
    if not summary:
        return None
    return summary["max_us"] / 1000, summary["socket_errors"] + summary["non_2xx_3xx"]


def _tail(summary: dict[str, Any] | None) -> float | None:
    if not summary or not summary.get("p50_us"):
        return None
    return float(summary["p99_us"]) / summary["p50_us"]


def targets(results: dict[str, Any]) -> list[str]:
    """Issue 19's goals, each measured in this run (a level not run: `not measured`)."""
    levels = {level["connections"]: level for level in results["levels"]}
    main = results["settings"]["connections"]
    rows = ["| figure | connections | measured | goal | |", "|---|---|---|---|---|"]
    for figure, where, read, goal, met in _TARGETS:
        connections = main if where == "main" else where
        level = levels.get(connections)
        value = read(level) if level is not None else None
        if value is None:
            rows.append(f"| {figure} | {connections} | not measured | {goal} | |")
            continue
        shown = (
            f"{value[0]:.1f} ms ({value[1]})"
            if isinstance(value, tuple)
            else f"{value:.2f}" + ("x" if "/" in figure and "p99" not in figure else "")
        )
        verdict = "met" if met(value) else "not met"
        rows.append(f"| {figure} | {connections} | {shown} | {goal} | {verdict} |")
    return rows


def report(results: dict[str, Any]) -> str:
    out = []
    for level in results["levels"]:
        out.append(table(level["connections"], level["summary"], level["ratios"]))
        out.append(conditions(level["summary"]))
        for label, compared in level.get("comparison", {}).items():
            out += comparison_lines(label, compared)
        for name in ROLLOUT_TARGETS:
            trips = level["summary"].get(name, {}).get("guard_trips")
            if trips:
                out.append(f"  {name} guard tripped during {trips} run(s) (reset after each)")
        out.append("")
    for key, name in (("rollout_counters", "rollout"), ("rollout_base_counters", "rollout-base")):
        if results.get(key):
            out.append(
                f"{name} /metrics after the benchmark (routing, and every series but code=200):"
            )
            out += [f"  {k} {v:g}" for k, v in results[key].items()]
    if results.get("log_problems"):
        out.append("warnings, errors and exceptions in server logs, whole benchmark:")
        for name, lines in results["log_problems"].items():
            out += [f"  {name}: {line}" for line in lines]
    out += [f"note: {n}" for n in results.get("notes", [])]
    if any(level["ratios"].get("rollout/floor") for level in results["levels"]):
        out += ["", "issue 19 targets (medians of per-round ratios, this run):", *targets(results)]
    return "\n".join(out)
