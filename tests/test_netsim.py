"""The shared network simulator is deterministic and does what it says."""

from __future__ import annotations

from support.netsim import NetSim


def _run(seed: int) -> tuple[list[tuple[str, str, int]], object]:
    net: NetSim[int] = NetSim(seed, loss=0.3, duplicate=0.3)
    for i in range(200):
        net.send("a", "b", i)
    return list(net.drain()), net.statistics()


def test_same_seed_same_run_and_different_seed_different_run() -> None:
    assert _run(1) == _run(1)
    assert _run(1)[0] != _run(2)[0]


def test_loses_duplicates_and_reorders() -> None:
    got, stats = _run(3)
    payloads = [p for _, _, p in got]
    assert stats.dropped > 0
    assert stats.duplicated > 0
    assert len(set(payloads)) < 200  # some messages never arrived
    assert len(payloads) > len(set(payloads))  # some arrived twice
    assert payloads != sorted(payloads)  # not FIFO


def test_lossless_network_delivers_everything_once() -> None:
    net: NetSim[int] = NetSim(5, loss=0.0, duplicate=0.0)
    for i in range(50):
        net.send("a", "b", i)
    assert sorted(p for _, _, p in net.drain()) == list(range(50))
