"""Write ``docs/configuration.md`` from the ``Settings`` fields' metadata.

    python -m clerk_sync.core.settings_doc > docs/configuration.md

Each variable, its default and its meaning live in one place, the ``Settings`` field that holds
it (``clerk_sync.core.settings.documented``); this renders them as the operator's reference.
``tests/core/test_configuration_doc.py`` fails when the file differs from what this prints, or
when ``Settings.from_env`` reads a variable that no field documents.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, fields

from clerk_sync.core.settings import SETTING, Setting, Settings

COMMAND = "python -m clerk_sync.core.settings_doc > docs/configuration.md"

HEADER = f"""\
# Configuration

<!-- Generated from the Settings fields (clerk_sync/core/settings.py) by
     `{COMMAND}`; edit the fields, not this file. -->

Every process (ingress, worker, beat, Flower, the `clerk-sync` commands) reads these once from
the environment at start-up. An empty value counts as unset. A missing or malformed value stops
start-up with one line naming the variable (never its value).

| variable | default | meaning |
|---|---|---|
"""

FOOTER = """
Checked together at start-up: `CLERK_SYNC_RETRY_BACKOFF_MAX_SECONDS` must be smaller than
`CLERK_SYNC_VISIBILITY_TIMEOUT_SECONDS` (a retry waiting longer would be handed to a second
worker), and `CLERK_SYNC_BATCH_FLUSH_INTERVAL_MS` at most a tenth of the visibility timeout
(buffered messages are unacknowledged and count against it; see
[architecture.md](architecture.md#how-the-guarantees-are-kept)).

With the defaults, a transiently failing event is retried for roughly 10 minutes (3 quick
in-process attempts, then 8 Celery retries backing off from 2 s to 120 s) before it is
dead-lettered.

`clerk-sync dev` sets its own `CELERY_BROKER_URL` (`filesystem://`) and `CLERK_SYNC_BROKER_DIR`
(under `--data-dir`, default `.clerk-sync-dev/`), and unless they are set uses
`DATABASE_URL=sqlite:///<data-dir>/clerk-sync.db`, `CLERK_SYNC_LOG_FORMAT=console`,
`CLERK_SYNC_WORKER_METRICS_PORT=0` and a development `CLERK_WEBHOOK_SECRET` (printed, and kept
in the data directory, where `clerk-sync send-example` finds it).

## Read by others

- `FLOWER_BASIC_AUTH` (`user:password`): read by Flower itself (`clerk-sync flower`, the
  `flower` service).
- `PROMETHEUS_MULTIPROC_DIR`: where the pre-forked processes of the ingress and of a worker add
  up their metrics; `clerk-sync ingress` and `clerk-sync worker` set it to a fresh temporary
  folder unless it is set.
- `docker-compose.yml` reads `POSTGRES_PASSWORD`, `APP_DB_PASSWORD`, `REDIS_PASSWORD` (all
  required), `POSTGRES_USER`, `POSTGRES_DB`, `APP_DB_USER`, `APP_DB_NAME`, `REDIS_MAXMEMORY`,
  `INGRESS_WORKERS`, `WORKER_CONCURRENCY`, `WORKER_REPLICAS`, `BEAT_REPLICAS` (how many
  workers and beats: [Several hosts](operations.md#several-hosts)) and `CLERK_SYNC_IMAGE` to
  build the services' commands, `DATABASE_URL` (the application's own role) and
  `CELERY_BROKER_URL`, and sets `CLERK_SYNC_REQUIRE_DURABLE_BROKER=1`
  ([operations.md](operations.md#running-in-production)).
- The tests read `TEST_POSTGRES_URL` and `TEST_REDIS_URL` ([development.md](development.md)).
"""


def documented_fields() -> list[tuple[Field[object], Setting]]:
    """Every ``Settings`` field with its ``Setting``, in declaration order; a field without one
    is an error (every setting is an operator's)."""
    documented = []
    for item in fields(Settings):
        setting = item.metadata.get(SETTING)
        if not isinstance(setting, Setting):
            raise LookupError(f"Settings.{item.name} has no documented(...) metadata")
        documented.append((item, setting))
    return documented


def shown_default(item: Field[object], setting: Setting) -> str:
    """The default as an operator would write it: ``10`` for ``10.0``, ``0`` for ``False``."""
    if setting.shown_default is not None:
        return setting.shown_default
    value = item.default
    if value is MISSING or value is None or value in ("", ()):
        raise LookupError(f"Settings.{item.name}: give documented(...) a shown_default")
    if isinstance(value, bool):
        text = "1" if value else "0"
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        text = str(value)
    return f"`{text}`"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> str:
    rows = [
        f"| `{setting.variable}` | {cell(shown_default(item, setting))} | "
        f"{cell(setting.meaning)} |\n"
        for item, setting in documented_fields()
    ]
    return HEADER + "".join(rows) + FOOTER


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
