"""The entity types a run reconciles, in the order it reads them: memberships carry their
organization, and a user deletion removes memberships."""

from __future__ import annotations

from typing import Final

ORGANIZATIONS: Final = "organizations"
MEMBERSHIPS: Final = "memberships"
USERS: Final = "users"
PHASES: Final = (ORGANIZATIONS, MEMBERSHIPS, USERS)
