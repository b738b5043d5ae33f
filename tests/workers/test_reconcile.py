"""``clerk-sync reconcile`` against a fake Clerk Backend API on 127.0.0.1 (``tests.clerk_api``),
with real PostgreSQL and SQLite. Nothing of ours is mocked.

Property: after any history in which some webhooks were dropped (and the rest arrived in any
order), reconciling against Clerk's final state gives the tables full delivery gives.
"""

from __future__ import annotations

import io
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from clerk_sync.cli import main
from clerk_sync.cli.reconcile import ProgressBars
from clerk_sync.core.settings import Settings, SettingsError
from models.locks import hold_session_lock
from models.tables import metadata
from tests.clerk_api import DROP, SECRET_KEY, FakeClerk, Request
from tests.conftest import empty_tables
from tests.factories import (
    BASE_TIME_MS,
    event,
    membership_data,
    organization_data,
    user_data,
)
from tests.models.histories import ClerkHistory
from tests.models.support import (
    WORKSPACE_KEY,
    deliver,
    expected_membership,
    expected_organization,
    expected_user,
    rows,
    synced_tables,
    tombstone_row,
)
from tests.models.test_convergence import apply_all
from workers.app import celery_configuration
from workers.reconcile import (
    RECONCILE_TASK,
    RUN_LOCK,
    ClerkAPI,
    ClerkAPIError,
    ClerkUnavailableError,
    Counts,
    MassDeletionError,
    RateLimiter,
    ReconcileBusyError,
    ReconcileError,
    ReconcileReport,
    parse_retry_after,
    reconcile,
    scheduled_reconcile,
)

HOUR = 3_600_000


# -- helpers -----------------------------------------------------------------------------------


def api_for(clerk: FakeClerk, *, rate: float = 1000.0, **options: Any) -> ClerkAPI:
    options.setdefault("backoff_seconds", 0.01)
    options.setdefault("backoff_max_seconds", 0.05)
    return ClerkAPI(
        clerk.url, options.pop("secret_key", SECRET_KEY), max_requests_per_second=rate, **options
    )


def run(
    engine: Engine, clerk: FakeClerk, *, api: ClerkAPI | None = None, **options: Any
) -> ReconcileReport:
    """One reconcile run; rows written a moment ago count as old (no clock-skew margin)."""
    options.setdefault("clock_skew_margin", timedelta(0))
    options.setdefault("page_size", 2)
    with api or api_for(clerk) as client:
        return reconcile(engine, client, api_url=clerk.url, workspace_key=WORKSPACE_KEY, **options)


def changes(report: ReconcileReport) -> dict[str, dict[str, int]]:
    """The report's counts, without zeros and empty entity types."""
    found = {}
    for phase, counts in report.counts.items():
        nonzero = {outcome: n for outcome, n in counts.as_dict().items() if n}
        if nonzero:
            found[phase] = nonzero
    return found


def everything(engine: Engine) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, ``synced_at`` included."""
    return {table.name: rows(engine, table, without=()) for table in metadata.sorted_tables}


def organization(number: int, **overrides: Any) -> dict[str, Any]:
    return organization_data(
        f"org_{number}",
        name=f"Organization {number}",
        slug=f"org-{number}",
        created_at=BASE_TIME_MS + number,
        updated_at=BASE_TIME_MS + number,
        **overrides,
    )


def user(number: int, **overrides: Any) -> dict[str, Any]:
    return user_data(
        f"user_{number}", first_name=f"User{number}", created_at=BASE_TIME_MS + number, **overrides
    )


def member(number: int, organization_data: dict[str, Any], user_id: str) -> dict[str, Any]:
    return membership_data(
        organization_data,
        membership_id=f"orgmem_{number}",
        user_id=user_id,
        created_at=BASE_TIME_MS + HOUR + number,
    )


def world(
    organizations: int = 3, users: int = 3
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """A small Clerk: every user a member of the first organization, the first user of all."""
    orgs = [organization(n) for n in range(organizations)]
    people = [user(n) for n in range(users)]
    members = [member(n, orgs[0], person["id"]) for n, person in enumerate(people)]
    members += [member(10 + n, org, people[0]["id"]) for n, org in enumerate(orgs[1:])]
    return orgs, members, people


def expected(
    orgs: list[dict[str, Any]], members: list[dict[str, Any]], people: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], ...]:
    """The tables these objects make: a member's profile columns come from its users row."""
    user_rows = {data["id"]: expected_user(data) for data in people}
    return (
        sorted((expected_organization(data) for data in orgs), key=lambda row: row["id"]),
        sorted(
            (
                expected_membership(data, user_rows.get(data["public_user_data"]["user_id"]))
                for data in members
            ),
            key=lambda row: row["id"],
        ),
        sorted(user_rows.values(), key=lambda row: row["id"]),
    )


