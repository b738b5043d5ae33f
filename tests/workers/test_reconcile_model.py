"""``clerk-sync reconcile`` over the whole organization model (roles, permissions, invitations,
domains) and content drift (issue #19), and the backfill's correctness while webhooks flow, after
a kill, and in a dry run (issue #21): real PostgreSQL (and SQLite), the fake Backend API
(``tests.clerk_api``), nothing of ours mocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from sqlalchemy import Engine, text

from clerk_sync.cli import main
from models.tables import (
    organization_domains,
    organization_invitations,
    organization_memberships,
    organization_permissions,
    organization_roles,
    organizations,
    users,
)
from tests.clerk_api import FakeClerk, Request
from tests.conftest import ROOT, wait_for
from tests.factories import (
    BASE_TIME_MS,
    body_of,
    domain_data,
    event,
    invitation_data,
    new_svix_id,
    permission_data,
    role_data,
)
from tests.models.support import WORKSPACE_KEY, deliver, rows, tombstone_row
from tests.workers.test_reconcile import (
    HOUR,
    changes,
    cli_env,
    expected,
    member,
    organization,
    run,
    user,
)
from workers.describing import describe_event
from workers.processing import apply_batch

READ = permission_data("perm_read", key="org:reports:read", name="Read reports")
WRITE = permission_data("perm_write", key="org:reports:write", name="Write reports")


def model() -> dict[str, list[dict[str, Any]]]:
    """A small Clerk with its organization model: members hold ``org:member``, which grants
    reading reports; one invitation and one domain."""
    org = organization(0)
    people = [user(0), user(1)]
    return {
        "organizations": [org],
        "users": people,
        "memberships": [member(n, org, person["id"]) for n, person in enumerate(people)],
        "permissions": [READ, WRITE],
        "roles": [role_data("role_member", key="org:member", name="Member", permissions=[READ])],
        "invitations": [
            invitation_data(
                org["id"],
                invitation_id="orginv_0",
                public_organization_data={"id": org["id"], "name": org["name"]},
            )
        ],
        "domains": [domain_data(org, domain_id="orgdmn_0")],
    }


def load(clerk: FakeClerk, state: dict[str, list[dict[str, Any]]]) -> None:
    clerk.load(
        state["organizations"],
        state["memberships"],
        state["users"],
        roles=state["roles"],
        permissions=state["permissions"],
        invitations=state["invitations"],
        domains=state["domains"],
    )


def ids(engine: Engine, table: Any) -> list[str]:
    return [row["id"] for row in rows(engine, table)]


def column(engine: Engine, table: Any, name: str) -> dict[str, Any]:
    return {row["id"]: row[name] for row in rows(engine, table)}


def test_reconciles_the_whole_organization_model(engine: Engine, clerk: FakeClerk) -> None:
    load(clerk, model())

    report = run(engine, clerk)

    assert changes(report) == {
        "permissions": {"created": 2},
        "roles": {"created": 1},
        "organizations": {"created": 1},
        "users": {"created": 2},
        "memberships": {"created": 2},
        "invitations": {"created": 1},
        "domains": {"created": 1},
    }
    assert ids(engine, organization_permissions) == ["perm_read", "perm_write"]
    assert column(engine, organization_roles, "permission_ids") == {"role_member": ["perm_read"]}
    assert column(engine, organization_invitations, "status") == {"orginv_0": "pending"}
    assert column(engine, organization_domains, "verification_status") == {"orgdmn_0": "verified"}
    # Members' permissions come from their role's (the listing's own were Clerk's defaults).
    assert set(map(tuple, column(engine, organization_memberships, "permissions").values())) == {
        ("org:reports:read",)
    }
    for path in (
        "/v1/organization_permissions",
        "/v1/organization_roles",
        "/v1/organization_invitations",
        "/v1/organization_domains",
    ):
        assert {r.param("order_by") for r in clerk.requests_to(path)} == {"+created_at"}

    again = run(engine, clerk)
    assert all(set(counts) == {"unchanged"} for counts in changes(again).values()), changes(again)


def test_heals_permission_drift(engine: Engine, clerk: FakeClerk) -> None:
    """The role's permission set changed in Clerk and no event said so (Clerk does not say
    whether ``updated_at`` moves then): at the same version, Clerk's role wins, and its
    members' permissions follow."""
    state = model()
    for payload in [
        event("permission.created", READ),
        event("permission.created", WRITE),
        event("role.created", state["roles"][0]),
        *(event("user.created", person) for person in state["users"]),
        *(event("organizationMembership.created", data) for data in state["memberships"]),
    ]:
        assert deliver(engine, payload) == "applied"
    assert set(map(tuple, column(engine, organization_memberships, "permissions").values())) == {
        ("org:reports:read",)
    }
    state["roles"] = [{**state["roles"][0], "permissions": [READ, WRITE]}]
    load(clerk, state)

    report = run(engine, clerk)

    assert changes(report)["roles"] == {"repaired": 1}
    assert changes(report)["memberships"] == {"unchanged": 2}
    assert column(engine, organization_roles, "permission_ids") == {
        "role_member": ["perm_read", "perm_write"]
    }
    assert set(map(tuple, column(engine, organization_memberships, "permissions").values())) == {
        ("org:reports:read", "org:reports:write")
    }


