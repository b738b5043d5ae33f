"""Starting, watching and always stopping the processes a benchmark runs.

Every process is started in a session of its own (so a Ctrl-C in the terminal reaches only the
harness, which then stops them in order) and asks the kernel for SIGTERM should the harness die
without cleaning up. ``Supervisor.close`` stops each process group: SIGTERM, a bounded wait,
then SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1


class BenchError(RuntimeError):
    """A benchmark could not be carried out (a process died, a deadline passed)."""


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the harness dies (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.1,
    alive: Callable[[], None] | None = None,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; ``BenchError`` after ``timeout``.
    ``alive`` is called between polls and should raise if a process we depend on died."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        if not self.running():
            raise BenchError(
                f"{self.name} exited with status {self.process.returncode}; "
                f"last lines of {self.log_path}:\n{self.tail()}"
            )

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_contains(self, needle: str) -> bool:
        try:
            return needle in self.log_path.read_text(errors="replace")
        except OSError:
            return False

    def tree(self) -> list[psutil.Process]:
        """This process and all its descendants."""
        try:
            parent = psutil.Process(self.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.Error:
            return []


def tree_memory(processes: Sequence[psutil.Process]) -> tuple[int, int]:
    """(RSS, PSS) in bytes, summed over ``processes``; PSS counts shared pages once."""
    rss = pss = 0
    for process in processes:
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


class Supervisor:
    """Owns every process the harness starts; ``close`` stops them all, whatever happened."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._children: list[Child] = []
        self._lock = threading.Lock()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: Path = ROOT,
    ) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("wb")
        process = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        child = Child(name, process, log_path, log)
        with self._lock:
            self._children.append(child)
        return child

    def stop(self, child: Child, timeout: float = 20.0) -> None:
        """SIGTERM the child's process group, wait up to ``timeout``, then SIGKILL it."""
        if child.running():
            _signal_group(child.process, signal.SIGTERM)
            try:
                child.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(child.process, signal.SIGKILL)
                child.process.wait(timeout=10)
        # Pool processes may outlive a main process killed hard: end the rest of the group.
        _signal_group(child.process, signal.SIGKILL)
        child._log.close()
        with self._lock:
            if child in self._children:
                self._children.remove(child)

    def close(self) -> None:
        with self._lock:
            children = list(reversed(self._children))
        for child in children:
            with contextlib.suppress(Exception):
                self.stop(child, timeout=10)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``KeyboardInterrupt`` in the main thread, like Ctrl-C, so every
    ``finally`` runs and every process is stopped."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def python_command(*args: str) -> list[str]:
    """Run a module with the harness's interpreter (the project's virtualenv)."""
    return [sys.executable, *args]
