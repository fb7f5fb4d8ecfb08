"""One queue's packet loop: bind the NFQUEUE, hand each packet to the enforcer, wake the host's other work.

Used by the single-queue daemon (in the main process) and by each queue worker (workers.py).
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable

from tunnelwatch.inline import firewall
from tunnelwatch.inline.enforcer import QUIET_S, Enforcer
from tunnelwatch.inline.signals import Signals

log = logging.getLogger(__name__)


Host = Callable[[list[int]], None]  # called after every select with the ready fds


def serve(enforcer: Enforcer, qnum: int, sig: Signals, on_ready: Callable[[bool | None], None],
           fds: list[int], timeout: Callable[[], float], wake: Host) -> None:
    """Bind one queue and handle its packets until a stop signal; `wake` does the host's other work."""
    from tunnelwatch.inline.nfqueue import Queue  # needs the compiled binding: only the daemon imports it

    cfg = enforcer.cfg
    nfq = Queue(qnum, enforcer.handle, firewall.MARK_MASK | firewall.MARK_PENDING, maxlen=cfg.maxlen,
                fail_open=not cfg.fail_closed)
    try:
        on_ready(nfq.flags_ok)
        qfd = nfq.fileno()
        while not sig.stop:
            wait = 0.0 if enforcer.quiet_backlog else min(timeout(), QUIET_S / 2)
            ready, _, _ = select.select([qfd, sig.rfd, *fds], [], [], wait)
            if sig.rfd in ready:
                sig.drain()
            if qfd in ready:
                nfq.poll()
            wake(ready)
            enforcer.tick()
        decided = ", ".join(f"{n} {a}" for a, n in sorted(enforcer.counts.items())) or "none"
        log.info("stopping on signal %d: queue %d: %d packets seen, decisions: %s", sig.stop, qnum,
                 nfq.packets, decided)
    finally:
        nfq.close()
