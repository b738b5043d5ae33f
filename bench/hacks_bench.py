"""Hacks: what each use of celery's and kombu's internals in ``clerk_sync.broker`` buys, as
shipped ÷ stock on the measure it is meant to improve (worker events/s or ingress req/s).

Every variant is the shipped code with ONE hack switched back to the stock library behaviour by
``bench.stock`` (a launcher that patches ``clerk_sync.broker`` in the process, then runs
``clerk_sync.cli.main()``; the shipped runs go through the same launcher, patching nothing).
Opt-in (``--only hacks``): it is not part of the default run.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench import stock
from bench.context import Context, http_status
from bench.cpu import CpuTracker, describe, postgres_backends, redis_server, tree
from bench.events import WEBHOOK_PATH, Event, EventStream, Signer
from bench.pipeline import (
    POSTGRES_GROUP,
    WORKER_GROUP,
    Server,
    prefill,
    start_ingress,
    start_worker,
)
from bench.procs import BenchError, Child, wait_until
from bench.results import BenchResult, Check, Measure, Ratio
from bench.services import Database, Services
from bench.wrk import require_wrk, run_wrk, write_signed_requests

NAME = "hacks"
TITLE = "What each broker hack buys"
DESCRIPTION = (
    "Each hack of `clerk_sync.broker` (its uses of private celery and kombu internals) "
    "against a variant of the shipped code in which that one hack is switched back to the "
    "stock library behaviour (`bench/stock.py`: `python -m bench.stock` patches "
    "`clerk_sync.broker` in the process, then runs `clerk-sync`; set `CLERK_SYNC_BENCH_STOCK`; "
    "the shipped runs go through the same launcher and patch nothing). Ratio: shipped over "
    "stock on the measure the hack is meant to improve, so above 1 means the hack helps. "
    "Worker hacks: `clerk-sync worker --concurrency {concurrency}` drains a prefilled backlog "
    "of {events:,} realistic events (the same events every drain, from empty tables; "
    "throughput between the first and the last `processed_at`; a drain is cut after "
    "{window:g} s of processing, so a much slower variant is measured on part of the backlog). "
    "Ingress hacks: wrk, {connections} connections, {wrk_seconds:g} s per run, against "
    "`clerk-sync ingress --workers {workers} --threads {threads}`, one server per variant. "
    "Both: {rounds} round(s) after a warm-up; the shipped code runs first and after every "
    "round, each variant once per round in between (order rotated), and a variant is "
    "compared with the mean of the two shipped runs around its round. "
    "Verdict: a hack keeps its place at a ratio of {keeps:.2f}x or more."
)

SHIPPED = "shipped"
KEEPS = 1.10
KEEPS_TEXT = "keeps its place (≥ 1.10x)"
BELOW_TEXT = "below 10%"
COMMANDS = ("brpop", "evalsha", "multi", "zrem")
"""Redis commands counted per event (``INFO commandstats``; Lua scripts' calls count too):
what tells the variants apart on the wire."""
STATE_TIMEOUT = 30.0
MEASURE_TEXT = {
    "worker": "worker events/s",
    "ingress": "ingress req/s",
}


def hacks_for(measure: str) -> list[str]:
    """The hacks meant to improve ``measure`` that the shipped code still has."""
    return [
        name
        for name, hack in stock.HACKS.items()
        if hack.measure == measure and stock.present(name)
    ]


def absent_hacks() -> list[str]:
    return [name for name in stock.HACKS if not stock.present(name)]


def bracketed(variants: Sequence[str], rounds: int) -> list[tuple[int, str]]:
    """The run order, as (round, label): the shipped code first and after every round, each
    variant once per round in between (rotated, and reversed every other round). A variant of
    round r is compared with the mean of shipped runs r and r + 1, which bracket it, so a drift
    of the machine's speed over a round cancels out to first order."""
    schedule = [(0, SHIPPED)]
    for number in range(rounds):
        shift = number % len(variants)
        order = [*variants[shift:], *variants[:shift]]
        if number % 2:
            order.reverse()
        schedule += [(number, variant) for variant in order]
        schedule.append((number + 1, SHIPPED))
    return schedule


def bracket_means(values: Sequence[float]) -> list[float]:
    return [(before + after) / 2 for before, after in itertools.pairwise(values)]


# What the launcher says in a process's log.


def launcher_lines(child: Child, what: str) -> list[str]:
    try:
        text = child.log_path.read_text(errors="replace")
    except OSError:
        return []
    prefix = f"{stock.MARKER} {what}"
    return [line.split(prefix, 1)[1].strip() for line in text.splitlines() if prefix in line]


def worker_state(child: Child) -> dict[str, str]:
    """The worker's ``bench.stock: worker state`` line, as a dict (waits for it)."""
    line = wait_until(
        lambda: launcher_lines(child, "worker state"),
        STATE_TIMEOUT,
        f"{child.name} to report its state",
        alive=child.check_alive,
    )[0]
    return dict(item.split("=", 1) for item in line.split())


def counters(child: Child) -> dict[str, int]:
    """The counters the patched paths of a (stopped) process's tree kept, summed."""
    totals: dict[str, int] = {}
    for line in launcher_lines(child, "counters"):
        _pid, _, counted = line.partition(": ")
        for item in counted.split(", "):
            name, _, count = item.rpartition(": ")
            if name and count.isdigit():
                totals[name] = totals.get(name, 0) + int(count)
    return totals


def check_state(hack: str, state: dict[str, str], shipped: dict[str, str]) -> None:
    """The variant's state must show its hack switched back, and nothing else changed."""
    expected = (
        dict(item.split("=", 1) for item in stock.HACKS[hack].expect) if hack != SHIPPED else {}
    )
    wrong = {key: state.get(key) for key, value in expected.items() if state.get(key) != value}
    changed = {
        key: (shipped.get(key), value)
        for key, value in state.items()
        if key not in expected and shipped.get(key) != value
    }
    if wrong or changed:
        raise BenchError(
            f"stock {hack}: the worker's state is not the shipped one with {hack} switched back: "
            f"expected {expected}, wrong {wrong}, other changes (shipped, variant) {changed}"
        )


def command_calls(services: Services) -> dict[str, int]:
    client = services.redis()
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in COMMANDS}