def test_heals_profile_drift(engine: Engine, clerk: FakeClerk) -> None:
    """A ``user.updated`` that never arrived, and a member's profile edited by hand: the user
    moves to Clerk's newer version and its members' profile with it; the hand-edited row, at
    Clerk's version, is repaired."""
    state = model()
    for payload in [
        *(event("user.created", person) for person in state["users"]),
        *(event("organizationMembership.created", data) for data in state["memberships"]),
    ]:
        assert deliver(engine, payload) == "applied"
    renamed = {**state["users"][0], "first_name": "Renamed", "updated_at": BASE_TIME_MS + HOUR}
    state["users"] = [renamed, state["users"][1]]
    with engine.begin() as connection:
        connection.execute(
            text("UPDATE organization_memberships SET last_name = 'Stale' WHERE id = 'orgmem_1'")
        )
    load(clerk, state)

    report = run(engine, clerk)

    assert changes(report)["users"] == {"updated": 1, "unchanged": 1}
    assert changes(report)["memberships"] == {"repaired": 1, "unchanged": 1}
    assert column(engine, organization_memberships, "first_name") == {
        "orgmem_0": "Renamed",
        "orgmem_1": "User1",
    }
    assert column(engine, organization_memberships, "last_name")["orgmem_1"] == "Tester"


def test_repairs_content_drift_at_an_equal_version(engine: Engine, clerk: FakeClerk) -> None:
    """Rows edited behind the sync's back (same ``updated_at``, other content) get Clerk's copy;
    a row newer than Clerk's is left alone."""
    state = model()
    load(clerk, state)
    run(engine, clerk)
    ahead = {**state["users"][1], "first_name": "Ahead", "updated_at": BASE_TIME_MS + HOUR}
    assert deliver(engine, event("user.updated", ahead)) == "applied"
    with engine.begin() as connection:
        for statement in (
            "UPDATE organizations SET name = 'Edited' WHERE id = 'org_0'",
            "UPDATE organization_invitations SET status = 'revoked' WHERE id = 'orginv_0'",
            "UPDATE organization_domains SET enrollment_mode = 'manual_invitation'",
            "UPDATE organization_permissions SET name = 'Edited' WHERE id = 'perm_write'",
        ):
            connection.execute(text(statement))

    report = run(engine, clerk)

    assert changes(report) == {
        "permissions": {"repaired": 1, "unchanged": 1},
        "roles": {"unchanged": 1},
        "organizations": {"repaired": 1},
        "users": {"unchanged": 2},
        "memberships": {"unchanged": 2},
        "invitations": {"repaired": 1},
        "domains": {"repaired": 1},
    }
    assert column(engine, organizations, "name") == {"org_0": "Organization 0"}
    assert column(engine, organization_invitations, "status") == {"orginv_0": "pending"}
    assert column(engine, organization_domains, "enrollment_mode") == {
        "orgdmn_0": "automatic_invitation"
    }
    assert column(engine, users, "first_name")["user_1"] == "Ahead"
    assert all(set(c) == {"unchanged"} for c in changes(run(engine, clerk)).values())


