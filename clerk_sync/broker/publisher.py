"""Hands verified events to the broker as Celery task messages, with their ledger entry."""

from __future__ import annotations

import time

from celery import Celery

from clerk_sync.broker.confirmed import ConfirmedPublishing
from clerk_sync.broker.messages import RedisTaskMessages, ThreadConnections
from clerk_sync.core.ledger_scripts import Acceptance
from clerk_sync.core.message_auth import MessageAuthenticator
from clerk_sync.core.queue import (
    APPLY_EVENT_TASK,
    BROKER_ERRORS,
    BrokerUnavailableError,
    Ledger,
    QueuedEvent,
    broker_configuration,
)
from clerk_sync.core.settings import Settings


class Publisher:
    """Hands verified events to the broker as Celery task messages, together with their ledger
    entry, so that an acknowledged event is never only in a worker's memory.

    On a Redis broker one transaction, one round trip, writes the ledger entry and pushes the
    message (both or neither); other brokers (the filesystem broker of ``dev``) go through
    Celery's ``send_task``.

    Every message (and ledger entry) it makes carries the MAC of its arguments, signed with
    ``CLERK_SYNC_MESSAGE_SECRET`` (``clerk_sync.core.message_auth``): workers apply nothing
    else. It signs what it is given, so its callers vouch for their events: the ingress
    (Svix's signature checked), ``events replay`` (the inbox), a worker's retries (a message it
    verified) and the sweeper (a ledger entry whose MAC it verified).
    """

    def __init__(self, settings: Settings, celery_app: Celery | None = None) -> None:
        settings.require_message_secrets()
        self._settings = settings
        self.authenticator = MessageAuthenticator(settings.message_secrets)
        if celery_app is None:
            celery_app = Celery("clerk_sync_ingress", set_as_current=False)
            celery_app.conf.update(broker_configuration(settings))
        self._celery = celery_app
        self.ledger = Ledger.for_settings(settings)
        self._messages = (
            RedisTaskMessages(celery_app, settings.queue_name) if self.ledger is not None else None
        )
        self._connections = ThreadConnections(settings) if self.ledger is not None else None
        # RabbitMQ: each message confirmed by the broker, no ledger (clerk_sync.core.rabbitmq).
        self._confirmed = (
            ConfirmedPublishing(settings, celery_app) if settings.uses_amqp_broker else None
        )

    @property
    def confirms(self) -> bool:
        """Whether each message is confirmed by the broker (RabbitMQ) rather than kept in the
        ledger (Redis)."""
        return self._confirmed is not None

    def publish(self, event: QueuedEvent, *, replay: bool = False) -> Acceptance:
        """Return once the broker holds the message and the ledger the event (or, on Redis,
        holds them already: ``Acceptance``), else raise ``BrokerUnavailableError``. A
        ``replay`` is queued even if the svix id finished recently."""
        due_at = time.time() + self._settings.ledger_redeliver_after_seconds
        event = self.sign(event)
        try:
            if self.ledger is None or self._messages is None or self._connections is None:
                self._send_task(event)
                return Acceptance.ACCEPTED
            return self.ledger.accept(
                event,
                due_at,
                self._messages.build(event),
                self._connections.run,
                replay=replay,
                replicated=self._connections.waits_for_a_replica,
            )
        except BROKER_ERRORS as error:
            raise BrokerUnavailableError(type(error).__name__) from error

    def send(
        self,
        event: QueuedEvent,
        *,
        task_id: str | None = None,
        retries: int = 0,
        countdown: float | None = None,
    ) -> None:
        """Publish the task message alone: the sweeper re-sends events already in the ledger,
        and a worker retrying an event sends it again (same ``task_id``, ``retries`` counted,
        due after ``countdown`` seconds). Broker errors propagate as they are."""
        event = self.sign(event)
        if self.ledger is None or self._messages is None:
            self._send_task(event, task_id=task_id, retries=retries, countdown=countdown)
            return
        if retries or countdown is not None:
            key, message = self._messages.build_with_celery(
                event, task_id=task_id, retries=retries, countdown=countdown
            )
        else:
            key, message = self._messages.build(event, task_id)
        self.ledger.client.lpush(key, message)

    def sign(self, event: QueuedEvent) -> QueuedEvent:
        """``event`` with the MAC of its arguments under the signing secret."""
        return event.signed(
            self.authenticator.mac(event.svix_id, event.payload, event.received_at_ms)
        )

    def _send_task(
        self,
        event: QueuedEvent,
        *,
        task_id: str | None = None,
        retries: int = 0,
        countdown: float | None = None,
    ) -> None:
        if self._confirmed is not None:
            self._confirmed.send(event, task_id=task_id, retries=retries, countdown=countdown)
            return
        self._celery.send_task(
            APPLY_EVENT_TASK,
            args=event.task_args(),
            queue=self._settings.queue_name,
            task_id=task_id,
            retries=retries,
            countdown=countdown,
            argsrepr=event.argsrepr(),
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
        )

    def ping(self) -> bool:
        """Whether the broker answers now (for ``/readyz``)."""
        try:
            if self.ledger is not None:
                return self.ledger.ping()
            if self._confirmed is not None:
                self._confirmed.ping()
                return True
            with self._celery.connection_for_write() as connection:
                connection.ensure_connection(
                    max_retries=1, timeout=self._settings.broker_publish_timeout_seconds
                )
        except BROKER_ERRORS:
            return False
        return True
