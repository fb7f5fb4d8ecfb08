"""kill -9 at random points: writer (and drainer) processes are SIGKILLed mid-stream, repeatedly, on one
spool file; then the file must be intact, hold every event a writer reported durable (it prints ids only
after put returned), hold no duplicates, and keep each writer's order without holes.

The kill points are random (seed printed on failure; set TUNNELWATCH_CRASH_SEED to replay) and reached
by waiting for a random number of reported batches, never by sleeping. No root needed.
"""

from __future__ import annotations

import os
import random
import selectors
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunnelwatch.report.events import validate_event
from tunnelwatch.report.spool import Spool

ROUND_TIMEOUT = 30.0
MAX_BATCH = 64
DRAIN_BATCH = 100

WRITER = """
import random, sys, time
from tunnelwatch.report.events import make_event
from tunnelwatch.report.spool import Spool
path, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
sp = Spool(path)
print("ready", flush=True)
deadline = time.monotonic() + 25
for i in range(200_000):
    if time.monotonic() > deadline:
        break
    n = 1 if mode == "one" else rng.randint(1, MAX_BATCH)
    batch = [make_event("heartbeat", device_id="crash-test", uptime_s=float(i), flows_by_klass={"benign": i},
                        packets_queued=i, queue_drops=0) for _ in range(n)]
    if n == 1:
        sp.put(batch[0])
    else:
        sp.put_many(batch)
    sys.stdout.write("put " + " ".join(f"{e['stream']}:{e['seq']}:{e['id']}" for e in batch) + "\\n")
    sys.stdout.flush()
print("done", flush=True)
""".replace("MAX_BATCH", str(MAX_BATCH))

DRAINER = """
import sys, time
from tunnelwatch.report.spool import Spool
sp = Spool(sys.argv[1])
print("ready", flush=True)
deadline = time.monotonic() + 25
for _ in range(200_000):
    if time.monotonic() > deadline:
        break
    rows = sp.peek(DRAIN_BATCH)
    if rows:
        sp.ack([r for r, _ in rows])
        sys.stdout.write("ack " + " ".join(f"{e['stream']}:{e['seq']}:{e['id']}" for _, e in rows) + "\\n")
        sys.stdout.flush()
print("done", flush=True)
""".replace("DRAIN_BATCH", str(DRAIN_BATCH))


Report = tuple[str, int, str]  # stream, seq, event id


@dataclass
class Child:
    """One child process, its complete output lines, and when to kill it."""

    proc: subprocess.Popen[bytes]
    kill_after: int  # reported lines
    writer: bool
    buf: bytes = b""
    lines: list[str] = field(default_factory=list)
    ready: bool = False
    killed: bool = False

    def feed(self, data: bytes) -> None:
        self.buf += data
        *complete, self.buf = self.buf.split(b"\n")  # a torn last line is not a report
        for raw in complete:
            line = raw.decode()
            if line == "ready":
                self.ready = True
            elif line.startswith(("put ", "ack ")):
                self.lines.append(line)

    def kill(self) -> None:
        if not self.killed:
            self.proc.send_signal(signal.SIGKILL)
            self.killed = True


def _env() -> dict[str, str]:
    env = dict(os.environ)
    daemon = str(Path(__file__).resolve().parents[2] / "daemon")
    env["PYTHONPATH"] = daemon + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_round(path: str, specs: list[tuple[str, list[str], int]]) -> list[Child]:
    """Start children, SIGKILL each once it reported its target number of lines (drainers once every
    writer is dead); return them with their reports."""
    sel = selectors.DefaultSelector()
    children: list[Child] = []
    try:
        for script, args, kill_after in specs:
            proc = subprocess.Popen([sys.executable, "-c", script, path, *args], stdout=subprocess.PIPE,
                                    env=_env())
            assert proc.stdout is not None
            os.set_blocking(proc.stdout.fileno(), False)
            child = Child(proc, kill_after, writer=script is WRITER)
            sel.register(proc.stdout, selectors.EVENT_READ, child)
            children.append(child)
        deadline = time.monotonic() + ROUND_TIMEOUT
        open_pipes = len(children)
        while open_pipes and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                child = key.data
                data = os.read(key.fd, 65536)
                if not data:  # EOF: the child is dead and every report it made is in
                    sel.unregister(key.fileobj)
                    open_pipes -= 1
                    continue
                child.feed(data)
                if child.ready and len(child.lines) >= child.kill_after:
                    child.kill()
            if all(c.killed for c in children if c.writer):
                for c in children:
                    if c.ready and (c.lines or not c.writer):
                        c.kill()
        assert open_pipes == 0, "children did not finish within the round timeout"
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()
            child.proc.wait(timeout=10)
            assert child.proc.stdout is not None
            child.proc.stdout.close()
        sel.close()
    return children


