"""Ingress: verify + enqueue under gunicorn, against a bare Flask 204 endpoint (same command)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

from bench.context import Context, http_status
from bench.cpu import BUSY, CpuTracker, describe, mean_cores, redis_server, tree
from bench.events import WEBHOOK_PATH, Event, EventStream, Signer
from bench.pipeline import Server, start_ingress
from bench.procs import BenchError
from bench.profiling import record
from bench.results import BenchResult, Ratio
from bench.wrk import WrkResult, require_wrk, run_wrk, write_signed_requests

NAME = "ingress"
TITLE = "Ingress throughput and latency"
DESCRIPTION = (
    "wrk POSTs realistic signed Clerk webhooks over {connections} keep-alive connections for "
    "{seconds:g} s per run to `clerk-sync ingress --workers {workers} --threads {threads}` "
    "(gthread), which verifies each signature and publishes a Celery task message (and ledger "
    "entry) to the real Redis broker. Baseline: the same command and gunicorn configuration "
    "serving a bare Flask view that reads the body and answers 204; for reference, a floor: "
    "that view plus one Redis round trip. Runs alternate between the three ({repeats} each, "
    "after a warm-up)."
)


LABELS = ("bare", "floor", "ingress")
TITLES = {
    "bare": "bare Flask 204",
    "floor": "floor (bare + one Redis round trip)",
    "ingress": "clerk-sync ingress",
}


def run(context: Context) -> BenchResult:
    plan = context.plan
    result = BenchResult(
        NAME,
        TITLE,
        DESCRIPTION.format(
            connections=plan.ingress_connections,
            seconds=plan.ingress_seconds,
            workers=plan.ingress_workers,
            threads=plan.ingress_threads,
            repeats=plan.ingress_repeats,
        ),
    )
    require_wrk()
    queue = f"bench-ingress-{uuid.uuid4().hex[:6]}"
    events = EventStream(context.tag()).take(plan.signed_requests)
    requests_file = context.work_dir / "signed-requests.lua"
    context.services.flush_redis()

    servers: dict[str, Server] = {}
    for label in LABELS:
        servers[label] = start_ingress(
            context.supervisor,
            # The floor is an LPUSH to Redis whatever clerk-sync's broker.
            context.services if label == "ingress" else context.services.on_redis(),
            name=f"gunicorn-{label}",
            queue=queue,
            work_dir=context.work_dir,
            workers=plan.ingress_workers,
            threads=plan.ingress_threads,
            app=label,
        )
    _probe(servers, events[0])

    rps = {label: result.measure(TITLES[label], "req/s") for label in LABELS}
    p50 = {label: result.measure(f"{TITLES[label]} p50", "ms", "lower") for label in LABELS}
    p99 = {label: result.measure(f"{TITLES[label]} p99", "ms", "lower") for label in LABELS}
    runs: list[dict[str, Any]] = []
    cpu_windows: dict[str, list[dict[str, float]]] = {}
    redis = redis_server(context.services)

    def one_run(label: str, seconds: float) -> tuple[WrkResult, dict[str, float]]:
        context.services.flush_redis()  # the queue grows by every accepted request
        context.services.purge_queue(queue)
        write_signed_requests(requests_file, events)
        cpu = CpuTracker(
            {f"gunicorn ({label})": tree(servers[label].child.pid), "redis-server": redis}
        )
        outcome = run_wrk(
            servers[label].url + WEBHOOK_PATH,
            requests_file=requests_file,
            seconds=seconds,
            connections=plan.ingress_connections,
            threads=plan.wrk_threads,
        )
        cores = cpu.finish()
        cpu_windows.setdefault(label, []).append(cores)
        if label == "ingress":
            queued = _queue_length(context, queue)
            accepted = outcome.requests - outcome.errors.get("status", 0)
            if accepted > len(events):
                raise BenchError(
                    f"ingress answered {accepted} requests, more than the {len(events)} signed "
                    "ones: some were copies, which it does not queue (raise signed_requests)"
                )
            if queued < accepted:
                raise BenchError(f"ingress answered {accepted} requests but queued {queued}")
        if outcome.error_count:
            raise BenchError(f"{label}: wrk saw errors {outcome.errors}")
        return outcome, cores

    for label in LABELS:
        context.say(f"ingress: warm-up {label}")
        one_run(label, plan.ingress_warmup_seconds)
    cpu_windows.clear()
    for repeat in range(plan.ingress_repeats):
        # Alternate the order, so a drift in the machine's load hits all alike.
        order = LABELS if repeat % 2 == 0 else LABELS[::-1]
        for label in order:
            outcome, cores = one_run(label, plan.ingress_seconds)
            rps[label].add(outcome.requests_per_second)
            p50[label].add(outcome.latency_ms("p50"))
            p99[label].add(outcome.latency_ms("p99"))
            runs.append(
                {
                    "repeat": repeat,
                    "server": label,
                    "requests": outcome.requests,
                    "seconds": outcome.seconds,
                    "req_per_s": outcome.requests_per_second,
                    "latency_ms": {
                        key: round(value / 1000, 3) for key, value in outcome.latency_us.items()
                    },
                    "errors": outcome.errors,
                    "machine_busy_cores": cores[BUSY],
                }
            )
            result.notes.extend(_stall_note(label, repeat, cores[BUSY]))
            context.say(
                f"ingress: {label} run {repeat + 1}/{plan.ingress_repeats}: "
                f"{outcome.requests_per_second:.0f} req/s, p99 {outcome.latency_ms('p99'):.1f} ms, "
                f"machine busy {cores[BUSY]:.2f} cores"
            )
    result.details["runs"] = runs
    for label, windows in cpu_windows.items():
        cores = mean_cores(windows)
        result.details[f"cpu_cores_{label}"] = cores
        result.notes.append(f"{label} runs: {describe(cores, os.cpu_count())}.")
    result.ratios.append(Ratio("throughput (req/s)", rps["ingress"], rps["bare"], ">= 0.5"))
    result.ratios.append(Ratio("p99 latency", p99["ingress"], p99["bare"], "<= 2.0"))
    result.ratios.append(Ratio("p50 latency", p50["ingress"], p50["bare"]))
    result.ratios.append(Ratio("floor throughput (req/s)", rps["floor"], rps["bare"]))
    result.ratios.append(Ratio("ingress/floor throughput", rps["ingress"], rps["floor"]))
    result.notes.append(
        "Floor: the bare endpoint plus one Redis round trip (LPUSH of the body, answered 202), "
        "the least an ingress that enqueues before it answers must do; its ratio to bare "
        "Flask bounds what the ingress can reach on this machine."
    )

    if context.profile:
        result.details["profile"] = _profile(context, servers["ingress"], one_run)
    for server in servers.values():
        context.supervisor.stop(server.child)
    context.services.flush_redis()
    context.services.drop_queue(queue)
    return result


def _stall_note(label: str, repeat: int, busy_cores: float) -> list[str]:
    """A run that left the machine mostly idle did not measure the server's CPU cost (every
    configuration saturates both cores otherwise): say so, since it widens the ratio's bracket."""
    cores = os.cpu_count() or 1
    if busy_cores >= STALLED_BELOW * cores:
        return []
    return [
        f"{label} run {repeat + 1} left the machine mostly idle ({busy_cores:.2f} of {cores} "
        "cores busy): a stall rather than a measure of the server; the median of the runs "
        "discounts a single one."
    ]


