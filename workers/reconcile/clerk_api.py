"""The few Clerk Backend API reads reconciliation needs, over httpx.

Requests are spaced to at most ``max_requests_per_second`` (default 5: half of the Backend
API's development-instance limit of 100 requests per 10 s, and 5 % of production's 1000 per
10 s; the limit is per instance and shared with the application's own Backend API calls). A 429
is retried after its ``Retry-After``; 5xx answers and connection errors are retried with
exponential backoff and jitter (tenacity).
"""

from __future__ import annotations

import email.utils
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import quote

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from workers.reconcile.errors import ClerkAPIError, ClerkUnavailableError
from workers.reconcile.phases import DOMAINS, LISTINGS, USERS

log = logging.getLogger("clerk_sync.reconcile")

PAGE_SIZE: Final = 500
"""The Backend API's largest ``limit``."""

DEFAULT_MAX_REQUESTS_PER_SECOND: Final = 5.0


class _RetryableResponseError(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


class RateLimiter:
    """Spaces calls at least ``1 / per_second`` apart (a token bucket of one token), and
    holds every call back while Clerk has asked us to wait. Thread-safe: the listing's
    read-ahead threads share one limiter."""

    def __init__(
        self,
        per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        self.interval = 1.0 / per_second
        self._clock = clock
        self._sleep = sleep
        self._next = clock()
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds: delay-seconds or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    now = time.time() if now is None else now
    return max(0.0, moment.timestamp() - now)


@dataclass(frozen=True)
class Page:
    items: list[Mapping[str, Any]]
    total: int | None


class ClerkAPI:
    """The few Backend API reads reconciliation needs, rate-limited and retried.

    The secret key is only ever put in the ``Authorization`` header; errors and logs name the
    method, path and status, never headers.
    """

    def __init__(
        self,
        base_url: str,
        secret_key: str,
        *,
        max_requests_per_second: float = DEFAULT_MAX_REQUESTS_PER_SECOND,
        attempts: int = 8,
        backoff_seconds: float = 1.0,
        backoff_max_seconds: float = 60.0,
        max_retry_after_seconds: float = 300.0,
        timeout_seconds: float = 30.0,
    ) -> None:
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {secret_key}",
                "Accept": "application/json",
                "User-Agent": "clerk-sync (reconcile)",
            },
            timeout=timeout_seconds,
        )
        self.limiter = RateLimiter(max_requests_per_second)
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.max_retry_after_seconds = max_retry_after_seconds
        self.requests = 0
        """Requests sent, retries included."""
        self._count_lock = threading.Lock()

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _error: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- listings ----------------------------------------------------------------------------

    def list_page(self, phase: str, offset: int, limit: int) -> Page:
        """One page of a complete listing, oldest first (``order_by=+created_at``: an object
        created while we page lands at the end instead of shifting the pages still to come)."""
        params: dict[str, Any] = {"limit": limit, "offset": offset, "order_by": "+created_at"}
        if phase == USERS:
            body = self.get("/v1/users", params)
            if not isinstance(body, list):
                raise ClerkAPIError("GET /v1/users: expected a JSON array")
            return Page(items=_objects(body, "/v1/users"), total=None)
        path = LISTINGS[phase]
        body = self.get(path, params)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise ClerkAPIError(f"GET {path}: expected an object with a 'data' list")
        total = body.get("total_count")
        return Page(
            items=_objects(body["data"], path),
            total=total if isinstance(total, int) and not isinstance(total, bool) else None,
        )

    def count_users(self) -> int | None:
        body = self.get("/v1/users/count")
        total = body.get("total_count") if isinstance(body, dict) else None
        return total if isinstance(total, int) and not isinstance(total, bool) else None

    # -- lookups (None: Clerk says it does not exist) ----------------------------------------

    def get_organization(self, organization_id: str) -> Mapping[str, Any] | None:
        return _object_or_none(
            self.get(f"/v1/organizations/{quote(organization_id, safe='')}", missing_ok=True)
        )

    def get_user(self, user_id: str) -> Mapping[str, Any] | None:
        return _object_or_none(self.get(f"/v1/users/{quote(user_id, safe='')}", missing_ok=True))

    def get_role(self, role_id: str) -> Mapping[str, Any] | None:
        path = f"/v1/organization_roles/{quote(role_id, safe='')}"
        return _object_or_none(self.get(path, missing_ok=True))

    def get_permission(self, permission_id: str) -> Mapping[str, Any] | None:
        path = f"/v1/organization_permissions/{quote(permission_id, safe='')}"
        return _object_or_none(self.get(path, missing_ok=True))

    def get_invitation(self, organization_id: str, invitation_id: str) -> Mapping[str, Any] | None:
        """None if the invitation, or its organization, is gone."""
        organization, invitation = quote(organization_id, safe=""), quote(invitation_id, safe="")
        path = f"/v1/organizations/{organization}/invitations/{invitation}"
        return _object_or_none(self.get(path, missing_ok=True))

    def domains_of(self, organization_id: str) -> list[Mapping[str, Any]]:
        """The organization's domains (no Backend API call reads one domain by id)."""
        path = LISTINGS[DOMAINS]
        params = {"organization_id": organization_id, "limit": PAGE_SIZE}
        body = self.get(path, params)
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise ClerkAPIError(f"GET {path}: expected an object with a 'data' list")
        return _objects(body["data"], path)

    def memberships_of(self, organization_id: str, user_id: str) -> list[Mapping[str, Any]] | None:
        """The user's memberships in the organization (none or one); None if the organization
        is gone."""
        path = f"/v1/organizations/{quote(organization_id, safe='')}/memberships"
        body = self.get(path, {"user_id": user_id, "limit": 100}, missing_ok=True)
        if body is None:
            return None
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise ClerkAPIError(f"GET {path}: expected an object with a 'data' list")
        return _objects(body["data"], path)

    # -- transport ---------------------------------------------------------------------------

    def get(
        self, path: str, params: Mapping[str, Any] | None = None, *, missing_ok: bool = False
    ) -> Any:
        """GET ``path`` and decode its JSON; with ``missing_ok``, a 404 gives None."""
        retrying = Retrying(
            retry=retry_if_exception_type((_RetryableResponseError, httpx.TransportError)),
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            before_sleep=self._before_retry(path),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    return self._get_once(path, params, missing_ok)
        except _RetryableResponseError as error:
            raise ClerkUnavailableError(
                f"GET {path}: {error} after {self.attempts} attempts"
            ) from None
        except httpx.TransportError as error:
            raise ClerkUnavailableError(
                f"GET {path}: {type(error).__name__} after {self.attempts} attempts"
            ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _get_once(self, path: str, params: Mapping[str, Any] | None, missing_ok: bool) -> Any:
        self.limiter.wait()
        with self._count_lock:
            self.requests += 1
        response = self._client.get(path, params=params)
        status = response.status_code
        if status == 404 and missing_ok:
            return None
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if retry_after is not None:
                retry_after = min(retry_after, self.max_retry_after_seconds)
                self.limiter.pause(retry_after)
            raise _RetryableResponseError(status, retry_after)
        if status != 200:
            raise ClerkAPIError(f"GET {path}: HTTP {status}{_clerk_error(response)}")
        try:
            return response.json()
        except ValueError:
            raise ClerkAPIError(f"GET {path}: the answer is not JSON") from None

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        if isinstance(error, _RetryableResponseError) and error.retry_after is not None:
            return error.retry_after
        backoff = wait_random_exponential(
            multiplier=self.backoff_seconds, max=self.backoff_max_seconds
        )
        return float(backoff(state))

    def _before_retry(self, path: str) -> Callable[[RetryCallState], None]:
        def note(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning(
                "Clerk API GET %s failed (%s); retrying in %.1fs (attempt %d of %d)",
                path,
                type(error).__name__ if isinstance(error, httpx.TransportError) else error,
                wait,
                state.attempt_number,
                self.attempts,
            )

        return note


def _objects(items: Sequence[Any], path: str) -> list[Mapping[str, Any]]:
    objects: list[Mapping[str, Any]] = [item for item in items if isinstance(item, dict)]
    if len(objects) != len(items) or any(not id_of(item) for item in objects):
        raise ClerkAPIError(f"GET {path}: a listed object is not an object with a string 'id'")
    return objects


def _object_or_none(body: Any) -> Mapping[str, Any] | None:
    if body is None:
        return None
    if not isinstance(body, dict) or not id_of(body):
        raise ClerkAPIError("lookup: expected an object with a string 'id'")
    return body


def id_of(item: Mapping[str, Any]) -> str:
    """The object's ``id``, or "" if it has no string one."""
    value = item.get("id")
    return value if isinstance(value, str) else ""


def _clerk_error(response: httpx.Response) -> str:
    """Clerk's own error code and message (``{"errors": [{"code", "message"}]}``), if any."""
    try:
        errors = response.json().get("errors")
        first = errors[0]
        return f" ({first.get('code')}: {first.get('message')})"
    except (ValueError, AttributeError, IndexError, KeyError, TypeError):
        return ""
