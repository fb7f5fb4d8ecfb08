"""Megaco / H.248 (RFC 3525, ITU-T H.248.1) text encoding over UDP: transactions matched with replies.

A text message starts with the version token, "MEGACO/1" or its short form "!/1" (versions 1-3), white
space, the sender's message id (a domain name in angle brackets, an address in square brackets with an
optional port, or a device name) and white space; then a transaction request "Transaction = id {"
(short "T=id{"), a reply "Reply = id {" ("P=id{"), a pending notice "Pending = id" ("PN") or a
response ack ("TransactionResponseAck", "K"). A request is heuristic; the other side replying with its
transaction id is confirmed. UDP 2944 (text) is the usual port, but any port is checked: the version
token and message id are specific enough. The binary (ASN.1) encoding on 2945 is not recognised.
"""

from __future__ import annotations

import re
from typing import ClassVar, Final

from tunnelwatch.classify.callecho import EchoClassifier, Opener
from tunnelwatch.classify.packet import UDP, Packet

PROTOCOL: Final = "megaco"
_HEAD: Final = re.compile(
    rb"(?:MEGACO|!)/[1-3][ \t\r\n]+"
    rb"(?:<[A-Za-z0-9.\-]{1,64}>(?::\d{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](?::\d{1,5})?|[A-Za-z0-9_./\-]{1,64})"
    rb"[ \t\r\n]+(Transaction|T|Reply|P|Pending|PN)[ \t]*=[ \t]*(\d{1,10})",
    re.IGNORECASE)
_REQUEST: Final = frozenset({b"transaction", b"t"})
#: the first bytes a message can have: its version token is "MEGACO/..." in any case, or "!/..."
_STARTS: Final = b"!Mm"


def message(p: bytes) -> tuple[str, int] | None:
    """(kind, transaction id) of a text Megaco message: kind 'request', 'reply' or 'pending'."""
    m = _HEAD.match(p, 0, 300)
    if m is None:
        return None
    word = m.group(1).lower()
    kind = "request" if word in _REQUEST else "reply" if word in (b"reply", b"p") else "pending"
    return kind, int(m.group(2))


class Megaco(EchoClassifier):
    """Megaco/H.248 text: a transaction request, confirmed by a reply with its id."""

    name: ClassVar[str] = "megaco"
    transports: ClassVar[frozenset[int]] = frozenset({UDP})
    # a request opens with its version token (_STARTS), so other first bytes need no regex at all
    first_bytes: ClassVar[dict[int, frozenset[int]]] = {UDP: frozenset(_STARTS)}
    protocols: ClassVar[tuple[str, ...]] = (PROTOCOL,)
    ports: ClassVar[dict[tuple[int, int], str]] = {(UDP, 2944): PROTOCOL}

    def opener(self, p: bytes, pkt: Packet) -> Opener | None:
        """A transaction request (version token, message id, Transaction=id)."""
        if len(p) < 12 or p[0] not in _STARTS:
            return None
        msg = message(p)
        if msg is None or msg[0] != "request":
            return None
        return Opener(PROTOCOL, f"transaction request {msg[1]} (version token, message id)",
                      str(msg[1]).encode())

    def answer(self, p: bytes, op: Opener, direction: int) -> str | None:
        """A reply or pending notice from the other side with the same transaction id."""
        if direction != 1 or not p or p[0] not in _STARTS:
            return None
        msg = message(p)
        if msg is None or msg[0] == "request" or str(msg[1]).encode() != op.key:
            return None
        return f"{msg[0]} with the same transaction id"
