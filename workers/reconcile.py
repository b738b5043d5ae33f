"""Reconciliation with Clerk's Backend API: heal what webhooks missed.

Reads Clerk's complete listings of organizations, organization memberships and users, and applies
every object through the same mutation functions as the webhooks (``upsert_organization``,
``upsert_membership``, ``upsert_user``), so a listed object older than the stored row is ignored
and a newer one wins. Then, per entity type, what is stored here but was not listed is deleted
and tombstoned, with three guards, because a tombstone is forever:

* **Written since the run started** (``synced_at`` later than the start minus a clock-skew
  margin): kept. Such a row may belong to an entity Clerk created after its listing page was
  read, already delivered by a webhook.
* **Still in Clerk**: every remaining candidate is looked up directly (``GET /v1/users/{id}``,
  ``GET /v1/organizations/{id}``, ``GET /v1/organizations/{id}/memberships?user_id=…``) and
  deleted only if Clerk answers that it is gone. Offset paging skips an object whenever an
  earlier one is deleted mid-listing; the lookup catches that, and applies what it finds.
* **Mass deletion**: if more than half the stored entities of a type (and more than
  ``MASS_DELETION_MINIMUM``) would go, the run stops before deleting anything of that type,
  unless allowed: a wrong ``CLERK_SECRET_KEY`` (another instance) must not empty the tables.

Each object is applied in a transaction of its own (a page-long transaction would hold many
organization and user locks at once and deadlock against the workers); ``dry_run`` rolls every
one back, so it reports what would change and changes nothing.

**Resuming.** Progress goes to an append-only journal (``state_file``, JSON lines): the run's
start, then one line per page read (phase, next offset, the ids listed, counts) and per deletion
candidate checked, and a line per finished listing and sweep. Each line is flushed and fsynced
before the run moves on, so after an interruption (Ctrl-C, a crash, Clerk unavailable beyond the
retries) the same command continues from the last page it finished, with the same start time and
ids. A torn last line is dropped. The file is removed when the run completes.

**Rate.** Requests are spaced to at most ``max_requests_per_second`` (default 5: half of the
Backend API's development-instance limit of 100 requests per 10 s, and 5 % of production's
1000 per 10 s; the limit is per instance and shared with the application's own Backend API
calls). A 429 is retried after its ``Retry-After``; 5xx answers and connection errors are
retried with exponential backoff and jitter (tenacity).
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Protocol, Self
from urllib.parse import quote

import httpx
from sqlalchemy import Connection, Engine, Table, select
from tenacity import (
    RetryCallState,
    Retrying,
    retry,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from clerk_sync.core.settings import Settings, SettingsError
from models.database import LockBusyError, hold_session_lock, is_transient
from models.memberships import remove_membership, upsert_membership
from models.organizations import delete_organization, upsert_organization
from models.tables import organization_memberships, organizations, users
from models.users import delete_user, upsert_user
from workers.handlers.memberships import membership_snapshot
from workers.handlers.payloads import PoisonEventError, organization_snapshot
from workers.handlers.users import user_snapshot

log = logging.getLogger("clerk_sync.reconcile")

ORGANIZATIONS: Final = "organizations"
MEMBERSHIPS: Final = "memberships"
USERS: Final = "users"
PHASES: Final = (ORGANIZATIONS, MEMBERSHIPS, USERS)
"""In this order: memberships carry their organization, and a user deletion removes memberships."""

PAGE_SIZE: Final = 500
"""The Backend API's largest ``limit``."""

DEFAULT_MAX_REQUESTS_PER_SECOND: Final = 5.0
CLOCK_SKEW_MARGIN: Final = timedelta(minutes=5)
"""Rows written this long before the run started count as written during it (and are kept):
``synced_at`` comes from the clocks of the worker hosts, the start from this host's."""

MASS_DELETION_FRACTION: Final = 0.5
MASS_DELETION_MINIMUM: Final = 10

RUN_LOCK: Final = "clerk-sync:reconcile"
JOURNAL_VERSION: Final = 1


# -- errors ------------------------------------------------------------------------------------


class ReconcileError(RuntimeError):
    """The run cannot go on; what it finished is in the journal, if there is one."""


