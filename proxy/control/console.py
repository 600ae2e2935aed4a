"""Terminal output for the CLI: coloured levels on a TTY, plain when piped or NO_COLOR."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

_COLOURS = {
    "INFO": "\033[36m",
    "SUCCESS": "\033[32m",
    "WARNING": "\033[33m",
    "ERROR": "\033[31m",
    "BOLD": "\033[1m",
    "DIM": "\033[2m",
}
_RESET = "\033[0m"

# How every command ends (SPEC 10).
EXIT_OK = 0
EXIT_FAILED = 1  # the check or the criteria failed
EXIT_USAGE = 2  # usage or configuration error


def use_colour(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return stream.isatty()


class Console:
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.colour = use_colour(self.out)

    def paint(self, text: str, style: str) -> str:
        return f"{_COLOURS[style]}{text}{_RESET}" if self.colour else text

    def line(self, text: str = "") -> None:
        print(text, file=self.out)

    def info(self, text: str) -> None:
        self.line(f"{self.paint('INFO', 'INFO')}     {text}")

    def success(self, text: str) -> None:
        self.line(f"{self.paint('SUCCESS', 'SUCCESS')}  {text}")

    def warning(self, text: str) -> None:
        self.line(f"{self.paint('WARNING', 'WARNING')}  {text}")

    def error(self, text: str) -> None:
        colour = use_colour(self.err)
        label = f"{_COLOURS['ERROR']}ERROR{_RESET}" if colour else "ERROR"
        print(f"{label}    {text}", file=self.err)

    def heading(self, text: str) -> None:
        self.line(self.paint(text, "BOLD"))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        """A plain aligned table; status words are coloured after alignment."""
        widths = [len(h) for h in header]
        for row in rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
        self.line(
            "  ".join(self.paint(h.ljust(w), "BOLD") for h, w in zip(header, widths, strict=True))
        )
        for row in rows:
            cells = [self._status(cell.ljust(w), cell) for cell, w in zip(row, widths, strict=True)]
            self.line("  ".join(cells).rstrip())

    def _status(self, padded: str, cell: str) -> str:
        style = {
            "pass": "SUCCESS",
            "fail": "ERROR",
            "not enough data": "WARNING",
            "ok": "SUCCESS",
            "FAILED": "ERROR",
        }.get(cell)
        return self.paint(padded, style) if style else padded
