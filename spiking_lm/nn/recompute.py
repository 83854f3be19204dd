"""Recompute a region in the backward pass from compact inputs, instead of storing its activations.

A spiking block keeps far more for backward than an ANN block: every neuron keeps its real-valued input for the
surrogate gradient, over T steps, and spiking attention keeps Q, K, V and a (T, B, H, L, L) map of attention
spikes. Most of it is cheap to recompute from a few compact tensors: spikes store losslessly as 1-byte integer
counts, and the outputs of bf16 GEMMs as bf16. `recompute_region(run, inputs, codings, parameters)` runs
``run(*inputs)`` without keeping anything it computes, saves only its inputs (each in its compact form), and in
the backward pass runs it again with autograd on to get the gradients of its inputs and ``parameters``.

The recomputed forward is bitwise the forward: a count k decodes as ``k · scale`` (+ offset where that is exact),
the very product the neuron computed, and nothing in a spiking block draws random numbers.

`spiking_lm.nn.layers` opens regions only for T > 1, where neurons keep T real-valued steps each; at T = 1 they
keep a 1-byte mask at most and recomputing would only cost time.

Regions are used only while training (autograd on and some input needs a gradient), never nested, and not for
DeepSpeed ZeRO-3 partitioned parameters (whose gradients DeepSpeed reduces from its own hooks). The first run
also has autograd on, so that every layer in the region takes its training path (kernels, dtypes) in both runs.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

__all__ = [
    "encode_counts",
    "is_recomputing",
    "recompute_disabled",
    "recompute_region",
    "recomputing",
    "should_recompute",
]

_state = {"inside": 0, "rerun": 0, "disabled": 0}


@contextmanager
def _entered(key: str):
    _state[key] += 1
    try:
        yield
    finally:
        _state[key] -= 1


def _unhooked():
    return torch.autograd.graph.saved_tensors_hooks(_identity, _identity)


def _identity(tensor):
    return tensor


def recomputing():
    """Marks code that runs again in a backward pass: no nested regions, no firing-rate recording."""
    return _entered("rerun")


def is_recomputing() -> bool:
    return _state["rerun"] > 0


def recompute_disabled():
    """Context manager: regions run plainly and keep everything autograd saves (for comparisons and debugging)."""
    return _entered("disabled")


def encode_counts(spikes: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    """Spikes ``scale·k + offset`` → the counts k as uint8 (the caller guarantees 0 ≤ k ≤ 255)."""
    codes = spikes if offset == 0 else spikes - offset
    if scale != 1:
        codes = codes * (1 / scale)
    if math.frexp(scale)[0] != 0.5:  # not a power of two: k/scale may be off by an ulp, so round
        codes = torch.round(codes)
    return codes.to(torch.uint8)


def should_recompute(inputs) -> bool:
    """True while training (autograd on, some input needs a gradient) outside another region."""
    if _state["inside"] or _state["disabled"] or not torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    return any(x.requires_grad for x in inputs)


class _Region(torch.autograd.Function):
    """``apply(run, codings, num_inputs, *inputs, *parameters)``; parameters are arguments so that autograd (and
    DDP, which looks for them in the graph) sees them used here."""

    @staticmethod
    def forward(ctx, run, codings, num_inputs, *tensors):
        ctx.set_materialize_grads(False)  # unused outputs (an attention map nobody asked for) cost nothing
        inputs = tensors[:num_inputs]
        ctx.run, ctx.codings, ctx.num_inputs = run, codings, num_inputs
        ctx.dtypes = [x.dtype for x in inputs]
        pairs = zip(inputs, codings, strict=True)
        packed = [_pack(x, coding) for x, coding in pairs]
        ctx.save_for_backward(*packed)
        ctx.parameters = tensors[num_inputs:]  # the module's own leaves, which `run` reads by attribute
        # Autograd on, as in the rerun, so that every layer takes its training code path (the same kernels,
        # dtypes and rounding); the graph built here is dropped at once, so its saved tensors bypass any
        # saved-tensor hooks of the caller (offloading, memory accounting).
        with torch.enable_grad(), _entered("inside"), _unhooked():
            outputs = run(*(x.detach() for x in inputs))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return tuple(output.detach() for output in outputs)

    @staticmethod
    def backward(ctx, *grad_outputs):
        saved = ctx.saved_tensors
        needed = ctx.needs_input_grad[3:]
        inputs = []
        for tensor, coding, dtype, wanted in zip(
            saved, ctx.codings, ctx.dtypes, needed[: ctx.num_inputs], strict=True
        ):
            inputs.append(_unpack(tensor, coding, dtype).detach().requires_grad_(wanted))
        parameters = ctx.parameters
        with torch.enable_grad(), recomputing(), _entered("inside"):
            outputs = ctx.run(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if g is not None and o.requires_grad]
        wanted = [t for t, w in zip((*inputs, *parameters), needed, strict=True) if w]
        if not pairs or not wanted:
            return (None, None, None, *([None] * len(needed)))
        grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
        return (None, None, None, *(next(grads) if w else None for w in needed))


def _pack(x: torch.Tensor, coding) -> torch.Tensor:
    """``x`` in the compact form its coding names (see `recompute_region`)."""
    if coding is None:
        return x
    if isinstance(coding, torch.dtype):
        return x.to(coding)
    return encode_counts(x, *coding)


def _unpack(packed: torch.Tensor, coding, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of `_pack`, bit for bit: the values widened back to ``dtype``."""
    if coding is None:
        return packed
    if isinstance(coding, torch.dtype):
        return packed.to(dtype)
    scale, offset = coding
    values = packed.to(dtype) * scale if scale != 1 else packed.to(dtype)
    return values + offset if offset != 0 else values


def recompute_region(run, inputs: tuple, codings: tuple, parameters):
    """``run(*inputs)`` (a tensor or a tuple of tensors), keeping only ``inputs`` for backward.

    Args:
        run: a function of the inputs; it may use module parameters, listed in ``parameters``.
        inputs: the tensors ``run`` reads.
        codings: per input, ``(scale, offset)`` if it holds spikes ``scale·k + offset`` with integer k in
            [0, 255] (saved as uint8); a dtype (``torch.bfloat16``) if its values are exact in that dtype (the
            output of a bf16 GEMM: saved in it); else `None` (saved as is).
        parameters: a function returning every trainable tensor ``run`` uses besides its inputs (called only
            when the region is used, so inference pays nothing); they receive their gradients from the rerun.

    Falls back to calling ``run`` directly when `should_recompute` says no.
    """
    if not should_recompute(inputs):
        return run(*inputs)
    used = list(parameters())
    if any(hasattr(p, "ds_id") for p in used):  # ZeRO-3 partitioned: DeepSpeed must see every use itself
        return run(*inputs)
    outputs = _Region.apply(run, codings, len(inputs), *inputs, *used)
    return outputs if len(outputs) > 1 else outputs[0]
