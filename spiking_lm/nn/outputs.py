"""Output dataclasses of the spiking models: the `transformers` ones plus per-layer firing rates.

This module imports only `torch` and `transformers` so that it can travel with a saved model's code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
    MaskedLMOutput,
    SequenceClassifierOutput,
    SequenceClassifierOutputWithPast,
)

__all__ = [
    "SpikingCausalLMOutput",
    "head_output",
    "SpikingMaskedLMOutput",
    "SpikingModelOutput",
    "SpikingModelOutputWithPooling",
    "SpikingSequenceClassifierOutput",
    "SpikingSequenceClassifierOutputWithPast",
]

FIRING_RATES_DOC = """firing_rates (`tuple(torch.FloatTensor)`, *optional*, with ``output_firing_rates=True``):
        per layer, the firing rate of the block's input neuron ``(B, L, D)`` in [0, 1], averaged over T, with the
        spikes' surrogate gradient (what SpAD's RateMSE compares)."""


@dataclass
class SpikingModelOutput(BaseModelOutputWithPast):
    __doc__ = f"`BaseModelOutputWithPast` plus\n\n    {FIRING_RATES_DOC}"
    firing_rates: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SpikingModelOutputWithPooling(BaseModelOutputWithPooling):
    __doc__ = f"`BaseModelOutputWithPooling` plus\n\n    {FIRING_RATES_DOC}"
    firing_rates: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SpikingCausalLMOutput(CausalLMOutputWithPast):
    __doc__ = f"`CausalLMOutputWithPast` plus\n\n    {FIRING_RATES_DOC}"
    firing_rates: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SpikingMaskedLMOutput(MaskedLMOutput):
    __doc__ = f"`MaskedLMOutput` plus\n\n    {FIRING_RATES_DOC}"
    firing_rates: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SpikingSequenceClassifierOutput(SequenceClassifierOutput):
    __doc__ = f"`SequenceClassifierOutput` plus\n\n    {FIRING_RATES_DOC}"
    firing_rates: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class SpikingSequenceClassifierOutputWithPast(SequenceClassifierOutputWithPast):
    __doc__ = f"`SequenceClassifierOutputWithPast` plus\n\n    {FIRING_RATES_DOC}"
    firing_rates: tuple[torch.FloatTensor, ...] | None = None


def head_output(output_class, outputs, loss, logits, **fields):
    """A head's ``output_class`` with its ``loss`` and ``logits``, passing the base model's per-layer ``outputs``
    (hidden states, attention maps, firing rates) through."""
    return output_class(
        loss=loss,
        logits=logits,
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
        firing_rates=outputs.firing_rates,
        **fields,
    )
