"""A membership's derived columns: a pure function of converged state, recomputed whenever an
input changes, so that any order of membership, user, role and permission events ends in the
same rows (docs/architecture.md, "How each column is versioned").

- ``permissions``: if a stored role has ``key`` = the membership's ``role`` (the one with the
  smallest id, should two share a key for a while), the keys of that role's permission ids that
  have a row in ``organization_permissions``, sorted; otherwise ``listed_permissions``, what
  the membership's own newest event listed.
- ``identifier``, ``first_name``, ``last_name``, ``image_url``: if a ``users`` row exists for
  the member, from it (``identifier``: its primary email address, else its username, else
  ``listed_identifier``, what the membership's newest event said); otherwise from the
  membership's newest event.

``RoleBook`` is what the unit of work keeps of the roles and permissions (all of them: a few
hundred rows at most), read under the roles lock; ``refresh_permissions`` and
``refresh_profiles`` are the bulk recomputes, each one ``UPDATE`` touching only rows whose
value differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Text, any_, bindparam, cast, func, null, or_, select, update
from sqlalchemy.dialects import postgresql

from models.statements import cached_statement
from models.tables import (
    organization_invitations,
    organization_memberships,
    organization_permissions,
    organization_roles,
    users,
)


@dataclass(frozen=True)
class Profile:
    """What a ``users`` row says about the member."""

    primary_email_address: str | None
    username: str | None
    first_name: str | None
    last_name: str | None
    image_url: str | None


def profile_columns(profile: Profile | None, listed: dict[str, Any]) -> dict[str, Any]:
    """The profile columns of a membership whose event said ``listed`` (``identifier``,
    ``first_name``, ``last_name``, ``image_url``), for its member's ``profile`` (None: no row)."""
    if profile is None:
        return dict(listed)
    return {
        "identifier": _first_present(
            profile.primary_email_address, profile.username, listed["identifier"]
        ),
        "first_name": profile.first_name,
        "last_name": profile.last_name,
        "image_url": profile.image_url,
    }


def _first_present(*values: str | None) -> str | None:
    """SQL's ``COALESCE``."""
    return next((value for value in values if value is not None), None)


@dataclass
class StoredRole:
    key: str
    permission_ids: tuple[str, ...]


@dataclass
class RoleBook:
    """The stored roles and permissions, kept up to date with this transaction's writes."""

    roles: dict[str, StoredRole] = field(default_factory=dict)
    permissions: dict[str, str] = field(default_factory=dict)
    """Permission id → its key."""
    versions: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    """Table → id → stored version, for the unit of work's version checks."""

    @classmethod
    def read(cls, connection: Connection) -> RoleBook:
        """Every stored role and permission, in one query."""
        book = cls()
        role_versions = book.versions.setdefault(organization_roles.name, {})
        permission_versions = book.versions.setdefault(organization_permissions.name, {})
        statement = cached_statement(connection, "derived:book", _build_book)
        for row in connection.execute(statement):
            if row.permission_ids is None:
                book.permissions[row.id] = row.key
                permission_versions[row.id] = (row.updated_at,)
            else:
                book.roles[row.id] = StoredRole(row.key, tuple(row.permission_ids))
                role_versions[row.id] = (row.updated_at,)
        return book

    def permissions_of(self, role_key: str) -> list[str] | None:
        """The derived ``permissions`` of a membership with this role, or None when no stored
        role has the key (the membership's ``listed_permissions`` then)."""
        holders = sorted(role_id for role_id, role in self.roles.items() if role.key == role_key)
        if not holders:
            return None
        granted = self.roles[holders[0]].permission_ids
        return sorted({self.permissions[p] for p in granted if p in self.permissions})

    def keys_granting(self, permission_id: str) -> set[str]:
        """The keys of the roles that grant this permission."""
        return {role.key for role in self.roles.values() if permission_id in role.permission_ids}

    def note(self, table: str, values: dict[str, Any]) -> None:
        """A role or permission row was written (or queued) with these values."""
        if table == organization_roles.name:
            self.roles[values["id"]] = StoredRole(values["key"], tuple(values["permission_ids"]))
        else:
            self.permissions[values["id"]] = values["key"]

    def forget(self, table: str, row_id: str) -> None:
        """A role or permission row was deleted."""
        if table == organization_roles.name:
            self.roles.pop(row_id, None)
        else:
            self.permissions.pop(row_id, None)


