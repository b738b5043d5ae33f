"""Sessions that stall in the middle of a transaction while they hold organization locks, on
PostgreSQL: a stalled client is simulated by a psycopg ``executemany`` whose parameters stop
coming half-way (the pipeline a frozen worker leaves open). And ``dump_json``, the JSON text
PostgreSQL gets."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from models.database import end_stalled_lock_holders, make_engine
from models.locks import lock_organization
from models.statements import dump_json
from tests.conftest import wait_for

APPLICATION = "clerk-sync-test-worker"
STALLED_AFTER_MS = 1000


@dataclass
class StalledSession:
    """A session that took an organization lock and stalls in a pipeline until released."""

    engine: Engine
    organization_id: str
    release: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    pid: int | None = None

    def run(self) -> None:
        def parameters() -> Iterator[tuple[int]]:
            yield (1,)
            self.release.wait(30)
            yield (2,)

        try:
            with self.engine.begin() as connection:
                lock_organization(connection, self.organization_id)
                self.pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
                cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
                cursor.executemany("SELECT %s", parameters())
        except BaseException as error:  # noqa: BLE001 - the test looks at it
            self.error = error


Stall = Callable[[str, str], StalledSession]


@pytest.fixture
def stall(postgres_url: str) -> Iterator[Stall]:
    started: list[tuple[StalledSession, threading.Thread]] = []

    def start(application_name: str, organization_id: str) -> StalledSession:
        engine = make_engine(postgres_url, application_name=application_name)
        session = StalledSession(engine, organization_id)
        thread = threading.Thread(target=session.run, daemon=True)
        thread.start()
        started.append((session, thread))
        wait_for(lambda: waits_for_client(postgres_url, session.pid), 10, 0.02)
        return session

    yield start
    for session, thread in started:
        session.release.set()
        thread.join(10)
        session.engine.dispose()


def wait_event(url: str, pid: int | None) -> str | None:
    """What session ``pid`` waits for (None once it has ended)."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                text("SELECT wait_event FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
            ).scalar()
    finally:
        engine.dispose()


def waits_for_client(url: str, pid: int | None) -> bool:
    return pid is not None and wait_event(url, pid) == "ClientRead"


def lock_organization_with(engine: Engine, organization_id: str) -> None:
    with engine.begin() as connection:
        lock_organization(connection, organization_id)


def test_a_lock_timeout_ends_our_session_stalled_holding_the_lock(
    postgres_url: str, stall: Stall
) -> None:
    """PostgreSQL's ``idle_in_transaction_session_timeout`` does not apply in the middle of a
    pipeline; the waiter's lock timeout ends the stalled session once it has waited for its
    client for the idle timeout, and the waiter then gets the lock."""
    stalled = stall(APPLICATION, "org_stalled")
    waiter = make_engine(
        postgres_url,
        lock_timeout_ms=200,
        idle_in_transaction_timeout_ms=STALLED_AFTER_MS,
        application_name=APPLICATION,
    )
    started = time.monotonic()
    timeouts = 0
    while True:
        try:
            lock_organization_with(waiter, "org_stalled")
            break
        except OperationalError:
            timeouts += 1
            assert time.monotonic() - started < 10, "the stalled session was never ended"
    waited = time.monotonic() - started
    waiter.dispose()
    assert timeouts >= 1
    assert waited >= STALLED_AFTER_MS / 1000 - 0.5, "ended before it had stalled long enough"
    assert wait_event(postgres_url, stalled.pid) is None, "its session is gone"
    stalled.release.set()
    wait_for(lambda: stalled.error is not None, 10)
    assert isinstance(stalled.error, OperationalError), "its client learns on its next word"


def test_stalled_sessions_of_other_applications_or_not_yet_stalled_long_enough_are_left(
    postgres_url: str, stall: Stall
) -> None:
    """Only this service's own sessions are ended, and only after the idle timeout."""
    other = stall("someone-else", "org_1")
    ours = stall(APPLICATION, "org_2")
    engine = make_engine(postgres_url)
    assert end_stalled_lock_holders(engine, APPLICATION, 60_000) == []
    time.sleep(STALLED_AFTER_MS / 1000)
    assert end_stalled_lock_holders(engine, APPLICATION, STALLED_AFTER_MS) == [ours.pid]
    assert other.error is None
    assert waits_for_client(postgres_url, other.pid)
    engine.dispose()


JSON_DOCUMENTS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(document=JSON_DOCUMENTS)
def test_dump_json_writes_any_json_document_as_json_dumps_reads(document: Any) -> None:
    """orjson's text, or ``json.dumps``'s where orjson refuses (integers beyond 64 bits): either
    reads back as the document."""
    assert json.loads(dump_json(document)) == document


def test_dump_json_writes_dates_in_iso_8601_and_what_json_cannot_hold_as_null() -> None:
    written = datetime(2026, 11, 27, 12, 30, 1, 250000, tzinfo=UTC)
    iso = "2026-11-27T12:30:01.250000+00:00"
    assert json.loads(dump_json([{"at": written}])) == [{"at": iso}]
    assert json.loads(dump_json({"at": written, "big": 2**70})) == {"at": iso, "big": 2**70}
    assert json.loads(dump_json({"nan": math.nan, "infinite": -math.inf})) == {
        "nan": None,
        "infinite": None,
    }
