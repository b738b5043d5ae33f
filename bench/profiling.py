"""``--profile``: sample a process tree with py-spy during an extra, unmeasured run, and say where
its Python CPU time goes (by leaf function, by library, and through the project's own functions).

Only threads holding the GIL are sampled (``--gil``): py-spy cannot tell idle threads here, and a
thread blocked in ``recv`` on a socket would otherwise look busy. Time spent waiting on Redis or
PostgreSQL is therefore not in the profile; ``bench.cpu`` shows how busy those servers were."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import Child

PROJECT_PACKAGES = ("ingress", "workers", "models", "clerk_sync")
ENTRY_POINT_FILES = (
    "clerk_sync/__main__.py",
    "clerk_sync/cli/__init__.py",
    "clerk_sync/cli/serve.py",
)
"""Frames every sample of a ``clerk-sync`` process passes through: not worth listing."""
FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*)\)$")


def py_spy() -> str | None:
    """The py-spy executable next to the interpreter, or on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


@dataclass
class Recording:
    process: subprocess.Popen[bytes]
    output: Path

    def stop(self) -> dict[str, Any]:
        """End the recording now (py-spy writes what it has on SIGINT)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        return self.finish(timeout=30)

    def finish(self, timeout: float) -> dict[str, Any]:
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            self.process.wait(timeout=10)
        if not self.output.exists():
            return {"error": f"py-spy wrote nothing (exit {self.process.returncode})"}
        return summarize(self.output)


def record(target: Child, output: Path, seconds: float, rate: int = 200) -> Recording | None:
    """Start sampling ``target`` and its subprocesses for ``seconds``; None without py-spy."""
    executable = py_spy()
    if executable is None:
        return None
    argv = [
        executable,
        "record",
        f"--pid={target.pid}",
        "--subprocesses",
        f"--rate={rate}",
        f"--duration={max(1, round(seconds))}",
        "--format=raw",
        "--nolineno",
        "--gil",
        f"--output={output}",
    ]
    log = output.with_suffix(".log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return Recording(process, output)


def _package(file: str) -> str:
    """``site-packages/sqlalchemy/engine/base.py`` → ``sqlalchemy``; project files by package."""
    parts = file.replace("\\", "/").split("/")
    if len(parts) == 1:
        return Path(parts[0]).stem
    return parts[0] if parts[0] not in ("<frozen", "") else parts[-1]


def summarize(raw: Path, top: int = 12) -> dict[str, Any]:
    """Collapsed stacks (``frame;frame;... count``) → shares of samples."""
    leaf_functions: Counter[str] = Counter()
    leaf_packages: Counter[str] = Counter()
    project_inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame for frame in stack.split(";") if FRAME.match(frame)]
        if not frames:
            continue
        total += count
        leaf = FRAME.match(frames[-1])
        assert leaf is not None
        leaf_functions[f"{leaf['function']} ({leaf['file']})"] += count
        leaf_packages[_package(leaf["file"])] += count
        seen: set[str] = set()
        for frame in frames:
            match = FRAME.match(frame)
            if (
                match is None
                or _package(match["file"]) not in PROJECT_PACKAGES
                or match["file"] in ENTRY_POINT_FILES
            ):
                continue
            name = f"{match['function']} ({match['file']})"
            if name not in seen:
                seen.add(name)
                project_inclusive[name] += count

    def shares(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * count / total, 1)) for name, count in counter.most_common(top)]

    return {
        "samples": total,
        "file": str(raw),
        "self_by_function": shares(leaf_functions),
        "self_by_package": shares(leaf_packages),
        "project_inclusive": shares(project_inclusive),
    }