def listing_offsets(clerk: FakeClerk, path: str) -> list[int]:
    """The offsets a listing asked for, in order (pages are read ahead, several at a time, so
    they may arrive in another order)."""
    return sorted(int(request.param("offset") or 0) for request in clerk.requests_to(path))


# -- reading Clerk -----------------------------------------------------------------------------


def test_first_run_fills_empty_tables_paging_through_every_listing(
    engine: Engine, clerk: FakeClerk
) -> None:
    orgs, members, people = world(organizations=5, users=4)
    clerk.load(orgs, members, people)

    report = run(engine, clerk, page_size=2)

    assert synced_tables(engine) == expected(orgs, members, people)
    assert changes(report) == {
        "organizations": {"created": 5},
        "memberships": {"created": 8},
        "users": {"created": 4},
    }
    assert listing_offsets(clerk, "/v1/organizations") == [0, 2, 4]
    assert listing_offsets(clerk, "/v1/organization_memberships") == [0, 2, 4, 6, 8]
    assert listing_offsets(clerk, "/v1/users") == [0, 2, 4], "a short page ends a user listing"
    for request in clerk.requests:
        assert request.headers["authorization"] == f"Bearer {SECRET_KEY}"
        assert request.status == 200
        if request.path in ("/v1/organizations", "/v1/organization_memberships", "/v1/users"):
            assert (request.param("limit"), request.param("order_by")) == ("2", "+created_at")
    assert report.requests == len(clerk.requests)


def test_a_second_run_changes_nothing(engine: Engine, clerk: FakeClerk) -> None:
    clerk.load(*world())
    run(engine, clerk)
    before = everything(engine)

    report = run(engine, clerk)

    assert set(changes(report)) == {"organizations", "memberships", "users"}
    assert all(set(counts) == {"unchanged"} for counts in changes(report).values()), changes(report)
    assert everything(engine) == before


def test_newer_objects_win_and_older_ones_are_ignored(engine: Engine, clerk: FakeClerk) -> None:
    """The listing goes through the webhook mutation rules: versions decide, not arrival."""
    orgs, members, people = world()
    ahead = {**orgs[0], "name": "Renamed by a webhook", "updated_at": BASE_TIME_MS + HOUR}
    behind = user(1)
    clerk_user = {**behind, "first_name": "Changed in Clerk", "updated_at": BASE_TIME_MS + HOUR}
    clerk.load(orgs, members, [people[0], clerk_user, people[2]])
    deliver(engine, event("organization.updated", ahead))
    deliver(engine, event("user.created", behind))

    report = run(engine, clerk)

    assert changes(report)["organizations"] == {"created": 2, "unchanged": 1}
    assert changes(report)["users"] == {"created": 2, "updated": 1}
    organizations, _, users = synced_tables(engine)
    assert organizations[0] == expected_organization(ahead)
    assert users[1] == expected_user(clerk_user)


def test_listed_but_tombstoned_here_is_reported_as_blocked(
    engine: Engine, clerk: FakeClerk
) -> None:
    orgs, members, people = world()
    clerk.load(orgs, members, people)
    deliver(engine, event("user.deleted", {"id": "user_2", "object": "user", "deleted": True}))

    report = run(engine, clerk)

    assert changes(report)["users"] == {"created": 2, "blocked": 1}
    assert changes(report)["memberships"] == {"created": 4, "blocked": 1}


