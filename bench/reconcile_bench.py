"""Reconcile: rows per second of a backfill (``clerk-sync reconcile`` into an empty database)
from the fake Backend API, against one batched ``INSERT … ON CONFLICT`` per page (issue #21)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

import httpx
from psycopg.types.json import Jsonb

from bench.context import Context
from bench.fake_clerk import Size
from bench.procs import BenchError, Child, python_command, tree_memory, wait_until
from bench.results import BenchResult, Check, Ratio
from bench.services import Database, clerk_sync_env
from tests.clerk_api import SECRET_KEY

NAME = "reconcile"
TITLE = "Reconcile backfill"
DESCRIPTION = (
    "A Clerk instance of {users:,} users, {organizations:,} organizations and {memberships:,} "
    "memberships is served by the tests' fake Backend API (`tests/clerk_api.py`, real response "
    "shapes, 500 objects a page) in a process of its own (`bench/fake_clerk.py`), with no "
    "request limit to speak of. `clerk-sync reconcile --json` backfills it into an emptied "
    "database; rows/s are the objects listed over the run's own time (listings and deletion "
    "checks, from its report). Baseline: one process reading the same pages one after the "
    "other with httpx and writing each with one `INSERT … ON CONFLICT DO UPDATE` of the page's "
    "rows (psycopg) into the same tables, emptied before each run ({repeats} pairs, "
    "alternating which goes first). Also: the minimum at Clerk's production rate (1,000 "
    "requests per 10 s: {pages:,} requests) and, measured once, reconcile held to that rate; "
    "peak RSS of the reconcile process, over a backfill of a tenth of the instance."
)
PRODUCTION_RATE: Final = 100.0
"""Clerk's Backend API limit per production instance: 1,000 requests per 10 s."""
UNLIMITED_RATE: Final = 100_000.0
PAGE: Final = 500


def sizes(quick: bool) -> tuple[Size, int]:
    """The instance and the repeats of a run."""
    if quick:
        return Size(users=5_003, organizations=500, memberships=5_000), 1
    return Size(users=100_003, organizations=10_000, memberships=100_000), 3


def start_fake_clerk(context: Context, size: Size, name: str) -> tuple[Child, str]:
    child = context.supervisor.start(
        name,
        python_command(
            "-m",
            "bench.fake_clerk",
            "--users",
            str(size.users),
            "--organizations",
            str(size.organizations),
            "--memberships",
            str(size.memberships),
        ),
        clerk_sync_env(context.services, "", queue="unused"),
    )
    wait_until(
        lambda: child.log_contains("ready "), 600, f"{name} to start", alive=child.check_alive
    )
    found = re.search(r"ready (\S+)", child.log_path.read_text())
    if found is None:
        raise BenchError(f"{name} did not say where it listens")
    return child, found.group(1)


def empty(database: Database) -> None:
    """Every row of every table but Alembic's, and a fresh ``ANALYZE``."""
    with database.connect() as connection:
        names = [
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'alembic_version'"
            )
        ]
        connection.execute(f"TRUNCATE {', '.join(names)}")
    database.vacuum_analyze()


def run_reconcile(
    context: Context, database: Database, url: str, rate: float, name: str
) -> tuple[dict[str, Any], int]:
    """One ``clerk-sync reconcile --json`` run; its report and the peak RSS of its process."""
    env = clerk_sync_env(context.services, database.url, queue="unused")
    env.update(
        {
            "CLERK_SECRET_KEY": SECRET_KEY,
            "CLERK_API_URL": url,
            "CLERK_API_MAX_REQUESTS_PER_SECOND": str(rate),
        }
    )
    child = context.supervisor.start(
        name, python_command("-m", "clerk_sync", "reconcile", "--json"), env
    )
    peak = 0
    deadline = time.monotonic() + 1800
    while child.running():
        processes = child.tree()
        peak = max(peak, tree_memory(processes)[0])
        if time.monotonic() > deadline:
            raise BenchError(f"{name} did not finish within 30 minutes")
        time.sleep(0.2)
    if child.process.returncode != 0:
        raise BenchError(f"{name} failed:\n{child.tail()}")
    text = "\n" + child.log_path.read_text()
    report = json.loads(text[text.rindex("\n{\n") :])
    context.supervisor.stop(child)
    return report, peak


