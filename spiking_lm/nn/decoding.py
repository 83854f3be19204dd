"""One decoding step of a block in few calls: W8 Linears and SFSA on the event backend's int8 K/V cache.

Generating one token, a block of the generic code (`spiking_lm.nn.blocks.membrane_shortcut_layer`) runs ~40 small
operations, each through module calls, the norm → neuron dispatch and the checks every product and attention call
makes again; on a CPU those cost more than the arithmetic. `decode_block` runs the same step with the same
operations in the same order — each norm in torch, each spike-fed product with its neuron's firing, counts and
int8 sums in one native call (`spiking_lm.nn.native.spike_products`), and where the cache keeps K/V as int8
counts the Q/K/V firing, the append and SFSA in one more (`sfsa_decode`; elsewhere the module's own
`SpikingSelfAttention.attend`) — so that its outputs are bit for bit those of the generic block (tested). Where
the block or the call is anything else than what it supports (`_supported`), it returns `None` and the generic
block runs.

The native SFSA of decoding (`sfsa_on_int8_cache`, `fused_sfsa`) lives here too: the attention module calls it
for few query rows on an int8 cache, whether the step came through `decode_block` or not.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import torch
from torch import nn

from .attention import allowed_keys, softmax_free_attention
from .dispatch import AUTO_COMPILE_MIN_NUMEL
from .native import (
    NATIVE_MAX_ROWS,
    fire_table,
    int8_attention_context,
    int8_attention_scores,
    native_library,
    sfsa_decode,
    spike_products,
)
from .neurons import IntegerLIFNeuron, LIFNeuron, NormalizedIntegerLIFNeuron
from .recording import active_recorders, observing_spikes
from .weight_quantization import Int8Linear, int8_linears_on_spikes, product_plan

__all__ = [
    "CACHE_SPARE_FRACTION",
    "CACHE_SPARE_MIN",
    "NATIVE_MAX_QUERIES",
    "append_in_place",
    "cache_unit",
    "decode_block",
    "fused_sfsa",
    "fused_sfsa_applies",
    "fused_sfsa_kind",
    "native_attention",
    "reserve",
    "sfsa_on_int8_cache",
]

NATIVE_MAX_QUERIES = 4
"""Up to this many query rows (decoding), SFSA reads an int8 K/V cache in place (`sfsa_on_int8_cache`)."""


class _Block(NamedTuple):
    """The modules of one block that `decode_block` reads, looked up once, and what about them stays the same
    while they are the same objects: their types and sizes."""

    modules: tuple  # what the block was built from (the cache key: the same objects, compared by identity)
    norms: tuple  # block input, q, k, v, attention output, MLP input, fc1, fc2
    neurons: tuple  # block input, q, k, v, MLP input, fc1
    projections: tuple  # q, k, v
    linears: tuple  # q, k, v, fc1, fc2
    widest: int  # the widest Linear output: the neurons' largest input per row
    supported: bool  # LayerNorms, W8 Linears, SFSA with an output projection


def _block(attn_norm, attn_neuron, attention, mlp_norm, mlp_neuron, mlp_modules) -> _Block:
    """The `_Block` of these modules, kept on the attention module until one of them is replaced."""
    modules = (attn_norm, attn_neuron, mlp_norm, mlp_neuron, *mlp_modules, *attention._modules.values())
    kept = attention.__dict__.get("_decoding_block")
    if kept is not None and len(kept.modules) == len(modules) and all(map(operator.is_, kept.modules, modules)):
        return kept
    fc1, fc1_norm, fc_neuron, fc2, fc2_norm = mlp_modules
    norms = (attn_norm, attention.q_norm, attention.k_norm, attention.v_norm, attention.output_norm(), mlp_norm,
             fc1_norm, fc2_norm)  # fmt: skip
    neurons = (attn_neuron, attention.q_neuron, attention.k_neuron, attention.v_neuron, mlp_neuron, fc_neuron)
    projections = tuple(attention.projections())
    linears = (*projections, fc1, fc2)
    supported = (
        attention.kind == "sfsa"
        and attention.output_projection() is not None
        and all(type(norm) is nn.LayerNorm for norm in norms)
        and all(type(linear) is Int8Linear for linear in linears)
    )
    widest = max(linear.out_features for linear in linears) if supported else 0
    block = _Block(modules, norms, neurons, projections, linears, widest, supported)
    attention.__dict__["_decoding_block"] = block  # a plain attribute: not a submodule, not saved
    return block


def decode_block(hidden, attention_mask, cache, attn_norm, attn_neuron, attention, mlp_norm, mlp_neuron,
                 mlp_modules, execution):  # fmt: skip
    """``(membrane, attention weights)`` of `membrane_shortcut_layer` for one decoded position ``(T, B, 1, D)``,
    bit for bit, or `None` where the block or the call is not one `_supported` covers (nothing is changed then)."""
    block = _block(attn_norm, attn_neuron, attention, mlp_norm, mlp_neuron, mlp_modules)
    firings = _supported(hidden, cache, block)
    if firings is None:
        return None
    norms, neurons = block.norms, block.neurons
    steps, batch, _, width = hidden.shape
    heads = attention.num_heads
    outputs = _spike_fed(block.projections, _normalized(attn_norm, hidden), attn_neuron, steps, firings[0])
    if outputs is None:  # not int8 counts (a non-finite membrane): the generic block decides
        return None
    # Q, K, V membranes in the heads' layout (T, B, H, 1, d): for one position the memory of (T, B, 1, D)
    membranes = [_normalized(norm, output.view(steps, batch, 1, width)).view(steps, batch, heads, 1, -1)
                 for output, norm in zip(outputs, norms[1:4], strict=True)]  # fmt: skip
    attended = _attend_in_place(attention, block, membranes, attention_mask, cache, execution, firings[1:4])
    if attended is None:  # the module's own cache and attention code (nothing was written)
        query, key, value = (n.fire(m) for n, m in zip(neurons[1:4], membranes, strict=True))  # as their forward
        attended = attention.attend(query, key, value, None, attention_mask, cache, execution)
    context, weights = attended
    hidden = hidden + _normalized(norms[4], attention.project_context(context, None, execution))
    fc1, fc2 = block.linears[3:]
    outputs = _spike_fed([fc1], _normalized(mlp_norm, hidden), mlp_neuron, steps, firings[4])
    if outputs is None:  # the cache holds this position now: the generic MLP finishes the block
        outputs = int8_linears_on_spikes([fc1], mlp_neuron.fire(_normalized(mlp_norm, hidden)), mlp_neuron)
    membrane = _normalized(norms[6], outputs[0].view(steps, batch, 1, -1))
    outputs = _spike_fed([fc2], membrane, neurons[5], steps, firings[5])
    if outputs is None:
        outputs = int8_linears_on_spikes([fc2], neurons[5].fire(membrane), neurons[5])
    return hidden + _normalized(norms[7], outputs[0].view(steps, batch, 1, width)), weights


def _attend_in_place(attention, block, membranes, attention_mask, cache, execution, firings):
    """`SpikingSelfAttention.attend` of the spikes the Q, K, V neurons fire on their ``membranes`` ``(T, B, H, 1, d)``
    for one position whose cache layer keeps K and V as int8 counts, with every key allowed and SFSA that
    `fused_sfsa` computes: the neurons' firing, the new K/V written as counts into the layer's buffers and the
    attention in one native call (`spiking_lm.nn.native.sfsa_decode`), the same values; `None` (nothing written)
    elsewhere."""
    query = membranes[0]
    steps, batch = query.shape[:2]
    units = _int8_cache_grows(attention, cache, execution, query)
    if units is None:
        return None
    layer = cache.layers[attention.layer_idx]
    lengths = (1, layer.keys.shape[-2] + 1, attention.causal, query.device, batch)
    if not execution.allows_all(execution.allowed_keys(allowed_keys, attention_mask, *lengths)):
        return None
    buffers, length = reserve(layer, 1)
    keys, values = (buffer[..., : length + 1, :] for buffer in buffers)
    fire = _fire_table(firings)
    fused = fused_sfsa(attention, query, keys, values, *units, (membranes[1], membranes[2], *units), fire, True)
    if fused is not None:
        layer.keys, layer.values = keys, values
    return fused


_CACHED_KEYS = (torch.int8, torch.int64)  # int8 counts, or 0/1 spikes as `pack_bits` words

_FIRE_TABLES: dict = {}


def _fire_table(fire: tuple) -> torch.Tensor:
    """`sfsa_decode`'s table of how Q, K and V fire, made once per set of neurons' parameters."""
    table = _FIRE_TABLES.get(fire)
    if table is None:
        table = _FIRE_TABLES[fire] = fire_table(fire)
    return table


def _int8_cache_grows(attention, cache, execution, query) -> list | None:
    """The K and V units of the cache where `SpikingSelfAttention.attend` would append K/V counts (or K bits) in
    place to a `DynamicLayer` and run `fused_sfsa` on it (its `cache_format`, `native_attention`,
    `fused_sfsa_applies`), else `None`."""
    index = attention.layer_idx
    if len(cache.layers) <= index or type(cache.layers[index]).__name__ != "DynamicLayer" or cache.offloading:
        return None
    layer = cache.layers[index]
    if layer.get_seq_length() == 0 or layer.values.dtype != torch.int8 or layer.keys.dtype not in _CACHED_KEYS:
        return None
    if getattr(layer, "spiking_lm_nonfinite", False):  # the module's code refuses to read it on
        return None
    units, _ = attention.cache_format(execution, query.shape[0] * query.shape[1])
    if None in units:  # K/V as fp32
        return None
    return units if native_attention(attention, query) and fused_sfsa_applies(attention) else None


def _normalized(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``: the operation `nn.LayerNorm.forward` runs (`F.layer_norm`'s), without its Python layers."""
    parameters = norm._parameters
    return torch.layer_norm(x, norm.normalized_shape, parameters["weight"], parameters["bias"], norm.eps)


