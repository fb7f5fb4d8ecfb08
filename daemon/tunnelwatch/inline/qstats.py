"""Per-queue verdict latency samples, shared by the NFQUEUE module (writer) and reporting (reader).

Kept apart from nfqueue.py so that reading the figures never imports the compiled binding. Samples are
the userspace time from the queue callback's start to the verdict, in seconds, bounded per queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Final

SAMPLES: Final = 4096
_latency: dict[int, deque[float]] = {}


def recorder(queue_num: int) -> deque[float]:
    """The bounded sample buffer of one queue (created on first use)."""
    return _latency.setdefault(queue_num, deque(maxlen=SAMPLES))


def summary_ms(queues: Iterable[int]) -> dict[str, float] | None:
    """{p50, p99, max} in milliseconds over the recent samples of these queues; None without samples."""
    values = sorted(v for q in queues for v in _latency.get(q, ()))
    if not values:
        return None
    n = len(values)
    return {"p50": round(values[(n - 1) // 2] * 1e3, 4), "p99": round(values[(n - 1) * 99 // 100] * 1e3, 4),
            "max": round(values[-1] * 1e3, 4)}


def load(queue_num: int, samples: list[float]) -> None:
    """Replace one queue's samples with those its worker process sent (multi-queue: the heartbeat runs in
    the main process, the recorders in the workers)."""
    buf = recorder(queue_num)
    buf.clear()
    buf.extend(v for v in samples[-SAMPLES:] if isinstance(v, float))
