"""Versioned tables: the upsert every synced row is written with, built from the columns that
make a row's version. Stale never wins: a row is inserted, or overwrites a stored row whose
version is older; a stored row as new or newer is left as it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, Table, and_, bindparam, delete, or_

from models.changes.sources import deletion_source_clause
from models.statements import cached_statement, insert_row, insert_rows
from models.tables import (
    organization_domains,
    organization_invitations,
    organization_memberships,
    organization_permissions,
    organization_roles,
    organizations,
    users,
)


@dataclass(frozen=True)
class Versioned:
    """A table keyed by ``id`` whose rows carry a version: ``version`` names its columns, compared
    in order (a membership's ``(created_at, updated_at)``: its incarnation, then its change)."""

    table: Table
    version: tuple[str, ...]
    requires: tuple[str, ...] = ()
    """Tables whose rows these reference: written first when rows are written together."""

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.table.columns)

    def version_of(self, values: dict[str, Any]) -> tuple[int, ...]:
        return tuple(values[name] for name in self.version)

    def upsert_one(self, connection: Connection) -> Any:
        """Upsert one row (``bound`` values), returning its id if it was written (RETURNING,
        not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO UPDATE)."""
        return cached_statement(connection, f"upsert_one:{self.name}", self._build_one)

    def repair_one(self, connection: Connection) -> Any:
        """``upsert_one`` that also overwrites a stored row holding the *same* version (content
        drift: reconcile makes Clerk's copy win), never a newer one."""
        return cached_statement(connection, f"repair_one:{self.name}", self._build_repair)

    def upsert_many(self, connection: Connection) -> Any:
        """Upsert many rows (``rows_parameters``) in one statement."""
        return cached_statement(connection, f"upsert_many:{self.name}", self._build_many)

    def delete_by_id(self, connection: Connection) -> Any:
        """Delete the row ``:p_id``."""
        return cached_statement(connection, f"delete:{self.name}", self._build_delete)

    def delete_incarnations(self, connection: Connection) -> Any:
        """Delete the row ``:p_id`` if its first version column is at most ``:p_at_most`` (a
        membership's incarnations created at or before a time)."""
        return cached_statement(
            connection, f"delete_incarnations:{self.name}", self._build_delete_incarnations
        )

    def delete_where(self, connection: Connection, column: str) -> Any:
        """Delete the rows whose ``column`` is ``:p_value``."""
        return cached_statement(
            connection,
            f"delete_where:{self.name}:{column}",
            lambda connection: _attributed(
                connection, delete(self.table).where(self.table.c[column] == bindparam("p_value"))
            ),
        )

    def _build_one(self, connection: Connection) -> Any:
        statement = self._guarded(insert_row(connection, self.table, self.columns))
        return statement.returning(self.table.c.id)

    def _build_many(self, connection: Connection) -> Any:
        return self._guarded(insert_rows(connection, self.table, self.columns))

    def _build_repair(self, connection: Connection) -> Any:
        statement = self._guarded(insert_row(connection, self.table, self.columns), or_equal=True)
        return statement.returning(self.table.c.id)

    def _guarded(self, statement: Any, *, or_equal: bool = False) -> Any:
        """Insert, or overwrite a row holding an older version (``or_equal``: or the same)."""
        incoming = statement.excluded
        stored = [self.table.c[name] for name in self.version]
        versions = [incoming[name] for name in self.version]
        older = _older(stored, versions)
        if or_equal:
            older = or_(older, and_(*(a == b for a, b in zip(stored, versions, strict=True))))
        return statement.on_conflict_do_update(
            index_elements=[self.table.c.id],
            set_={name: incoming[name] for name in self.columns if name != "id"},
            where=older,
        )

    def _build_delete(self, connection: Connection) -> Any:
        return _attributed(
            connection, delete(self.table).where(self.table.c.id == bindparam("p_id"))
        )

    def _build_delete_incarnations(self, connection: Connection) -> Any:
        return _attributed(
            connection,
            delete(self.table).where(
                self.table.c.id == bindparam("p_id"),
                self.table.c[self.version[0]] <= bindparam("p_at_most"),
            ),
        )


def _attributed(connection: Connection, statement: Any) -> Any:
    """A deletion that names its source (``:p_source``) to the change feed's triggers
    (``models.changes.sources``)."""
    if connection.dialect.name == "postgresql":
        return statement.where(deletion_source_clause())
    return statement


def _older(stored: list[Any], incoming: list[Any]) -> Any:
    """SQL for ``stored < incoming``, compared column by column."""
    first = stored[0] < incoming[0]
    if len(stored) == 1:
        return first
    return or_(first, and_(stored[0] == incoming[0], _older(stored[1:], incoming[1:])))


ORGANIZATIONS: Final = Versioned(organizations, version=("updated_at",))
USERS: Final = Versioned(users, version=("updated_at",))
MEMBERSHIPS: Final = Versioned(
    organization_memberships,
    version=("created_at", "updated_at"),
    requires=(organizations.name,),
)
"""A membership's version is (``created_at``, ``updated_at``): ``created_at`` tells its
incarnations apart (a user removed and re-added), ``updated_at`` orders changes within one."""
ROLES: Final = Versioned(organization_roles, version=("updated_at",))
PERMISSIONS: Final = Versioned(organization_permissions, version=("updated_at",))
INVITATIONS: Final = Versioned(organization_invitations, version=("updated_at",))
DOMAINS: Final = Versioned(organization_domains, version=("updated_at",))
"""Roles, permissions, invitations and domains move only to a newer ``updated_at``: Clerk never
reuses their ids, and an invitation's status changes only with a newer ``updated_at``."""