class ClerkAPIError(ReconcileError):
    """Clerk answered something retrying cannot fix (401, 403, 400, a malformed body)."""


class ClerkUnavailableError(ReconcileError):
    """Clerk kept failing (429, 5xx, connection errors) beyond the retries."""


class ReconcileBusyError(ReconcileError):
    """Another reconcile run holds the database lock."""


class MassDeletionError(ReconcileError):
    """Too many stored entities are missing from Clerk's listing to delete them unasked."""


class _RetryableResponseError(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


# -- the Backend API ---------------------------------------------------------------------------


class RateLimiter:
    """Spaces calls at least ``1 / per_second`` apart (a token bucket of one token), and
    holds every call back while Clerk has asked us to wait."""

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.interval = 1.0 / per_second
        self._clock = clock
        self._sleep = sleep
        self._next = clock()

    def wait(self) -> None:
        now = self._clock()
        if now < self._next:
            self._sleep(self._next - now)
            now = self._next
        self._next = now + self.interval

    def pause(self, seconds: float) -> None:
        self._next = max(self._next, self._clock() + seconds)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: delay-seconds or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, moment.timestamp() - now)


@dataclass(frozen=True)
class Page:
    items: list[Mapping[str, Any]]
    total: int | None


class ClerkAPI:
    """The few Backend API reads reconciliation needs, rate-limited and retried.

    The secret key is only ever put in the ``Authorization`` header; errors and logs name the
    method, path and status, never headers.
    """

    def __init__(
        self,
        base_url: str,
        secret_key: str,
        *,
        max_requests_per_second: float = DEFAULT_MAX_REQUESTS_PER_SECOND,
        attempts: int = 8,
        backoff_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
        max_retry_after_seconds: float = 300.0,
        timeout_seconds: float = 30.0,
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {secret_key}",
                "Accept": "application/json",
                "User-Agent": "clerk-sync (reconcile)",
            },
            timeout=timeout_seconds,
        )
        self.limiter = RateLimiter(max_requests_per_second)
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.max_retry_after_seconds = max_retry_after_seconds
        self.requests = 0
        """Requests sent, retries included."""

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- listings ----------------------------------------------------------------------------

    def list_page(self, phase: str, offset: int, limit: int) -> Page:
        """One page of a complete listing, oldest first (``order_by=+created_at``: an object
        created while we page lands at the end instead of shifting the pages still to come)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset, "order_by": "+created_at"}
        if phase == USERS:
            body = self.get("/v1/users", params)
            if not isinstance(body, list):
                raise ClerkAPIError("GET /v1/users: expected a JSON array")
            return Page(items=_objects(body, "/v1/users"), total=None)
        path = "/v1/organizations" if phase == ORGANIZATIONS else "/v1/organization_memberships"
        body = self.get(path, params)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise ClerkAPIError(f"GET {path}: expected an object with a 'data' list")
        total = body.get("total_count")
        return Page(
            items=_objects(body["data"], path),
            total=total if isinstance(total, int) and not isinstance(total, bool) else None,
        )

    def count_users(self) -> int | None:
        body = self.get("/v1/users/count")
        total = body.get("total_count") if isinstance(body, dict) else None
        return total if isinstance(total, int) and not isinstance(total, bool) else None

    # -- lookups (None: Clerk says it does not exist) ----------------------------------------

    def get_organization(self, organization_id: str) -> Mapping[str, Any] | None:
        return _object_or_none(
            self.get(f"/v1/organizations/{quote(organization_id, safe='')}", missing_ok=True)
        )

    def get_user(self, user_id: str) -> Mapping[str, Any] | None:
        return _object_or_none(self.get(f"/v1/users/{quote(user_id, safe='')}", missing_ok=True))

    def memberships_of(self, organization_id: str, user_id: str) -> list[Mapping[str, Any]] | None:
        """The user's memberships in the organization (none or one); None if the organization
        is gone."""
        path = f"/v1/organizations/{quote(organization_id, safe='')}/memberships"
        body = self.get(path, {"user_id": user_id, "limit": 100}, missing_ok=True)
        if body is None:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise ClerkAPIError(f"GET {path}: expected an object with a 'data' list")
        return _objects(body["data"], path)

    # -- transport ---------------------------------------------------------------------------

    def get(
        self, path: str, params: Mapping[str, Any] | None = None, *, missing_ok: bool = False
    ) -> Any:
        """GET ``path`` and decode its JSON; with ``missing_ok``, a 404 gives None."""
        retrying = Retrying(
            retry=retry_if_exception_type((_RetryableResponseError, httpx.TransportError)),
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            before_sleep=self._before_retry(path),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._get_once(path, params, missing_ok)
        except _RetryableResponseError as error:
            raise ClerkUnavailableError(
                f"GET {path}: {error} after {self.attempts} attempts"
            ) from None
        except httpx.TransportError as error:
            raise ClerkUnavailableError(
                f"GET {path}: {type(error).__name__} after {self.attempts} attempts"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _get_once(self, path: str, params: Mapping[str, Any] | None, missing_ok: bool) -> Any:
        self.limiter.wait()
        self.requests += 1
        response = self._client.get(path, params=params)
        status = response.status_code
        if status == 404 and missing_ok:
            return None
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None:
                retry_after = min(retry_after, self.max_retry_after_seconds)
                self.limiter.pause(retry_after)
            raise _RetryableResponseError(status, retry_after)
        if status != 200:
            raise ClerkAPIError(f"GET {path}: HTTP {status}{_clerk_error(response)}")
        try:
            return response.json()
        except ValueError:
            raise ClerkAPIError(f"GET {path}: the answer is not JSON") from None

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, _RetryableResponseError) and error.retry_after is not None:
            return error.retry_after
        backoff = wait_random_exponential(
            multiplier=self.backoff_seconds, max=self.backoff_max_seconds
        )
        return float(backoff(state))

    def _before_retry(self, path: str) -> Callable[[RetryCallState], None]:
        def note(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning(
                "Clerk API GET %s failed (%s); retrying in %.1fs (attempt %d of %d)",
                path,
                type(error).__name__ if isinstance(error, httpx.TransportError) else error,
                wait,
                state.attempt_number,
                self.attempts,
            )

        return note


def _objects(items: Sequence[Any], path: str) -> list[Mapping[str, Any]]:
    objects: list[Mapping[str, Any]] = [item for item in items if isinstance(item, dict)]
    if len(objects) != len(items) or any(not _id_of(item) for item in objects):
        raise ClerkAPIError(f"GET {path}: a listed object is not an object with a string 'id'")
    return objects


def _object_or_none(body: Any) -> Mapping[str, Any] | None:
    if body is None:
        return None
    if not isinstance(body, dict) or not _id_of(body):
        raise ClerkAPIError("lookup: expected an object with a string 'id'")
    return body


def _id_of(item: Mapping[str, Any]) -> str:
    value = item.get("id")
    return value if isinstance(value, str) else ""


def _clerk_error(response: httpx.Response) -> str:
    """Clerk's own error code and message (``{"errors": [{"code", "message"}]}``), if any."""
    try:
        errors = response.json().get("errors")
        first = errors[0]
        return f" ({first.get('code')}: {first.get('message')})"
    except (ValueError, AttributeError, IndexError, KeyError, TypeError):
        return ""


