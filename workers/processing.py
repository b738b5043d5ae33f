"""Applying one queued event: the code path every delivery, retry and test goes through."""

from __future__ import annotations

import logging
import traceback
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from clerk_sync.core.json_reading import read_payload
from models.claims import claim_event, claim_events
from models.database import is_transient, transaction
from models.events import (
    APPLIED,
    DEAD,
    FINISHED,
    RECEIVED,
    SKIPPED,
    EventStatus,
    IncomingEvent,
    Outcome,
    finish_event,
    finish_events,
    note_failed_attempt,
)
from models.unit_of_work import UnitOfWork
from workers.describing import describe_event
from workers.erasure import Erasures
from workers.handlers import HANDLERS, Targets
from workers.handlers.payloads import PoisonEventError, read_envelope
from workers.retries import IN_PROCESS_ATTEMPTS, describe_error, retry_transient

__all__ = [
    "BatchResult",
    "IsolationNeededError",
    "apply_batch",
    "apply_batch_with_short_retries",
    "apply_event",
    "apply_payload",
    "apply_with_short_retries",
    "dead_letter",
    "describe_event",
    "parse_payload",
    "parsed",
    "prepare",
    "read_targets",
    "record_retries",
    "record_retry",
    "take_targets",
]

log = logging.getLogger("clerk_sync.worker")


def apply_event(
    engine: Engine, event: IncomingEvent, workspace_key: str, *, erase_personal_data: bool = True
) -> str:
    """Record and apply one event in one transaction; returns its status afterwards.

    The mutation runs inside a savepoint, so an event that cannot be applied rolls back alone
    and is committed as ``dead`` together with its error. An event already applied or skipped is
    left as it is. Transient database errors propagate for the caller to retry. With
    ``erase_personal_data``, an event about a deleted user erases what the stored events hold
    about them (``workers.erasure``).
    """
    with transaction(engine) as connection:
        status = claim_event(connection, event)
        if status in FINISHED:
            log.info("duplicate ignored", extra={**_context(event), "status": status})
            return status
        work = UnitOfWork(connection, source=event.svix_id)
        erasures = Erasures(erase_personal_data)
        outcome, error = apply_payload(work, event.payload, workspace_key, document=event.document)
        if outcome == APPLIED:
            erasures.note(work, event)
            erasures.write(connection)
        finish_event(connection, event.svix_id, outcome, attempts=1, error=error)
    log.info("event processed", extra={**_context(event), "status": outcome})
    return outcome


@dataclass(frozen=True)
class BatchResult:
    """What ``apply_batch`` did with one event."""

    status: str
    duplicate: bool
    """Already finished by an earlier delivery: acknowledged and ignored."""


def apply_batch(
    engine: Engine,
    events: Sequence[IncomingEvent],
    workspace_key: str,
    *,
    wait_for_locks: bool = True,
    erase_personal_data: bool = True,
) -> dict[str, BatchResult]:
    """Record and apply many events (distinct svix ids) in one transaction; returns what became
    of each, by svix id.

    The same rules as ``apply_event``, event by event: the inbox rows are claimed (and locked,
    in svix-id order) first, events already applied or skipped are ignored, and a poison event
    is committed as ``dead`` with its neighbours applied. Before the first mutation, the
    organization and user locks of all the batch's events are taken in one global order, so
    concurrent batches cannot deadlock. Without ``wait_for_locks``, only the free locks are
    taken and the events needing one that another transaction holds are ``deferred``: two
    batches touching a few of the same organizations then run side by side instead of one
    after the other. Transient database errors propagate (the whole batch rolls back).

    A savepoint per event would isolate a poison event, but costs two more round trips to the
    database per event, as many as the mutation itself: the batch is first applied without
    them, and with its upserts written together (``UnitOfWork.writing_together``). Only if
    that fails (an event, or such a write) is it rolled back and applied again with a savepoint
    per event, each write on its own.
    """
    erase = erase_personal_data
    try:
        return _apply_batch(
            engine, events, workspace_key, isolated=False, wait=wait_for_locks, erase=erase
        )
    except Exception as failure:
        if is_transient(failure):
            raise
        log.info(
            "batch applied again with a savepoint per event",
            extra={"events": len(events), "error": describe_error(failure.__cause__ or failure)},
        )
        return _apply_batch(
            engine, events, workspace_key, isolated=True, wait=wait_for_locks, erase=erase
        )


