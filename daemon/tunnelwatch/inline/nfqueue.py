"""The userspace side of NFQUEUE: the only module that touches netfilterqueue / nfnetlink.

Every queued packet is accepted: a decision travels as bits of the packet mark, which the firewall's
filter chain saves into the connmark and enforces in the kernel (see firewall.py). Every verdict also
clears the firewall's "pending" bit, so packets the kernel let through without us are counted there.
Accepting always, even when our handler fails, keeps the customer online whatever goes wrong in Python.

python-netfilterqueue has no switch for the kernel's fail-open flag (NFQA_CFG_F_FAIL_OPEN: accept instead
of drop when the queue is full), so it is set here with one raw nfnetlink config message sent on the
queue's own socket (the kernel only lets the queue's owner configure it). The same message sets
NFQA_CFG_F_GSO: the kernel then hands over a GSO super-packet as one packet instead of segmenting it
for us, so "first N packets" means N skbs and the daemon is spared the extra copies.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import select
import socket
import struct
import time
import warnings
from collections.abc import Callable
from typing import Final

from netfilterqueue import NetfilterQueue
from netfilterqueue import Packet as QueuedPacket

from tunnelwatch.inline import qstats

log = logging.getLogger(__name__)

NETLINK_NETFILTER: Final = 12
NLM_F_REQUEST: Final = 0x1
NLM_F_ACK: Final = 0x4
NLMSG_ERROR: Final = 0x2
NFNL_SUBSYS_QUEUE: Final = 3
NFQNL_MSG_CONFIG: Final = 2
NFQA_CFG_MASK: Final = 4
NFQA_CFG_FLAGS: Final = 5
NFQA_CFG_F_FAIL_OPEN: Final = 0x1
NFQA_CFG_F_GSO: Final = 0x4
_SEQ: Final = 0x7477  # "tw": recognises our ack among queued packets
# python-netfilterqueue receives into a 4096-byte buffer: a longer netlink message is truncated, cannot be
# parsed, and its packet never gets a verdict. Copying at most 3072 bytes leaves room for the metadata
# (GSO super-packets carry extra attributes); every MTU-sized packet still arrives whole.
COPY_RANGE: Final = 3072
_SAMPLE_MASK: Final = qstats.SAMPLE_EVERY - 1
#: called with each queued IP packet; returns the decision's mark bits (0: undecided, plain accept)
Handler = Callable[[bytes], int]


GC_FULL_THRESHOLD: Final = 1_000_000_000  # young collections between full ones: in effect never


def relax_gc() -> None:
    """Keep young-generation collections but stop automatic full ones in this (packet-path) process.

    A full collection costs time proportional to every live object, and the flow table is most of them:
    measured, it took about half the CPU of a new flow and paused packet handling for ~1 s per 100,000
    flows. Flow state forms no reference cycles (freed by reference counting alone; checked after
    100,000 synthetic flows plus the whole nDPI corpus), and the cycles other code makes die young and are
    still collected by the young generations. Objects alive at start-up are frozen out of the GC's sight.
    The young generations are also collected on a clock by Enforcer.tick (YOUNG_GC_S): with a full flow
    table CPython's own trigger stays quiet while they grow.
    """
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, GC_FULL_THRESHOLD)


def config_flags_message(queue_num: int, flags: int, mask: int, seq: int = _SEQ) -> bytes:
    """An NFQNL_MSG_CONFIG request setting queue flags (attributes are big-endian u32)."""
    attrs = b""
    for atype, value in ((NFQA_CFG_MASK, mask), (NFQA_CFG_FLAGS, flags)):
        attrs += struct.pack("=HH", 8, atype) + struct.pack("!I", value)
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue_num)) + attrs
    header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG,
                         NLM_F_REQUEST | NLM_F_ACK, seq, 0)
    return header + body


class Queue:
    """One bound NFQUEUE queue; `handler(ip_packet) -> mark bits` (0: no decision yet)."""

    def __init__(self, num: int, handler: Handler, mark_mask: int, *, maxlen: int = 4096,
                 fail_open: bool = True) -> None:
        self.num = num
        self.handler = handler
        self.mark_mask = mark_mask
        self.packets = 0
        self.errors = 0
        # userspace time per verdict, read by the heartbeat (qstats keeps it importable without us)
        self._latency = qstats.recorder(num)
        #: True/False once the kernel acknowledged/refused our queue flags, None when unconfirmed
        self.flags_ok: bool | None = None
        relax_gc()
        self._nfq = NetfilterQueue()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self._nfq.bind(num, self._callback, max_len=maxlen, range=COPY_RANGE)
        for w in caught:
            log.warning("queue %d: %s (raise net.core.rmem_max for bursts)", num, w.message)
        flags = NFQA_CFG_F_GSO | (NFQA_CFG_F_FAIL_OPEN if fail_open else 0)
        self.flags_ok = self._set_flags(flags, NFQA_CFG_F_GSO | NFQA_CFG_F_FAIL_OPEN)

    def _set_flags(self, flags: int, mask: int) -> bool | None:
        """Send the config on the queue's socket; True/False when the kernel's ack was seen, else None."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER,
                             fileno=os.dup(self._nfq.get_fd()))
        try:
            sock.sendto(config_flags_message(self.num, flags, mask), (0, 0))
            # The ack normally arrives before any packet; if a packet is first, it is left for the
            # queue loop (libnfnetlink skips our ack later) and the outcome stays unknown.
            for _ in range(20):
                try:
                    data = sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    select.select([sock], [], [], 0.01)
                    continue
                if len(data) < 20:
                    return None
                _, mtype, _, seq, _ = struct.unpack_from("=IHHII", data)
                if mtype != NLMSG_ERROR or seq != _SEQ:
                    return None
                sock.recv(65536)
                err = int(struct.unpack_from("=i", data, 16)[0])
                if err:
                    log.warning("queue %d: kernel refused queue flags: %s", self.num, os.strerror(-err))
                return err == 0
            return None
        except OSError as exc:
            log.warning("queue %d: cannot set queue flags: %s", self.num, exc)
            return False
        finally:
            sock.close()

    def _callback(self, pkt: QueuedPacket) -> None:
        # per packet: only one packet in qstats.SAMPLE_EVERY is timed (perf_counter twice and a deque
        # append were 4 us per flow); the rest is the handler, the mark written and the verdict
        n = self.packets = self.packets + 1
        t0 = time.perf_counter() if n & _SAMPLE_MASK == 1 else 0.0
        mask = self.mark_mask
        try:
            bits = self.handler(pkt.get_payload()) & mask
        except Exception as exc:  # never leave a packet without a verdict
            self.errors += 1
            if self.errors == 1:
                log.exception("queue %d: handler failed (further failures counted only): %r", self.num, exc)
            bits = 0
        # always: the mask covers the firewall's "pending" bit too, and clearing it is what tells the
        # kernel's bypass counter that this packet did get a verdict (firewall.MARK_PENDING). `mark` is
        # the mark the packet came with (what get_mark() returns before set_mark), read without a call
        pkt.set_mark((pkt.mark & ~mask & 0xFFFFFFFF) | bits)
        pkt.accept()
        if t0:
            self._latency.append(time.perf_counter() - t0)

    def fileno(self) -> int:
        """The netlink socket to wait on."""
        return int(self._nfq.get_fd())

    def poll(self) -> None:
        """Handle every packet already waiting, without blocking."""
        try:
            self._nfq.run(block=False)
        except OSError as exc:
            if exc.errno not in (errno.EINTR, errno.ENOBUFS):
                raise

    def close(self) -> None:
        """Unbind the queue (the kernel then bypasses it thanks to --queue-bypass)."""
        self._nfq.unbind()

