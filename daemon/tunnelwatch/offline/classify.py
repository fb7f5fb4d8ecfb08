"""Offline classification of capture files: the engine behind `tunnelwatch classify`.

Reads each capture, feeds its IP packets to a fresh engine and yields one record per bidirectional
flow in the contract format of DESIGN.md. A bad file yields an error and the other files still run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunnelwatch.classify.base import Classifier
from tunnelwatch.classify.endpoints import EndpointIndex
from tunnelwatch.classify.engine import DEFAULT_BUDGET, Engine
from tunnelwatch.classify.flow import Flow
from tunnelwatch.classify.packet import addr_text, parse_ip, transport_name
from tunnelwatch.offline.kernelview import KernelView
from tunnelwatch.offline.pcapfile import PcapError, PcapReader, ip_offset
from tunnelwatch.offline.progress import Progress
from tunnelwatch.verdict import Verdict


def flow_record(pcap: str, flow: Flow, v: Verdict) -> dict[str, Any]:
    """The JSON contract record for one flow (src = initiator)."""
    return {
        "pcap": pcap,
        "src": addr_text(flow.src),
        "sport": flow.sport,
        "dst": addr_text(flow.dst),
        "dport": flow.dport,
        "transport": transport_name(flow.proto),
        "klass": v.klass,
        "protocol": v.protocol,
        "confidence": v.confidence,
        "evidence": list(v.evidence),
        "packets": flow.packets,
        "bytes": flow.bytes,
        "first_seen": round(flow.first_ts, 6),
        "last_seen": round(flow.last_ts, 6),
    }


@dataclass
class FileStats:
    """What happened while reading one file."""

    name: str
    packets: int = 0
    not_ip: int = 0
    flows: int = 0
    error: str = ""
    warnings: list[str] = field(default_factory=list)


def classify_file(
    path: str,
    *,
    classifiers: Sequence[Classifier] | None = None,
    budget: int = DEFAULT_BUDGET,
    idle_timeout: float = 120.0,
    progress: bool | None = None,
    stats: FileStats | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    endpoints: EndpointIndex | None = None,
    inline: bool = False,
) -> Iterator[dict[str, Any]]:
    """Yield flow records of one capture file, in order of flow end. Raises PcapError for a bad file.

    `inline`: the daemon's view (kernelview.py): only what the kernel rules would queue reaches the
    engine, set up as the daemon's; records come at the end, in order of first packet, with `queued`."""
    name = os.path.basename(path)
    st = stats if stats is not None else FileStats(name)
    out: list[dict[str, Any]] = []

    def ended(flow: Flow, v: Verdict) -> None:
        st.flows += 1
        out.append(flow_record(name, flow, v))

    view: KernelView | None = None
    if inline:
        view = KernelView(classifiers, budget=budget, idle_timeout=idle_timeout, endpoints=endpoints)
        engine = view.engine
    else:
        engine = Engine(classifiers, budget=budget, idle_timeout=idle_timeout, on_end=ended,
                        endpoints=endpoints)
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed in finally, generator below
    except OSError as exc:
        raise PcapError(f"{path}: cannot open: {exc.strerror}") from exc
    try:
        reader = PcapReader(fh, name)
        size = os.fstat(fh.fileno()).st_size
        bar: Progress | None = None
        if progress or (progress is None and size > 20_000_000):
            bar = Progress(size, name, enabled=True if progress else None)
        process = view.process if view is not None else engine.process
        n = 0
        for ts, linktype, frame in reader:
            n += 1
            off = ip_offset(linktype, frame)
            pkt = parse_ip(frame, ts, off) if off >= 0 else None
            if pkt is None:
                st.not_ip += 1
            else:
                process(pkt)
            if out:
                yield from out
                out.clear()
            if bar is not None and not n & 0x3FFF:
                bar.update(fh.tell(), f"{n} pkts")
        st.packets = n
        if view is not None:
            view.flush()
            out.extend(view.records(name))
            st.flows = len(out)
        else:
            engine.flush()
        yield from out
        out.clear()
        if bar is not None:
            bar.close()
        if reader.truncated:
            st.warnings.append("capture is truncated at the end; flows up to the cut were classified")
        for lt in sorted(reader.unsupported_linktypes):
            st.warnings.append(f"link type {lt} is not supported; its packets were skipped")
        if engine.classifier_errors:
            st.warnings.append(f"{engine.classifier_errors} classifier error(s), see log")
    finally:
        fh.close()
