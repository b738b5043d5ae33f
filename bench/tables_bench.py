"""Cost does not grow with table size: the worker on 1,000,000 existing memberships vs empty."""

from __future__ import annotations

import os

from bench.context import Context
from bench.cpu import describe, mean_cores
from bench.events import EventStream
from bench.pipeline import run_drain
from bench.results import BenchResult, Ratio
from bench.services import Database

NAME = "tables"
TITLE = "Per-event cost vs table size"
DESCRIPTION = (
    "The same kind of workload ({events:,} fresh realistic events per run, drained by "
    "`clerk-sync worker --concurrency {concurrency}`) on an empty database and on one holding "
    "{rows:,} membership rows ({orgs:,} organizations of 100 members, bulk-inserted with "
    "`generate_series`, then `VACUUM ANALYZE`). Per-event cost is 1 / sustained events/s; "
    "as a cross-check that other work on the machine disturbs far less, the CPU time of the "
    "worker's processes and of their PostgreSQL backends per event is reported too. "
    "{repeats} run(s) on each database, alternating; the empty one is emptied before each run."
)
MEMBERS_PER_ORGANIZATION = 100


def fill(database: Database, rows: int) -> None:
    """``rows`` memberships in organizations of 100, over ``rows * 0.4`` distinct users."""
    organizations = max(1, rows // MEMBERS_PER_ORGANIZATION)
    users = max(MEMBERS_PER_ORGANIZATION, int(rows * 0.4))
    with database.connect() as connection:
        connection.execute(
            """
            INSERT INTO organizations (id, name, slug, image_url, workspace_id, public_metadata,
                created_by, max_allowed_memberships, created_at, updated_at, synced_at)
            SELECT 'org_fill' || lpad(g::text, 8, '0'), 'Filler ' || g, 'filler-' || g,
                'https://img.clerk.com/filler', 'ws_fill' || g, '{"plan": "pro"}'::jsonb,
                'user_fill00000001', 500, 1700000000000, 1700000000000 + g, now()
            FROM generate_series(1, %(organizations)s) AS g
            """,
            {"organizations": organizations},
        )
        # Members of one organization are 100 consecutive g; g * 7919 mod users is distinct for
        # them (7919 is prime and does not divide users), so (organization, user) stays unique.
        connection.execute(
            """
            INSERT INTO organization_memberships (id, organization_id, user_id, role,
                permissions, identifier, first_name, last_name, image_url, public_metadata,
                created_at, updated_at, synced_at)
            SELECT 'orgmem_fill' || lpad(g::text, 9, '0'),
                'org_fill' || lpad(((g - 1) / %(per)s + 1)::text, 8, '0'),
                'user_fill' || lpad(((g::bigint * 7919) %% %(users)s)::text, 8, '0'),
                CASE WHEN g %% 10 = 0 THEN 'org:admin' ELSE 'org:member' END,
                '["org:sys_memberships:read"]'::jsonb, 'member' || g || '@example.com',
                'Jane', 'Filler', 'https://img.clerk.com/filler-user', '{}'::jsonb,
                1700000000000 + g, 1700000000000 + g, now()
            FROM generate_series(1, %(rows)s) AS g
            """,
            {
                "rows": organizations * MEMBERS_PER_ORGANIZATION,
                "per": MEMBERS_PER_ORGANIZATION,
                "users": users,
            },
        )
    database.vacuum_analyze()


def membership_count(database: Database) -> int:
    with database.connect() as connection:
        row = connection.execute("SELECT count(*) FROM organization_memberships").fetchone()
    return int(row[0]) if row else 0  # type: ignore[call-overload]


def run(context: Context) -> BenchResult:
    plan = context.plan
    organizations = max(1, plan.table_rows // MEMBERS_PER_ORGANIZATION)
    result = BenchResult(
        NAME,
        TITLE,
        DESCRIPTION.format(
            events=plan.table_events,
            concurrency=plan.worker_concurrency,
            rows=organizations * MEMBERS_PER_ORGANIZATION,
            orgs=organizations,
            repeats=plan.table_repeats,
        ),
    )
    empty = context.database("empty")
    big = context.database("big")
    context.say(f"tables: inserting {plan.table_rows:,} memberships")
    fill(big, plan.table_rows)
    empty.vacuum_analyze()
    result.details["existing_memberships"] = membership_count(big)

    databases = {"empty": empty, "big": big}
    cost = {
        "empty": result.measure("per-event cost, empty database", "ms", "lower"),
        "big": result.measure(
            f"per-event cost, {result.details['existing_memberships']:,} memberships", "ms", "lower"
        ),
    }
    cpu_windows: dict[str, list[dict[str, float]]] = {}
    cpu_cost = {
        "empty": result.measure("CPU per event, empty database", "ms", "lower"),
        "big": result.measure(
            f"CPU per event, {result.details['existing_memberships']:,} memberships", "ms", "lower"
        ),
    }
    for repeat in range(plan.table_repeats):
        order = ("empty", "big") if repeat % 2 == 0 else ("big", "empty")
        for label in order:
            events = EventStream(context.tag()).take(plan.table_events)
            drained, _ = run_drain(
                context.supervisor,
                context.services,
                databases[label],
                events,
                name=f"worker-tables-{label}",
                concurrency=plan.worker_concurrency,
                work_dir=context.work_dir,
                timeout=max(300.0, len(events) / 20),
                keep_tables=label == "big",
            )
            cost[label].add(1000 / drained.events_per_second)
            cpu_windows.setdefault(label, []).append(drained.cpu_cores)
            cpu_cost[label].add(drained.cpu_ms_per_event)
            context.say(
                f"tables: {label} run {repeat + 1}/{plan.table_repeats}: "
                f"{drained.events_per_second:.0f} events/s"
            )
    result.ratios.append(Ratio("per-event cost", cost["big"], cost["empty"], "<= 1.2"))
    result.ratios.append(
        Ratio("CPU per event (worker + PostgreSQL)", cpu_cost["big"], cpu_cost["empty"])
    )
    for label, windows in cpu_windows.items():
        cores = mean_cores(windows)
        result.details[f"cpu_cores_{label}"] = cores
        result.notes.append(f"{label} database runs: {describe(cores, os.cpu_count())}.")
    for database in databases.values():
        database.drop()
        context.databases.remove(database)
    return result