def _build_book(_connection: Connection) -> Any:
    """Roles (with their permission ids, never null) and permissions (null there)."""
    roles, permissions = organization_roles.c, organization_permissions.c
    return select(roles.id, roles.key, roles.permission_ids, roles.updated_at).union_all(
        select(
            permissions.id,
            permissions.key,
            null().cast(roles.permission_ids.type).label("permission_ids"),
            permissions.updated_at,
        )
    )


def profiles_of(
    connection: Connection, user_ids: Sequence[str]
) -> dict[str, tuple[tuple[int, ...], Profile | None]]:
    """The stored version and ``Profile`` of each of these users ((), None when absent)."""
    wanted = sorted({value for value in user_ids if "\x00" not in value})
    found: dict[str, tuple[tuple[int, ...], Profile | None]] = dict.fromkeys(wanted, ((), None))
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        statement = cached_statement(connection, "derived:profiles", _build_profiles)
        for row in connection.execute(statement, {"p_ids": chunk}):
            profile = Profile(
                row.primary_email_address,
                row.username,
                row.first_name,
                row.last_name,
                row.image_url,
            )
            found[row.id] = ((row.updated_at,), profile)
    return found


def _build_profiles(connection: Connection) -> Any:
    u = users.c
    return select(
        u.id,
        u.updated_at,
        u.primary_email_address,
        u.username,
        u.first_name,
        u.last_name,
        u.image_url,
    ).where(_among(connection, u.id))


def _among(connection: Connection, column: Any) -> Any:
    """``column`` among the ids ``:p_ids``: on PostgreSQL ``= ANY`` of one array parameter (one
    statement text whatever the count, so it is prepared once), elsewhere an expanding ``IN``."""
    if connection.dialect.name == "postgresql":
        return column == any_(cast(bindparam("p_ids"), postgresql.ARRAY(Text())))
    return column.in_(bindparam("p_ids", expanding=True))


def refresh_permissions(
    connection: Connection, role_key: str, granted: list[str] | None, source: str | None
) -> None:
    """Set ``permissions`` of the memberships with role ``role_key`` to ``granted`` (None: to
    their ``listed_permissions``), changing only the rows whose value differs; ``source`` is
    who writes (``UnitOfWork.source``)."""
    parameters: dict[str, Any] = {"p_key": role_key, **_stamp(source)}
    if granted is None:
        statement = cached_statement(connection, "derived:listed", _build_listed)
    else:
        statement = cached_statement(connection, "derived:granted", _build_granted)
        parameters["p_granted"] = granted
    connection.execute(statement, parameters)


def _build_granted(_connection: Connection) -> Any:
    m = organization_memberships.c
    granted = bindparam("p_granted", type_=m.permissions.type)
    return (
        update(organization_memberships)
        .where(m.role == bindparam("p_key"), m.permissions.is_distinct_from(granted))
        .values(permissions=granted, **_stamps())
    )


def _build_listed(_connection: Connection) -> Any:
    m = organization_memberships.c
    return (
        update(organization_memberships)
        .where(
            m.role == bindparam("p_key"),
            m.listed_permissions.is_not(None),
            m.permissions.is_distinct_from(m.listed_permissions),
        )
        .values(permissions=m.listed_permissions, **_stamps())
    )


def refresh_profiles(connection: Connection, user_ids: Sequence[str], source: str | None) -> None:
    """Recompute the profile columns of these users' memberships from their ``users`` rows,
    changing only the rows whose values differ (a user without a row changes nothing)."""
    wanted = sorted(set(user_ids))
    statement = cached_statement(connection, "derived:profiles_refresh", _build_refresh_profiles)
    stamp = _stamp(source)
    for start in range(0, len(wanted), 500):
        connection.execute(statement, {"p_ids": wanted[start : start + 500], **stamp})


