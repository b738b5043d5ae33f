"""The prefork pool of a worker: Celery's, with a warm shutdown that neither hangs nor idles.

A SIGTERM (a deploy, ``docker stop``) must end in the time it takes to finish the batches that
run. With batches of a hundred Clerk payloads (about 120 KB pickled, more than the 64 KB a pipe
holds) and "fcfs" scheduling (``workers.batches.pool_optimization``), the next batch is often
still being written to a busy pool process's pipe, or is written but not yet started, when the
signal comes. Celery's prefork pool mishandles both at shutdown (Celery 5.7, billiard 4.3):

- It closes the pool before it stops the consumer, whose last step (``AsynPool.flush``)
  finishes writing tasks in progress only while the pool still runs. A half-written batch
  stays half-written; its process takes the stop sentinel for the rest of the batch and waits
  for bytes that never come, and the worker waits for that process forever.
- It gives up the tasks written but not started (their messages go back on the queue), but the
  process still runs the one in its pipe, and billiard makes it wait 30 s for its result to be
  read before it exits. The main process stops reading results once it waits for no task.

``TaskPool`` closes the pool only when the consumer has stopped, and ``ResultHandler`` reads
results until every process has exited. Nothing else changes: ``-P prefork`` (the default)
means this pool (``POOL``, Celery's ``worker_pool`` setting).
"""

from __future__ import annotations

from typing import Final

from billiard.pool import TERMINATE, WorkersJoined
from celery.concurrency import asynpool, prefork
from celery.concurrency.asynpool import iterate_file_descriptors_safely

POOL: Final = "clerk_sync.broker.pool:TaskPool"
"""What ``worker_pool`` names."""


class ResultHandler(asynpool.ResultHandler):  # type: ignore[misc]
    def on_stop_not_started(self) -> None:
        """Celery's reading of results at shutdown, then on until every process has exited, so
        that a process finishing a task Celery gave up exits as soon as it is done."""
        super().on_stop_not_started()
        outqueues = set(self.fileno_to_outq)
        while outqueues and self._state != TERMINATE:
            for fd in tuple(outqueues):
                iterate_file_descriptors_safely(
                    [fd],
                    self.fileno_to_outq,
                    self._flush_outqueue,
                    outqueues.discard,
                    self.fileno_to_outq,
                    self.on_state_change,
                )
            try:
                self.join_exited_workers(shutdown=True)
            except WorkersJoined:
                return


class AsynPool(asynpool.AsynPool):  # type: ignore[misc]
    ResultHandler = ResultHandler


class TaskPool(prefork.TaskPool):  # type: ignore[misc]
    Pool = AsynPool

    def on_close(self) -> None:
        """Leave the pool running until ``on_stop`` (which closes it): the consumer, stopping in
        between, then finishes writing the tasks it had started to write."""