# -- deleting what Clerk no longer has ---------------------------------------------------------


def test_deletes_and_tombstones_what_clerk_no_longer_lists(
    engine: Engine, clerk: FakeClerk
) -> None:
    orgs, members, people = world()
    gone_org = organization(7)
    gone_user = user(7)
    gone_member = member(7, orgs[1], people[1]["id"])
    for payload in (
        event("organization.created", gone_org),
        event("user.created", gone_user),
        event("organizationMembership.created", member(8, gone_org, people[2]["id"])),
        event("organizationMembership.created", member(9, orgs[2], gone_user["id"])),
        event("organizationMembership.created", gone_member),
    ):
        assert deliver(engine, payload) == "applied"
    clerk.load(orgs, members, people)

    report = run(engine, clerk)

    assert synced_tables(engine) == expected(orgs, members, people)
    # orgmem_8 went with org_7, orgmem_9 with user_7 (users come before memberships). org_1
    # and org_2 came with the memberships delivered.
    assert changes(report) == {
        "organizations": {"created": 1, "unchanged": 2, "deleted": 1},
        "users": {"created": 3, "deleted": 1},
        "memberships": {"created": 5, "deleted": 1},
    }
    for entity_type, entity_id in [
        ("organization", "org_7"),
        ("organization_membership", "orgmem_7"),
        ("user", "user_7"),
    ]:
        tombstone = tombstone_row(engine, entity_type, entity_id)
        assert tombstone is not None
        assert tombstone["reason"] == "deleted"
    # Each deletion was confirmed by a direct lookup first.
    assert [r.status for r in clerk.requests_to("/v1/organizations/org_7")] == [404]
    assert [r.status for r in clerk.requests_to("/v1/users/user_7")] == [404]
    lookups = clerk.requests_to("/v1/organizations/org_1/memberships")
    assert [(r.param("user_id"), r.status) for r in lookups] == [("user_1", 200)]
    # Late webhooks cannot bring them back.
    deliver(engine, event("organization.updated", {**gone_org, "updated_at": BASE_TIME_MS + HOUR}))
    deliver(engine, event("user.updated", {**gone_user, "updated_at": BASE_TIME_MS + HOUR}))
    deliver(engine, event("organizationMembership.updated", gone_member))
    assert synced_tables(engine) == expected(orgs, members, people)


def test_keeps_what_was_created_after_the_run_started(engine: Engine, clerk: FakeClerk) -> None:
    """An entity Clerk creates after its listing was read arrives by webhook while the run goes
    on. It is missing from the listing, but it must not be deleted (and tombstoned forever): it
    was written after the run started, so it is not even looked up."""
    orgs, members, people = world()
    clerk.load(orgs, members, people)
    late_org = organization(8)
    late_user = user(8)
    late_member = member(8, orgs[1], people[2]["id"])

    def after_last_page(fake: FakeClerk, request: Request, body: Any) -> None:
        data = body if isinstance(body, list) else body.get("data", []) if body else []
        listings = {
            "/v1/organizations": ("organizations", late_org, "organization.created"),
            "/v1/organization_memberships": (
                "memberships",
                late_member,
                "organizationMembership.created",
            ),
            "/v1/users": ("users", late_user, "user.created"),
        }
        if request.path not in listings or len(data) == 2:
            return
        attribute, created, event_type = listings[request.path]
        if created["id"] not in getattr(fake, attribute):
            getattr(fake, attribute)[created["id"]] = created
            assert deliver(engine, event(event_type, created)) == "applied"

    clerk.hooks.append(after_last_page)

    report = run(engine, clerk, page_size=2)

    assert synced_tables(engine) == expected(
        [*orgs, late_org], [*members, late_member], [*people, late_user]
    )
    assert changes(report) == {
        "organizations": {"created": 3, "kept": 1},
        "memberships": {"created": 5, "kept": 1},
        "users": {"created": 3, "kept": 1},
    }
    assert clerk.requests_to("/v1/organizations/org_8") == []
    assert clerk.requests_to("/v1/users/user_8") == []
    assert clerk.requests_to("/v1/organizations/org_1/memberships") == []


