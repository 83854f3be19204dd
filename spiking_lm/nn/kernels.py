"""Fused multi-step kernels for the LIF family, with hand-written backward passes.

Each kernel is a plain function over a time-major tensor ``(T, M)`` (M = everything after T, flattened).
The same Python function is the reference implementation (backend ``"torch"``) and, compiled by
`torch.compile`, the fast one (backend ``"inductor"``): the loop over T unrolls and every step fuses into
one pass over memory, which is what makes a LIF as cheap as a GELU.

Backends:
    ``"torch"``: eager PyTorch, always available.
    ``"inductor"``: `torch.compile`; errors are raised, never hidden.
    ``"auto"`` (default): inductor for tensors of at least `AUTO_COMPILE_MIN_NUMEL` elements, eager below (tiny
    tensors gain nothing from a compiled kernel and would pay its guard overhead). If compiling fails once,
    ``"auto"`` logs a warning and stays eager for the rest of the process.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import logging
import os

import torch

from .surrogate import surrogate_derivative

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "inductor")
AUTO_COMPILE_MIN_NUMEL = int(os.environ.get("SPIKING_LM_COMPILE_MIN_NUMEL", 1 << 17))

_compiled_kernels: dict = {}
_auto_compile_broken = False


def check_backend(backend: str) -> str:
    """Return ``backend`` if valid, else raise `ValueError` listing the valid backends."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    return backend


def _compiled(kernel):
    if kernel not in _compiled_kernels:
        _compiled_kernels[kernel] = torch.compile(kernel, dynamic=None, fullgraph=True)
    return _compiled_kernels[kernel]


def run_kernel(kernel, backend: str, x: torch.Tensor, *args):
    """Run ``kernel(x, *args)`` on the chosen backend (see the module docstring for the rule)."""
    global _auto_compile_broken
    if backend == "torch" or torch.compiler.is_compiling():
        return kernel(x, *args)
    if backend == "inductor":
        return _compiled(kernel)(x, *args)
    if _auto_compile_broken or x.numel() < AUTO_COMPILE_MIN_NUMEL:
        return kernel(x, *args)
    try:
        return _compiled(kernel)(x, *args)
    except Exception as error:  # noqa: BLE001 - "auto" promises an eager fallback; the reason is logged
        _auto_compile_broken = True
        logger.warning("torch.compile of spiking kernels failed (%s); using eager kernels from now on", error)
        return kernel(x, *args)


# ----------------------------------------------------------------------------------------------------------
# LIF: U[t] = H[t-1] + X[t];  S[t] = Θ(U[t] - V_th);  H[t] = β (U[t] - S[t] V_th)  (soft reset)
#                                                     H[t] = β (U[t](1 - S[t]) + S[t] V_reset)  (hard reset)
# ----------------------------------------------------------------------------------------------------------


def lif_forward(x: torch.Tensor, beta: float, v_threshold: float, v_reset: float | None):
    """Returns ``(spikes, potentials)``, both ``(T, M)``; potentials U[t] are saved for the backward pass."""
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
    return torch.stack(spikes), torch.stack(potentials)


def lif_backward(
    grad_spikes: torch.Tensor,
    potentials: torch.Tensor,
    beta: float,
    v_threshold: float,
    v_reset: float | None,
    detach_reset: bool,
    surrogate: str,
    surrogate_param: float,
):
    """Backpropagation through time for `lif_forward`; returns dL/dX, ``(T, M)``."""
    carry = torch.zeros_like(grad_spikes[0])  # dL/dH[t]
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
    return torch.stack(grads[::-1])


# ----------------------------------------------------------------------------------------------------------
# Integer LIF family (ilif, nilif, asn, nasn):
#   U[t] = H[t-1] + X[t];  q[t] = clip(round(U[t]), lo, lo + D);  S[t] = scale · q[t];  H[t] = β (U[t] - q[t])
# Straight-through gradient: dq/dU = 1 for lo ≤ U ≤ lo + D, else 0; dq/dlo = 1 outside that window.
# ----------------------------------------------------------------------------------------------------------


def integer_forward(x: torch.Tensor, lower, spike_max: int, scale: float, beta: float):
    """Returns ``(spikes, potentials)``; ``lower`` is a float or a 0-d tensor (the ASN offset)."""
    membrane = torch.zeros_like(x[0])
    spikes, potentials = [], []
    for t in range(x.shape[0]):
        potential = membrane + x[t]
        count = torch.clamp(torch.round(potential), lower, lower + spike_max)
        membrane = beta * (potential - count)
        spikes.append(count * scale)
        potentials.append(potential)
    return torch.stack(spikes), torch.stack(potentials)


def integer_forward_single_step(x: torch.Tensor, lower, spike_max: int, scale: float):
    """T = 1 case of `integer_forward`: no membrane, and U = X needs no copy."""
    return torch.clamp(torch.round(x), lower, lower + spike_max) * scale


