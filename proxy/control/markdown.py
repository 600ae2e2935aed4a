"""GitHub-flavoured Markdown pieces for `rollout report --markdown`: escaped text, code
spans and pipe tables.

Text that comes from outside (a reason typed by a person, an error message, a feature
name) always goes through `text()`: a `|` in a reason would otherwise end its table cell,
and `<`, `*`, `[` would turn into HTML, emphasis or links when GitHub renders it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Backslash escapes work before any ASCII punctuation (CommonMark 2.4); these are the
# characters that start inline markup, HTML or a cell boundary wherever they stand.
_SPECIAL = re.compile(r"([\\`*_\[\]<>|~#!])")
_SPACE = re.compile(r"\s+")


def text(value: object) -> str:
    """`value` as literal inline text: specials escaped, line breaks folded into spaces
    (a newline inside a table row ends the row)."""
    return _SPECIAL.sub(r"\\\1", _SPACE.sub(" ", str(value)).strip())


def code(value: object) -> str:
    """`value` as a code span, for commands and paths; literal text when it holds a
    backtick (a span cannot be delimited around one reliably) or a pipe (GFM splits the
    cell at a `|` even inside a span, and a span shows the escaping backslash)."""
    raw = _SPACE.sub(" ", str(value)).strip()
    if not raw or "`" in raw or "|" in raw:
        return text(raw)
    return f"`{raw}`"


def prose(value: object) -> str:
    """Our own sentences (`next_action`, promotion blockers): literal text, except that
    their `backticked` commands stay code spans."""
    parts = _SPACE.sub(" ", str(value)).strip().split("`")
    if len(parts) % 2 == 0:  # an unmatched backtick: no span is meant
        return text(value)
    return "".join(code(p) if i % 2 else _SPECIAL.sub(r"\\\1", p) for i, p in enumerate(parts))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A pipe table, one line per row. Cells are Markdown already (`text()` applied to
    whatever came from outside); an empty cell becomes `-` so columns stay visible."""
    width = len(header)
    lines = [_row(header), "| " + " | ".join("---" for _ in header) + " |"]
    for row in rows:
        if len(row) != width:
            raise ValueError(f"a row of {len(row)} cells in a table of {width} columns")
        lines.append(_row([cell or "-" for cell in row]))
    return lines


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
