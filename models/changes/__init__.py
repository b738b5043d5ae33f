"""The change feed (docs/changes.md): ``sync_changes``, one row per change to a synced table,
written by triggers in the change's own transaction. What applications use:

- ``changes_after(connection, after, limit)``: the changes after an id, oldest first;
- ``read_position`` / ``save_position``: a consumer's position, saved in its own transaction;
- ``wait_for_changes``: block until something may have changed (PostgreSQL ``LISTEN``).

No Celery here: the optional fan-out to an application's task is ``workers.change_fanout``.
"""

from models.changes.listening import ChangeListener
from models.changes.reading import (
    OPERATIONS,
    Change,
    FeedSummary,
    changes_after,
    horizon,
    newest_change_id,
    purge_changes,
    read_position,
    save_position,
    summarise_feed,
)
from models.changes.sources import REBUILD, RECONCILE

__all__ = [
    "OPERATIONS",
    "REBUILD",
    "RECONCILE",
    "Change",
    "ChangeListener",
    "FeedSummary",
    "changes_after",
    "horizon",
    "newest_change_id",
    "purge_changes",
    "read_position",
    "save_position",
    "summarise_feed",
]
