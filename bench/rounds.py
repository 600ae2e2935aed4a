"""Rounds in rotating order, ratios paired within a round, and a plain Markdown table:
what `stream.py` and `websocket.py` share (`run.py` has its own, richer, in results.py).

A ratio is taken within each round (the two runs are seconds apart, so a machine that
changes speed between rounds moves both sides) and the median over rounds is reported.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def rotated(configs: Sequence[str], rnd: int) -> list[str]:
    """Round `rnd`'s order: no configuration always goes first."""
    shift = rnd % len(configs) if configs else 0
    return [*configs[shift:], *configs[:shift]]


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def spread_pct(values: Sequence[float]) -> float | None:
    """(max - min) / median, in %: how repeatable the rounds were."""
    mid = median(values)
    return 100 * (max(values) - min(values)) / mid if mid else None


def paired_ratio(
    rounds: Sequence[dict[str, float | None]], name: str, base: str
) -> tuple[float | None, list[float]]:
    """Median over rounds of value[name] / value[base], and every round's ratio."""
    ratios = [
        value / ref
        for by_config in rounds
        if (value := by_config.get(name)) is not None and (ref := by_config.get(base))
    ]
    return median(ratios), ratios


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left column left-aligned, the others right-aligned, padded to the widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])
