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

CONFIGS = ("direct", "nginx", "minimal", "floor", "rollout", "rollout-aio")
# The configurations under test, each compared with every reference that ran beside it.
CANDIDATES = ("rollout", "rollout-aio")
REFERENCES = ("nginx", "minimal", "floor")


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


def paired_ratios(runs: list[Run], name: str, base: str) -> dict[str, float | None]:
    """Median over rounds of `name`/`base` within each round.

    Runs of one round are seconds apart, so a machine that speeds up or slows down between
    rounds (a shared VM does) moves both sides of each ratio together.
    """
    by_round: dict[int, dict[str, Run]] = {}
    for run in runs:
        by_round.setdefault(run.round, {})[run.config] = run
    out: dict[str, float | None] = {}
    for key in RATIO_KEYS:
        values = []
        for pair in by_round.values():
            if name in pair and base in pair:
                a, b = getattr(pair[name], key), getattr(pair[base], key)
                if a is not None and b:
                    values.append(a / b)
        out[key] = statistics.median(values) if values else None
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
            for name in CANDIDATES
            for base in REFERENCES
            if name in summary and base in summary
        }
        out.append({"connections": connections, "summary": summary, "ratios": ratios})
    return out


def progress_line(run: Run, rounds: int) -> str:
    return (
        f"  c={run.connections:<4} round {run.round + 1}/{rounds} {run.config:<8}"
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
                "",
                _ratio(ratio["p50_us"]),
                _ratio(ratio["p99_us"]),
                _ratio(ratio["max_us"]),
                "",
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


def report(results: dict[str, Any]) -> str:
    out = []
    for level in results["levels"]:
        out.append(table(level["connections"], level["summary"], level["ratios"]))
        out.append(conditions(level["summary"]))
        trips = level["summary"].get("rollout", {}).get("guard_trips")
        if trips:
            out.append(f"  rollout guard tripped during {trips} run(s) (reset after each)")
        out.append("")
    if results.get("rollout_counters"):
        out.append("rollout /metrics after the benchmark (routing, and every series but code=200):")
        out += [f"  {k} {v:g}" for k, v in results["rollout_counters"].items()]
    if results.get("log_problems"):
        out.append("warnings, errors and exceptions in server logs, whole benchmark:")
        for name, lines in results["log_problems"].items():
            out += [f"  {name}: {line}" for line in lines]
    out += [f"note: {n}" for n in results.get("notes", [])]
    return "\n".join(out)
