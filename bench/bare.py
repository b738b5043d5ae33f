"""The ingress benchmark's baseline: a bare Flask endpoint behind ``clerk-sync ingress``.

``python -m bench.bare --bind HOST:PORT --workers 2 --threads 4`` runs the real ``clerk-sync
ingress`` command, with the same gunicorn configuration, logging and process set-up, but with
the Flask app replaced by one whose ``POST /webhook/clerk`` reads the body and answers ``204``:
no signature check, no broker. Whatever gunicorn settings the ingress command ships with, the
baseline gets them too.

``--floor`` serves a reference instead: the bare endpoint plus one Redis round trip (``LPUSH``
of the body, answered ``202``), the least an ingress that enqueues before it answers must do.
"""

from __future__ import annotations

import sys
from typing import Any

import redis
from flask import Flask, Response, request

BARE_STATUS = 204
FLOOR_STATUS = 202
FLOOR_KEY = "bench-ingress-floor"
"""The Redis list the floor endpoint pushes bodies to (emptied with the benchmark's Redis)."""


def create_bare_app(*_args: object, **_kwargs: object) -> Flask:
    app = Flask("clerk_sync_bench.bare")

    @app.post("/webhook/clerk")
    def receive_webhook() -> Response:
        request.get_data(cache=False)
        return Response(status=BARE_STATUS)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok", mimetype="text/plain")

    return app


def create_floor_app(settings: Any, *_args: object, **_kwargs: object) -> Flask:
    app = create_bare_app()
    clients: list[redis.Redis[bytes]] = []

    def client() -> redis.Redis[bytes]:
        """One client per gunicorn process, made on its first request (after the fork)."""
        if not clients:
            clients.append(redis.Redis.from_url(settings.broker_url))
        return clients[0]

    def receive_webhook() -> Response:
        client().lpush(FLOOR_KEY, request.get_data(cache=False))
        return Response(status=FLOOR_STATUS)

    app.view_functions["receive_webhook"] = receive_webhook
    return app


def main(argv: list[str]) -> None:
    import ingress
    import ingress.app

    factory = create_floor_app if "--floor" in argv else create_bare_app
    argv = [argument for argument in argv if argument != "--floor"]
    # ``clerk-sync ingress`` imports ``create_app`` from ``ingress`` when it runs.
    ingress.create_app = factory
    ingress.app.create_app = factory
    from clerk_sync.cli import main as clerk_sync

    clerk_sync(["ingress", *argv], prog_name="clerk-sync")


if __name__ == "__main__":
    main(sys.argv[1:])
