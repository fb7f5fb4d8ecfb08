"""A throw-away OpenSSH server in the lab's server namespace, for tests that drive real ssh/scp."""

from __future__ import annotations

import os
from pathlib import Path

from support.netns import SERVER_IP, Lab

SSH_PORT = 2222


def start_sshd(lb: Lab, d: Path) -> list[str]:
    """Start sshd on SERVER_IP:SSH_PORT with fresh host and client keys in `d`; return the client
    options (key, no host-key prompts, batch mode) common to ssh and scp."""
    key = d / "id_ed25519"
    lb.run(lb.client, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
    lb.run(lb.server, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_key"))
    (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
    os.chmod(d, 0o700)
    # sshd insists on its privilege separation directory (systemd's RuntimeDirectory normally makes it)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    lb.spawn(lb.server, ["/usr/sbin/sshd", "-D", "-e", "-p", str(SSH_PORT), "-h", str(d / "host_key"),
                         "-o", f"AuthorizedKeysFile={d / 'authorized_keys'}", "-o", "StrictModes=no",
                         "-o", "PidFile=none", "-o", "UsePAM=no", "-o", f"ListenAddress={SERVER_IP}"], "sshd")
    lb.wait_for_log("sshd", "Server listening on")
    return ["-i", str(key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "LogLevel=ERROR"]
