"""``read_payload`` gives exactly what ``json.loads`` gives, for any text: the same values of the
same types, or the same error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clerk_sync.core.json_reading import MAX_DEPTH, PayloadTooDeepError, read_payload

BIG = 2**64

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-4 * BIG, max_value=4 * BIG)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
"""JSON values, with what orjson reads differently: integers beyond 64 bits, NaN, infinity,
lone surrogates."""


def same_reading(text: str) -> None:
    """``read_payload`` reads ``text`` as ``json.loads`` does (1 and 1.0 differ), or fails alike."""
    try:
        expected: Any = json.loads(text)
    except ValueError as error:
        with pytest.raises(type(error)):
            read_payload(text)
        return
    assert repr(read_payload(text)) == repr(expected)


@given(json_values, st.booleans())
def test_any_json_value_reads_as_json_reads_it(value: Any, ascii_only: bool) -> None:
    same_reading(json.dumps(value, ensure_ascii=ascii_only))


@given(st.text(alphabet='{}[]",:0123456789.eE-+ tnulfrsa\\u', max_size=40))
def test_any_text_reads_or_fails_as_json_does(text: str) -> None:
    same_reading(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"n": 123456789012345678901234567890}',
        '{"n": -9223372036854775809}',
        "[NaN, Infinity]",
        '"\\ud800"',
        '{"a": 1, "a": 2.5}',
    ],
    ids=["big-int", "big-negative", "nan", "surrogate", "dup-key"],
)
def test_texts_orjson_reads_differently(text: str) -> None:
    same_reading(text)


# --- the depth limit: the same in every process, whatever its stack ---------------------------


def nested_text(depth: int, leaf: str) -> str:
    return "[" * depth + leaf + "]" * depth


def at_stack_depth(frames: int, text: str) -> Any:
    """``read_payload(text)`` called ``frames`` Python frames deep (a Celery pool process reads
    payloads far deeper in its stack than a test does)."""
    if frames:
        return at_stack_depth(frames - 1, text)
    return read_payload(text)


@pytest.mark.parametrize("leaf", ["1.5", "1", "NaN", '"\\ud800"', "123456789012345678901234567890"])
@pytest.mark.parametrize("frames", [0, 300, 700])
def test_nested_at_the_limit_reads_as_json_does_at_any_stack_depth(leaf: str, frames: int) -> None:
    text = nested_text(MAX_DEPTH, leaf)
    assert repr(at_stack_depth(frames, text)) == repr(json.loads(text))


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 990, 1000, 1030, 100_000])
@pytest.mark.parametrize("leaf", ["1.5", "1", "NaN"])
@pytest.mark.parametrize("frames", [0, 300, 700])
def test_nested_deeper_is_refused_alike_never_a_recursion_error(
    depth: int, leaf: str, frames: int
) -> None:
    """Refused with a ``ValueError`` (what every caller handles), whichever parser read it:
    orjson (up to 1024 levels), or ``json`` (a float, or NaN, which orjson refuses)."""
    with pytest.raises(PayloadTooDeepError):
        at_stack_depth(frames, nested_text(depth, leaf))
    assert issubclass(PayloadTooDeepError, ValueError)


def test_depth_counts_objects_and_arrays_alike() -> None:
    objects = '{"a": ' * MAX_DEPTH + "1.5" + "}" * MAX_DEPTH
    assert read_payload(objects) == json.loads(objects)
    with pytest.raises(PayloadTooDeepError):
        read_payload('{"a": [' + objects + "]}")
