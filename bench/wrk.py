"""Running wrk with pre-signed Clerk webhooks (``bench/webhook.lua``) and reading its summary."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.events import Event, Signer
from bench.procs import BenchError

LUA_SCRIPT = Path(__file__).resolve().parent / "webhook.lua"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    latency_us: dict[str, float]

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def latency_ms(self, key: str) -> float:
        return self.latency_us[key] / 1000.0


def wrk_version() -> str:
    if shutil.which("wrk") is None:
        return "not installed"
    result = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False)
    return (result.stdout + result.stderr).splitlines()[0].strip() if result else "?"


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (Debian: apt-get install -y wrk)")


def write_signed_requests(path: Path, events: Sequence[Event]) -> None:
    """Sign ``events`` now and write them where ``webhook.lua`` reads them: one request a line,
    svix id, timestamp, signature and body separated by tabs (a compact JSON body holds no tab
    or newline). The ingress queues each svix id once, so a run must not send one twice."""
    signer = Signer()
    at = datetime.now(UTC)
    rows = []
    for event in events:
        headers = signer.headers(event, at)
        fields = (
            headers["svix-id"],
            headers["svix-timestamp"],
            headers["svix-signature"],
            event.body,
        )
        if any("\t" in value or "\n" in value for value in fields):
            raise BenchError("a signed request holds a tab or a newline")
        rows.append("\t".join(fields))
    path.write_text("\n".join(rows) + "\n")


def run_wrk(
    url: str,
    *,
    requests_file: Path,
    seconds: float,
    connections: int,
    threads: int,
    timeout_seconds: float = 10.0,
) -> WrkResult:
    """One bounded wrk run against ``url``; raises ``BenchError`` if wrk fails."""
    require_wrk()
    argv = [
        "wrk",
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(1, round(seconds))}s",
        f"--timeout={timeout_seconds:g}s",
        f"--script={LUA_SCRIPT}",
        url,
        "--",
        str(requests_file),
        str(threads),
    ]
    try:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"wrk did not finish within {seconds + 60:.0f}s") from error
    for line in result.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            summary = json.loads(line.removeprefix("WRK_JSON "))
            return WrkResult(
                requests=int(summary["requests"]),
                seconds=summary["duration_us"] / 1e6,
                errors={key: int(value) for key, value in summary["errors"].items()},
                latency_us={key: float(value) for key, value in summary["latency_us"].items()},
            )
    raise BenchError(f"wrk gave no summary (exit {result.returncode}): {result.stderr[-500:]}")
