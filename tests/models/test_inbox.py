"""The inbox (``webhook_events``): what ``describe_event`` + ``apply_event`` record per svix id."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, delete
from sqlalchemy.exc import DBAPIError, OperationalError

from models.claims import claim_events
from models.database import is_transient
from models.events import APPLIED, Outcome, finish_events
from models.tables import organizations, webhook_events
from tests.factories import (
    BASE_TIME_MS,
    body_of,
    event,
    membership_data,
    new_svix_id,
    organization_data,
)
from tests.models.support import (
    RECEIVED_AT_MS,
    WORKSPACE_KEY,
    deliver,
    inbox_row,
    membership_rows,
    organization_rows,
    tombstone_rows,
)
from workers.processing import (
    apply_event,
    dead_letter,
    describe_event,
    record_retry,
)
from workers.retries import IN_PROCESS_ATTEMPTS


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def test_applied_event_is_recorded_with_its_outcome(engine: Engine) -> None:
    svix_id = new_svix_id()
    body = body_of(event("organization.created", organization_data("org_1")))
    before = datetime.now(UTC)

    assert deliver(engine, body, svix_id=svix_id) == "applied"

    row = inbox_row(engine, svix_id)
    assert row is not None
    assert row["event_type"] == "organization.created"
    assert row["status"] == "applied"
    assert row["attempts"] == 1
    assert row["last_error"] is None
    assert row["payload"] == body
    assert row["event_timestamp"] == BASE_TIME_MS
    assert as_utc(row["received_at"]) == datetime.fromtimestamp(RECEIVED_AT_MS / 1000, UTC)
    processed_at = as_utc(row["processed_at"])
    assert processed_at is not None
    assert processed_at >= before.replace(microsecond=0)
    assert [org["id"] for org in organization_rows(engine)] == ["org_1"]


def test_duplicate_of_an_applied_event_is_a_no_op(engine: Engine) -> None:
    svix_id = new_svix_id()
    body = body_of(event("organization.created", organization_data("org_1")))
    deliver(engine, body, svix_id=svix_id)
    first = inbox_row(engine, svix_id)
    # Make a re-application visible: were the duplicate applied again, the row would come back.
    with engine.begin() as connection:
        connection.execute(delete(organizations))

    assert deliver(engine, body, svix_id=svix_id) == "applied"

    assert organization_rows(engine) == []
    assert inbox_row(engine, svix_id) == first


def test_same_payload_under_a_new_svix_id_is_a_new_event(engine: Engine) -> None:
    body = body_of(event("organization.created", organization_data("org_1")))
    first, second = new_svix_id(), new_svix_id()

    assert deliver(engine, body, svix_id=first) == "applied"
    assert deliver(engine, body, svix_id=second) == "applied"

    assert [org["id"] for org in organization_rows(engine)] == ["org_1"]
    for svix_id in (first, second):
        row = inbox_row(engine, svix_id)
        assert row is not None
        assert (row["status"], row["attempts"]) == ("applied", 1)


def test_unknown_event_type_is_skipped(engine: Engine) -> None:
    svix_id = new_svix_id()
    body = body_of(event("session.created", {"id": "sess_1", "object": "session"}))

    assert deliver(engine, body, svix_id=svix_id) == "skipped"
    assert deliver(engine, body, svix_id=svix_id) == "skipped"

    row = inbox_row(engine, svix_id)
    assert row is not None
    assert row["event_type"] == "session.created"
    assert row["status"] == "skipped"
    assert row["attempts"] == 1
    assert "session.created" in row["last_error"]
    assert row["processed_at"] is not None
    assert organization_rows(engine) == []


def test_overlong_event_type_is_cut_to_the_column_size(engine: Engine) -> None:
    svix_id = new_svix_id()
    event_type = "organization." + "x" * 300

    assert deliver(engine, event(event_type, {"id": "org_1"}), svix_id=svix_id) == "skipped"

    row = inbox_row(engine, svix_id)
    assert row is not None
    assert row["event_type"] == event_type[:128]


def _without_user_id() -> dict[str, Any]:
    data = membership_data(organization_data("org_1"))
    del data["public_user_data"]["user_id"]
    return event("organizationMembership.created", data)


def _without(key: str, event_type: str = "organizationMembership.created") -> dict[str, Any]:
    data = membership_data(organization_data("org_1"))
    del data[key]
    return event(event_type, data)


def _organization_without(key: str) -> dict[str, Any]:
    data = organization_data("org_1")
    del data[key]
    return event("organization.created", data)


def _deleted_without_timestamp() -> dict[str, Any]:
    payload = event("organization.deleted", {"id": "org_1", "object": "organization"})
    del payload["timestamp"]
    return payload


def _organization_snapshot_without_name() -> dict[str, Any]:
    organization = organization_data("org_1")
    del organization["name"]
    return event("organizationMembership.created", membership_data(organization))


POISON: dict[str, tuple[str | dict[str, Any], str]] = {
    "not JSON": ("{this is not json", "JSONDecodeError"),
    "JSON array": ("[1, 2, 3]", "not a JSON object"),
    "JSON string": ('"organization.created"', "not a JSON object"),
    "no type": (json.dumps({"data": organization_data("org_1")}), "'type'"),
    "membership without user_id": (_without_user_id(), "public_user_data.user_id"),
    "membership without public_user_data": (
        _without("public_user_data"),
        "data.public_user_data",
    ),
    "membership without organization": (_without("organization"), "data.organization"),
    "membership without id": (_without("id"), "data.id"),
    "membership without created_at": (_without("created_at"), "data.created_at"),
    "deleted membership without organization": (
        _without("organization", "organizationMembership.deleted"),
        "data.organization",
    ),
    "organization snapshot without name": (
        _organization_snapshot_without_name(),
        "data.organization.name",
    ),
    "organization without id": (_organization_without("id"), "data.id"),
    "organization without updated_at": (_organization_without("updated_at"), "data.updated_at"),
    "organization with text updated_at": (
        event("organization.updated", organization_data("org_1", updated_at="yesterday")),
        "data.updated_at",
    ),
    "organization with null data": (
        {"type": "organization.created", "data": None, "timestamp": BASE_TIME_MS},
        "data.id",
    ),
    "deleted organization without id": (
        event("organization.deleted", {"object": "organization", "deleted": True}),
        "data.id",
    ),
    "deleted organization without envelope timestamp": (
        _deleted_without_timestamp(),
        "timestamp",
    ),
}


@pytest.mark.parametrize("case", sorted(POISON))
def test_poison_is_dead_at_once_with_its_error(engine: Engine, case: str) -> None:
    payload, error_fragment = POISON[case]
    body = payload if isinstance(payload, str) else body_of(payload)
    svix_id = new_svix_id()

    assert deliver(engine, body, svix_id=svix_id) == "dead"

    row = inbox_row(engine, svix_id)
    assert row is not None
    assert row["status"] == "dead"
    assert row["attempts"] == 1
    assert error_fragment in row["last_error"]
    assert row["payload"] == body
    assert row["processed_at"] is not None
    assert organization_rows(engine) == []
    assert membership_rows(engine) == []
    assert tombstone_rows(engine) == []


def test_failed_mutation_rolls_back_alone_and_is_dead(engine: Engine) -> None:
    """The organization snapshot is written before the membership, whose timestamp overflows
    the column: the savepoint must undo the organization too, and the event still be recorded."""
    data = membership_data(organization_data("org_1"), created_at=2**63, updated_at=2**63)
    payload = event("organizationMembership.created", data, timestamp=BASE_TIME_MS)
    svix_id = new_svix_id()

    assert deliver(engine, payload, svix_id=svix_id) == "dead"

    row = inbox_row(engine, svix_id)
    assert row is not None
    assert row["status"] == "dead"
    assert "Traceback" in row["last_error"]
    assert organization_rows(engine) == []
    assert membership_rows(engine) == []


@pytest.mark.parametrize(
    ("event_type", "outcome"),
    [("organization.created", "applied"), ("organization.deleted", "dead")],
)
def test_envelope_timestamp_too_large_for_the_inbox_is_not_stored(
    engine: Engine, event_type: str, outcome: str
) -> None:
    """The inbox row must always be writable: an envelope time that does not fit BIGINT is left
    out, and the event runs its course (a deletion needs that time, so it is dead)."""
    data = organization_data("org_1") if outcome == "applied" else {"id": "org_1"}
    svix_id = new_svix_id()

    assert deliver(engine, event(event_type, data, timestamp=2**63), svix_id=svix_id) == outcome

    row = inbox_row(engine, svix_id)
    assert row is not None
    assert (row["status"], row["event_timestamp"], row["attempts"]) == (outcome, None, 1)
    assert len(organization_rows(engine)) == (1 if outcome == "applied" else 0)


def test_dead_event_gets_another_chance_when_replayed(engine: Engine) -> None:
    svix_id = new_svix_id()
    body = body_of(_without_user_id())

    assert deliver(engine, body, svix_id=svix_id) == "dead"
    assert deliver(engine, body, svix_id=svix_id) == "dead"
    assert deliver(engine, body, svix_id=svix_id) == "dead"

    row = inbox_row(engine, svix_id)
    assert row is not None
    assert row["attempts"] == 3


def test_payload_is_stored_byte_for_byte(engine: Engine) -> None:
    data = organization_data("org_1", name="Ærøskøbing — 東京 🚀", slug=None)
    body = (
        '{\n  "type" : "organization.created",\t"timestamp": 1767225600000 ,\n'
        '  "data": ' + json.dumps(data, ensure_ascii=False, indent=3) + ",\n"
        '  "note": "esc\\u00e9ped \\"quotes\\" and \\\\ back\\/slash",\n'
        '  "ordered": {"z": 1, "a": 2, "z2": 1.50}\n}\n'
    )
    svix_id = new_svix_id()

    assert deliver(engine, body, svix_id=svix_id) == "applied"

    row = inbox_row(engine, svix_id)
    assert row is not None
    assert row["payload"] == body
    assert row["payload"].encode() == body.encode()
    assert organization_rows(engine)[0]["name"] == "Ærøskøbing — 東京 🚀"


@pytest.mark.parametrize(
    ("timestamp", "stored"),
    [
        (1_767_225_600, 1_767_225_600_000),
        (999_999_999_999, 999_999_999_999_000),
        (1_000_000_000_000, 1_000_000_000_000),
        (1_767_225_600_123, 1_767_225_600_123),
        ("1767225600", None),
        (True, None),
        (1.7e12, None),
        (None, None),
        (2**63 - 1, 2**63 - 1),
        (2**63, None),
    ],
)
def test_event_timestamp_is_kept_in_milliseconds(
    engine: Engine, timestamp: Any, stored: int | None
) -> None:
    payload = event("session.created", {"id": "sess_1"})
    payload["timestamp"] = timestamp
    svix_id = new_svix_id()

    deliver(engine, payload, svix_id=svix_id)

    row = inbox_row(engine, svix_id)
    assert row is not None
    assert row["event_timestamp"] == stored


def test_unreadable_payload_is_recorded_without_type_or_time(engine: Engine) -> None:
    svix_id = new_svix_id()

    deliver(engine, "not json at all", svix_id=svix_id)

    row = inbox_row(engine, svix_id)
    assert row is not None
    assert (row["event_type"], row["event_timestamp"]) == (None, None)


def test_attempts_count_failed_retries_then_success(engine: Engine) -> None:
    """A transient failure the worker recorded (status stays ``received``) counts its in-process
    attempts; the successful delivery adds one and clears the error."""
    body = body_of(event("organization.created", organization_data("org_1")))
    incoming = describe_event(new_svix_id(), body, RECEIVED_AT_MS)

    record_retry(engine, incoming, OperationalError("SELECT 1", {}, Exception("server closed")))
    row = inbox_row(engine, incoming.svix_id)
    assert row is not None
    assert (row["status"], row["attempts"]) == ("received", IN_PROCESS_ATTEMPTS)
    assert "OperationalError" in row["last_error"]

    assert apply_event(engine, incoming, WORKSPACE_KEY) == "applied"
    row = inbox_row(engine, incoming.svix_id)
    assert row is not None
    assert (row["status"], row["attempts"], row["last_error"]) == (
        "applied",
        IN_PROCESS_ATTEMPTS + 1,
        None,
    )

    # Giving up on an event that has since been applied changes nothing.
    dead_letter(engine, incoming, RuntimeError("late"))
    assert inbox_row(engine, incoming.svix_id) == row


@pytest.mark.parametrize("step", ["claim", "finish"])
def test_a_connection_lost_while_a_batch_claims_or_finishes_is_a_transient_error(
    pg_engine: Engine, step: str
) -> None:
    """The batch statements PostgreSQL gets as driver SQL (binary arrays) still fail as
    SQLAlchemy errors: a backend that went away invalidates the connection and is worth a retry,
    like a failure of any other statement."""
    incoming = describe_event(
        new_svix_id(),
        body_of(event("organization.created", organization_data("org_lost"))),
        RECEIVED_AT_MS,
    )
    steps = {
        "claim": lambda connection: claim_events(connection, [incoming]),
        "finish": lambda connection: finish_events(
            connection, [Outcome(incoming.svix_id, APPLIED)], attempts=1, presumed=frozenset()
        ),
    }
    with pg_engine.connect() as connection:
        if step == "finish":
            claim_events(connection, [incoming])
        backend = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with pg_engine.connect() as other:
            other.exec_driver_sql(f"SELECT pg_terminate_backend({int(backend)})")
        with pytest.raises(DBAPIError) as raised:
            steps[step](connection)
    assert raised.value.connection_invalidated
    assert is_transient(raised.value)


def test_an_event_whose_row_was_deleted_by_hand_is_new_again(engine: Engine) -> None:
    """An inbox row deleted directly (not by ``purge``, which deletes its id too) leaves its id in
    ``webhook_event_ids``: a copy is then applied as a new event, alone or in a batch."""
    alone, batched = new_svix_id(), new_svix_id()
    body = body_of(event("organization.created", organization_data("org_1")))
    for svix_id in (alone, batched):
        assert deliver(engine, body, svix_id=svix_id) == "applied"
    with engine.begin() as connection:
        connection.execute(delete(webhook_events))
        connection.execute(delete(organizations))

    assert deliver(engine, body, svix_id=alone) == "applied"
    assert [org["id"] for org in organization_rows(engine)] == ["org_1"]
    with engine.begin() as connection:
        claims = claim_events(connection, [describe_event(batched, body, RECEIVED_AT_MS)])
    assert claims.statuses == {batched: "received"}
    assert claims.presumed == {batched}
    for svix_id in (alone, batched):
        assert inbox_row(engine, svix_id) is not None