def _apply_batch(
    engine: Engine,
    events: Sequence[IncomingEvent],
    workspace_key: str,
    *,
    isolated: bool,
    wait: bool,
    erase: bool,
) -> dict[str, BatchResult]:
    results: dict[str, BatchResult] = {}
    with transaction(engine) as connection:
        claims = claim_events(connection, events)
        pending = []
        for event in events:
            status = claims.statuses[event.svix_id]
            if status in FINISHED:
                results[event.svix_id] = BatchResult(status, duplicate=True)
            else:
                pending.append(event)
        outcomes = []
        documents = [parsed(event) for event in pending]
        work = UnitOfWork(connection)
        erasures = Erasures(erase)
        ready = prepare(work, documents, wait=wait)
        with nullcontext() if isolated else work.writing_together():
            for event, document, is_ready in zip(pending, documents, ready, strict=True):
                if not is_ready:
                    results[event.svix_id] = BatchResult(EventStatus.DEFERRED, duplicate=False)
                    if event.svix_id in claims.presumed:
                        # Left for a later batch: its new row is made ``received`` after all.
                        outcomes.append(Outcome(event.svix_id, RECEIVED))
                    continue
                work.source = event.svix_id
                status, error = apply_payload(
                    work, event.payload, workspace_key, isolated=isolated, document=document
                )
                if status == APPLIED:
                    erasures.note(work, event)
                outcomes.append(Outcome(event.svix_id, status, error))
                results[event.svix_id] = BatchResult(status, duplicate=False)
        erasures.write(connection)
        finish_events(connection, outcomes, attempts=1, presumed=claims.presumed)
    _log_batch(events, results)
    return results


def _log_batch(events: Sequence[IncomingEvent], results: dict[str, BatchResult]) -> None:
    """One line for the batch, naming its events by outcome, and one more for each event that
    was not applied (dead, or skipped as of an unknown type): a line per applied event cost
    the worker about a tenth of its CPU at full speed (it is there at ``DEBUG``)."""
    by_outcome: dict[str, list[str]] = {}
    event_types: Counter[str] = Counter()
    for event in events:
        event_types[event.event_type or "unknown"] += 1
        result = results[event.svix_id]
        outcome = "duplicate" if result.duplicate else result.status
        by_outcome.setdefault(outcome, []).append(event.svix_id)
        if result.duplicate:
            log.debug("duplicate ignored", extra={**_context(event), "status": result.status})
        elif result.status == APPLIED:
            log.debug("event processed", extra={**_context(event), "status": result.status})
        elif result.status != EventStatus.DEFERRED:
            log.info("event processed", extra={**_context(event), "status": result.status})
    log.info(
        "batch processed",
        extra={
            "events": len(events),
            "outcomes": {outcome: len(ids) for outcome, ids in by_outcome.items()},
            "event_types": dict(event_types),
            "svix_ids": by_outcome,
        },
    )


apply_batch_with_short_retries = retry_transient(apply_batch)


def prepare(work: UnitOfWork, documents: Sequence[Any], *, wait: bool = True) -> list[bool]:
    """Take, up front, the locks every one of these payloads' mutations takes, in one global
    order (so concurrent batches wait for each other instead of deadlocking), then read ahead
    the tombstones, membership holders and organization versions they look up, in one query
    each (``models.unit_of_work``). Returns, per payload, whether its locks are held: always
    when waiting; without ``wait``, only the free locks are taken and the payloads needing a
    lock another transaction holds must be left alone. ``documents`` are the parsed payloads
    (``parsed``)."""
    targets = [Targets.of(document) for document in documents]
    everything = Targets()
    for payload_targets in targets:
        everything.merge(payload_targets)
    busy = take_targets(work, everything, wait=wait)
    ready = [not (busy and payload_targets.lock_keys() & busy) for payload_targets in targets]
    runnable = Targets()
    for payload_targets, is_ready in zip(targets, ready, strict=True):
        if is_ready:
            runnable.merge(payload_targets)
    read_targets(work, runnable)
    return ready


def take_targets(work: UnitOfWork, targets: Targets, *, wait: bool = True) -> set[str]:
    """``prepare``'s locks, for what some payloads touch (merged): returns the lock keys not
    taken (none when waiting). Reconcile takes a page's this way."""
    return work.take_locks(
        targets.organizations,
        targets.users,
        wait=wait,
        entities=targets.entities,
        roles=targets.roles,
    )


