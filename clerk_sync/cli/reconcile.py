"""``clerk-sync reconcile``: heal what webhooks missed from Clerk's Backend API (the work is in
``workers.reconcile``; this module parses options and prints)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import click

from clerk_sync.core.settings import SettingsError


class ProgressBars:
    """A click progress bar per phase on a terminal (stderr, so stdout stays parseable), with
    the rows per second and the time left (ETA). Off a terminal, the run logs both every few
    seconds instead."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bar: Any = None
        self._started = 0.0
        self._rows = 0

    def begin(self, phase: str, total: int | None, done: int) -> None:
        self.end()
        if total is None or total <= 0 or not self._stream.isatty():
            return
        self._started = time.monotonic()
        self._rows = 0
        self._bar = click.progressbar(
            length=total,
            label=f"{phase:<30}",
            file=self._stream,
            show_eta=True,
            item_show_func=self._rate,
        )
        self._bar.__enter__()
        self._bar.update(min(done, total))

    def advance(self, steps: int) -> None:
        if self._bar is not None:
            self._rows += steps
            self._bar.update(steps)

    def _rate(self, _item: object) -> str:
        elapsed = time.monotonic() - self._started
        return f"{self._rows / elapsed:,.0f} rows/s" if elapsed > 0 and self._rows else ""

    def end(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


@click.command("reconcile")
@click.option("--dry-run", is_flag=True, help="Report what would change; change nothing.")
@click.option(
    "--state-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Journal of the run's progress: if the run is interrupted, the same command continues "
    "from it. Created if missing, removed when the run completes.",
)
@click.option(
    "--page-size",
    type=click.IntRange(1, 500),
    default=500,
    show_default=True,
    help="Objects per Backend API page.",
)
@click.option(
    "--allow-mass-deletion",
    is_flag=True,
    help="Delete even when more than half of the stored entities of a type are missing from "
    "Clerk (otherwise the run stops: a wrong CLERK_SECRET_KEY looks like that).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def reconcile_command(
    dry_run: bool,
    state_file: Path | None,
    page_size: int,
    allow_mass_deletion: bool,
    as_json: bool,
) -> None:
    """Compare the tables with Clerk's Backend API and repair them.

    Lists every permission, role, organization, user, membership, invitation and domain;
    applies each through the webhook mutation rules (a newer version wins, an older one is
    ignored, the same version with other content is repaired); deletes and tombstones what
    Clerk no longer has (never invitations), except what a webhook wrote since the run started.
    Shows rows/s and the time left on a terminal. Needs CLERK_SECRET_KEY.
    """
    from clerk_sync.cli.common import load_settings
    from models.database import make_engine
    from workers.reconcile import ReconcileBusyError, ReconcileError, reconcile_with_settings

    settings = load_settings()
    try:
        settings.require_clerk_secret_key()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    engine = make_engine(settings.database_url, lock_timeout_ms=settings.db_lock_timeout_ms)
    progress = ProgressBars(sys.stderr)
    resume_hint = (
        f"run the same command again to continue from {state_file}"
        if state_file is not None
        else "pass --state-file to make a run resumable"
    )
    try:
        report = reconcile_with_settings(
            engine,
            settings,
            page_size=page_size,
            dry_run=dry_run,
            state_file=state_file,
            progress=progress,
            allow_mass_deletion=allow_mass_deletion,
        )
    except ReconcileBusyError as error:
        raise click.ClickException(f"{error}; try again when it has finished") from None
    except ReconcileError as error:
        raise click.ClickException(f"{error}; {resume_hint}") from None
    except KeyboardInterrupt:
        progress.end()
        click.echo(f"\nInterrupted; {resume_hint}.", err=True)
        sys.exit(130)
    finally:
        progress.end()
        engine.dispose()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        return
    click.echo(format_report(report.as_dict()))


def format_report(report: dict[str, Any]) -> str:
    from workers.reconcile import OUTCOMES

    title = "Dry run: nothing was changed. Would have:" if report["dry_run"] else "Reconciled:"
    if report["resumed"]:
        title += f" (resumed the run started {report['started_at']})"
    width = max(len(name) for name in report["counts"])
    lines = [title, " " * width + "".join(f"{outcome:>11}" for outcome in OUTCOMES)]
    for name, counts in report["counts"].items():
        lines.append(f"{name:<{width}}" + "".join(f"{counts[o]:>11}" for o in OUTCOMES))
    lines.append(f"{report['requests']} Backend API request(s)")
    if report.get("listed"):
        lines.append(
            f"{report['listed']:,} object(s) listed in {report['seconds']:,.1f} s "
            f"({report['rows_per_second']:,.0f} rows/s)"
        )
    return "\n".join(lines)