def _firing(neuron, steps: int):
    """``(fire, parameters)`` of `spike_products` for the neurons `decode_block` supports, else `None`: the LIF
    (soft reset) and, at one time step, the integer LIF and its normalized form, in integer mode, without offsets."""
    if neuron.record_firing_rate or neuron.backend == "inductor" or neuron.coding.has_offset:
        return None
    if type(neuron) is LIFNeuron and neuron.v_reset is None:
        return "lif", (float(neuron.beta), float(neuron.v_threshold), 0.0)
    integer = type(neuron) in (IntegerLIFNeuron, NormalizedIntegerLIFNeuron)
    if integer and steps == 1 and neuron.spike_mode == "integer":
        return "integer", (0.0, float(neuron.spike_max), float(neuron.spike_scale))
    return None


def _spike_fed(layers, membrane: torch.Tensor, neuron, steps: int, firing) -> list[torch.Tensor] | None:
    """The int8 ``layers`` applied to the spikes ``neuron`` fires on ``membrane`` ``(T, B, 1, in)`` (its `_firing`),
    each ``(T·B, out)``, in one native call; `None` where a count is not an int8."""
    coding = neuron.coding
    plan = product_plan(layers, coding.unit, None)
    if plan is None:
        return None
    fire, parameters = firing
    found = spike_products(membrane.reshape(-1, membrane.shape[-1]), plan, 0.0, coding.unit, fire, parameters, steps)
    return None if found is None else found[0]