def test_an_object_skipped_by_offset_paging_is_looked_up_not_deleted(
    engine: Engine, clerk: FakeClerk
) -> None:
    """Deleting org_0 in Clerk after the first page was read shifts org_2 onto that page: the
    listing never shows it. The direct lookup finds it alive, so it stays. (org_0 was listed, so
    it stays too, until the next run.)"""
    orgs = [organization(n) for n in range(5)]
    clerk.load(orgs)
    for data in orgs:
        deliver(engine, event("organization.created", data))

    def delete_first(fake: FakeClerk, request: Request, _body: Any) -> None:
        if request.path == "/v1/organizations" and request.param("offset") == "0":
            fake.organizations.pop("org_0", None)

    clerk.hooks.append(delete_first)

    report = run(engine, clerk, page_size=2)

    assert listing_offsets(clerk, "/v1/organizations") == [0, 2, 4]
    assert len(synced_tables(engine)[0]) == 5
    assert changes(report)["organizations"] == {"unchanged": 5}
    assert [r.status for r in clerk.requests_to("/v1/organizations/org_2")] == [200]
    assert tombstone_row(engine, "organization", "org_2") is None

    clerk.hooks.clear()
    assert changes(run(engine, clerk, page_size=2))["organizations"] == {
        "unchanged": 4,
        "deleted": 1,
    }
    assert [row["id"] for row in synced_tables(engine)[0]] == ["org_1", "org_2", "org_3", "org_4"]


def test_mass_deletion_stops_the_run_unless_allowed(engine: Engine, clerk: FakeClerk) -> None:
    """A key of another Clerk instance lists none of what is stored: nothing is deleted."""
    for number in range(12):
        deliver(engine, event("organization.created", organization(number)))
    clerk.load([organization(0)])
    before = everything(engine)

    with pytest.raises(MassDeletionError, match="11 of 12 stored organizations"):
        run(engine, clerk)
    assert everything(engine) == before
    assert not [r for r in clerk.requests if r.path.startswith("/v1/organizations/")]

    report = run(engine, clerk, allow_mass_deletion=True)
    assert changes(report)["organizations"] == {"unchanged": 1, "deleted": 11}


def test_an_unreadable_object_is_reported_and_left_alone(engine: Engine, clerk: FakeClerk) -> None:
    orgs, members, people = world()
    broken = {**people[1], "created_at": None}
    deliver(engine, event("user.created", people[1]))
    clerk.load(orgs, members, [people[0], broken, people[2]])

    report = run(engine, clerk)

    assert changes(report)["users"] == {"created": 2, "invalid": 1}
    assert [row["id"] for row in synced_tables(engine)[2]] == ["user_0", "user_1", "user_2"]
    assert clerk.requests_to("/v1/users/user_1") == [], "listed, so never a deletion candidate"


# -- dry run -----------------------------------------------------------------------------------


def test_dry_run_reports_and_writes_nothing(engine: Engine, clerk: FakeClerk) -> None:
    orgs, members, people = world()
    deliver(engine, event("organization.created", orgs[0]))
    deliver(engine, event("organization.created", organization(9)))
    deliver(engine, event("user.created", {**people[0], "first_name": "Old"}))
    people[0] = {**people[0], "updated_at": BASE_TIME_MS + HOUR}
    clerk.load(orgs, members, people)
    before = everything(engine)

    report = run(engine, clerk, dry_run=True)

    assert report.dry_run
    assert everything(engine) == before
    assert changes(report) == {
        "organizations": {"created": 2, "unchanged": 1, "deleted": 1},
        "memberships": {"created": 5},
        "users": {"created": 2, "updated": 1},
    }


# -- rate limits and failures ------------------------------------------------------------------