def _reports(children: list[Child], verb: str) -> list[Report]:
    out = []
    for c in children:
        for line in c.lines:
            if line.startswith(verb):
                for token in line.split()[1:]:
                    stream, seq, ident = token.split(":")
                    out.append((stream, int(seq), ident))
    return out


def _check_spool(path: str, why: str) -> list[Report]:
    """Integrity, no duplicates, per-stream order without holes; return the stored events in order."""
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], why
    db.close()
    with Spool(path) as sp:
        assert sp.recovered is None, why
        rows = sp.peek(10_000_000)
        assert sp.backlog() == len(rows), why
        assert sp.dropped() == 0, why
    stored: list[Report] = []
    for _, e in rows:
        validate_event(e)
        stored.append((str(e["stream"]), int(str(e["seq"])), str(e["id"])))
    ids = [r[2] for r in stored]
    assert len(set(ids)) == len(ids), f"duplicate events {why}"
    streams: dict[str, list[int]] = {}
    for stream, seq, _ in stored:
        streams.setdefault(stream, []).append(seq)
    for stream, seqs in streams.items():
        # increasing and contiguous: a drainer may have taken the head, nothing else may be missing
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"stream {stream} out of order {why}"
    return stored


def test_spool_survives_kill_9_at_random_points(tmp_path: Path) -> None:
    seed = int(os.environ.get("TUNNELWATCH_CRASH_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    path = str(tmp_path / "spool.db")
    why = f"(seed {seed}; replay with TUNNELWATCH_CRASH_SEED={seed})"

    # 1. Writers alone: every reported event stays, each stream is a prefix 0..n-1 (at most the one
    # batch committed but not yet reported at the kill is extra).
    rounds = [[(WRITER, ["one", "1"], 0)]]  # killed as soon as it is up: a half-made spool must be fine
    rounds += [[(WRITER, [rng.choice(["one", "many"]), str(rng.randrange(2**32))], rng.randint(1, 300))]
               for _ in range(6)]
    reported: list[Report] = []
    killed = 0
    for spec in rounds:
        children = _run_round(path, spec)
        killed += sum(c.killed and c.proc.returncode == -signal.SIGKILL for c in children)
        reported += _reports(children, "put ")
    assert killed == len(rounds), f"every writer should have been SIGKILLed mid-stream {why}"
    assert len(reported) > 100, f"the writers reported too little to prove anything {why}"
    stored = _check_spool(path, why)
    assert not {r[2] for r in reported} - {r[2] for r in stored}, f"reported events lost {why}"
    by_stream: dict[str, list[int]] = {}
    for stream, seq, _ in stored:
        by_stream.setdefault(stream, []).append(seq)
    assert all(seqs[0] == 0 for seqs in by_stream.values()), f"a stream lost its head {why}"
    extra = {r[2] for r in stored} - {r[2] for r in reported}
    assert len(extra) <= MAX_BATCH * len(rounds), why

    # 2. Two writers and a drainer (the uplink's peek+ack) at once, all killed at random points.
    acked: list[Report] = []
    drainers = 0
    for _ in range(3):
        children = _run_round(path, [
            (WRITER, ["many", str(rng.randrange(2**32))], rng.randint(20, 300)),
            (WRITER, ["one", str(rng.randrange(2**32))], rng.randint(20, 300)),
            (DRAINER, [], rng.randint(1, 20)),
        ])
        drainers += 1
        reported += _reports(children, "put ")
        acked += _reports(children, "ack ")
    stored = _check_spool(path, why)
    stored_ids = {r[2] for r in stored}
    acked_ids = [r[2] for r in acked]
    assert len(set(acked_ids)) == len(acked_ids), f"an event was delivered twice {why}"
    assert not set(acked_ids) & stored_ids, f"acked events are still spooled {why}"
    head: dict[str, int] = {}
    for stream, seq, _ in stored:
        head.setdefault(stream, seq)
    # A reported event that is neither stored nor reported acked can only have been taken by a drainer
    # killed between its ack and its report: from the head of its stream, one batch per drainer at most.
    missing = [r for r in reported if r[2] not in stored_ids and r[2] not in set(acked_ids)]
    assert len(missing) <= DRAIN_BATCH * drainers, f"{len(missing)} reported events lost {why}"
    for stream, seq, ident in missing:
        assert stream not in head or seq < head[stream], f"event {ident} lost from mid-stream {why}"
