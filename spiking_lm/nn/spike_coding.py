"""Integer spike counts ↔ binary spike trains (the "integer training, spike inference" switch).

An integer count s ∈ {0..D} at time step t unfolds into D binary virtual steps b[t·D + j] = (j < s), so
Σ_j b[t·D + j] = s. Every consumer of spikes is linear, hence W·s = Σ_j W·b[t·D + j]: the unfolded run is
exactly the integer run, computed with binary spikes only.
"""

from __future__ import annotations

import torch

__all__ = ["binary_to_integer", "integer_to_binary"]


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
