"""GitHub-flavoured Markdown read back with markdown-it-py: sections by `##` heading, each
with its paragraphs' plain text and its pipe tables as header cells and rows of cell text.

`parse()` fails on what GitHub would render differently from what was meant: raw HTML
(an unescaped `<` in a reason) and a table line whose count of unescaped `|` differs from
its header's (markdown-it pads or cuts such a row silently, so a reason holding a `|`
would lose its tail without it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from markdown_it import MarkdownIt
from markdown_it.token import Token

_PIPE = re.compile(r"(?<!\\)\|")


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def column(self, name: str) -> list[str]:
        index = self.header.index(name)
        return [row[index] for row in self.rows]

    def row_with(self, name: str, value: str) -> list[str]:
        """The one row whose `name` cell contains `value`."""
        index = self.header.index(name)
        found = [row for row in self.rows if value in row[index]]
        assert len(found) == 1, (name, value, self.rows)
        return found[0]


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)  # plain text, list items included
    tables: list[Table] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.paragraphs)

    @property
    def table(self) -> Table:
        assert len(self.tables) == 1, f"{self.title}: {len(self.tables)} tables"
        return self.tables[0]


@dataclass
class Document:
    title: str
    sections: dict[str, Section]
    order: list[str]


def parser() -> MarkdownIt:
    """CommonMark plus GFM's tables and strikethrough: what GitHub renders."""
    return MarkdownIt("commonmark").enable(["table", "strikethrough"])


def plain(token: Token) -> str:
    """An inline token as the text a reader sees (escapes resolved, marks dropped)."""
    out = []
    for child in token.children or []:
        if child.type in ("html_inline", "html_block"):
            raise AssertionError(f"raw HTML in the Markdown: {child.content!r}")
        if child.type in ("text", "code_inline"):
            out.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            out.append(" ")
    return "".join(out)


def parse(text: str) -> Document:
    tokens = parser().parse(text)
    source = text.splitlines()
    title = ""
    sections: dict[str, Section] = {}
    order: list[str] = []
    current: Section | None = None
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.type in ("html_block", "html_inline"):
            raise AssertionError(f"raw HTML in the Markdown: {token.content!r}")
        if token.type == "heading_open":
            name = plain(tokens[i + 1])
            if token.tag == "h1":
                title = name
            else:
                assert name not in sections, f"section {name!r} twice"
                current = sections[name] = Section(name)
                order.append(name)
            i += 3
            continue
        if token.type == "table_open":
            table, i = _table(tokens, i, source)
            assert current is not None, "a table before any section"
            current.tables.append(table)
            continue
        if token.type == "inline" and current is not None:
            current.paragraphs.append(plain(token))
        i += 1
    return Document(title, sections, order)


def _table(tokens: list[Token], i: int, source: list[str]) -> tuple[Table, int]:
    start, end = tokens[i].map or (0, 0)
    lines = source[start:end]
    widths = {len(_PIPE.findall(line)) for line in lines}
    assert len(widths) == 1, "table lines with different cell counts:\n" + "\n".join(lines)
    header: list[str] = []
    rows: list[list[str]] = []
    row: list[str] | None = None
    in_head = False
    while tokens[i].type != "table_close":
        t = tokens[i]
        if t.type == "thead_open":
            in_head = True
        elif t.type == "thead_close":
            in_head = False
        elif t.type == "tr_open":
            row = []
        elif t.type == "tr_close":
            assert row is not None
            if in_head:
                header = row
            else:
                rows.append(row)
        elif t.type == "inline":
            assert row is not None
            row.append(plain(t))
        i += 1
    return Table(header, rows), i + 1
