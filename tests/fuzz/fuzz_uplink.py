"""Harness: the uplink's handling of the collector's replies (uplink.read_reply, judge_reply,
parse_retry_after).

Byte 0 picks: even = the rest is a raw HTTP response parsed by http.client exactly as the uplink's
connection does, then judged (only OSError/HTTPException may escape: the uplink turns those into a retry);
odd = status, reason, Retry-After value and body given separately to judge_reply and parse_retry_after.
"""

from __future__ import annotations

import http.client
import io

from fuzz._fuzzlib import Bytes, fuzz_main, instrumented

with instrumented():
    from tunnelwatch.report.wire import (
        RETRY_AFTER_CEILING,
        Outcome,
        judge_reply,
        parse_retry_after,
        read_reply,
    )

KINDS = ("ok", "retry", "permanent", "reject", "smaller")


class FakeSocket:
    """What HTTPResponse needs of a socket: makefile() over the canned bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str, *args: object, **kwargs: object) -> io.BufferedReader:
        """The reply bytes as a file."""
        return io.BufferedReader(io.BytesIO(self.data))  # type: ignore[arg-type]


def check(outcome: Outcome) -> None:
    """An outcome the sender loop knows how to settle."""
    assert outcome.kind in KINDS, outcome
    ra = outcome.retry_after
    assert ra is None or 0.0 <= ra <= RETRY_AFTER_CEILING, outcome


def one_input(data: bytes) -> None:
    """Judge one reply."""
    if not data:
        return
    if data[0] & 1 == 0:
        resp = http.client.HTTPResponse(FakeSocket(data[1:]), method="POST")  # type: ignore[arg-type]
        try:
            resp.begin()
            outcome, _close = read_reply(resp)
        except (OSError, http.client.HTTPException):
            return
        finally:
            resp.close()
        check(outcome)
        return
    b = Bytes(data[1:])
    status = b.u16() % 1000
    reason = b.text(40)
    retry_after = b.text(80) if b.byte() & 1 else None
    now = float(b.u16() * 100_000)
    ra = parse_retry_after(retry_after, now)
    assert ra is None or 0.0 <= ra <= RETRY_AFTER_CEILING, ra
    check(judge_reply(status, reason, retry_after, b.take(b.left())))


if __name__ == "__main__":
    fuzz_main(one_input)
