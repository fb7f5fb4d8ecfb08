"""tunnelwatch-ingest's command line: the broker address forms and the refusals of bad options (the
consumer itself runs against real mosquitto and PostgreSQL in integration/test_ingest.py)."""

from __future__ import annotations

import pytest

from tunnelwatch.isp.ingest import Stats, broker_address, main


def test_broker_address_forms() -> None:
    assert broker_address("mqtts://broker.example") == ("broker.example", 8883, True)
    assert broker_address("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884, False)
    for bad in ("https://x", "mqtts://", "broker:8883"):
        with pytest.raises(ValueError):
            broker_address(bad)


@pytest.mark.parametrize("argv", [["--broker", "http://x", "--db", ""],
                                  ["--broker", "mqtt://x", "--db", "", "--inflight", "0"],
                                  ["--broker", "mqtt://x", "--db", "", "--keep-days", "0"],
                                  ["--db", "x"]])
def test_bad_options_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "usage: tunnelwatch-ingest" in capsys.readouterr().err


def test_stats_doc_is_plain_json_values() -> None:
    s = Stats()
    s.events_stored = 3
    doc = s.doc()
    assert doc["events_stored"] == 3 and "lock" not in doc and doc["db_up"] is False
