"""privileges.py: capability masks read from /proc, named for the log, and what is already gone is not
dropped again (under the unit, CAP_SETPCAP is absent and a drop attempt could only fail)."""

from __future__ import annotations

import ast
import os

import pytest

from tunnelwatch.appliance import privileges


def test_capabilities_of_this_process_parse() -> None:
    caps = privileges.capabilities()
    assert {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} <= set(caps)
    assert all(isinstance(v, int) and v >= 0 for v in caps.values())


def test_names() -> None:
    assert privileges.names((1 << 12) | (1 << 13)) == "cap_net_admin, cap_net_raw"
    assert privileges.names(0) == "none" and privileges.names(1 << 21) == "cap_21"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (capabilities to drop)")
def test_drop_in_a_child_keeps_net_admin_and_net_raw_and_reports_nothing_twice() -> None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the drop is irreversible: do it in a child
        os.close(r)
        first = privileges.drop_capabilities()
        second = privileges.drop_capabilities()  # everything already gone: nothing to fail on
        caps = privileges.capabilities()
        os.write(w, repr((first, second, caps["CapEff"], caps["CapBnd"])).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        first, second, eff, bnd = ast.literal_eval(fh.read())
    os.waitpid(pid, 0)
    kept = (1 << 12) | (1 << 13)
    assert first == [] and second == [], (first, second)
    assert eff == kept and bnd == kept
