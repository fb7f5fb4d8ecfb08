"""Real VoIP peers for the capture tests: two baresip user agents placing a direct SIP call with RTP.

No registrar and no sound card: the caller dials sip:bob@<server> directly, the callee answers
automatically, each side sends a generated 8 kHz tone (aufile) and plays into a null bridge
(aubridge). Commands reach baresip through its stdin (stdio module).
"""

from __future__ import annotations

import math
import struct
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

from support.netns import CLIENT_IP, SERVER_IP, Lab

SIP_PORT = 5060
RTP_PORTS = (16000, 16010)
VOIP_TOOLS = ("baresip", "tcpdump", "ss")
MODULES = ("stdio", "g711", "aufile", "aubridge")


@dataclass
class Call:
    """The two running user agents of one call."""

    caller: subprocess.Popen[bytes]
    callee: subprocess.Popen[bytes]

    def command(self, line: str) -> None:
        """Type one command into the caller's console."""
        assert self.caller.stdin is not None
        self.caller.stdin.write(line.encode() + b"\n")
        self.caller.stdin.flush()


def write_tone(path: Path, seconds: int = 20, rate: int = 8000) -> Path:
    """A 440 Hz mono 16-bit tone; ausine would need 48 kHz, which PCMU at 8 kHz cannot take."""
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / rate)))
                      for i in range(rate))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames * seconds)
    return path


def ua_config(d: Path, ip: str, user: str, tone: Path, *, auto_answer: bool) -> Path:
    """A baresip config directory (config, accounts, contacts) for one user agent."""
    d.mkdir(parents=True, exist_ok=True)
    modules = "".join(f"module {m}.so\n" for m in MODULES)
    (d / "config").write_text(
        f"poll_method epoll\nsip_listen {ip}:{SIP_PORT}\nnet_interface eth0\n"
        f"audio_source aufile,{tone}\naudio_player aubridge,tw\naudio_alert aubridge,tw\n"
        f"rtp_ports {RTP_PORTS[0]}-{RTP_PORTS[1]}\nmodule_path /usr/lib/baresip/modules\n{modules}"
        "module_app account.so\nmodule_app menu.so\n")
    params = ";regint=0" + (";answermode=auto" if auto_answer else "")
    (d / "accounts").write_text(f"<sip:{user}@{ip}>{params}\n")
    (d / "contacts").write_text("")
    return d


def start_call(lb: Lab, d: Path) -> Call:
    """Callee on the server, caller on the client; returns once both say the call is established."""
    d.mkdir(parents=True, exist_ok=True)
    tone = write_tone(d / "tone.wav")
    bob = ua_config(d / "bob", SERVER_IP, "bob", tone, auto_answer=True)
    alice = ua_config(d / "alice", CLIENT_IP, "alice", tone, auto_answer=False)
    callee = lb.spawn(lb.server, ["baresip", "-f", str(bob)], "baresip-bob", stdin=subprocess.PIPE)
    lb.wait_until(lb.server, ["sh", "-c", f"ss -lun | grep -q '{SERVER_IP}:{SIP_PORT} '"])
    caller = lb.spawn(lb.client, ["baresip", "-f", str(alice), "-e", f"/dial sip:bob@{SERVER_IP}"],
                      "baresip-alice", stdin=subprocess.PIPE)
    lb.wait_for_log("baresip-alice", f"Call established: sip:bob@{SERVER_IP}")
    lb.wait_for_log("baresip-bob", f"Call established: sip:alice@{CLIENT_IP}")
    return Call(caller, callee)


def hang_up(lb: Lab, call: Call) -> None:
    """The caller hangs up (BYE); returns once both ends report the call terminated."""
    call.command("/hangup")
    lb.wait_for_log("baresip-alice", f"Call with sip:bob@{SERVER_IP} terminated")
    lb.wait_for_log("baresip-bob", f"Call with sip:alice@{CLIENT_IP} terminated")