def test_deletes_what_clerk_no_longer_has_except_invitations(
    engine: Engine, clerk: FakeClerk
) -> None:
    """A role, a permission and a domain Clerk no longer has are looked up, then deleted and
    tombstoned. An invitation Clerk no longer lists is looked up too: found, it is applied;
    not found, it stays (Clerk deletes no invitation, and its lists may omit domain-created
    ones)."""
    state = model()
    gone_permission = permission_data("perm_gone", key="org:gone:read")
    gone_role = role_data("role_gone", key="org:gone", permissions=[gone_permission])
    gone_domain = domain_data(state["organizations"][0], domain_id="orgdmn_gone", name="gone.com")
    revoked = invitation_data(
        "org_0", invitation_id="orginv_unlisted", status="revoked", updated_at=BASE_TIME_MS + HOUR
    )
    unknown = invitation_data("org_0", invitation_id="orginv_unknown")
    for payload in [
        event("organization.created", state["organizations"][0]),
        event("role.created", gone_role),
        event("organizationDomain.created", gone_domain),
        event(
            "organizationInvitation.created",
            {**revoked, "status": "pending", "updated_at": BASE_TIME_MS},
        ),
        event("organizationInvitation.created", unknown),
    ]:
        assert deliver(engine, payload) == "applied"
    load(clerk, state)
    clerk.invitations[revoked["id"]] = revoked

    def unlisted(_fake: FakeClerk, request: Request, body: Any) -> None:
        if request.path == "/v1/organization_invitations":  # as if Clerk's list omitted it
            body["data"] = [item for item in body["data"] if item["id"] != revoked["id"]]
            body["total_count"] = len(body["data"])

    clerk.hooks.append(unlisted)

    report = run(engine, clerk)

    assert changes(report)["permissions"] == {"created": 2, "deleted": 1}
    assert changes(report)["roles"] == {"created": 1, "deleted": 1}
    assert changes(report)["domains"] == {"created": 1, "deleted": 1}
    assert changes(report)["invitations"] == {"created": 1, "updated": 1, "kept": 1}
    for entity_type, entity_id in [
        ("permission", "perm_gone"),
        ("role", "role_gone"),
        ("organization_domain", "orgdmn_gone"),
    ]:
        assert tombstone_row(engine, entity_type, entity_id) is not None, entity_id
    assert column(engine, organization_invitations, "status") == {
        "orginv_0": "pending",
        "orginv_unknown": "pending",
        "orginv_unlisted": "revoked",
    }
    assert [r.status for r in clerk.requests_to("/v1/organization_roles/role_gone")] == [404]
    assert [
        r.status for r in clerk.requests_to("/v1/organizations/org_0/invitations/orginv_unknown")
    ] == [404]
    domains = clerk.requests_to("/v1/organization_domains")
    assert [r.param("organization_id") for r in domains if r.param("organization_id")] == ["org_0"]


# -- the backfill: webhooks meanwhile, a kill, a dry run (issue #21) ---------------------------


def test_a_page_read_before_a_webhook_never_wins_over_it(
    pg_engine: Engine, clerk: FakeClerk
) -> None:
    """A webhook applied after Clerk answered a page and before the page is written: the page's
    older copy loses (the version guards compare under the page's locks)."""
    people = [user(n) for n in range(6)]
    newer = {**people[1], "first_name": "From a webhook", "updated_at": BASE_TIME_MS + HOUR}
    clerk.load([organization(0)], [], people)

    def webhook_meanwhile(_fake: FakeClerk, request: Request, _body: Any) -> None:
        if request.path == "/v1/users" and request.param("offset") == "0":
            assert deliver(pg_engine, event("user.updated", newer)) == "applied"

    clerk.hooks.append(webhook_meanwhile)

    report = run(pg_engine, clerk, page_size=3)

    assert changes(report)["users"] == {"created": 5, "unchanged": 1}
    assert column(pg_engine, users, "first_name")["user_1"] == "From a webhook"