# -- the report --------------------------------------------------------------------------------

OUTCOMES: Final = ("created", "updated", "unchanged", "blocked", "invalid", "deleted", "kept")
"""created/updated: written from Clerk's object; unchanged: already at that version or newer;
blocked: listed by Clerk but tombstoned here (or superseded), so not stored; invalid: listed by
Clerk but unreadable (no ``created_at``, say: logged, left alone); deleted: gone from Clerk,
deleted and tombstoned here; kept: missing from the listing but written since the run started,
so left alone."""


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    blocked: int = 0
    invalid: int = 0
    deleted: int = 0
    kept: int = 0

    def add(self, outcome: str, count: int = 1) -> None:
        setattr(self, outcome, getattr(self, outcome) + count)

    def as_dict(self) -> dict[str, int]:
        return {outcome: getattr(self, outcome) for outcome in OUTCOMES}


@dataclass
class ReconcileReport:
    dry_run: bool
    started_at: datetime
    resumed: bool = False
    counts: dict[str, Counts] = field(default_factory=lambda: {p: Counts() for p in PHASES})
    requests: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "started_at": self.started_at.isoformat(),
            "resumed": self.resumed,
            "requests": self.requests,
            "counts": {phase: counts.as_dict() for phase, counts in self.counts.items()},
        }


