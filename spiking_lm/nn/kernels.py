"""Fused multi-step kernels for the LIF family, with hand-written backward passes.

Each kernel is a plain function over a time-major tensor ``(T, M)`` (M = everything after T, flattened).
The same Python function is the reference implementation (backend ``"torch"``) and, compiled by
`torch.compile` (`spiking_lm.nn.dispatch`), the fast one (backend ``"inductor"``): the loop over T unrolls and
every step fuses into one pass over memory, which is what makes a LIF as cheap as a GELU.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import torch

from .dispatch import as_graph_inputs, run_kernel
from .surrogate import surrogate_derivative

# ----------------------------------------------------------------------------------------------------------
# LIF: U[t] = H[t-1] + X[t];  S[t] = Θ(U[t] - V_th);  H[t] = β (U[t] - S[t] V_th)  (soft reset)
#                                                     H[t] = β (U[t](1 - S[t]) + S[t] V_reset)  (hard reset)
# ----------------------------------------------------------------------------------------------------------


def lif_scan(x: torch.Tensor, beta, v_threshold, v_reset):
    """Run the recurrence; returns the per-step lists ``(spikes, potentials)``."""
    membrane = torch.zeros_like(x[0])
    spikes, potentials = [], []
    for t in range(x.shape[0]):
        potential = membrane + x[t]
        spike = (potential >= v_threshold).to(x.dtype)
        if v_reset is None:
            membrane = beta * (potential - spike * v_threshold)
        else:
            membrane = beta * (potential * (1 - spike) + spike * v_reset)
        spikes.append(spike)
        potentials.append(potential)
    return spikes, potentials


def lif_forward(x: torch.Tensor, beta, v_threshold, v_reset, dtype=None):
    """Spikes ``(T, M)``, in ``dtype`` if given (bf16 for a consumer that multiplies in bf16: 0/1 are exact and
    the compiled kernel writes half the bytes). Only the input is kept for backward: writing potentials costs
    more than recomputing."""
    spikes, _ = lif_scan(x, beta, v_threshold, v_reset)
    if dtype is None:
        return torch.stack(spikes)
    return torch.stack([spike.to(dtype) for spike in spikes])  # cast per step: inductor writes bf16 at once


def lif_backward(grad_spikes, x, beta, v_threshold, v_reset, detach_reset: bool, surrogate: str, surrogate_param):
    """Backpropagation through time for `lif_forward`, recomputing U from X; returns dL/dX, ``(T, M)``."""
    options = (beta, v_threshold, v_reset, detach_reset, surrogate, surrogate_param)
    return torch.stack(lif_backward_steps(grad_spikes, x, *options))


def lif_backward_steps(grad_spikes, x, beta, v_threshold, v_reset, detach_reset, surrogate, surrogate_param):
    """`lif_backward` as the list of per-step gradients dL/dX[t] (what a caller transforms before stacking: a
    compiled kernel then writes each step once)."""
    _, potentials = lif_scan(x, beta, v_threshold, v_reset)
    carry = torch.zeros_like(x[0])  # dL/dH[t], in the dtype of X (gradients of bf16 spikes may arrive as bf16)
    grads = []
    for t in reversed(range(grad_spikes.shape[0])):
        potential = potentials[t]
        slope = surrogate_derivative(surrogate, potential - v_threshold, surrogate_param)
        if v_reset is None:
            reset_slope = beta if detach_reset else beta * (1 - v_threshold * slope)
        else:
            no_spike = (potential < v_threshold).to(potential.dtype)
            reset_slope = beta * no_spike if detach_reset else beta * (no_spike + (v_reset - potential) * slope)
        carry = grad_spikes[t] * slope + carry * reset_slope
        grads.append(carry)
    return grads[::-1]


def masked_lif_forward(scores, allowed, scale, beta, v_threshold, v_reset, dtype):
    """Spikes ``(T, …)`` in ``dtype`` of a LIF fed X = scale · (scores ⊙ allowed), computed in ``scale``'s dtype;
    ``scores`` (any float dtype, e.g. the bf16 overlap counts of SFSA) and ``allowed`` broadcast. X is never
    written out: compiled, mask, scale, recurrence and cast are one pass."""
    spikes, _ = lif_scan(scores.to(scale.dtype) * allowed * scale, beta, v_threshold, v_reset)
    return torch.stack([spike.to(dtype) for spike in spikes])


def masked_lif_backward(
    grad_spikes, scores, allowed, scale, beta, v_threshold, v_reset, detach_reset, surrogate, alpha
):
    """dL/dscores for `masked_lif_forward`, in the dtype of ``scores``, recomputing X."""
    x = scores.to(scale.dtype) * allowed * scale
    options = (beta, v_threshold, v_reset, detach_reset, surrogate, alpha)
    steps = lif_backward_steps(grad_spikes.to(x.dtype), x, *options)
    return torch.stack([(grad * scale * allowed).to(scores.dtype) for grad in steps])


def as_uint8(*spikes):
    """0/1 spikes (or integer counts in [0, 255]) as uint8, one compiled pass for all of them."""
    return tuple(x.to(torch.uint8) for x in spikes)


def widened(*codes_and_dtype):
    """``widened(*codes, dtype)``: `as_uint8` tensors back in ``dtype``, one compiled pass for all of them (the
    dtype last, as `run_kernel` takes a tensor first)."""
    *codes, dtype = codes_and_dtype
    return tuple(x.to(dtype) for x in codes)


# ----------------------------------------------------------------------------------------------------------
# Integer LIF family (ilif, nilif, asn, nasn):
#   U[t] = H[t-1] + X[t];  q[t] = clip(round(U[t]), lo, lo + D);  S[t] = scale · q[t];  H[t] = β (U[t] - q[t])
# Straight-through gradient: dq/dU = 1 for lo ≤ U ≤ lo + D, else 0; dq/dlo = 1 outside that window.
# ----------------------------------------------------------------------------------------------------------


def integer_scan(x: torch.Tensor, lower, spike_max, beta):
    """Run the recurrence; returns the per-step lists ``(counts, potentials)``."""
    membrane = torch.zeros_like(x[0])
    counts, potentials = [], []
    for t in range(x.shape[0]):
        potential = membrane + x[t]
        count = torch.clamp(torch.round(potential), lower, lower + spike_max)
        membrane = beta * (potential - count)
        counts.append(count)
        potentials.append(potential)
    return counts, potentials


def integer_forward(x: torch.Tensor, lower, spike_max, scale, beta):
    """Spikes ``scale · q``, ``(T, M)``; ``lower`` is a number or a 0-d tensor (the ASN offset)."""
    counts, _ = integer_scan(x, lower, spike_max, beta)
    return torch.stack(counts) * scale


def integer_forward_single_step(x: torch.Tensor, lower, spike_max, scale):
    """T = 1 case of `integer_forward`: no membrane. Also returns the straight-through window as a uint8 mask,
    which is all the backward pass needs (1 byte per element instead of the 4-byte input). The window is
    built in float and cast once: inductor's CPU code for compare-and-cast-to-bool/uint8 measured ~7x slower."""
    inside = ((x >= lower).to(x.dtype) * (x <= lower + spike_max).to(x.dtype)).to(torch.uint8)
    return torch.clamp(torch.round(x), lower, lower + spike_max) * scale, inside


