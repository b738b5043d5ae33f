"""The ingress benchmark's baseline: a bare Flask endpoint behind ``clerk-sync ingress``.

``python -m bench.bare --bind HOST:PORT --workers 2 --threads 4`` runs the real ``clerk-sync
ingress`` command, with the same gunicorn configuration, logging and process set-up, but with
the Flask app replaced by one whose ``POST /webhook/clerk`` reads the body and answers ``204``:
no signature check, no broker. Whatever gunicorn settings the ingress command ships with, the
baseline gets them too.
"""

from __future__ import annotations

import sys

from flask import Flask, Response, request

BARE_STATUS = 204


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


def main(argv: list[str]) -> None:
    import ingress
    import ingress.app

    # ``clerk-sync ingress`` imports ``create_app`` from ``ingress`` when it runs.
    ingress.create_app = create_bare_app
    ingress.app.create_app = create_bare_app
    from clerk_sync.cli import main as clerk_sync

    clerk_sync(["ingress", *argv], prog_name="clerk-sync")


if __name__ == "__main__":
    main(sys.argv[1:])
