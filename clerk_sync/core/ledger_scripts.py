"""The ledger's two Lua scripts, each one round trip: the ingress's accept and the worker's
forget (``clerk_sync.core.queue.Ledger`` runs them).

Besides the entries (``clerk-sync:ledger:messages``, ``:due``), the ledger keeps the SHA-256 of
each accepted event's payload (``:hashes``), from its acceptance until ``REMEMBER_FINISHED_SECONDS``
after its outcome is committed (``:finished`` holds when, to trim them); how often the sweeper
re-published each event (``:redeliveries``); and bodies that reused an svix id with another
payload, until the sweeper records them in the inbox (``:conflicts``).

**Accept.** An svix id with a hash (in the ledger, or finished within
``REMEMBER_FINISHED_SECONDS``) is not queued again: a captured request replayed any number of
times within Svix's 5-minute timestamp tolerance adds one message to the queue. With the same
payload it is a copy (``DUPLICATE``); with another payload the first wins, the ledger keeps the
first body, and the second is set aside once per distinct body (``CONFLICT``). Otherwise the
entry, its hash and its due time are written and the message pushed (``ACCEPTED``), as they
always are for a replay. Either way
the ingress answers ``202``: Svix must not retry. Cost: one ``HGET`` more than the three writes
of a plain transaction, and a hash per event of Redis memory while it is remembered.

**Forget.** When the outcomes of events are committed, their entries and counts go and their
hashes are marked finished (now); hashes finished more than ``REMEMBER_FINISHED_SECONDS`` ago
are dropped, at most ``TRIM`` per call. The time is Redis's (``TIME``), not the caller's clock.
"""

from __future__ import annotations

import hashlib
from enum import IntEnum
from typing import Final

LEDGER_HASHES_KEY: Final = "clerk-sync:ledger:hashes"
LEDGER_REDELIVERIES_KEY: Final = "clerk-sync:ledger:redeliveries"
LEDGER_FINISHED_KEY: Final = "clerk-sync:ledger:finished"
LEDGER_CONFLICTS_KEY: Final = "clerk-sync:ledger:conflicts"

REMEMBER_FINISHED_SECONDS: Final = 900
"""Longer than Svix's timestamp tolerance (5 minutes either way): a captured request can be
replayed for at most that long after it was signed, and the event finished after that."""


class Acceptance(IntEnum):
    """What the accept transaction did with an event."""

    ACCEPTED = 0
    """Written to the ledger and queued."""
    DUPLICATE = 1
    """A copy of an event in the ledger or finished recently: nothing written."""
    CONFLICT = 2
    """Another body under the svix id of an event in the ledger or finished recently: the
    first is kept, this one set aside for the sweeper to record in the inbox."""


ACCEPT: Final = """
local known = redis.call('HGET', KEYS[3], ARGV[1])
if known and ARGV[6] ~= '1' then
  if ARGV[7] == '1' then
    redis.call('HSET', KEYS[3], ARGV[1], known)
  end
  if known == ARGV[4] then
    return 1
  end
  redis.call('HSETNX', KEYS[4], ARGV[1] .. '\\n' .. ARGV[4], ARGV[2])
  return 2
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('LPUSH', KEYS[5], ARGV[5])
return 0
"""
"""KEYS: messages, due, hashes, conflicts, the queue list. ARGV: svix id, ledger entry, due
time, payload hash, task message, '1' for a replay (an operator's ``events replay``: queued
whatever is known of the svix id, its body being the stored one), and optionally '1' when a
``WAIT`` follows (a copy then writes too, see ``Ledger.accept``). An entry written before
hashes were kept has none, and a copy of it would be queued again: the worker ignores it as a
duplicate."""

ACCEPT_SHA: Final = hashlib.sha1(ACCEPT.encode(), usedforsecurity=False).hexdigest()

TRIM: Final = 1000

FORGET: Final = f"""
local now = tonumber(redis.call('TIME')[1])
local n = #ARGV
for first = 2, n, 1000 do
  local ids = {{unpack(ARGV, first, math.min(first + 999, n))}}
  local timed = {{}}
  for i, id in ipairs(ids) do
    timed[2 * i - 1] = now
    timed[2 * i] = id
  end
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('HDEL', KEYS[2], unpack(ids))
  redis.call('HDEL', KEYS[3], unpack(ids))
  redis.call('ZADD', KEYS[5], unpack(timed))
end
local old = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[1]),
  'LIMIT', 0, {TRIM})
if #old > 0 then
  redis.call('HDEL', KEYS[4], unpack(old))
  redis.call('ZREM', KEYS[5], unpack(old))
end
return #old
"""
"""KEYS: due, messages, redeliveries, hashes, finished. ARGV: seconds to remember a finished
event, then the svix ids. ``unpack`` in chunks: Lua's stack takes about 8000."""
