"""The packet-path process's GC policy: young collections stay, automatic full ones stop."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

nfqueue = pytest.importorskip("tunnelwatch.inline.nfqueue", reason="needs the daemon extra (netfilterqueue)")


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_gc")
def test_relax_gc_keeps_young_collections_and_stops_full_ones() -> None:
    young, middle, _ = gc.get_threshold()
    nfqueue.relax_gc()
    assert gc.get_threshold() == (young, middle, nfqueue.GC_FULL_THRESHOLD)
    assert gc.get_freeze_count() > 0  # start-up objects are out of every collection's sight

    # a young cycle is still collected without any explicit full collection
    class Node:
        ref: object = None

    a, b = Node(), Node()
    a.ref, b.ref = b, a
    del a, b
    assert gc.collect(0) + gc.collect(1) >= 2