# -- the baseline: one batched INSERT … ON CONFLICT per page --------------------------------


def _organization(data: dict[str, Any]) -> tuple[Any, ...]:
    metadata = data.get("public_metadata") or {}
    return (
        data["id"],
        data["name"],
        data.get("slug"),
        data.get("image_url"),
        metadata.get("workspace_id"),
        Jsonb(metadata),
        data.get("created_by"),
        data.get("max_allowed_memberships"),
        data["created_at"],
        data["updated_at"],
    )


def _user(data: dict[str, Any]) -> tuple[Any, ...]:
    primary = next(
        (
            address["email_address"]
            for address in data.get("email_addresses") or []
            if address.get("id") == data.get("primary_email_address_id")
        ),
        None,
    )
    return (
        data["id"],
        primary,
        data.get("username"),
        data.get("first_name"),
        data.get("last_name"),
        data.get("image_url"),
        data.get("external_id"),
        Jsonb(data.get("public_metadata") or {}),
        data["created_at"],
        data["updated_at"],
    )


def _membership(data: dict[str, Any]) -> tuple[Any, ...]:
    member = data["public_user_data"]
    return (
        data["id"],
        data["organization"]["id"],
        member["user_id"],
        data["role"],
        Jsonb(data.get("permissions") or []),
        member.get("identifier"),
        member.get("first_name"),
        member.get("last_name"),
        member.get("image_url"),
        Jsonb(data.get("public_metadata") or {}),
        data["created_at"],
        data["updated_at"],
    )


BASELINE: Final[
    dict[str, tuple[str, tuple[str, ...], Callable[[dict[str, Any]], tuple[Any, ...]]]]
] = {
    "/v1/organizations": (
        "organizations",
        (
            "id",
            "name",
            "slug",
            "image_url",
            "workspace_id",
            "public_metadata",
            "created_by",
            "max_allowed_memberships",
            "created_at",
            "updated_at",
        ),
        _organization,
    ),
    "/v1/users": (
        "users",
        (
            "id",
            "primary_email_address",
            "username",
            "first_name",
            "last_name",
            "image_url",
            "external_id",
            "public_metadata",
            "created_at",
            "updated_at",
        ),
        _user,
    ),
    "/v1/organization_memberships": (
        "organization_memberships",
        (
            "id",
            "organization_id",
            "user_id",
            "role",
            "permissions",
            "identifier",
            "first_name",
            "last_name",
            "image_url",
            "public_metadata",
            "created_at",
            "updated_at",
        ),
        _membership,
    ),
}


def _pages(client: httpx.Client, path: str) -> Iterator[list[dict[str, Any]]]:
    offset = 0
    while True:
        response = client.get(
            path, params={"limit": PAGE, "offset": offset, "order_by": "+created_at"}
        )
        response.raise_for_status()
        body = response.json()
        items = body if isinstance(body, list) else body["data"]
        yield items
        if len(items) < PAGE:
            return
        offset += len(items)


def run_baseline(database: Database, url: str) -> tuple[int, float]:
    """The same pages, each written with one ``INSERT … ON CONFLICT DO UPDATE``; returns the rows
    and the seconds."""
    rows = 0
    headers = {"Authorization": f"Bearer {SECRET_KEY}"}
    with (
        httpx.Client(base_url=url, headers=headers, timeout=60) as client,
        database.connect() as connection,
    ):
        started = time.perf_counter()
        for path, (table, columns, values_of) in BASELINE.items():
            names = ", ".join((*columns, "synced_at"))
            updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in (*columns, "synced_at"))
            row = "(" + ", ".join(["%s"] * len(columns)) + ", now())"
            for items in _pages(client, path):
                if not items:
                    continue
                statement = " ".join(
                    [
                        f"INSERT INTO {table} ({names}) VALUES",
                        ", ".join([row] * len(items)),
                        f"ON CONFLICT (id) DO UPDATE SET {updates}",
                        f"WHERE {table}.updated_at < EXCLUDED.updated_at",
                    ]
                )
                parameters = [value for item in items for value in values_of(item)]
                connection.execute(statement, parameters)  # type: ignore[arg-type]
                rows += len(items)
        elapsed = time.perf_counter() - started
    return rows, elapsed


