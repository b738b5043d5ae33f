"""The unit of work: the one door through which the mutation rules read and write.

The rules (``models.organizations``, ``models.memberships``, ``models.users``) say *what* is
read and written; the unit of work decides *when*, and what it can answer without a query:

- **Locks.** A batch takes every lock its events need up front (``take_locks``); the rules
  still take each lock they need, and the unit of work skips those already held.
- **Read ahead.** After taking its locks, a batch reads the tombstones, membership holders and
  organization versions its events will look up, in one query each (``read_ahead``). Nothing
  else writes those rows while the locks are held, so lookups answer from that copy; a write
  updates or forgets the entries it may change, so the copy is never newer or older than what
  the transaction would read. ``rolled_back`` forgets it all after a savepoint rolls back.
- **Writing together.** Inside ``writing_together``, upserts, burials and deletions by key are
  queued (``models.write_queue``) and written with one statement per table when the block
  ends, or before any statement that reads the table or deletes from it by another column.

- **Repair.** Reconcile reads the stored rows of a page first (``read_rows``); with
  ``repair``, an upsert at the *same* version whose content differs from that row overwrites
  it (Clerk's copy wins: content drift that no version change would ever heal).

- **Derived columns.** A membership's ``permissions`` and profile columns follow the stored
  roles and users (``models.unit_of_work_derived``): read once per transaction, recomputed
  after the queued rows are written.

Built on a bare connection, a unit of work remembers nothing and writes everything at once:
that is how single events and the tests use the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection

from models.changes.sources import SOURCE_PARAMETER, run_deletions
from models.derived import DerivedState
from models.locks import lock_entity, lock_organization, lock_user, roles_mode_held, take_locks
from models.lookups import (
    Holder,
    find_holder,
    find_tombstone,
    find_two_tombstones,
    holders_of,
    organization_versions_of,
    stored_rows,
    tombstones_of,
)
from models.statements import bound
from models.tables import (
    organization_memberships,
    organizations,
    tombstones,
)
from models.tombstones import (
    Tombstone,
    bury_many_statement,
    bury_statement,
    tombstone_of,
    tombstone_values,
    widest,
)
from models.unit_of_work_derived import DerivedColumns
from models.versioned import Versioned
from models.write_queue import WriteQueue

_MISSING: Any = object()
Pair = tuple[str, str]


class UnitOfWork(DerivedColumns):
    """The reads and writes of one transaction's mutations (see the module docstring)."""

    def __init__(
        self,
        connection: Connection,
        *,
        alone: bool = False,
        repair: bool = False,
        source: str | None = None,
    ) -> None:
        """``alone``: nothing else writes the tables this transaction writes (a rebuild's
        shadow tables), so no lock is taken. ``repair``: see the module docstring."""
        self.connection = connection
        self.source = source
        """Who makes the writes that follow (an event's svix id, ``reconcile``): recorded with
        each change in the change feed (``models.changes.sources``)."""
        self._alone = alone
        self._repair = repair
        self._rows: dict[str, dict[str, dict[str, Any] | None]] = {}
        """Table → id → the stored row (None: none), for the ids read with ``read_rows``."""
        self._held: set[str] = set()
        self._tombstones: dict[Pair, Tombstone | None] | None = None
        """(entity_type, entity_id) → its tombstone or None, for the entities read ahead."""
        self._holders: dict[Pair, list[Holder]] | None = None
        """(organization_id, user_id) → the memberships holding it, for the pairs read ahead."""
        self._versions: dict[str, dict[str, tuple[int, ...]]] = {}
        """Table → id → a version its row is known to hold at least, for the tables read ahead."""
        self._queue: WriteQueue | None = None
        self._derived = DerivedState()

    # -- locks ------------------------------------------------------------------------------

    def take_locks(
        self,
        organization_ids: Iterable[str],
        user_ids: Iterable[str],
        *,
        wait: bool = True,
        entities: Iterable[str] = (),
        roles: str | None = None,
    ) -> set[str]:
        """Take these locks up front (``models.locks.take_locks``); returns the lock keys *not*
        taken (none when waiting)."""
        if self._alone:
            return set()
        held, busy = take_locks(
            self.connection, organization_ids, user_ids, wait=wait, entities=entities, roles=roles
        )
        self._held |= held
        self._derived.roles_mode = roles_mode_held(held) or self._derived.roles_mode
        return busy

    def lock_organization(self, organization_id: str) -> None:
        if not self._alone:
            lock_organization(self.connection, organization_id, self._held)

    def lock_user(self, user_id: str) -> None:
        if not self._alone:
            lock_user(self.connection, user_id, self._held)

    def lock_entity(self, key: str) -> None:
        if not self._alone:
            lock_entity(self.connection, key, self._held)

    # -- read ahead -------------------------------------------------------------------------

    def read_ahead(
        self,
        entities: Sequence[Pair],
        holder_pairs: Sequence[Pair],
        organization_ids: Sequence[str],
    ) -> None:
        """Read the tombstones of ``entities``, the holders of ``holder_pairs`` and the stored
        versions of ``organization_ids`` at once; call it holding their locks. Every
        membership event carries its organization's snapshot, almost always the version
        stored already: knowing it, the batch skips an upsert that would change nothing."""
        self._tombstones = tombstones_of(self.connection, entities)
        self._holders = holders_of(self.connection, holder_pairs)
        self._versions[organizations.name] = organization_versions_of(
            self.connection, organization_ids
        )

    def read_rows(self, kind: Versioned, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Read the stored rows of these ids in one query and return them (id → row); call it
        holding their locks. Their versions are then known, so an upsert of a version these rows
        hold already is skipped without a statement (or, with ``repair``, compared)."""
        found = stored_rows(self.connection, kind.table, ids)
        rows = self._rows.setdefault(kind.name, {})
        rows.update(dict.fromkeys(ids))  # asked for and not stored: None
        rows.update(found)
        versions = self._versions.setdefault(kind.name, {})
        for key, row in found.items():
            versions[key] = kind.version_of(row)
        return found

    def rolled_back(self) -> None:
        """A savepoint rolled back: what its writes established is undone, so forget all that
        was read ahead or noted (it is read again, from the database, as needed)."""
        for known in (self._tombstones, self._holders, *self._versions.values()):
            if known is not None:
                known.clear()
        self._rows.clear()
        self._derived.forget()

    # -- reads ------------------------------------------------------------------------------

    def tombstone(self, entity_type: str, entity_id: str) -> Tombstone | None:
        """The tombstone of an entity, if it was deleted (or superseded)."""
        key = (entity_type, entity_id)
        known = _MISSING if self._tombstones is None else self._tombstones.get(key, _MISSING)
        if known is not _MISSING:
            return known  # type: ignore[no-any-return]
        self._write_queued(tombstones.name)
        return find_tombstone(self.connection, key)

    def tombstones(self, first: Pair, second: Pair) -> tuple[Tombstone | None, Tombstone | None]:
        """``tombstone`` of two ``(entity_type, entity_id)``, in one query if it must ask."""
        known = self._tombstones
        if known is not None and first in known and second in known:
            return known[first], known[second]
        self._write_queued(tombstones.name)
        return find_two_tombstones(self.connection, first, second)

    def stored_row(self, kind: Versioned, row_id: str) -> dict[str, Any] | None:
        """The stored row ``row_id`` of a table keyed by ``id`` (its queued rows written first)."""
        self._write_queued(kind.name)
        return stored_rows(self.connection, kind.table, [row_id]).get(row_id)

    def holder(self, organization_id: str, user_id: str, other_than: str) -> Holder | None:
        """The membership, other than ``other_than``, holding (organization, user), if any."""
        known = None if self._holders is None else self._holders.get((organization_id, user_id))
        if known is not None:
            others = [holder for holder in known if holder.id != other_than]
            if len(others) <= 1:
                return others[0] if others else None
        self._write_queued(organization_memberships.name)
        return find_holder(self.connection, organization_id, user_id, other_than)

    # -- writes -----------------------------------------------------------------------------

    def upsert(self, kind: Versioned, values: dict[str, Any]) -> bool:
        """Insert the row, or overwrite a stored row holding an older version; returns whether
        it was written (or queued to be)."""
        values["synced_by"] = self.source
        key, version = values["id"], kind.version_of(values)
        versions = self._versions.get(kind.name)
        known = None if versions is None else versions.get(key)
        if known is not None and version <= known:
            if version == known and self._drifted(kind, values):
                return self._overwrite(kind, values)
            return False  # the row holds this version, or a newer one, already
        if self._queue is not None:
            written = self._queue.add_row(
                kind.name, key, version, values, kind.upsert_many, kind.requires
            )
        else:
            statement = kind.upsert_one(self.connection)
            written = self.connection.execute(statement, bound(values)).first() is not None
        if versions is not None:
            versions[key] = version  # newer than ``known``: the row holds it, or will
        self._written(kind, values, written)
        return written

    def _drifted(self, kind: Versioned, values: dict[str, Any]) -> bool:
        """With ``repair``: whether the row read for ``values``' id differs from them (its
        ``synced_at`` aside)."""
        stored = self._rows.get(kind.name, {}).get(values["id"]) if self._repair else None
        return stored is not None and any(
            stored.get(name) != value
            for name, value in values.items()
            if name not in ("synced_at", "synced_by")
        )

    def _overwrite(self, kind: Versioned, values: dict[str, Any]) -> bool:
        """Write ``values`` over the stored row of the same version, at once (rare: drift)."""
        self._write_queued(kind.name)
        statement = kind.repair_one(self.connection)
        written = self.connection.execute(statement, bound(values)).first() is not None
        self._written(kind, values, written)
        return written

    def _written(self, kind: Versioned, values: dict[str, Any], written: bool) -> None:
        if not written:
            return
        self._derived.written(kind.name, values)
        rows = self._rows.get(kind.name)
        known = rows is not None and values["id"] in rows
        before = rows.get(values["id"]) if rows is not None else None
        if rows is not None and known:
            rows[values["id"]] = values
        if kind.table is organization_memberships:
            # The row now holds this pair, and no longer the pair it held (should it have moved).
            pair = (values["organization_id"], values["user_id"])
            if known and self._holders is not None:
                # Read with ``read_rows``: the pair it held is known (holders are read ahead
                # under the same locks), no need to look through every holder.
                self._holders.pop(pair, None)
                if before is not None:
                    self._holders.pop((before["organization_id"], before["user_id"]), None)
            else:
                self._forget_holders(
                    lambda key, holders: key == pair or _holds(holders, values["id"])
                )

    def replace(self, kind: Versioned, old_id: str, values: dict[str, Any]) -> bool:
        """Delete the row ``old_id`` (buried already) and upsert ``values`` in its place: the
        deletion runs at once, before the new row can take the unique key it frees."""
        pair = (values.get("organization_id"), values.get("user_id"))
        self._forget_holders(lambda key, holders: key == pair or _holds(holders, old_id))
        self._forget_version(kind, old_id)
        if self._queue is not None:
            self._queue.drop(kind.name, lambda row: row["id"] == old_id)
        run_deletions(
            self.connection,
            kind.delete_by_id(self.connection),
            [{"p_id": old_id, SOURCE_PARAMETER: self.source}],
        )
        return self.upsert(kind, values)

    def delete(self, kind: Versioned, row_id: str, *, created_at_most: int | None = None) -> None:
        """Delete a row by id (with ``created_at_most``, only an incarnation created at or
        before it). Call it after burying the row's tombstone: the batch's later upserts of
        this id are then refused, so the deletion may be queued behind the table's rows."""
        if kind.table is organization_memberships:
            self._forget_holders(lambda _key, holders: _holds(holders, row_id))
        self._forget_version(kind, row_id)
        self._derived.deleted(kind.name, row_id)

        def matches(row: dict[str, Any]) -> bool:
            return row["id"] == row_id and (
                created_at_most is None or row[kind.version[0]] <= created_at_most
            )

        if created_at_most is None:
            name, statement = kind.name, kind.delete_by_id
            parameters: dict[str, Any] = {"p_id": row_id, SOURCE_PARAMETER: self.source}
        else:
            name, statement = f"{kind.name}:incarnations", kind.delete_incarnations
            parameters = {"p_id": row_id, "p_at_most": created_at_most}
            parameters[SOURCE_PARAMETER] = self.source
        if self._queue is None:
            run_deletions(self.connection, statement(self.connection), [parameters])
            return
        self._queue.drop(kind.name, matches)
        self._queue.add_deletion(kind.name, name, statement, parameters)

    def delete_where(self, kind: Versioned, column: str, value: str) -> None:
        """Delete the rows whose ``column`` is ``value``, at once: a queued row may move a
        stored row into (or out of) that set, so the table's queue is written first."""
        if kind.table is organization_memberships and column in ("organization_id", "user_id"):
            position = 0 if column == "organization_id" else 1
            self._forget_holders(lambda key, _holders: key[position] == value)
        self._versions.pop(kind.name, None)
        self._write_queued(kind.name)
        statement = kind.delete_where(self.connection, column)
        run_deletions(
            self.connection, statement, [{"p_value": value, SOURCE_PARAMETER: self.source}]
        )

    def bury(self, tombstone: Tombstone) -> None:
        """Record a deletion; burying the same entity again keeps the widest claim.

        ``created_at`` marks which incarnation is dead (every membership created at or before
        it), so the stored value only ever grows; ``deleted_at`` keeps the earliest deletion
        seen, and an explicit deletion outranks a supersession (``models.tombstones.widest``).
        Knowing the stored tombstone, the merge is worked out here and queued.
        """
        key = (tombstone.entity_type, tombstone.entity_id)
        known = _MISSING if self._tombstones is None else self._tombstones.get(key, _MISSING)
        if known is not _MISSING and self._queue is not None and self._tombstones is not None:
            merged = widest(known, tombstone)
            values = tombstone_values(merged)
            self._queue.add_row(tombstones.name, key, None, values, bury_many_statement)
            self._tombstones[key] = merged
            return
        statement = bury_statement(self.connection)
        buried = self.connection.execute(statement, bound(tombstone_values(tombstone))).one()
        if self._tombstones is not None:
            # Later lookups of this entity read what the statement left, not the database.
            self._tombstones[key] = tombstone_of(buried)

    @contextmanager
    def writing_together(self) -> Iterator[None]:
        """Queue the writes of this block and write them when it ends (not if it raises: the
        transaction is being rolled back anyway)."""
        self._queue = WriteQueue()
        try:
            yield
            self._queue.write_all(self.connection)
            self._refresh()
        finally:
            self._queue = None

    # -- bookkeeping ------------------------------------------------------------------------

    def _write_queued(self, table: str) -> None:
        if self._queue is not None:
            self._queue.write(self.connection, table)

    def _forget_holders(self, matches: Callable[[Pair, list[Holder]], bool]) -> None:
        if self._holders is not None:
            for key in [key for key, holders in self._holders.items() if matches(key, holders)]:
                del self._holders[key]

    def _forget_version(self, kind: Versioned, row_id: str) -> None:
        versions = self._versions.get(kind.name)
        if versions is not None:
            versions.pop(row_id, None)


def _holds(holders: list[Holder], membership_id: str) -> bool:
    return any(holder.id == membership_id for holder in holders)
