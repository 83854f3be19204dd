"""Norms on real values, and a norm feeding a neuron as one fused, compiled region.

`normalize_and_fire(norm, neuron, x)` is ``neuron(norm(x))``: for LayerNorm/RMSNorm feeding a parameter-free
neuron no wider than `FUSED_NORM_MAX_WIDTH`, one compiled function whose backward recomputes the norm output
instead of storing it; otherwise, while training with T > 1, a recomputed region that keeps only x
(`spiking_lm.nn.recompute`). `normalize(norm, x, compute_dtype)` is ``norm(x)`` for an x that arrives narrower
than the norm computes (a bf16 GEMM output): widened inside the compiled norm, kept for backward as it came.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .dispatch import AUTO_COMPILE_MIN_NUMEL, run_differentiable
from .functional import integer_lif, lif
from .neurons import IntegerLIFNeuron, LIFNeuron, NormalizedIntegerLIFNeuron
from .recompute import recompute_region
from .recording import observing_spikes

__all__ = [
    "FUSED_NORM_MAX_WIDTH",
    "RMSNorm",
    "build_norm",
    "normalize",
    "normalize_and_fire",
    "rms_norm",
    "split_heads",
]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _normalize(x, weight, None, eps, True)  # F.rms_norm; its weight gradient summed as in `_row_sum`


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm` (same parameters) whose forward and backward are compiled for large inputs: eager RMSNorm
    decomposes into several passes and measured ~3x slower than the compiled one on 2 CPU cores."""

    def __init__(self, normalized_shape: int, eps: float, backend: str = "auto"):
        super().__init__(normalized_shape, eps=eps)
        self.backend = backend

    def forward(self, x):
        return run_differentiable(rms_norm, self.backend, x, self.weight, self.eps)


# Widest norm → neuron pair compiled as one function (docs/design.md: why 1024, an MLP's width, and not 512).
FUSED_NORM_MAX_WIDTH = 1024


def _static_time_and_width(x: torch.Tensor, backend: str) -> torch.Tensor:
    """``x`` with its time and feature dims marked static for `torch.compile`: a compiled norm kernel then
    specializes on T and the width (a few values per model) while batch and length may still turn dynamic.
    Without it, the second width one kernel meets (256 and 1024 in one model) made every later variant dynamic
    in the width, which is slower. Inputs the ``"auto"`` backend runs eagerly (decoding) are left unmarked: the
    marking cost more than the norm."""
    if torch.compiler.is_compiling() or backend == "torch":  # inside a compiled model the whole graph's shapes rule
        return x
    if backend != "auto" or x.numel() >= AUTO_COMPILE_MIN_NUMEL:
        torch._dynamo.mark_static(x, [0, x.dim() - 1])
    return x


# Rows summed together first when a norm's weight gradient sums over rows (see `_row_sum`).
ROW_SUM_BLOCK = 64


def _row_sum(values: torch.Tensor) -> torch.Tensor:
    """Σ over all leading dims of ``(…, D)``, in two levels (blocks of `ROW_SUM_BLOCK` consecutive rows, then the
    blocks). Compiled, one sum down all rows walks each column at a stride of D elements: at D = 1024 (4 KiB)
    every load maps to the same cache set and the sum of a 4096 × 1024 gradient took 3.8 ms instead of 0.7."""
    flat = values.reshape(-1, values.shape[-1])
    if flat.shape[0] % ROW_SUM_BLOCK:
        return flat.sum(0)
    return flat.view(-1, ROW_SUM_BLOCK, flat.shape[-1]).sum(1).sum(0)


class _Affine(torch.autograd.Function):
    """y = x̂ ⊙ w (+ b) over the last dim, its parameter gradients summed by `_row_sum`."""

    @staticmethod
    def forward(ctx, normalized, weight, bias):
        ctx.save_for_backward(normalized, weight)
        ctx.has_bias = bias is not None
        output = normalized * weight
        return output if bias is None else output + bias

    @staticmethod
    def backward(ctx, grad):
        normalized, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_weight = _row_sum(grad * normalized).to(weight.dtype) if needs[1] else None
        grad_bias = _row_sum(grad).to(weight.dtype) if ctx.has_bias and needs[2] else None
        return grad * weight if needs[0] else None, grad_weight, grad_bias


def _normalize(x, weight, bias, eps, is_rms, compute_dtype=None):
    if compute_dtype is not None:  # a bf16 GEMM output widens here, fused into the norm
        x = x.to(compute_dtype)
    width = (x.shape[-1],)
    trains = torch.is_grad_enabled() and weight is not None and weight.requires_grad
    if trains:  # the affine part apart, so that its gradients sum over rows in two levels (`_row_sum`)
        normalized = F.rms_norm(x, width, None, eps) if is_rms else F.layer_norm(x, width, None, None, eps)
        return _Affine.apply(normalized, weight, bias)
    return F.rms_norm(x, width, weight, eps) if is_rms else F.layer_norm(x, width, weight, bias, eps)


def _normalize_and_fire(x, weight, bias, eps, is_rms, fire, options, dtype=None, compute_dtype=None, heads=None):
    membrane = _normalize(x, weight, bias, eps, is_rms, compute_dtype)
    if heads is not None:  # the neuron is elementwise: firing on the heads' layout writes the spikes in it
        membrane = split_heads(membrane, heads)
    if dtype is not None and fire is lif:  # cast per step inside the kernel: the spikes are written once
        return fire(membrane, **options, dtype=dtype)
    spikes = fire(membrane, **options)
    return spikes if dtype is None else spikes.to(dtype)