def per_event(before: dict[str, int], after: dict[str, int], events: int) -> dict[str, float]:
    return {name: (after[name] - before[name]) / max(1, events) for name in COMMANDS}


def commands_text(calls: dict[str, float]) -> str:
    return ", ".join(f"{name.upper()} {value:.2f}" for name, value in calls.items())


# The worker hacks: drains of the same backlog.


@dataclass
class DrainRun:
    label: str
    events_per_second: float
    finished: int
    capped: bool
    cpu_ms_per_event: float
    commands: dict[str, float]
    cores: dict[str, float]
    state: dict[str, str]
    counters: dict[str, int] = field(default_factory=dict)
    dead: int = 0


def drain_once(
    context: Context, database: Database, events: Sequence[Event], label: str, name: str
) -> DrainRun:
    """Empty tables and queue, prefill ``events``, start the worker of ``label`` (``shipped`` or
    a hack switched back), measure until the backlog is empty or the window has passed."""
    plan = context.plan
    services = context.services
    queue = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    services.flush_redis()
    database.empty()
    prefill(services, queue, events)
    before = command_calls(services)
    names = [] if label == SHIPPED else [label]
    worker = start_worker(
        context.supervisor,
        services,
        database,
        queue,
        name,
        plan.worker_concurrency,
        context.work_dir,
        module=stock.MODULE,
        extra_env=stock.variant_env(names),
    )
    capped = False
    try:
        state = worker_state(worker)
        cpu = CpuTracker(
            {
                WORKER_GROUP: tree(worker.pid),
                POSTGRES_GROUP: postgres_backends(database.name),
                "redis-server": redis_server(services),
            }
        )
        started = time.monotonic()
        first_seen: float | None = None
        finished = 0
        last_progress = started
        with database.connect() as connection:
            while True:
                cpu.sample()
                count = database.count_finished(connection)
                now = time.monotonic()
                if count != finished:
                    finished, last_progress = count, now
                if finished and first_seen is None:
                    first_seen = now
                if finished >= len(events):
                    break
                if first_seen is not None and now - first_seen >= plan.hacks_drain_window:
                    capped = True
                    break
                worker.check_alive()
                if now - last_progress > 60:
                    raise BenchError(f"{name}: no progress for 60s at {finished}/{len(events)}")
                time.sleep(0.25)
        wall = time.monotonic() - started
        cores = cpu.finish()
        after = command_calls(services)
        first, last, counted = database.processing_span()
        statuses = database.status_counts()
    finally:
        context.supervisor.stop(worker)
        services.flush_redis()
    if not capped and counted != len(events):
        raise BenchError(f"{name}: {counted} events finished, {len(events)} published")
    busy = cores.get(WORKER_GROUP, 0.0) + cores.get(POSTGRES_GROUP, 0.0)
    return DrainRun(
        label=label,
        events_per_second=(counted - 1) / (last - first) if last > first else 0.0,
        finished=counted,
        capped=capped,
        cpu_ms_per_event=busy * wall * 1000 / finished if finished else math.nan,
        commands=per_event(before, after, finished),
        cores=cores,
        state=state,
        counters=counters(worker),
        dead=statuses.get("dead", 0),
    )