class Progress(Protocol):
    """What a caller may show while the run goes (a progress bar on a terminal)."""

    def begin(self, phase: str, total: int | None, done: int) -> None: ...

    def advance(self, steps: int) -> None: ...

    def end(self) -> None: ...


class NoProgress:
    def begin(self, phase: str, total: int | None, done: int) -> None:
        pass

    def advance(self, steps: int) -> None:
        pass

    def end(self) -> None:
        pass


# -- the journal (resume) ----------------------------------------------------------------------


@dataclass
class Checkpoint:
    """Where a run stands; rebuilt from the journal when resuming."""

    started_at: datetime
    dry_run: bool
    api_url: str
    offsets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    listed: set[str] = field(default_factory=set)
    swept: set[str] = field(default_factory=set)
    seen: dict[str, set[str]] = field(default_factory=lambda: {p: set() for p in PHASES})
    checked: dict[str, set[str]] = field(default_factory=lambda: {p: set() for p in PHASES})
    counts: dict[str, Counts] = field(default_factory=lambda: {p: Counts() for p in PHASES})
    resumed: bool = False

    def apply(self, record: Mapping[str, Any]) -> None:
        kind, phase = record.get("record"), record.get("phase")
        if phase not in PHASES:
            raise ReconcileError(f"state file: unknown phase {phase!r}")
        for outcome, count in record.get("counts", {}).items():
            if outcome in OUTCOMES:
                self.counts[phase].add(outcome, int(count))
        self.seen[phase].update(record.get("ids", ()))
        if kind == "page":
            self.offsets[phase] = int(record["offset"])
        elif kind == "listed":
            self.listed.add(phase)
        elif kind == "checked":
            self.checked[phase].add(str(record["id"]))
        elif kind == "swept":
            self.swept.add(phase)
        else:
            raise ReconcileError(f"state file: unknown record {kind!r}")


