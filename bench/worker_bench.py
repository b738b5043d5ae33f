"""Worker: sustained events applied per second from a pre-filled queue, against a raw psycopg
loop doing one single-row upsert per transaction."""

from __future__ import annotations

import os
from typing import Any

from bench.context import Context
from bench.cpu import describe
from bench.events import Event, EventStream
from bench.pipeline import Drain, run_drain
from bench.procs import Child
from bench.profiling import Recording, record
from bench.raw import upsert_loop
from bench.results import BenchResult, Check, Ratio
from bench.services import Database

NAME = "worker"
TITLE = "Worker throughput"
DESCRIPTION = (
    "{events:,} realistic mixed events (organizations, memberships, users; creates, updates, "
    "deletes) are published in order through `clerk_sync.broker.publisher.Publisher`, then "
    "`clerk-sync worker --concurrency {concurrency}` is started and timed until every row of "
    "`webhook_events` is finished. Throughput is sustained: events between the first and the "
    "last `processed_at`. "
    "Baseline: one process upserting {baseline:,} of the same events into a plain table, one "
    "single-row `INSERT ... ON CONFLICT DO UPDATE` per transaction, run next to each drain "
    "({repeats} pairs, alternating which goes first, after an unmeasured warm-up of both; each "
    "drain starts from empty tables)."
)


def run(context: Context) -> BenchResult:
    plan = context.plan
    result = BenchResult(
        NAME,
        TITLE,
        DESCRIPTION.format(
            events=plan.worker_events,
            concurrency=plan.worker_concurrency,
            baseline=min(plan.worker_baseline_events, plan.worker_events),
            repeats=plan.worker_repeats,
        ),
    )
    database = context.database("worker")
    events = EventStream(context.tag()).take(plan.worker_events)
    baseline_events = events[: plan.worker_baseline_events]

    baseline = result.measure("raw psycopg upsert loop", "events/s")
    worker = result.measure(f"clerk-sync worker x{plan.worker_concurrency}", "events/s")
    wall = result.measure("clerk-sync worker, wall time incl. start-up", "events/s")
    publish = result.measure("prefill through Publisher", "events/s")
    cpu_cost = result.measure("CPU per event (worker + PostgreSQL)", "ms", "lower")

    def drain_of(batch: list[Event], name: str) -> tuple[Drain, float]:
        return run_drain(
            context.supervisor,
            context.services,
            database,
            batch,
            name=name,
            concurrency=plan.worker_concurrency,
            work_dir=context.work_dir,
            timeout=max(300.0, len(batch) / 20),
        )

    warm_up = events[: max(1, len(events) // 10)]
    context.say(f"worker: warm-up, unmeasured (raw baseline and a drain of {len(warm_up):,})")
    upsert_loop(database.url, baseline_events[: len(warm_up)])
    drain_of(warm_up, "worker-warm-up")

    drained: Drain | None = None
    dead = 0
    for repeat in range(plan.worker_repeats):
        # Pairs alternate which goes first, so a drift in the machine's speed hits both alike.
        order = ("baseline", "worker") if repeat % 2 == 0 else ("worker", "baseline")
        for step in order:
            if step == "baseline":
                context.say(f"worker: raw baseline on {len(baseline_events):,} events")
                rate = upsert_loop(database.url, baseline_events)
                baseline.add(rate)
                context.say(f"worker: raw baseline {rate:.0f} events/s")
                continue
            context.say(
                f"worker: draining {len(events):,} events ({repeat + 1}/{plan.worker_repeats})"
            )
            drained, publish_seconds = drain_of(events, "worker")
            worker.add(drained.events_per_second)
            wall.add(drained.events / drained.wall_seconds)
            publish.add(len(events) / publish_seconds)
            cpu_cost.add(drained.cpu_ms_per_event)
            dead += drained.statuses.get("dead", 0)
            result.notes.append(
                f"Drain {repeat + 1}: {drained.events_per_second:.0f} events/s; "
                f"{describe(drained.cpu_cores, os.cpu_count())}."
            )
            context.say(f"worker: {drained.events_per_second:.0f} events/s")
    assert drained is not None, "worker_repeats is at least 1"

    result.ratios.append(Ratio("events/s", worker, baseline, ">= 1.0"))
    result.checks.append(Check("no dead letters", f"{dead} dead", "0 dead", dead == 0))
    result.details["cpu_cores"] = drained.cpu_cores
    result.details["statuses"] = drained.statuses
    result.details["span_seconds"] = drained.span_seconds
    result.details["wall_seconds"] = drained.wall_seconds
    result.details["event_types"] = _event_types(events)

    if context.profile:
        result.details["profile"] = _profile(context, database, plan.worker_events)
    return result


def _event_types(events: list[Event]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in events:
        counts[event.event_type] = counts.get(event.event_type, 0) + 1
    return dict(sorted(counts.items()))


def _profile(context: Context, database: Database, size: int) -> dict[str, Any]:
    """An extra, unmeasured drain with py-spy sampling the worker's processes."""
    events = EventStream(context.tag()).take(min(size, 10_000))
    recordings: list[Recording] = []

    def attach(worker: Child) -> None:
        recording = record(worker, context.work_dir / "profile-worker.txt", seconds=3600)
        if recording is not None:
            recordings.append(recording)

    context.say(f"worker: profiling an extra drain of {len(events):,} events with py-spy")
    try:
        run_drain(
            context.supervisor,
            context.services,
            database,
            events,
            name="worker-profiled",
            concurrency=context.plan.worker_concurrency,
            work_dir=context.work_dir,
            timeout=max(300.0, len(events) / 10),
            on_started=attach,
        )
    finally:
        summaries = [recording.stop() for recording in recordings]
    if not summaries:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    return summaries[0]
