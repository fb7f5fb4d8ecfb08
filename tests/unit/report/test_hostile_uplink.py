"""Property tests: the uplink's reading of collector replies (status, Retry-After, body) never raises and
always maps to the documented retry semantics; plus the reproducer of the crash fuzzing found."""

from __future__ import annotations

import email.utils
import http.client
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelwatch.report.wire import RETRY_AFTER_CEILING, judge_reply, parse_retry_after, read_reply

NOW = 1_790_000_000.0
RETRY_VALUES = st.one_of(
    st.none(), st.text(max_size=40), st.text(alphabet="0123456789", min_size=1, max_size=30),
    st.text(alphabet="0123456789\u00b2\u00b9\u0661\u0662 \t-+.e", min_size=1, max_size=12),
    st.integers(0, 2**40).map(lambda s: email.utils.formatdate(NOW + s % 10**9, usegmt=True)),
    st.sampled_from(["Wed, 21 Oct 2026 07:28:00", "Mon, 01 Jan 99999 00:00:00 GMT", "-1", "1e9", "nan"]),
)


def expected_kind(status: int) -> str:
    if 200 <= status < 300:
        return "ok"
    if status in (429, 503, 408) or status >= 500:
        return "retry"
    if status == 413:
        return "smaller"
    if status in (400, 422):
        return "reject"
    return "permanent"


@settings(max_examples=500, deadline=None)
@given(RETRY_VALUES)
def test_retry_after_is_none_or_bounded(value: str | None) -> None:
    ra = parse_retry_after(value, NOW)
    assert ra is None or 0.0 <= ra <= RETRY_AFTER_CEILING
    if value is not None and value.strip().isascii() and value.strip().isdigit():
        assert ra == min(float(value.strip()), RETRY_AFTER_CEILING)


@settings(max_examples=500, deadline=None)
@given(st.integers(100, 999), st.text(max_size=30), RETRY_VALUES, st.binary(max_size=300))
def test_judge_reply_follows_the_documented_semantics(status: int, reason: str, retry_after: str | None,
                                                      body: bytes) -> None:
    out = judge_reply(status, reason, retry_after, body)
    assert out.kind == expected_kind(status)
    if status in (429, 503):
        assert (out.retry_after is None) == (parse_retry_after(retry_after) is None)
    else:
        assert out.retry_after is None
    assert out.duplicate == (out.kind == "ok" and b'"duplicate"' in body)


class _Sock:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str, *a: object, **k: object) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.data))  # type: ignore[arg-type]


HEADER_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=30)


@settings(max_examples=400, deadline=None)
@given(st.integers(100, 999), st.dictionaries(st.sampled_from(["Retry-After", "Content-Length", "Connection",
                                                               "Transfer-Encoding", "X-Other"]),
                                              HEADER_VALUE, max_size=4),
       st.binary(max_size=200))
def test_raw_replies_give_an_outcome_or_an_http_error(status: int, headers: dict[str, str],
                                                       body: bytes) -> None:
    raw = f"HTTP/1.1 {status} Reason\r\n".encode() + b"".join(
        f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()) + b"\r\n" + body
    resp = http.client.HTTPResponse(_Sock(raw), method="POST")  # type: ignore[arg-type]
    try:
        resp.begin()
        outcome, _close = read_reply(resp)
    except (OSError, http.client.HTTPException):
        return  # the uplink turns these into a retry of the same batch
    assert outcome.kind == expected_kind(status)


# -- reproducer of a crash found by fuzzing (tests/fuzz/regressions/uplink/) -----------------------------

def test_retry_after_with_non_ascii_digits_is_ignored() -> None:
    # "¹" (latin-1 0xb9, legal in a header) passed str.isdigit() and then broke float()
    assert parse_retry_after("1\u00b9") is None
    assert parse_retry_after("\u0661\u0662") is None
    out = judge_reply(503, "Busy", "9\u00b9", b"")
    assert out.kind == "retry" and out.retry_after is None


def test_retry_after_header_with_latin1_digit_through_http_client() -> None:
    raw = b"HTTP/1.1 503 Busy\r\nRetry-After: 1\xb9\r\nContent-Length: 0\r\n\r\n"
    resp = http.client.HTTPResponse(_Sock(raw), method="POST")  # type: ignore[arg-type]
    resp.begin()
    outcome, close = read_reply(resp)
    assert outcome.kind == "retry" and outcome.retry_after is None and not close


def test_retry_after_date_with_absurd_hour_is_ignored() -> None:
    # email.utils.parsedate_to_datetime raised OverflowError (not ValueError) on an hour past C int range
    assert parse_retry_after("Wed, 21 Oct 2026 074444444444444:28:00 GMT") is None
    assert judge_reply(429, "", "Wed, 21 Oct 2026 99999999999:00:00 GMT", b"").retry_after is None
