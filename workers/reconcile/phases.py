"""The entity types a run reconciles, in the order it reads them, and the Backend API listing of
each. The inputs of a membership's derived columns come first (permissions, then roles, whose
permission sets give a member's ``permissions``; users, whose rows give a member's profile), so
each membership is written with them fresh; memberships carry their organization; a user
deletion removes memberships; invitations and domains belong to organizations."""

from __future__ import annotations

from typing import Final

PERMISSIONS: Final = "permissions"
ROLES: Final = "roles"
ORGANIZATIONS: Final = "organizations"
USERS: Final = "users"
MEMBERSHIPS: Final = "memberships"
INVITATIONS: Final = "invitations"
DOMAINS: Final = "domains"
PHASES: Final = (PERMISSIONS, ROLES, ORGANIZATIONS, USERS, MEMBERSHIPS, INVITATIONS, DOMAINS)

LISTINGS: Final = {
    PERMISSIONS: "/v1/organization_permissions",
    ROLES: "/v1/organization_roles",
    ORGANIZATIONS: "/v1/organizations",
    USERS: "/v1/users",
    MEMBERSHIPS: "/v1/organization_memberships",
    INVITATIONS: "/v1/organization_invitations",
    DOMAINS: "/v1/organization_domains",
}
"""Instance-wide listings (``limit`` ≤ 500, ``offset``): ``{data, total_count}``, but a bare
array for users."""