def test_honours_retry_after_and_retries_server_errors(engine: Engine, clerk: FakeClerk) -> None:
    orgs, members, people = world(organizations=5)
    clerk.load(orgs, members, people)
    clerk.fail("/v1/organizations", 429, query={"offset": "2"}, headers={"Retry-After": "1"})
    clerk.fail("/v1/users", 500, query={"offset": "2"})
    clerk.fail("/v1/users", 503, query={"offset": "2"})

    report = run(engine, clerk, page_size=2)

    assert synced_tables(engine) == expected(orgs, members, people)
    # Pages are read ahead, several at once: each offset's requests, in the order they came.
    organizations = clerk.requests_to("/v1/organizations")
    assert sorted((r.param("offset"), r.status) for r in organizations) == [
        ("0", 200),
        ("2", 200),
        ("2", 429),
        ("4", 200),
    ]
    second = [r for r in organizations if r.param("offset") == "2"]
    assert [r.status for r in second] == [429, 200]
    assert second[1].at - second[0].at >= 0.95, "waited for Retry-After"
    users = clerk.requests_to("/v1/users")
    assert [r.status for r in users if r.param("offset") == "2"] == [500, 503, 200]
    assert sorted(r.param("offset") for r in users if r.status == 200) == ["0", "2"]
    assert changes(report)["users"] == {"created": 3}


def test_retries_connection_errors(engine: Engine, clerk: FakeClerk) -> None:
    orgs, members, people = world()
    clerk.load(orgs, members, people)
    clerk.fail("/v1/organization_memberships", DROP, times=2)

    run(engine, clerk)

    assert synced_tables(engine) == expected(orgs, members, people)
    statuses = [r.status for r in clerk.requests_to("/v1/organization_memberships")]
    assert statuses == [DROP, DROP, 200, 200, 200]


def test_caps_its_request_rate(engine: Engine, clerk: FakeClerk) -> None:
    clerk.load([organization(n) for n in range(8)])
    rate = 20.0

    run(engine, clerk, api=api_for(clerk, rate=rate), page_size=1)

    arrivals = [request.at for request in clerk.requests]
    assert len(arrivals) >= 12
    # The cap bounds the average rate. Single gaps are not checked: a request delayed in transit
    # arrives close to the next one on a busy machine without the client having sent faster.
    assert arrivals[-1] - arrivals[0] >= (len(arrivals) - 1) / rate * 0.95


def test_gives_up_after_its_retries(engine: Engine, clerk: FakeClerk) -> None:
    clerk.load(*world())
    clerk.fail("/v1/organizations", 502, times=100)

    with pytest.raises(ClerkUnavailableError, match="HTTP 502 after 3 attempts"):
        run(engine, clerk, api=api_for(clerk, attempts=3))
    assert len(clerk.requests_to("/v1/organizations")) == 3


def test_a_rejected_key_stops_at_once_and_is_never_shown(engine: Engine, clerk: FakeClerk) -> None:
    clerk.load(*world())
    wrong = "sk_test_WRONGwrongWRONG"

    with pytest.raises(ClerkAPIError) as failure:
        run(engine, clerk, api=api_for(clerk, secret_key=wrong))

    assert "HTTP 401" in str(failure.value)
    assert "authentication_invalid" in str(failure.value)
    assert wrong not in str(failure.value)
    assert len(clerk.requests) == 1, "a 401 is not retried"
    assert synced_tables(engine) == ([], [], [])