STALLED_BELOW = 0.75
"""A run with less than this share of the cores busy is reported as stalled."""


def _probe(servers: dict[str, Server], event: Event) -> None:
    """One request each: the bare endpoint must answer 204 and the ingress 202."""
    headers = Signer().headers(event)
    for label, expected in (("bare", 204), ("floor", 202), ("ingress", 202)):
        status = http_status(
            servers[label].url + WEBHOOK_PATH, "POST", event.body.encode(), headers
        )
        if status != expected:
            raise BenchError(f"{label} answered {status} to a signed webhook, not {expected}")


def _queue_length(context: Context, queue: str) -> int:
    return context.services.queued(queue)


def _profile(
    context: Context,
    server: Server,
    one_run: Callable[[str, float], tuple[WrkResult, dict[str, float]]],
) -> dict[str, Any]:
    """An extra, unmeasured run with py-spy sampling the ingress's gunicorn processes."""
    seconds = context.plan.ingress_seconds
    output = context.work_dir / "profile-ingress.txt"
    recording = record(server.child, output, seconds)
    if recording is None:
        return {"error": "py-spy is not installed (pip install py-spy)"}
    context.say("ingress: profiling an extra run with py-spy")
    one_run("ingress", seconds)
    return recording.finish(timeout=seconds + 30)
