"""One decoding step of a block in few calls: W8 Linears and SFSA on the event backend's int8 K/V cache.

Generating one token, a block of the generic code (`spiking_lm.nn.blocks.membrane_shortcut_layer`) runs ~40 small
operations, each through module calls, the norm → neuron dispatch and the checks every product and attention call
makes again; on a CPU those cost more than the arithmetic. `decode_block` runs the same step with the same
operations in the same order — each norm in torch, each spike-fed product with its neuron's firing, counts and
int8 sums in one native call (`ProductPlan.run`), and where the cache keeps K/V as int8 counts the Q/K/V firing,
the append and SFSA in one more (`spiking_lm.nn.native.sfsa_decode`; elsewhere the module's own
`SpikingSelfAttention.attend`) — so that its outputs are bit for bit those of the generic block (tested).

What the step decides about the modules — which of its neurons fire how, the int8 matrices' `ProductPlan`s,
whether SFSA reads the int8 cache in place and in which units — is worked out once by the functions the generic
code asks (`_plan`) and kept on the attention module while nothing it read changes: the same module objects, no
attribute assigned on a neuron, W8 Linear or attention module since (`spiking_lm.nn.execution.settings_version`:
flags, neuron constants, spike modes, `train`/`eval`), the same int8 tensors in the Linears, unchanged in place
(identity and version), and the same attention config fields, execution backend and rows (`_state`). What belongs
to the call (gradient mode, recorders, the dtype of the input, the cache and the mask) is checked at every call.
Where the block or the call is anything else than what the plan covers, `decode_block` returns `None` and the
generic block runs.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import torch
from torch import nn

from .attention import allowed_keys
from .decoding import fused_sfsa_applies, fused_sfsa_scalars, native_attention_kind, reserve
from .dispatch import AUTO_COMPILE_MIN_NUMEL
from .execution import settings_version
from .native import FIRES, NATIVE_MAX_ROWS, fire_table, native_library, run_counts_product, run_sfsa_decode
from .neurons import IntegerLIFNeuron, LIFNeuron, NormalizedIntegerLIFNeuron
from .recording import active_recorders
from .weight_quantization import Int8Linear, int8_linears_on_spikes, product_plan

__all__ = ["decode_block"]


class _Plan(NamedTuple):
    """The modules of one block that `decode_block` reads, looked up once, and what it works out about them for
    their settings (`_plan`)."""

    norms: tuple  # block input, q, k, v, attention output, MLP input, fc1, fc2
    neurons: tuple  # block input, q, k, v, MLP input, fc1
    linears: tuple  # q, k, v, fc1, fc2, output projection
    firings: tuple  # the six neurons' (`FIRES` code, parameters)
    units: tuple  # the spike units of the three neurons whose spikes feed products: block input, MLP input, fc1
    products: tuple  # the `ProductPlan`s of Q/K/V, fc1 and fc2
    sfsa: tuple | None  # SFSA in place on the int8 cache: `_sfsa`'s constants, else `None`
    context: tuple | None  # the output projection: `run_counts_product`'s (unit, qweight, scale[, bias]), or `None`


class _Kept(NamedTuple):
    """A block's `_Plan` (`None`: not covered) and what it was made for, kept on its attention module."""

    modules: tuple  # the block's modules, compared by identity
    state: tuple  # `_state` when it was made
    tensors: list  # the int8 Linears' stored tensors then (their versions are compared)
    versions: list
    plan: _Plan | None


def _state(attention, execution, steps: int, batch: int) -> tuple:
    """What a `_Plan` depends on besides its modules and their tensors: `settings_version`, the execution's backend
    (all a plan reads of the execution), the rows, the attention's config fields."""
    config = attention.config
    return (settings_version(), execution.inference_backend, steps, batch, config.sfsa_output_scale,
            config.attn_score_scale)  # fmt: skip


