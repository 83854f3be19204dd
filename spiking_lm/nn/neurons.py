"""Spiking neurons as `nn.Module`s, selectable by name.

All neurons share one constructor vocabulary (``beta``, ``v_threshold``, ``v_reset``, ``surrogate``,
``detach_reset``, ``spike_max``, ``time_steps``, ``backend``, ``record_firing_rate``), take time-major input
``(T, ...)`` and return spikes of the same shape (integer neurons in binary mode return ``(T·D, ...)``). The
membrane starts at zero on every call: HF ``generate`` calls ``forward`` once per token, so state carried
across calls would leak between tokens.

Use `build_neuron(name, **kwargs)`; `NEURONS` maps every name to its class. This module holds the LIF family
(binary, integer, adaptive-shift, ternary) and the registry; the base class is in `neuron_base`, the parallel
spiking neurons in `parallel_neurons`.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from .attention import SpikingAttentionProducts
from .functional import ceil_ste, integer_lif, lif, tlif
from .kernels import MaskedMultiStepLIF
from .neuron_base import SpikingNeuron, _check_int, _check_number
from .parallel_neurons import MaskedParallelSpikingNeuron, ParallelSpikingNeuron, SlidingParallelSpikingNeuron
from .spike_coding import SPIKE_MODES, SpikeCoding, integer_to_binary
from .surrogate import build_surrogate

__all__ = [
    "COMMON_OPTIONS",
    "NEURONS",
    "ASNNeuron",
    "IntegerLIFNeuron",
    "LIFNeuron",
    "MaskedParallelSpikingNeuron",
    "NormalizedASNNeuron",
    "NormalizedIntegerLIFNeuron",
    "ParallelSpikingNeuron",
    "SlidingParallelSpikingNeuron",
    "SpikingNeuron",
    "TernaryLIFNeuron",
    "build_neuron",
    "neuron_from_config",
]


class LIFNeuron(SpikingNeuron):
    """Leaky integrate-and-fire: U[t] = H[t−1] + X[t]; S[t] = Θ(U[t] − V_th); H[t] = β(U[t] − S[t]V_th).

    Args:
        beta (`float`, *optional*, defaults to 0.5): membrane decay β = 1 − 1/τ, in [0, 1].
        v_threshold (`float`, *optional*, defaults to 1.0): firing threshold, > 0.
        v_reset (`float`, *optional*): hard reset to this value; `None` (default) is the soft reset above.
        surrogate (`str` or `SurrogateFunction`, *optional*, defaults to `"atan"`): surrogate gradient.
        detach_reset (`bool`, *optional*, defaults to `False`): no gradient through the reset.
    """

    def __init__(
        self,
        beta: float = 0.5,
        v_threshold: float = 1.0,
        v_reset: float | None = None,
        surrogate="atan",
        detach_reset: bool = False,
        backend: str = "auto",
        record_firing_rate: bool = False,
    ):
        super().__init__(backend, record_firing_rate)
        self.beta = _check_number("beta", beta, 0.0, 1.0)
        self.v_threshold = _check_number("v_threshold", v_threshold, 0.0, low_inclusive=False)
        self.v_reset = None if v_reset is None else _check_number("v_reset", v_reset, -math.inf, v_threshold)
        self.surrogate = build_surrogate(surrogate)
        self.detach_reset = bool(detach_reset)

    fires_in_any_dtype = True

    def fire(self, x, dtype=None):
        options = (self.beta, self.v_threshold, self.v_reset, self.surrogate, self.detach_reset, self.backend)
        return lif(x, *options, dtype=dtype)

    def fire_masked(self, scores: torch.Tensor, allowed: torch.Tensor, scale: float, dtype: torch.dtype):
        """``self(scale · (scores ⊙ allowed))`` as ``dtype`` spikes, from low-precision ``scores`` (SFSA's bf16
        overlap counts while training): one fused kernel that widens, masks, scales and fires, and keeps only
        ``scores`` for backward; the same values and gradients as the composition, which runs when firing rates
        are recorded or nothing needs a gradient."""
        if self.record_firing_rate or not (torch.is_grad_enabled() and scores.requires_grad):
            return self(scores.float() * allowed * scale, dtype)
        surrogate = self.surrogate
        return MaskedMultiStepLIF.apply(
            scores, allowed, float(scale), self.beta, self.v_threshold, self.v_reset, self.detach_reset,
            surrogate.name, surrogate.param, dtype, self.backend,
        )  # fmt: skip

    def fire_masked_products(self, query, key, value, allowed, scale: float, dtype: torch.dtype):
        """SFSA's ``(A V, A)`` with A = `fire_masked` (Q Kᵀ, allowed, scale) for 0/1 ``query``, ``key`` and
        ``value`` of ``dtype`` while training: `SpikingAttentionProducts`, the values and gradients of the
        composition with Q, K, V and the overlap counts kept as uint8."""
        surrogate = self.surrogate
        return SpikingAttentionProducts.apply(
            query, key, value, allowed, float(scale), self.beta, self.v_threshold, self.v_reset, self.detach_reset,
            surrogate.name, surrogate.param, dtype, self.backend,
        )  # fmt: skip

    def extra_repr(self):
        reset = "soft" if self.v_reset is None else f"hard to {self.v_reset}"
        return f"beta={self.beta}, v_threshold={self.v_threshold}, reset={reset}, backend={self.backend}"


class IntegerLIFNeuron(SpikingNeuron):
    """Integer LIF (``ilif``): S[t] = clip(round(U[t]), 0, D); H[t] = β(U[t] − S[t]). Values {0..D}.

    Trains with integer spikes (straight-through gradient on [0, D]); `set_spike_mode("binary")` unfolds every
    count into D binary virtual steps, output ``(T·D, ...)``, exactly equivalent for any linear consumer:
    W·S = `spike_scale`·Σ_j W·b_j + W·`spike_offset`.

    Args:
        spike_max (`int`, *optional*, defaults to 4): D, the largest count per step, >= 1.
        beta (`float`, *optional*, defaults to 0.5): membrane decay, in [0, 1].
        detach_reset (`bool`, *optional*, defaults to `False`): no gradient through the reset.
    """

    normalized = False

    def __init__(
        self,
        spike_max: int = 4,
        beta: float = 0.5,
        detach_reset: bool = False,
        backend: str = "auto",
        record_firing_rate: bool = False,
    ):
        super().__init__(backend, record_firing_rate)
        self.spike_max = _check_int("spike_max", spike_max, 1)
        self.beta = _check_number("beta", beta, 0.0, 1.0)
        self.detach_reset = bool(detach_reset)
        self.spike_mode = "integer"

    def set_spike_mode(self, mode: str) -> None:
        """``"integer"`` (training; one step per count) or ``"binary"`` (inference; D virtual 0/1 steps)."""
        if mode not in SPIKE_MODES:
            raise ValueError(f"spike mode must be one of {SPIKE_MODES}, got {mode!r}")
        self.spike_mode = mode

    def lower_bound(self):
        """The smallest count, lo: 0 here, ⌈α⌉ for the adaptive-shift neurons (a tensor with a gradient)."""
        return 0.0

    @property
    def spike_scale(self) -> float:
        """Value of one binary spike in the units of this neuron's integer output (1, or 1/D if normalized)."""
        return 1.0 / self.spike_max if self.normalized else 1.0

    @property
    def spike_offset(self):
        """Constant added to every element of the integer output: S = scale·Σ_j b_j + offset."""
        lower = self.lower_bound()
        lower = lower.detach() if torch.is_tensor(lower) else lower
        return lower * self.spike_scale

    @property
    def coding(self) -> SpikeCoding:
        # read on every spike-fed product: built once per spike mode and D (the adaptive-shift neurons, whose
        # offset follows a learned α, build theirs each time)
        cached = self.__dict__.get("_coding")
        if cached is None or cached.mode != self.spike_mode or cached.max != self.spike_max:
            cached = SpikeCoding(self.spike_scale, self.spike_offset, self.spike_max, False, self.spike_mode)
            self.__dict__["_coding"] = cached
        return cached

    @property
    def virtual_steps_per_output(self) -> int:
        return 1 if self.spike_mode == "binary" else self.spike_max

    def count_spikes(self, spikes):
        if self.spike_mode == "binary":
            return spikes.sum()
        return (spikes / self.spike_scale).sum() - self.spike_offset / self.spike_scale * spikes.numel()

    def fire(self, x):
        lower = self.lower_bound()
        if self.spike_mode == "integer":
            return integer_lif(x, lower, self.spike_max, self.spike_scale, self.beta, self.detach_reset, self.backend)
        with torch.no_grad():
            counts = integer_lif(x, lower, self.spike_max, 1.0, self.beta, self.detach_reset, self.backend)
            return integer_to_binary(counts - lower, self.spike_max)

    def extra_repr(self):
        return f"spike_max={self.spike_max}, beta={self.beta}, spike_mode={self.spike_mode}, backend={self.backend}"


