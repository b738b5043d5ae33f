"""Kernel socket timeouts, which bound a blocking call without Python's per-call ``poll``."""

from __future__ import annotations

import struct


def kernel_timeout(seconds: float) -> bytes:
    """``seconds`` as the ``struct timeval`` that ``SO_RCVTIMEO`` and ``SO_SNDTIMEO`` take."""
    whole, fraction = divmod(seconds, 1.0)
    return struct.pack("ll", int(whole), int(fraction * 1_000_000))
