"""The event backend's int8 K/V cache while decoding, and SFSA read from it in place by native kernels.

A growing cache layer keeps its K/V as views of longer buffers (`reserve`, `append_in_place`), so that a decoded
token is written into place. Decoding SFSA multiplies the int8 counts (or K as bits) as stored, exact, instead of
widening the whole cache at every step: its two products in native kernels (`sfsa_on_int8_cache`), or the whole
attention in one call (`fused_sfsa`) where its neuron is the plain soft-reset LIF. The attention module calls these
for few query rows on an int8 cache, whether the step came through `spiking_lm.nn.decode_step.decode_block` or
not.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import math

import torch

from .attention import softmax_free_attention
from .native import int8_attention_context, int8_attention_scores, native_library, sfsa_decode
from .neurons import LIFNeuron
from .recording import active_recorders

__all__ = [
    "CACHE_SPARE_FRACTION",
    "CACHE_SPARE_MIN",
    "NATIVE_MAX_QUERIES",
    "append_in_place",
    "cache_unit",
    "fused_sfsa",
    "fused_sfsa_applies",
    "fused_sfsa_kind",
    "fused_sfsa_scalars",
    "native_attention",
    "native_attention_kind",
    "reserve",
    "sfsa_on_int8_cache",
]

NATIVE_MAX_QUERIES = 4
"""Up to this many query rows (decoding), SFSA reads an int8 K/V cache in place (`sfsa_on_int8_cache`)."""


def cache_unit(neuron) -> float | None:
    """u such that the neuron's spike values are u·k with integer |k| ≤ 127 and no offset (cacheable as int8)."""
    coding = neuron.coding
    return None if coding.has_offset else coding.unit


CACHE_SPARE_FRACTION = 0.5
"""A growing K/V cache layer reserves this share of its length (at least `CACHE_SPARE_MIN` positions) past its
end, so that appending a decoded token writes into place instead of copying the whole cache (`torch.cat`)."""
CACHE_SPARE_MIN = 64


def append_in_place(layer, keys: torch.Tensor, values: torch.Tensor):
    """What `DynamicLayer.update` returns (the layer's K/V with ``keys``/``values`` appended along the length) with
    amortized copies: the layer's tensors are views of longer buffers (`reserve`), written at their end."""
    buffers, length = reserve(layer, keys.shape[-2])
    for buffer, x in zip(buffers, (keys, values), strict=True):
        buffer[..., length : length + x.shape[-2], :].copy_(x)
    layer.keys, layer.values = (buffer[..., : length + keys.shape[-2], :] for buffer in buffers)
    return layer.keys, layer.values


def reserve(layer, extra: int) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
    """``((K buffer, V buffer), length)``: buffers whose first ``length`` positions are the layer's K/V (which stay
    views of them) with room for ``extra`` more. Tensors that are not such views (after the first append, a
    reordered beam, a cropped or deep-copied cache) move into new buffers with `CACHE_SPARE_FRACTION` to spare."""
    length = layer.keys.shape[-2]
    stored = (layer.keys, layer.values)
    buffers = getattr(layer, "_spiking_lm_buffers", None)
    if not (buffers and all(map(_views_into, stored, buffers)) and buffers[0].shape[-2] >= length + extra):
        capacity = length + extra + max(CACHE_SPARE_MIN, int(CACHE_SPARE_FRACTION * (length + extra)))
        buffers = tuple(x.new_empty(*x.shape[:-2], capacity, x.shape[-1]) for x in stored)
        for buffer, x in zip(buffers, stored, strict=True):
            buffer[..., :length, :].copy_(x)
        layer._spiking_lm_buffers = buffers
        layer.keys, layer.values = (buffer[..., :length, :] for buffer in buffers)
    return buffers, length


def _views_into(x: torch.Tensor, buffer: torch.Tensor) -> bool:
    """Whether ``x`` is ``buffer[..., :n, :]`` for some n."""
    return x.data_ptr() == buffer.data_ptr() and x.shape[:-2] == buffer.shape[:-2] and x.stride() == buffer.stride()


