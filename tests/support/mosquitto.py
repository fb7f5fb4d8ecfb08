"""A throw-away Mosquitto broker (the Debian `mosquitto` package) for the MQTT tests: TLS on 127.0.0.1 with
client certificates required, the certificate's CN as the MQTT username and a per-device ACL.

Small API (everything lives in one temp dir the caller owns):

    with broker(tmp_path) as b:                      # starts mosquitto; always stops it on exit
        cert, key = b.device("box-0001")             # client certificate with CN=box-0001 (cached)
        icert, ikey = b.device(INGEST_IDENTITY)      # the ISP-side ingest identity
        b.url                                        # "mqtts://127.0.0.1:<port>"
        b.ca                                         # CA that signed the broker and every client
        b.stop(); b.start()                          # broker restart: same port, same persistence
        b.stop(kill=True)                            # kill -9: unsaved in-memory state is lost

ACL (`acl` file in the dir): a box (any other CN) may only PUBLISH `tunnelwatch/v1/<its CN>/events` and
SUBSCRIBE/receive `tunnelwatch/v1/<its CN>/registry`; the identity INGEST_IDENTITY may read every box's
events (plainly or through the shared subscription `$share/ingest/tunnelwatch/v1/+/events`) and publish
every box's registry topic. Mosquitto denies a publish the ACL forbids silently (MQTT 5 PUBACK reason
0x87 "not authorized" at QoS 1), so tests assert that nothing arrives at a subscriber.

Persistence (`persistence true`) sits in the dir and is written on a clean stop (SIGTERM) and every
`autosave_interval` seconds, so a stop()/start() keeps persistent sessions and their queued messages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from support.pki import leaf, make_pki

INGEST_IDENTITY = "tunnelwatch-ingest"
CLIENT_EXT = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _acl() -> str:
    # Mosquitto checks `user` blocks for that user first, then `pattern` lines for everyone; %u is the
    # username, here the certificate CN (use_identity_as_username).
    return (f"user {INGEST_IDENTITY}\n"
            "topic read tunnelwatch/v1/+/events\n"
            "topic read $share/ingest/tunnelwatch/v1/+/events\n"
            "topic write tunnelwatch/v1/+/registry\n"
            "\n"
            "pattern write tunnelwatch/v1/%u/events\n"
            "pattern read tunnelwatch/v1/%u/registry\n")


class Mosquitto:
    """One mosquitto instance with its config, PKI, ACL, persistence and log under `d`."""

    def __init__(self, d: Path, port: int | None = None, autosave_interval: int = 1) -> None:
        if shutil.which("mosquitto") is None:
            raise RuntimeError("mosquitto is needed for the MQTT tests (apt-get install mosquitto)")
        self.dir = d
        self.port = port if port is not None else free_port()
        self.pki = make_pki(d)
        self.ca = self.pki.ca
        self.log = d / "mosquitto.log"
        self.conf = d / "mosquitto.conf"
        (d / "persist").mkdir(exist_ok=True)
        (d / "acl").write_text(_acl())
        self.conf.write_text(
            f"per_listener_settings false\n"
            f"user root\n"                       # the tests run as root; keep the temp files readable
            f"persistence true\n"
            f"persistence_location {d / 'persist'}/\n"
            f"autosave_interval {autosave_interval}\n"
            f"log_dest file {self.log}\n"
            f"log_type all\n"
            f"connection_messages true\n"
            f"allow_anonymous false\n"
            f"acl_file {d / 'acl'}\n"
            f"max_queued_messages 100000\n"
            f"listener {self.port} 127.0.0.1\n"
            f"protocol mqtt\n"
            f"cafile {self.pki.ca}\n"
            f"certfile {self.pki.server_cert}\n"
            f"keyfile {self.pki.server_key}\n"
            f"require_certificate true\n"
            f"use_identity_as_username true\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self._devices: dict[str, tuple[Path, Path]] = {}

    @property
    def url(self) -> str:
        """The broker's address as the box config spells it."""
        return f"mqtts://127.0.0.1:{self.port}"

    def device(self, name: str) -> tuple[Path, Path]:
        """(certificate, key) of a client whose CN (and so MQTT username) is `name`, signed by the CA."""
        if name not in self._devices:
            sub = self.dir / "clients"
            sub.mkdir(exist_ok=True)
            if not (sub / "ca.pem").exists():
                shutil.copy(self.dir / "ca.pem", sub / "ca.pem")
                shutil.copy(self.dir / "ca.key", sub / "ca.key")
            self._devices[name] = leaf(sub, "ca", name, CLIENT_EXT)
        return self._devices[name]

    def start(self, timeout: float = 15.0) -> None:
        """Start mosquitto (same port and persistence as before) and wait until it accepts TCP."""
        if self.proc is not None and self.proc.poll() is None:
            return
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited {self.proc.returncode}: {self.log_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        self.stop(kill=True)
        raise RuntimeError(f"mosquitto silent on {self.port} after {timeout}s: {self.log_text()[-2000:]}")

    def stop(self, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop mosquitto: SIGTERM (persistence saved) or, with kill, SIGKILL (nothing saved)."""
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def running(self) -> bool:
        """True while the broker process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """The broker's log so far (for assertion messages)."""
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> bool:
        """Poll the log until `needle` appears; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.log_text():
                return True
            time.sleep(0.05)
        return False


@contextlib.contextmanager
def broker(d: Path, port: int | None = None) -> Iterator[Mosquitto]:
    """A started Mosquitto in d (created if missing), stopped on exit even when the body fails."""
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    b = Mosquitto(d, port)
    try:
        b.start()
        yield b
    finally:
        b.stop()