def test_retry_after_is_read_as_seconds_or_a_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now=1_767_225_600) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:00 GMT", now=1_767_225_660) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_rate_limiter_spaces_calls_and_pauses_on_request() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(round(seconds, 6))
        now[0] += seconds

    limiter = RateLimiter(4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        limiter.wait()
    limiter.pause(2.0)
    limiter.wait()
    assert slept == [0.25, 0.25, 2.0]


# -- resuming ----------------------------------------------------------------------------------


def test_resumes_from_its_state_file_after_an_interruption(
    engine: Engine, clerk: FakeClerk, tmp_path: Path
) -> None:
    orgs, members, people = world(organizations=5, users=7)
    for payload in (event("organization.created", organization(9)), event("user.created", user(9))):
        deliver(engine, payload)
    clerk.load(orgs, members, people)
    clerk.fail("/v1/users", 500, query={"offset": "4"}, times=100)
    state_file = tmp_path / "reconcile.state"

    with pytest.raises(ClerkUnavailableError):
        run(engine, clerk, api=api_for(clerk, attempts=2), state_file=state_file, page_size=2)

    records = [json.loads(line) for line in state_file.read_text().splitlines()]
    assert records[0]["record"] == "start"
    assert [(r["record"], r["phase"]) for r in records if r["record"] in ("listed", "swept")] == [
        ("listed", "permissions"),
        ("swept", "permissions"),
        ("listed", "roles"),
        ("swept", "roles"),
        ("listed", "organizations"),
        ("swept", "organizations"),
    ]
    assert tombstone_row(engine, "organization", "org_9") is not None, "swept before the failure"
    assert [r["offset"] for r in records if r.get("phase") == "users"] == [2, 4]

    clerk.faults.clear()
    clerk.requests.clear()
    with state_file.open("a") as stream:
        stream.write('{"record":"page","pha')  # torn by the crash
    report = run(engine, clerk, state_file=state_file, page_size=2)

    assert report.resumed
    assert synced_tables(engine) == expected(orgs, members, people)
    assert clerk.requests_to("/v1/organizations") == []
    assert listing_offsets(clerk, "/v1/users") == [4, 6]
    assert listing_offsets(clerk, "/v1/organization_memberships")[0] == 0
    assert changes(report) == {
        "organizations": {"created": 5, "deleted": 1},
        "memberships": {"created": 11},
        "users": {"created": 7, "deleted": 1},
    }, "the report covers the whole run, both sessions"
    assert not state_file.exists(), "a finished run leaves no state file"


def test_a_state_file_is_resumed_only_in_the_same_mode(
    engine: Engine, clerk: FakeClerk, tmp_path: Path
) -> None:
    clerk.load(*world())
    clerk.fail("/v1/users", 500, times=100)
    state_file = tmp_path / "reconcile.state"
    with pytest.raises(ClerkUnavailableError):
        run(engine, clerk, api=api_for(clerk, attempts=1), state_file=state_file, dry_run=True)

    with pytest.raises(ReconcileError, match="belongs to a dry run"):
        run(engine, clerk, state_file=state_file)


def test_one_run_at_a_time(pg_engine: Engine, clerk: FakeClerk) -> None:
    clerk.load(*world())
    with hold_session_lock(pg_engine, RUN_LOCK), pytest.raises(ReconcileBusyError):
        run(pg_engine, clerk)
    assert clerk.requests == []
    run(pg_engine, clerk)


# -- property: reconciliation heals dropped webhooks -------------------------------------------

# As in test_convergence, with more removals (4, 5), organization (6) and user (8) deletions:
# the deletions reconcile has to make up for are the interesting part.
CHURN = st.tuples(
    st.sampled_from([0, 1, 2, 2, 2, 3, 4, 4, 5, 5, 6, 7, 8, 8]),
    st.integers(min_value=0, max_value=11),
    st.integers(min_value=0, max_value=59),
    st.sampled_from([1, 2, 1000, 60_000]),
)


@st.composite
def churning_histories(draw: st.DrawFn) -> ClerkHistory:
    history = ClerkHistory(
        organization_slots=draw(st.integers(min_value=2, max_value=4)),
        user_count=draw(st.integers(min_value=2, max_value=4)),
    )
    for action in draw(st.lists(CHURN, min_size=4, max_size=24)):
        history.perform(*action)
    return history


def test_reconcile_after_dropped_webhooks_equals_full_delivery(
    engine: Engine, clerk: FakeClerk
) -> None:
    outcomes: list[str] = []

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(data=st.data(), history=churning_histories())
    def heals(data: Any, history: ClerkHistory) -> None:
        note(f"history: {history.events}")
        # A deletion is dropped half the time, anything else a quarter of the time.
        dice = data.draw(
            st.lists(st.integers(0, 3), min_size=len(history.events), max_size=len(history.events)),
            label="dice",
        )
        dropped = [
            delivery
            for delivery, die in zip(history.events, dice, strict=True)
            if die < (2 if ".deleted:" in delivery.label else 1)
        ]
        note(f"dropped: {dropped}")
        delivered = [delivery for delivery in history.events if delivery not in dropped]
        delivered = data.draw(st.permutations(delivered), label="order")
        empty_tables(engine)
        apply_all(engine, delivered)
        clerk.load(*history.api_state())
        page_size = data.draw(st.sampled_from([1, 2, 500]), label="page size")

        report = run(engine, clerk, page_size=page_size, allow_mass_deletion=True)

        assert synced_tables(engine) == history.expected_state()
        again = run(engine, clerk, page_size=page_size)
        assert all(
            counts.created == counts.updated == counts.deleted == counts.blocked == 0
            for counts in again.counts.values()
        ), "a second run finds nothing to do"
        totals = Counts()
        for counts in report.counts.values():
            for outcome, count in counts.as_dict().items():
                totals.add(outcome, count)
        outcomes.append("deleted" if totals.deleted else "healed" if totals.created else "noop")

    heals()
    assert outcomes.count("deleted") >= len(outcomes) // 10, "too few runs had to delete"


# -- the command and the schedule --------------------------------------------------------------


def cli_env(engine: Engine, clerk: FakeClerk, **extra: str) -> dict[str, str]:
    return {
        "DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "CLERK_SECRET_KEY": SECRET_KEY,
        "CLERK_API_URL": clerk.url,
        "CLERK_API_MAX_REQUESTS_PER_SECOND": "1000",
        "CLERK_SYNC_WORKSPACE_METADATA_KEY": WORKSPACE_KEY,
        **extra,
    }


def test_command_reports_per_entity_type(engine: Engine, clerk: FakeClerk) -> None:
    orgs, members, people = world()
    clerk.load(orgs, members, people)
    deliver(engine, event("organization.created", organization(9)))
    runner = CliRunner()

    dry = runner.invoke(main, ["reconcile", "--dry-run"], env=cli_env(engine, clerk))
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines()[0] == "Dry run: nothing was changed. Would have:"
    assert synced_tables(engine)[2] == []

    result = runner.invoke(main, ["reconcile", "--page-size", "2"], env=cli_env(engine, clerk))

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Reconciled:"
    assert lines[1].split() == [
        "created",
        "updated",
        "repaired",
        "unchanged",
        "blocked",
        "invalid",
        "deleted",
        "kept",
    ]
    # org_9 was written a moment ago: within the default 5-minute clock-skew margin, so kept.
    zeros = ["0"] * 8
    assert [line.split() for line in lines[2:9]] == [
        ["permissions", *zeros],
        ["roles", *zeros],
        ["organizations", "3", "0", "0", "0", "0", "0", "0", "1"],
        ["users", "3", *zeros[1:]],
        ["memberships", "5", *zeros[1:]],
        ["invitations", *zeros],
        ["domains", *zeros],
    ]
    assert lines[10].startswith("11 object(s) listed in ")
    assert lines[10].endswith(" rows/s)")
    assert SECRET_KEY not in dry.output + result.output

    as_json = runner.invoke(main, ["reconcile", "--json"], env=cli_env(engine, clerk))
    assert json.loads(as_json.output)["counts"]["users"]["unchanged"] == 3


def test_command_needs_the_secret_key_and_points_to_the_state_file(
    engine: Engine, clerk: FakeClerk, tmp_path: Path
) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["reconcile"], env=cli_env(engine, clerk, CLERK_SECRET_KEY=""))
    assert missing.exit_code == 1
    assert "CLERK_SECRET_KEY is not set" in missing.output

    clerk.load(*world())
    clerk.fail("/v1/users", 400)
    state_file = tmp_path / "state"
    failed = runner.invoke(
        main, ["reconcile", "--state-file", str(state_file)], env=cli_env(engine, clerk)
    )
    assert failed.exit_code == 1
    assert "HTTP 400" in failed.output
    assert f"run the same command again to continue from {state_file}" in failed.output
    resumed = runner.invoke(
        main, ["reconcile", "--state-file", str(state_file)], env=cli_env(engine, clerk)
    )
    assert resumed.exit_code == 0, resumed.output
    assert "(resumed the run started " in resumed.output


