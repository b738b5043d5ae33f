"""The entity types a run reconciles, in the order it reads them: the inputs of a membership's
derived columns (its user's row) before the memberships, so each membership is written with
them fresh; memberships carry their organization; a user deletion removes memberships."""

from __future__ import annotations

from typing import Final

ORGANIZATIONS: Final = "organizations"
USERS: Final = "users"
MEMBERSHIPS: Final = "memberships"
PHASES: Final = (ORGANIZATIONS, USERS, MEMBERSHIPS)
