"""The ingress refuses exactly the payloads the worker could not read: its quick reading of
``type`` (orjson, then ``json`` where orjson refuses) agrees with the worker's ``json.loads``."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ingress.app import _event_type

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["type", "data", "Type", ""]) | st.text(), children)
    ),
    max_leaves=12,
)


def worker_reading(payload: str) -> str | None:
    """What the worker makes of the payload: ``json.loads`` of the text, a non-empty string
    ``type``."""
    try:
        document: Any = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    event_type = document.get("type") if isinstance(document, dict) else None
    return event_type if isinstance(event_type, str) and event_type else None


@given(json_values, st.booleans())
def test_type_of_any_json_document(document: Any, ascii_only: bool) -> None:
    payload = json.dumps(document, ensure_ascii=ascii_only)
    assert _event_type(payload) == worker_reading(payload)


@given(st.text(alphabet='{}[]",:0123456789.eE-+ typeNaIfinul\\ud8', max_size=40))
def test_type_of_any_text(payload: str) -> None:
    assert _event_type(payload) == worker_reading(payload)


@given(st.sampled_from(["NaN", "Infinity", "1e400", '"\\ud800"', "123456789012345678901234567890"]))
def test_values_orjson_refuses_or_reads_differently_do_not_hide_the_type(value: str) -> None:
    payload = '{"type": "user.created", "extra": ' + value + "}"
    assert _event_type(payload) == worker_reading(payload) == "user.created"