class NormalizedIntegerLIFNeuron(IntegerLIFNeuron):
    """Normalized integer LIF (``nilif``): S = clip(round(U), 0, D)/D, values {0, 1/D, .., 1}; H = β(U − S·D)."""

    normalized = True


class ASNNeuron(IntegerLIFNeuron):
    """Adaptive-shift neuron (``asn``): S = clip(round(U), ⌈α⌉, ⌈α⌉ + D), α a learnable scalar per layer.

    dS/dU = 1 inside the window, dS/dα = 1 outside it. In binary mode the output is the count above ⌈α⌉;
    fold W·`spike_offset` into the next layer's bias.

    Args:
        alpha (`float`, *optional*, defaults to 0.0): initial shift α.
    """

    def __init__(
        self,
        spike_max: int = 4,
        beta: float = 0.5,
        detach_reset: bool = False,
        alpha: float = 0.0,
        backend: str = "auto",
        record_firing_rate: bool = False,
    ):
        super().__init__(spike_max, beta, detach_reset, backend, record_firing_rate)
        self.alpha = nn.Parameter(torch.tensor(_check_number("alpha", alpha, -math.inf)))

    @property
    def coding(self) -> SpikeCoding:
        return SpikeCoding(self.spike_scale, self.spike_offset, self.spike_max, False, self.spike_mode)

    def lower_bound(self):
        return ceil_ste(self.alpha)