def integer_backward(grad_spikes, x, lower, spike_max, scale, beta, detach_reset: bool):
    """Returns ``(dL/dX, dL/dlo)``, recomputing U from X; dL/dlo is a 0-d tensor summed over everything."""
    _, potentials = integer_scan(x, lower, spike_max, beta)
    carry = torch.zeros_like(grad_spikes[0])  # dL/dH[t]
    outside_grads = torch.zeros_like(grad_spikes[0])
    grads = []
    for t in reversed(range(grad_spikes.shape[0])):
        potential = potentials[t]
        inside = (potential >= lower) & (potential <= lower + spike_max)
        grad_count = grad_spikes[t] * scale if detach_reset else grad_spikes[t] * scale - beta * carry
        carry = torch.where(inside, grad_count, 0.0) + beta * carry
        outside_grads = outside_grads + torch.where(inside, 0.0, grad_count)
        grads.append(carry)
    return torch.stack(grads[::-1]), outside_grads.sum()


def integer_backward_single_step(grad_spikes: torch.Tensor, inside: torch.Tensor, scale):
    """T = 1 case of `integer_backward` from the saved window mask, without the dL/dlo reduction."""
    return grad_spikes * scale * inside


# ----------------------------------------------------------------------------------------------------------
# Autograd wrappers
# ----------------------------------------------------------------------------------------------------------


