"""What the replica wait (``CLERK_SYNC_ACCEPT_REPLICA_WAIT_MS``) costs the accept.

    .venv/bin/python -m bench.replica_wait [--events 3000] [--rounds 4]

Starts its own ``redis-server`` master and one replica on free loopback ports (the machine's
Redis is not touched), and times ``Publisher.publish`` (the ingress's accept: the one-round-trip
script, and with the wait the ``WAIT 1`` in the same round trip) one event after another, with
the wait off and on, alternating rounds. Prints p50/p99 per request and the ratios on over off;
then the throughput of ``--threads`` threads publishing at once (as an ingress process's request
threads do), off and on.
The replica is on the same machine: over a network, add the round trip to the replica.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

from bench.procs import free_port
from clerk_sync.broker.publisher import Publisher
from clerk_sync.core.queue import QueuedEvent
from clerk_sync.core.settings import Settings


def start(directory: Path, port: int, *options: str) -> subprocess.Popen[bytes]:
    folder = directory / str(port)
    folder.mkdir()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--dir", str(folder), "--repl-diskless-sync-delay", "0", *options]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def settled(master: redis.Redis[bytes]) -> bool:
    try:
        master.set("bench:settled", 1)
        return bool(master.wait(1, 200) >= 1)
    except redis.ConnectionError:
        return False


def timings(publisher: Publisher, events: int, prefix: str) -> list[float]:
    payload = '{"type":"organization.updated","data":{"id":"org_1","name":"Acme"}}'
    took = []
    for number in range(events):
        event = QueuedEvent(f"{prefix}-{number}", payload, 1, "organization.updated")
        started = time.perf_counter()
        publisher.publish(event)
        took.append(time.perf_counter() - started)
    return took


def throughput(publisher: Publisher, threads: int, seconds: float, prefix: str) -> float:
    """Accepts per second of ``threads`` threads publishing one event after another."""
    counts = [0] * threads
    stop = threading.Event()

    def publish(number: int) -> None:
        payload = '{"type":"organization.updated","data":{"id":"org_1","name":"Acme"}}'
        while not stop.is_set():
            event = QueuedEvent(f"{prefix}-{number}-{counts[number]}", payload, 1, "x")
            publisher.publish(event)
            counts[number] += 1

    workers = [threading.Thread(target=publish, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    arguments = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="clerk-sync-bench-wait-"))
    master_port, replica_port = free_port(), free_port()
    processes = [
        start(directory, master_port),
        start(directory, replica_port, "--replicaof", "127.0.0.1", str(master_port)),
    ]
    try:
        master: redis.Redis[bytes] = redis.Redis(port=master_port)
        deadline = time.monotonic() + 30
        while not settled(master):
            if time.monotonic() > deadline:
                raise SystemExit("the replica did not sync within 30 s")
            time.sleep(0.1)
        base = Settings(
            broker_url=f"redis://127.0.0.1:{master_port}/0",
            message_secrets=("bench-message-secret-0123456789abcdef0123456789",),
        )
        publishers = {
            "off": Publisher(base),
            "on": Publisher(base.with_overrides(accept_replica_wait_ms=1000)),
        }
        for name, publisher in publishers.items():
            timings(publisher, 200, f"warm-{name}")
        results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
        for round_number in range(arguments.rounds):
            for name, publisher in publishers.items():
                took = timings(publisher, arguments.events, f"{name}-{round_number}")
                quantiles = statistics.quantiles(took, n=100)
                results[name].append((statistics.median(took), quantiles[98]))
            master.flushdb()
        for name, pairs in results.items():
            p50 = statistics.median(p for p, _ in pairs) * 1e6
            p99 = statistics.median(p for _, p in pairs) * 1e6
            print(f"wait {name:>3}: p50 {p50:7.1f} us  p99 {p99:7.1f} us  (median of rounds)")
        ratios = [on[0] / off[0] for on, off in zip(results["on"], results["off"], strict=True)]
        print(
            f"p50 on/off: {statistics.median(ratios):.2f}x "
            f"[{min(ratios):.2f}-{max(ratios):.2f}] over {arguments.rounds} rounds of "
            f"{arguments.events} sequential accepts"
        )
        rates: dict[str, list[float]] = {"off": [], "on": []}
        for round_number in range(arguments.rounds):
            for name, publisher in publishers.items():
                rate = throughput(publisher, arguments.threads, 3.0, f"t{name}{round_number}")
                rates[name].append(rate)
            master.flushdb()
        on_over_off = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
        print(
            f"{arguments.threads} threads: {statistics.median(rates['off']):,.0f} accepts/s off, "
            f"{statistics.median(rates['on']):,.0f} on: {statistics.median(on_over_off):.2f}x "
            f"[{min(on_over_off):.2f}-{max(on_over_off):.2f}]"
        )
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=10)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
