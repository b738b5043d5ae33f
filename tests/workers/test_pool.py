"""The workers' prefork pool: a whole batch fits the pipe that carries it to a pool process."""

from __future__ import annotations

import os
import pickle
import uuid

from clerk_sync.settings import Settings
from tests.factories import body_of, event, membership_data, new_svix_id, organization_data
from workers.batches import BatchItem, run_batch
from workers.pool import enlarge_pipe


def test_a_batch_of_realistic_events_is_written_to_a_pool_process_at_once() -> None:
    """With the pipe enlarged, the task that carries a full batch (pickled as Celery's pool
    sends it) is written without waiting for the pool process to read any of it."""
    organization = organization_data("org_pipe", name="Pipe")
    items = [
        BatchItem(
            uuid.uuid4().hex,
            new_svix_id(),
            body_of(event("organizationMembership.created", membership_data(organization))),
            1_800_000_000_000,
            0,
        )
        for _ in range(Settings().batch_size)
    ]
    task = pickle.dumps((run_batch, ("runtime", items, True), {}), protocol=4)
    assert len(task) > 64 * 1024, "more than a pipe holds by default"

    read_end, write_end = os.pipe()
    try:
        assert enlarge_pipe(write_end) >= len(task)
        os.set_blocking(write_end, False)
        assert os.write(write_end, task) == len(task)
    finally:
        os.close(read_end)
        os.close(write_end)
