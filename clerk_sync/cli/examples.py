"""``clerk-sync send-example``: signed example events posted to a running ingress, the way Svix
delivers Clerk's, to see the whole path work (ingress, queue, worker, tables) without Clerk.

The payloads are in ``clerk_sync.cli.example_payloads``. They are signed with
``CLERK_WEBHOOK_SECRET`` or, when it is not set, with the secret ``clerk-sync dev`` saved in
its data directory: against ``dev`` it works with no setup.
"""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

import click

from clerk_sync.cli.common import load_settings
from clerk_sync.cli.dev import DEFAULT_DATA_DIR, SECRET_FILE, saved_secret, webhook_url
from clerk_sync.cli.example_payloads import EXAMPLE_TYPES, example_payloads

if TYPE_CHECKING:
    import httpx

ACCEPTED: Final = 202
TIMEOUT_SECONDS: Final = 10.0
TYPE_WIDTH: Final = max(len(event_type) for event_type in EXAMPLE_TYPES)


@click.command(
    "send-example", epilog=f"TYPEs, in the order they are sent: {', '.join(EXAMPLE_TYPES)}."
)
@click.argument("event_types", nargs=-1, metavar="[TYPE]...", type=click.Choice(EXAMPLE_TYPES))
@click.option("--url", default=webhook_url(), show_default=True, help="The ingress's endpoint.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="The data directory of `clerk-sync dev`, whose signing secret is used when "
    "CLERK_WEBHOOK_SECRET is not set.",
)
def send_example(event_types: tuple[str, ...], url: str, data_dir: Path) -> None:
    """Send signed example events of every handled type, or of each TYPE named, to a running
    ingress (such as `clerk-sync dev`).

    Prints one line per event: type, svix id, HTTP status. Exits with status 1 if any was not
    accepted (202). Each run is a newer version of the same examples. Then `clerk-sync events
    list`, with the DATABASE_URL `dev` prints, shows how each was applied.
    """
    import httpx

    settings = load_settings()
    secret = settings.webhook_secrets[0] if settings.webhook_secrets else saved_secret(data_dir)
    if secret is None:
        raise click.ClickException(
            "no signing secret: set CLERK_WEBHOOK_SECRET to the one the ingress verifies with, "
            f"or start `clerk-sync dev` here first (it saves one in {data_dir / SECRET_FILE})"
        )
    chosen = event_types or EXAMPLE_TYPES
    payloads = example_payloads(int(time.time() * 1000), settings.workspace_metadata_key)
    errors: list[str] = []
    with httpx.Client(timeout=TIMEOUT_SECONDS) as client:
        for event_type in chosen:
            svix_id = "msg_" + secrets.token_hex(12)
            body = json.dumps(payloads[event_type], separators=(",", ":"))
            try:
                response = client.post(url, content=body, headers=signed(secret, svix_id, body))
            except httpx.HTTPError as error:
                raise click.ClickException(
                    f"cannot reach {url} ({error or type(error).__name__}); is the ingress "
                    "running (clerk-sync dev)?"
                ) from None
            line = f"{event_type:<{TYPE_WIDTH}}  {svix_id}  {response.status_code}"
            if response.status_code != ACCEPTED:
                errors.append(error_code(response))
                line += f"  {errors[-1]}"
            click.echo(line)
    if errors:
        hint = (
            ": the ingress verifies with another secret (set CLERK_WEBHOOK_SECRET to its secret)"
            if "invalid_signature" in errors
            else ""
        )
        raise click.ClickException(f"{len(errors)} of {len(chosen)} not accepted{hint}")


def signed(secret: str, svix_id: str, body: str) -> dict[str, str]:
    """The headers Svix sends with ``body``, signed now with ``secret``."""
    from svix.webhooks import Webhook

    now = datetime.now(UTC)
    return {
        "svix-id": svix_id,
        "svix-timestamp": str(int(now.timestamp())),
        "svix-signature": Webhook(secret).sign(svix_id, now, body),
        "content-type": "application/json",
    }


def error_code(response: httpx.Response) -> str:
    """The ``error`` the ingress answered with, else the start of the body."""
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    return response.text.strip()[:80] or response.reason_phrase
