"""The operation-recorder protocol: how counters (the energy report, benchmarks, tests) listen to spiking layers.

A recorder is an `OperationRecorder` registered for the duration of a ``with recording(recorder):`` block. The
spiking layers call it at three points:

- `OperationRecorder.spike_fed_linear` before a Linear consumes spikes (``neuron`` made them; `None`: real values);
- `OperationRecorder.spiking_attention` after a spike × spike attention computed its weights;
- `OperationRecorder.weight_read` when the event backend read weight bytes (gathered rows or whole matrices).

A recorder whose `observes_spikes` is `True` must see every neuron's own output: while it listens, the fused
norm → neuron kernels and the compact K/V cache formats are off (they never materialize what it counts). Counters
that only tally weight reads set it to `False` and leave the fast paths as they are.

This module imports only the standard library so that it can travel with a saved model's code.
"""

from __future__ import annotations

from contextlib import contextmanager

__all__ = ["OperationRecorder", "WeightReads", "active_recorders", "observing_spikes", "recording"]

_RECORDERS: list = []


class OperationRecorder:
    """Base class of operation recorders; every method is a no-op, override those you need."""

    observes_spikes = True

    def spike_fed_linear(self, linear, spikes, neuron) -> None:
        """``linear`` is about to consume ``spikes`` made by ``neuron`` (`None` for real values)."""

    def spiking_attention(self, attention, query, key, value, weights, allowed) -> None:
        """``attention`` computed ``weights`` ``(T, B, H, Lq, Lk)`` from spike ``query``/``key``/``value``;
        ``allowed`` ``(B, 1, Lq, Lk)`` marks the pairs that may interact."""

    def weight_read(self, kind: str, linears: int, nbytes: int) -> None:
        """The event backend served ``linears`` Linears by ``kind`` (``"gathered"``, ``"int8"``, ``"dense"``),
        reading ``nbytes`` weight bytes."""


class WeightReads(OperationRecorder):
    """Counts the weight bytes and calls of the event backend (`counts` keys: ``calls``, ``gathered_calls``,
    ``int8_calls``, ``gathered_bytes``, ``dense_bytes``); leaves every fast path on."""

    observes_spikes = False

    def __init__(self):
        self.counts = {"gathered_bytes": 0, "dense_bytes": 0, "calls": 0, "gathered_calls": 0, "int8_calls": 0}

    def weight_read(self, kind: str, linears: int, nbytes: int) -> None:
        self.counts["calls"] += linears
        if kind == "gathered":
            self.counts["gathered_calls"] += linears
            self.counts["gathered_bytes"] += nbytes
            return
        if kind == "int8":
            self.counts["int8_calls"] += linears
        self.counts["dense_bytes"] += nbytes

    def __getitem__(self, key: str) -> int:
        return self.counts[key]


@contextmanager
def recording(recorder: OperationRecorder):
    """Register ``recorder`` with the spiking layers for the duration of the block; yields it."""
    if not isinstance(recorder, OperationRecorder):
        raise TypeError(f"recording() takes an OperationRecorder, got {type(recorder).__name__}")
    _RECORDERS.append(recorder)
    try:
        yield recorder
    finally:
        _RECORDERS.remove(recorder)


def active_recorders() -> tuple:
    """The recorders listening now (empty almost always: the check costs one list test)."""
    return tuple(_RECORDERS) if _RECORDERS else ()


def observing_spikes() -> bool:
    """Whether some active recorder must see every neuron's output (fused paths off)."""
    return any(recorder.observes_spikes for recorder in _RECORDERS)