def split_heads(values: torch.Tensor, heads: int) -> torch.Tensor:
    """``(T, B, L, D)`` → ``(T, B, H, L, D/H)`` (a view)."""
    steps, batch, length, width = values.shape
    return values.view(steps, batch, length, heads, width // heads).transpose(2, 3)


def _fusable_neuron(neuron):
    """The neuron's functional form if it has no parameters and nothing to record, else `None`."""
    if neuron.record_firing_rate or neuron.coding.in_binary_mode:
        return None
    if type(neuron) is LIFNeuron:
        options = {"beta": neuron.beta, "v_threshold": neuron.v_threshold, "v_reset": neuron.v_reset,
                   "surrogate": neuron.surrogate, "detach_reset": neuron.detach_reset, "backend": "torch"}  # fmt: skip
        return lif, options
    if type(neuron) in (IntegerLIFNeuron, NormalizedIntegerLIFNeuron):
        options = {"lower": 0.0, "spike_max": neuron.spike_max, "scale": neuron.spike_scale, "beta": neuron.beta,
                   "detach_reset": neuron.detach_reset, "backend": "torch"}  # fmt: skip
        return integer_lif, options
    return None


def normalize(norm: nn.Module, x: torch.Tensor, compute_dtype: torch.dtype | None = None, backend: str = "auto"):
    """``norm(x)``; with ``compute_dtype``, x arrives in a narrower dtype (a bf16 GEMM output,
    `SpikeLinearFunction`'s ``exact_outputs``) and is widened inside the compiled norm, so that it is kept for
    backward as it came and its gradient leaves in that dtype (eager, the conversion alone cost more than the
    norm)."""
    if compute_dtype is None:
        return norm(x)
    is_rms = isinstance(norm, nn.RMSNorm)
    if not (is_rms or isinstance(norm, nn.LayerNorm)):
        return norm(x.to(compute_dtype))
    bias = None if is_rms else norm.bias
    arguments = (_static_time_and_width(x, backend), norm.weight, bias, norm.eps, is_rms, compute_dtype)
    return run_differentiable(_normalize, backend, *arguments)


def normalize_and_fire(
    norm: nn.Module,
    neuron,
    x: torch.Tensor,
    exact_dtype: torch.dtype | None = None,
    spike_dtype: torch.dtype | None = None,
    compute_dtype: torch.dtype | None = None,
    heads: int | None = None,
):
    """``neuron(norm(x))``, the spikes in ``spike_dtype`` if given (see `low_spike_dtype`); for LayerNorm/RMSNorm
    feeding a parameter-free neuron, one compiled region (forward and backward fused, the norm output recomputed
    rather than stored) when no wider than `FUSED_NORM_MAX_WIDTH`; below the compile threshold the same
    composition runs eagerly. Otherwise, when training with T > 1, a recomputed region that keeps only x (in
    ``exact_dtype`` if x is exact in it). ``compute_dtype``: the dtype the norm computes in, if x arrives in a
    narrower one (a bf16 GEMM output, `SpikeLinearFunction`'s ``exact_outputs``): x is widened inside the region
    or the compiled function, never stored wide. ``heads``: return the spikes split into attention heads,
    ``(T, B, H, L, D/H)``; the compiled function writes them contiguous in that layout (the attention products
    would otherwise copy them into it, forward and backward)."""

    is_rms = isinstance(norm, nn.RMSNorm)
    is_norm = is_rms or isinstance(norm, nn.LayerNorm)
    bias = None if is_rms else getattr(norm, "bias", None)

    def normalized(membrane):
        return normalize(norm, membrane, compute_dtype, neuron.backend)

    def split(spikes):
        return spikes if heads is None else split_heads(spikes, heads)

    fusable = is_norm and neuron.backend != "torch"
    fusable = fusable and x.shape[-1] <= FUSED_NORM_MAX_WIDTH
    form = _fusable_neuron(neuron) if fusable and not observing_spikes() else None
    if form is None and x.shape[0] > 1:  # training keeps only x: the norm output and neuron input recompute

        def parameters():
            return [p for module in (norm, neuron) for p in module.parameters() if p.requires_grad]

        def run(membrane):
            return neuron(normalized(membrane), spike_dtype)

        return split(recompute_region(run, (x,), (exact_dtype,), parameters))
    if form is None:  # T = 1: the neuron keeps a 1-byte mask at most, recomputing would only cost time
        return split(neuron(normalized(x), spike_dtype))
    static = _static_time_and_width(x, neuron.backend)
    fused = (static, norm.weight, bias, norm.eps, is_rms, *form, spike_dtype, compute_dtype, heads)
    return run_differentiable(_normalize_and_fire, neuron.backend, *fused)


def build_norm(config, size: int | None = None, enabled: bool = True) -> nn.Module:
    """``config.norm_type`` (``layernorm``/``rmsnorm``) over ``size`` (default hidden size); Identity if disabled."""
    if not enabled:
        return nn.Identity()
    size = size or config.hidden_size
    if config.norm_type == "rmsnorm":
        return RMSNorm(size, eps=config.layer_norm_eps, backend=config.neuron_backend)
    return nn.LayerNorm(size, eps=config.layer_norm_eps)
