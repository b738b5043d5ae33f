"""Where the machine's CPU went during a measured run, by process group.

On a two-core machine the benchmarks are mostly CPU-bound, so "which processes used the cores"
explains most results: ``CpuTracker`` samples the CPU time of named process groups (our own
process trees, PostgreSQL backends of our databases, the Redis server) and reports each as
cores used on average, next to the whole machine's busy cores; what is left is other people's
work on a shared machine (and the kernel).
"""

from __future__ import annotations

import contextlib
import os
import resource
import time
from collections.abc import Callable, Iterable

import psutil

from bench.services import Services

Finder = Callable[[], Iterable[psutil.Process]]

OWN_PROCESS = "benchmark harness (load generator, poller)"
HARNESS_CHILDREN = "wrk and other short-lived children"
OTHER = "everything else (other users, kernel)"
BUSY = "whole machine busy"


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system


class CpuTracker:
    """Call ``sample()`` now and then (processes that come and go are caught in between) and
    ``finish()`` at the end of the measured window."""

    def __init__(self, groups: dict[str, Finder]) -> None:
        self._groups = groups
        self._start_wall = time.time()
        self._start = time.monotonic()
        self._busy = _busy_seconds()
        self._children = _children_seconds()
        self._own = _own_seconds()
        self._first: dict[tuple[str, int], float] = {}
        self._last: dict[tuple[str, int], float] = {}
        self.sample()

    def sample(self) -> None:
        for group, finder in self._groups.items():
            with contextlib.suppress(psutil.Error):
                processes = list(finder())
            for process in processes:
                try:
                    times = process.cpu_times()
                    created = process.create_time()
                except psutil.Error:
                    continue
                key = (group, process.pid)
                used = times.user + times.system
                if key not in self._first:
                    # A process born inside the window counts from zero.
                    self._first[key] = 0.0 if created >= self._start_wall - 0.05 else used
                self._last[key] = used

    def finish(self) -> dict[str, float]:
        """Average cores used over the window, by group."""
        self.sample()
        wall = max(time.monotonic() - self._start, 1e-6)
        cores: dict[str, float] = {}
        for (group, _pid), last in self._last.items():
            cores[group] = cores.get(group, 0.0) + (last - self._first[(group, _pid)]) / wall
        cores[OWN_PROCESS] = (_own_seconds() - self._own) / wall
        cores[HARNESS_CHILDREN] = (_children_seconds() - self._children) / wall
        busy = (_busy_seconds() - self._busy) / wall
        cores[OTHER] = max(0.0, busy - sum(cores.values()))
        cores[BUSY] = busy
        return {group: round(value, 2) for group, value in cores.items()}


def tree(pid: int) -> Finder:
    def find() -> list[psutil.Process]:
        try:
            parent = psutil.Process(pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.Error:
            return []

    return find


def redis_server(services: Services) -> Finder:
    """The Redis server (shared: other people's commands count here too)."""
    client = services.redis()
    try:
        pid = int(client.info("server").get("process_id", 0))
    finally:
        client.close()

    def find() -> list[psutil.Process]:
        try:
            return [psutil.Process(pid)] if pid else []
        except psutil.Error:
            return []

    return find


def postgres_backends(*database_names: str) -> Finder:
    """The PostgreSQL backend processes serving our databases (their process title names the
    database)."""
    postmaster: list[psutil.Process] = []

    def find() -> list[psutil.Process]:
        if not postmaster:
            for process in psutil.process_iter(["name"]):
                with contextlib.suppress(psutil.Error):
                    parent = process.parent()
                    if process.info["name"] == "postgres" and (
                        parent is None or parent.name() != "postgres"
                    ):
                        postmaster.append(process)
                        break
            else:
                return []
        found = []
        for backend in postmaster[0].children():
            try:
                title = " ".join(backend.cmdline())
            except psutil.Error:
                continue
            if any(f" {name} " in title for name in database_names):
                found.append(backend)
        return found

    return find


def describe(cores: dict[str, float], logical_cores: int | None) -> str:
    total = f" of {logical_cores}" if logical_cores else ""
    parts = [f"{group} {value:.2f}" for group, value in cores.items() if group != BUSY]
    return (
        f"CPU cores used on average{total}: "
        + ", ".join(parts)
        + (f"; whole machine busy {cores.get(BUSY, 0):.2f}")
    )


def mean_cores(windows: list[dict[str, float]]) -> dict[str, float]:
    """Per group, the mean over several measured windows."""
    groups: dict[str, list[float]] = {}
    for window in windows:
        for group, value in window.items():
            groups.setdefault(group, []).append(value)
    return {group: round(sum(values) / len(values), 2) for group, values in groups.items()}
