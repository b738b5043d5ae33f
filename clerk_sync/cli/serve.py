"""The long-running processes: ``clerk-sync ingress`` (gunicorn), ``worker`` (Celery),
``flower`` (Celery's dashboard), and ``sweep``, the ledger sweeper's one pass by hand.

Flask, gunicorn and Celery are imported by the command that needs them, after the
process-wide set-up (``clerk_sync.cli.process``) that must come first.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any

import click

from clerk_sync.cli.common import load_settings, require_tested_versions
from clerk_sync.cli.process import use_multiprocess_metrics
from clerk_sync.core.logs import configure_logging
from clerk_sync.core.settings import Settings, SettingsError

log = logging.getLogger("clerk_sync.ingress")


@click.command()
@click.option("--bind", default="0.0.0.0:8000", show_default=True)
@click.option("--workers", "worker_count", type=int, default=2, show_default=True)
@click.option("--threads", type=int, default=4, show_default=True)
def ingress(bind: str, worker_count: int, threads: int) -> None:
    """Serve the webhook endpoint under gunicorn."""
    settings = load_settings()
    try:
        settings.require_webhook_secrets()
        settings.require_message_secrets()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    require_tested_versions(settings)
    reuse_port = _each_worker_can_listen(bind)
    configure_logging(settings.log_format, settings.log_level)
    require_durable_broker(settings)
    use_multiprocess_metrics()

    from gunicorn.app.base import BaseApplication

    from ingress import create_app

    class IngressServer(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", bind)
            self.cfg.set("workers", worker_count)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("reuse_port", reuse_port)
            self.cfg.set("when_ready", _when_ready(bind, reuse_port, settings.ingress_metrics_port))
            self.cfg.set("timeout", 30)
            self.cfg.set("graceful_timeout", 20)

        def load(self) -> Any:
            return create_app(settings)

    IngressServer().run()


def _each_worker_can_listen(bind: str) -> bool:
    """Whether every gunicorn worker gets a listening socket of its own on ``bind``
    (``SO_REUSEPORT``); raises ``click.ClickException`` if the address is taken.

    With one socket shared by all workers, whichever worker wakes first accepts a new
    connection, and a burst of keep-alive connections can all land on one process: in the
    ingress benchmark, wrk's 32 connections all went to one of two workers in about one run in
    twenty, which halved the throughput (a process serves on one core, the other sat idle).
    With a socket each, Linux spreads connections across them. Only on Linux (elsewhere
    ``SO_REUSEPORT`` does not balance) and for TCP addresses.

    gunicorn then binds in the workers, so a taken address would only make them fail and be
    restarted for ever: it is tried here first, with the options gunicorn binds with."""
    from gunicorn.util import parse_address

    address = parse_address(bind)
    if not (sys.platform == "linux" and isinstance(address, tuple)):
        return False
    host, port = address
    try:
        family, kind, protocol, _name, socket_address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind(socket_address)
    except OSError as error:
        raise click.ClickException(f"cannot listen on {bind}: {error.strerror or error}") from None
    return True


def _when_ready(bind: str, reuse_port: bool, metrics_port: int) -> Any:
    """gunicorn's ``when_ready`` hook, run in the master before it forks the workers.

    It serves the Prometheus metrics on ``metrics_port`` from the master (the workers write
    their counts to ``PROMETHEUS_MULTIPROC_DIR``; a listener of its own keeps them off the
    public webhook port). A taken port is logged and the ingress serves webhooks without
    metrics, as a worker does. With a socket per worker gunicorn's own "Listening at" line is
    empty, so it also says where and how the workers listen."""

    def when_ready(arbiter: Any) -> None:
        if reuse_port:
            arbiter.log.info("Workers listen at: http://%s, each on a socket of its own", bind)
        if metrics_port:
            from ingress.metrics import serve

            try:
                serve(metrics_port)
            except OSError as error:
                log.warning(
                    "metrics server not started", extra={"port": metrics_port, "error": str(error)}
                )
            else:
                log.info("metrics served", extra={"port": metrics_port})

    return when_ready


def require_durable_broker(settings: Settings) -> None:
    """Check the broker's durability before serving: a broker that is not durable (or whose
    durability is unknown) is one CRITICAL line, and with ``CLERK_SYNC_REQUIRE_DURABLE_BROKER``
    the ingress does not start (a ``202`` would promise what Redis may not keep)."""
    from clerk_sync.core.durability import Verdict, check_broker

    durability = check_broker(settings)
    details = {"durability": str(durability.verdict), "reasons": list(durability.reasons)}
    if durability.verdict is Verdict.DURABLE:
        log.info("broker is durable", extra=details)
        return
    if durability.verdict is Verdict.NOT_CHECKED:
        log.info("broker durability not checked", extra=details)
    elif durability.verdict is Verdict.NOT_DURABLE:
        log.critical(
            "broker is not durable: an accepted event can be lost before it is applied",
            extra=details,
        )
    else:
        log.critical(
            "broker durability is unknown: an accepted event may be lost before it is applied",
            extra=details,
        )
    if settings.require_durable_broker:
        raise click.ClickException(
            "CLERK_SYNC_REQUIRE_DURABLE_BROKER is set and the broker is not known to be durable "
            f"({durability.verdict}): " + "; ".join(durability.reasons)
        )


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", type=int, default=None, help="Worker processes (default: CPUs).")
@click.option("--beat/--no-beat", default=False, help="Also run beat (sweeper, erasure, purge).")
@click.pass_context
def worker(ctx: click.Context, concurrency: int | None, beat: bool) -> None:
    """Run a Celery worker consuming the event queue (extra options go to Celery)."""
    settings = load_settings()
    try:
        settings.require_message_secrets()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    require_tested_versions(settings)
    use_multiprocess_metrics()
    from workers.app import create_celery_app

    app = create_celery_app(settings)
    argv = ["worker", f"--loglevel={settings.log_level}", f"--queues={settings.queue_name}"]
    argv += default_node_name(ctx.args)
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    if beat:
        argv.append("--beat")
    app.worker_main([*argv, *ctx.args])


def default_node_name(celery_options: list[str]) -> list[str]:
    """``--hostname=clerk-sync@<host>-<pid>`` unless Celery's ``-n``/``--hostname`` is among the
    options: Celery's own default (``celery@<host>``) is the same for two workers on one host,
    and Celery then warns of a duplicate node name, while ``inspect``, Flower and remote control
    see one worker. The process id tells a host's workers apart (and a container's host name
    its containers); Flower and ``celery inspect`` list each under this name."""
    if any(option.startswith(("-n", "--hostname")) for option in celery_options):
        return []
    return [f"--hostname=clerk-sync@%h-{os.getpid()}"]


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--port", type=int, default=5555, show_default=True)
@click.pass_context
def flower(ctx: click.Context, port: int) -> None:
    """Run Flower, the Celery dashboard, for this queue (set FLOWER_BASIC_AUTH=user:password)."""
    from workers.app import create_celery_app

    settings = load_settings()
    require_tested_versions(settings)
    app = create_celery_app(settings)
    app.start(["flower", f"--port={port}", *ctx.args])


@click.command()
def sweep() -> None:
    """Re-publish accepted events that never reached the database (normally run by beat)."""
    from workers.app import create_celery_app
    from workers.app import sweep as sweep_ledger

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    app = create_celery_app(settings)
    click.echo(f"re-published {sweep_ledger(app.clerk_sync_runtime)} event(s)")
