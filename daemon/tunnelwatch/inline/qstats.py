"""Per-queue verdict latency samples, shared by the NFQUEUE module (writer) and reporting (reader).

Kept apart from nfqueue.py so that reading the figures never imports the compiled binding. Samples are
the userspace time from the queue callback's start to the verdict, in seconds, bounded per queue. One
packet in SAMPLE_EVERY is timed (the first, then every SAMPLE_EVERY-th): timing each one cost more than a
tenth of a queued packet's own userspace work (docs/performance.md). The figures are those of a regular
sample, so p50/p99 keep their meaning; `max` is the largest sampled verdict time, not of every packet.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Final

#: one queued packet in this many is timed (a power of two: the test is a mask)
SAMPLE_EVERY: Final = 16
#: samples kept per queue: with SAMPLE_EVERY, the last 16,384 packets (4,096 when every packet was timed)
SAMPLES: Final = 1024
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
