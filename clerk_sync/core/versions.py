"""The versions of the libraries that ``clerk_sync.broker`` extends beyond their public APIs.

A new minor release of celery, kombu, billiard, redis-py or hiredis can change an internal the
integration relies on (kombu's unacked record, how its Redis transport reads a queue) and lose
messages instead of failing. The worker and the ingress therefore start only with the minor
versions the tests ran against (``TESTED``, the same as the ``~=`` ranges in ``pyproject.toml``,
which a test holds equal); ``scripts/upgrade-canary`` tries newer ones with
``CLERK_SYNC_ALLOW_UNTESTED_VERSIONS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Final

TESTED: Final[Mapping[str, str]] = {
    "celery": "5.7",
    "kombu": "5.7",
    "billiard": "4.3",
    "redis": "8.2",
    "hiredis": "3.5",
}
"""Distribution name: the ``major.minor`` release the tests ran against."""


class UntestedVersionError(RuntimeError):
    """An installed library is outside the tested range; the message is one line."""


def untested_versions(installed: Callable[[str], str] = version) -> list[str]:
    """``name version (tested: x.y.*)`` for each library whose minor version is not the tested
    one (or which is missing)."""
    found = []
    for name, tested in TESTED.items():
        try:
            present = installed(name)
        except PackageNotFoundError:
            present = "missing"
        if ".".join(present.split(".")[:2]) != tested:
            found.append(f"{name} {present} (tested: {tested}.*)")
    return found


def check_versions(*, allow_untested: bool, installed: Callable[[str], str] = version) -> list[str]:
    """Raise ``UntestedVersionError`` when a library is outside the tested range, unless
    ``allow_untested``; returns what is untested (for a warning when allowed)."""
    untested = untested_versions(installed)
    if untested and not allow_untested:
        raise UntestedVersionError(
            f"untested library versions: {', '.join(untested)}; clerk_sync.broker relies on "
            "their internals: install with `pip install -c constraints.txt`, or set "
            "CLERK_SYNC_ALLOW_UNTESTED_VERSIONS=1 to start anyway (scripts/upgrade-canary)"
        )
    return untested