class Journal:
    """Append-only JSON lines; every line is on disk before the run goes past what it records.
    Without a path, nothing is written (the run cannot be resumed)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def open(self, *, dry_run: bool, api_url: str, now: datetime) -> Checkpoint:
        """Resume the run the file records, or start one (and record its start)."""
        if self.path is not None and self.path.exists():
            checkpoint = self._read(self.path)
            if checkpoint.dry_run != dry_run:
                mode = "a dry run" if checkpoint.dry_run else "a real run"
                raise ReconcileError(
                    f"state file {self.path} belongs to {mode}: resume it with the same "
                    "--dry-run setting, or delete the file to start over"
                )
            if checkpoint.api_url != api_url:
                raise ReconcileError(
                    f"state file {self.path} belongs to a run against another CLERK_API_URL; "
                    "delete it to start over"
                )
            checkpoint.resumed = True
            return checkpoint
        checkpoint = Checkpoint(started_at=now, dry_run=dry_run, api_url=api_url)
        self.append(
            {
                "record": "start",
                "version": JOURNAL_VERSION,
                "started_at": now.isoformat(),
                "dry_run": dry_run,
                "api_url": api_url,
            }
        )
        return checkpoint

    def append(self, record: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
        try:
            with self.path.open("a", encoding="utf-8") as stream:
                stream.write(line)
                stream.flush()
                os.fsync(stream.fileno())
        except OSError as error:
            raise ReconcileError(f"state file {self.path}: {error.strerror or error}") from None

    def finish(self) -> None:
        if self.path is not None:
            with suppress(FileNotFoundError):
                self.path.unlink()

    @staticmethod
    def _read(path: Path) -> Checkpoint:
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        if lines and lines[-1] != b"":
            # A line torn by a crash mid-write: drop it (and cut it off, so that the next
            # record starts on a line of its own).
            torn = len(lines[-1])
            with path.open("r+b") as stream:
                stream.truncate(len(raw) - torn)
            lines = lines[:-1]
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                raise ReconcileError(f"state file {path}: line {number} is not JSON") from None
        if not records or records[0].get("record") != "start":
            raise ReconcileError(f"state file {path}: does not start with a run's start")
        start = records[0]
        if start.get("version") != JOURNAL_VERSION:
            raise ReconcileError(f"state file {path}: unknown version {start.get('version')!r}")
        try:
            checkpoint = Checkpoint(
                started_at=datetime.fromisoformat(start["started_at"]),
                dry_run=bool(start["dry_run"]),
                api_url=str(start["api_url"]),
            )
            for record in records[1:]:
                checkpoint.apply(record)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ReconcileError(f"state file {path}: unreadable ({error!r})") from None
        return checkpoint


# -- applying Clerk's objects ------------------------------------------------------------------

TABLES: Final[dict[str, Table]] = {
    ORGANIZATIONS: organizations,
    MEMBERSHIPS: organization_memberships,
    USERS: users,
}


def _exists(connection: Connection, table: Table, entity_id: str) -> bool:
    return connection.execute(select(table.c.id).where(table.c.id == entity_id)).first() is not None


def _upsert(
    connection: Connection, phase: str, item: Mapping[str, Any], workspace_key: str
) -> bool:
    if phase == ORGANIZATIONS:
        return upsert_organization(connection, organization_snapshot(item, workspace_key))
    if phase == MEMBERSHIPS:
        return upsert_membership(connection, membership_snapshot(item, workspace_key))
    return upsert_user(connection, user_snapshot(item))


retry_transient = retry(
    retry=retry_if_exception(is_transient),
    stop=stop_after_attempt(3),
    wait=wait_random_exponential(multiplier=0.05, max=1.0),
    reraise=True,
)


class Reconciler:
    """One run; ``run`` does the work. Build it with ``reconcile``."""

    def __init__(
        self,
        engine: Engine,
        api: ClerkAPI,
        *,
        api_url: str,
        workspace_key: str,
        page_size: int,
        dry_run: bool,
        journal: Journal,
        progress: Progress,
        allow_mass_deletion: bool,
        clock_skew_margin: timedelta,
    ) -> None:
        self.engine = engine
        self.api = api
        self.api_url = api_url
        self.workspace_key = workspace_key
        self.page_size = page_size
        self.dry_run = dry_run
        self.journal = journal
        self.progress = progress
        self.allow_mass_deletion = allow_mass_deletion
        self.clock_skew_margin = clock_skew_margin

    def run(self) -> ReconcileReport:
        checkpoint = self.journal.open(
            dry_run=self.dry_run, api_url=self.api_url, now=datetime.now(UTC)
        )
        if checkpoint.resumed:
            log.info("resuming the reconcile run started %s", checkpoint.started_at.isoformat())
        for phase in PHASES:
            if phase not in checkpoint.listed:
                self._list(phase, checkpoint)
            if phase not in checkpoint.swept:
                self._sweep(phase, checkpoint)
        self.journal.finish()
        report = ReconcileReport(
            dry_run=self.dry_run,
            started_at=checkpoint.started_at,
            resumed=checkpoint.resumed,
            counts=checkpoint.counts,
            requests=self.api.requests,
        )
        log.info("reconcile finished: %s", json.dumps(report.as_dict()["counts"]))
        return report

    # -- one unit of work --------------------------------------------------------------------

    @contextmanager
    def _unit(self) -> Iterator[Connection]:
        """One transaction, committed, or rolled back in a dry run."""
        with self.engine.connect() as connection:
            transaction = connection.begin()
            try:
                yield connection
            except BaseException:
                transaction.rollback()
                raise
            if self.dry_run:
                transaction.rollback()
            else:
                transaction.commit()

    def _apply(self, phase: str, item: Mapping[str, Any]) -> str:
        """Apply one of Clerk's objects; returns the outcome."""

        @retry_transient
        def attempt() -> str:
            entity_id = _id_of(item)
            table = TABLES[phase]
            with self._unit() as connection:
                existed = _exists(connection, table, entity_id)
                try:
                    written = _upsert(connection, phase, item, self.workspace_key)
                except PoisonEventError as error:
                    # Its id counts as listed, so it is not deleted either.
                    log.warning("%s: left %s alone, it cannot be read: %s", phase, entity_id, error)
                    return "invalid"
                if written:
                    return "updated" if existed else "created"
                return "unchanged" if _exists(connection, table, entity_id) else "blocked"

        return attempt()

    # -- listing -----------------------------------------------------------------------------

    def _list(self, phase: str, checkpoint: Checkpoint) -> None:
        offset = checkpoint.offsets[phase]
        total = self.api.count_users() if phase == USERS else None
        begun = False
        try:
            while True:
                page = self.api.list_page(phase, offset, self.page_size)
                if not begun:
                    self.progress.begin(phase, page.total if total is None else total, offset)
                    begun = True
                counts = Counts()
                for item in page.items:
                    counts.add(self._apply(phase, item))
                offset += len(page.items)
                self._record(
                    checkpoint,
                    {
                        "record": "page",
                        "phase": phase,
                        "offset": offset,
                        "ids": [_id_of(item) for item in page.items],
                        "counts": _nonzero(counts),
                    },
                )
                self.progress.advance(len(page.items))
                if len(page.items) < self.page_size:
                    break
        finally:
            if begun:
                self.progress.end()
        self._record(checkpoint, {"record": "listed", "phase": phase})

    # -- deleting what Clerk no longer has ---------------------------------------------------

    def _sweep(self, phase: str, checkpoint: Checkpoint) -> None:
        table = TABLES[phase]
        cutoff = checkpoint.started_at - self.clock_skew_margin
        with self.engine.connect() as connection:
            stored = connection.execute(select(table.c.id, table.c.synced_at)).all()
        missing = [row for row in stored if row.id not in checkpoint.seen[phase]]
        recent = sorted(row.id for row in missing if _as_utc(row.synced_at) >= cutoff)
        candidates = sorted(
            row.id
            for row in missing
            if _as_utc(row.synced_at) < cutoff and row.id not in checkpoint.checked[phase]
        )
        if (
            not self.allow_mass_deletion
            and len(candidates) > MASS_DELETION_MINIMUM
            and len(candidates) > MASS_DELETION_FRACTION * len(stored)
        ):
            raise MassDeletionError(
                f"{len(candidates)} of {len(stored)} stored {phase} are missing from Clerk's "
                "listing: is CLERK_SECRET_KEY the key of this database's Clerk instance? "
                "Nothing of them was deleted; allow it with --allow-mass-deletion"
            )
        self.progress.begin(f"{phase} (checking missing)", len(candidates), 0)
        try:
            for entity_id in candidates:
                counts = self._check(phase, entity_id, checkpoint)
                self._record(
                    checkpoint,
                    {
                        "record": "checked",
                        "phase": phase,
                        "id": entity_id,
                        "counts": _nonzero(counts),
                    },
                )
                self.progress.advance(1)
        finally:
            self.progress.end()
        kept = Counts(kept=len(recent))
        if recent:
            log.info(
                "%s: kept %d missing from the listing but written since the run started",
                phase,
                len(recent),
            )
        self._record(checkpoint, {"record": "swept", "phase": phase, "counts": _nonzero(kept)})

    def _check(self, phase: str, entity_id: str, checkpoint: Checkpoint) -> Counts:
        """Look one candidate up in Clerk: apply it if it is there, delete it if it is not."""
        counts = Counts()
        if phase == MEMBERSHIPS:
            with self.engine.connect() as connection:
                row = connection.execute(
                    select(
                        organization_memberships.c.organization_id,
                        organization_memberships.c.user_id,
                        organization_memberships.c.created_at,
                    ).where(organization_memberships.c.id == entity_id)
                ).one_or_none()
            if row is None:  # gone meanwhile (a webhook, a supersession)
                return counts
            found = self.api.memberships_of(row.organization_id, row.user_id) or []
            if not any(_id_of(item) == entity_id for item in found):
                self._delete(
                    lambda connection: remove_membership(
                        connection, row.organization_id, entity_id, row.created_at, _now_ms()
                    )
                )
                counts.add("deleted")
            for item in found:
                counts.add(self._apply(phase, item))
            return counts
        lookup = self.api.get_organization if phase == ORGANIZATIONS else self.api.get_user
        current = lookup(entity_id)
        if current is not None:
            counts.add(self._apply(phase, current))
            return counts
        if phase == ORGANIZATIONS:
            self._delete(lambda connection: delete_organization(connection, entity_id, _now_ms()))
        else:
            self._delete(lambda connection: delete_user(connection, entity_id, _now_ms()))
        counts.add("deleted")
        return counts

    def _delete(self, mutation: Callable[[Connection], None]) -> None:
        @retry_transient
        def attempt() -> None:
            with self._unit() as connection:
                mutation(connection)

        attempt()

    def _record(self, checkpoint: Checkpoint, record: dict[str, Any]) -> None:
        self.journal.append(record)
        checkpoint.apply(record)