def test_progress_bars_on_a_terminal(engine: Engine, clerk: FakeClerk) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    clerk.load(*world(organizations=4))
    deliver(engine, event("user.created", user(9)))
    terminal = Terminal()

    run(engine, clerk, progress=ProgressBars(terminal))

    shown = terminal.getvalue()
    for label in ("organizations", "memberships", "users", "users (checking missing)"):
        assert f"\r\x1b[?25l{label} " in shown, label
    assert shown.count("100%") >= 4


def test_settings_for_reconcile() -> None:
    defaults = Settings.from_env({})
    assert defaults.clerk_api_url == "https://api.clerk.com"
    assert defaults.clerk_api_max_requests_per_second == 5.0
    assert defaults.reconcile_interval_minutes is None
    assert defaults.clerk_secret_key == ""

    configured = Settings.from_env(
        {
            "CLERK_SECRET_KEY": " sk_live_abc123 ",
            "CLERK_API_URL": "http://127.0.0.1:9999/",
            "CLERK_API_MAX_REQUESTS_PER_SECOND": "2.5",
            "CLERK_SYNC_RECONCILE_INTERVAL_MINUTES": "60",
        }
    )
    assert configured.clerk_secret_key == "sk_live_abc123"
    assert configured.clerk_api_url == "http://127.0.0.1:9999"
    assert configured.clerk_api_max_requests_per_second == 2.5
    assert configured.reconcile_interval_minutes == 60
    assert "sk_live_abc123" not in repr(configured)

    for name, value in [
        ("CLERK_SECRET_KEY", "pk_test_publishable"),
        ("CLERK_SECRET_KEY", "sk_test_with space"),
        ("CLERK_API_URL", "ftp://api.clerk.com"),
        ("CLERK_API_MAX_REQUESTS_PER_SECOND", "0"),
        ("CLERK_SYNC_RECONCILE_INTERVAL_MINUTES", "0"),
    ]:
        with pytest.raises(SettingsError) as error:
            Settings.from_env({name: value})
        assert str(error.value).startswith(name)
        if name == "CLERK_SECRET_KEY":
            assert value not in str(error.value)


