"""Batches: many queued events applied in one transaction (``workers.batches``).

The pool-process side (``process_batch``, ``apply_batch``) is driven directly here, on real
PostgreSQL (and SQLite) and Redis; the last tests run real worker processes, whose main process
buffers the queued messages and hands them over in batches.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, example, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from sqlalchemy import event as sqlalchemy_event

from clerk_sync.broker.publisher import Publisher
from clerk_sync.core.queue import LEDGER_DUE_KEY, QueuedEvent
from clerk_sync.core.settings import Settings, SettingsError
from models.locks import lock_organization
from models.tables import (
    organization_memberships,
    organizations,
    tombstones,
    users,
    webhook_events,
)
from tests.conftest import empty_tables, inbox_row, queue_length, wait_for
from tests.factories import (
    BASE_TIME_MS,
    body_of,
    deleted_organization_data,
    deleted_user_data,
    event,
    membership_data,
    new_svix_id,
    organization_data,
    user_data,
)
from tests.models.histories import ClerkHistory, Delivery
from tests.models.support import WORKSPACE_KEY, synced_tables, tombstone_rows
from workers.app import create_celery_app
from workers.batches import BatchItem, prefetch_multiplier, process_batch
from workers.processing import apply_batch, apply_event, dead_letter, describe_event
from workers.runtime import WorkerRuntime

RECEIVED_AT_MS = 1_800_000_000_000


def item(payload: dict[str, Any] | str, svix_id: str | None = None, retries: int = 0) -> BatchItem:
    body = payload if isinstance(payload, str) else body_of(payload)
    return BatchItem(uuid.uuid4().hex, svix_id or new_svix_id(), body, RECEIVED_AT_MS, retries)


def deliveries_as_items(deliveries: list[Delivery]) -> list[BatchItem]:
    return [item(delivery.body, delivery.svix_id) for delivery in deliveries]


def org_names(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        return dict(connection.execute(select(organizations.c.id, organizations.c.name)).all())


@pytest.fixture
def runtime(settings: Settings, pg_engine: Engine) -> Iterator[WorkerRuntime]:
    """What a pool process works with, on the test PostgreSQL and Redis."""
    runtime: WorkerRuntime = create_celery_app(settings).clerk_sync_runtime
    yield runtime
    runtime.engine.dispose()


@pytest.fixture
def sqlite_runtime(
    settings: Settings, sqlite_url: str, redis_client: redis.Redis[bytes]
) -> Iterator[WorkerRuntime]:
    runtime: WorkerRuntime = create_celery_app(
        replace(settings, database_url=sqlite_url)
    ).clerk_sync_runtime
    empty_tables(runtime.engine)
    yield runtime
    runtime.engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def any_runtime(request: pytest.FixtureRequest) -> WorkerRuntime:
    return request.getfixturevalue("runtime" if request.param == "postgresql" else "sqlite_runtime")


def test_a_poison_event_in_the_middle_of_a_batch_is_dead_and_its_neighbours_applied(
    any_runtime: WorkerRuntime, redis_client: redis.Redis[bytes]
) -> None:
    engine = any_runtime.engine
    first = organization_data("org_first", name="First")
    last = organization_data("org_last", name="Last")
    poison = membership_data(first)
    del poison["public_user_data"]["user_id"]
    items = [
        item(event("organization.created", first)),
        item(event("organizationMembership.created", membership_data(first, user_id="user_a"))),
        item(event("organizationMembership.created", poison)),
        item("{not json"),
        item(event("session.created", {"object": "session", "id": "sess_1"})),
        item(event("organization.created", last)),
    ]
    publisher = Publisher(any_runtime.settings)
    for queued in items:  # as the ingress left them: queued, and in the ledger
        publisher.publish(QueuedEvent(queued.svix_id, queued.payload, queued.received_at_ms))

    outcomes = process_batch(any_runtime, items)

    assert outcomes == ["applied", "applied", "dead", "dead", "skipped", "applied"]
    assert org_names(engine) == {"org_first": "First", "org_last": "Last"}
    dead = inbox_row(engine, items[2].svix_id)
    assert dead is not None
    assert dead["status"] == "dead"
    assert dead["attempts"] == 1
    assert "public_user_data.user_id" in dead["last_error"]
    for neighbour in (items[1], items[5]):
        row = inbox_row(engine, neighbour.svix_id)
        assert row is not None
        assert (row["status"], row["attempts"], row["last_error"]) == ("applied", 1, None)
    assert redis_client.zcard(LEDGER_DUE_KEY) == len(items), (
        "the pool process leaves the ledger to the main process, which drops the entries with "
        "the acknowledgements"
    )


def test_an_event_the_database_refuses_midway_leaves_nothing_and_its_neighbours_applied(
    runtime: WorkerRuntime,
) -> None:
    """A batch is first applied without a savepoint per event. This membership's organization
    is written before PostgreSQL refuses the membership itself (a user id longer than its
    column): the batch is rolled back and applied again with savepoints, so the event is dead
    with nothing of it kept, and its neighbours are applied once."""
    engine = runtime.engine
    doomed_organization = organization_data("org_doomed", name="Doomed")
    neighbour = organization_data("org_neighbour", name="Neighbour")
    items = [
        item(event("organization.created", neighbour)),
        item(
            event(
                "organizationMembership.created",
                membership_data(doomed_organization, user_id="user_" + "x" * 100),
            )
        ),
        item(event("organizationMembership.created", membership_data(neighbour, user_id="u_1"))),
    ]

    assert process_batch(runtime, items) == ["applied", "dead", "applied"]

    assert org_names(engine) == {"org_neighbour": "Neighbour"}
    dead = inbox_row(engine, items[1].svix_id)
    assert dead is not None
    assert (dead["status"], dead["attempts"]) == ("dead", 1)
    assert "StringDataRightTruncation" in dead["last_error"]
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(webhook_events)) == 3


def test_what_a_refused_event_wrote_is_written_again_by_the_next_event_that_needs_it(
    runtime: WorkerRuntime,
) -> None:
    """A batch remembers the organization versions it wrote and skips writing them again. The
    refused membership wrote its organization before PostgreSQL refused it, and its savepoint
    took that write back: the next membership, nesting the same organization snapshot, must
    write it, not trust what the batch remembered."""
    doomed_organization = organization_data("org_shared", name="Shared")
    items = [
        item(
            event(
                "organizationMembership.created",
                membership_data(doomed_organization, user_id="user_" + "x" * 100),
            )
        ),
        item(
            event(
                "organizationMembership.created",
                membership_data(doomed_organization, user_id="user_fine"),
            )
        ),
    ]

    assert process_batch(runtime, items) == ["dead", "applied"]

    assert org_names(runtime.engine) == {"org_shared": "Shared"}


@contextmanager
def recording_statements(engine: Engine) -> Iterator[list[str]]:
    """The SQL of every statement ``engine`` sends in the block, in order."""
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    sqlalchemy_event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sqlalchemy_event.remove(engine, "before_cursor_execute", record)


def starting(prefix: str, statements: list[str]) -> list[str]:
    return [statement for statement in statements if statement.startswith(prefix)]


def test_a_batch_of_memberships_reads_its_tombstones_and_holders_once(
    runtime: WorkerRuntime,
) -> None:
    """Round trips, not time: a batch of memberships in a few organizations costs a fixed
    number of statements (claim, locks, the roles lock, tombstones, holders, organization
    versions, the members' users rows, the roles and permissions, outcomes), one that writes
    all the organizations (before the memberships that reference them) and one that writes all
    the memberships."""
    engine = runtime.engine
    organizations_in_batch = [organization_data(f"org_{n}", name=f"Org {n}") for n in range(3)]
    items = [
        item(
            event(
                "organizationMembership.created",
                membership_data(organizations_in_batch[n % 3], user_id=f"user_{n}"),
            )
        )
        for n in range(30)
    ]

    with recording_statements(engine) as statements:
        assert set(process_batch(runtime, items)) == {"applied"}

    upserts = starting("INSERT INTO organization_memberships", statements)
    organization_writes = starting("INSERT INTO organizations", statements)
    assert (len(upserts), len(organization_writes)) == (1, 1)
    assert statements.index(organization_writes[0]) < statements.index(upserts[0])
    assert len(statements) <= 11, statements
    with engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(organization_memberships)) == 30


def test_a_batch_writes_only_organization_snapshots_newer_than_the_stored_ones(
    runtime: WorkerRuntime,
) -> None:
    """Each membership event nests its organization, nearly always as stored already: the batch
    reads the stored versions up front and writes only a newer snapshot (once)."""
    stored = organization_data("org_stored", name="Stored")
    renamed = organization_data("org_renamed", name="Before")
    created = [item(event("organization.created", data)) for data in (stored, renamed)]
    assert process_batch(runtime, created) == ["applied", "applied"]
    newer = organization_data("org_renamed", name="After", updated_at=renamed["updated_at"] + 1)
    items = [
        item(
            event(
                "organizationMembership.created",
                membership_data((stored, newer)[n % 2], user_id=f"user_{n}"),
            )
        )
        for n in range(10)
    ]

    with recording_statements(runtime.engine) as statements:
        assert set(process_batch(runtime, items)) == {"applied"}

    organization_writes = starting("INSERT INTO organizations", statements)
    assert len(organization_writes) == 1
    assert org_names(runtime.engine) == {"org_stored": "Stored", "org_renamed": "After"}


def test_a_tombstone_written_in_a_batch_answers_the_batchs_later_lookups(
    runtime: WorkerRuntime,
) -> None:
    """A membership deleted, then a late copy of its creation, in one batch: the creation is
    refused by the tombstone the deletion just wrote, which the batch knows without reading it
    back."""
    organization = organization_data("org_tombstoned", name="Tombstoned")
    membership = membership_data(organization, membership_id="orgmem_gone", user_id="user_gone")
    items = [
        item(event("organizationMembership.deleted", membership)),
        item(event("organizationMembership.created", membership)),
    ]

    with recording_statements(runtime.engine) as statements:
        assert process_batch(runtime, items) == ["applied", "applied"]

    tombstone_reads = [s for s in starting("SELECT", statements) if "tombstones" in s]
    assert len(tombstone_reads) == 1, tombstone_reads
    with runtime.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(organization_memberships)) == 0


def test_a_batchs_user_upserts_are_written_in_one_statement_as_if_one_by_one(
    any_runtime: WorkerRuntime,
) -> None:
    """Four users, two versions each, in any order, one of them deleted between its versions
    and one renamed twice at the same version: one statement writes the users, and the table
    holds what writing each event at once would have left."""
    versions = [
        user_data(f"user_{n}", first_name=f"v{version}", updated_at=BASE_TIME_MS + version)
        for n in range(4)
        for version in (1, 2)
    ]
    tie = user_data("user_3", first_name="same version, later", updated_at=BASE_TIME_MS + 2)
    items = [item(event("user.updated", data)) for data in versions]
    random.Random(3).shuffle(items)
    deletion = event("user.deleted", deleted_user_data("user_0"), timestamp=BASE_TIME_MS + 5)
    items.insert(3, item(deletion))
    items.append(item(event("user.updated", tie)))

    with recording_statements(any_runtime.engine) as statements:
        assert set(process_batch(any_runtime, items)) == {"applied"}

    assert len(starting("INSERT INTO users", statements)) == 1
    users = {row["id"]: row["first_name"] for row in synced_tables(any_runtime.engine)[2]}
    assert users == {"user_1": "v2", "user_2": "v2", "user_3": "v2"}


STORABLE_TEXT = st.text(
    # PostgreSQL's text holds neither NUL nor lone surrogates.
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=12,
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    # Below 1e16: PostgreSQL's jsonb writes a float beyond as an integer (6.2e16 as 62...0).
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15)
    | STORABLE_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(STORABLE_TEXT, inner, max_size=3),
    max_leaves=8,
)
METADATA = st.dictionaries(STORABLE_TEXT, JSON_VALUES, max_size=3)


def test_a_batch_writes_any_text_and_metadata_as_applying_each_event_alone_does(
    any_runtime: WorkerRuntime,
) -> None:
    """Names, e-mail addresses and metadata of any characters, integers beyond 64 bits, floats
    and nesting: a batch's rows (on PostgreSQL, one JSON document per table) and its tombstones
    hold what applying each event in a transaction of its own (one statement per row) leaves,
    and ``synced_at`` is the time of writing."""
    engine = any_runtime.engine

    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(
        texts=st.lists(STORABLE_TEXT, min_size=8, max_size=8),
        metadata=st.lists(METADATA, min_size=3, max_size=3),
    )
    @example(
        texts=['"quoted"', "back\\slash", "{braces}", "ünïcødé ✓ 𝄞", "new\nline", "'", "", "%s"],
        metadata=[
            {"beyond 64 bits": 2**70, "float": 0.1, "nested": [{"a": [None, True]}]},
            {"negative": -(2**65), "tiny": 5e-324},
            {"": "", "emoji": "😀"},
        ],
    )
    def written_alike(texts: list[str], metadata: list[dict[str, Any]]) -> None:
        # A name is required (an empty one makes a poison event): "x" + any text.
        organization = organization_data(
            name="x" + texts[0], slug=texts[1], public_metadata=metadata[0]
        )
        deleted = organization_data(name="x" + texts[2])
        user = user_data(
            first_name=texts[3], last_name=texts[4], username=texts[5], public_metadata=metadata[1]
        )
        member = membership_data(
            organization,
            user_id=user["id"],
            first_name=texts[6],
            identifier=texts[7],
            public_metadata=metadata[2],
        )
        payloads = [
            event("organization.created", organization),
            event("organization.created", deleted),
            event("user.created", user),
            event("organizationMembership.created", member),
            event("organization.deleted", deleted_organization_data(deleted["id"])),
        ]
        events = [describe_event(new_svix_id(), body_of(p), RECEIVED_AT_MS) for p in payloads]

        empty_tables(engine)
        for alone in events:
            assert apply_event(engine, alone, WORKSPACE_KEY) == "applied"
        expected = (synced_tables(engine), tombstone_rows(engine))

        empty_tables(engine)
        before = datetime.now(UTC)
        with recording_statements(engine) as statements:
            results = apply_batch(engine, events, WORKSPACE_KEY)
        after = datetime.now(UTC)
        assert {result.status for result in results.values()} == {"applied"}
        # Written together, not applied again event by event after a failure.
        assert not starting("SAVEPOINT", statements), statements
        for table in (organizations, organization_memberships, users, tombstones):
            assert len(starting(f"INSERT INTO {table.name} ", statements)) == 1, statements
        assert (synced_tables(engine), tombstone_rows(engine)) == expected
        stored_organizations, stored_memberships, stored_users = expected[0]
        assert [(o["name"], o["slug"], o["public_metadata"]) for o in stored_organizations] == [
            ("x" + texts[0], texts[1], metadata[0])
        ]
        assert [(u["first_name"], u["last_name"], u["username"]) for u in stored_users] == [
            (texts[3], texts[4], texts[5])
        ]
        assert stored_users[0]["public_metadata"] == metadata[1]
        # The member's users row gives the profile columns; the event's own stay listed.
        assert [
            (m["first_name"], m["identifier"], m["listed_identifier"]) for m in stored_memberships
        ] == [(texts[3], stored_users[0]["primary_email_address"], texts[7])]
        assert stored_memberships[0]["public_metadata"] == metadata[2]
        with engine.connect() as connection:
            synced = [
                connection.scalar(select(table.c.synced_at).limit(1))
                for table in (organizations, organization_memberships, users, tombstones)
            ]
        for synced_at in synced:
            assert synced_at is not None
            if synced_at.tzinfo is None:  # SQLite keeps no offset; the time is UTC.
                synced_at = synced_at.replace(tzinfo=UTC)
            assert before <= synced_at <= after

    written_alike()


def test_a_batchs_deletions_and_tombstones_are_written_together_as_if_one_by_one(
    any_runtime: WorkerRuntime,
) -> None:
    """Members removed (one of them added again as a new incarnation of the same id, one only
    after its removal arrived), users deleted (one updated after its deletion, which must not
    bring it back), an organization deleted: the batch writes its tombstones in one statement and
    its deletions by key in one statement per kind, and leaves the tables (tombstones included)
    that applying each event in a batch of its own leaves."""
    organization = organization_data("org_del", name="Deletions")
    doomed = organization_data("org_doomed", name="Doomed")
    members = [
        membership_data(organization, membership_id=f"orgmem_{n}", user_id=f"user_{n}")
        for n in range(4)
    ]
    setup = [event("organization.created", organization), event("organization.created", doomed)]
    setup += [event("organizationMembership.created", member) for member in members]
    setup += [event("user.created", user_data(f"user_{n}")) for n in range(4)]
    later = BASE_TIME_MS + 120_000
    again = membership_data(
        organization, membership_id="orgmem_1", user_id="user_1", created_at=later
    )
    removal = {"timestamp": later - 1}
    batch = [
        event("organizationMembership.deleted", members[0], **removal),
        event("organizationMembership.created", again),
        event("organizationMembership.deleted", members[1], **removal),
        event("user.deleted", deleted_user_data("user_2"), timestamp=later),
        event("user.updated", user_data("user_2", first_name="Late"), timestamp=later + 1),
        event("user.deleted", deleted_user_data("user_3"), timestamp=later),
        event("organization.deleted", deleted_organization_data("org_doomed"), timestamp=later),
    ]

    def tables() -> tuple[Any, ...]:
        tombstones = sorted(
            (row["entity_type"], row["entity_id"], row["created_at"], row["deleted_at"])
            for row in tombstone_rows(any_runtime.engine)
        )
        return (*synced_tables(any_runtime.engine), tombstones)

    process_batch(any_runtime, [item(payload) for payload in setup])
    for payload in batch:
        assert process_batch(any_runtime, [item(payload)]) == ["applied"]
    one_by_one = tables()
    empty_tables(any_runtime.engine)
    process_batch(any_runtime, [item(payload) for payload in setup])
    with recording_statements(any_runtime.engine) as statements:
        assert set(process_batch(any_runtime, [item(payload) for payload in batch])) == {"applied"}

    assert tables() == one_by_one
    assert [row["id"] for row in one_by_one[1]] == ["orgmem_1"], "the new incarnation stays"
    assert len(starting("INSERT INTO tombstones", statements)) == 1, statements
    assert len(starting("DELETE FROM users", statements)) == 1, statements
    assert len(starting("DELETE FROM organizations", statements)) == 1, statements
    membership_deletions = starting("DELETE FROM organization_memberships", statements)
    by_id = [statement for statement in membership_deletions if ".id =" in statement]
    assert len(by_id) == 1, statements
    assert not [s for s in statements if s.startswith("SAVEPOINT")], statements


def test_a_membership_replacing_a_queued_one_supersedes_it_without_savepoints(
    runtime: WorkerRuntime,
) -> None:
    """A user added, then (the removal lost) added again under a new membership id, in one
    batch: the first membership is still queued when the second looks for the pair's holder,
    so the queue is written first and the second supersedes it, all in the batch's first
    attempt (no event needed a savepoint of its own)."""
    organization = organization_data("org_readded", name="Readded")
    first = membership_data(organization, membership_id="orgmem_first", user_id="user_back")
    second = membership_data(
        organization,
        membership_id="orgmem_second",
        user_id="user_back",
        created_at=first["created_at"] + 1,
    )
    items = [item(event("organizationMembership.created", data)) for data in (first, second)]

    with recording_statements(runtime.engine) as statements:
        assert process_batch(runtime, items) == ["applied", "applied"]

    assert not [s for s in statements if s.startswith("SAVEPOINT")], statements
    assert [row["id"] for row in synced_tables(runtime.engine)[1]] == ["orgmem_second"]


def test_deleting_an_organization_or_a_user_removes_their_queued_memberships(
    runtime: WorkerRuntime,
) -> None:
    """Memberships queued earlier in the batch, then their organization (or user) deleted: the
    queue is written before the deletion, which removes them as it would have, and the batch
    needs no second attempt."""
    doomed = organization_data("org_doomed", name="Doomed")
    kept = organization_data("org_kept", name="Kept")
    payloads = [
        event("organizationMembership.created", membership_data(doomed, user_id="user_a")),
        event("organizationMembership.created", membership_data(kept, user_id="user_gone")),
        event("organizationMembership.created", membership_data(kept, user_id="user_b")),
        event("organization.deleted", deleted_organization_data("org_doomed")),
        event("user.deleted", deleted_user_data("user_gone")),
    ]

    with recording_statements(runtime.engine) as statements:
        assert set(process_batch(runtime, [item(p) for p in payloads])) == {"applied"}

    assert not [s for s in statements if s.startswith("SAVEPOINT")], statements
    members = [(row["organization_id"], row["user_id"]) for row in synced_tables(runtime.engine)[1]]
    assert members == [("org_kept", "user_b")]


def test_a_queued_row_moving_a_membership_is_written_before_its_old_user_is_deleted(
    any_runtime: WorkerRuntime,
) -> None:
    """Not something Clerk sends: an older version of a stored membership that names another
    user, then the stored user deleted. Written one event at a time, the stale row changes
    nothing and the deletion removes the membership; the batch, which writes its queue before
    the deletion, ends the same."""
    organization = organization_data("org_move", name="Move")
    stored = membership_data(
        organization, membership_id="orgmem_move", user_id="user_a", updated_at=BASE_TIME_MS + 9
    )
    stale = membership_data(
        organization, membership_id="orgmem_move", user_id="user_b", updated_at=BASE_TIME_MS + 5
    )
    setup = [event("organizationMembership.created", stored)]
    batch = [
        event("organizationMembership.updated", stale),
        event("user.deleted", deleted_user_data("user_a"), timestamp=BASE_TIME_MS + 10),
    ]

    process_batch(any_runtime, [item(payload) for payload in setup])
    for payload in batch:
        assert process_batch(any_runtime, [item(payload)]) == ["applied"]
    one_by_one = synced_tables(any_runtime.engine)
    empty_tables(any_runtime.engine)
    process_batch(any_runtime, [item(payload) for payload in setup])
    assert set(process_batch(any_runtime, [item(payload) for payload in batch])) == {"applied"}

    assert synced_tables(any_runtime.engine) == one_by_one
    assert one_by_one[1] == [], "the stale row moved nothing; the deletion removed it"


def test_a_batchs_organizations_are_written_together_before_their_memberships(
    runtime: WorkerRuntime,
) -> None:
    """Organization upserts are queued too: several versions of one organization (one of them
    stale), others created, one created and deleted again, with memberships in them, in one
    batch: one statement writes the organizations, before the one writing the memberships that
    reference them (the foreign key), the deleted organization's queued row is dropped, and the
    tables are those of applying the events one by one, in the batch's first attempt."""
    versions = [
        organization_data("org_versions", name=f"Version {n}", updated_at=BASE_TIME_MS + n)
        for n in (1, 3, 2)
    ]
    other = organization_data("org_other", name="Other")
    doomed = organization_data("org_doomed", name="Doomed")
    payloads = [
        event("organization.created", versions[0]),
        event("organization.updated", versions[1]),
        event("organizationMembership.created", membership_data(versions[2], user_id="user_a")),
        event("organization.updated", versions[2]),
        event("organization.created", other),
        event("organizationMembership.created", membership_data(other, user_id="user_b")),
        event("organization.created", doomed),
        event("organizationMembership.created", membership_data(doomed, user_id="user_c")),
        event("organization.deleted", deleted_organization_data("org_doomed")),
    ]

    with recording_statements(runtime.engine) as statements:
        assert set(process_batch(runtime, [item(p) for p in payloads])) == {"applied"}

    assert not [s for s in statements if s.startswith("SAVEPOINT")], statements
    organization_writes = starting("INSERT INTO organizations", statements)
    membership_writes = starting("INSERT INTO organization_memberships", statements)
    assert len(organization_writes) == 1, statements
    assert statements.index(organization_writes[-1]) < statements.index(membership_writes[-1])
    assert org_names(runtime.engine) == {"org_versions": "Version 3", "org_other": "Other"}
    members = [(row["organization_id"], row["user_id"]) for row in synced_tables(runtime.engine)[1]]
    assert sorted(members) == [("org_other", "user_b"), ("org_versions", "user_a")]

    # With no membership queued, the deletion drops the organization's queued row itself.
    alone = organization_data("org_alone", name="Alone")
    payloads = [
        event("organization.created", alone),
        event("organization.deleted", deleted_organization_data("org_alone")),
    ]
    assert process_batch(runtime, [item(p) for p in payloads]) == ["applied", "applied"]
    assert "org_alone" not in org_names(runtime.engine)


def test_a_failing_write_of_a_batchs_users_isolates_the_event_that_caused_it(
    runtime: WorkerRuntime,
) -> None:
    """PostgreSQL refuses one user's row (its id is too long for the column) when the batch
    writes its users together: the batch is applied again event by event, in savepoints, and
    only that event is dead."""
    fine = item(event("user.created", user_data("user_fine")))
    doomed = item(event("user.created", user_data("user_" + "x" * 100)))
    other = item(event("organization.created", organization_data("org_beside")))

    assert process_batch(runtime, [fine, doomed, other]) == ["applied", "dead", "applied"]

    assert [row["id"] for row in synced_tables(runtime.engine)[2]] == ["user_fine"]
    assert org_names(runtime.engine) == {"org_beside": "Acme Test Org"}
    row = inbox_row(runtime.engine, doomed.svix_id)
    assert row is not None
    assert "StringDataRightTruncation" in row["last_error"]


def test_without_waiting_for_locks_a_batch_defers_only_the_events_whose_locks_are_taken(
    pg_engine: Engine,
) -> None:
    """Another transaction holds one organization's lock (a concurrent batch, a rebuild page):
    a batch that does not wait applies the rest, and leaves that organization's events recorded
    but untouched for a later batch, which applies them once the lock is free."""
    busy = organization_data("org_busy", name="Busy")
    free = organization_data("org_free", name="Free")
    events = [
        describe_event(new_svix_id(), body_of(payload), RECEIVED_AT_MS)
        for payload in (
            event("organization.created", busy),
            event("organizationMembership.created", membership_data(busy, user_id="user_1")),
            event("organization.created", free),
            event("organizationMembership.created", membership_data(free, user_id="user_1")),
        )
    ]
    with pg_engine.connect() as holder, holder.begin():
        lock_organization(holder, "org_busy")
        results = apply_batch(pg_engine, events, WORKSPACE_KEY, wait_for_locks=False)
        assert [results[e.svix_id].status for e in events] == [
            "deferred",
            "deferred",
            "applied",
            "applied",
        ]
        assert org_names(pg_engine) == {"org_free": "Free"}
        for deferred in events[:2]:
            row = inbox_row(pg_engine, deferred.svix_id)
            assert row is not None
            assert (row["status"], row["attempts"], row["processed_at"]) == ("received", 0, None)

    results = apply_batch(pg_engine, events[:2], WORKSPACE_KEY, wait_for_locks=False)

    assert [results[e.svix_id].status for e in events[:2]] == ["applied", "applied"]
    assert org_names(pg_engine) == {"org_busy": "Busy", "org_free": "Free"}


def test_a_deferred_event_whose_row_was_there_already_keeps_it_as_it_was(pg_engine: Engine) -> None:
    """A dead-lettered event delivered again (a replay) whose organization another batch holds
    is deferred: its row still says ``dead``, with its attempts and error, until a batch applies
    it. (New rows are written ``applied`` up front and made ``received`` when deferred.)"""
    incoming = describe_event(
        new_svix_id(),
        body_of(event("organization.created", organization_data("org_replayed"))),
        RECEIVED_AT_MS,
    )
    dead_letter(pg_engine, incoming, RuntimeError("gave up"))
    before = inbox_row(pg_engine, incoming.svix_id)
    assert before is not None
    assert before["status"] == "dead"

    with pg_engine.connect() as holder, holder.begin():
        lock_organization(holder, "org_replayed")
        results = apply_batch(pg_engine, [incoming], WORKSPACE_KEY, wait_for_locks=False)
        assert results[incoming.svix_id].status == "deferred"
        assert inbox_row(pg_engine, incoming.svix_id) == before

    results = apply_batch(pg_engine, [incoming], WORKSPACE_KEY)
    assert results[incoming.svix_id].status == "applied"
    after = inbox_row(pg_engine, incoming.svix_id)
    assert after is not None
    assert (after["status"], after["attempts"], after["last_error"]) == (
        "applied",
        before["attempts"] + 1,
        None,
    )


def test_a_batch_of_new_events_writes_each_inbox_row_once(any_runtime: WorkerRuntime) -> None:
    """New events that are all applied: their rows are inserted ``applied`` (one attempt, the
    time of processing), with no UPDATE after; a later copy is a duplicate. One event of the
    batch ending otherwise (skipped) costs one UPDATE, of its own row only."""
    engine = any_runtime.engine
    applied = [
        item(event("organization.created", organization_data(f"org_once_{n}"))) for n in range(3)
    ]
    before = datetime.now(UTC)
    with recording_statements(engine) as statements:
        assert process_batch(any_runtime, applied) == ["applied"] * 3
    after = datetime.now(UTC)

    # One statement inserts the rows (on PostgreSQL with their ids, webhook_event_ids, in a
    # WITH clause; SQLite claims the ids in a statement of its own first).
    inserting = [
        statement for statement in statements if "INSERT INTO webhook_events " in statement
    ]
    assert len(inserting) == 1, statements
    assert not starting("UPDATE", statements), statements
    for applied_item in applied:
        row = inbox_row(engine, applied_item.svix_id)
        assert row is not None
        assert (row["status"], row["attempts"], row["last_error"]) == ("applied", 1, None)
        processed_at = row["processed_at"]
        if processed_at.tzinfo is None:  # SQLite keeps no offset; the time is UTC.
            processed_at = processed_at.replace(tzinfo=UTC)
        assert before <= processed_at <= after
    assert process_batch(any_runtime, applied[:1]) == ["applied"]

    skipped = item(event("session.created", {"object": "session", "id": "sess_once"}))
    neighbour = item(event("organization.created", organization_data("org_once_next")))
    with recording_statements(engine) as statements:
        assert process_batch(any_runtime, [skipped, neighbour]) == ["skipped", "applied"]
    assert len(starting("UPDATE", statements)) == 1, statements
    row = inbox_row(engine, skipped.svix_id)
    assert row is not None
    assert (row["status"], row["attempts"]) == ("skipped", 1)


def test_duplicates_within_a_batch_and_of_earlier_deliveries_are_applied_once(
    any_runtime: WorkerRuntime,
) -> None:
    engine = any_runtime.engine
    earlier = item(event("organization.created", organization_data("org_old", name="Old")))
    assert process_batch(any_runtime, [earlier]) == ["applied"]
    renamed = organization_data("org_old", name="Renamed", updated_at=10**13)
    new = item(event("organization.created", organization_data("org_new", name="New")))
    copy_of_new = replace(new, task_id=uuid.uuid4().hex)
    # Another body under the earlier event's svix id (Svix never sends one) must not apply.
    earlier_again = item(event("organization.updated", renamed), svix_id=earlier.svix_id)

    outcomes = process_batch(any_runtime, [new, earlier_again, copy_of_new, new])

    # The other body under the earlier svix id is recorded as a conflict, never applied.
    assert outcomes == ["applied", "conflict", "applied", "applied"]
    assert org_names(engine) == {"org_old": "Old", "org_new": "New"}
    with engine.connect() as connection:
        conflicts = connection.execute(
            select(webhook_events.c.status).where(webhook_events.c.conflict_of == earlier.svix_id)
        ).all()
    assert [row.status for row in conflicts] == ["conflict"]
    for svix_id in (new.svix_id, earlier.svix_id):
        row = inbox_row(engine, svix_id)
        assert row is not None
        assert (row["status"], row["attempts"]) == ("applied", 1)


def test_a_shuffled_batch_of_one_organizations_history_converges(
    any_runtime: WorkerRuntime,
) -> None:
    """Every version of one organization and its members, with a member removed and re-added
    and the organization finally deleted, in one shuffled batch: the same tables as in-order
    application, which here means everything gone and tombstoned."""
    history = ClerkHistory(organization_slots=1, user_count=4)
    history.create_organization(with_creator=True)
    organization_id = next(iter(history.organizations))
    for step in range(40):
        history.perform(step % 6, step, step * 7, 1 + step % 3)
    survivor = history.expected_state()
    rng = random.Random(7)
    events = list(history.events)
    rng.shuffle(events)

    outcomes = process_batch(any_runtime, deliveries_as_items(events))

    assert set(outcomes) == {"applied"}
    assert synced_tables(any_runtime.engine) == survivor
    assert [row["id"] for row in survivor[0]] == [organization_id]

    history.clock += 1
    history.delete_organization(organization_id, member_events=True)
    rng.shuffle(history.events)
    empty_tables(any_runtime.engine)
    assert set(process_batch(any_runtime, deliveries_as_items(history.events))) == {"applied"}
    assert synced_tables(any_runtime.engine) == history.expected_state()
    assert history.expected_state()[0] == []


KINDS = st.sampled_from([0, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 5, 5, 6, 7, 8])
ACTION = st.tuples(
    KINDS,
    st.integers(min_value=0, max_value=11),
    st.integers(min_value=0, max_value=59),
    st.sampled_from([1, 1, 2, 1000, 60_000]),
)


def test_any_order_cut_into_any_batches_converges(
    any_runtime: WorkerRuntime, redis_client: redis.Redis[bytes]
) -> None:
    """The property of ``tests/models/test_convergence.py`` for batches: shuffled deliveries with
    duplicates (same svix id, or the same body under a second one), cut into batches of random
    sizes, end in the tables of in-order application."""

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(data=st.data(), actions=st.lists(ACTION, min_size=1, max_size=30))
    def converges(data: Any, actions: list[tuple[int, int, int, int]]) -> None:
        history = ClerkHistory(organization_slots=3, user_count=3)
        for action in actions:
            history.perform(*action)
        sent = list(history.events)
        for original in history.events:
            if data.draw(st.integers(min_value=0, max_value=4)) == 0:
                sent.append(original)
            if data.draw(st.integers(min_value=0, max_value=6)) == 0:
                sent.append(Delivery(f"{original.svix_id}_again", original.body, original.label))
        sent = data.draw(st.permutations(sent))
        empty_tables(any_runtime.engine)
        position = 0
        while position < len(sent):
            size = data.draw(st.integers(min_value=1, max_value=12), label="batch size")
            batch = deliveries_as_items(sent[position : position + size])
            note(f"batch: {[b.svix_id for b in batch]}")
            assert set(process_batch(any_runtime, batch)) == {"applied"}
            position += size
        assert synced_tables(any_runtime.engine) == history.expected_state()

    converges()


@pytest.mark.slow
def test_concurrent_batches_over_the_same_organizations_do_not_deadlock(
    pg_engine: Engine,
) -> None:
    """Two connections apply batches touching the same organizations and users in opposite
    orders, without any retry: the locks taken up front, in one global order, make them wait
    for each other instead of deadlocking. The tables still converge."""
    history = ClerkHistory(organization_slots=6, user_count=8)
    for creator in range(6):
        history.create_organization(with_creator=True, creator=creator)
        history.clock += 1
    rng = random.Random(3)
    for _ in range(300):
        history.perform(rng.choice([1, 2, 2, 3, 3, 5, 7]), rng.randrange(12), rng.randrange(60), 1)
    events = [describe_event(d.svix_id, d.body, RECEIVED_AT_MS) for d in history.events]
    halves = [events[0::2], events[1::2]]
    failures: list[BaseException] = []

    def apply_in_batches(mine: list[Any], reverse: bool) -> None:
        ordered = list(reversed(mine)) if reverse else mine
        try:
            for start in range(0, len(ordered), 25):
                apply_batch(pg_engine, ordered[start : start + 25], WORKSPACE_KEY)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            failures.append(error)

    threads = [
        threading.Thread(target=apply_in_batches, args=(half, index == 1))
        for index, half in enumerate(halves)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    assert synced_tables(pg_engine) == history.expected_state()


# -- real workers -------------------------------------------------------------------------------


def shuffled_history(events: int, seed: int) -> ClerkHistory:
    """At least ``events`` events over a dozen organizations and users, everyday changes mostly,
    deletions of organizations and users rare."""
    rng = random.Random(seed)
    history = ClerkHistory(organization_slots=12, user_count=10)
    kinds = [0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 5, 5, 7, 7] * 30 + [6, 8]
    while len(history.events) < events:
        history.perform(rng.choice(kinds), rng.randrange(12), rng.randrange(60), rng.choice([1, 2]))
    return history


@pytest.mark.worker
@pytest.mark.slow
def test_a_worker_with_two_processes_applies_a_shuffled_2000_event_history(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    start_worker: Any,
) -> None:
    history = shuffled_history(2000, seed=11)
    rng = random.Random(11)
    sent = list(history.events) + rng.sample(history.events, 200)
    rng.shuffle(sent)
    publisher = Publisher(settings)
    published: set[str] = set()
    for delivery in sent:
        queued = QueuedEvent(delivery.svix_id, delivery.body, RECEIVED_AT_MS)
        if delivery.svix_id in published:
            # A copy the ingress would not queue again: as a redelivery by Redis would be.
            publisher.send(queued)
        else:
            publisher.publish(queued)
            published.add(delivery.svix_id)
    assert queue_length(redis_client, settings.queue_name) == len(sent)

    worker = start_worker(settings, concurrency=2)

    def statuses() -> dict[str, int]:
        with pg_engine.connect() as connection:
            return dict(
                connection.execute(
                    select(webhook_events.c.status, func.count()).group_by(webhook_events.c.status)
                ).all()
            )

    wait_for(lambda: statuses().get("applied") == len(history.events), 180, interval=0.5)
    wait_for(lambda: queue_length(redis_client, settings.queue_name) == 0, 30)
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 30)
    wait_for(lambda: redis_client.hlen("unacked") == 0, 30)
    assert redis_client.zcard("unacked_index") == 0
    assert statuses() == {"applied": len(history.events)}
    assert synced_tables(pg_engine) == history.expected_state()
    assert history.expected_state()[1], "the history leaves live memberships to compare"
    log = worker.log()
    # One task per event would have Celery log each one's result; the batches log none.
    assert "succeeded in" not in log
    assert "Traceback" not in log
    # Each batch logs one line naming its events by outcome: every event is applied in one.
    batch_lines = [
        json.loads(line) for line in log.splitlines() if '"event": "batch processed"' in line
    ]
    applied = [svix_id for line in batch_lines for svix_id in line["svix_ids"].get("applied", [])]
    assert sorted(applied) == sorted(delivery.svix_id for delivery in history.events)
    with pg_engine.connect() as connection:
        attempts = set(connection.execute(select(webhook_events.c.attempts)).scalars())
    assert attempts == {1}
    # Batches are written to a pool process while it still applies the previous one.
    assert pool_writes(settings)["strategy"] == "fcfs"


def pool_writes(settings: Settings) -> dict[str, Any]:
    """The prefork pool's write statistics of the one running worker, from ``inspect stats``."""
    stats = create_celery_app(settings).control.inspect(timeout=5).stats()
    assert stats is not None
    assert len(stats) == 1, stats
    (worker_stats,) = stats.values()
    return worker_stats["pool"]["writes"]  # type: ignore[no-any-return]


@pytest.mark.worker
def test_events_deferred_behind_a_held_lock_are_applied_once_it_is_released(
    settings: Settings, pg_engine: Engine, redis_client: redis.Redis[bytes], start_worker: Any
) -> None:
    """A batch defers the events whose organization lock another transaction holds, and after
    a few deferrals waits for the lock instead: the held organization's events are applied as
    soon as it is released, the others without waiting for it, each exactly once."""
    publisher = Publisher(settings)
    held = organization_data("org_held", name="Held")
    payloads = [event("organization.created", held)] + [
        event("organizationMembership.created", membership_data(held, user_id=f"user_{n}"))
        for n in range(5)
    ]
    others = [event("organization.created", organization_data(f"org_{n}")) for n in range(20)]
    held_ids = [new_svix_id() for _ in payloads]
    other_ids = [new_svix_id() for _ in others]
    with pg_engine.connect() as holder, holder.begin():
        lock_organization(holder, "org_held")
        for svix_id, payload in zip(held_ids + other_ids, payloads + others, strict=True):
            publisher.publish(QueuedEvent(svix_id, body_of(payload), RECEIVED_AT_MS))
        start_worker(settings, concurrency=2)
        for svix_id in other_ids:
            wait_for(
                lambda svix_id=svix_id: (
                    (row := inbox_row(pg_engine, svix_id)) and row["status"] == "applied"
                ),
                30,
            )
        assert all(
            (row := inbox_row(pg_engine, svix_id)) is None or row["status"] == "received"
            for svix_id in held_ids
        )
        released = time.monotonic()
    for svix_id in held_ids:
        wait_for(
            lambda svix_id=svix_id: (
                (row := inbox_row(pg_engine, svix_id)) and row["status"] == "applied"
            ),
            30,
        )
    assert time.monotonic() - released < 10
    with pg_engine.connect() as connection:
        attempts = set(connection.execute(select(webhook_events.c.attempts)).scalars())
        members = connection.scalar(select(func.count()).select_from(organization_memberships))
    assert (attempts, members) == ({1}, 5)
    wait_for(lambda: redis_client.hlen("unacked") == 0, 30)
    assert queue_length(redis_client, settings.queue_name) == 0


@pytest.mark.worker
def test_without_batching_the_worker_runs_one_task_per_event(
    settings: Settings, pg_engine: Engine, start_worker: Any
) -> None:
    """``CLERK_SYNC_BATCH_SIZE=1``: Celery's own strategy, one task per message, as before."""
    settings = replace(settings, batch_size=1)
    publisher = Publisher(settings)
    ids = [new_svix_id() for _ in range(3)]
    for number, svix_id in enumerate(ids):
        body = body_of(event("organization.created", organization_data(f"org_{number}")))
        publisher.publish(QueuedEvent(svix_id, body, RECEIVED_AT_MS))
    worker = start_worker(settings, concurrency=1)
    for svix_id in ids:
        wait_for(
            lambda svix_id=svix_id: (
                (row := inbox_row(pg_engine, svix_id)) and row["status"] == "applied"
            )
        )
    wait_for(lambda: worker.log().count("succeeded in") == 3)
    assert pool_writes(settings)["strategy"] == "fair"


# -- settings -----------------------------------------------------------------------------------


def test_batch_settings_come_from_the_environment() -> None:
    defaults = Settings.from_env({})
    assert (defaults.batch_size, defaults.batch_flush_interval_ms) == (100, 50)
    assert prefetch_multiplier(defaults) == 200
    custom = Settings.from_env(
        {"CLERK_SYNC_BATCH_SIZE": "20", "CLERK_SYNC_BATCH_FLUSH_INTERVAL_MS": "5"}
    )
    assert (custom.batch_size, custom.batch_flush_interval_seconds) == (20, 0.005)
    assert prefetch_multiplier(custom) == 40
    assert prefetch_multiplier(Settings.from_env({"CLERK_SYNC_BATCH_SIZE": "1"})) == 1
    assert prefetch_multiplier(replace(defaults, broker_url="filesystem://")) == 1
    for env, variable in (
        ({"CLERK_SYNC_BATCH_SIZE": "0"}, "CLERK_SYNC_BATCH_SIZE"),
        ({"CLERK_SYNC_BATCH_SIZE": "many"}, "CLERK_SYNC_BATCH_SIZE"),
        ({"CLERK_SYNC_BATCH_FLUSH_INTERVAL_MS": "0"}, "CLERK_SYNC_BATCH_FLUSH_INTERVAL_MS"),
        (
            {
                "CLERK_SYNC_BATCH_FLUSH_INTERVAL_MS": "40000",
                "CLERK_SYNC_VISIBILITY_TIMEOUT_SECONDS": "300",
            },
            "CLERK_SYNC_BATCH_FLUSH_INTERVAL_MS",
        ),
    ):
        with pytest.raises(SettingsError) as raised:
            Settings.from_env(env)
        assert variable in str(raised.value)
