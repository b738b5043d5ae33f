"""Redis with Sentinel as the broker: ``sentinel://`` URLs, as Celery and kombu read them.

``CELERY_BROKER_URL=sentinel://host:26379;sentinel://host2:26379/0`` names the sentinels (the
first part also carries the master's password and database: ``sentinel://:password@host:port/db``),
and ``CLERK_SYNC_SENTINEL_MASTER`` the master they watch (kombu's ``master_name`` transport
option). The workers use kombu's sentinel transport (``clerk_sync.broker.transport``); every
other client of the broker's Redis (the ingress's accept, the ledger, the sweeper, the
durability check, the gauges) is redis-py's ``Sentinel(...).master_for(...)``: each new
connection asks the sentinels where the master is, so after a failover the next connection
reaches the new one.

Also the replica wait (``CLERK_SYNC_ACCEPT_REPLICA_WAIT_MS``): the accept is followed, in the
same round trip, by ``WAIT 1 <ms>``, and a ``202`` is answered only once a replica has the
event. Redis replicates asynchronously, so without it a failover can promote a replica that
never received the last acknowledged events (docs/operations.md, "Redis with Sentinel").
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from clerk_sync.core.setting_values import documented, whole

SENTINEL_SCHEME: Final = "sentinel://"
DEFAULT_SENTINEL_PORT: Final = 26379
DEFAULT_MASTER_NAME: Final = "mymaster"
REDIS_URL_SCHEMES: Final = ("redis://", "rediss://", "redis+socket://", SENTINEL_SCHEME)
"""Broker URLs of a Redis: the ledger, the one-round-trip accept and batching use it."""


def sentinel_master_field() -> Any:
    """``Settings.sentinel_master``: the master's name for ``sentinel://`` broker URLs."""
    return field(
        default=DEFAULT_MASTER_NAME,
        metadata=documented(
            "CLERK_SYNC_SENTINEL_MASTER",
            "with a `sentinel://host:port;sentinel://host:port` broker URL, the name of the "
            "master the sentinels watch (kombu's `master_name`; [Redis with "
            "Sentinel](operations.md#redis-with-sentinel))",
        ),
    )


def replica_wait_field() -> Any:
    """``Settings.accept_replica_wait_ms``: the accept waits for a replica (``WAIT``)."""
    return field(
        default=0,
        metadata=documented(
            "CLERK_SYNC_ACCEPT_REPLICA_WAIT_MS",
            "above `0`: the ingress answers `202` only once a Redis replica also holds the event "
            "(`WAIT 1` this many ms), else `503`, so a failover cannot lose an acknowledged "
            "event (cost: [Redis with Sentinel](operations.md#redis-with-sentinel)); `0`: off",
            read=whole(),
        ),
    )


class ReplicaWaitError(redis.ConnectionError):
    """No replica confirmed the accept within ``CLERK_SYNC_ACCEPT_REPLICA_WAIT_MS``: the event
    is on the master (and may yet be applied), but a failover could lose it, so it is not
    acknowledged (``503``; Svix retries, and the ledger turns a copy into a ``202``)."""


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def sentinel_addresses(url: str) -> list[tuple[str, int]]:
    """The ``(host, port)`` of each sentinel in a ``sentinel://…;sentinel://…`` URL."""
    addresses = []
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ValueError("each part of a sentinel broker URL is sentinel://host[:port]")
        addresses.append((parts.hostname, parts.port or DEFAULT_SENTINEL_PORT))
    return addresses


def master_client(url: str, master_name: str, **connection: Any) -> redis.Redis[bytes]:
    """A client of the master the sentinels of ``url`` watch (redis-py's ``master_for``);
    ``connection``: redis-py connection options (timeouts). The username, password and
    database are the first part's, as kombu reads them."""
    first = urlsplit(url.split(";", 1)[0].strip())
    credentials = {
        key: unquote(value)
        for key, value in (("username", first.username), ("password", first.password))
        if value
    }
    database = int(first.path.strip("/") or 0)
    sentinels = Sentinel(sentinel_addresses(url), **connection)
    client: redis.Redis[bytes] = sentinels.master_for(
        master_name, db=database, **credentials, **connection
    )
    return client
