"""Boot the host's own systemd as PID 1 of throw-away namespaces, to run a unit file for real.

The container root is an overlay of the host's / with a tmpfs upper layer, so nothing the boot writes
reaches the host; it has its own pid, mount, network, uts and ipc namespaces, so firewall rules the unit
installs stay inside. systemd starts only `--unit=tw-test.target`, which requires the units under test.
Needs root, overlayfs and seccomp; CI has them. Everything dies with the namespace's PID 1 on exit.

    with SystemdBoot(tmp_path, units={"tunnelwatch.service": text}, files={"/etc/x.yaml": "..."}) as sb:
        sb.wait_property("tunnelwatch.service", "ActiveState", "active", timeout=30)
        print(sb.journal("tunnelwatch.service"))
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

_BOOT = """set -e
R={root}
mount -t tmpfs tmpfs "$R"
mkdir "$R/upper" "$R/work" "$R/root"
mount -t overlay overlay -o lowerdir=/,upperdir="$R/upper",workdir="$R/work" "$R/root"
N="$R/root"
mount --rbind /dev "$N/dev"
mount --rbind /sys "$N/sys"
mount -t proc proc "$N/proc"
cp -R {stage}/. "$N/"  # not -a: the stage dir's mode must not land on /
echo 0123456789abcdef0123456789abcdef > "$N/etc/machine-id"
exec chroot "$N" env container=tunnelwatch-test /lib/systemd/systemd --unit=tw-test.target \
    --log-target=journal
"""


class SystemdBoot:
    """Context manager: systemd as PID 1 of private namespaces with the given units and files installed."""

    def __init__(self, workdir: Path, *, units: Mapping[str, str], files: Mapping[str, str] | None = None,
                 boot_timeout: float = 30.0) -> None:
        self.workdir = workdir
        stage = workdir / "stage"
        unit_dir = stage / "etc/systemd/system"
        unit_dir.mkdir(parents=True)
        for name, text in units.items():
            (unit_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (unit_dir / name).write_text(text)
        wanted = " ".join(n for n in units if "/" not in n and n.endswith(".service"))
        (unit_dir / "tw-test.target").write_text(
            f"[Unit]\nDescription=units under test\nRequires={wanted}\nAfter={wanted}\n")
        for path, text in (files or {}).items():
            target = stage / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            if text.startswith("#!"):
                target.chmod(0o755)
        root = workdir / "fs"
        root.mkdir()
        script = _BOOT.format(root=shlex.quote(str(root)), stage=shlex.quote(str(stage)))
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", "--mount", "--net", "--uts", "--ipc",
             "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.pid = -1
        try:
            self.pid = self._wait_pid1(boot_timeout)
            self._wait_bus(boot_timeout)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> SystemdBoot:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
                 ) -> None:
        self.close()

    def close(self) -> None:
        """Kill the namespace's PID 1 (which takes every process in it along) and reap unshare."""
        if self.proc.poll() is None:
            try:
                if self.pid < 0:
                    raise ProcessLookupError
                os.kill(self.pid, signal.SIGKILL)  # unshare reaps it and exits
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def _wait_pid1(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read() if self.proc.stdout else ""
                raise RuntimeError(f"namespace set-up failed: {out}")
            try:
                kids = children.read_text().split()
                if kids and Path(f"/proc/{kids[0]}/exe").resolve().name == "systemd":
                    return int(kids[0])
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("systemd did not start")

    def run(self, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all its namespaces and root)."""
        return subprocess.run(["nsenter", "-t", str(self.pid), "-a", "-r", "-w", *cmd],
                              capture_output=True, text=True, timeout=timeout)

    def _wait_bus(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run("systemctl", "is-system-running").stdout.strip() not in ("", "offline"):
                return
            time.sleep(0.1)
        raise TimeoutError("systemd's manager did not come up")

    def prop(self, unit: str, name: str) -> str:
        """One property of a unit (`systemctl show -P NAME UNIT`)."""
        return self.run("systemctl", "show", "-P", name, unit).stdout.strip()

    def wait_property(self, unit: str, name: str, values: str | tuple[str, ...], timeout: float) -> str:
        """Poll a unit property until it takes one of `values`; returns it, or raises TimeoutError."""
        wanted = (values,) if isinstance(values, str) else values
        deadline = time.monotonic() + timeout
        value = ""
        while time.monotonic() < deadline:
            value = self.prop(unit, name)
            if value in wanted:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{unit} {name}={value!r}, not {wanted} after {timeout} s\n{self.journal(unit)}")

    def journal(self, unit: str | None = None) -> str:
        """The journal (of one unit), message text only."""
        args = ["journalctl", "--no-pager", "-o", "cat", *(["-u", unit] if unit else [])]
        return self.run(*args).stdout

    def read(self, path: str) -> str:
        """A file as the container sees it."""
        return Path(f"/proc/{self.pid}/root{path}").read_text()