def decode_block(hidden, attention_mask, cache, attn_norm, attn_neuron, attention, mlp_norm, mlp_neuron,
                 mlp_modules, execution):  # fmt: skip
    """``(membrane, attention weights)`` of `membrane_shortcut_layer` for one decoded position ``(T, B, 1, D)``,
    bit for bit, or `None` where the block or the call is not one the plan covers (nothing is changed then)."""
    plan = _call_plan(hidden, cache, (attn_norm, attn_neuron, attention, mlp_norm, mlp_neuron, mlp_modules), execution)
    if plan is None:
        return None
    norms, neurons = plan.norms, plan.neurons
    steps, batch, _, width = hidden.shape
    heads = attention.num_heads
    outputs = _products(plan, 0, _normalized(attn_norm, hidden), steps)
    if outputs is None:  # not int8 counts (a non-finite membrane): the generic block decides
        return None
    # Q, K, V membranes in the heads' layout (T, B, H, 1, d): for one position the memory of (T, B, 1, D)
    membranes = [_normalized(norm, output.view(steps, batch, 1, width)).view(steps, batch, heads, 1, -1)
                 for output, norm in zip(outputs, norms[1:4], strict=True)]  # fmt: skip
    attended = None if plan.sfsa is None else _attend_in_place(attention, plan.sfsa, membranes, attention_mask, cache,
                                                               execution)  # fmt: skip
    if attended is None:  # the module's own cache and attention code (nothing was written)
        query, key, value = (n.fire(m) for n, m in zip(neurons[1:4], membranes, strict=True))  # as their forward
        attended = attention.attend(query, key, value, None, attention_mask, cache, execution)
    context, weights = attended
    hidden = hidden + _normalized(norms[4], _project(attention, plan.context, context, execution))
    fc1, fc2 = plan.linears[3:5]
    outputs = _products(plan, 1, _normalized(mlp_norm, hidden), steps)
    if outputs is None:  # the cache holds this position now: the generic MLP finishes the block
        outputs = int8_linears_on_spikes([fc1], mlp_neuron.fire(_normalized(mlp_norm, hidden)), mlp_neuron)
    membrane = _normalized(norms[6], outputs[0].view(steps, batch, 1, -1))
    outputs = _products(plan, 2, membrane, steps)
    if outputs is None:
        outputs = int8_linears_on_spikes([fc2], neurons[5].fire(membrane), neurons[5])
    return hidden + _normalized(norms[7], outputs[0].view(steps, batch, 1, width)), weights


def _call_plan(hidden, cache, arguments, execution) -> _Plan | None:
    """The block's `_Plan` where this call is one it covers: one position of at most `NATIVE_MAX_ROWS` fp32 CPU
    rows with a cache, no gradient, nothing recorded, the native library; else `None`. The plan is kept until one
    of the modules is replaced, `_state` changes or a stored int8 tensor is changed in place."""
    steps, batch, length, _ = hidden.shape
    if cache is None or length != 1 or steps * batch > NATIVE_MAX_ROWS or torch.is_grad_enabled():
        return None
    if hidden.dtype != torch.float32 or not hidden.is_cpu or active_recorders() or native_library() is None:
        return None
    if torch.compiler.is_compiling():
        return None
    attn_norm, attn_neuron, attention, mlp_norm, mlp_neuron, mlp_modules = arguments
    modules = (attn_norm, attn_neuron, mlp_norm, mlp_neuron, *mlp_modules, *attention._modules.values())
    state = _state(attention, execution, steps, batch)
    kept = attention.__dict__.get("_decode_step")
    if kept is None or kept.state != state or not _same(kept.modules, modules) or not _same_tensors(kept):
        plan = _plan(arguments, execution, steps, batch)
        tensors = [] if plan is None else _stored(plan)
        kept = _Kept(modules, state, tensors, [t._version for t in tensors], plan)
        attention.__dict__["_decode_step"] = kept  # a plain attribute: not a submodule, not saved
    return kept.plan


def _same(kept, current) -> bool:
    """Whether two sequences hold the same objects."""
    return len(kept) == len(current) and all(map(operator.is_, kept, current))


