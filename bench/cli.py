"""``python -m bench`` (or ``bash bench/run``): run the benchmarks of issue #4 and write
``bench/results/results.{json,md}`` and ``bench/results/throughput.png``."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    backlog_bench,
    e2e_bench,
    hacks_bench,
    ingress_bench,
    rabbitmq,
    reconcile_bench,
    report,
    tables_bench,
    worker_bench,
)
from bench.context import Context, Plan
from bench.machine import facts, load
from bench.procs import ROOT, BenchError, Supervisor, interrupts_as_exceptions
from bench.results import BenchResult
from bench.services import Services

BENCHMARKS: dict[str, Callable[[Context], BenchResult]] = {
    ingress_bench.NAME: ingress_bench.run,
    worker_bench.NAME: worker_bench.run,
    e2e_bench.NAME: e2e_bench.run,
    backlog_bench.NAME: backlog_bench.run,
    tables_bench.NAME: tables_bench.run,
    hacks_bench.NAME: hacks_bench.run,
    reconcile_bench.NAME: reconcile_bench.run,
}
# Each RabbitMQ configuration right after its Redis one (bench.rabbitmq).
BENCHMARKS = {
    name: run
    for base, base_run in BENCHMARKS.items()
    for name, run in [
        (base, base_run),
        *[
            (amqp, amqp_run)
            for amqp, (amqp_run, _) in rabbitmq.BENCHMARKS.items()
            if amqp == base + rabbitmq.SUFFIX
        ],
    ]
}
OPT_IN = (hacks_bench.NAME,)
"""Run only when named with ``--only`` (``hacks`` alone takes about 5 minutes, three quarters of
the default run)."""
DEFAULT = [name for name in BENCHMARKS if name not in OPT_IN]
TITLES = {
    ingress_bench.NAME: ingress_bench.TITLE,
    worker_bench.NAME: worker_bench.TITLE,
    e2e_bench.NAME: e2e_bench.TITLE,
    backlog_bench.NAME: backlog_bench.TITLE,
    tables_bench.NAME: tables_bench.TITLE,
    hacks_bench.NAME: hacks_bench.TITLE,
    reconcile_bench.NAME: reconcile_bench.TITLE,
    **{name: title for name, (_run, title) in rabbitmq.BENCHMARKS.items()},
}
TITLES = {name: TITLES[name] for name in BENCHMARKS}
DEFAULT_RESULTS = ROOT / "bench" / "results"


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="clerk-sync benchmarks: every result is a ratio to a baseline measured in "
        "the same run. Starts and stops its own processes on 127.0.0.1.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run (small sizes, one repeat)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}; without it, all "
        f"but the opt-in {', '.join(OPT_IN)}",
    )
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument(
        "--repeats",
        type=int,
        help="repeats of the ingress, worker, e2e and tables runs (rounds of hacks)",
    )
    parser.add_argument("--worker-events", type=int, help="events of the worker benchmark")
    parser.add_argument("--backlog-events", type=int, help="events of the large backlog drain")
    parser.add_argument("--table-rows", type=int, help="existing memberships (tables benchmark)")
    parser.add_argument("--concurrency", type=int, help="worker processes (default 2)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the ingress and the worker with py-spy in extra, unmeasured runs",
    )
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="an admin connection; the harness creates and drops clerk_sync_bench* databases",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/9",
        help="a Redis database of the harness's own: it is flushed",
    )
    parser.add_argument(
        "--database-prefix",
        default="clerk_sync_bench",
        help="names of the PostgreSQL databases the harness creates and drops (prefix*)",
    )
    parser.add_argument(
        "--amqp-url",
        default=rabbitmq.DEFAULT_URL,
        help="RabbitMQ of the -amqp benchmarks; the harness deletes the queues it declares",
    )
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite results.md and throughput.png from an existing results.json",
    )
    return parser.parse_args(argv)


def make_plan(arguments: argparse.Namespace) -> Plan:
    plan = Plan.smoke() if arguments.quick else Plan.full()
    changes: dict[str, Any] = {}
    if arguments.repeats:
        changes.update(
            ingress_repeats=arguments.repeats,
            worker_repeats=arguments.repeats,
            e2e_repeats=arguments.repeats,
            table_repeats=arguments.repeats,
            hacks_rounds=arguments.repeats,
        )
    if arguments.worker_events:
        changes["worker_events"] = arguments.worker_events
        changes["worker_baseline_events"] = min(
            plan.worker_baseline_events, arguments.worker_events
        )
    if arguments.backlog_events:
        changes["backlog_large"] = arguments.backlog_events
        changes["backlog_small"] = max(100, arguments.backlog_events // 10)
    if arguments.table_rows:
        changes["table_rows"] = arguments.table_rows
    if arguments.concurrency:
        changes["worker_concurrency"] = arguments.concurrency
    return replace(plan, **changes)


def check_redis_url(url: str) -> None:
    database = url.rstrip("/").rsplit("/", 1)[-1]
    if not database.isdigit() or database == "0":
        raise SystemExit(
            "--redis-url must name a Redis database of the harness's own, e.g. "
            "redis://127.0.0.1:6379/9 (it is flushed; database 0 is refused)"
        )


def run_one(context: Context, name: str) -> BenchResult:
    started = time.monotonic()
    context.say(f"== {name}: {TITLES[name]}")
    load_before = load()
    try:
        result = BENCHMARKS[name](context)
    except BenchError as error:
        result = BenchResult(name, TITLES[name], "", error=str(error))
    except Exception as error:  # noqa: BLE001 - one broken benchmark must not stop the rest
        traceback.print_exc()
        result = BenchResult(name, TITLES[name], "", error=f"{type(error).__name__}: {error}")
    finally:
        # Whatever happened, nothing of this benchmark keeps running or holds data.
        context.supervisor.close()
        context.services.flush_redis()
    result.seconds = time.monotonic() - started
    result.details["load"] = {"before": load_before, "after": load()}
    verdict = {True: "targets met", False: "TARGET MISSED", None: "done"}[result.met]
    context.say(
        f"== {name}: {verdict} in {result.seconds:.0f} s"
        + (f" (error: {result.error})" if result.error else "")
    )
    return result


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    if arguments.list:
        for name, title in TITLES.items():
            opt_in = f" (opt-in: --only {name})" if name in OPT_IN else ""
            print(f"{name:10} {title}{opt_in}")
        return 0
    results_dir: Path = arguments.results_dir
    if arguments.report_only:
        stored = json.loads((results_dir / "results.json").read_text())
        for path in report.write(stored, results_dir):
            print(path)
        return 0
    check_redis_url(arguments.redis_url)

    plan = make_plan(arguments)
    services = Services(
        arguments.postgres_url, arguments.redis_url, database_prefix=arguments.database_prefix
    )
    work_dir = results_dir / "logs"
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    context = Context(
        plan,
        services,
        Supervisor(work_dir),
        work_dir,
        profile=arguments.profile,
        amqp_url=arguments.amqp_url,
    )
    names = arguments.only or DEFAULT
    started_at = datetime.now(UTC)
    results: dict[str, Any] = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "quick": plan.quick,
        "plan": plan.__dict__,
        "only": names,
        "machine": facts(services),
        "load_before": load(),
        "benchmarks": [],
    }
    status = 0
    with interrupts_as_exceptions():
        try:
            for name in names:
                result = run_one(context, name)
                results["benchmarks"].append(result.as_dict())
                if result.error:
                    status = 1
        except KeyboardInterrupt:
            context.say("interrupted: stopping processes and dropping databases")
            status = 130
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the clean-up finish
            context.supervisor.close()
            context.drop_databases()
            services.flush_redis()
            for metrics_dir in work_dir.glob("m*-*"):
                if metrics_dir.is_dir():
                    shutil.rmtree(metrics_dir, ignore_errors=True)
            signal.signal(signal.SIGINT, signal.default_int_handler)
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    results["seconds"] = (datetime.now(UTC) - started_at).total_seconds()
    results["load_after"] = load()
    results["interrupted"] = status == 130
    written = report.write(results, results_dir)
    print(report.summary_table(results))
    for path in written:
        print(f"wrote {path}")
    return status