def native_attention(attention, query) -> bool:
    """Whether decoding SFSA reads an int8 K/V cache in place (`sfsa_on_int8_cache`): few query rows of fp32
    spikes, no gradient, nothing recorded, and an attention `native_attention_kind` covers."""
    return (
        query.shape[-2] <= NATIVE_MAX_QUERIES
        and query.dtype == torch.float32
        and query.device.type == "cpu"
        and not (torch.is_grad_enabled() and query.requires_grad)
        and not active_recorders()
        and native_attention_kind(attention)
    )


def native_attention_kind(attention) -> bool:
    """The module's part of `native_attention`: SFSA of Q spikes with a power-of-two unit and no offset, 0/1
    attention spikes, the native library."""
    coding = attention.q_neuron.coding
    unit = coding.unit
    return (
        attention.kind == "sfsa"
        and unit is not None
        and not coding.has_offset
        and math.frexp(unit)[0] == 0.5
        and attention.attn_neuron.coding.zero_one
        and native_library() is not None
    )


def fused_sfsa_kind(attention) -> bool:
    """Whether this attention is of the SFSA `fused_sfsa` computes: 1/√d output scale, a plain soft-reset LIF
    attention neuron (what it is built as, not whether it records now: the K/V cache format follows this)."""
    neuron = attention.attn_neuron
    return attention.config.sfsa_output_scale == "sqrt_d" and type(neuron) is LIFNeuron and neuron.v_reset is None


def fused_sfsa_applies(attention) -> bool:
    """Whether `fused_sfsa` computes this attention's SFSA now: `fused_sfsa_kind`, an attention neuron that records
    nothing."""
    return fused_sfsa_kind(attention) and not attention.attn_neuron.record_firing_rate


def fused_sfsa(attention, query, keys, values, key_unit, value_unit):
    """``(context (T, B, L, D), attention spikes)`` of `sfsa_on_int8_cache` with the value unit applied, in one
    native call (`spiking_lm.nn.native.sfsa_decode`), bit for bit, where `fused_sfsa_applies` (the caller checks
    that every key is allowed); `None` elsewhere."""
    if not fused_sfsa_applies(attention):
        return None
    steps, batch, heads = query.shape[:3]
    keys, values = (x.reshape(batch * steps * heads, -1, x.shape[-1]) for x in (keys, values))
    unit, *scalars = fused_sfsa_scalars(attention, key_unit)
    fused = sfsa_decode(query.contiguous(), unit, keys, values, *scalars, value_unit)
    return None if fused is None else (fused[1], fused[0])


def fused_sfsa_scalars(attention, key_unit: float) -> tuple:
    """`sfsa_decode`'s ``(unit, qk_scale, score_scale, beta, threshold, root)`` for this attention and keys cached
    in ``key_unit``."""
    neuron, unit = attention.attn_neuron, attention.q_neuron.coding.unit
    root = math.sqrt(attention.head_dim)
    return unit, unit * key_unit, attention.score_scale(), neuron.beta, neuron.v_threshold, root


def sfsa_on_int8_cache(attention, query, keys, values, key_unit, allowed, every):
    """SFSA with its two products on the int8 K/V cache ``(B, T·H, L, d)`` as stored (`spiking_lm.nn.native`):
    exact int32 sums, scaled once by power-of-two units, so the values of the attention on the widened cache, bit
    for bit, without widening the whole cache at every step. The context is returned in V's counts."""
    steps, batch, heads, rows, width = query.shape
    unit = attention.q_neuron.coding.unit
    counts = query if unit == 1 else torch.round(query / unit)
    counts = counts.transpose(0, 1).reshape(batch * steps * heads, rows, width).to(torch.int8)
    keys, values = (x.reshape(batch * steps * heads, -1, width) for x in (keys, values))

    def scores_of(*_):
        scores = int8_attention_scores(counts, keys, unit * key_unit)
        return scores.view(batch, steps, heads, rows, -1).transpose(0, 1)

    def context_of(spikes, *_):
        grouped = spikes.transpose(0, 1).reshape(batch * steps * heads, rows, -1)
        return int8_attention_context(grouped, values).view(batch, steps, heads, rows, width).transpose(0, 1)

    options = {"all_allowed": every, "products": (scores_of, context_of)}
    neuron, scale = attention.attn_neuron, attention.score_scale()
    return softmax_free_attention(query, keys, values, allowed, neuron, scale, attention.config.sfsa_output_scale,
                                  **options)  # fmt: skip
