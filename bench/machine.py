"""Facts about the machine and software a run was measured on."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

import psutil

from bench.procs import ROOT
from bench.services import Services, server_versions
from bench.wrk import wrk_version

PACKAGES = (
    "clerk-sync",
    "celery",
    "kombu",
    "redis",
    "Flask",
    "Werkzeug",
    "gunicorn",
    "SQLAlchemy",
    "psycopg",
    "svix",
    "structlog",
    "prometheus-client",
    "psutil",
    "matplotlib",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {
        "load_1m": round(one, 2),
        "load_5m": round(five, 2),
        "load_15m": round(fifteen, 2),
        "cpu_percent": psutil.cpu_percent(interval=0.5),
    }


def git_revision() -> str:
    """The checked-out commit, with ``+dirty`` when the work tree has changes (read-only)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def facts(services: Services) -> dict[str, Any]:
    versions: dict[str, str] = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    memory = psutil.virtual_memory()
    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gib": round(memory.total / 1024**3, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        **server_versions(services),
        "wrk": wrk_version(),
        "revision": git_revision(),
        "packages": versions,
    }