def read_targets(work: UnitOfWork, targets: Targets) -> None:
    """``prepare``'s reads ahead, for what some payloads touch (merged), holding their locks."""
    work.read_ahead(
        sorted(targets.tombstones), sorted(targets.holders), sorted(targets.organizations)
    )
    work.read_profiles(sorted(targets.users))


def parsed(event: IncomingEvent) -> Any:
    """The event's payload as ``describe_event`` parsed it, or None if it is not JSON."""
    return parse_payload(event.payload) if event.document is None else event.document


def parse_payload(payload: str) -> Any:
    """The payload parsed, or None if it is not JSON (``apply_payload`` then says why)."""
    try:
        return read_payload(payload)
    except (ValueError, RecursionError):
        return None


class IsolationNeededError(Exception):
    """An event failed in a transaction without a savepoint of its own: whatever it wrote is
    mixed with its neighbours' writes, so the transaction must be rolled back."""


def apply_payload(
    work: UnitOfWork,
    payload: str,
    workspace_key: str,
    *,
    isolated: bool = True,
    document: Any = None,
) -> tuple[str, str | None]:
    """Run the event's handler in a savepoint; returns the outcome and, unless applied, why.

    The mutation alone: the inbox is not touched, so ``rebuild`` re-applies stored events
    through exactly the code ``apply_event`` uses. Transient database errors propagate. Without
    ``isolated`` there is no savepoint, and an event that cannot be applied raises
    ``IsolationNeededError`` instead of being reported dead. When the savepoint rolls back,
    the unit of work forgets what it had read or noted: some of it may be undone.
    ``document`` is the payload parsed already, if the caller has it.
    """
    try:
        with work.connection.begin_nested() if isolated else nullcontext():
            envelope = read_envelope(read_payload(payload) if document is None else document)
            handler = HANDLERS.get(envelope.type)
            if handler is None:
                return SKIPPED, f"no handler for event type {envelope.type!r}"
            handler(work, envelope, workspace_key)
    except (PoisonEventError, ValueError) as poison:
        if not isolated:
            raise IsolationNeededError from poison
        work.rolled_back()
        return DEAD, f"{type(poison).__name__}: {poison}"
    except Exception as failure:
        if is_transient(failure):
            raise
        if not isolated:
            raise IsolationNeededError from failure
        work.rolled_back()
        return DEAD, traceback.format_exc()
    return APPLIED, None


apply_with_short_retries = retry_transient(apply_event)


def record_retry(engine: Engine, event: IncomingEvent, error: BaseException) -> None:
    """Best effort: show the failing event in the inbox while it waits for its next attempt.
    When the database itself is down this fails too, and the event is still safe in the queue."""
    try:
        with transaction(engine) as connection:
            note_failed_attempt(
                connection, event, attempts=IN_PROCESS_ATTEMPTS, error=describe_error(error)
            )
    except Exception as failure:
        if not is_transient(failure):
            raise
        log.warning("failed attempt not recorded: database unavailable", extra=_context(event))


def record_retries(engine: Engine, failures: Sequence[tuple[IncomingEvent, BaseException]]) -> None:
    """``record_retry`` for many events in one transaction (in svix-id order), best effort:
    nothing is raised, the events are safe in the queue either way."""
    try:
        with transaction(engine) as connection:
            for event, error in sorted(failures, key=lambda failure: failure[0].svix_id):
                note_failed_attempt(
                    connection, event, attempts=IN_PROCESS_ATTEMPTS, error=describe_error(error)
                )
    except Exception as failure:
        level = logging.WARNING if is_transient(failure) else logging.ERROR
        log.log(
            level,
            "failed attempts not recorded",
            exc_info=not is_transient(failure),
            extra={"events": len(failures), "error": describe_error(failure)},
        )


def dead_letter(engine: Engine, event: IncomingEvent, error: BaseException) -> None:
    """Give up on an event whose retries are exhausted: keep it, with why, for an operator."""
    with transaction(engine) as connection:
        if claim_event(connection, event) in FINISHED:
            return
        finish_event(
            connection,
            event.svix_id,
            DEAD,
            attempts=IN_PROCESS_ATTEMPTS,
            error="".join(traceback.format_exception(error)),
        )
    log.error("event dead-lettered", extra={**_context(event), "error": describe_error(error)})


def _context(event: IncomingEvent) -> dict[str, Any]:
    return {"svix_id": event.svix_id, "event_type": event.event_type}
