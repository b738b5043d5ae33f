"""A Clerk instance for the ``reconcile`` benchmark, served by the tests' fake Backend API
(``tests.clerk_api``, real response shapes) in a process of its own, so that encoding its pages
takes nothing from the process being measured.

``python -m bench.fake_clerk --users N --organizations N --memberships N`` prints ``ready <url>``
and serves until SIGTERM. The instance is made one object at a time (``world``) and kept as
JSON text (``FakeClerk.load_frozen``); the same arguments always make the same instance.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tests.clerk_api import FakeClerk
from tests.factories import BASE_TIME_MS, membership_data, organization_data, user_data

STRIDE = 7919
"""Membership ``n`` is in organization ``n mod organizations`` and of user ``n * STRIDE mod
users`` (a prime that does not divide the user count: each (organization, user) pair once, as
long as memberships <= organizations * users)."""


@dataclass(frozen=True)
class Size:
    users: int
    organizations: int
    memberships: int

    @property
    def rows(self) -> int:
        return self.users + self.organizations + self.memberships

    def pages(self, page_size: int = 500) -> int:
        """Backend API requests a backfill makes: every listing's pages (plus the empty page
        that ends one whose last page is full) and the user count."""

        def listing(count: int) -> int:
            return count // page_size + 1

        return listing(self.users) + listing(self.organizations) + listing(self.memberships) + 1


def organization(number: int) -> dict[str, Any]:
    return organization_data(
        f"org_bench{number:08d}",
        name=f"Organization {number}",
        slug=f"organization-{number}",
        created_at=BASE_TIME_MS + number,
        updated_at=BASE_TIME_MS + number,
        public_metadata={"plan": "pro", "seats": number % 50},
    )


def user(number: int) -> dict[str, Any]:
    return user_data(
        f"user_bench{number:08d}",
        first_name=f"First{number}",
        last_name=f"Last{number}",
        created_at=BASE_TIME_MS + number,
    )


def world(size: Size) -> tuple[Iterator[dict[str, Any]], ...]:
    """The organizations, memberships and users, made one at a time."""
    if size.users % STRIDE == 0:
        raise ValueError(f"the user count must not be a multiple of {STRIDE}")

    def memberships() -> Iterator[dict[str, Any]]:
        for number in range(size.memberships):
            user_number = number * STRIDE % size.users
            yield membership_data(
                organization(number % size.organizations),
                membership_id=f"orgmem_bench{number:09d}",
                user_id=f"user_bench{user_number:08d}",
                role="org:admin" if number % 10 == 0 else "org:member",
                created_at=BASE_TIME_MS + 3_600_000 + number,
                first_name=f"First{user_number}",
                last_name=f"Last{user_number}",
                identifier=f"user{user_number}@example.com",
            )

    return (
        (organization(n) for n in range(size.organizations)),
        memberships(),
        (user(n) for n in range(size.users)),
    )


def serve(size: Size) -> None:
    clerk = FakeClerk()
    clerk.load_frozen(*world(size))
    clerk.start()
    print(f"ready {clerk.url}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stopped.set())
    stopped.wait()
    clerk.stop()


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_clerk")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--organizations", type=int, required=True)
    parser.add_argument("--memberships", type=int, required=True)
    arguments = parser.parse_args(argv)
    serve(Size(arguments.users, arguments.organizations, arguments.memberships))


if __name__ == "__main__":
    main(sys.argv[1:])
