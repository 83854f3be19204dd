"""Parallel spiking neurons: the membrane is a learned mix of the inputs over the T axis (no recurrence), then a
threshold. ``psn`` mixes all steps, ``masked_psn`` a causal band annealed to full, ``sliding_psn`` a causal
window of k steps.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .functional import masked_psn, psn, sliding_psn
from .neuron_base import SpikingNeuron, _check_int, _check_number
from .surrogate import build_surrogate

__all__ = ["MaskedParallelSpikingNeuron", "ParallelSpikingNeuron", "SlidingParallelSpikingNeuron"]


class ParallelSpikingNeuron(SpikingNeuron):
    """Parallel spiking neuron (``psn``): H = W X + b over the T axis; S = Θ(H). No recurrence over T.

    W ∈ ℝ^{T×T} is initialized like `nn.Linear` (kaiming-uniform, a = √5) and b = −1 (the threshold).

    Args:
        time_steps (`int`, *optional*, defaults to 4): T; the input must have exactly T steps.
        surrogate (`str` or `SurrogateFunction`, *optional*, defaults to `"atan"`): surrogate gradient.
    """

    def __init__(self, time_steps: int = 4, surrogate="atan", backend: str = "auto", record_firing_rate=False):
        super().__init__(backend, record_firing_rate)
        self.time_steps = _check_int("time_steps", time_steps, 1)
        self.surrogate = build_surrogate(surrogate)
        self.weight = nn.Parameter(torch.empty(time_steps, time_steps))
        self.bias = nn.Parameter(torch.full((time_steps,), -1.0))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def _check_steps(self, x):
        if x.shape[0] != self.time_steps:
            raise ValueError(f"{type(self).__name__} was built for time_steps={self.time_steps}, got T={x.shape[0]}")

    def fire(self, x):
        self._check_steps(x)
        return psn(x, self.weight, self.bias, self.surrogate, self.backend)

    def extra_repr(self):
        return f"time_steps={self.time_steps}"


class MaskedParallelSpikingNeuron(ParallelSpikingNeuron):
    """Masked PSN (``masked_psn``): H = (W ⊙ M_k(λ)) X + b, M_k the causal band of order k.

    M_k(λ) = λ M_k + (1 − λ): anneal ``mask_lambda`` from 0 to 1 during training (`set_mask_lambda`); at 1 the
    neuron is causal over T with memory k.

    Args:
        order (`int`, *optional*, defaults to 2): k, in [1, time_steps].
        mask_lambda (`float`, *optional*, defaults to 1.0): λ in [0, 1].
    """

    def __init__(
        self,
        time_steps: int = 4,
        order: int = 2,
        mask_lambda: float = 1.0,
        surrogate="atan",
        backend: str = "auto",
        record_firing_rate: bool = False,
    ):
        super().__init__(time_steps, surrogate, backend, record_firing_rate)
        self.order = _check_int("order", order, 1)
        if order > time_steps:
            raise ValueError(f"order must be <= time_steps={time_steps}, got {order}")
        self.set_mask_lambda(mask_lambda)

    def set_mask_lambda(self, mask_lambda: float) -> None:
        self.mask_lambda = _check_number("mask_lambda", mask_lambda, 0.0, 1.0)

    def fire(self, x):
        self._check_steps(x)
        return masked_psn(x, self.weight, self.bias, self.order, self.mask_lambda, self.surrogate, self.backend)

    def extra_repr(self):
        return f"time_steps={self.time_steps}, order={self.order}, mask_lambda={self.mask_lambda}"


class SlidingParallelSpikingNeuron(SpikingNeuron):
    """Sliding PSN (``sliding_psn``): H[t] = Σ_{i<k} w_i X[t−k+1+i]; S = Θ(H − b). Works for any T.

    Weights start as a LIF-like decay, w_i = β^{k−1−i} with β = 0.5, and b at ``v_threshold``; both learn.

    Args:
        order (`int`, *optional*, defaults to 2): k, the number of taps.
        v_threshold (`float`, *optional*, defaults to 1.0): initial threshold b, > 0.
        surrogate (`str` or `SurrogateFunction`, *optional*, defaults to `"atan"`): surrogate gradient.
    """

    def __init__(
        self, order: int = 2, v_threshold: float = 1.0, surrogate="atan", backend="auto", record_firing_rate=False
    ):
        super().__init__(backend, record_firing_rate)
        self.order = _check_int("order", order, 1)
        self.surrogate = build_surrogate(surrogate)
        decay = 0.5 ** torch.arange(order - 1, -1, -1, dtype=torch.get_default_dtype())
        self.weight = nn.Parameter(decay)
        threshold = _check_number("v_threshold", v_threshold, 0.0, low_inclusive=False)
        self.threshold = nn.Parameter(torch.tensor(threshold))

    def fire(self, x):
        return sliding_psn(x, self.weight, self.threshold, self.surrogate, self.backend)

    def extra_repr(self):
        return f"order={self.order}"
