"""A stand-in for Clerk's Backend API on 127.0.0.1: Clerk-shaped, paginated answers from an
in-memory state, faults on demand (a 429 with ``Retry-After``, a 500), and a record of every
request so that tests can check paging, the auth header and the request rate.

Only what ``clerk-sync reconcile`` reads (see the reference, §6 BAPI):

* ``GET /v1/organizations`` and ``GET /v1/organization_memberships``: ``limit`` (1 to 500, default
  10), ``offset``, ``order_by`` (``[+-]created_at``, default ``-created_at``) → ``{data,
  total_count}``;
* ``GET /v1/users``: the same paging → a bare JSON array; ``GET /v1/users/count``;
* ``GET /v1/organizations/{id}``, ``GET /v1/users/{id}`` → the object, or 404;
* ``GET /v1/organizations/{id}/memberships?user_id=…`` → ``{data, total_count}``, or 404 when the
  organization does not exist;
* the organization model (clerk-org-model.md §9): ``GET /v1/organization_roles``,
  ``/v1/organization_permissions``, ``/v1/organization_invitations`` (``status`` filter) and
  ``/v1/organization_domains`` (``organization_id`` filter), paged as above, → ``{data,
  total_count}``; ``GET /v1/organization_roles/{id}``, ``/v1/organization_permissions/{id}`` and
  ``/v1/organizations/{id}/invitations/{id}`` → the object, or 404 (no domain by id exists).

Anything else is a 404; a request without ``Authorization: Bearer <secret key>`` is a 401.

``load_frozen`` holds a large instance that never changes (the ``reconcile`` benchmark's):
each object is kept as its JSON text, in listing order, and a page is those texts joined.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

SECRET_KEY = "sk_test_FAKEfakeFAKEfake0123456789"
Found = TypeVar("Found", Mapping[str, Any], str)
MAX_LIMIT = 500
DROP = 0
"""A fault status: close the connection without answering."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    at: float
    """``time.monotonic()`` when the request arrived."""
    status: int = 0

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None


@dataclass
class Fault:
    """Answer ``status`` (with ``headers``) instead, to ``times`` requests whose path equals
    ``path``, after letting ``skip`` of them through. Status 0 closes the connection without an
    answer (a connection error for the client)."""

    path: str
    status: int
    times: int = 1
    skip: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    """Only requests with these query parameters (e.g. ``{"offset": "2"}``)."""

    def matches(self, request: Request) -> bool:
        return request.path == self.path and all(
            request.param(name) == value for name, value in self.query.items()
        )


Hook = Callable[["FakeClerk", Request, Any], None]
"""Called with each request and the body about to be sent, before it is sent (so a change it
makes happens after the answer was computed, and before the client sees it)."""


@dataclass(frozen=True)
class RawJSON:
    """A body already encoded."""

    text: str


class _Frozen:
    """One collection of ``load_frozen``: JSON texts by id and in ``created_at`` order."""

    def __init__(self, items: Iterable[dict[str, Any]]) -> None:
        keyed = []
        self.by_id: dict[str, str] = {}
        for data in items:
            text = json.dumps(data, separators=(",", ":"))
            self.by_id[data["id"]] = text
            keyed.append(((data.get("created_at") or 0, data["id"]), text))
        keyed.sort(key=lambda pair: pair[0])
        self.ordered = [text for _, text in keyed]

    def page(self, request: Request) -> tuple[str, int]:
        limit, offset, newest_first = _paging(request)
        ordered = self.ordered[::-1] if newest_first else self.ordered
        return "[" + ",".join(ordered[offset : offset + limit]) + "]", len(ordered)


