"""Reading a Clerk payload with orjson, to exactly the result of ``json.loads``, nested at most
``MAX_DEPTH`` levels: the one reader of payloads, used by the ingress (which answers ``400`` to
a body it refuses) and by the workers (which dead-letter one, should it reach them).

orjson parses the same texts as ``json.loads`` several times faster. Where its reading could
differ, ``json`` decides: a text holding a float (orjson reads integers beyond 64 bits as
floats), or one orjson refuses and ``json`` takes (NaN, lone surrogates). Clerk's payloads hold
none of these, and take the fast path.

The depth limit is ours, the same in every process, and far below what either parser can do:
orjson stops at 1024 levels, but ``json.loads`` recurses and fails (``RecursionError``) near
1000 levels *minus the depth of the caller's stack*, so without a limit of our own a body could
be read by the ingress and not by a worker. Deeper than ``MAX_DEPTH`` is refused alike
(``PayloadTooDeepError``, a ``ValueError``) whichever parser read it, and ``RecursionError``
never escapes.
"""

from __future__ import annotations

import json
from typing import Any, Final

import orjson

MAX_DEPTH: Final = 128
"""Arrays and objects nested deeper than this are refused. Clerk's envelopes nest about five
levels, and metadata a few more; 128 also keeps every later step (``json.dumps`` and orjson's
writer, which stops at 255 levels, for the JSON columns) far inside its own limits."""


class PayloadTooDeepError(ValueError):
    """The payload nests arrays and objects deeper than ``MAX_DEPTH``."""

    def __init__(self) -> None:
        super().__init__(f"the payload nests arrays and objects deeper than {MAX_DEPTH} levels")


def read_payload(text: str) -> Any:
    """``json.loads(text)`` (how the worker reads a Clerk payload), faster; ``ValueError`` for
    a text ``json.loads`` refuses or one nested deeper than ``MAX_DEPTH``."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        if "recursion" in str(error):
            raise PayloadTooDeepError from None
        return _read_with_json(text)
    if _holds_a_float(value):
        return _read_with_json(text)
    return value


def _read_with_json(text: str) -> Any:
    try:
        value = json.loads(text)
    except RecursionError:
        raise PayloadTooDeepError from None
    _holds_a_float(value)
    return value


def _holds_a_float(value: Any) -> bool:
    """Whether ``json`` could read the text of ``value`` differently: it holds a float (maybe
    an integer beyond 64 bits, read so by orjson). Raises ``PayloadTooDeepError`` if ``value``
    nests deeper than ``MAX_DEPTH`` (one walk, level by level, checks both)."""
    level = [value]
    depth = 0
    found = False
    while level:
        below: list[Any] = []
        containers = False
        for item in level:
            kind = type(item)
            if kind is dict:
                below.extend(item.values())
                containers = True
            elif kind is list:
                below.extend(item)
                containers = True
            elif kind is float:
                found = True
        if containers:
            depth += 1
            if depth > MAX_DEPTH:
                raise PayloadTooDeepError
        level = below
    return found
