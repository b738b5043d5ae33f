"""The private names of celery, kombu, billiard and redis-py appear in clerk-sync's code only
inside ``clerk_sync.broker``, and each one used there is listed in its README with what it buys
and the test that catches an upgrade changing it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

PRIVATE_NAMES = (
    "_brpop_read",
    "_create_client",
    "_q_for_pri",
    "_get_message_priority",
    "_deliver",
    "_delivered",
    "_dirty",
    "_raw",
    "_decode",
    "_message",
    "_state",
    "_eta_timer_entry",
    "_flush_outqueue",
    "_sock",
    "_remove_from_indices",
)
"""Every underscore name of those libraries clerk-sync has used (clerk_sync/broker/README.md)."""

INTEGRATION = ROOT / "clerk_sync" / "broker"
CODE = ("clerk_sync", "ingress", "workers", "models", "bench")


def code_outside_the_integration_package() -> list[Path]:
    return [
        path
        for top in CODE
        for path in sorted((ROOT / top).rglob("*.py"))
        if INTEGRATION not in path.parents
    ]


def uses(name: str, text: str) -> bool:
    """``name`` as an attribute (``x._name``) or an imported or defined name, not as part of a
    longer identifier."""
    return re.search(rf"(?<![\w])(\.|def |import ){re.escape(name)}\b", text) is not None


@pytest.mark.parametrize("name", PRIVATE_NAMES)
def test_no_private_name_outside_the_integration_package(name: str) -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in code_outside_the_integration_package()
        if uses(name, path.read_text())
    ]
    assert offenders == [], f"{name} used outside clerk_sync/broker"


def test_each_private_name_used_in_the_package_is_in_its_readme() -> None:
    readme = (INTEGRATION / "README.md").read_text()
    for path in sorted(INTEGRATION.glob("*.py")):
        text = path.read_text()
        for name in PRIVATE_NAMES:
            if uses(name, text):
                assert f"{name}`" in readme, f"{name} ({path.name}) is not in the README"


def test_the_package_is_listed_module_by_module() -> None:
    readme = (INTEGRATION / "README.md").read_text()
    for path in sorted(INTEGRATION.glob("*.py")):
        if path.name != "__init__.py":
            assert f"`{path.name}`" in readme, path.name