def _stored(plan: _Plan) -> list:
    """The int8 Linears' stored tensors now (`Int8Linear.stored_tensors`)."""
    return [t for linear in plan.linears for t in linear.stored_tensors()]


def _same_tensors(kept: _Kept) -> bool:
    """Whether the plan's Linears hold the tensors it was made from, unchanged in place (a replacement need not go
    through an attribute assignment: `register_buffer`, `Module.to`)."""
    return (
        kept.plan is None
        or _same(kept.tensors, _stored(kept.plan))
        and kept.versions == [t._version for t in kept.tensors]
    )


def _plan(arguments, execution, steps: int, batch: int) -> _Plan | None:
    """The `_Plan` of a block's modules now, or `None` where `decode_block` does not cover them: LayerNorms, W8
    Linears in eval mode whose products the native kernel reads, SFSA with an output projection, neurons `_firing`
    covers, at sizes their generic forward runs eagerly."""
    attn_norm, attn_neuron, attention, mlp_norm, mlp_neuron, mlp_modules = arguments
    fc1, fc1_norm, fc_neuron, fc2, fc2_norm = mlp_modules
    norms = (attn_norm, attention.q_norm, attention.k_norm, attention.v_norm, attention.output_norm(), mlp_norm,
             fc1_norm, fc2_norm)  # fmt: skip
    neurons = (attn_neuron, attention.q_neuron, attention.k_neuron, attention.v_neuron, mlp_neuron, fc_neuron)
    q, k, v = attention.projections()
    linears = (q, k, v, fc1, fc2, attention.output_projection())
    if attention.kind != "sfsa" or any(type(norm) is not nn.LayerNorm for norm in norms):
        return None
    if any(type(linear) is not Int8Linear or linear.training for linear in linears):
        return None
    if steps * batch * max(linear.out_features for linear in linears) >= AUTO_COMPILE_MIN_NUMEL:
        return None
    firings = tuple(_firing(neuron, steps) for neuron in neurons)
    if None in firings:
        return None
    codes = tuple((FIRES[kind], parameters) for kind, parameters in firings)
    units = tuple(neurons[i].coding.unit for i in _FEEDING)
    groups = ([q, k, v], [fc1], [fc2])
    products = tuple(product_plan(layers, unit, None) for layers, unit in zip(groups, units, strict=True))
    if None in products:
        return None
    out, context_unit = linears[5], attention.context_unit()
    context = None
    stored = out.stored_tensors()
    if context_unit is not None and not out.dynamic_inputs and all(t.dtype == torch.float32 for t in stored[1:]):
        context = (context_unit, *(t.contiguous() for t in stored))  # `counts_product`'s operands
    sfsa = _sfsa(attention, execution, steps * batch, firings[1:4])
    return _Plan(norms, neurons, linears, codes, units, products, sfsa, context)


def _sfsa(attention, execution, rows: int, firings) -> tuple | None:
    """`_Plan.sfsa`: where the attention appends K/V counts (or K bits) to an int8 cache and `fused_sfsa`'s SFSA
    reads it (its `cache_format`, `native_attention_kind`, `fused_sfsa_applies`), the constants of that call as
    `run_sfsa_decode` takes them: ``(scalars, K unit, V unit, fire table)``."""
    units, _ = attention.cache_format(execution, rows)
    if None in units or not (native_attention_kind(attention) and fused_sfsa_applies(attention)):
        return None
    return (*fused_sfsa_scalars(attention, units[0]), units[1]), *units, fire_table(firings)


