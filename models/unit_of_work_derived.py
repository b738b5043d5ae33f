"""The unit of work's part in the derived membership columns (``models.derived``): the roles
lock, the role book and the members' profiles it reads once per transaction, and the
recomputes it runs when a role, permission or user changes (at once, or, while writing
together, after the queued rows are written: never around the write queue's order)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from models.derived import (
    DerivedState,
    Profile,
    RoleBook,
    erase_invitation_emails,
    profiles_of,
    refresh_permissions,
    refresh_profiles,
)
from models.locks import EXCLUSIVE, lock_roles
from models.tables import (
    organization_invitations,
    organization_memberships,
    organization_permissions,
    organization_roles,
    users,
)

if TYPE_CHECKING:
    from models.write_queue import WriteQueue


class DerivedColumns:
    """Mixed into ``models.unit_of_work.UnitOfWork``, whose attributes it uses."""

    connection: Connection
    source: str | None
    _alone: bool
    _derived: DerivedState
    _versions: dict[str, dict[str, tuple[int, ...]]]
    _queue: WriteQueue | None

    def _write_queued(self, table: str) -> None:
        raise NotImplementedError

    def lock_roles(self, mode: str) -> None:
        """The roles lock (``models.locks.lock_roles``), once per transaction and mode."""
        derived = self._derived
        if not self._alone and derived.roles_mode not in (mode, EXCLUSIVE):
            derived.roles_mode = lock_roles(self.connection, mode, derived.roles_mode)

    def read_profiles(self, user_ids: Sequence[str]) -> None:
        """Read the ``users`` rows of these members at once (their versions and profiles, which
        the membership upserts derive columns from); call it holding their locks."""
        found = profiles_of(self.connection, user_ids)
        self._derived.profiles = {key: profile for key, (_, profile) in found.items()}
        versions = self._versions.setdefault(users.name, {})
        versions.update((key, version) for key, (version, _) in found.items() if version)

    def role_book(self) -> RoleBook:
        """The stored roles and permissions, read once per transaction (hold the roles lock)."""
        derived = self._derived
        if derived.book is None:
            self._write_queued(organization_roles.name)
            self._write_queued(organization_permissions.name)
            derived.book = RoleBook.read(self.connection)
            for table, versions in derived.book.versions.items():
                self._versions[table] = dict(versions)
        return derived.book

    def user_profile(self, user_id: str) -> Profile | None:
        """What the member's ``users`` row says (None: no row); hold the user's lock."""
        known = self._derived.profiles
        if known is not None and user_id in known:
            return known[user_id]
        self._write_queued(users.name)
        return profiles_of(self.connection, [user_id])[user_id][1]

    def refresh_permissions(self, role_keys: Iterable[str]) -> None:
        """Recompute the ``permissions`` of the memberships holding these role keys: now, or,
        while writing together, once the queued rows are written."""
        self._derived.role_keys.update(role_keys)
        if self._queue is None:
            self._refresh()

    def refresh_profiles(self, user_id: str) -> None:
        """Recompute the profile columns of the user's memberships from its ``users`` row: now,
        or, while writing together, once the queued rows are written."""
        if user_id in self._derived.same_profiles:
            return  # its stored row said the same: its memberships hold it already
        self._derived.user_ids.add(user_id)
        if self._queue is None:
            self._refresh()

    def erase_invitation_emails(self, user_id: str) -> None:
        """Blank the email address of the invitations this (deleted) user accepted: now, or,
        while writing together, once the queued rows are written."""
        self._derived.erased_users.add(user_id)
        if self._queue is None:
            self._refresh()

    def _refresh(self) -> None:
        derived = self._derived
        if not (derived.role_keys or derived.user_ids or derived.erased_users):
            return
        for table in (users.name, organization_memberships.name, organization_invitations.name):
            self._write_queued(table)
        if derived.erased_users:
            erase_invitation_emails(self.connection, sorted(derived.erased_users), self.source)
            derived.erased_users.clear()
        if derived.role_keys:
            book = self.role_book()
            for key in sorted(derived.role_keys):
                refresh_permissions(self.connection, key, book.permissions_of(key), self.source)
            derived.role_keys.clear()
        if derived.user_ids:
            refresh_profiles(self.connection, sorted(derived.user_ids), self.source)
            derived.user_ids.clear()
