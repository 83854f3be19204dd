"""`SpikingSelfAttention`: the attention module of every architecture, with its K/V cache format.

Q, K, V = SN(Norm(Linear_{q,k,v}(S))) from the block's input spikes S, then the attention kind the config names
(`spiking_lm.nn.attention`: WSSA/CWSSA winner-take-all, SFSA softmax-free, SSA), then (except SFSA) a neuron that
re-spikes the context. Parameter names follow each teacher family and are passed in.

The cache stores spike K/V per layer as ``(B, T·H, L, ·)``; on the event backend in compact exact formats (binary
keys as bits, other spike values as int8 counts, `_cached`). SFSA's context is integer counts (times a constant):
a W8 model's int8 output projection multiplies them exactly (`int8_on_context`).

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from .attention import (
    allowed_keys,
    softmax_free_attention,
    spike_matmul,
    spike_scores,
    spikformer_attention,
    uses_compact_products,
    winner_take_all,
)
from .bitpack import PACKED_MAX_QUERIES, pack_bits, packs_keys, unpack_bits
from .decoding import (
    append_in_place,
    cache_unit,
    fused_sfsa,
    fused_sfsa_kind,
    native_attention,
    sfsa_on_int8_cache,
)
from .event import integer_counts, worth_gathering
from .execution import WatchedSettings, execution_or_default
from .native import NATIVE_MAX_ROWS, counts_product, native_library
from .neurons import build_neuron, neuron_from_config
from .norms import build_norm, normalize, normalize_and_fire
from .recompute import recompute_region
from .recording import active_recorders, observing_spikes
from .spike_linear import exact_coding, exact_output_dtype, linear_on_spikes, linears_on_spikes
from .weight_quantization import Int8Linear

__all__ = ["SpikingSelfAttention", "int8_on_context"]


def _append(cache, layer_idx: int, keys: torch.Tensor, values: torch.Tensor):
    """``cache.update(keys, values, layer_idx)``, refusing to mix storage formats: each inference backend stores
    its own dtypes (bits, int8 counts, fp32), and torch.cat would promote a mix silently or fail on the widths."""
    stored = _stored_kinds(cache, layer_idx)
    kinds = (keys.dtype, values.dtype)
    if stored is not None and stored != kinds:
        raise ValueError(
            f"this cache was filled on the other inference backend (K/V stored as {stored}, this one "
            f"stores {kinds}) and cannot be continued on this one; start generation again after "
            "set_inference_backend()"
        )
    if stored is not None and type(cache.layers[layer_idx]).__name__ == "DynamicLayer" and not cache.offloading:
        return append_in_place(cache.layers[layer_idx], keys, values)
    return cache.update(keys, values, layer_idx)


def _stored_kinds(cache, layer_idx: int):
    """The dtypes of the K/V a cache already holds for this layer (its storage format), `None` if empty."""
    if cache.get_seq_length(layer_idx) == 0:
        return None
    layer = cache.layers[layer_idx]
    return layer.keys.dtype, layer.values.dtype


class SpikingSelfAttention(WatchedSettings, nn.Module):
    """Spiking self-attention of ``config.attention_type`` with teacher-family parameter names.

    Args:
        config: a spiking model config (hidden size, heads, neuron and attention options).
        layer_idx (`int`): index of the layer, for the cache.
        projection_names (`tuple[str, str, str, str | None]`): names of the q, k, v and output Linear layers;
            `None` for the output means the caller owns the output projection (BERT's ``attention.output``).
        output_norm_name (`str`, *optional*): name of the norm after the output projection.
        bias (`bool`): whether the projections have biases.
        causal (`bool`): whether queries may only see earlier keys.

    Forward returns ``(output, producer, weights)``: with an output projection, ``output`` is the membrane
    for the residual stream and ``producer`` is `None`; without, ``output`` is what the output projection must
    consume and ``producer`` the neuron that produced it (for binary-mode folding). ``weights`` are the raw
    attention weights ``(T, B, H, Lq, Lk)``; `run_layers` turns them into maps only when they are asked for.

    While training with T > 1, only the input spikes (as uint8 counts), or with bf16 GEMMs the exact bf16 Q/K/V
    Linear outputs, are kept for backward: the rest of the attention and the re-spiked context are recomputed in
    the backward pass (`spiking_lm.nn.recompute`).
    """

    def __init__(self, config, layer_idx, projection_names, output_norm_name="o_norm", bias=False, causal=False):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.kind = config.attention_type
        self.causal = causal
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.names = projection_names
        for name in projection_names[:3]:
            self.add_module(name, nn.Linear(config.hidden_size, config.hidden_size, bias=bias))
        self.q_norm, self.k_norm, self.v_norm = (build_norm(config) for _ in range(3))
        self.q_neuron, self.k_neuron, self.v_neuron = (neuron_from_config(config) for _ in range(3))
        if self.kind == "sfsa":
            self.attn_neuron = build_neuron(
                "lif", beta=config.beta, v_threshold=config.attn_threshold, surrogate=config.surrogate
            )
        elif self.kind == "ssa":
            self.output_neuron = build_neuron("lif", beta=config.beta, v_threshold=0.5, surrogate=config.surrogate)
        else:
            self.output_neuron = neuron_from_config(config)
        self.output_norm_name = None
        if projection_names[3] is not None:
            self.add_module(projection_names[3], nn.Linear(config.hidden_size, config.hidden_size, bias=bias))
            self.output_norm_name = output_norm_name
            self.add_module(output_norm_name, build_norm(config))

    def projections(self) -> list[nn.Linear]:
        """The q, k and v Linears (read from the submodules' table: decoding asks at every step)."""
        modules = self._modules
        return [modules[name] for name in self.names[:3]]

    def output_projection(self):
        """The output Linear (`None` where the caller owns it)."""
        return None if self.names[3] is None else self._modules[self.names[3]]

    def output_norm(self):
        """The norm after the output projection (`None` without one)."""
        return None if self.output_norm_name is None else self._modules[self.output_norm_name]

    def _project(self, membranes, execution) -> list[torch.Tensor]:
        """Q, K and V spike values ``(T, B, H, L, d)`` from the outputs of their Linears: norm → neuron. While
        training in bf16 they come out in bf16, the dtype the attention products convert them to."""
        norms, neurons = (self.q_norm, self.k_norm, self.v_norm), (self.q_neuron, self.k_neuron, self.v_neuron)
        dtype = execution.matmul_dtype
        # The spikes need gradients if the membranes or the norms do (a recomputed region's first run gets
        # detached inputs); only then do the products run in bf16.
        grads = any(m.requires_grad for m in membranes) or any(p.requires_grad for n in norms for p in n.parameters())
        low = dtype != torch.float32 and torch.is_grad_enabled() and grads
        spike_dtype = dtype if low and not observing_spikes() else None
        # bf16 Linear outputs (`exact_outputs`) widen in the norm, to the dtype of the weights (W8: of the scales)
        first = self.projections()[0]
        width = first.weight_scale.dtype if isinstance(first, Int8Linear) else first.weight.dtype
        compute_dtype = width if membranes[0].dtype != width else None
        options = (None, spike_dtype, compute_dtype, self.num_heads)
        return [
            neuron.coding.values(normalize_and_fire(norm, neuron, membrane, *options))
            for membrane, norm, neuron in zip(membranes, norms, neurons, strict=True)
        ]

    def _cached(self, key, value, cache, query_rows: int, execution, raw: bool = False):
        """Append this step's spike K/V to the cache, stored as ``(B, T·H, L, ·)``, and return all of them with
        their units and whether they are known finite: ``(keys, values, key_unit, value_unit, finite)``, the spike
        values being unit × what is returned.

        On the event backend, for projections large enough to take it (`worth_gathering`; below, the event
        backend runs the dense code), exact in every case (docs/event-backend.md gives the measurements):

        - K of a binary neuron read by binary queries is stored as `pack_bits` words, 8 bytes per position and head
          of 64 (int8 counts take 64), in caches of at least `PACKED_MIN_HEADS` T·B·H rows, or of any size where
          decoding runs the native SFSA (`fused_sfsa_kind`, the library built), which reads them. With at most
          `PACKED_MAX_QUERIES` query rows the words come back as they are, for Q Kᵀ by AND and popcount
          (`spike_scores`); more rows unpack them for a GEMM.
        - Other K and V whose neurons emit integer multiples of a unit (binary spikes, the integer family without
          an offset) are stored as int8 counts, a quarter of fp32's bytes to keep and append, and come back as
          fp32 counts (one widening pass, no scaling: the attention applies the units to its small operands).

        Without earlier tokens in the cache the fresh K/V are returned as they are (unit 1). The last item says
        whether both came out of compact storage (bits or int8 counts), hence finite. With ``raw``, K and V
        stored as int8 counts come back as stored, ``(B, T·H, L, d)`` int8, for `native_attention`."""
        steps, batch, _, length, _ = key.shape
        units, packed = self.cache_format(execution, steps * batch)

        nonfinite = []

        def fold(x, unit, pack=False, neuron=None):
            x = x.permute(1, 0, 2, 3, 4).reshape(batch, steps * self.num_heads, -1, self.head_dim)
            if pack:
                return pack_bits(x)
            if unit is not None and not neuron.coding.binary and not bool(torch.isfinite(x).all()):
                nonfinite.append(True)  # an int8 count cannot hold NaN/inf (0/1 spikes are always finite)
            return x if unit is None else integer_counts(x, unit)

        folded = fold(key, units[0], packed, self.k_neuron), fold(value, units[1], neuron=self.v_neuron)
        keys, values = _append(cache, self.layer_idx, *folded)
        layer = cache.layers[self.layer_idx]
        if nonfinite:
            layer.spiking_lm_nonfinite = True  # kept with the layer: reading it back would be silently wrong
        if keys.shape[-2] == length:  # nothing cached before: no need to read back what was just stored
            return key, value, 1.0, 1.0, False
        if getattr(layer, "spiking_lm_nonfinite", False):
            raise ValueError(
                f"layer {self.layer_idx}'s K/V cache holds a position whose keys or values were NaN or inf: the "
                "event backend keeps them as int8 counts, which cannot hold those, so this cache cannot be "
                "continued; decode on the dense backend (set_inference_backend('dense')) to follow where they go"
            )
        compact = (units[0] is not None or packed) and units[1] is not None
        if raw and None not in units:
            return keys, values, units[0], units[1], True
        unfolded = (self._unfold(x, steps, query_rows, key.dtype) for x in (keys, values))
        return *unfolded, units[0] or 1.0, units[1] or 1.0, compact

    def _unfold(self, x, steps: int, query_rows: int, dtype):
        """Cached K or V ``(B, T·H, L, ·)`` as the attention reads them, ``(T, B, H, L, ·)``: int8 counts widened to
        ``dtype``, words of bits as they are for at most `PACKED_MAX_QUERIES` query rows, else unpacked."""
        unpack = x.dtype == torch.int64 and query_rows > PACKED_MAX_QUERIES
        x = unpack_bits(x, self.head_dim, dtype) if unpack else x if x.dtype == torch.int64 else x.to(dtype)
        return x.view(x.shape[0], steps, self.num_heads, -1, x.shape[-1]).permute(1, 0, 2, 3, 4)

    def cache_format(self, execution, sequences: int) -> tuple[list, bool]:
        """How `_cached` stores K/V for ``sequences`` = T·B rows: ``([K unit, V unit], K packed as bits)``, a unit
        `None` where that tensor stays fp32 (the rules in `_cached`'s docstring)."""
        projections = self.projections()
        event = execution.uses_event_path(projections[0]) and worth_gathering(projections) and not observing_spikes()
        units = [cache_unit(neuron) if event else None for neuron in (self.k_neuron, self.v_neuron)]
        binary = (n.coding.binary and cache_unit(n) == 1 for n in (self.q_neuron, self.k_neuron))
        # the native decoding SFSA reads bits at any size; the torch AND/popcount pays only in large caches
        native = self.kind == "sfsa" and native_library() is not None and fused_sfsa_kind(self)
        return units, event and all(binary) and (native or packs_keys(sequences * self.num_heads))

    def forward(self, spikes, source_neuron, attention_mask=None, cache=None, execution=None):
        execution = execution_or_default(execution)
        producer = None if self.kind == "sfsa" else self.output_neuron

        def attend(*membranes):
            return self._context(membranes, producer, attention_mask, cache, execution)

        def attend_spikes(spikes):
            return attend(*linears_on_spikes(self.projections(), spikes, source_neuron, execution))

        training = cache is None and spikes.shape[0] > 1
        exact = exact_output_dtype(self.projections(), source_neuron, execution) if training else None
        if exact is not None and self._compact_products(execution):
            # SFSA's products keep their 0/1 operands and overlap counts as uint8 and the norm → neuron functions
            # keep the bf16 Linear outputs: a quarter of the plain graph's attention memory, nothing recomputed.
            membranes = linears_on_spikes(self.projections(), spikes, source_neuron, execution, exact_outputs=True)
            context, weights = attend(*membranes)
        elif exact is not None:  # training keeps the Q/K/V Linear
            # outputs in the dtype of their GEMM (bf16: 2 bytes per value, lossless), so that the norms, neurons
            # and the attention recompute in backward without the three GEMMs.
            membranes = linears_on_spikes(self.projections(), spikes, source_neuron, execution, exact_outputs=True)
            parameters = partial(self._attention_parameters, self.names[:3])
            context, weights = recompute_region(attend, tuple(membranes), (exact,) * 3, parameters)
        elif training:  # training keeps only the input spikes (uint8): Q, K, V
            # and the attention are recomputed in backward. At T = 1 the plain graph keeps little: left as is.
            coding = (exact_coding(source_neuron),)
            context, weights = recompute_region(attend_spikes, (spikes,), coding, self._attention_parameters)
        else:
            context, weights = attend_spikes(spikes)
        if self.output_norm_name is None:
            return context, producer, weights
        projection = self.output_projection()
        # Training in bf16, the projection's exact bf16 output is widened inside the compiled output norm.
        low = exact_output_dtype([projection], producer, execution) is not None
        output = self.project_context(context, producer, execution, exact_outputs=low)
        widen = projection.weight.dtype if low else None
        return normalize(getattr(self, self.output_norm_name), output, widen, self.v_neuron.backend), None, weights

    def _zero_one_operands(self) -> bool:
        """Whether Q, K and V are 0/1 spikes (binary neurons, unit 1, no offset)."""
        return all(n.coding.zero_one for n in (self.q_neuron, self.k_neuron, self.v_neuron))

    def _compact_products(self, execution) -> bool:
        """Whether training runs SFSA's products through `SpikingAttentionProducts` (see `uses_compact_products`)."""
        if self.kind != "sfsa" or observing_spikes() or not self._zero_one_operands():
            return False
        return uses_compact_products(self.attn_neuron, self.head_dim, execution.matmul_dtype)

    def _attention_parameters(self, left_out: tuple = ()) -> list:
        """Trainable parameters used from the input spikes up to the context (not the output projection, nor the
        modules named in ``left_out``)."""
        outside = (self.names[3], self.output_norm_name, *left_out)
        children = (module for name, module in self.named_children() if name not in outside)
        return [p for module in children for p in module.parameters() if p.requires_grad]

    def _context(self, membranes, producer, attention_mask, cache, execution):
        """``(context (T, B, L, D), attention weights (T, B, H, Lq, Lk))`` from the Q/K/V Linear outputs:
        Q/K/V spikes, attention, re-spiking."""
        return self.attend(*self._project(membranes, execution), producer, attention_mask, cache, execution)

    def attend(self, query, key, value, producer, attention_mask, cache, execution):
        """``(context (T, B, L, D), attention weights (T, B, H, Lq, Lk))`` from Q/K/V spike values
        ``(T, B, H, L, d)``: the cache, the attention, re-spiking by ``producer`` (`None` for SFSA)."""
        key_unit = value_unit = 1.0
        finite = False  # K/V read back from int8 or bit storage are finite: no need to look for NaN/inf in them
        if cache is not None:
            raw = native_attention(self, query)
            key, value, key_unit, value_unit, finite = self._cached(key, value, cache, query.shape[-2], execution, raw)
        steps, batch, _, query_length, _ = query.shape
        lengths = (query_length, key.shape[-2], self.causal, query.device, batch)
        allowed = execution.allowed_keys(allowed_keys, attention_mask, *lengths)
        # Q (u_k K)ᵀ = (u_k Q) Kᵀ and A (u_v V) = u_v (A V): the units scale the query and the context (Lq rows),
        # not the cache (Lk rows); with power-of-two units (binary, ilif, nilif with D = 2ⁿ) bit for bit the same.
        every = self.kind == "sfsa" and execution.allows_all(allowed)
        if value.dtype == torch.int8:  # the cache as stored (int8 counts, K maybe as bits): SFSA in native kernels
            fused = fused_sfsa(self, query, key, value, key_unit, value_unit) if every else None
            if fused is not None:  # nothing records on this path (`native_attention`), SFSA re-spikes nothing
                return fused
            if key.dtype == torch.int64:  # K as bits: their AND/popcount in torch, V widened
                key, value = (self._unfold(x, steps, query_length, query.dtype) for x in (key, value))
                finite = True
        if value.dtype == torch.int8:
            context, weights = sfsa_on_int8_cache(self, query, key, value, key_unit, allowed, every)
        else:
            query = query if key_unit == 1 else query * key_unit
            context, weights = self._attend(query, key, value, allowed, execution.matmul_dtype, finite, every)
        if value_unit != 1:
            context = context * value_unit
        for recorder in active_recorders():
            recorder.spiking_attention(self, query, key, value, weights, allowed)
        context = context.transpose(2, 3).reshape(steps, batch, query_length, -1)  # (T, B, L, D)
        if producer is not None:
            # Counted in the units the neuron fires in: re-spiking a selected row of V is then the identity.
            context = producer(context / self.v_neuron.coding.scale)
        return context, weights

    def project_context(self, context, producer, execution, exact_outputs: bool = False) -> torch.Tensor:
        """The output projection of ``context`` (what ``producer`` fired; `None`: SFSA's integer counts)."""
        projection = self.output_projection()
        if producer is None and type(projection) is Int8Linear:  # int8 weights: exact sums (`int8_on_context`)
            recorders = active_recorders()
            for recorder in recorders:  # the int8 rows of the inputs some row counts, as `counts_product` reads them
                rows = int((context.reshape(-1, projection.in_features) != 0).any(0).sum())
                kind = "int8" if rows == projection.in_features else "gathered"
                recorder.weight_read(kind, 1, rows * projection.out_features)
            output = None if recorders else int8_on_context(projection, context, self.context_unit())
            if output is not None:
                return output
        return linear_on_spikes(projection, context, producer, execution, exact_outputs=exact_outputs)

    def context_unit(self) -> float | None:
        """u such that SFSA's context is integer counts times u (A_s V counted in V's unit, over √d) where u is a
        power of two, which the native int8 output projection needs (`int8_on_context`); else `None`."""
        coding = self.v_neuron.coding
        if self.kind != "sfsa" or self.config.sfsa_output_scale != "sqrt_d" or coding.unit is None:
            return None
        unit = coding.unit / math.sqrt(self.head_dim)
        return unit if not coding.has_offset and math.frexp(unit)[0] == 0.5 else None

    def score_scale(self) -> float:
        """SFSA's scale of the overlap counts before the attention neuron (``attn_score_scale``)."""
        return 1 / math.sqrt(self.head_dim) if self.config.attn_score_scale == "sqrt_d" else 1.0

    def _attend(self, query, key, value, allowed, dtype, finite=False, every=False):
        """``(context (T, B, H, L, d), attention weights)``; training multiplies in ``dtype`` (`spike_matmul`).

        A key or value that is not finite (NaN/inf fed to an integer neuron) reaches only the queries allowed to
        see it: the products run on it zeroed (0·NaN would be NaN at every masked pair) and the queries that
        may see it get NaN, as an ANN's would."""
        # 0/1 spikes are always finite (a NaN input does not cross the threshold): only other codings are checked
        may_be_nonfinite = not (finite or (self.k_neuron.coding.binary and self.v_neuron.coding.binary))
        if not (may_be_nonfinite and key.is_floating_point()):
            return self._attend_finite(query, key, value, allowed, dtype, every)
        # traced (torch.export / compile): no branch on the data, the masked path runs always
        if torch.compiler.is_compiling() or not math.isfinite((key.sum() + value.sum()).item()):
            bad = ~(torch.isfinite(key).all(-1) & torch.isfinite(value).all(-1))  # (T, B, H, Lk)
            key, value = key.masked_fill(bad.unsqueeze(-1), 0), value.masked_fill(bad.unsqueeze(-1), 0)
            poisoned = (allowed & bad.any(0).unsqueeze(-2)).any(-1, keepdim=True)  # (B, H, Lq, 1)
            context, weights = self._attend_finite(query, key, value, allowed, dtype)
            return context.masked_fill(poisoned, float("nan")), weights
        return self._attend_finite(query, key, value, allowed, dtype, every)

    def _attend_finite(self, query, key, value, allowed, dtype, every=False):
        """The attention of finite K/V; ``every``: ``allowed`` allows every pair (SFSA then skips its mask)."""
        config = self.config
        if self.kind == "sfsa":
            return softmax_free_attention(
                query, key, value, allowed, self.attn_neuron, self.score_scale(), config.sfsa_output_scale, dtype,
                self._zero_one_operands(), every,
            )  # fmt: skip
        if self.kind == "ssa":
            return spikformer_attention(query, key, value, allowed, matmul_dtype=dtype)
        scores = spike_scores(query, key, dtype)
        weights = winner_take_all(scores, allowed, config.wta_mode, config.wta_k, config.wta_temperature)
        return spike_matmul(weights, value, dtype), weights


def int8_on_context(layer, x: torch.Tensor, unit: float | None) -> torch.Tensor | None:
    """``layer(x)`` (`Int8Linear.forward`) for a context ``x`` ``(..., in)`` whose values are integer counts times
    the power of two ``unit`` (SFSA's, `SpikingSelfAttention.context_unit`), bit for bit, through the native
    `counts_product` (exact int32 sums, a quarter of the fp32 weight bytes); `None` where that does not apply
    (not an int8 layer of stored weights, no ``unit``, more than `NATIVE_MAX_ROWS` rows, autograd, a float32
    matmul precision below "highest", no library) or the values are not such counts: the caller runs ``layer``."""
    if type(layer) is not Int8Linear or layer.dynamic_inputs or unit is None or x.dtype != torch.float32:
        return None
    rows = x.numel() // layer.in_features
    if rows > NATIVE_MAX_ROWS or x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
        return None
    if torch.get_float32_matmul_precision() != "highest" or native_library() is None:
        return None
    found = counts_product(x.reshape(rows, layer.in_features).contiguous(), unit, *layer.stored_tensors())
    return None if found is None else found.view(*x.shape[:-1], layer.out_features)