class NormalizedASNNeuron(ASNNeuron):
    """Normalized adaptive-shift neuron (``nasn``): S = clip(round(U), ⌈α⌉, ⌈α⌉ + D)/D; H = β(U − S·D)."""

    normalized = True


class TernaryLIFNeuron(SpikingNeuron):
    """Ternary bi-spiking LIF (``tlif``): S[t] = a·clip(round(U[t]/a), −1, 1), values {−a, 0, a}.

    The scale a is learnable, one per time step when ``time_steps`` is given (else one shared), and is
    initialized on the first forward to 2·mean|U[t]|.

    Args:
        time_steps (`int`, *optional*): T, for one scale per step.
        beta (`float`, *optional*, defaults to 0.5): membrane decay, in [0, 1].
        detach_reset (`bool`, *optional*, defaults to `False`): no gradient through the reset.
    """

    coding = SpikeCoding(binary=False, counts=False)  # {−a, 0, a} with learned a: no integer counts

    def __init__(
        self,
        time_steps: int | None = None,
        beta: float = 0.5,
        detach_reset: bool = False,
        backend: str = "auto",
        record_firing_rate: bool = False,
    ):
        super().__init__(backend, record_firing_rate)
        self.time_steps = None if time_steps is None else _check_int("time_steps", time_steps, 1)
        self.beta = _check_number("beta", beta, 0.0, 1.0)
        self.detach_reset = bool(detach_reset)
        self.scale = nn.Parameter(torch.ones(time_steps or 1))
        self.register_buffer("scale_initialized", torch.tensor(False))

    @torch.no_grad()
    def _initialize_scale(self, x: torch.Tensor) -> None:
        # The scale must follow the membrane it quantizes, which depends on earlier steps' spikes.
        membrane = torch.zeros_like(x[0])
        for t in range(x.shape[0] if self.scale.numel() > 1 else 1):
            potential = membrane + x[t]
            self.scale[t] = (2 * potential.abs().mean()).clamp_min(1e-6)
            spike = self.scale[t] * torch.clamp(torch.round(potential / self.scale[t]), -1, 1)
            membrane = self.beta * (potential - spike)
        self.scale_initialized.fill_(True)

    def fire(self, x):
        if self.scale.numel() > 1 and x.shape[0] != self.scale.numel():
            raise ValueError(f"tlif was built for time_steps={self.scale.numel()}, got input with T={x.shape[0]}")
        if not bool(self.scale_initialized):
            self._initialize_scale(x)
        return tlif(x, self.scale, self.beta, self.detach_reset, self.backend)

    def count_spikes(self, spikes):
        return (spikes != 0).sum()


