"""Concurrent workers on PostgreSQL: events for the same few organizations applied at once, from
several connections, end in the same tables as applying them one by one in order.

This is what ``models.locks.lock_organization`` (a transaction-scoped advisory lock per
organization) is for: without it, two transactions interleave the read-compare-write steps of the
version, tombstone and supersession rules.
"""

from __future__ import annotations

import queue
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, func, select

from models.tables import webhook_events
from tests.conftest import empty_tables
from tests.models.histories import (
    ADD_MEMBER,
    CHANGE_ROLE,
    READD_MEMBER,
    REMOVE_MEMBER,
    UPDATE_ORGANIZATION,
    UPDATE_USER,
    ClerkHistory,
    Delivery,
)
from tests.models.organization_history import (
    CHANGE_PERMISSION,
    CHANGE_ROLE_DEFINITION,
    CREATE_PERMISSION,
    CREATE_ROLE,
    DELETE_PERMISSION,
    DELETE_ROLE,
    OrganizationHistory,
    model_tables,
)
from tests.models.support import WORKSPACE_KEY, synced_tables
from workers.processing import (
    apply_batch_with_short_retries,
    apply_event,
    apply_with_short_retries,
    describe_event,
)

THREADS = 8
RECEIVED_AT_MS = 1_800_000_000_000

pytestmark = pytest.mark.slow


def busy_history(seed: int) -> ClerkHistory:
    """Three organizations and six users with lots of churn; one organization is deleted at the
    end, followed by a membership.deleted per member, so late events must stay blocked."""
    rng = random.Random(seed)
    history = ClerkHistory(organization_slots=3, user_count=6)
    for creator in range(3):
        history.create_organization(with_creator=True, creator=creator)
        history.clock += 1
    kinds = [UPDATE_ORGANIZATION, ADD_MEMBER, ADD_MEMBER, CHANGE_ROLE, CHANGE_ROLE]
    kinds += [REMOVE_MEMBER, READD_MEMBER, READD_MEMBER]
    for _ in range(90):
        history.perform(
            rng.choice(kinds), rng.randrange(12), rng.randrange(60), rng.choice([1, 2, 1000])
        )
    history.clock += 1
    history.delete_organization(sorted(history.organizations)[seed % 3], member_events=True)
    return history


def with_duplicates(events: list[Delivery], rng: random.Random) -> list[Delivery]:
    sent = list(events)
    for original in events:
        if rng.random() < 0.25:
            sent.append(original)
        if rng.random() < 0.15:
            sent.append(Delivery(f"{original.svix_id}_again", original.body, original.label))
    rng.shuffle(sent)
    return sent


def apply_concurrently(engine: Engine, sent: list[Delivery]) -> list[str]:
    """Deliver ``sent`` from THREADS threads at once (each its own pooled connection); returns
    the statuses. A failure in any thread is re-raised here by ``Future.result``."""
    work: queue.Queue[Delivery] = queue.Queue()
    for delivery in sent:
        work.put(delivery)
    start = threading.Barrier(THREADS)

    def worker() -> list[str]:
        start.wait(timeout=30)
        statuses = []
        while True:
            try:
                delivery = work.get_nowait()
            except queue.Empty:
                return statuses
            incoming = describe_event(delivery.svix_id, delivery.body, RECEIVED_AT_MS)
            statuses.append(apply_with_short_retries(engine, incoming, WORKSPACE_KEY))

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [pool.submit(worker) for _ in range(THREADS)]
        return [status for future in futures for status in future.result(timeout=120)]


@pytest.mark.parametrize("seed", range(4))
def test_concurrent_workers_converge_to_in_order_state(pg_engine: Engine, seed: int) -> None:
    history = busy_history(seed)
    for delivery in history.events:
        status = apply_event(
            pg_engine,
            describe_event(delivery.svix_id, delivery.body, RECEIVED_AT_MS),
            WORKSPACE_KEY,
        )
        assert status == "applied"
    in_order = synced_tables(pg_engine)
    assert in_order == history.expected_state()
    assert len(in_order[0]) == 2
    assert len(in_order[1]) >= 4

    empty_tables(pg_engine)
    sent = with_duplicates(history.events, random.Random(seed))
    statuses = apply_concurrently(pg_engine, sent)

    assert len(statuses) == len(sent)
    assert set(statuses) == {"applied"}
    assert synced_tables(pg_engine) == in_order
    with pg_engine.connect() as connection:
        inbox = connection.execute(
            select(webhook_events.c.status, webhook_events.c.attempts, func.count()).group_by(
                webhook_events.c.status, webhook_events.c.attempts
            )
        ).all()
    # One row per svix id, applied exactly once: duplicates are acknowledged, not re-applied.
    assert inbox == [("applied", 1, len({delivery.svix_id for delivery in sent}))]