def test_reconcile_while_webhook_batches_flow_converges(
    pg_engine: Engine, clerk: FakeClerk
) -> None:
    """The worker's batches (locks taken up front, like a page's) apply newer users and
    memberships while reconcile pages through older copies: no deadlock, the newer copies win."""
    orgs = [organization(n) for n in range(5)]
    people = [user(n) for n in range(40)]
    members = [member(n, orgs[n % 5], person["id"]) for n, person in enumerate(people)]
    clerk.load(orgs, members, people)
    later = BASE_TIME_MS + 2 * HOUR
    newer_users = [
        {**p, "first_name": f"New{n}", "updated_at": later} for n, p in enumerate(people)
    ]
    newer_members = [{**m, "role": "org:admin", "updated_at": later} for m in members]
    payloads = [event("user.updated", u) for u in newer_users] + [
        event("organizationMembership.updated", m) for m in newer_members
    ]
    payloads = [payloads[i] for i in range(0, len(payloads), 2)] + [
        payloads[i] for i in range(1, len(payloads), 2)
    ]
    failures: list[BaseException] = []

    def webhooks() -> None:
        try:
            for start in range(0, len(payloads), 8):
                batch = [
                    describe_event(new_svix_id(), body_of(p), int(time.time() * 1000))
                    for p in payloads[start : start + 8]
                ]
                apply_batch(pg_engine, batch, WORKSPACE_KEY)
        except Exception as error:  # noqa: BLE001 - failed in the test below
            failures.append(error)

    thread = threading.Thread(target=webhooks)
    thread.start()
    run(pg_engine, clerk, page_size=4)
    thread.join(timeout=120)

    assert not failures, failures
    assert column(pg_engine, users, "first_name") == {p["id"]: p["first_name"] for p in newer_users}
    assert set(column(pg_engine, organization_memberships, "role").values()) == {"org:admin"}
    assert column(pg_engine, organization_memberships, "first_name") == {
        m["id"]: f"New{n}" for n, m in enumerate(members)
    }


def test_resumes_after_being_killed(pg_engine: Engine, clerk: FakeClerk, tmp_path: Path) -> None:
    """SIGKILL a real ``clerk-sync reconcile`` mid-run; the same command continues from its
    journal and converges."""
    orgs = [organization(n) for n in range(4)]
    people = [user(n) for n in range(60)]
    members = [member(n, orgs[n % 4], person["id"]) for n, person in enumerate(people)]
    clerk.load(orgs, members, people)
    state_file = tmp_path / "reconcile.state"
    command = ["reconcile", "--page-size", "5", "--state-file", str(state_file)]
    env = {**os.environ, **cli_env(pg_engine, clerk, CLERK_API_MAX_REQUESTS_PER_SECOND="20")}
    process = subprocess.Popen(
        [sys.executable, "-m", "clerk_sync", *command],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def pages_recorded() -> list[dict[str, Any]]:
            records = [json.loads(line) for line in state_file.read_text().splitlines()[:-1]]
            users_pages = [r for r in records if r["record"] == "page" and r["phase"] == "users"]
            return users_pages if len(users_pages) >= 3 else []

        wait_for(lambda: state_file.exists() and pages_recorded(), timeout=120)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    recorded = max(r["offset"] for r in pages_recorded())
    assert recorded < len(people), "killed before the users were all listed"
    clerk.requests.clear()

    resumed = CliRunner().invoke(main, command, env=cli_env(pg_engine, clerk))

    assert resumed.exit_code == 0, resumed.output
    assert "(resumed the run started " in resumed.output
    assert clerk.requests_to("/v1/organizations") == []
    users_offsets = sorted(int(r.param("offset") or 0) for r in clerk.requests_to("/v1/users"))
    assert users_offsets[0] >= recorded
    assert (
        rows(pg_engine, organizations),
        rows(pg_engine, organization_memberships),
        rows(pg_engine, users),
    ) == expected(orgs, members, people)
    assert not state_file.exists()


def test_dry_run_on_an_empty_database_reports_counts_and_writes_nothing(
    engine: Engine, clerk: FakeClerk
) -> None:
    load(clerk, model())

    report = run(engine, clerk, dry_run=True)

    assert changes(report) == {
        "permissions": {"created": 2},
        "roles": {"created": 1},
        "organizations": {"created": 1},
        "users": {"created": 2},
        "memberships": {"created": 2},
        "invitations": {"created": 1},
        "domains": {"created": 1},
    }
    for table in (organizations, users, organization_memberships, organization_roles):
        assert rows(engine, table) == []
    assert report.listed == 10
    assert report.rows_per_second > 0
