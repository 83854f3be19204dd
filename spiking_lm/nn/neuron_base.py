"""`SpikingNeuron`, the base class of every neuron: forward over time-major input, its `SpikeCoding`, and
firing-rate bookkeeping; plus the argument checks the neurons share.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .dispatch import check_backend
from .execution import WatchedSettings
from .recompute import is_recomputing
from .spike_coding import SpikeCoding

__all__ = ["BINARY_CODING", "SpikingNeuron"]


def _check_number(field: str, value, low: float, high: float = math.inf, low_inclusive: bool = True):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if low_inclusive else value > low) and value <= high
    if not ok:
        bracket = "[" if low_inclusive else "("
        raise ValueError(f"{field} must be a number in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def _check_int(field: str, value, low: int):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")
    return value


BINARY_CODING = SpikeCoding()


class SpikingNeuron(WatchedSettings, nn.Module):
    """Base class: firing-rate bookkeeping and the backend option. Subclasses implement `fire`.

    Args:
        backend (`str`, *optional*, defaults to `"auto"`):
            kernel backend for the LIF family: `"auto"`, `"torch"` (eager) or `"inductor"` (`torch.compile`).
        record_firing_rate (`bool`, *optional*, defaults to `False`):
            accumulate spikes and element-steps on every forward; read them with `firing_rate`.
    """

    def __init__(self, backend: str = "auto", record_firing_rate: bool = False):
        super().__init__()
        self.backend = check_backend(backend)
        self.record_firing_rate = bool(record_firing_rate)
        self.reset_firing_stats()

    def forward(self, x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Spikes of ``x`` ``(T, ...)``; ``dtype`` asks for them in that dtype (bf16 for a consumer that multiplies
        in bf16; the LIF kernels then write it directly), the membrane staying in the dtype of ``x``."""
        if x.dim() < 2:
            raise ValueError(f"{type(self).__name__} expects time-major input [T, ...], got shape {tuple(x.shape)}")
        if dtype is None or dtype == x.dtype:
            spikes = self.fire(x)
        else:
            spikes = self.fire(x, dtype=dtype) if self.fires_in_any_dtype else self.fire(x).to(dtype)
        if self.record_firing_rate and not is_recomputing():  # a backward-pass rerun fires nothing new
            with torch.no_grad():
                count = self.count_spikes(spikes if spikes.dtype.itemsize >= 4 else spikes.float()).double()
                self._spike_total = count if self._spike_total is None else self._spike_total + count
            self._element_steps += spikes.numel() * self.virtual_steps_per_output
        return spikes

    def fire(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    virtual_steps_per_output = 1
    fires_in_any_dtype = False  # True where `fire` takes ``dtype=`` and emits it itself

    @property
    def coding(self) -> SpikeCoding:
        """What this neuron emits (`SpikeCoding`): 0/1 spikes here; the integer and ternary neurons override it."""
        return BINARY_CODING

    def count_spikes(self, spikes: torch.Tensor) -> torch.Tensor:
        """Number of binary spikes represented by ``spikes`` (a 0-d tensor)."""
        return spikes.sum()

    @property
    def firing_rate(self) -> float:
        """Mean spikes per element per (virtual) time step since the last `reset_firing_stats`; NaN if none."""
        if not self._element_steps or self._spike_total is None:
            return float("nan")
        return float(self._spike_total) / self._element_steps

    @property
    def recorded_elements(self) -> int:
        """Element-steps seen while recording (the denominator of `firing_rate`)."""
        return self._element_steps

    def reset_firing_stats(self) -> None:
        self._spike_total = None  # created on the spikes' device at the first recorded call
        self._element_steps = 0
