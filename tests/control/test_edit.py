"""proxy.edit: one-value edits that leave every other line of the operator's file alone."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.load import parse_config
from proxy.control.edit import set_value, verify_edit
from proxy.errors import EditError

EXAMPLE_PATH = Path(__file__).resolve().parents[2] / "config" / "rollout.yaml"
EXAMPLE = EXAMPLE_PATH.read_text(encoding="utf-8")


def changes(before: str, after: str) -> list[tuple[str, list[str], list[str]]]:
    """The non-equal line blocks between two texts, line endings included."""
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    return [
        (tag, a[i1:i2], b[j1:j2]) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"
    ]


def one_changed_line(before: str, after: str) -> tuple[str, str]:
    """Assert exactly one line was replaced; return (old line, new line)."""
    diff = changes(before, after)
    assert len(diff) == 1, diff
    tag, old, new = diff[0]
    assert tag == "replace"
    assert len(old) == len(new) == 1, diff
    return old[0], new[0]


def inserted_lines(before: str, after: str) -> list[str]:
    """Assert lines were only inserted, in one place; return them."""
    diff = changes(before, after)
    assert len(diff) == 1, diff
    tag, old, new = diff[0]
    assert (tag, old) == ("insert", []), diff
    return new


def without_line(text: str, line: str) -> str:
    assert text.count(line) == 1
    return text.replace(line, "")


# --- changing a value that is there -----------------------------------------------------


def test_rollout_percentage_changes_only_its_line() -> None:
    after = set_value(EXAMPLE, ("rollout", "percentage"), 30)
    old, new = one_changed_line(EXAMPLE, after)
    assert (old, new) == ("  percentage: 10\n", "  percentage: 30\n")
    assert parse_config(after).rollout.percentage == 30


def test_emergency_line_keeps_its_comment_in_the_same_column() -> None:
    after = set_value(EXAMPLE, ("rollout", "emergency"), True)
    old, new = one_changed_line(EXAMPLE, after)
    assert old.startswith("  emergency: false ")
    assert new.startswith("  emergency: true ")
    assert new.index("#") == old.index("#")
    assert new.split("#", 1)[1] == old.split("#", 1)[1]
    assert parse_config(after).rollout.emergency is True


def test_feature_percentage_changes_only_that_feature() -> None:
    after = set_value(EXAMPLE, ("rollout", "features", "anomalyDetection", "percentage"), 12.5)
    old, new = one_changed_line(EXAMPLE, after)
    assert (old, new) == ("      percentage: 10\n", "      percentage: 12.5\n")
    features = {f.name: f.percentage for f in parse_config(after).rollout.features}
    assert features == {"anomalyDetection": 12.5, "limitUpPrediction": 10}


def test_a_string_that_needs_quotes_keeps_the_comment() -> None:
    after = set_value(EXAMPLE, ("rollout", "seed"), "2024")
    old, new = one_changed_line(EXAMPLE, after)
    assert new.startswith("  seed: '2024' ")
    assert new.split("#", 1)[1] == old.split("#", 1)[1]
    assert yaml.safe_load(after)["rollout"]["seed"] == "2024"


def test_a_long_value_still_leaves_a_space_before_the_comment() -> None:
    after = set_value("a: 1    # note\n", ("a",), "a-much-longer-value")
    assert after == "a: a-much-longer-value # note\n"


def test_setting_the_same_value_changes_nothing() -> None:
    assert set_value(EXAMPLE, ("rollout", "percentage"), 10) == EXAMPLE


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10_000))
def test_any_two_decimal_percentage_changes_one_line_and_reads_back(hundredths: int) -> None:
    percentage = hundredths / 100
    after = set_value(EXAMPLE, ("rollout", "percentage"), percentage)
    if after != EXAMPLE:  # 10 and 10.0 are written the same way
        old, new = one_changed_line(EXAMPLE, after)
        assert old == "  percentage: 10\n"
        assert new.startswith("  percentage: ")
        assert "." not in new or not percentage.is_integer()
    assert yaml.safe_load(after)["rollout"]["percentage"] == percentage
    assert parse_config(after).rollout.percentage == percentage


# --- value rendering --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (30.0, "30"),
        (12.5, "12.5"),
        (0.07, "0.07"),
        (1e-05, "1.0e-05"),
        (7, "7"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ("plain", "plain"),
        ("/signals/anomaly", "/signals/anomaly"),
        ("true", "'true'"),
        ("10", "'10'"),
        ("null", "'null'"),
        ("", "''"),
        ("a: b", "'a: b'"),
        ("# not a comment", "'# not a comment'"),
        ("x, y", "'x, y'"),
        ("it's", "it's"),
        ("two\nlines", '"two\\nlines"'),
    ],
)
def test_values_are_written_as_yaml_that_reads_back_the_same(value: object, written: str) -> None:
    after = set_value("a: 1\nb: 2\n", ("a",), value)  # type: ignore[arg-type]
    assert after == f"a: {written}\nb: 2\n"
    parsed = yaml.safe_load(after)["a"]
    assert parsed == value
    assert type(parsed) is type(value) or isinstance(value, float)


def test_quoting_style_of_the_old_value_is_kept() -> None:
    assert set_value("a: 'x'   # c\n", ("a",), "it's") == "a: 'it''s' # c\n"
    assert set_value('a: "x"\n', ("a",), "y") == 'a: "y"\n'


def test_a_value_in_a_flow_mapping_inside_a_block_one() -> None:
    text = "features:\n  a: {paths: [/a], percentage: 10}  # note\n"
    after = set_value(text, ("features", "a", "percentage"), 30)
    assert after == "features:\n  a: {paths: [/a], percentage: 30}  # note\n"


# --- inserting a key that is missing ------------------------------------------------------


def test_missing_emergency_is_added_as_one_line_in_the_rollout_section() -> None:
    before = without_line(EXAMPLE, next(x for x in EXAMPLE.splitlines(True) if "emergency:" in x))
    after = set_value(before, ("rollout", "emergency"), True)
    assert inserted_lines(before, after) == ["  emergency: true\n"]
    # After the section's last entry, before the blank line that ends it.
    lines = after.splitlines()
    assert lines[lines.index("  emergency: true") + 1] == ""
    assert parse_config(after).rollout.emergency is True


def test_a_new_key_goes_after_the_last_entry_not_after_the_next_sections_comment() -> None:
    before = "rollout:\n  percentage: 10\n\n# --- retries on legacy ---\nfallback: {}\n"
    after = set_value(before, ("rollout", "emergency"), True)
    assert inserted_lines(before, after) == ["  emergency: true\n"]
    assert after.startswith("rollout:\n  percentage: 10\n  emergency: true\n\n# --- retries")


def test_feature_without_percentage_gets_one_line_at_its_childrens_indent() -> None:
    before = EXAMPLE.replace(
        "      paths: [/signals/anomaly]\n      percentage: 10\n",
        "      paths: [/signals/anomaly]\n",
    )
    assert before != EXAMPLE
    after = set_value(before, ("rollout", "features", "anomalyDetection", "percentage"), 25)
    assert inserted_lines(before, after) == ["      percentage: 25\n"]
    assert "      paths: [/signals/anomaly]\n      percentage: 25\n" in after
    features = {f.name: f.percentage for f in parse_config(after).rollout.features}
    assert features == {"anomalyDetection": 25, "limitUpPrediction": 10}


def test_missing_rollout_section_is_created_with_two_lines() -> None:
    lines = EXAMPLE.splitlines(keepends=True)
    start = lines.index("rollout:\n")
    end = next(i for i, line in enumerate(lines) if line.startswith("fallback:"))
    before = "".join(lines[:start] + lines[end:])
    assert "rollout" not in yaml.safe_load(before)
    after = set_value(before, ("rollout", "emergency"), True)
    assert inserted_lines(before, after) == ["rollout:\n", "  emergency: true\n"]
    assert after == before + "rollout:\n  emergency: true\n"  # appended at the end
    assert parse_config(after).rollout.emergency is True


def test_missing_feature_is_created_under_features() -> None:
    after = set_value(EXAMPLE, ("rollout", "features", "newFeature", "percentage"), 5)
    assert inserted_lines(EXAMPLE, after) == ["    newFeature:\n", "      percentage: 5\n"]
    assert yaml.safe_load(after)["rollout"]["features"]["newFeature"] == {"percentage": 5}


def test_a_new_section_follows_the_files_indentation_step() -> None:
    text = "listen:\n    port: 8080\n"
    after = set_value(text, ("rollout", "percentage"), 30)
    assert after == "listen:\n    port: 8080\nrollout:\n    percentage: 30\n"


def test_an_empty_section_is_filled_in_block_style() -> None:
    text = "rollout:   # everything commented out\n#  percentage: 10\nfallback: {}\n"
    after = set_value(text, ("rollout", "emergency"), True)
    assert after == (
        "rollout:   # everything commented out\n"
        "  emergency: true\n"
        "#  percentage: 10\n"
        "fallback: {}\n"
    )


def test_a_null_section_becomes_a_flow_mapping_on_its_line() -> None:
    after = set_value("rollout: null  # off\n", ("rollout", "emergency"), True)
    assert after == "rollout: {emergency: true} # off\n"


def test_an_empty_value_is_filled_in() -> None:
    after = set_value("a:   # fill me\nb: 1\n", ("a",), 5)
    assert after == "a: 5 # fill me\nb: 1\n"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("f: {paths: [/b]}  # c\n", "f: {paths: [/b], percentage: 30}  # c\n"),
        ("f: {paths: [/b] }\n", "f: {paths: [/b], percentage: 30 }\n"),
        ("f: {paths: [/b],}\n", "f: {paths: [/b], percentage: 30}\n"),
        ("f: {}\n", "f: {percentage: 30}\n"),
        ("{a: 1}", "{a: 1, f: {percentage: 30}}"),
    ],
)
def test_keys_are_added_inside_flow_mappings(before: str, after: str) -> None:
    assert set_value(before, ("f", "percentage"), 30) == after


def test_missing_feature_inside_a_flow_mapping_is_nested_flow() -> None:
    text = "rollout:\n  features: {}   # none yet\n"
    after = set_value(text, ("rollout", "features", "x", "percentage"), 5)
    assert after == "rollout:\n  features: {x: {percentage: 5}}   # none yet\n"


# --- line endings and the final newline ---------------------------------------------------


def test_crlf_file_keeps_crlf_on_a_change() -> None:
    before = EXAMPLE.replace("\n", "\r\n")
    after = set_value(before, ("rollout", "percentage"), 50)
    assert one_changed_line(before, after) == ("  percentage: 10\r\n", "  percentage: 50\r\n")
    assert after.count("\n") == after.count("\r\n")


def test_crlf_file_gets_crlf_on_an_inserted_line() -> None:
    before = "rollout:\r\n  percentage: 10\r\n\r\nguard: {}\r\n"
    after = set_value(before, ("rollout", "emergency"), True)
    assert after == "rollout:\r\n  percentage: 10\r\n  emergency: true\r\n\r\nguard: {}\r\n"


def test_no_final_newline_stays_that_way() -> None:
    before = "rollout:\n  percentage: 10"
    assert set_value(before, ("rollout", "percentage"), 30) == "rollout:\n  percentage: 30"
    inserted = set_value(before, ("rollout", "emergency"), True)
    assert inserted == "rollout:\n  percentage: 10\n  emergency: true"
    crlf = set_value(before.replace("\n", "\r\n"), ("rollout", "emergency"), True)
    assert crlf == "rollout:\r\n  percentage: 10\r\n  emergency: true"


def test_a_block_scalar_keeps_the_line_break_after_it() -> None:
    after = set_value("a: |\n  text\nb: 1\n", ("a",), "short")
    assert after == "a: short\nb: 1\n"


# --- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (
            "rollout: [\n",
            ("rollout", "percentage"),
            "cannot set rollout.percentage: not valid YAML: while parsing a flow node, "
            "expected the node content, "
            "but found '<stream end>' (line 2, column 1)",
        ),
        (
            "a: 1\n---\nb: 1\n",
            ("a",),
            "cannot set a: not valid YAML: expected a single document in the stream, "
            "but found another document (line 2, column 1)",
        ),
        (
            "- 1\n",
            ("rollout", "percentage"),
            "cannot set rollout.percentage: the document is a list",
        ),
        ("", ("rollout",), "cannot set rollout: the document is empty, not a mapping"),
        ("text\n", ("rollout",), "cannot set rollout: the document is the value 'text'"),
        (
            EXAMPLE,
            ("rollout", "stages", "x"),
            "cannot set rollout.stages.x: rollout.stages is a list, not a mapping",
        ),
        (
            EXAMPLE,
            ("rollout", "percentage", "x"),
            "cannot set rollout.percentage.x: rollout.percentage is the value '10', not a mapping",
        ),
        (
            EXAMPLE,
            ("rollout", "features"),
            "cannot set rollout.features: rollout.features is a mapping, not a single value",
        ),
        ("a: &x 1\nb: *x\n", ("b",), "cannot set b: b is an alias; edit its anchor instead"),
        ("a: &x 1\nb: *x\n", ("a",), "editing a would break the file: the result is not valid"),
        (EXAMPLE, (), "cannot set a value: the key path is empty"),
    ],
)
def test_edits_that_cannot_be_made_safely_are_refused(
    text: str, path: tuple[str, ...], message: str
) -> None:
    with pytest.raises(EditError) as info:
        set_value(text, path, 1)
    assert str(info.value).startswith(message)


def test_verify_edit_accepts_exactly_the_intended_change() -> None:
    verify_edit("a: 1\nb: 2\n", "a: 3\nb: 2\n", ("a",), 3)
    verify_edit("b: 2\n", "b: 2\nr:\n  e: true\n", ("r", "e"), True)


@pytest.mark.parametrize(
    ("after", "message"),
    [
        ("a: 4\nb: 2\n", "editing a went wrong: it reads back as 4, not 3"),
        ("b: 2\n", "editing a went wrong: it reads back as missing"),
        ("a: 3\nb: 5\n", "editing a would also change other values"),
        ("a: 3\nb: [\n", "editing a would break the file"),
        ("a: '3'\nb: 2\n", "editing a went wrong: it reads back as '3'"),
    ],
)
def test_verify_edit_refuses_anything_else(after: str, message: str) -> None:
    with pytest.raises(EditError, match=re.escape(message)):
        verify_edit("a: 1\nb: 2\n", after, ("a",), 3)


def test_verify_edit_tells_true_from_one() -> None:
    with pytest.raises(EditError, match="reads back as 1, not True"):
        verify_edit("a: 0\n", "a: 1\n", ("a",), True)


# --- writing ------------------------------------------------------------------------------
