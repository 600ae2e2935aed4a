"""Comment-preserving edits of the operator's YAML config: one value, one line.

`rollout set/stage/promote/rollback/emergency` change a single value in a file people
annotate by hand, so a load-and-dump round trip (which drops comments, quoting and layout)
is not acceptable. Instead the text is composed into YAML nodes, which carry their source
positions, and only the edited scalar's span is replaced; a missing key gets one new line
(`key: value`) in its parent mapping. Every result is parsed again and compared with the
original before anyone can write it, so a wrong edit fails loudly instead of being saved.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from proxy.errors import EditError

_NULL_TAG = "tag:yaml.org,2002:null"
_STR_TAG = "tag:yaml.org,2002:str"
_MISSING: Any = object()


def set_value(text: str, path: tuple[str, ...], value: bool | int | float | str | None) -> str:
    """Return `text` with `path` set to `value`; every other character is left as it was."""
    dotted = ".".join(path)
    if not path:
        raise EditError("cannot set a value: the key path is empty")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise EditError(f"cannot set {dotted}: not valid YAML: {_yaml_message(exc)}") from None
    if not isinstance(root, yaml.MappingNode):
        raise EditError(f"cannot set {dotted}: the document is {_kind(root)}, not a mapping")
    step = _indent_step(root)
    node, new = root, text
    for depth, key in enumerate(path):
        found = _lookup(node, key)
        if found is None:
            new = _insert_into(text, node, path[depth:], value, step)
            break
        key_node, child = found
        rest, where = path[depth + 1 :], ".".join(path[: depth + 1])
        if child.start_mark.index < key_node.end_mark.index:  # its marks are the anchor's
            raise EditError(f"cannot set {dotted}: {where} is an alias; edit its anchor instead")
        if not rest and isinstance(child, yaml.ScalarNode):
            new = _replace_scalar(text, child, _render(value, child.style))
        elif isinstance(child, yaml.ScalarNode) and child.tag == _NULL_TAG:
            # `section:` left empty (or `null`) counts as an empty mapping.
            if node.flow_style or child.start_mark.index != child.end_mark.index:
                new = _replace_scalar(text, child, "{" + _flow_entry(rest, value) + "}")
            else:
                indent = key_node.start_mark.column + step
                new = _insert_lines(
                    text, child.end_mark.index, _block_lines(rest, value, indent, step)
                )
        elif isinstance(child, yaml.MappingNode) and rest:
            node = child
            continue
        else:
            wanted = "a mapping" if rest else "a single value"
            raise EditError(f"cannot set {dotted}: {where} is {_kind(child)}, not {wanted}")
        break
    verify_edit(text, new, path, value)
    return new


def verify_edit(before: str, after: str, path: tuple[str, ...], value: object) -> None:
    """Raise `EditError` unless `after` reads as `before` with only `path` set to `value`."""
    dotted = ".".join(path)
    old = _load(before, f"cannot verify the edit of {dotted}: the original")
    new = _load(after, f"editing {dotted} would break the file: the result")
    got = _get(new, path)
    if got is _MISSING or not _same(got, value):
        shown = "missing" if got is _MISSING else repr(got)
        raise EditError(f"editing {dotted} went wrong: it reads back as {shown}, not {value!r}")
    if _without(old, path) != _without(new, path):
        raise EditError(f"editing {dotted} would also change other values; nothing was written")


def _lookup(mapping: yaml.MappingNode, key: str) -> tuple[yaml.Node, yaml.Node] | None:
    """The last entry for `key`, as that is the one a YAML loader keeps."""
    found = [(k, v) for k, v in mapping.value if k.tag == _STR_TAG and k.value == key]
    return found[-1] if found else None


def _replace_scalar(text: str, node: yaml.ScalarNode, rendered: str) -> str:
    start = node.start_mark.index
    # Block scalars (`|`, `>`) own their trailing line breaks; those must stay.
    end = start + len(text[start : node.end_mark.index].rstrip())
    if start == end:  # `key:` with nothing after it, or `{key}` in a flow mapping
        rendered = (" " if text[start - 1 : start] == ":" else ": ") + rendered
    gap = 0
    while text[end + gap : end + gap + 1] == " ":
        gap += 1
    if text[end + gap : end + gap + 1] == "#":  # keep an aligned comment where it was
        rendered += " " * max(1, gap + end - start - len(rendered))
        end += gap
    return text[:start] + rendered + text[end:]


def _insert_into(
    text: str, mapping: yaml.MappingNode, keys: tuple[str, ...], value: object, step: int
) -> str:
    if mapping.flow_style:
        close = mapping.end_mark.index - 1  # the `}`
        head = text[:close].rstrip()
        sep = "" if head.endswith("{") else " " if head.endswith(",") else ", "
        return head + sep + _flow_entry(keys, value) + text[len(head) :]
    indent = mapping.value[0][0].start_mark.column
    return _insert_lines(text, _content_end(mapping), _block_lines(keys, value, indent, step))


def _insert_lines(text: str, after: int, lines: list[str]) -> str:
    """Insert whole lines after the line holding the last non-blank character before `after`."""
    newline = "\r\n" if "\r\n" in text else "\n"
    line_end = text.find("\n", len(text[:after].rstrip()))
    block = newline.join(lines)
    if line_end == -1:  # the last line, without a final newline: keep it without one
        return text + newline + block
    return text[: line_end + 1] + block + newline + text[line_end + 1 :]


def _block_lines(keys: tuple[str, ...], value: object, indent: int, step: int) -> list[str]:
    lines = [" " * (indent + i * step) + _render(key) + ":" for i, key in enumerate(keys)]
    lines[-1] += " " + _render(value)
    return lines


def _flow_entry(keys: tuple[str, ...], value: object) -> str:
    """`a: {b: value}` for keys (a, b)."""
    return ": {".join(_render(key) for key in keys) + f": {_render(value)}" + "}" * (len(keys) - 1)


def _content_end(node: yaml.Node) -> int:
    """Where a block collection's last content ends (its end mark runs on past comments)."""
    if isinstance(node, yaml.MappingNode) and not node.flow_style and node.value:
        key, value = node.value[-1]
        # An alias's node carries the marks of its anchor, possibly far above.
        return max(int(key.end_mark.index), _content_end(value))
    if isinstance(node, yaml.SequenceNode) and not node.flow_style and node.value:
        return _content_end(node.value[-1])
    return int(node.end_mark.index)


