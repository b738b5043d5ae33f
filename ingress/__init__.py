"""HTTP ingress: verifies Svix signatures and enqueues raw events. Never touches the database."""

from ingress.app import create_app

__all__ = ["create_app"]