def roles_history(seed: int) -> OrganizationHistory:
    """Members added and re-roled, users renamed, while permissions and roles change under
    them (keys renamed, sets changed, deleted): what the roles lock orders."""
    rng = random.Random(seed)
    history = OrganizationHistory(organization_slots=3, user_count=6)
    for creator in range(3):
        history.create_organization(with_creator=True, creator=creator)
        history.clock += 1
    for variant in range(3):
        history.perform(CREATE_PERMISSION, 0, variant, 1)
    history.perform(CREATE_ROLE, 0, 1, 1)  # org:admin, the creators' role
    kinds = [ADD_MEMBER, ADD_MEMBER, ADD_MEMBER, CHANGE_ROLE, CHANGE_ROLE, UPDATE_USER]
    kinds += [CREATE_PERMISSION, CHANGE_PERMISSION, DELETE_PERMISSION, CREATE_ROLE]
    kinds += [CHANGE_ROLE_DEFINITION, CHANGE_ROLE_DEFINITION, CHANGE_ROLE_DEFINITION, DELETE_ROLE]
    for _ in range(90):
        history.perform(
            rng.choice(kinds), rng.randrange(12), rng.randrange(60), rng.choice([1, 2, 1000])
        )
    return history


@pytest.mark.parametrize("seed", range(3))
def test_role_changes_racing_membership_upserts_converge(pg_engine: Engine, seed: int) -> None:
    """Role and permission writers (the roles lock, exclusive) and membership upserts (shared)
    applied at once from several connections: every membership ends with the permissions of
    the role holding its key, as if applied in order. Without the lock, a membership inserted
    while a role change commits keeps the permissions it read before."""
    history = roles_history(seed)
    apply_all_in_order(pg_engine, history.events)
    in_order = (synced_tables(pg_engine), model_tables(pg_engine))
    assert in_order == (history.expected_state(), history.expected_model())
    granted = [m for m in history.members.values() if history.granted(m["role"]) is not None]
    assert granted, "some membership's role is stored"

    empty_tables(pg_engine)
    sent = with_duplicates(history.events, random.Random(seed))
    assert set(apply_concurrently(pg_engine, sent)) == {"applied"}

    assert (synced_tables(pg_engine), model_tables(pg_engine)) == in_order


def test_batches_of_role_changes_and_memberships_converge(pg_engine: Engine) -> None:
    """The same, applied as batches (locks taken up front, the roles lock last) from several
    threads at once."""
    history = roles_history(7)
    apply_all_in_order(pg_engine, history.events)
    in_order = (synced_tables(pg_engine), model_tables(pg_engine))

    empty_tables(pg_engine)
    sent = with_duplicates(history.events, random.Random(7))
    batches = [sent[start : start + 12] for start in range(0, len(sent), 12)]

    def apply(batch: list[Delivery]) -> set[str]:
        unique = {delivery.svix_id: delivery for delivery in batch}
        events = [
            describe_event(delivery.svix_id, delivery.body, RECEIVED_AT_MS)
            for delivery in unique.values()
        ]
        results = apply_batch_with_short_retries(pg_engine, events, WORKSPACE_KEY)
        return {result.status for result in results.values()}

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = set().union(*pool.map(apply, batches))

    assert statuses == {"applied"}
    assert (synced_tables(pg_engine), model_tables(pg_engine)) == in_order


def apply_all_in_order(engine: Engine, events: list[Delivery]) -> None:
    for delivery in events:
        incoming = describe_event(delivery.svix_id, delivery.body, RECEIVED_AT_MS)
        assert apply_event(engine, incoming, WORKSPACE_KEY) == "applied"