NEURONS: dict[str, type[SpikingNeuron]] = {
    "lif": LIFNeuron,
    "ilif": IntegerLIFNeuron,
    "nilif": NormalizedIntegerLIFNeuron,
    "asn": ASNNeuron,
    "nasn": NormalizedASNNeuron,
    "tlif": TernaryLIFNeuron,
    "psn": ParallelSpikingNeuron,
    "masked_psn": MaskedParallelSpikingNeuron,
    "sliding_psn": SlidingParallelSpikingNeuron,
}

COMMON_OPTIONS = frozenset(
    {"beta", "v_threshold", "v_reset", "surrogate", "detach_reset", "spike_max", "time_steps", "backend"}
)


def neuron_options(name: str) -> frozenset[str]:
    """Keyword arguments accepted by neuron ``name``."""
    return frozenset(inspect.signature(NEURONS[name].__init__).parameters) - {"self"}


def build_neuron(name: str, *, strict: bool = True, **kwargs) -> SpikingNeuron:
    """Build the neuron registered as ``name`` (see `NEURONS`).

    Args:
        name (`str`): one of ``lif, ilif, nilif, asn, nasn, tlif, psn, masked_psn, sliding_psn``.
        strict (`bool`, *optional*, defaults to `True`): if `False`, options of the common vocabulary
            (`COMMON_OPTIONS`) that this neuron does not use are dropped, so a model can pass one set of options
            to whichever neuron its config names. Unknown options always raise.
        **kwargs: the neuron's constructor arguments.

    Raises:
        ValueError: unknown name (the message lists the valid ones), unknown option, or a bad value.
    """
    if name not in NEURONS:
        raise ValueError(f"unknown neuron {name!r}; valid names: {', '.join(NEURONS)}")
    accepted = neuron_options(name)
    if not strict:
        kwargs = {key: value for key, value in kwargs.items() if key in accepted or key not in COMMON_OPTIONS}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"neuron {name!r} got unknown option(s) {unknown}; it accepts {sorted(accepted)}")
    return NEURONS[name](**kwargs)


def neuron_from_config(config, **overrides) -> SpikingNeuron:
    """A fresh neuron of ``config.neuron_type`` with the config's shared options (overridable)."""
    options = {
        "beta": config.beta,
        "v_threshold": config.v_threshold,
        "surrogate": config.surrogate,
        "detach_reset": config.detach_reset,
        "spike_max": config.spike_max,
        "time_steps": config.time_steps,
        "backend": config.neuron_backend,
    }
    neuron_type = overrides.pop("neuron_type", config.neuron_type)
    options.update(overrides)
    return build_neuron(neuron_type, strict=False, **options)
