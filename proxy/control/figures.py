"""Signal vs legacy figures for `rollout report`, from the admin listener or Prometheus.

From the admin listener the figures are this replica's sliding window (attempts, errors,
p50/p95/p99 from request sent to response headers) plus fallbacks since start. From
Prometheus they are summed over every replica for `--window`, from the SPEC 9 metrics:
attempts of signal are the requests it served plus the ones that fell back.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.control.client import fetch_metrics, fetch_status
from proxy.control.prometheus import Row, query, value_of
from proxy.rollout.compare import match_rate
from proxy.rollout.stages import Figures
from proxy.status import StatusDocument, WindowFigures

SIDES = ("signal", "legacy")

__all__ = ["match_rate"]  # moved down to proxy.rollout.compare: the status page uses it too


@dataclass(frozen=True, slots=True)
class SideFigures:
    requests: int
    errors: int
    error_rate: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    fallbacks: int

    def as_dict(self) -> SideFiguresDocument:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 6),
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "fallbacks": self.fallbacks,
        }


class SideFiguresDocument(WindowFigures):
    fallbacks: int


Shadow = dict[str, dict[str, int]]  # feature -> result -> count


def from_admin(
    base: str, token: str | None
) -> tuple[dict[str, SideFigures], StatusDocument, Shadow]:
    """Per-side figures from `/-/status` (window) and `/metrics` (fallbacks and shadow
    comparisons since start)."""
    status = fetch_status(base, token)
    metrics_text = fetch_metrics(base, token)
    fallbacks = _fallbacks_from_metrics(metrics_text)
    figures = {}
    for side in SIDES:
        w = status["upstreams"][side]
        figures[side] = SideFigures(
            requests=w["requests"],
            errors=w["errors"],
            error_rate=w["error_rate"],
            p50_ms=w["p50_ms"],
            p95_ms=w["p95_ms"],
            p99_ms=w["p99_ms"],
            fallbacks=fallbacks if side == "signal" else 0,
        )
    return figures, status, shadow_counts(metrics_text)


def _fallbacks_from_metrics(text: str) -> int:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "rollout_fallbacks":
            total += sum(s.value for s in family.samples if s.name == "rollout_fallbacks_total")
    return int(total)


def shadow_counts(text: str) -> dict[str, dict[str, int]]:
    """`rollout_shadow_requests_total` from a /metrics text: feature -> result -> count."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "rollout_shadow_requests":
            continue
        for sample in family.samples:
            if sample.name == "rollout_shadow_requests_total":
                feature = out.setdefault(sample.labels["feature"], {})
                feature[sample.labels["result"]] = int(sample.value)
    return out


# --- Prometheus -------------------------------------------------------------------------


def _delta(metric: str, window: str, by: str = "upstream") -> str:
    """Exact count over the window: the summed counter now minus `window` ago.

    `increase()` extrapolates to the window's edges and cannot see a series' first
    increment, so counts of a few hundred requests come out a few percent off; the plain
    difference is exact. A series that did not exist `window` ago counts from 0.
    """
    grouping = f" by ({by})" if by else ""
    now = f"sum{grouping} ({metric})"
    before = f"sum{grouping} ({metric} offset {window})"
    return f"{now} - ({before} or {now} * 0)"


def promql_queries(window: str) -> dict[str, str]:
    """The PromQL behind `report --prometheus`, by figure; `upstream` label on each."""
    w = window
    return {
        "served": _delta("rollout_requests_total", w),
        "errors": _delta("rollout_upstream_errors_total", w),
        "fallbacks": _delta("rollout_fallbacks_total", w, by=""),
        "shadow": _delta("rollout_shadow_requests_total", w, by="feature, result"),
        **{
            f"p{q}": (
                f"histogram_quantile(0.{q}, sum by (upstream, le) "
                f"(rate(rollout_request_duration_seconds_bucket[{w}])))"
            )
            for q in ("50", "95", "99")
        },
    }


def _by_upstream(rows: list[Row]) -> dict[str, float]:
    out: dict[str, float] = {}
    for row in rows:
        value = value_of(row)
        if value == value:  # NaN when there was no traffic
            out[row["metric"].get("upstream", "")] = value
    return out


def from_prometheus(prometheus: str, window: str) -> dict[str, SideFigures]:
    queries = promql_queries(window)
    served = _by_upstream(query(prometheus, queries["served"]))
    errors = _by_upstream(query(prometheus, queries["errors"]))
    fallback_rows = query(prometheus, queries["fallbacks"])
    fallbacks = round(float(fallback_rows[0]["value"][1])) if fallback_rows else 0
    quantiles = {q: _by_upstream(query(prometheus, queries[q])) for q in ("p50", "p95", "p99")}
    figures = {}
    for side in SIDES:
        # A fallback is a signal attempt that legacy served.
        attempts = round(served.get(side, 0.0) + (fallbacks if side == "signal" else 0))
        errs = round(errors.get(side, 0.0))

        def ms(q: str, side: str = side) -> float | None:
            value = quantiles[q].get(side)
            return None if value is None else round(value * 1000, 2)

        figures[side] = SideFigures(
            requests=attempts,
            errors=errs,
            error_rate=errs / attempts if attempts else 0.0,
            p50_ms=ms("p50"),
            p95_ms=ms("p95"),
            p99_ms=ms("p99"),
            fallbacks=fallbacks if side == "signal" else 0,
        )
    return figures


def shadow_from_prometheus(prometheus: str, window: str) -> Shadow:
    out: Shadow = {}
    for row in query(prometheus, promql_queries(window)["shadow"]):
        labels = row["metric"]
        if "feature" in labels and "result" in labels:
            value = round(float(row["value"][1]))
            out.setdefault(labels["feature"], {})[labels["result"]] = value
    return out


def signal_figures(status: StatusDocument) -> Figures:
    """Signal's window from `/-/status`: what promotion is judged on."""
    w = status["upstreams"]["signal"]
    return Figures(w["requests"], w["error_rate"], w["p95_ms"])