def _supported(hidden, cache, block: _Block) -> tuple | None:
    """The neurons' `_firing` where `decode_block` covers this call, else `None`: one position of at most
    `NATIVE_MAX_ROWS` fp32 CPU rows with a cache, no gradient and nothing recorded; a `_Block.supported` block in
    eval mode whose neurons `_firing` covers, at sizes their generic forward runs eagerly; the
    native library. (The attention itself runs the module's own code, `SpikingSelfAttention.attend`, whatever its
    cache holds.)"""
    steps, batch, length, _ = hidden.shape
    rows = steps * batch
    if not block.supported or cache is None or length != 1 or rows > NATIVE_MAX_ROWS or torch.is_grad_enabled():
        return None
    if hidden.dtype != torch.float32 or hidden.device.type != "cpu" or torch.compiler.is_compiling():
        return None
    if active_recorders() or native_library() is None or rows * block.widest >= AUTO_COMPILE_MIN_NUMEL:
        return None
    if any(linear.training for linear in block.linears):
        return None
    firings = tuple(_firing(neuron, steps) for neuron in block.neurons)
    return None if None in firings else firings


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
    spikes with a power-of-two unit and no offset, no gradient, nothing recorded, and the native library."""
    coding = attention.q_neuron.coding
    unit = coding.unit
    return (
        attention.kind == "sfsa"
        and query.shape[-2] <= NATIVE_MAX_QUERIES
        and query.dtype == torch.float32
        and query.device.type == "cpu"
        and not (torch.is_grad_enabled() and query.requires_grad)
        and unit is not None
        and not coding.has_offset
        and math.frexp(unit)[0] == 0.5
        and attention.attn_neuron.coding.zero_one
        and not active_recorders()
        and not observing_spikes()
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


def fused_sfsa(attention, query, keys, values, key_unit, value_unit, appended=None, fire=None, checked=False):
    """``(context (T, B, L, D), attention spikes)`` of `sfsa_on_int8_cache` with the value unit applied, in one
    native call (`spiking_lm.nn.native.sfsa_decode`), bit for bit, where `fused_sfsa_applies` (the caller checks
    that every key is allowed; ``checked``: and that it applies); `None` elsewhere. ``appended`` and ``fire``:
    `sfsa_decode`'s, the new position written into the cache (``keys`` and ``values`` include its row) and the
    query and it given as membranes."""
    if not (checked or fused_sfsa_applies(attention)):
        return None
    neuron = attention.attn_neuron
    steps, batch, heads, _, width = query.shape
    unit = attention.q_neuron.coding.unit
    keys, values = (x.reshape(batch * steps * heads, -1, x.shape[-1]) for x in (keys, values))
    arguments = (unit * key_unit, attention.score_scale(), neuron.beta, neuron.v_threshold, math.sqrt(width))
    fused = sfsa_decode(query.contiguous(), unit, keys, values, *arguments, value_unit, appended, fire)
    return None if fused is None else (fused[1], fused[0])


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
