"""Heartbeat figures from outside the reporter: the kernel's per-queue counters and the fail-open, flood and
eviction counters kept in the status state."""

from __future__ import annotations

from pathlib import Path

from tunnelwatch.report.heartbeat import fail_open_fields, queue_counters


def test_queue_counters_read_the_kernel_table(tmp_path: Path) -> None:
    p = tmp_path / "nfq"
    p.write_text("    5  12345     0 2 65531     3     4      100  1\n"
                 "    7  999     0 2 65531     9     9      50  1\n")
    assert queue_counters(range(5, 6), p) == (100, 7)
    assert queue_counters(range(5, 8), p) == (150, 25)
    assert queue_counters(range(5, 6), tmp_path / "missing") == (0, 0)


def test_queue_counters_skip_headers_short_and_garbled_lines(tmp_path: Path) -> None:
    p = tmp_path / "nfq"
    p.write_text("queue_num portid waiting\n"
                 "    5  1 0 2 65531 x 4 100 1\n"  # garbled drop counter: the line is skipped
                 "    5  1 0\n"                    # too short
                 "    6  1 0 2 65531 1 1 10 1\n")
    assert queue_counters(range(5, 7), p) == (10, 2)


def test_fail_open_fields_take_only_integer_kernel_and_flow_figures() -> None:
    snap: dict[str, object] = {
        "kernel": {"bypassed_packets": 24, "bypassed_flows": "24", "flood_dropped": 3, "limited_hosts": []},
        "flows": {"evicted": 7, "tracked": 1}}
    assert fail_open_fields(snap) == {"bypassed_packets": 24, "flood_dropped": 3, "flows_evicted": 7}
    assert fail_open_fields({}) == {}
    assert fail_open_fields({"kernel": "down", "flows": {"evicted": None}}) == {}