def integer_backward(
    grad_spikes: torch.Tensor,
    potentials: torch.Tensor,
    lower,
    spike_max: int,
    scale: float,
    beta: float,
    detach_reset: bool,
):
    """Returns ``(dL/dX, dL/dlo)``; dL/dlo is a 0-d tensor summed over all elements and steps."""
    carry = torch.zeros_like(grad_spikes[0])  # dL/dH[t]
    grad_lower = torch.zeros((), dtype=grad_spikes.dtype, device=grad_spikes.device)
    grads = []
    for t in reversed(range(grad_spikes.shape[0])):
        potential = potentials[t]
        inside = (potential >= lower) & (potential <= lower + spike_max)
        grad_count = grad_spikes[t] * scale if detach_reset else grad_spikes[t] * scale - beta * carry
        carry = torch.where(inside, grad_count, 0.0) + beta * carry
        grad_lower = grad_lower + torch.where(inside, 0.0, grad_count).sum()
        grads.append(carry)
    return torch.stack(grads[::-1]), grad_lower


def integer_backward_single_step(grad_spikes: torch.Tensor, x: torch.Tensor, lower, spike_max: int, scale: float):
    """T = 1 case of `integer_backward`, without the dL/dlo reduction (use the general one for ASN)."""
    inside = (x >= lower) & (x <= lower + spike_max)
    return torch.where(inside, grad_spikes * scale, 0.0)


# ----------------------------------------------------------------------------------------------------------
# Autograd wrappers
# ----------------------------------------------------------------------------------------------------------


def _flatten_time(x: torch.Tensor) -> torch.Tensor:
    if x.dim() < 1:
        raise ValueError(f"spiking neurons expect time-major input [T, ...], got a {x.dim()}-d tensor")
    return x.reshape(x.shape[0], -1)


class MultiStepLIF(torch.autograd.Function):
    """Fused multi-step LIF; ``apply(x, beta, v_threshold, v_reset, detach_reset, surrogate, param, backend)``."""

    @staticmethod
    def forward(ctx, x, beta, v_threshold, v_reset, detach_reset, surrogate, surrogate_param, backend):
        flat = _flatten_time(x)
        spikes, potentials = run_kernel(lif_forward, backend, flat, beta, v_threshold, v_reset)
        ctx.save_for_backward(potentials)
        ctx.options = (beta, v_threshold, v_reset, detach_reset, surrogate, surrogate_param)
        ctx.backend = backend
        return spikes.view(x.shape)

    @staticmethod
    def backward(ctx, grad_spikes):
        (potentials,) = ctx.saved_tensors
        flat = grad_spikes.reshape(potentials.shape)
        grad_x = run_kernel(lif_backward, ctx.backend, flat, potentials, *ctx.options)
        return grad_x.view(grad_spikes.shape), None, None, None, None, None, None, None


class MultiStepIntegerLIF(torch.autograd.Function):
    """Fused integer LIF; ``apply(x, lower, spike_max, scale, beta, detach_reset, backend)``.

    ``lower`` may be a float (ilif/nilif: 0) or a 0-d tensor (asn/nasn: ⌈α⌉), which then receives a gradient.
    """

    @staticmethod
    def forward(ctx, x, lower, spike_max, scale, beta, detach_reset, backend):
        flat = _flatten_time(x)
        lower_value = lower.detach() if torch.is_tensor(lower) else lower
        if flat.shape[0] == 1:
            spikes = run_kernel(integer_forward_single_step, backend, flat, lower_value, spike_max, scale)
            potentials = flat
        else:
            spikes, potentials = run_kernel(integer_forward, backend, flat, lower_value, spike_max, scale, beta)
        ctx.save_for_backward(potentials)
        ctx.options = (lower_value, spike_max, scale)
        ctx.beta, ctx.detach_reset, ctx.backend = beta, detach_reset, backend
        ctx.lower_is_tensor = torch.is_tensor(lower)
        return spikes.view(x.shape)

    @staticmethod
    def backward(ctx, grad_spikes):
        (potentials,) = ctx.saved_tensors
        flat = grad_spikes.reshape(potentials.shape)
        needs_lower_grad = ctx.lower_is_tensor and ctx.needs_input_grad[1]
        grad_lower = None
        if flat.shape[0] == 1 and not needs_lower_grad:
            grad_x = run_kernel(integer_backward_single_step, ctx.backend, flat, potentials, *ctx.options)
        else:
            grad_x, grad_lower = run_kernel(
                integer_backward, ctx.backend, flat, potentials, *ctx.options, ctx.beta, ctx.detach_reset
            )
            if not needs_lower_grad:
                grad_lower = None
        return grad_x.view(grad_spikes.shape), grad_lower, None, None, None, None, None