def _nonzero(counts: Counts) -> dict[str, int]:
    return {outcome: count for outcome, count in counts.as_dict().items() if count}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _as_utc(moment: datetime) -> datetime:
    """SQLite returns the stored UTC wall time without a zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def reconcile(
    engine: Engine,
    api: ClerkAPI,
    *,
    api_url: str,
    workspace_key: str,
    page_size: int = PAGE_SIZE,
    dry_run: bool = False,
    state_file: Path | None = None,
    progress: Progress | None = None,
    allow_mass_deletion: bool = False,
    clock_skew_margin: timedelta = CLOCK_SKEW_MARGIN,
) -> ReconcileReport:
    """Run (or resume, from ``state_file``) one reconciliation; see the module's docstring.

    Raises ``ReconcileBusyError`` if another run holds the lock (PostgreSQL), and another
    ``ReconcileError`` if it cannot finish; the journal then holds what it did.
    """
    if not 1 <= page_size <= PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {PAGE_SIZE}")
    reconciler = Reconciler(
        engine,
        api,
        api_url=api_url,
        workspace_key=workspace_key,
        page_size=page_size,
        dry_run=dry_run,
        journal=Journal(state_file),
        progress=progress or NoProgress(),
        allow_mass_deletion=allow_mass_deletion,
        clock_skew_margin=clock_skew_margin,
    )
    try:
        with hold_session_lock(engine, RUN_LOCK):
            return reconciler.run()
    except LockBusyError as busy:
        raise ReconcileBusyError("another reconcile run is in progress") from busy


# -- entry points: the command and the schedule ------------------------------------------------

RECONCILE_TASK: Final = "clerk_sync.reconcile"


def api_for(settings: Settings) -> ClerkAPI:
    settings.require_clerk_secret_key()
    return ClerkAPI(
        settings.clerk_api_url,
        settings.clerk_secret_key,
        max_requests_per_second=settings.clerk_api_max_requests_per_second,
    )


def reconcile_with_settings(
    engine: Engine, settings: Settings, api: ClerkAPI | None = None, **options: Any
) -> ReconcileReport:
    """``reconcile`` configured from ``settings`` (``CLERK_API_URL``, ``CLERK_SECRET_KEY``, the
    request rate, the workspace key). Raises ``SettingsError`` without a secret key."""
    owned = api is None
    api = api_for(settings) if api is None else api
    try:
        return reconcile(
            engine,
            api,
            api_url=settings.clerk_api_url,
            workspace_key=settings.workspace_metadata_key,
            **options,
        )
    finally:
        if owned:
            api.close()


def reconcile_schedule(settings: Settings) -> dict[str, Any]:
    """Beat's entry, when ``CLERK_SYNC_RECONCILE_INTERVAL_MINUTES`` is set (off by default).
    A run still queued when the next one is due expires rather than pile up."""
    if settings.reconcile_interval_minutes is None:
        return {}
    interval = timedelta(minutes=settings.reconcile_interval_minutes)
    return {
        "reconcile": {
            "task": RECONCILE_TASK,
            "schedule": interval,
            "options": {"expires": interval.total_seconds()},
        }
    }


def scheduled_reconcile(engine: Engine, settings: Settings) -> dict[str, Any] | None:
    """What beat's task runs: one whole run (no state file: the next scheduled run starts over),
    skipped if another is in progress. Failures are logged, not raised: the next run retries."""
    try:
        report = reconcile_with_settings(engine, settings)
    except SettingsError as error:
        log.error("scheduled reconcile not run: %s", error)
        return None
    except ReconcileBusyError:
        log.info("scheduled reconcile skipped: another run is in progress")
        return None
    except ReconcileError as error:
        log.error("scheduled reconcile failed: %s", error)
        return None
    return report.as_dict()
