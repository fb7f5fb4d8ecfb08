"""Untrusted text made safe to show: on a terminal or page (`printable`) and in an event (`clean_text`);
and read safely as a number (`digits`).

Server replies, registry documents, HTTP reason phrases and peer-supplied names reach logs, events and the
status page; control characters must never reach a terminal or fail an event's validation.
"""

from __future__ import annotations

import re
from typing import Final

_CTRL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(value: object, limit: int = 200) -> str:
    """A value safe to print on a terminal: control characters replaced, length bounded."""
    text = _CTRL.sub("?", "" if value is None else str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clean_text(text: str, limit: int = 512) -> str:
    """Text any event field accepts: non-printable characters escaped (\\x1b), at most `limit` characters."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return out[:limit]


def digits(text: str) -> bool:
    """Whether int(text) reads it as a plain decimal: ASCII digits only (str.isdigit() also takes
    superscripts such as '¹', a latin-1 byte 0xb9 decoded, which int() refuses)."""
    return text.isascii() and text.isdigit()