def _flatten_time(x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 1:
        raise ValueError(f"spiking neurons expect time-major input [T, ...], got a {x.dim()}-d tensor")
    return x.reshape(x.shape[0], -1)


class MultiStepLIF(torch.autograd.Function):
    """Fused multi-step LIF; ``apply(x, beta, v_threshold, v_reset, detach_reset, surrogate, param, backend,
    dtype)``, spikes in ``dtype`` (`None`: the dtype of x)."""

    @staticmethod
    def forward(ctx, x, beta, v_threshold, v_reset, detach_reset, surrogate, surrogate_param, backend, dtype=None):
        flat = _flatten_time(x)
        spikes = run_kernel(lif_forward, backend, flat, beta, v_threshold, v_reset, dtype)
        ctx.save_for_backward(flat)
        ctx.options = (beta, v_threshold, v_reset, detach_reset, surrogate, surrogate_param)
        ctx.backend = backend
        return spikes.view(x.shape)

    @staticmethod
    def backward(ctx, grad_spikes):
        (inputs,) = ctx.saved_tensors
        flat = grad_spikes.reshape(inputs.shape)
        # The numbers become 0-d tensors in the dtype of X, not of a bf16 gradient (which would round them).
        options = as_graph_inputs(ctx.options, inputs)
        grad_x = run_kernel(lif_backward, ctx.backend, flat, inputs, *options)
        return grad_x.view(grad_spikes.shape), *([None] * 8)


class MaskedMultiStepLIF(torch.autograd.Function):
    """`masked_lif_forward` with its backward; ``apply(scores, allowed, scale, beta, v_threshold, v_reset,
    detach_reset, surrogate, alpha, dtype, backend)``. Keeps ``scores`` and ``allowed`` (not the fp32 input X)."""

    @staticmethod
    def forward(
        ctx, scores, allowed, scale, beta, v_threshold, v_reset, detach_reset, surrogate, alpha, dtype, backend
    ):
        # The numbers go in as fp32 0-d tensors: converted in the dtype of bf16 scores they would be rounded.
        like = scores.new_empty((), dtype=torch.float32)
        numbers = as_graph_inputs((scale, beta, v_threshold, *(() if v_reset is None else (v_reset,)), alpha), like)
        scale, beta, v_threshold, *rest, alpha = numbers
        v_reset = rest[0] if rest else None
        spikes = run_kernel(masked_lif_forward, backend, scores, allowed, scale, beta, v_threshold, v_reset, dtype)
        ctx.save_for_backward(scores, allowed)
        ctx.options, ctx.backend = (scale, beta, v_threshold, v_reset, detach_reset, surrogate, alpha), backend
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        scores, allowed = ctx.saved_tensors
        grad = run_kernel(masked_lif_backward, ctx.backend, grad_spikes, scores, allowed, *ctx.options)
        return grad, *([None] * 10)


class MultiStepIntegerLIF(torch.autograd.Function):
    """Fused integer LIF; ``apply(x, lower, spike_max, scale, beta, detach_reset, backend)``.

    ``lower`` may be a float (ilif/nilif: 0) or a 0-d tensor (asn/nasn: ⌈α⌉), which then receives a gradient.
    """

    @staticmethod
    def forward(ctx, x, lower, spike_max, scale, beta, detach_reset, backend):
        flat = _flatten_time(x)
        lower_value = lower.detach() if torch.is_tensor(lower) else lower
        ctx.options = (lower_value, spike_max, scale)
        ctx.beta, ctx.detach_reset, ctx.backend = beta, detach_reset, backend
        ctx.lower_is_tensor = torch.is_tensor(lower)
        # The mask suffices unless ASN's offset needs its gradient (that sums over the outside of the window).
        ctx.saved_mask = flat.shape[0] == 1 and not (ctx.lower_is_tensor and lower.requires_grad)
        if flat.shape[0] == 1:
            spikes, inside = run_kernel(integer_forward_single_step, backend, flat, lower_value, spike_max, scale)
            ctx.save_for_backward(inside if ctx.saved_mask else flat)
        else:
            spikes = run_kernel(integer_forward, backend, flat, lower_value, spike_max, scale, beta)
            ctx.save_for_backward(flat)
        return spikes.view(x.shape)

    @staticmethod
    def backward(ctx, grad_spikes):
        (inputs,) = ctx.saved_tensors
        flat = grad_spikes.reshape(inputs.shape)
        needs_lower_grad = ctx.lower_is_tensor and ctx.needs_input_grad[1]
        grad_lower = None
        if ctx.saved_mask:
            grad_x = run_kernel(integer_backward_single_step, ctx.backend, flat, inputs, ctx.options[2])
        else:
            grad_x, grad_lower = run_kernel(
                integer_backward, ctx.backend, flat, inputs, *ctx.options, ctx.beta, ctx.detach_reset
            )
            if not needs_lower_grad:
                grad_lower = None
        return grad_x.view(grad_spikes.shape), grad_lower, None, None, None, None, None


# ----------------------------------------------------------------------------------------------------------
# Parallel spiking neurons: S = Θ(A X + c) with a T×T matrix A mixing the steps (no recurrence)
# ----------------------------------------------------------------------------------------------------------


def _mixed_steps(matrix, x, offset):
    """H[i] = Σ_j A[i, j] X[j] + c[i] as a list of per-step rows: compiled, every row is one fused pass over X
    (a broadcast (T, T, M) product compiled to kernels about twice as slow)."""
    steps = x.shape[0]
    return [offset[i] + sum(matrix[i, j] * x[j] for j in range(steps)) for i in range(steps)]


def parallel_forward(x, matrix, offset):
    """Spikes Θ(A X + c), ``(T, M)``, in the dtype of X."""
    return torch.stack([(membrane >= 0).to(x.dtype) for membrane in _mixed_steps(matrix, x, offset)])


def parallel_backward(grad_spikes, x, matrix, offset, surrogate: str, surrogate_param):
    """(dL/dX, dL/dA, dL/dc) of `parallel_forward`, recomputing the membrane H from X. dL/dA = dL/dH Xᵀ and
    dL/dc are T² + T sums that the compiled kernel accumulates in the same pass (a separate GEMM read both
    T×M operands again and took as long as the rest of the backward)."""
    steps = x.shape[0]
    grad_membrane = [
        grad_spikes[i] * surrogate_derivative(surrogate, membrane, surrogate_param)
        for i, membrane in enumerate(_mixed_steps(matrix, x, offset))
    ]
    grad_x = torch.stack([sum(matrix[i, j] * grad_membrane[i] for i in range(steps)) for j in range(steps)])
    grad_matrix = torch.stack([torch.stack([(row * x[j]).sum() for j in range(steps)]) for row in grad_membrane])
    return grad_x, grad_matrix, torch.stack([row.sum() for row in grad_membrane])


# T² + 2T results from one loop over X: inductor's CPU backend groups at most 16 per loop by default, and every
# further loop reads and recomputes X again (T = 4: five loops, 1.4 ms, against one loop, 0.9 ms)
parallel_backward.inductor_options = {"cpp.max_horizontal_fusion_size": 64}


class ParallelFire(torch.autograd.Function):
    """Θ(A X + c) over the time axis with a surrogate gradient, for X, A and c; ``apply(x, matrix, offset,
    surrogate, param, backend)``. Keeps X only (the membrane is recomputed in backward); compiled (`run_kernel`)
    forward and backward are one pass each where eager PyTorch took a GEMM and five elementwise passes."""

    @staticmethod
    def forward(ctx, x, matrix, offset, surrogate, surrogate_param, backend):
        flat = _flatten_time(x)
        spikes = run_kernel(parallel_forward, backend, flat, matrix.detach(), offset.detach())
        ctx.save_for_backward(flat, matrix, offset)
        ctx.options = (surrogate, surrogate_param)
        ctx.backend = backend
        return spikes.view(x.shape)

    @staticmethod
    def backward(ctx, grad_spikes):
        flat, matrix, offset = ctx.saved_tensors
        grads = grad_spikes.reshape(flat.shape).to(flat.dtype)
        surrogate, param = ctx.options
        grad_x, grad_matrix, grad_offset = run_kernel(
            parallel_backward, ctx.backend, grads, flat, matrix.detach(), offset.detach(), surrogate,
            torch.tensor(param, dtype=flat.dtype),
        )  # fmt: skip
        return grad_x.view(grad_spikes.shape), grad_matrix, grad_offset, None, None, None


# ----------------------------------------------------------------------------------------------------------
# Ternary LIF (tlif): U[t] = H[t-1] + X[t];  q[t] = round(clip(U[t]/a[t], −1, 1));  S[t] = a[t] q[t];
#                     H[t] = β (U[t] − S[t]).  Straight-through: dS/dU = 1 and dS/da = q − U/a where |U/a| ≤ 1.
# ----------------------------------------------------------------------------------------------------------


def _step_scale(scale, t):
    return scale[t if scale.shape[0] > 1 else 0]


def ternary_scan(x: torch.Tensor, scale, beta):
    """Run the recurrence; returns the per-step lists ``(spikes, ratios)``, ratio = U[t] / a[t]."""
    membrane = torch.zeros_like(x[0])
    spikes, ratios = [], []
    for t in range(x.shape[0]):
        a = _step_scale(scale, t)
        potential = membrane + x[t]
        ratio = potential / a
        spike = a * torch.round(torch.clamp(ratio, -1.0, 1.0))
        membrane = beta * (potential - spike)
        spikes.append(spike)
        ratios.append(ratio)
    return spikes, ratios


def ternary_forward(x: torch.Tensor, scale, beta):
    """Spikes ``(T, M)`` in {−a[t], 0, a[t]}."""
    return torch.stack(ternary_scan(x, scale, beta)[0])


def ternary_backward(grad_spikes, x, scale, beta, detach_reset: bool):
    """Returns ``(dL/dX, dL/da)``, recomputing U from X; dL/da has the shape of ``scale`` (a per-step sum, or one
    sum over all steps for a shared scale), accumulated in the same pass as dL/dX when compiled."""
    _, ratios = ternary_scan(x, scale, beta)
    carry = torch.zeros_like(grad_spikes[0])  # dL/dU[t+1] = dL/dH[t] / β
    grads, grad_scales = [], []
    for t in reversed(range(grad_spikes.shape[0])):
        ratio = ratios[t]
        inside = ((ratio >= -1.0) & (ratio <= 1.0)).to(ratio.dtype)
        grad_spike = grad_spikes[t] if detach_reset else grad_spikes[t] - beta * carry
        carry = grad_spike * inside + beta * carry
        grads.append(carry)
        grad_scales.append((grad_spike * (torch.round(torch.clamp(ratio, -1.0, 1.0)) - inside * ratio)).sum())
    grad_scale = torch.stack(grad_scales[::-1])
    return torch.stack(grads[::-1]), grad_scale if scale.shape[0] > 1 else grad_scale.sum(0, keepdim=True)


class MultiStepTernaryLIF(torch.autograd.Function):
    """Fused ternary LIF; ``apply(x, scale, beta, detach_reset, backend)``. Keeps X only; compiled, forward and
    backward (with the scale's gradient) are one pass each."""

    @staticmethod
    def forward(ctx, x, scale, beta, detach_reset, backend):
        flat = _flatten_time(x)
        spikes = run_kernel(ternary_forward, backend, flat, scale.detach(), beta)
        ctx.save_for_backward(flat, scale)
        ctx.beta, ctx.detach_reset, ctx.backend = beta, detach_reset, backend
        return spikes.view(x.shape)

    @staticmethod
    def backward(ctx, grad_spikes):
        flat, scale = ctx.saved_tensors
        grads = grad_spikes.reshape(flat.shape).to(flat.dtype)  # and β a 0-d tensor of X's dtype, not a bf16 grad's
        grad_x, grad_scale = run_kernel(
            ternary_backward, ctx.backend, grads, flat, scale.detach(), ctx.beta, ctx.detach_reset
        )
        return grad_x.view(grad_spikes.shape), grad_scale.to(scale.dtype), None, None, None
