"""WE-Spikingformer: spiking encoder with winner-take-all spiking self-attention (WSSA).

Parameter names follow BERT (``bert.embeddings.*``, ``bert.encoder.layer.N.attention.self.{query,key,value}``,
``attention.output.{dense,LayerNorm}``, ``intermediate.dense``, ``output.{dense,LayerNorm}``, ``bert.pooler``,
``cls.predictions``, ``classifier``), so a BERT-style teacher's weights load by name (`from_teacher`). The heads
read the real-valued readout (mean over T, then a final norm) and are not spiking.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils.generic import can_return_tuple

from spiking_lm.nn.blocks import (
    expand_time,
    mean_over_time,
    membrane_shortcut_layer,
    run_layers,
    spiking_mlp,
    with_final_norm,
)
from spiking_lm.nn.heads import sequence_classification_loss
from spiking_lm.nn.input_checks import check_sequence
from spiking_lm.nn.modeling_utils import SpikingModelMixin
from spiking_lm.nn.neurons import neuron_from_config
from spiking_lm.nn.norms import build_norm
from spiking_lm.nn.outputs import (
    SpikingMaskedLMOutput,
    SpikingModelOutputWithPooling,
    SpikingSequenceClassifierOutput,
    head_output,
)
from spiking_lm.nn.self_attention import SpikingSelfAttention
from spiking_lm.nn.spike_linear import linear_on_spikes

from .configuration_we_spikingformer import WESpikingformerConfig

AUTO_MAP = {
    "AutoModel": "WESpikingformerModel",
    "AutoModelForMaskedLM": "WESpikingformerForMaskedLM",
    "AutoModelForSequenceClassification": "WESpikingformerForSequenceClassification",
}


class WESpikingformerEmbeddings(nn.Module):
    """Word + position + token-type embeddings and a LayerNorm, as BERT; real-valued (the only non-spike input)."""

    def __init__(self, config: WESpikingformerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None, inputs_embeds=None):
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        length = inputs_embeds.shape[1]
        if position_ids is None:
            position_ids = torch.arange(length, device=inputs_embeds.device).unsqueeze(0)
        if token_type_ids is None:
            token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        embeddings = (
            inputs_embeds + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        )
        return self.LayerNorm(embeddings)


class WESpikingformerProjection(nn.Module):
    """``dense`` then ``LayerNorm``, fed by a neuron's spikes (BERT's ``attention.output`` and ``output``)."""

    def __init__(self, config: WESpikingformerConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = build_norm(config)

    def forward(self, spikes, source_neuron, execution=None):
        return self.LayerNorm(linear_on_spikes(self.dense, spikes, source_neuron, execution))


class WESpikingformerAttention(nn.Module):
    """BERT's ``attention`` container: ``self`` (q/k/v + WTA + output neuron) and ``output`` (dense + LayerNorm)."""

    def __init__(self, config: WESpikingformerConfig, layer_idx: int):
        super().__init__()
        self.self = SpikingSelfAttention(config, layer_idx, ("query", "key", "value", None), bias=True, causal=False)
        self.output = WESpikingformerProjection(config, config.hidden_size)

    def forward(self, spikes, source_neuron, attention_mask=None, cache=None, execution=None):
        context, producer, attention_map = self.self(spikes, source_neuron, attention_mask, execution=execution)
        return self.output(context, producer, execution), None, attention_map