def _attend_in_place(attention, sfsa: tuple, membranes, attention_mask, cache, execution):
    """`SpikingSelfAttention.attend` of the spikes the Q, K, V neurons fire on their ``membranes`` ``(T, B, H, 1, d)``
    for one position whose cache layer keeps K and V as int8 counts (or K as bits), with every key allowed: the
    neurons' firing, the new K/V written as counts into the layer's buffers and SFSA in one native call
    (`spiking_lm.nn.native.sfsa_decode`), the same values; `None` (nothing written) elsewhere."""
    layer = _int8_layer(cache, attention.layer_idx)
    if layer is None:
        return None
    query = membranes[0]
    lengths = (1, layer.keys.shape[-2] + 1, attention.causal, query.device, query.shape[1])
    if not execution.allows_all(execution.allowed_keys(allowed_keys, attention_mask, *lengths)):
        return None
    buffers, length = reserve(layer, 1)
    grown = [buffer[..., : length + 1, :] for buffer in buffers]
    groups = query.shape[0] * query.shape[1] * query.shape[2]  # T·B·H
    keys, values = (x.view(groups, -1, x.shape[-1]) for x in grown)
    scalars, key_unit, value_unit, fire = sfsa
    fused = run_sfsa_decode(query, keys, values, scalars, (membranes[1], membranes[2], key_unit, value_unit), fire)
    if fused is None:
        return None
    layer.keys, layer.values = grown
    return fused[1], fused[0]


_CACHED_KEYS = (torch.int8, torch.int64)  # int8 counts, or 0/1 spikes as `pack_bits` words


def _int8_layer(cache, index: int):
    """The cache's layer ``index`` where it is a `DynamicLayer` holding earlier positions as int8 V counts and K
    counts or bits, finite, not offloaded (what `SpikingSelfAttention.attend` appends to in place); else `None`."""
    if len(cache.layers) <= index or cache.offloading:
        return None
    layer = cache.layers[index]
    if type(layer).__name__ != "DynamicLayer" or layer.get_seq_length() == 0:
        return None
    if layer.values.dtype != torch.int8 or layer.keys.dtype not in _CACHED_KEYS:
        return None
    return None if getattr(layer, "spiking_lm_nonfinite", False) else layer  # the module's code refuses it


def _project(attention, context_plan, context, execution) -> torch.Tensor:
    """The output projection of SFSA's ``context`` counts: `counts_product` with the plan's tensors where it applies
    (`int8_on_context`'s rule), else the module's `project_context`."""
    if context_plan is not None and torch.get_float32_matmul_precision() == "highest":
        unit, *tensors = context_plan
        found = run_counts_product(context.reshape(-1, context.shape[-1]).contiguous(), unit, *tensors)
        if found is not None:
            return found.view(*context.shape[:-1], -1)
    return attention.project_context(context, None, execution)


def _normalized(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(x)``: the operation `nn.LayerNorm.forward` runs (`F.layer_norm`'s), without its Python layers."""
    parameters = norm._parameters
    return torch.layer_norm(x, norm.normalized_shape, parameters["weight"], parameters["bias"], norm.eps)


def _firing(neuron, steps: int):
    """``(fire, parameters)`` of `spike_products` for the neurons `decode_block` supports, else `None`: the LIF (soft
    reset) and, at one time step, the integer LIF and its normalized form, in integer mode, without offsets."""
    if neuron.record_firing_rate or neuron.backend == "inductor" or neuron.coding.has_offset:
        return None
    if type(neuron) is LIFNeuron and neuron.v_reset is None:
        return "lif", (float(neuron.beta), float(neuron.v_threshold), 0.0)
    integer = type(neuron) in (IntegerLIFNeuron, NormalizedIntegerLIFNeuron)
    if integer and steps == 1 and neuron.spike_mode == "integer":
        return "integer", (0.0, float(neuron.spike_max), float(neuron.spike_scale))
    return None


_FEEDING = (0, 4, 5)  # the neuron whose spikes feed each product: block input (Q/K/V), MLP input (fc1), fc1 (fc2)


def _products(plan: _Plan, which: int, membrane: torch.Tensor, steps: int) -> list[torch.Tensor] | None:
    """The ``which``-th product of the plan (Q/K/V, fc1, fc2) of the spikes its neuron fires on ``membrane``
    ``(T, B, 1, in)``, each ``(T·B, out)``, in one native call; `None` where a count is not an int8."""
    fire, parameters = plan.firings[_FEEDING[which]]
    found = plan.products[which].run(membrane.view(-1, membrane.shape[-1]), fire, parameters, steps, plan.units[which])
    return None if found is None else found[0]
