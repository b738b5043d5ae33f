"""``clerk-sync``: the command line, and the one place that wires ingress, workers and models."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from clerk_sync.cli.common import load_settings, require_tested_versions
from clerk_sync.cli.operations import COMMANDS as OPERATOR_COMMANDS
from clerk_sync.cli.process import use_multiprocess_metrics
from clerk_sync.cli.reconcile import reconcile_command
from clerk_sync.core.logs import configure_logging
from clerk_sync.core.settings import Settings, SettingsError


@click.group()
def main() -> None:
    """Keep a SQL database in step with Clerk organizations and memberships."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Bring the database at DATABASE_URL to the latest schema (safe to run repeatedly)."""
    from models.migrate import upgrade

    settings = load_settings()
    upgrade(settings.database_url, revision)
    click.echo(f"database at revision {revision}")


@main.command()
@click.option("--bind", default="0.0.0.0:8000", show_default=True)
@click.option("--workers", "worker_count", type=int, default=2, show_default=True)
@click.option("--threads", type=int, default=4, show_default=True)
def ingress(bind: str, worker_count: int, threads: int) -> None:
    """Serve the webhook endpoint under gunicorn."""
    settings = load_settings()
    try:
        settings.require_webhook_secrets()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    require_tested_versions(settings)
    reuse_port = _each_worker_can_listen(bind)
    configure_logging(settings.log_format, settings.log_level)
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
            if reuse_port:
                self.cfg.set("when_ready", _say_each_worker_listens(bind))
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


def _say_each_worker_listens(bind: str) -> Any:
    """gunicorn's ``when_ready`` hook: with a socket per worker its own "Listening at" line is
    empty, so say where and how the workers listen."""

    def when_ready(arbiter: Any) -> None:
        arbiter.log.info("Workers listen at: http://%s, each on a socket of its own", bind)

    return when_ready


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", type=int, default=None, help="Worker processes (default: CPUs).")
@click.option("--beat/--no-beat", default=False, help="Also run the ledger sweeper schedule.")
@click.pass_context
def worker(ctx: click.Context, concurrency: int | None, beat: bool) -> None:
    """Run a Celery worker consuming the event queue (extra options go to Celery)."""
    settings = load_settings()
    require_tested_versions(settings)
    use_multiprocess_metrics()
    from workers.app import create_celery_app

    app = create_celery_app(settings)
    argv = ["worker", f"--loglevel={settings.log_level}", f"--queues={settings.queue_name}"]
    if concurrency is not None:
        argv.append(f"--concurrency={concurrency}")
    if beat:
        argv.append("--beat")
    app.worker_main([*argv, *ctx.args])


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--port", type=int, default=5555, show_default=True)
@click.pass_context
def flower(ctx: click.Context, port: int) -> None:
    """Run Flower, the Celery dashboard, for this queue (set FLOWER_BASIC_AUTH=user:password)."""
    from workers.app import create_celery_app

    settings = load_settings()
    require_tested_versions(settings)
    app = create_celery_app(settings)
    app.start(["flower", f"--port={port}", *ctx.args])


@main.command()
def sweep() -> None:
    """Re-publish accepted events that never reached the database (normally run by beat)."""
    from workers.app import create_celery_app
    from workers.app import sweep as sweep_ledger

    settings = load_settings()
    app = create_celery_app(settings)
    click.echo(f"re-published {sweep_ledger(app.clerk_sync_runtime)} event(s)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".clerk-sync-dev"),
    show_default=True,
)
def dev(host: str, port: int, data_dir: Path) -> None:
    """Run ingress and a worker together with no external services (SQLite, filesystem broker)."""
    from werkzeug.serving import run_simple

    from ingress import create_app
    from models.migrate import upgrade

    data_dir.mkdir(parents=True, exist_ok=True)
    broker_dir = data_dir / "broker"
    broker_dir.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.setdefault("DATABASE_URL", f"sqlite:///{(data_dir / 'clerk-sync.db').resolve()}")
    env["CELERY_BROKER_URL"] = "filesystem://"
    env["CLERK_SYNC_BROKER_DIR"] = str(broker_dir.resolve())
    env.setdefault("CLERK_SYNC_LOG_FORMAT", "console")
    env.setdefault("CLERK_SYNC_WORKER_METRICS_PORT", "0")
    if not env.get("CLERK_WEBHOOK_SECRET", "").strip():
        env["CLERK_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        click.echo(f"Generated a development signing secret: {env['CLERK_WEBHOOK_SECRET']}")
    try:
        settings = Settings.from_env(env)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None

    configure_logging(settings.log_format, settings.log_level)
    upgrade(settings.database_url)
    click.echo(f"Database: {settings.database_url}")
    worker_process = subprocess.Popen(
        [sys.executable, "-m", "clerk_sync", "worker", "--pool=solo"], env=env
    )
    click.echo(f"POST Clerk webhooks to http://{host}:{port}/webhook/clerk")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run_simple(host, port, create_app(settings), threaded=True)
    finally:
        worker_process.send_signal(signal.SIGTERM)
        worker_process.wait(timeout=30)


for command in [*OPERATOR_COMMANDS, reconcile_command]:
    main.add_command(command)
