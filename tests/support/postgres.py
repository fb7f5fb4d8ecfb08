"""A throw-away PostgreSQL 15 server (the Debian `postgresql` package) for the ingest tests.

initdb into a temp dir, listen only on a unix socket inside that dir (no TCP), trust auth for one
superuser role; run as the `postgres` system user when the tests run as root (postgres refuses root).
Debian's own `main` cluster and the postgresql service are never used or touched.

    with postgres(tmp_path) as pg:      # initdb + start; stopped and removed on exit, even on failure
        pg.conninfo                     # "host=<dir>/sock dbname=tunnelwatch user=tunnelwatch"
        pg.stop(); pg.start()           # the "database down" fault: same data, same socket
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
ROLE = "tunnelwatch"
DBNAME = "tunnelwatch"


def _runas() -> list[str]:
    """The command prefix that runs a PostgreSQL binary as a non-root user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root needs the `postgres` user (apt-get install postgresql)") from None
    return ["runuser", "-u", "postgres", "--"]


class Postgres:
    """One private PostgreSQL cluster under its own temp dir."""

    def __init__(self, parent: Path) -> None:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"PostgreSQL 15 is needed for the ingest tests: {PG_BIN} missing "
                               "(apt-get install postgresql)")
        # a dir of its own the postgres user can own; parent may be a root-only pytest tmp dir
        self.dir = Path(tempfile.mkdtemp(prefix="tw-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.sock = self.dir / "sock"
        self.log = self.dir / "postgres.log"
        self.parent = parent
        self.sock.mkdir()
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            for p in (self.dir, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        try:
            self._init()
        except BaseException:
            self.close()
            raise

    def _init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", ROLE, "--auth=trust", "-E", "UTF8",
                  "--no-locale", "--no-sync")
        with (self.data / "postgresql.conf").open("a") as f:
            f.write("\n# tunnelwatch tests: unix socket in the temp dir only\n"
                    "listen_addresses = ''\n"
                    f"unix_socket_directories = '{self.sock}'\n"
                    "fsync = off\nsynchronous_commit = on\nfull_page_writes = off\n"
                    "max_connections = 50\n")
        self.start()
        self._run("createdb", "-h", str(self.sock), "-U", ROLE, DBNAME)

    @property
    def conninfo(self) -> str:
        """A libpq connection string for the test database."""
        return f"host={self.sock} dbname={DBNAME} user={ROLE} connect_timeout=5"

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        r = subprocess.run([*_runas(), str(PG_BIN / tool), *args], capture_output=True, text=True,
                           timeout=timeout, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"{tool} failed ({r.returncode}): {r.stderr.strip()[-2000:]}\n{self.tail()}")

    def tail(self, n: int = 2000) -> str:
        """The end of the server log (for failure messages)."""
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def running(self) -> bool:
        """Whether the server answers on its socket."""
        r = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", str(self.sock), "-U", ROLE, "-t", "2"],
                           capture_output=True, timeout=10, check=False)
        return r.returncode == 0

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        if os.geteuid() == 0 and not self.log.exists():
            self.log.touch()
            pw = pwd.getpwnam("postgres")
            os.chown(self.log, pw.pw_uid, pw.pw_gid)
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: roll back and disconnect clients; `immediate`: like a crash)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def close(self) -> None:
        """Stop the server if it runs and remove the whole dir (keeping the log beside the caller's)."""
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(Exception):
                self.stop("immediate")
        if pid_file.exists():  # pg_ctl failed: kill the postmaster by its pid, never by name
            with contextlib.suppress(Exception):
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, 9)
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
                    time.sleep(0.05)
        with contextlib.suppress(OSError):
            shutil.copyfile(self.log, self.parent / "postgres.log")
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def postgres(parent: Path) -> Iterator[Postgres]:
    """A started private PostgreSQL; always stopped and removed on exit."""
    pg = Postgres(parent)
    try:
        yield pg
    finally:
        pg.close()
