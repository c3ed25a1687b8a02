"""The benchmarks' harness: what its runs rely on and no script run would show."""

from __future__ import annotations

import sys

from ews_listener_emulators.faults import FaultEngine
from tests import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import _harness


def test_set_latency_replaces_the_last_figure_and_zero_takes_it_back() -> None:
    """``throughput.py --goals`` runs +80 ms among runs at 0 ms: setting 0 once did nothing, so
    every run after the +80 ms one was measured at +80 ms."""
    faults = FaultEngine()
    faults.add("server_busy", probability=0.5, back_off_ms=100)
    _harness.set_latency(faults, 0.08)
    _harness.set_latency(faults, 0.05)
    latency = [rule for rule in faults.rules() if rule.kind == "latency"]
    assert [rule.delay for rule in latency] == [0.05]
    assert faults.decide("GetItem", "a@contoso.com") is not None
    _harness.set_latency(faults, 0)
    assert [rule.kind for rule in faults.rules()] == ["server_busy"]
