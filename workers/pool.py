"""The prefork pool of a worker: Celery's, with pipes that hold a whole batch.

Celery's prefork pool writes each task to a pool process through a pipe, and under its default
("fair") scheduling only to a process that is idle. A batch of a hundred Clerk payloads pickles to
about 150 KB, more than a pipe holds by default (64 KB on Linux): the process read the first part
and then waited for the main process to write the next, which that does only between its other
work (receiving messages, settling the previous batch), so every batch started a few
milliseconds late. With the pipe that carries the tasks enlarged to ``PIPE_BYTES``, a batch is
written at once and the process starts on it as soon as it has read it. Where the kernel refuses
(another system, or a lower ``/proc/sys/fs/pipe-max-size``), the pipe keeps its size and batches
are written in parts, as before.
"""

from __future__ import annotations

import fcntl
from typing import Any, Final

from celery.concurrency import asynpool, prefork

POOL: Final = "workers.pool:TaskPool"
"""What ``worker_pool`` names: ``-P prefork`` (the default) then means this pool."""

PIPE_BYTES: Final = 1 << 20
"""1 MiB, the default limit of ``F_SETPIPE_SZ`` for an unprivileged process on Linux."""


def enlarge_pipe(fd: int, size: int = PIPE_BYTES) -> int:
    """Ask the kernel to let the pipe of ``fd`` hold ``size`` bytes; returns what it holds now
    (0 where pipe sizes cannot be read or set)."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None)
    get_size = getattr(fcntl, "F_GETPIPE_SZ", None)
    if set_size is None or get_size is None:
        return 0
    try:
        return fcntl.fcntl(fd, set_size, size)
    except OSError:
        return fcntl.fcntl(fd, get_size)


class AsynPool(asynpool.AsynPool):  # type: ignore[misc]
    def create_process_queues(self) -> tuple[Any, Any, Any]:
        """Celery's queues of a new pool process, with the pipe of its tasks enlarged."""
        tasks, results, acknowledgements = super().create_process_queues()
        enlarge_pipe(tasks._writer.fileno())
        return tasks, results, acknowledgements


class TaskPool(prefork.TaskPool):  # type: ignore[misc]
    Pool = AsynPool
