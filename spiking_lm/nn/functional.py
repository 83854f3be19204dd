"""Stateless functional twins of the neurons in `neurons.py`.

Every function takes time-major input ``(T, ...)`` and returns spikes of the same shape. Nothing persists
between calls: the membrane starts at zero on every call.
"""

from __future__ import annotations

import functools

import torch

from .dispatch import AUTO_COMPILE_MIN_NUMEL, check_backend
from .kernels import MultiStepIntegerLIF, MultiStepLIF, MultiStepTernaryLIF, ParallelFire
from .native import integer_fire, lif_steps
from .surrogate import SurrogateFunction, build_surrogate

__all__ = [
    "asn",
    "band_mask",
    "ceil_ste",
    "ilif",
    "integer_lif",
    "lif",
    "masked_psn",
    "nasn",
    "nilif",
    "psn",
    "round_ste",
    "sliding_psn",
    "tlif",
]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def ceil_ste(x: torch.Tensor) -> torch.Tensor:
    """ceil(x) forward, identity backward."""
    return x + (torch.ceil(x) - x).detach()


def lif(
    x: torch.Tensor,
    beta: float = 0.5,
    v_threshold: float = 1.0,
    v_reset: float | None = None,
    surrogate: str | SurrogateFunction = "atan",
    detach_reset: bool = False,
    backend: str = "auto",
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Multi-step LIF: U[t] = H[t-1] + X[t]; S[t] = Θ(U[t] − V_th); H[t] = β(U[t] − S[t]V_th) (soft reset),
    or H[t] = β(U[t](1 − S[t]) + S[t]V_reset) when ``v_reset`` is given (hard reset). Spikes are returned in
    ``dtype`` (default: that of ``x``); the membrane is computed in the dtype of ``x``."""
    surrogate = build_surrogate(surrogate)
    check_backend(backend)
    v_reset = None if v_reset is None else float(v_reset)
    if not (torch.is_grad_enabled() and x.requires_grad):
        if x.shape[0] == 1:  # inference at T = 1: the membrane starts at 0, nothing to carry
            return (x >= v_threshold).to(dtype or x.dtype)
        if backend == "torch" or torch.compiler.is_compiling() or x.numel() < AUTO_COMPILE_MIN_NUMEL:
            spikes = _native_lif(x, float(beta), float(v_threshold), v_reset)
            if spikes is None:
                spikes = _lif_inference(x, float(beta), float(v_threshold), v_reset)
            return spikes if dtype is None else spikes.to(dtype)
    return MultiStepLIF.apply(
        x,
        float(beta),
        float(v_threshold),
        v_reset,
        bool(detach_reset),
        surrogate.name,
        surrogate.param,
        backend,
        None if dtype == x.dtype else dtype,
    )


def _native_lif(x: torch.Tensor, beta: float, v_threshold: float, v_reset: float | None) -> torch.Tensor | None:
    """`_lif_inference` in one native call (`spiking_lm.nn.native.lif_steps`, the same fp32 operations) for small
    fp32 CPU inputs with a soft reset, where the torch recurrence's four operations per step cost more than the
    arithmetic (decoding); `None` where it does not apply."""
    if v_reset is not None or torch.compiler.is_compiling() or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    if x.numel() >= AUTO_COMPILE_MIN_NUMEL:
        return None
    return lif_steps(x, beta, v_threshold)


def _lif_inference(x: torch.Tensor, beta: float, v_threshold: float, v_reset: float | None) -> torch.Tensor:
    """The LIF recurrence without autograd, for small inputs (decoding): written in place into one output,
    four ops per step, bitwise equal to `kernels.lif_forward` (the same operations in the same order). The spikes
    are contiguous whatever the layout of ``x`` (a heads view): each step's slice is then a valid ``out=``."""
    spikes = torch.empty_like(x, memory_format=torch.contiguous_format)
    membrane = None
    for t in range(x.shape[0]):
        potential = x[t] if membrane is None else membrane.add_(x[t])
        torch.ge(potential, v_threshold, out=spikes[t])
        if t + 1 < x.shape[0]:
            if v_reset is None:
                membrane = torch.sub(potential, spikes[t], alpha=v_threshold).mul_(beta)
            else:
                membrane = torch.where(spikes[t].bool(), v_reset, potential).mul_(beta)
    return spikes


def integer_lif(
    x: torch.Tensor,
    lower: float | torch.Tensor = 0.0,
    spike_max: int = 4,
    scale: float = 1.0,
    beta: float = 0.5,
    detach_reset: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """The integer LIF family: q[t] = clip(round(U[t]), lo, lo + D); S[t] = scale·q[t]; H[t] = β(U[t] − q[t]).

    Straight-through gradient: dS/dU = scale on lo ≤ U ≤ lo + D, 0 outside; a tensor ``lower`` gets
    dq/dlo = 1 outside that window.
    """
    check_backend(backend)
    if x.shape[0] == 1 and not (torch.is_grad_enabled() and (x.requires_grad or torch.is_tensor(lower))):
        # Inference at T = 1 has no membrane to carry: two elementwise ops, no autograd or kernel dispatch.
        spikes = _native_integer_fire(x, lower, spike_max, scale)
        if spikes is not None:
            return spikes
        return torch.clamp(torch.round(x), lower, lower + int(spike_max)) * float(scale)
    return MultiStepIntegerLIF.apply(x, lower, int(spike_max), float(scale), float(beta), bool(detach_reset), backend)


def _native_integer_fire(x: torch.Tensor, lower, spike_max: int, scale: float) -> torch.Tensor | None:
    """The T = 1 inference of `integer_lif` in one native call (`spiking_lm.nn.native.integer_fire`, the same fp32
    operations) for small fp32 CPU inputs (decoding: three torch operations cost more than the arithmetic); `None`
    where it does not apply."""
    if torch.compiler.is_compiling() or x.dtype != torch.float32 or x.device.type != "cpu":
        return None
    if x.numel() >= AUTO_COMPILE_MIN_NUMEL:
        return None
    lower = float(lower)  # a detached 0-d tensor for the adaptive-shift neurons: an integer, exact in fp32
    return integer_fire(x, lower, lower + int(spike_max), float(scale))


def ilif(x: torch.Tensor, spike_max: int = 4, beta: float = 0.5, detach_reset: bool = False, backend: str = "auto"):
    """Integer LIF: S = clip(round(U), 0, D), values {0..D}."""
    return integer_lif(x, 0.0, spike_max, 1.0, beta, detach_reset, backend)


def nilif(x: torch.Tensor, spike_max: int = 4, beta: float = 0.5, detach_reset: bool = False, backend: str = "auto"):
    """Normalized integer LIF: S = clip(round(U), 0, D) / D, values {0, 1/D, .., 1}."""
    return integer_lif(x, 0.0, spike_max, 1.0 / spike_max, beta, detach_reset, backend)


def asn(
    x: torch.Tensor,
    alpha: torch.Tensor,
    spike_max: int = 4,
    beta: float = 0.5,
    detach_reset: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Adaptive-shift neuron: S = clip(round(U), ⌈α⌉, ⌈α⌉ + D), α a learnable scalar."""
    return integer_lif(x, ceil_ste(alpha), spike_max, 1.0, beta, detach_reset, backend)


def nasn(
    x: torch.Tensor,
    alpha: torch.Tensor,
    spike_max: int = 4,
    beta: float = 0.5,
    detach_reset: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Normalized adaptive-shift neuron: S = clip(round(U), ⌈α⌉, ⌈α⌉ + D) / D; H = β(U − S·D)."""
    return integer_lif(x, ceil_ste(alpha), spike_max, 1.0 / spike_max, beta, detach_reset, backend)


def tlif(
    x: torch.Tensor, scale: torch.Tensor, beta: float = 0.5, detach_reset: bool = False, backend: str = "auto"
) -> torch.Tensor:
    """Ternary (bi-spiking) LIF: S[t] = a[t]·clip(round(U[t]/a[t]), −1, 1), values {−a, 0, a}.

    ``scale`` holds a[t] per time step (shape ``(T,)``) or one shared value (shape ``(1,)``). Gradient: STE
    where |U/a| ≤ 1; a gets the LSQ-style gradient of the same expression, q − U/a. Forward and backward run as
    one compiled pass each (`MultiStepTernaryLIF`) on large inputs.
    """
    if scale.dim() != 1 or scale.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"tlif scale must have shape (1,) or (T={x.shape[0]},), got {tuple(scale.shape)}")
    check_backend(backend)
    return MultiStepTernaryLIF.apply(x, scale, float(beta), bool(detach_reset), backend)


def psn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    surrogate: str | SurrogateFunction = "atan",
    backend: str = "auto",
) -> torch.Tensor:
    """Parallel spiking neuron: H = W X + b over the T axis (W ∈ ℝ^{T×T}, b ∈ ℝ^T); S = Θ(H)."""
    steps = x.shape[0]
    if weight.shape != (steps, steps) or bias.shape != (steps,):
        raise ValueError(
            f"psn expects weight ({steps}, {steps}) and bias ({steps},) for T={steps}, "
            f"got {tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    return _parallel_fire(x, weight, bias, surrogate, backend)


def _parallel_fire(x, matrix, offset, surrogate, backend) -> torch.Tensor:
    """Θ(A X + c) over T with the surrogate gradient: one fused pass each way (`ParallelFire`)."""
    surrogate = build_surrogate(surrogate)
    check_backend(backend)
    return ParallelFire.apply(x, matrix.to(x.dtype), offset.to(x.dtype), surrogate.name, surrogate.param, backend)


def band_mask(time_steps: int, order: int, device=None, dtype=None) -> torch.Tensor:
    """M_k: ones where 0 ≤ i − j < k (each step sees itself and the k − 1 steps before it)."""
    index = torch.arange(time_steps, device=device)
    lag = index.unsqueeze(1) - index.unsqueeze(0)
    return ((lag >= 0) & (lag < order)).to(dtype or torch.get_default_dtype())


@functools.lru_cache(maxsize=64)
def _band_factor(time_steps: int, order: int, mask_lambda: float, device, dtype) -> torch.Tensor:
    """M_k(λ) = λ M_k + (1 − λ), cached: rebuilding it took a handful of tiny ops per call. Built outside inference
    mode, so that a factor first made under `torch.inference_mode` can later be saved for backward."""
    with torch.inference_mode(False):
        return mask_lambda * band_mask(time_steps, order, device, dtype) + (1 - mask_lambda)


def masked_psn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    order: int,
    mask_lambda: float = 1.0,
    surrogate: str | SurrogateFunction = "atan",
    backend: str = "auto",
) -> torch.Tensor:
    """Masked PSN: H = (W ⊙ M_k(λ)) X + b with M_k(λ) = λ M_k + (1 − λ); λ is annealed from 0 to 1."""
    factor = _band_factor(x.shape[0], int(order), float(mask_lambda), weight.device, weight.dtype)
    return psn(x, weight * factor, bias, surrogate, backend)


@functools.lru_cache(maxsize=64)
def _tap_selector(time_steps: int, order: int, device, dtype) -> torch.Tensor:
    """One-hot ``(T, T, k)``: entry [t, j, i] is 1 where row t reads X[j] through tap i (j = t − k + 1 + i)."""
    with torch.inference_mode(False):  # as in `_band_factor`
        index = torch.arange(time_steps, device=device)
        tap = index.unsqueeze(0) - index.unsqueeze(1) + order - 1
        valid = ((tap >= 0) & (tap < order)).unsqueeze(-1).to(dtype)
        return torch.nn.functional.one_hot(tap.clamp(0, order - 1), order).to(dtype) * valid


def sliding_psn(
    x: torch.Tensor,
    weight: torch.Tensor,
    threshold: torch.Tensor,
    surrogate: str | SurrogateFunction = "atan",
    backend: str = "auto",
) -> torch.Tensor:
    """Sliding PSN: H[t] = Σ_{i<k} w_i X[t − k + 1 + i] (causal, zero-padded); S = Θ(H − b)."""
    steps, order = x.shape[0], weight.shape[0]
    toeplitz = _tap_selector(steps, order, weight.device, weight.dtype) @ weight  # one op each way under autograd
    return _parallel_fire(x, toeplitz, -threshold.expand(steps), surrogate, backend)
