"""The RabbitMQ configuration of the ingress, worker and e2e benchmarks (issue #20): the same
code, with clerk-sync's processes on RabbitMQ (a quorum queue, publisher confirms, no ledger)
instead of Redis. Baselines stay what they are (bare Flask; the raw upsert loop; the raw Redis
pipeline), so the ratios of the two configurations compare directly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from bench import e2e_bench, ingress_bench, worker_bench
from bench.context import Context
from bench.results import BenchResult

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672//"
SUFFIX = "-amqp"
NOTE = (
    "**RabbitMQ configuration**: clerk-sync's ingress and worker use `{url}` as their broker "
    "(`CELERY_BROKER_URL=amqp://...`: a durable quorum queue, every publish confirmed before "
    "the ingress answers 202, no Redis ledger); the baseline is unchanged."
)


def on_rabbitmq(
    run: Callable[[Context], BenchResult], name: str, title: str
) -> Callable[[Context], BenchResult]:
    def run_on_rabbitmq(context: Context) -> BenchResult:
        url = context.amqp_url or DEFAULT_URL
        result = run(replace(context, services=replace(context.services, amqp_url=url)))
        result.name, result.title = name, title
        result.description = f"{result.description}\n\n{NOTE.format(url=_shown(url))}"
        return result

    return run_on_rabbitmq


def _shown(url: str) -> str:
    """The URL without its password."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':')[0]}:***@{host}" if at else url


BENCHMARKS: dict[str, tuple[Callable[[Context], BenchResult], str]] = {
    ingress_bench.NAME + SUFFIX: (
        on_rabbitmq(
            ingress_bench.run, ingress_bench.NAME + SUFFIX, ingress_bench.TITLE + ", RabbitMQ"
        ),
        ingress_bench.TITLE + ", RabbitMQ",
    ),
    worker_bench.NAME + SUFFIX: (
        on_rabbitmq(
            worker_bench.run, worker_bench.NAME + SUFFIX, worker_bench.TITLE + ", RabbitMQ"
        ),
        worker_bench.TITLE + ", RabbitMQ",
    ),
    e2e_bench.NAME + SUFFIX: (
        on_rabbitmq(e2e_bench.run, e2e_bench.NAME + SUFFIX, e2e_bench.TITLE + ", RabbitMQ"),
        e2e_bench.TITLE + ", RabbitMQ",
    ),
}
