"""Property: whatever arrives without a valid signature, the answer is a 4xx JSON error and
nothing is queued or written to the ledger."""

from __future__ import annotations

import base64
import time
from typing import Any

import redis
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from clerk_sync.core.settings import Settings
from tests.conftest import WEBHOOK_SECRET
from tests.factories import signed_headers
from tests.ingress.conftest import WEBHOOK_PATH, assert_nothing_enqueued

SIGNED_BODY = '{"type":"organization.updated"}'
"""Real signatures in the strategies are made for this body, which is never posted."""
REAL = signed_headers(WEBHOOK_SECRET, SIGNED_BODY)

# Header values a server passes on: latin-1 text without line breaks or other controls.
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=120,
)
b64 = st.binary(max_size=40).map(lambda raw: base64.b64encode(raw).decode())
signature_entry = st.one_of(
    st.builds("{},{}".format, st.sampled_from(["v1", "v1a", "v2", "", "V1"]), b64),
    st.just(REAL["svix-signature"]),
    header_text,
)
signatures = st.lists(signature_entry, min_size=1, max_size=4).map(" ".join)
timestamps = st.one_of(
    st.integers(-900, 900).map(lambda offset: str(int(time.time()) + offset)),
    st.just(REAL["svix-timestamp"]),
    header_text,
)
ids = st.one_of(st.just(REAL["svix-id"]), st.from_regex(r"\Amsg_[A-Za-z0-9]{0,30}\Z"), header_text)
any_value = st.one_of(header_text, signatures, timestamps, ids)


def header_set(prefix: str) -> st.SearchStrategy[dict[str, str]]:
    """All three headers of one naming scheme, or some of them."""
    strategies = {f"{prefix}-id": ids, f"{prefix}-timestamp": timestamps}
    strategies[f"{prefix}-signature"] = signatures
    return st.fixed_dictionaries(strategies) | st.fixed_dictionaries({}, optional=strategies)


extra_names = st.sampled_from(
    ["svix-id", "svix-timestamp", "svix-signature", "webhook-id", "Svix-Signature", "x-anything"]
) | st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z")
FORBIDDEN = {"content-length", "host", "transfer-encoding"}


def merge(parts: tuple[dict[str, str], dict[str, str]]) -> dict[str, str]:
    base, extra = parts
    return {**extra, **base}


headers_strategy = (
    st.tuples(
        header_set("svix") | header_set("webhook"),
        st.dictionaries(extra_names, any_value, max_size=3),
    )
    .map(merge)
    .filter(lambda headers: not {name.lower() for name in headers} & FORBIDDEN)
)

bodies = st.one_of(
    st.binary(max_size=512),
    st.text(max_size=200).map(str.encode),
    st.sampled_from(
        [b'{"type":"organization.created"}', SIGNED_BODY.encode() + b" ", b"[]", b"", b"{}"]
    ),
)


def test_unsigned_input_is_never_5xx_and_never_queued(
    client: FlaskClient, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    @hypothesis_settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(body=bodies, headers=headers_strategy)
    def check(body: bytes, headers: dict[str, str]) -> None:
        response = client.post(WEBHOOK_PATH, data=body, headers=headers)
        assert 400 <= response.status_code < 500, (response.status_code, response.get_data())
        document: Any = response.get_json()
        assert isinstance(document, dict)
        assert isinstance(document.get("error"), str)
        event(document["error"])
        assert_nothing_enqueued(redis_client, settings)

    check()
