"""``clerk-sync dev``: ingress and a worker together on one machine with no external services
(SQLite, the filesystem broker), and the signing secret it verifies with, which
``send-example`` signs with too."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Final

import click

from clerk_sync.core.logs import configure_logging
from clerk_sync.core.settings import Settings, SettingsError

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8000
DEFAULT_DATA_DIR: Final = Path(".clerk-sync-dev")
WEBHOOK_PATH: Final = "/webhook/clerk"
"""``ingress.app.WEBHOOK_PATH``, not imported: the command line starts without Flask."""
SECRET_FILE: Final = "webhook-secret"  # noqa: S105 - the name of the file holding it
"""In the data directory: the signing secret ``dev`` made when ``CLERK_WEBHOOK_SECRET`` was not
set, kept so that later runs and ``send-example`` use the same one."""
MESSAGE_SECRET_FILE: Final = "message-secret"  # noqa: S105 - the name of the file holding it
"""In the data directory: the task messages' MAC key ``dev`` made when
``CLERK_SYNC_MESSAGE_SECRET`` was not set, kept so that messages queued by one run are applied
by the next."""


def webhook_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    return f"http://{host}:{port}{WEBHOOK_PATH}"


def saved_secret(data_dir: Path) -> str | None:
    """The signing secret an earlier ``dev`` saved in ``data_dir``; None if there is none."""
    path = data_dir / SECRET_FILE
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        return None
    try:
        Settings.from_env({"CLERK_WEBHOOK_SECRET": secret}).require_webhook_secrets()
    except SettingsError as error:
        raise click.ClickException(
            f"{path} does not hold a signing secret ({error}); delete it for a new one"
        ) from None
    return secret


def message_secret(data_dir: Path) -> str:
    """The message secret saved in ``data_dir``, else a new one saved there (readable by its
    owner only)."""
    path = data_dir / MESSAGE_SECRET_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(32)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another dev saved one meanwhile
        return message_secret(data_dir)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    return secret


def development_secret(data_dir: Path) -> tuple[str, bool]:
    """The signing secret saved in ``data_dir``, else a new one saved there (readable by its
    owner only); and whether it is new."""
    secret = saved_secret(data_dir)
    if secret is not None:
        return secret, False
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    try:
        descriptor = os.open(data_dir / SECRET_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another dev saved one meanwhile
        return development_secret(data_dir)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    return secret, True


@click.command()
@click.option("--host", default=DEFAULT_HOST, show_default=True)
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
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
    # The worker embeds beat (the erasure of deleted users' stored events, the sweeper), soon.
    env.setdefault("CLERK_SYNC_LEDGER_SWEEP_INTERVAL_SECONDS", "5")
    secret_saved = not env.get("CLERK_WEBHOOK_SECRET", "").strip()
    if secret_saved:
        secret, created = development_secret(data_dir)
        env["CLERK_WEBHOOK_SECRET"] = secret
        click.echo(
            f"{'Generated a development' if created else 'Development'} signing secret: "
            f"{secret} (saved in {data_dir / SECRET_FILE})"
        )
    if not env.get("CLERK_SYNC_MESSAGE_SECRET", "").strip():
        env["CLERK_SYNC_MESSAGE_SECRET"] = message_secret(data_dir)
    try:
        settings = Settings.from_env(env)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None

    configure_logging(settings.log_format, settings.log_level)
    upgrade(settings.database_url)
    click.echo(f"Database: {settings.database_url}")
    worker_process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "clerk_sync",
            "worker",
            "--pool=solo",
            "--beat",
            f"--schedule={(data_dir / 'beat-schedule').resolve()}",
        ],
        env=env,
    )
    click.echo(f"POST Clerk webhooks to {webhook_url(host, port)}")
    click.echo(
        f"Try it, in another shell: {_send_example_line(host, port, data_dir, secret_saved)}"
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        run_simple(host, port, create_app(settings), threaded=True)
    finally:
        worker_process.send_signal(signal.SIGTERM)
        worker_process.wait(timeout=30)


def _send_example_line(host: str, port: int, data_dir: Path, secret_saved: bool) -> str:
    """The ``send-example`` command that reaches this ``dev`` with its secret."""
    line = "clerk-sync send-example"
    if (host, port) != (DEFAULT_HOST, DEFAULT_PORT):
        line += f" --url {webhook_url(host, port)}"
    if secret_saved and data_dir != DEFAULT_DATA_DIR:
        line += f" --data-dir {data_dir}"
    return line
