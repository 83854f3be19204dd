"""The membrane-shortcut block shared by every architecture, its spiking MLP, and time expansion / readout.

Residual stream = membrane values ``(T, B, L, D)``. Every sublayer starts with a neuron (membrane shortcut):
x = x + Attn(SN(Norm(x))); x = x + MLP(SN(Norm(x))), MLP(s) = Norm₂(Linear₂(SN(Norm₁(Linear₁(s))))). Every Linear
here is fed spikes (`spiking_lm.nn.spike_linear`). Module *names* are checkpoint keys and follow each teacher
family, so the functions here take the modules as arguments rather than owning them.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .attention import row_normalized
from .decode_step import decode_block
from .execution import execution_or_default
from .norms import normalize, normalize_and_fire
from .spike_linear import exact_output_dtype, linear_on_spikes, low_spike_dtype

__all__ = [
    "BlockOutput",
    "LayerOutputs",
    "expand_time",
    "firing_rate",
    "mean_over_time",
    "membrane_shortcut_layer",
    "positions_from_mask",
    "run_layers",
    "spiking_mlp",
    "with_final_norm",
]


class BlockOutput(NamedTuple):
    """What one block returns: the membrane ``(T, B, L, D)``, its raw attention weights ``(T, B, H, Lq, Lk)``,
    and, when asked, the firing rate of its input neuron ``(B, L, D)`` (with gradient; see `firing_rate`)."""

    hidden: torch.Tensor
    attention_weights: torch.Tensor
    input_rate: torch.Tensor | None = None


class LayerOutputs(NamedTuple):
    """What `run_layers` collects: the last membrane and, when asked, per-layer tuples."""

    hidden: torch.Tensor
    hidden_states: tuple | None
    attentions: tuple | None
    firing_rates: tuple | None


def expand_time(embeddings: torch.Tensor, time_steps: int) -> torch.Tensor:
    """``(B, L, D)`` → ``(T, B, L, D)``, the same real-valued input at every step (a view, no copy)."""
    return embeddings.unsqueeze(0).expand(time_steps, *embeddings.shape)


def mean_over_time(membrane: torch.Tensor) -> torch.Tensor:
    """Readout: ``(T, B, L, D)`` → ``(B, L, D)``."""
    return membrane.mean(0)


def firing_rate(spikes: torch.Tensor, neuron) -> torch.Tensor:
    """Per-element firing rate of a neuron's output over its time steps, ``(T, …)`` → ``(…)`` in [0, 1]: the mean
    count above the neuron's offset divided by its most spikes per step (binary virtual steps folded first). It
    keeps the surrogate / straight-through gradient of the spikes."""
    coding = neuron.coding
    values = coding.values(spikes)
    if values.dtype.itemsize < 4:
        values = values.float()
    if coding.has_offset:
        values = values - coding.offset
    return values.mean(0) / coding.full_scale


def spiking_mlp(spikes, source_neuron, fc1, norm1, neuron, fc2, norm2, execution=None) -> torch.Tensor:
    """MLP(s) = Norm₂(Linear₂(SN(Norm₁(Linear₁(s))))), a membrane value for the residual stream."""
    exact = exact_output_dtype([fc1], source_neuron, execution)
    spike_dtype = low_spike_dtype([fc2], neuron, execution)
    # fc1's bf16 output goes on as the GEMM made it (`exact_outputs`) and widens inside the norm's compiled
    # function or recomputed region, which then keeps it as it is.
    low = exact is not None
    fc1_output = linear_on_spikes(fc1, spikes, source_neuron, execution, exact_outputs=low)
    hidden = normalize_and_fire(norm1, neuron, fc1_output, exact, spike_dtype, fc1.weight.dtype if low else None)
    fc2_low = exact_output_dtype([fc2], neuron, execution) is not None  # fc2's bf16 output, widened in norm2 alike
    fc2_output = linear_on_spikes(fc2, hidden, neuron, execution, exact_outputs=fc2_low)
    return normalize(norm2, fc2_output, fc2.weight.dtype if fc2_low else None, neuron.backend)


def membrane_shortcut_layer(
    hidden,
    attention_mask,
    cache,
    attn_norm,
    attn_neuron,
    attention,
    mlp_norm,
    mlp_neuron,
    mlp,
    attention_linears=(),
    mlp_linears=(),
    execution=None,
    output_firing_rate: bool = False,
    mlp_modules=None,
) -> BlockOutput:
    """One block: x = x + Attn(SN(Norm(x))); x = x + MLP(SN(Norm(x))).

    ``attention(spikes, neuron, attention_mask, cache, execution)`` returns ``(membrane, _, weights)``;
    ``mlp(spikes, neuron, execution)`` returns a membrane. ``attention_linears`` and ``mlp_linears`` are the
    Linears their input spikes feed: training in bf16, the neurons emit bf16 spikes for them (`low_spike_dtype`).
    ``output_firing_rate`` also returns the block input neuron's `firing_rate` (what SpAD's RateMSE compares).
    ``mlp_modules``: the MLP's ``(fc1, norm1, neuron, fc2, norm2)``, with which a decoding step may run through
    `spiking_lm.nn.decode_step.decode_block` (the same values in fewer calls).
    """
    if mlp_modules is not None and cache is not None and hidden.shape[2] == 1 and not output_firing_rate:
        modules = (attn_norm, attn_neuron, attention, mlp_norm, mlp_neuron, mlp_modules)
        decoded = decode_block(hidden, attention_mask, cache, *modules, execution_or_default(execution))
        if decoded is not None:
            return BlockOutput(*decoded)
    spike_dtype = low_spike_dtype(attention_linears, attn_neuron, execution)
    spikes = normalize_and_fire(attn_norm, attn_neuron, hidden, spike_dtype=spike_dtype)
    input_rate = firing_rate(spikes, attn_neuron) if output_firing_rate else None
    attention_output, _, attention_weights = attention(spikes, attn_neuron, attention_mask, cache, execution)
    hidden = hidden + attention_output
    spike_dtype = low_spike_dtype(mlp_linears, mlp_neuron, execution)
    spikes = normalize_and_fire(mlp_norm, mlp_neuron, hidden, spike_dtype=spike_dtype)
    return BlockOutput(hidden + mlp(spikes, mlp_neuron, execution), attention_weights, input_rate)


def run_layers(
    layers,
    hidden,
    attention_mask,
    cache,
    output_hidden_states: bool,
    output_attentions: bool,
    execution=None,
    output_firing_rates: bool = False,
) -> LayerOutputs:
    """Run the blocks; collect time-averaged hidden states (embeddings first), row-normalized attention maps and
    block-input firing rates if asked."""
    all_hidden = (mean_over_time(hidden),) if output_hidden_states else None
    all_attentions = () if output_attentions else None
    all_rates = () if output_firing_rates else None
    for layer in layers:
        # unpacked by position: gradient checkpointing may hand the block's NamedTuple back as a plain tuple
        hidden, attention_weights, input_rate = layer(
            hidden,
            attention_mask=attention_mask,
            cache=cache,
            execution=execution,
            output_firing_rate=output_firing_rates,
        )
        if output_hidden_states:
            all_hidden += (mean_over_time(hidden),)
        if output_attentions:
            all_attentions += (row_normalized(attention_weights),)
        if output_firing_rates:
            all_rates += (input_rate,)
    return LayerOutputs(hidden, all_hidden, all_attentions, all_rates)


def with_final_norm(hidden_states: tuple | None, last_hidden: torch.Tensor) -> tuple | None:
    """The per-layer hidden states with the last one replaced by the normalized readout, as `transformers` models
    return them (their last hidden state is taken after the final norm): SpAD's last feature term then compares
    like with like."""
    return None if hidden_states is None else (*hidden_states[:-1], last_hidden)


def positions_from_mask(attention_mask, query_length: int, past_length: int, device) -> torch.Tensor:
    """Position ids ``(B, L)`` of the last ``query_length`` tokens; left padding does not shift real tokens."""
    if attention_mask is None:
        return torch.arange(past_length, past_length + query_length, device=device).unsqueeze(0)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    return positions[:, -query_length:]
