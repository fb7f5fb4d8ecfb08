"""SIGTERM/SIGINT/SIGHUP for the daemon's main loop and each queue worker: flags plus a wakeup fd."""

from __future__ import annotations

import os
import signal
from types import FrameType


class Signals:
    """SIGTERM/SIGINT/SIGHUP as flags plus a wakeup fd for select()."""

    def __init__(self) -> None:
        self.stop = 0
        self.hup = False
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.wfd, False)
        os.set_blocking(self.rfd, False)
        signal.set_wakeup_fd(self.wfd)
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop = signum

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.hup = True

    def drain(self) -> None:
        try:
            while os.read(self.rfd, 512):
                pass
        except BlockingIOError:
            pass