def test_beat_runs_reconcile_only_when_an_interval_is_set(engine: Engine, clerk: FakeClerk) -> None:
    assert "reconcile" not in celery_configuration(Settings())["beat_schedule"]
    schedule = celery_configuration(Settings(reconcile_interval_minutes=30))["beat_schedule"]
    assert schedule["reconcile"]["task"] == RECONCILE_TASK
    assert schedule["reconcile"]["schedule"] == timedelta(minutes=30)
    assert schedule["reconcile"]["options"] == {"expires": 1800.0}

    orgs, members, people = world()
    clerk.load(orgs, members, people)
    configured = Settings(
        clerk_secret_key=SECRET_KEY,
        clerk_api_url=clerk.url,
        clerk_api_max_requests_per_second=1000,
        workspace_metadata_key=WORKSPACE_KEY,
    )
    assert scheduled_reconcile(engine, Settings()) is None, "no key: logged, not raised"
    report = scheduled_reconcile(engine, configured)
    assert report is not None
    assert report["counts"]["users"]["created"] == 3
    assert synced_tables(engine) == expected(orgs, members, people)


def test_fake_clerk_pages_like_clerk(clerk: FakeClerk) -> None:
    """The stand-in itself: limits, ordering and lookups as the reference describes."""
    clerk.load([organization(n) for n in range(3)], [], [user(0)])
    with api_for(clerk) as api:
        newest_first = api.get("/v1/organizations", {"limit": 2})
        assert [o["id"] for o in newest_first["data"]] == ["org_2", "org_1"]
        assert newest_first["total_count"] == 3
        assert api.get("/v1/users", {"limit": 10}) == [user(0)]
        assert api.count_users() == 1
        assert api.get_user("user_9") is None
        assert api.memberships_of("org_9", "user_0") is None
        assert api.memberships_of("org_0", "user_0") == []
        with pytest.raises(ClerkAPIError, match="HTTP 422"):
            api.get("/v1/organizations", {"limit": 501})