@dataclass
class Part:
    """What one part (worker, ingress) hands to the report: per hack, the shipped and
    stock measures it is compared on, and what verified the variant."""

    measure: str
    shipped: Measure
    stock: dict[str, Measure] = field(default_factory=dict)
    cpu_shipped: Measure | None = None
    cpu_stock: dict[str, Measure] = field(default_factory=dict)
    verified: dict[str, str] = field(default_factory=dict)


def run_worker_part(context: Context, result: BenchResult, database: Database) -> Part:
    plan = context.plan
    variants = hacks_for("worker")
    events = EventStream(context.tag()).take(plan.hacks_events)
    shipped_each = result.measure("worker, shipped: each drain", "events/s")
    part = Part(
        "worker",
        result.measure("worker, shipped (mean of the drains around the round)", "events/s"),
        {name: result.measure(f"worker, stock {name}", "events/s") for name in variants},
        result.measure("worker CPU per event, shipped (mean around the round)", "ms", "lower"),
        {
            name: result.measure(f"worker CPU per event, stock {name}", "ms", "lower")
            for name in variants
        },
    )
    cpu_each: list[float] = []
    runs: list[DrainRun] = []

    warm_up = events[: max(1, len(events) // 4)]
    context.say(f"hacks: worker warm-up, unmeasured (shipped, {len(warm_up):,} events)")
    shipped_state = drain_once(context, database, warm_up, SHIPPED, "hacks-worker-warm-up").state
    check_state(SHIPPED, shipped_state, shipped_state)

    for number, label in bracketed(variants, plan.hacks_rounds):
        run = drain_once(context, database, events, label, f"hacks-worker-{label}-{number}")
        check_state(label, run.state, shipped_state)
        runs.append(run)
        if label == SHIPPED:
            shipped_each.add(run.events_per_second)
            cpu_each.append(run.cpu_ms_per_event)
        else:
            part.stock[label].add(run.events_per_second)
            part.cpu_stock[label].add(run.cpu_ms_per_event)
        context.say(
            f"hacks: worker {label} (round {number + 1}): {run.events_per_second:,.0f} events/s"
            f"{' (cut after the window)' if run.capped else ''}, "
            f"{run.cpu_ms_per_event:.2f} ms CPU/event; per event {commands_text(run.commands)}"
        )
    for value in bracket_means(shipped_each.values):
        part.shipped.add(value)
    for value in bracket_means(cpu_each):
        assert part.cpu_shipped is not None
        part.cpu_shipped.add(value)

    dead = sum(run.dead for run in runs)
    result.checks.append(
        Check("worker drains: no dead letters", f"{dead} dead", "0 dead", dead == 0)
    )
    verify_worker_runs(result, part, runs, len(events))
    result.details["worker_runs"] = [
        {
            "label": run.label,
            "events_per_second": run.events_per_second,
            "finished": run.finished,
            "cut_after_window": run.capped,
            "cpu_ms_per_event": run.cpu_ms_per_event,
            "commands_per_event": run.commands,
            "counters": run.counters,
            "state": run.state,
            "cores": run.cores,
        }
        for run in runs
    ]
    for label in [SHIPPED, *variants]:
        mine = [run for run in runs if run.label == label]
        median = {name: statistics.median(run.commands[name] for run in mine) for name in COMMANDS}
        capped = sum(run.capped for run in mine)
        result.notes.append(
            f"worker {label}: Redis commands per event (median of drains) "
            f"{commands_text(median)}"
            + (
                f"; {capped} of {len(mine)} drains cut after {plan.hacks_drain_window:g} s "
                f"({statistics.median(run.finished for run in mine):,.0f} events measured)"
                if capped
                else ""
            )
            + f"; {describe(mine[-1].cores, os.cpu_count())}."
        )
    return part


def verify_worker_runs(
    result: BenchResult, part: Part, runs: Sequence[DrainRun], events: int
) -> None:
    """What shows, in each stock drain, that its patch took effect (the state line has been
    checked already: each variant differs from the shipped worker in its hack's switch only)."""

    def of(label: str) -> list[DrainRun]:
        return [run for run in runs if run.label == label]

    def state_of(label: str) -> str:
        return "worker state " + " ".join(stock.HACKS[label].expect)

    def check(name: str, value: str, target: str, met: bool) -> None:
        result.checks.append(Check(name, value, target, met))

    shipped = of(SHIPPED)
    if of("fetch"):
        shipped_brpop = max(run.commands["brpop"] for run in shipped)
        stock_brpop = min(run.commands["brpop"] for run in of("fetch"))
        part.verified["fetch"] = (
            f"{state_of('fetch')}; BRPOP per event {stock_brpop:.2f} (lowest drain; shipped at "
            f"most {shipped_brpop:.2f}), EVALSHA per event "
            f"{max(run.commands['evalsha'] for run in of('fetch')):.2f}"
        )
        check(
            "stock fetch: one BRPOP per message",
            f"{stock_brpop:.2f} BRPOP/event (shipped {shipped_brpop:.2f})",
            ">= 0.9 (shipped <= 0.5)",
            stock_brpop >= 0.9 and shipped_brpop <= 0.5,
        )

    if of("bulk-ack"):
        acknowledged = [
            (run.counters.get("messages acknowledged one by one", 0), run.finished)
            for run in of("bulk-ack")
        ]
        zrem = min(run.commands["zrem"] for run in of("bulk-ack"))
        part.verified["bulk-ack"] = (
            f"{state_of('bulk-ack')}; messages acknowledged one by one per drain "
            f"{', '.join(f'{count:,}' for count, _ in acknowledged)} of {events:,}; "
            f"ZREM per event {zrem:.2f} (shipped "
            f"{max(run.commands['zrem'] for run in shipped):.2f})"
        )
        check(
            "stock bulk-ack: every message acknowledged on its own",
            f"{min(count for count, _ in acknowledged):,} (fewest in a drain)",
            f">= the events drained ({events:,})",
            all(count >= finished for count, finished in acknowledged),
        )

    if of("batching"):
        zrem = min(run.commands["zrem"] for run in of("batching"))
        part.verified["batching"] = (
            f"{state_of('batching')}; ZREM per event {zrem:.2f} (kombu's ack of each task message)"
        )
        check(
            "stock batching: one Celery task per event",
            f"{zrem:.2f} ZREM/event",
            ">= 0.9",
            zrem >= 0.9,
        )


# The ingress hacks: wrk runs against one server per variant.


def run_ingress_part(context: Context, result: BenchResult) -> Part:
    plan = context.plan
    require_wrk()
    variants = hacks_for("ingress")
    labels = [SHIPPED, *variants]
    events = EventStream(context.tag()).take(plan.signed_requests)
    requests_file = context.work_dir / "hacks-signed-requests.lua"
    queues = {label: f"bench-hacks-{label}-{uuid.uuid4().hex[:6]}" for label in labels}
    context.services.flush_redis()
    servers: dict[str, Server] = {}
    for label in labels:
        servers[label] = start_ingress(
            context.supervisor,
            context.services,
            name=f"gunicorn-hacks-{label}",
            queue=queues[label],
            work_dir=context.work_dir,
            workers=plan.ingress_workers,
            threads=plan.ingress_threads,
            module=stock.MODULE,
            extra_env=stock.variant_env([] if label == SHIPPED else [label]),
        )
        applied = launcher_lines(servers[label].child, "applied")
        wanted = "nothing (shipped code)" if label == SHIPPED else f"stock {label}"
        if not any(line.startswith(wanted) for line in applied):
            raise BenchError(f"gunicorn-hacks-{label}: the launcher did not apply {wanted}")
        headers = Signer().headers(events[0])
        status = http_status(
            servers[label].url + WEBHOOK_PATH, "POST", events[0].body.encode(), headers
        )
        if status != 202:
            raise BenchError(f"{label} answered {status} to a signed webhook, not 202")

    shipped_each = result.measure("ingress, shipped: each run", "req/s")
    part = Part(
        "ingress",
        result.measure("ingress, shipped (mean of the runs around the round)", "req/s"),
        {name: result.measure(f"ingress, stock {name}", "req/s") for name in variants},
    )
    same_id: dict[str, list[float]] = {label: [] for label in labels}
    runs: list[dict[str, Any]] = []

    def one_run(label: str, seconds: float) -> float:
        context.services.flush_redis()
        write_signed_requests(requests_file, events)
        outcome = run_wrk(
            servers[label].url + WEBHOOK_PATH,
            requests_file=requests_file,
            seconds=seconds,
            connections=plan.ingress_connections,
            threads=plan.wrk_threads,
        )
        if outcome.error_count:
            raise BenchError(f"ingress {label}: wrk saw errors {outcome.errors}")
        client = context.services.redis()
        try:
            queued = int(client.llen(queues[label]))
            sample = client.lrange(queues[label], 0, 49)
        finally:
            client.close()
        if queued < outcome.requests:
            raise BenchError(f"ingress {label} answered {outcome.requests} but queued {queued}")
        same_id[label].append(_share_tag_is_id(sample))
        runs.append(
            {
                "label": label,
                "req_per_s": outcome.requests_per_second,
                "p50_ms": outcome.latency_ms("p50"),
                "p99_ms": outcome.latency_ms("p99"),
            }
        )
        return outcome.requests_per_second

    for label in labels:
        context.say(f"hacks: ingress warm-up {label}")
        one_run(label, plan.ingress_warmup_seconds)
    for number, label in bracketed(variants, plan.hacks_rounds):
        rate = one_run(label, plan.hacks_wrk_seconds)
        (shipped_each if label == SHIPPED else part.stock[label]).add(rate)
        context.say(f"hacks: ingress {label} (round {number + 1}): {rate:,.0f} req/s")
    for value in bracket_means(shipped_each.values):
        part.shipped.add(value)
    result.details["ingress_runs"] = runs

    if "template" in variants:
        # A templated message uses one fresh UUID as task id and delivery tag; Celery and kombu
        # draw one each.
        shipped_same = min(same_id[SHIPPED])
        stock_same = max(same_id["template"])
        part.verified["template"] = (
            f"queued messages whose delivery tag is their task id: {stock_same:.0%} (shipped "
            f"{shipped_same:.0%}: the template uses one UUID for both, Celery and kombu one "
            "each)"
        )
        result.checks.append(
            Check(
                "stock template: messages built by Celery and kombu",
                f"tag = id in {stock_same:.0%} of sampled messages (shipped {shipped_same:.0%})",
                "0% (shipped 100%)",
                stock_same == 0.0 and shipped_same == 1.0,
            )
        )
    for server in servers.values():
        context.supervisor.stop(server.child)
    context.services.flush_redis()
    return part


def _share_tag_is_id(raw_messages: Sequence[bytes]) -> float:
    if not raw_messages:
        return math.nan
    same = 0
    for raw in raw_messages:
        message = json.loads(raw)
        same += message["properties"]["delivery_tag"] == message["headers"]["id"]
    return same / len(raw_messages)


# Reporting.


def _value(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:,.1f} {unit}"
    return f"{value:,.2f} {unit}"


def _measure_text(measure: Measure) -> str:
    text = _value(measure.median, measure.unit)
    if len(measure.values) > 1:
        low, high = _value(measure.low, ""), _value(measure.high, "")
        text += f" [{low.strip()}-{high.strip()}]"
    return text


def _ratio_text(ratio: Ratio) -> str:
    if math.isnan(ratio.value):
        return "-"
    low, high = ratio.spread
    text = f"**{ratio.value:.2f}x**"
    if not (math.isnan(low) or math.isnan(high)):
        text += f" [{low:.2f}-{high:.2f}]"
    return text


def _verdict(ratio: Ratio) -> str:
    if math.isnan(ratio.value):
        return "-"
    verdict = KEEPS_TEXT if ratio.value >= KEEPS else BELOW_TEXT
    if f"{ratio.value:.2f}" == f"{KEEPS:.2f}":
        verdict += f" ({ratio.value:.3f}x)"
    low, high = ratio.spread
    if low < KEEPS <= high:
        verdict += f" (rounds {low:.2f}-{high:.2f}x straddle {KEEPS:.2f}x)"
    return verdict


def report(result: BenchResult, parts: Sequence[Part]) -> list[str]:
    """Ratios (one per hack), and the markdown table of the benchmark's section."""
    table = [
        "| hack | measure | shipped | stock | ratio [spread] | verdict | "
        "CPU/event, stock ÷ shipped |",
        "|---|---|---|---|---|---|---|",
    ]
    how = [
        "| hack | shipped | stock variant (`CLERK_SYNC_BENCH_STOCK`) | verified by |",
        "|---|---|---|---|",
    ]
    for part in parts:
        for name, stock_measure in part.stock.items():
            hack = stock.HACKS[name]
            ratio = Ratio(
                f"{name}: {MEASURE_TEXT[part.measure]}, shipped ÷ stock",
                part.shipped,
                stock_measure,
            )
            verdict = _verdict(ratio)
            ratio.verdict = verdict
            result.ratios.append(ratio)
            cpu = "-"
            if part.cpu_shipped is not None and name in part.cpu_stock:
                cpu_ratio = Ratio("cpu", part.cpu_stock[name], part.cpu_shipped)
                cpu = _ratio_text(cpu_ratio).replace("**", "")
            table.append(
                f"| `{name}` | {MEASURE_TEXT[part.measure]} | {_measure_text(part.shipped)} | "
                f"{_measure_text(stock_measure)} | {_ratio_text(ratio)} | {verdict} | {cpu} |"
            )
            how.append(
                f"| `{name}` | {hack.shipped} | {hack.stock} | {part.verified.get(name, '-')} |"
            )
    for name in absent_hacks():
        hack = stock.HACKS[name]
        table.append(
            f"| `{name}` | {MEASURE_TEXT[hack.measure]} | - | - | - | not in the shipped code "
            "(nothing to switch back) | - |"
        )
        how.append(f"| `{name}` | {hack.shipped} | {hack.stock} | (not measured: absent) |")
    return [*table, "", *how]


def run(context: Context) -> BenchResult:
    plan = context.plan
    result = BenchResult(
        NAME,
        TITLE,
        DESCRIPTION.format(
            concurrency=plan.worker_concurrency,
            events=plan.hacks_events,
            window=plan.hacks_drain_window,
            connections=plan.ingress_connections,
            wrk_seconds=plan.hacks_wrk_seconds,
            workers=plan.ingress_workers,
            threads=plan.ingress_threads,
            rounds=plan.hacks_rounds,
            keeps=KEEPS,
        ),
    )
    database = context.database("hacks")
    steps: list[tuple[str, Callable[[], Part]]] = [
        ("worker", lambda: run_worker_part(context, result, database)),
        ("ingress", lambda: run_ingress_part(context, result)),
    ]
    absent = absent_hacks()
    if absent:
        context.say(f"hacks: not in the shipped code, not measured: {', '.join(absent)}")
        result.notes.append(
            "Not in the shipped code, so not measured: "
            + ", ".join(f"`{name}`" for name in absent)
            + "."
        )
    result.details["absent"] = absent
    parts: list[Part] = []
    for what, step in steps:
        if not hacks_for(what):
            continue
        started = time.monotonic()
        parts.append(step())
        result.details[f"{what}_seconds"] = round(time.monotonic() - started, 1)
    result.details["markdown"] = report(result, parts)
    for line in result.details["markdown"]:
        context.say(line)
    return result