class FakeClerk:
    def __init__(self, secret_key: str = SECRET_KEY) -> None:
        self.secret_key = secret_key
        self.organizations: dict[str, dict[str, Any]] = {}
        self.memberships: dict[str, dict[str, Any]] = {}
        self.users: dict[str, dict[str, Any]] = {}
        self.roles: dict[str, dict[str, Any]] = {}
        self.permissions: dict[str, dict[str, Any]] = {}
        self.invitations: dict[str, dict[str, Any]] = {}
        self.domains: dict[str, dict[str, Any]] = {}
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.hooks: list[Hook] = []
        self.frozen: dict[str, _Frozen] = {}
        self.members_of: dict[tuple[str, str], list[str]] = {}
        """(organization id, user id) → the frozen memberships' JSON texts."""
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- state -------------------------------------------------------------------------------

    def load(
        self,
        organizations: Iterable[dict[str, Any]] = (),
        memberships: Iterable[dict[str, Any]] = (),
        users: Iterable[dict[str, Any]] = (),
        **model: Iterable[dict[str, Any]],
    ) -> None:
        """Replace the whole state (and forget requests, faults and hooks); ``model``: the
        ``roles``, ``permissions``, ``invitations`` and ``domains``."""
        with self.lock:
            self.organizations = {data["id"]: data for data in organizations}
            self.memberships = {data["id"]: data for data in memberships}
            self.users = {data["id"]: data for data in users}
            for name in ("roles", "permissions", "invitations", "domains"):
                setattr(self, name, {data["id"]: data for data in model.pop(name, ())})
            if model:
                raise TypeError(f"unknown collections: {sorted(model)}")
            self.frozen = {}
            self.members_of = {}
            self.requests.clear()
            self.faults.clear()
            self.hooks.clear()

    def load_frozen(
        self,
        organizations: Iterable[dict[str, Any]],
        memberships: Iterable[dict[str, Any]],
        users: Iterable[dict[str, Any]],
    ) -> None:
        """Replace the whole state with one that never changes, kept as JSON text (a large
        instance: the objects may be made one at a time, and none of them is kept as a dict)."""
        self.load()
        members_of: dict[tuple[str, str], list[str]] = {}

        def indexed(items: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
            for data in items:
                pair = (data["organization"]["id"], data["public_user_data"]["user_id"])
                members_of.setdefault(pair, []).append(json.dumps(data, separators=(",", ":")))
                yield data

        with self.lock:
            self.frozen = {
                "organizations": _Frozen(organizations),
                "memberships": _Frozen(indexed(memberships)),
                "users": _Frozen(users),
            }
            self.members_of = members_of

    def fail(self, path: str, status: int, **options: Any) -> Fault:
        fault = Fault(path, status, **options)
        with self.lock:
            self.faults.append(fault)
        return fault

    def requests_to(self, path: str) -> list[Request]:
        with self.lock:
            return [request for request in self.requests if request.path == path]

    # -- server ------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeClerk:
        clerk = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in separate writes

            def do_GET(self) -> None:
                clerk._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-clerk", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- answering ---------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        arrived = time.monotonic()
        parts = urlsplit(handler.path)
        request = Request(
            method="GET",
            path=unquote(parts.path),
            query=parse_qs(parts.query),
            headers={name.lower(): value for name, value in handler.headers.items()},
            at=arrived,
        )
        with self.lock:
            status, headers, body = self._answer(request)
            recorded = replace(request, status=status)
            self.requests.append(recorded)
            for hook in list(self.hooks):
                hook(self, recorded, body)
        if status == DROP:
            handler.close_connection = True
            return
        payload = body.text.encode() if isinstance(body, RawJSON) else json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)

    def _answer(self, request: Request) -> tuple[int, dict[str, str], Any]:
        if request.headers.get("authorization") != f"Bearer {self.secret_key}":
            return 401, {}, _errors("authentication_invalid", "Unauthorized request")
        for fault in self.faults:
            if fault.times > 0 and fault.matches(request):
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.times -= 1
                return fault.status, dict(fault.headers), _errors("fault", "injected fault")
        try:
            return 200, {}, self._route(request)
        except _HTTPError as error:
            return error.status, {}, _errors(error.code, error.code)

    def _route(self, request: Request) -> Any:
        segments = request.path.strip("/").split("/")
        if segments[:1] != ["v1"]:
            raise _HTTPError(404, "resource_not_found")
        if self.frozen:
            return self._route_frozen(segments[1:], request)
        match segments[1:]:
            case ["organizations"]:
                return _listing(self.organizations.values(), request)
            case ["organization_memberships"]:
                return _listing(self.memberships.values(), request)
            case ["users"]:
                return _listing(self.users.values(), request)["data"]
            case ["users", "count"]:
                return {"object": "total_count", "total_count": len(self.users)}
            case ["users", user_id]:
                return _found(self.users.get(user_id))
            case ["organizations", organization_id]:
                return _found(self.organizations.get(organization_id))
            case ["organizations", organization_id, "memberships"]:
                _found(self.organizations.get(organization_id))
                wanted = set(request.query.get("user_id", ())) | set(
                    request.query.get("user_id[]", ())
                )
                members = [
                    data
                    for data in self.memberships.values()
                    if data["organization"]["id"] == organization_id
                    and (not wanted or data["public_user_data"]["user_id"] in wanted)
                ]
                return _listing(members, request)
            case ["organization_roles" | "organization_permissions" as name]:
                return _listing(getattr(self, name.removeprefix("organization_")).values(), request)
            case ["organization_roles" | "organization_permissions" as name, entity_id]:
                return _found(getattr(self, name.removeprefix("organization_")).get(entity_id))
            case ["organization_invitations"]:
                wanted = request.query.get("status")
                invitations = self.invitations.values()
                return _listing((i for i in invitations if _among(i, "status", wanted)), request)
            case ["organizations", organization_id, "invitations", invitation_id]:
                _found(self.organizations.get(organization_id))
                found = self.invitations.get(invitation_id)
                return _found(
                    found if _among(found, "organization_id", [organization_id]) else None
                )
            case ["organization_domains"]:
                wanted = request.query.get("organization_id")
                domains = self.domains.values()
                return _listing(
                    (d for d in domains if _among(d, "organization_id", wanted)), request
                )
        raise _HTTPError(404, "resource_not_found")

    def _route_frozen(self, segments: list[str], request: Request) -> RawJSON:
        frozen = self.frozen
        match segments:
            case ["organizations"] | ["organization_memberships"]:
                name = "organizations" if segments[0] == "organizations" else "memberships"
                data, total = frozen[name].page(request)
                return RawJSON(f'{{"data":{data},"total_count":{total}}}')
            case ["users"]:
                return RawJSON(frozen["users"].page(request)[0])
            case ["organization_roles" | "organization_permissions"]:
                return RawJSON('{"data":[],"total_count":0}')  # none: Clerk's defaults aside
            case ["organization_invitations" | "organization_domains"]:
                return RawJSON('{"data":[],"total_count":0}')
            case ["users", "count"]:
                total = len(frozen["users"].ordered)
                return RawJSON(f'{{"object":"total_count","total_count":{total}}}')
            case ["users", user_id]:
                return RawJSON(_found(frozen["users"].by_id.get(user_id)))
            case ["organizations", organization_id]:
                return RawJSON(_found(frozen["organizations"].by_id.get(organization_id)))
            case ["organizations", organization_id, "memberships"]:
                _found(frozen["organizations"].by_id.get(organization_id))
                texts = [
                    text
                    for user_id in request.query.get("user_id", [])
                    for text in self.members_of.get((organization_id, user_id), [])
                ]
                return RawJSON(f'{{"data":[{",".join(texts)}],"total_count":{len(texts)}}}')
        raise _HTTPError(404, "resource_not_found")


