"""``clerk-sync``: the command line, and the one place that wires ingress, workers and models.

One module per command group; this one only builds ``main`` and adds them.
"""

from __future__ import annotations

import click

from clerk_sync.cli.changes import changes
from clerk_sync.cli.db import db
from clerk_sync.cli.dev import dev
from clerk_sync.cli.events import events
from clerk_sync.cli.examples import send_example
from clerk_sync.cli.rebuild import rebuild_command
from clerk_sync.cli.reconcile import reconcile_command
from clerk_sync.cli.serve import flower, ingress, sweep, worker
from clerk_sync.cli.status import status_command


@click.group()
def main() -> None:
    """Keep a SQL database in step with Clerk organizations and memberships."""


for command in (
    db,
    ingress,
    worker,
    flower,
    sweep,
    dev,
    send_example,
    events,
    rebuild_command,
    status_command,
    reconcile_command,
    changes,
):
    main.add_command(command)
