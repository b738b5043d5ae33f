"""What stops a reconcile run; the command and the schedule catch ``ReconcileError``."""

from __future__ import annotations


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