class _HTTPError(Exception):
    def __init__(self, status: int, code: str) -> None:
        super().__init__(code)
        self.status = status
        self.code = code


def _errors(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"code": code, "message": message, "long_message": message}]}


def _found(data: Found | None) -> Found:
    if data is None:
        raise _HTTPError(404, "resource_not_found")
    return data


def _among(data: Mapping[str, Any] | None, name: str, wanted: list[str] | None) -> bool:
    """Whether ``data[name]`` is one of ``wanted`` (a filter not given: anything)."""
    return data is not None and (wanted is None or data.get(name) in wanted)


def _paging(request: Request) -> tuple[int, int, bool]:
    """``limit``, ``offset`` and whether newest first (``order_by``, by ``created_at``)."""
    try:
        limit = int(request.param("limit") or 10)
        offset = int(request.param("offset") or 0)
    except ValueError:
        raise _HTTPError(422, "form_param_format_invalid") from None
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise _HTTPError(422, "form_param_value_invalid")
    order = request.param("order_by") or "-created_at"
    if order.lstrip("+-") != "created_at":
        raise _HTTPError(422, "form_param_value_invalid")
    return limit, offset, order.startswith("-")


def _listing(items: Iterable[dict[str, Any]], request: Request) -> dict[str, Any]:
    limit, offset, newest_first = _paging(request)
    ordered = sorted(
        items, key=lambda data: (data.get("created_at") or 0, data["id"]), reverse=newest_first
    )
    return {"data": ordered[offset : offset + limit], "total_count": len(ordered)}