def run(context: Context) -> BenchResult:
    size, repeats = sizes(context.plan.quick)
    small = Size(size.users // 10 + 1, size.organizations // 10, size.memberships // 10)
    api_bound = size.pages() / PRODUCTION_RATE
    result = BenchResult(
        NAME,
        TITLE,
        DESCRIPTION.format(
            users=size.users,
            organizations=size.organizations,
            memberships=size.memberships,
            repeats=repeats,
            pages=size.pages(),
        ),
    )
    database = context.database("reconcile")
    context.say(f"reconcile: making the instance ({size.rows:,} objects)")
    fake, url = start_fake_clerk(context, size, "fake-clerk")

    ours = result.measure("clerk-sync reconcile", "rows/s")
    baseline = result.measure("batched INSERT … ON CONFLICT per page", "rows/s")
    memory = result.measure(f"peak RSS, {size.rows:,} objects", "MB", "lower")
    for repeat in range(repeats):
        order = ("baseline", "ours") if repeat % 2 == 0 else ("ours", "baseline")
        for which in order:
            empty(database)
            if which == "baseline":
                rows, seconds = run_baseline(database, url)
                if rows != size.rows:
                    raise BenchError(f"baseline wrote {rows:,} rows, not {size.rows:,}")
                baseline.add(rows / seconds)
                context.say(f"reconcile: baseline {rows / seconds:,.0f} rows/s")
            else:
                report, peak = run_reconcile(
                    context, database, url, UNLIMITED_RATE, f"reconcile-{repeat}"
                )
                created = sum(counts["created"] for counts in report["counts"].values())
                result.checks.append(
                    Check(
                        f"run {repeat + 1}: every object created",
                        f"{created:,}",
                        f"{size.rows:,}",
                        created == size.rows,
                    )
                )
                ours.add(report["listed"] / report["seconds"])
                memory.add(peak / 2**20)
                context.say(
                    f"reconcile: {report['listed'] / report['seconds']:,.0f} rows/s, "
                    f"peak RSS {peak / 2**20:.0f} MB"
                )
    result.ratios.append(Ratio("rows/s, reconcile over batched upsert", ours, baseline, ">= 0.5"))

    empty(database)
    report, _ = run_reconcile(context, database, url, PRODUCTION_RATE, "reconcile-production-rate")
    at_rate = result.measure("clerk-sync reconcile at 100 requests/s", "rows/s")
    at_rate.add(report["listed"] / report["seconds"])
    bound = result.measure("API-bound minimum at 100 requests/s", "rows/s")
    bound.add(size.rows / api_bound)
    result.details["api_bound_seconds"] = api_bound
    result.details["production_rate_run"] = report
    context.supervisor.stop(fake)

    context.say(f"reconcile: peak RSS over a tenth of the instance ({small.rows:,} objects)")
    fake_small, small_url = start_fake_clerk(context, small, "fake-clerk-small")
    empty(database)
    _, small_peak = run_reconcile(context, database, small_url, UNLIMITED_RATE, "reconcile-small")
    context.supervisor.stop(fake_small)
    small_memory = result.measure(f"peak RSS, {small.rows:,} objects", "MB", "lower")
    small_memory.add(small_peak / 2**20)
    result.ratios.append(
        Ratio("peak RSS, instance over a tenth of it", memory, small_memory, "<= 1.2")
    )
    result.notes.append(
        f"At Clerk's production rate a backfill needs at least {api_bound:.1f} s "
        f"({size.pages():,} requests): {size.rows / api_bound:,.0f} rows/s at most."
    )
    database.drop()
    context.databases.remove(database)
    return result
