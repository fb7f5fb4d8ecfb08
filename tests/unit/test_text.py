"""Untrusted text made safe: control characters never survive, lengths stay bounded."""

from __future__ import annotations

from tunnelwatch.text import clean_text, digits, printable

HOSTILE = "ok\x1b[2J\x00\r\nend\x9b"


def test_printable_replaces_control_characters_and_bounds_length() -> None:
    out = printable(HOSTILE)
    assert out == "ok?[2J???end?"
    assert printable("x" * 500, 10) == "x" * 9 + "…" and printable(None) == ""


def test_clean_text_escapes_and_bounds_length() -> None:
    out = clean_text(HOSTILE)
    assert out.isprintable() and "\\x1b" in out and out.endswith("end\\x9b")
    assert len(clean_text("\x00" * 600, 512)) == 512


def test_digits_are_ascii_digits_only() -> None:
    assert digits("0") and digits("65535")
    assert not digits("") and not digits("\u00b9") and not digits("6\u00b9") and not digits("\u0663")  # ¹, ٣
    assert not digits("-1") and not digits("1.5") and not digits(" 1")
