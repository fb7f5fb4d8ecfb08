"""service.py: the notify protocol against a real NOTIFY_SOCKET, logging targets, the warning rate limit."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from support.notify import NotifyListener, NotifyMessage
from tunnelwatch.appliance import service
from tunnelwatch.appliance.service import Notifier, RateLimitFilter, setup_logging


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifyListener]:
    with NotifyListener() as nl:
        monkeypatch.setenv("NOTIFY_SOCKET", nl.path)
        monkeypatch.delenv("WATCHDOG_USEC", raising=False)
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        yield nl


@pytest.fixture(params=["systemd-python", "socket"])
def notifier(request: pytest.FixtureRequest, listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
             ) -> Notifier:
    if request.param == "socket":
        monkeypatch.setattr(service, "_sender", lambda: None)
    n = Notifier()
    assert n.backend == request.param
    return n


def _datagrams(nl: NotifyListener, count: int) -> list[NotifyMessage]:
    nl.wait_for(lambda m: True, timeout=5, start=count - 1)
    return nl.messages


def test_life_cycle_messages_arrive_in_order(notifier: Notifier, listener: NotifyListener) -> None:
    notifier.ready("enforcing: queue 0, 3 registered endpoints")
    notifier.status("reloading config")
    notifier.reloading()
    notifier.reloaded("config reloaded\nsecond line")
    notifier.watchdog()
    notifier.stopping()
    msgs = _datagrams(listener, 6)
    assert [m.raw.split("\n")[0] for m in msgs] == [
        "READY=1", "STATUS=reloading config", "RELOADING=1", "READY=1", "WATCHDOG=1", "STOPPING=1"]
    assert msgs[0].fields == {"READY": "1", "STATUS": "enforcing: queue 0, 3 registered endpoints"}
    assert int(msgs[2].fields["MONOTONIC_USEC"]) > 0
    assert msgs[3].fields["STATUS"] == "config reloaded second line"  # a newline cannot start a new field
    assert all(m.pid == os.getpid() for m in msgs)


def test_abstract_socket_address(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    name = f"twtest-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        monkeypatch.setattr(service, "_sender", lambda: None)
        Notifier().ready("up")
        assert s.recv(4096) == b"READY=1\nSTATUS=up"


def test_no_socket_means_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    n = Notifier()
    assert not n.enabled and n.backend == "off"
    n.ready("x")
    n.watchdog()
    n.stopping()
    assert n.watchdog_interval() is None


def test_dead_socket_is_logged_once_and_never_raises(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    n = Notifier()
    for _ in range(5):
        n.watchdog()
    failures = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.WARNING


def test_watchdog_interval(listener: NotifyListener, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert Notifier().watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier().watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # the watchdog is someone else's
    assert Notifier().watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "", "soon", "-5"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert Notifier().watchdog_interval() is None


def _child_notifies(n: Notifier) -> None:
    n.ready("from a worker")
    n.watchdog()
    n.stopping()


def test_forked_worker_does_not_notify(notifier: Notifier, listener: NotifyListener) -> None:
    p = mp.get_context("fork").Process(target=_child_notifies, args=(notifier,))
    p.start()
    p.join(10)
    assert p.exitcode == 0
    notifier.status("main only")  # a marker: everything before it has arrived too (one socket, in order)
    listener.wait_for("STATUS=main only", timeout=5)
    assert [m.raw for m in listener.messages] == ["STATUS=main only"]


# --- logging ---------------------------------------------------------------------------------------


@pytest.fixture
def clean_root() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield root
    for h in list(root.handlers):
        if getattr(h, "_tunnelwatch", False):
            root.removeHandler(h)
    for h in saved[0]:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(saved[1])


def _ours(root: logging.Logger) -> list[logging.Handler]:
    return [h for h in root.handlers if getattr(h, "_tunnelwatch", False)]


def test_stderr_format_ignores_structured_fields(clean_root: logging.Logger, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("info")
    lg = logging.getLogger("tunnelwatch.inline.daemon")
    lg.info("decided %s", "vpn_tunnel", extra={"FLOW": "a->b", "KLASS": "x"})
    logging.getLogger("tunnelwatch.inline.daemon").debug("not shown at info")
    err = capsys.readouterr().err
    # outside journald: an ISO 8601 time with its UTC offset, then the level and the message only
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}"
    assert re.fullmatch(stamp + r" tunnelwatch: INFO: decided vpn_tunnel\n", err), err


def test_setup_is_idempotent_and_replaces_basic_config(clean_root: logging.Logger,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    basic = logging.StreamHandler(sys.stderr)
    clean_root.addHandler(basic)
    others = [h for h in clean_root.handlers if type(h) is not logging.StreamHandler]
    setup_logging("debug")
    setup_logging("warning")
    assert basic not in clean_root.handlers
    assert len(_ours(clean_root)) == 1
    assert all(h in clean_root.handlers for h in others)  # e.g. pytest's capture handler stays
    assert clean_root.level == logging.WARNING
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("chatty")


def test_journal_handler_sends_structured_fields(clean_root: logging.Logger) -> None:
    setup_logging("info", journal=True)
    (handler,) = _ours(clean_root)
    from systemd.journal import JournalHandler

    assert isinstance(handler, JournalHandler)
    sent: list[tuple[str, dict[str, Any]]] = []
    # the signature of systemd.journal.send: the record's own attributes (msg, args, ...) go to **kw
    handler.send = lambda MESSAGE, **kw: sent.append((MESSAGE, kw))
    fields = {"FLOW": "udp 10.0.0.2:5000 -> 198.51.100.7:1194", "KLASS": "vpn_tunnel", "PROTOCOL": "openvpn",
              "VERDICT": "block", "CONFIDENCE": "confirmed"}
    logging.getLogger("tunnelwatch.inline.daemon").info("decided %s", "openvpn", extra=fields)
    (msg, kw), = sent
    assert msg == "decided openvpn"
    assert kw["SYSLOG_IDENTIFIER"] == "tunnelwatch" and kw["PRIORITY"] == "6"
    assert {k: kw[k] for k in fields} == fields


def test_journal_chosen_only_when_stderr_is_the_journal_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    st = os.fstat(sys.stderr.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    assert service.journal_stream_is_stderr()
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino + 1}")  # inherited by a redirected child
    assert not service.journal_stream_is_stderr()
    for bad in ("", "8:", "garbage"):
        monkeypatch.setenv("JOURNAL_STREAM", bad)
        assert not service.journal_stream_is_stderr()


def test_journal_unavailable_falls_back_to_stderr(clean_root: logging.Logger, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(service, "_journal_handler", lambda: None)
    setup_logging("info", journal=True)
    assert "systemd.journal is not available" in capsys.readouterr().err


# --- the rate limit --------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str, *args: object, level: int = logging.WARNING, name: str = "tunnelwatch"
            ) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeats_are_counted_and_reported_after_the_window() -> None:
    clock = FakeClock()
    f = RateLimitFilter(window=60.0, clock=clock)
    assert f.filter(_record("queue %d overflow", 0))
    for i in range(5):
        clock.now += 10
        assert not f.filter(_record("queue %d overflow", i))  # same template, other args: a repeat
    assert f.pending() == {("tunnelwatch", "queue %d overflow"): 5}
    clock.now += 15  # 65 s after the first
    r = _record("queue %d overflow", 3)
    assert f.filter(r)
    assert r.getMessage() == "queue 3 overflow [repeated 5 times in the last 65 s]"
    assert f.pending() == {}
    clock.now += 1  # a new window started with that line
    assert not f.filter(_record("queue %d overflow", 3))


def test_recurrence_without_repeats_is_plain() -> None:
    clock = FakeClock()
    f = RateLimitFilter(window=60.0, clock=clock)
    assert f.filter(_record("disk full"))
    clock.now += 61
    r = _record("disk full")
    assert f.filter(r) and r.getMessage() == "disk full"


def test_keys_are_logger_level_and_template_and_info_passes() -> None:
    clock = FakeClock()
    f = RateLimitFilter(clock=clock)
    assert f.filter(_record("x"))
    assert f.filter(_record("x", name="tunnelwatch.inline.firewall"))
    assert f.filter(_record("x", level=logging.ERROR))
    assert f.filter(_record("y"))
    assert all(f.filter(_record("x", level=logging.INFO)) for _ in range(10))
    assert not f.filter(_record("x"))


def test_memory_is_bounded() -> None:
    f = RateLimitFilter(clock=FakeClock())
    for i in range(5000):
        f.filter(_record(f"distinct {i}"))
    assert len(f._seen) <= service._MAX_KEYS


def test_rate_limit_applies_through_setup_logging(clean_root: logging.Logger, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("info")
    lg = logging.getLogger("tunnelwatch.inline.nfqueue")
    for i in range(50):
        lg.warning("packet %d truncated", i)
        lg.info("info %d is never limited", i)
    err = capsys.readouterr().err.splitlines()
    assert sum(line.endswith(" tunnelwatch: WARNING: packet 0 truncated") for line in err) == 1
    assert sum("truncated" in line for line in err) == 1
    assert sum("never limited" in line for line in err) == 50


def test_distinct_problems_under_one_template_are_limited_apart() -> None:
    clock = FakeClock()
    f = RateLimitFilter(window=60.0, clock=clock)

    def rec(problem: str, exempt: bool = False) -> logging.LogRecord:
        r = _record("uplink: %s", problem)
        r.rate_key, r.rate_exempt = f"uplink: {problem}", exempt
        return r

    assert f.filter(rec("HTTP 401"))
    assert f.filter(rec("connection refused"))  # another problem: not a repeat of the 401
    assert not f.filter(rec("connection refused"))  # the same problem again within the window
    assert f.filter(rec("connection refused", exempt=True))  # the first failure of a new outage


def test_first_failure_of_an_outage_is_logged_after_an_earlier_warning(
        clean_root: logging.Logger, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    setup_logging("info")
    lg = logging.getLogger("tunnelwatch.report.uplink")
    lg.warning("uplink: %s", "collector busy (HTTP 503)", extra={"rate_key": "uplink: busy"})
    lg.warning("uplink: %s", "connection refused", extra={"rate_key": "uplink: refused", "rate_exempt": True})
    err = capsys.readouterr().err
    assert "collector busy" in err and "connection refused" in err
