"""Backlog drain: a large pre-filled queue drains completely, in bounded worker memory."""

from __future__ import annotations

import os

from bench.context import Context
from bench.cpu import describe
from bench.events import EventStream
from bench.pipeline import Drain, run_drain
from bench.results import BenchResult, Check, Ratio

NAME = "backlog"
TITLE = "Backlog drain"
DESCRIPTION = (
    "A queue of {large:,} realistic events (published in order through `Publisher`) is drained "
    "by `clerk-sync worker --concurrency {concurrency}`; nothing may be lost: every svix id ends "
    "up as exactly one finished row, and queue and ledger end empty. The worker's process tree "
    "(main process and pool) is sampled every 0.5 s (RSS summed over the processes, and PSS, "
    "which counts shared pages once). Baseline: the same drain of {small:,} events, so memory "
    "must not grow with the backlog."
)
MB = 1024 * 1024


def run(context: Context) -> BenchResult:
    plan = context.plan
    result = BenchResult(
        NAME,
        TITLE,
        DESCRIPTION.format(
            large=plan.backlog_large, small=plan.backlog_small, concurrency=plan.worker_concurrency
        ),
    )
    database = context.database("backlog")
    small_label, large_label = f"{plan.backlog_small:,} events", f"{plan.backlog_large:,} events"
    rss = {
        "small": result.measure(f"peak worker RSS, {small_label}", "MB", "lower"),
        "large": result.measure(f"peak worker RSS, {large_label}", "MB", "lower"),
    }
    pss = {
        "small": result.measure(f"peak worker PSS, {small_label}", "MB", "lower"),
        "large": result.measure(f"peak worker PSS, {large_label}", "MB", "lower"),
    }
    rate = {
        "small": result.measure(f"drain rate, {small_label}", "events/s"),
        "large": result.measure(f"drain rate, {large_label}", "events/s"),
    }
    for size, count in (("small", plan.backlog_small), ("large", plan.backlog_large)):
        context.say(f"backlog: publishing and draining {count:,} events")
        events = EventStream(context.tag()).take(count)
        drained, publish_seconds = run_drain(
            context.supervisor,
            context.services,
            database,
            events,
            name=f"worker-backlog-{size}",
            concurrency=plan.worker_concurrency,
            work_dir=context.work_dir,
            timeout=max(300.0, count / 20),
            sample_memory=True,
        )
        rss[size].add(drained.peak_rss_bytes / MB)
        pss[size].add(drained.peak_pss_bytes / MB)
        rate[size].add(drained.events_per_second)
        result.checks.append(_nothing_lost(count, drained))
        result.details[size] = {
            "events": count,
            "publish_seconds": publish_seconds,
            "drain_seconds": drained.wall_seconds,
            "statuses": drained.statuses,
            "left_in_queue": drained.left_in_queue,
            "left_in_ledger": drained.left_in_ledger,
            "memory_mb": _downsample(drained),
            "cpu_cores": drained.cpu_cores,
        }
        result.notes.append(
            f"Drain of {count:,} events: {describe(drained.cpu_cores, os.cpu_count())}."
        )
        context.say(
            f"backlog: {count:,} events at {drained.events_per_second:.0f} events/s, "
            f"peak RSS {drained.peak_rss_bytes / MB:.0f} MB"
        )
    result.ratios.append(Ratio("peak RSS", rss["large"], rss["small"], "<= 1.2"))
    result.ratios.append(Ratio("peak PSS", pss["large"], pss["small"]))
    result.ratios.append(Ratio("drain rate", rate["large"], rate["small"]))
    return result


def _nothing_lost(count: int, drained: Drain) -> Check:
    statuses = drained.statuses
    rows = sum(statuses.values())
    unfinished = statuses.get("received", 0)
    dead = statuses.get("dead", 0)
    lost = rows != count or unfinished or dead or drained.left_in_queue or drained.left_in_ledger
    return Check(
        f"nothing lost ({count:,} events)",
        f"{rows:,} rows, {unfinished} unfinished, {dead} dead, "
        f"queue {drained.left_in_queue}, ledger {drained.left_in_ledger}",
        f"{count:,} rows, all finished, queue and ledger empty",
        not lost,
    )


def _downsample(drained: Drain, points: int = 200) -> list[tuple[float, float, float]]:
    samples = drained.memory_samples
    step = max(1, len(samples) // points)
    return [
        (round(seconds, 1), round(rss / MB, 1), round(pss / MB, 1))
        for seconds, rss, pss in samples[::step]
    ]
