"""``read_json`` gives exactly what kombu's ``loads`` gives, and ``read_payload`` what
``json.loads`` gives, for any text; the worker decodes ``application/json`` messages with
``read_json``."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from celery import Celery
from hypothesis import given
from hypothesis import strategies as st
from kombu import serialization
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.json import loads as kombu_loads

from clerk_sync.broker.messages import RedisTaskMessages
from clerk_sync.broker.transport import read_broker_json_fast
from clerk_sync.core.json_reading import read_json, read_payload
from clerk_sync.core.queue import QueuedEvent, broker_configuration
from clerk_sync.core.settings import Settings

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

kombu_typed = st.one_of(
    st.datetimes(timezones=st.just(UTC)),
    st.uuids(),
    st.decimals(allow_nan=False),
    st.binary(max_size=8),
)
"""Values kombu encodes as ``{"__type__": ..., "__value__": ...}``."""


def same_reading(text: str | bytes) -> None:
    """``read_json`` reads ``text`` as kombu does and, for a ``str``, ``read_payload`` as
    ``json.loads`` does: the same values of the same types (1 and 1.0 differ), or the same
    error."""
    readers: list[tuple[Any, Any]] = [(read_json, kombu_loads)]
    if isinstance(text, str):
        readers.append((read_payload, json.loads))
    for fast, reference in readers:
        try:
            expected: Any = reference(text)
        except ValueError as error:
            with pytest.raises(type(error)):
                fast(text)
            continue
        assert repr(fast(text)) == repr(expected)


@given(json_values, st.booleans())
def test_any_json_value_reads_as_kombu_and_json_read_it(value: Any, ascii_only: bool) -> None:
    same_reading(json.dumps(value, ensure_ascii=ascii_only))


@given(st.dictionaries(st.text(max_size=5), kombu_typed | json_values, max_size=4))
def test_kombu_typed_values_come_back_as_kombu_decodes_them(value: dict[str, Any]) -> None:
    text = kombu_dumps(value)
    same_reading(text)
    same_reading(text.encode())


@given(st.text(alphabet='{}[]",:0123456789.eE-+ tnulfrsa\\u', max_size=40))
def test_any_text_reads_or_fails_as_kombu_does(text: str) -> None:
    same_reading(text)


TYPED = kombu_dumps({"id": uuid.UUID(int=7), "at": datetime(2026, 11, 27, tzinfo=UTC)})


@pytest.mark.parametrize(
    "text",
    [
        TYPED,
        TYPED.replace('"__type__"', '"\\u005f_type__"'),
        '{"n": 123456789012345678901234567890}',
        '{"n": -9223372036854775809}',
        "[NaN, Infinity]",
        '"\\ud800"',
        '{"a": 1, "a": 2.5}',
    ],
    ids=["typed", "typed-escaped-key", "big-int", "big-negative", "nan", "surrogate", "dup-key"],
)
def test_texts_orjson_reads_differently(text: str) -> None:
    same_reading(text)


def test_a_task_message_from_the_ingress_reads_alike(settings: Settings) -> None:
    celery = Celery("reading", set_as_current=False)
    celery.conf.update(broker_configuration(settings))
    event = QueuedEvent("msg_1", '{"type": "user.created", "data": {"név": "Zoë"}}', 1_700_000_000)
    _key, raw = RedisTaskMessages(celery, settings.queue_name).build(event)
    envelope = read_json(raw)
    assert envelope == kombu_loads(raw)
    body = base64.b64decode(envelope["body"])
    assert read_json(body) == kombu_loads(body)
    assert read_json(body)[0] == event.task_args()


def test_the_worker_registers_it_for_json_messages() -> None:
    read_broker_json_fast()
    moment = datetime(2026, 11, 27, tzinfo=UTC)
    decimal = Decimal("1.5")
    content_type, encoding, text = serialization.dumps(
        {"at": moment, "amount": decimal}, serializer="json"
    )
    assert (content_type, encoding) == ("application/json", "utf-8")
    assert serialization.loads(text, content_type, encoding) == {"at": moment, "amount": decimal}
    assert serialization.registry._decoders["application/json"] is read_json