class WESpikingformerIntermediate(nn.Module):
    """BERT's ``intermediate``: ``dense`` (then a norm and a neuron, which BERT does not have)."""

    def __init__(self, config: WESpikingformerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.LayerNorm = build_norm(config, config.intermediate_size)
        self.neuron = neuron_from_config(config)


class WESpikingformerLayer(GradientCheckpointingLayer):
    def __init__(self, config: WESpikingformerConfig, layer_idx: int):
        super().__init__()
        self.attention_norm = build_norm(config, enabled=config.pre_neuron_norm)
        self.attention_neuron = neuron_from_config(config)
        self.attention = WESpikingformerAttention(config, layer_idx)
        self.mlp_norm = build_norm(config, enabled=config.pre_neuron_norm)
        self.mlp_neuron = neuron_from_config(config)
        self.intermediate = WESpikingformerIntermediate(config)
        self.output = WESpikingformerProjection(config, config.intermediate_size)

    def input_norm_and_neuron(self):
        """The norm and neuron the block's input passes first (what SpAD's RateMSE drives with the teacher)."""
        return self.attention_norm, self.attention_neuron

    def mlp(self, spikes, source_neuron, execution=None):
        inner, output = self.intermediate, self.output
        modules = (inner.dense, inner.LayerNorm, inner.neuron, output.dense, output.LayerNorm)
        return spiking_mlp(spikes, source_neuron, *modules, execution)

    def forward(self, hidden, attention_mask=None, cache=None, execution=None, output_firing_rate=False):
        # hidden: (T, B, L, D) membrane
        return membrane_shortcut_layer(
            hidden,
            attention_mask,
            None,
            self.attention_norm,
            self.attention_neuron,
            self.attention,
            self.mlp_norm,
            self.mlp_neuron,
            self.mlp,
            attention_linears=(self.attention.self.query, self.attention.self.key, self.attention.self.value),
            mlp_linears=(self.intermediate.dense,),
            execution=execution,
            output_firing_rate=output_firing_rate,
        )


class WESpikingformerEncoder(nn.Module):
    def __init__(self, config: WESpikingformerConfig):
        super().__init__()
        self.layer = nn.ModuleList(WESpikingformerLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = build_norm(config)  # final norm on the readout (BERT is post-norm and has none)


class WESpikingformerPooler(nn.Module):
    def __init__(self, config: WESpikingformerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):
        return torch.tanh(self.dense(hidden[:, 0]))


class WESpikingformerPreTrainedModel(SpikingModelMixin, PreTrainedModel):
    config_class = WESpikingformerConfig
    config: WESpikingformerConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = True
    _no_split_modules = ["WESpikingformerLayer"]
    blocks_path = "encoder.layer"
    output_norms = ()  # BERT is post-norm: its sublayer outputs have no counterpart to calibrate against
    teacher_head = "masked-lm"


class WESpikingformerModel(WESpikingformerPreTrainedModel):
    """The bare encoder: embeddings over T steps → spiking blocks → mean over T → norm (→ pooler)."""

    def __init__(self, config: WESpikingformerConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = WESpikingformerEmbeddings(config)
        self.encoder = WESpikingformerEncoder(config)
        self.pooler = WESpikingformerPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    @can_return_tuple
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        output_firing_rates=False,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        length = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        check_sequence(length, 0, attention_mask, None if position_ids is not None else config.max_position_embeddings)
        self.execution.new_sequence()
        embeddings = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        hidden = expand_time(embeddings, config.time_steps)  # (T, B, L, D)
        flags = (output_hidden_states, output_attentions, self.execution, output_firing_rates)
        layers = run_layers(self.encoder.layer, hidden, attention_mask, None, *flags)
        last_hidden = self.encoder.norm(mean_over_time(layers.hidden))
        return SpikingModelOutputWithPooling(
            last_hidden_state=last_hidden,
            pooler_output=None if self.pooler is None else self.pooler(last_hidden),
            hidden_states=with_final_norm(layers.hidden_states, last_hidden),
            attentions=layers.attentions,
            firing_rates=layers.firing_rates,
        )


class WESpikingformerPredictionHead(nn.Module):
    """BERT's ``cls.predictions``: transform (dense, GELU, LayerNorm) then the vocabulary decoder."""

    def __init__(self, config: WESpikingformerConfig):
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden):
        hidden = self.transform.LayerNorm(ACT2FN["gelu"](self.transform.dense(hidden)))
        return self.decoder(hidden)


class WESpikingformerForMaskedLM(WESpikingformerPreTrainedModel):
    _tied_weights_keys = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}

    def __init__(self, config: WESpikingformerConfig):
        super().__init__(config)
        self.bert = WESpikingformerModel(config, add_pooling_layer=False)
        self.cls = nn.Module()
        self.cls.predictions = WESpikingformerPredictionHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                output_firing_rates=False, **kwargs):  # fmt: skip
        outputs = self.bert(**_encoder_inputs(locals()), return_dict=True)
        logits = self.cls.predictions(outputs.last_hidden_state)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.config.vocab_size), labels.view(-1))
        return head_output(SpikingMaskedLMOutput, outputs, loss, logits)


class WESpikingformerForSequenceClassification(WESpikingformerPreTrainedModel):
    def __init__(self, config: WESpikingformerConfig):
        super().__init__(config)
        self.bert = WESpikingformerModel(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, labels=None, output_attentions=None, output_hidden_states=None,
                output_firing_rates=False, **kwargs):  # fmt: skip
        outputs = self.bert(**_encoder_inputs(locals()), return_dict=True)
        logits = self.classifier(outputs.pooler_output)
        loss = None if labels is None else sequence_classification_loss(self.config, logits, labels)
        return head_output(SpikingSequenceClassifierOutput, outputs, loss, logits)


def _encoder_inputs(arguments: dict) -> dict:
    """The base model's arguments among a head's ``forward`` arguments (``locals()``)."""
    names = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds", "output_attentions",
             "output_hidden_states", "output_firing_rates")  # fmt: skip
    return {name: arguments[name] for name in names}


__all__ = [
    "WESpikingformerForMaskedLM",
    "WESpikingformerForSequenceClassification",
    "WESpikingformerModel",
    "WESpikingformerPreTrainedModel",
]