def _indent_step(root: yaml.MappingNode) -> int:
    """The file's own indentation step, for sections that have to be created."""
    for key, value in root.value:
        if isinstance(value, yaml.MappingNode) and not value.flow_style and value.value:
            return max(1, int(value.value[0][0].start_mark.column - key.start_mark.column))
    return 2


def _render(value: object, style: str | None = None) -> str:
    """A value as YAML that reads back as exactly that value, quoted only when needed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))  # 30, not 30.0: it is how people write percentages
        text = repr(value)  # YAML 1.1 wants a dot in a float: 1e-05 would be a string
        return text if "." in text else text.replace("e", ".0e")
    if not isinstance(value, str):
        raise EditError(f"cannot write a {type(value).__name__} value: {value!r}")
    if style == "'" and "\n" not in value:
        return "'" + value.replace("'", "''") + "'"
    if style != '"':
        # Dumped inside a flow list, so the result is also safe inside `{...}`.
        dumped = yaml.safe_dump([value], default_flow_style=True, width=2**30, allow_unicode=True)
        if "\n" not in dumped.strip():
            return dumped.strip()[1:-1]
    return json.dumps(value, ensure_ascii=False)  # JSON strings are double-quoted YAML


def _load(text: str, context: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise EditError(f"{context} is not valid YAML: {_yaml_message(exc)}") from None


def _get(tree: object, path: tuple[str, ...]) -> object:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return _MISSING
        tree = tree[key]
    return tree


def _same(got: object, wanted: object) -> bool:
    if isinstance(got, bool) != isinstance(wanted, bool):
        return False  # True == 1 in Python, not in a config file
    return bool(got == wanted)


def _without(tree: object, path: tuple[str, ...]) -> object:
    """`tree` minus `path`, dropping mappings on the path left empty (the edit may add them)."""
    if not path or not isinstance(tree, dict) or path[0] not in tree:
        return tree
    out = dict(tree)
    child = _without(out[path[0]], path[1:]) if len(path) > 1 else None
    if child is None or child == {}:
        del out[path[0]]
    else:
        out[path[0]] = child
    return out


def _kind(node: yaml.Node | None) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "empty" if node is None or node.tag == _NULL_TAG else f"the value {node.value!r}"


def _yaml_message(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    what = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    return (", ".join(part for part in what if part) or str(exc)) + where
