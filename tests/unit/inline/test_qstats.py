"""Verdict latency samples: bounded per queue, summarised as p50/p99/max milliseconds (event-valid)."""

from __future__ import annotations

from tunnelwatch.inline import qstats


def test_summary_over_the_given_queues_only() -> None:
    a = qstats.recorder(901)
    b = qstats.recorder(902)
    a.extend([0.001] * 98 + [0.002, 0.010])
    b.append(5.0)
    assert qstats.summary_ms([901]) == {"p50": 1.0, "p99": 2.0, "max": 10.0}
    assert qstats.summary_ms([901, 902])["max"] == 5000.0  # type: ignore[index]
    assert qstats.summary_ms([999]) is None


def test_samples_are_bounded() -> None:
    r = qstats.recorder(903)
    r.extend(float(i) for i in range(qstats.SAMPLES + 500))
    assert len(r) == qstats.SAMPLES


def test_summary_fits_the_heartbeat_event() -> None:
    from tunnelwatch.report.events import make_event

    qstats.recorder(904).extend([0.0001, 0.0002])
    ev = make_event("heartbeat", device_id="box", uptime_s=1.0, flows_by_klass={}, packets_queued=2,
                    queue_drops=0, verdict_latency_ms=qstats.summary_ms([904]))
    assert ev["verdict_latency_ms"]["max"] == 0.2
