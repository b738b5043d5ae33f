"""Reading JSON with orjson, to exactly the result of kombu's ``loads`` or of ``json.loads``.

The worker's main process decodes every message twice (kombu's transport envelope, then the
task body), and kombu's ``loads`` builds a ``json.JSONDecoder`` each call and runs a Python
``object_hook`` on every object: about a third of that process's time under a backlog. The
pool processes read every Clerk payload with ``json.loads``. orjson parses the same texts
several times faster; where its reading could differ, ``json`` or kombu decides:

- integers beyond 64 bits, which orjson turns into floats: the result holds a float;
- what orjson refuses and ``json`` takes (NaN, lone surrogates): orjson raises;
- for kombu, its typed values (``{"__type__": ..., "__value__": ...}``, for dates, UUIDs,
  bytes): an object of the result has a ``__type__`` key.

The ingress's messages and Clerk's payloads hold none of these, and take the fast path.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final

import orjson
from kombu.utils import json as kombu_json

KOMBU_TYPE_KEY: Final = "__type__"

kombu_loads: Callable[[Any], Any] = kombu_json.loads


def read_json(text: Any) -> Any:
    """``kombu.utils.json.loads(text)``, faster for the messages clerk-sync sends."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    elif not isinstance(text, str):
        return kombu_loads(text)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return kombu_loads(text)
    if _read_differently(value, kombu_types=True):
        return kombu_loads(text)
    return value


def read_payload(text: str) -> Any:
    """``json.loads(text)`` (how the worker reads a Clerk payload), faster: Clerk's payloads hold
    no floats."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    if _read_differently(value, kombu_types=False):
        return json.loads(text)
    return value


def _read_differently(value: Any, *, kombu_types: bool) -> bool:
    """Whether ``json`` (or kombu) could read the text of ``value`` differently: it holds a
    float (maybe an integer beyond 64 bits, read by orjson) or, for kombu, an object with
    kombu's type key."""
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is dict:
            if kombu_types and KOMBU_TYPE_KEY in item:
                return True
            pending.extend(item.values())
        elif kind is list:
            pending.extend(item)
        elif kind is float:
            return True
    return False