def _build_refresh_profiles(connection: Connection) -> Any:
    m, u = organization_memberships.c, users.c
    identifier = func.coalesce(u.primary_email_address, u.username, m.listed_identifier)
    return (
        update(organization_memberships)
        .where(
            m.user_id == u.id,
            _among(connection, u.id),
            or_(
                m.identifier.is_distinct_from(identifier),
                m.first_name.is_distinct_from(u.first_name),
                m.last_name.is_distinct_from(u.last_name),
                m.image_url.is_distinct_from(u.image_url),
            ),
        )
        .values(
            identifier=identifier,
            first_name=u.first_name,
            last_name=u.last_name,
            image_url=u.image_url,
            **_stamps(),
        )
    )


def erase_invitation_emails(
    connection: Connection, user_ids: Sequence[str], source: str | None
) -> None:
    """Blank the email address of the invitations these (deleted) users accepted."""
    statement = cached_statement(connection, "derived:erase_invitations", _build_erase)
    connection.execute(statement, {"p_ids": list(user_ids), **_stamp(source)})


def _build_erase(connection: Connection) -> Any:
    i = organization_invitations.c
    return (
        update(organization_invitations)
        .where(_among(connection, i.user_id), i.email_address.is_not(None))
        .values(email_address=None, **_stamps())
    )


def _stamps() -> dict[str, Any]:
    """``synced_at`` (and ``synced_by``, who wrote: the change feed's source) of a recompute."""
    stamps: dict[str, Any] = {"synced_at": bindparam("p_now")}
    if "synced_by" in organization_memberships.c:
        stamps["synced_by"] = bindparam("p_source")
    return stamps


def _stamp(source: str | None) -> dict[str, Any]:
    return {"p_now": datetime.now(UTC), "p_source": source}


class DerivedState:
    """What a unit of work keeps for the derived columns: the role book (read once, under the
    roles lock), the members' profiles read ahead, the roles lock's mode held, and the
    recomputes waiting for a batch's queued rows to be written."""

    def __init__(self) -> None:
        self.book: RoleBook | None = None
        self.profiles: dict[str, Profile | None] | None = None
        self.roles_mode: str | None = None
        self.role_keys: set[str] = set()
        self.user_ids: set[str] = set()
        self.same_profiles: set[str] = set()
        self.erased_users: set[str] = set()
        """Deleted users whose accepted invitations are still to lose their email address."""
        """Users written with the profile their stored row had: their memberships hold it."""

    def written(self, table: str, values: dict[str, Any]) -> None:
        """A row was written (or queued) with these values."""
        if table == users.name and self.profiles is not None and values["id"] in self.profiles:
            before, after = self.profiles[values["id"]], profile_of_values(values)
            self.profiles[values["id"]] = after
            if before is not None and before == after:
                self.same_profiles.add(values["id"])
            else:
                self.same_profiles.discard(values["id"])
        elif self.book is not None and table in _ROLE_TABLES:
            self.book.note(table, values)

    def deleted(self, table: str, row_id: str) -> None:
        if table == users.name and self.profiles is not None:
            self.profiles[row_id] = None
        elif self.book is not None and table in _ROLE_TABLES:
            self.book.forget(table, row_id)

    def forget(self) -> None:
        """A savepoint rolled back: read everything again as needed."""
        self.book = None
        self.profiles = None
        self.role_keys.clear()
        self.user_ids.clear()
        self.same_profiles.clear()
        self.erased_users.clear()


_ROLE_TABLES = (organization_roles.name, organization_permissions.name)


def profile_of_values(values: Mapping[str, Any]) -> Profile:
    return Profile(
        primary_email_address=values["primary_email_address"],
        username=values["username"],
        first_name=values["first_name"],
        last_name=values["last_name"],
        image_url=values["image_url"],
    )
