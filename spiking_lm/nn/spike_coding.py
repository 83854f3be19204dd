"""How a neuron's output values relate to binary spikes, and integer counts ↔ binary spike trains.

Every neuron describes its output with one `SpikeCoding`: values = scale · k + offset with k the number of binary
spikes per element and step (0 ≤ k ≤ max). Consumers (spike-fed Linears, attention, the K/V cache, energy
counting, distillation) read that object instead of probing the neuron.

An integer count s ∈ {0..D} at time step t unfolds into D binary virtual steps b[t·D + j] = (j < s), so
Σ_j b[t·D + j] = s. Every consumer of spikes is linear, hence W·s = Σ_j W·b[t·D + j]: the unfolded run is
exactly the integer run, computed with binary spikes only.

This module imports only `torch` so that it can travel with a saved model's code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["REAL_VALUES", "SpikeCoding", "binary_to_integer", "coding_of", "integer_to_binary"]

SPIKE_MODES = ("integer", "binary")


@dataclass(frozen=True)
class SpikeCoding:
    """What a neuron emits: values ``scale · k + offset`` with integer spike counts ``0 ≤ k ≤ max``.

    Args:
        scale (`float`): the value of one binary spike (1, or 1/D for the normalized integer neurons).
        offset (`float` or 0-d `torch.Tensor`): a constant added to every element (⌈α⌉·scale for the
            adaptive-shift neurons, a detached tensor; 0 otherwise).
        max (`int`): the most spikes one element emits in one step (D for the integer family, 1 for binary).
        binary (`bool`): the values are 0/1 spikes (``lif`` and the parallel spiking neurons).
        mode (`str`): ``"integer"`` (one output step per time step) or ``"binary"`` (every count unfolded into
            ``max`` binary virtual steps, `integer_to_binary`).
        counts (`bool`): the values really are ``scale · k + offset`` with integer k; `False` for ternary spikes
            with learned per-step scales (and for real values).
    """

    scale: float = 1.0
    offset: float | torch.Tensor = 0.0
    max: int = 1
    binary: bool = True
    mode: str = "integer"
    counts: bool = True

    @property
    def in_binary_mode(self) -> bool:
        """Whether the neuron emits binary virtual steps (``max`` output rows per time step)."""
        return self.mode == "binary"

    @property
    def zero_one(self) -> bool:
        """Whether the values are 0/1 spikes: binary, unit 1, no offset."""
        return self.binary and self.counts and self.max == 1 and self.scale == 1 and not self.has_offset

    @property
    def has_offset(self) -> bool:
        return torch.is_tensor(self.offset) or self.offset != 0

    @property
    def unit(self) -> float | None:
        """u with values − offset = u·k for int8 counts 0 ≤ k ≤ 127, else `None` (ternary, counts over 127)."""
        if not self.counts or self.max > 127:
            return None
        return float(self.scale)

    @property
    def linear(self) -> tuple[float, float] | None:
        """``(scale, offset)`` as floats when the counts fit a uint8 (k ≤ 255), else `None`."""
        if not self.counts or self.max > 255:
            return None
        offset = float(self.offset) if torch.is_tensor(self.offset) else float(self.offset)
        return float(self.scale), offset

    @property
    def full_scale(self) -> float:
        """The largest value above the offset, ``max · scale``: divides a mean value into a firing rate."""
        return self.max * self.scale

    def values(self, spikes: torch.Tensor) -> torch.Tensor:
        """The output in its own units, ``(T, ...)``: a binary train is folded back into counts."""
        if not self.in_binary_mode:
            return spikes
        return binary_to_integer(spikes, self.max) * self.scale + self.offset


REAL_VALUES = SpikeCoding(binary=False, counts=False)
"""The coding of a tensor no neuron made (embeddings, real-valued context)."""


def coding_of(neuron) -> SpikeCoding:
    """``neuron.coding``, or `REAL_VALUES` for ``None`` (an input no neuron produced)."""
    return REAL_VALUES if neuron is None else neuron.coding


def integer_to_binary(counts: torch.Tensor, spike_max: int) -> torch.Tensor:
    """Unfold integer counts ``(T, ...)`` in ``{0..spike_max}`` into a 0/1 train ``(T * spike_max, ...)``.

    Rows ``t*spike_max … (t+1)*spike_max - 1`` are the virtual steps of step t; they sum to ``counts[t]``.
    The result has the dtype of ``counts``.

    Raises:
        ValueError: ``spike_max < 1``, or counts that are not integers in ``[0, spike_max]``.
    """
    if not isinstance(spike_max, int) or spike_max < 1:
        raise ValueError(f"spike_max must be an integer >= 1, got {spike_max!r}")
    if counts.dim() < 1:
        raise ValueError("counts must be time-major [T, ...], got a 0-d tensor")
    if counts.is_floating_point() and not torch.isfinite(counts).all():
        raise ValueError("counts hold NaN or inf (a non-finite neuron input): binary spikes cannot represent them")
    if counts.numel() and (counts.min() < 0 or counts.max() > spike_max or not torch.equal(counts, counts.round())):
        raise ValueError(f"counts must be integers in [0, {spike_max}] to unfold into binary spikes")
    steps = torch.arange(spike_max, device=counts.device).view(1, spike_max, *([1] * (counts.dim() - 1)))
    train = (counts.unsqueeze(1) > steps).to(counts.dtype)  # (T, D, ...)
    return train.reshape(counts.shape[0] * spike_max, *counts.shape[1:])


def binary_to_integer(train: torch.Tensor, spike_max: int) -> torch.Tensor:
    """Fold a binary train ``(T * spike_max, ...)`` back into counts ``(T, ...)`` by summing each group.

    Raises:
        ValueError: ``spike_max < 1`` or a first dimension that is not a multiple of ``spike_max``.
    """
    if not isinstance(spike_max, int) or spike_max < 1:
        raise ValueError(f"spike_max must be an integer >= 1, got {spike_max!r}")
    if train.dim() < 1 or train.shape[0] % spike_max:
        raise ValueError(f"the first dimension of a binary train must be a multiple of spike_max={spike_max}")
    return train.reshape(train.shape[0] // spike_max, spike_max, *train.shape[1:]).sum(1)
