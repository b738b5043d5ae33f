"""``clerk_sync.core.durability`` against real ``redis-server`` processes configured as each
case needs: durable, not durable, ``CONFIG`` disabled (a managed Redis), ``CONFIG`` and
``INFO`` disabled, unreachable, and a broker that is not Redis."""

from __future__ import annotations

import pytest
import redis

from clerk_sync.core.durability import BrokerDurability, DurabilityMonitor, Verdict, check_broker
from clerk_sync.core.settings import Settings
from tests.throwaway_redis import (
    DURABLE,
    NO_CONFIG,
    NO_CONFIG_NOR_INFO,
    NOT_DURABLE,
    StartRedis,
    start_redis,
)

__all__ = ["start_redis"]


def check(url: str) -> BrokerDurability:
    return check_broker(Settings(broker_url=url, broker_publish_timeout_seconds=1.0))


def test_append_only_and_noeviction_is_durable(start_redis: StartRedis) -> None:
    result = check(start_redis(*DURABLE))
    assert result.verdict is Verdict.DURABLE
    assert result.durable is True
    assert result.reasons == ()
    assert (result.appendonly, result.maxmemory_policy) == ("yes", "noeviction")
    assert result.read_with == "CONFIG GET"


def test_no_append_only_file_and_an_evicting_policy_are_each_a_reason(
    start_redis: StartRedis,
) -> None:
    result = check(start_redis(*NOT_DURABLE))
    assert result.verdict is Verdict.NOT_DURABLE
    assert result.durable is False
    assert len(result.reasons) == 2
    assert "appendonly is off" in result.reasons[0]
    assert "maxmemory-policy is allkeys-lru" in result.reasons[1]
    assert result.as_dict() == {
        "verdict": "not_durable",
        "reasons": list(result.reasons),
        "appendonly": "no",
        "maxmemory_policy": "allkeys-lru",
        "read_with": "CONFIG GET",
    }


def test_rdb_snapshots_alone_are_not_durable(start_redis: StartRedis) -> None:
    result = check(start_redis("--appendonly", "no", "--save", "60 1"))
    assert result.verdict is Verdict.NOT_DURABLE
    assert [reason[:18] for reason in result.reasons] == ["appendonly is off:"]


def test_a_volatile_policy_is_not_durable_either(start_redis: StartRedis) -> None:
    result = check(start_redis("--appendonly", "yes", "--maxmemory-policy", "volatile-lru"))
    assert result.verdict is Verdict.NOT_DURABLE
    assert result.maxmemory_policy == "volatile-lru"


def test_without_config_the_settings_are_read_from_info(start_redis: StartRedis) -> None:
    url = start_redis(*DURABLE, *NO_CONFIG)
    client: redis.Redis[bytes] = redis.Redis.from_url(url)
    with pytest.raises(redis.ResponseError):
        client.config_get("appendonly")
    client.close()
    result = check(url)
    assert result.verdict is Verdict.DURABLE
    assert result.read_with == "INFO"
    not_durable = check(start_redis(*NOT_DURABLE, *NO_CONFIG))
    assert not_durable.verdict is Verdict.NOT_DURABLE
    assert (not_durable.appendonly, not_durable.maxmemory_policy) == ("no", "allkeys-lru")


def test_without_config_nor_info_it_is_unknown_never_durable(start_redis: StartRedis) -> None:
    result = check(start_redis(*DURABLE, *NO_CONFIG_NOR_INFO))
    assert result.verdict is Verdict.UNKNOWN
    assert result.durable is None
    assert len(result.reasons) == 2
    assert all("could be read neither" in reason for reason in result.reasons)


def test_an_unreachable_broker_is_unknown() -> None:
    result = check("redis://127.0.0.1:1/0")
    assert result.verdict is Verdict.UNKNOWN
    assert result.reasons == ("the broker could not be asked (ConnectionError)",)


def test_a_broker_other_than_redis_is_not_checked() -> None:
    result = check_broker(Settings(broker_url="filesystem://"))
    assert result.verdict is Verdict.NOT_CHECKED
    assert result.durable is None
    assert "not Redis (filesystem://)" in result.reasons[0]


def test_the_monitor_checks_again_only_after_its_max_age(start_redis: StartRedis) -> None:
    url = start_redis(*NOT_DURABLE)
    monitor = DurabilityMonitor(Settings(broker_url=url), max_age_seconds=3600)
    assert monitor.current().verdict is Verdict.NOT_DURABLE
    client: redis.Redis[bytes] = redis.Redis.from_url(url)
    client.config_set("appendonly", "yes")
    client.config_set("maxmemory-policy", "noeviction")
    client.close()
    assert monitor.current().verdict is Verdict.NOT_DURABLE
    assert DurabilityMonitor(Settings(broker_url=url), 0).current().verdict is Verdict.DURABLE
