"""BiSpikCLM: binary spiking causal LM with softmax-free spiking attention (SFSA), on OPT's layout.

Parameter names follow OPT (``model.decoder.embed_tokens``, ``embed_positions`` with OPT's offset of 2,
``layers.N.self_attn.{q,k,v,out}_proj``, ``self_attn_layer_norm``, ``fc1``, ``fc2``, ``final_layer_norm``), so an
OPT teacher's weights load by name (`from_teacher`).
"""

from __future__ import annotations

from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from spiking_lm.nn.blocks import membrane_shortcut_layer, spiking_mlp
from spiking_lm.nn.cpu_linear import FewRowsLinear
from spiking_lm.nn.heads import LastTokenClassifierMixin
from spiking_lm.nn.modeling_utils import SpikingCausalLMMixin, SpikingDecoderMixin, SpikingModelMixin
from spiking_lm.nn.neurons import neuron_from_config
from spiking_lm.nn.norms import build_norm
from spiking_lm.nn.self_attention import SpikingSelfAttention

from .configuration_bispikclm import BiSpikCLMConfig

AUTO_MAP = {
    "AutoModel": "BiSpikCLMModel",
    "AutoModelForCausalLM": "BiSpikCLMForCausalLM",
    "AutoModelForSequenceClassification": "BiSpikCLMForSequenceClassification",
}
OPT_POSITION_OFFSET = 2  # OPT's learned positions start at row 2; kept so OPT weights mean the same here


class BiSpikCLMDecoderLayer(GradientCheckpointingLayer):
    """x = x + out_norm(out_proj(SFSA(SN(LN(x))))); x = x + fc2_norm(fc2(SN(fc1_norm(fc1(SN(LN(x)))))))."""

    def __init__(self, config: BiSpikCLMConfig, layer_idx: int):
        super().__init__()
        bias = config.enable_bias
        self.self_attn_layer_norm = build_norm(config, enabled=config.pre_neuron_norm)
        self.attn_input_neuron = neuron_from_config(config)
        self.self_attn = SpikingSelfAttention(
            config, layer_idx, ("q_proj", "k_proj", "v_proj", "out_proj"), "out_norm", bias=bias, causal=True
        )
        self.final_layer_norm = build_norm(config, enabled=config.pre_neuron_norm)
        self.mlp_input_neuron = neuron_from_config(config)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=bias)
        self.fc1_norm = build_norm(config, config.intermediate_size)
        self.fc_neuron = neuron_from_config(config)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=bias)
        self.fc2_norm = build_norm(config)

    def input_norm_and_neuron(self):
        """The norm and neuron the block's input passes first (what SpAD's RateMSE drives with the teacher)."""
        return self.self_attn_layer_norm, self.attn_input_neuron

    def mlp(self, spikes, source_neuron, execution=None):
        modules = (self.fc1, self.fc1_norm, self.fc_neuron, self.fc2, self.fc2_norm)
        return spiking_mlp(spikes, source_neuron, *modules, execution)

    def forward(self, hidden, attention_mask=None, cache=None, execution=None, output_firing_rate=False):
        # hidden: (T, B, L, D) membrane
        return membrane_shortcut_layer(
            hidden,
            attention_mask,
            cache,
            self.self_attn_layer_norm,
            self.attn_input_neuron,
            self.self_attn,
            self.final_layer_norm,
            self.mlp_input_neuron,
            self.mlp,
            attention_linears=(self.self_attn.q_proj, self.self_attn.k_proj, self.self_attn.v_proj),
            mlp_linears=(self.fc1,),
            execution=execution,
            output_firing_rate=output_firing_rate,
            mlp_modules=(self.fc1, self.fc1_norm, self.fc_neuron, self.fc2, self.fc2_norm),
        )


class BiSpikCLMPreTrainedModel(SpikingModelMixin, PreTrainedModel):
    config_class = BiSpikCLMConfig
    config: BiSpikCLMConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["BiSpikCLMDecoderLayer"]
    blocks_path = "decoder.layers"
    output_norms = (("self_attn", "self_attn.out_norm"), ("fc2", "fc2_norm"))
    teacher_head = "causal-lm"


class BiSpikCLMDecoder(SpikingDecoderMixin, BiSpikCLMPreTrainedModel):
    """Token + learned position embeddings, repeated over T, through the spiking blocks, read out over T."""

    position_offset = OPT_POSITION_OFFSET
    final_norm_name = "final_layer_norm"

    def __init__(self, config: BiSpikCLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + OPT_POSITION_OFFSET, config.hidden_size)
        self.layers = nn.ModuleList(BiSpikCLMDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.final_layer_norm = build_norm(config)
        self.post_init()


class BiSpikCLMModel(BiSpikCLMPreTrainedModel):
    """The bare decoder (``model.decoder``), returning the time-averaged, normalized last hidden state."""

    def __init__(self, config: BiSpikCLMConfig):
        super().__init__(config)
        self.decoder = BiSpikCLMDecoder(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.decoder.embed_tokens

    def set_input_embeddings(self, value):
        self.decoder.embed_tokens = value

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, output_firing_rates=False,
                **kwargs):  # fmt: skip
        return self.decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
                            output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                            output_firing_rates=output_firing_rates, return_dict=True)  # fmt: skip


class BiSpikCLMForCausalLM(SpikingCausalLMMixin, BiSpikCLMPreTrainedModel, GenerationMixin):
    """BiSpikCLM with a language-model head (tied to the token embeddings by default)."""

    _tied_weights_keys = {"lm_head.weight": "model.decoder.embed_tokens.weight"}

    def __init__(self, config: BiSpikCLMConfig):
        super().__init__(config)
        self.model = BiSpikCLMModel(config)
        self.lm_head = FewRowsLinear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


class BiSpikCLMForSequenceClassification(LastTokenClassifierMixin, BiSpikCLMPreTrainedModel):
    """BiSpikCLM with OPT's classification head: ``score`` reads the last non-padding token
    (`LastTokenClassifierMixin`); `from_teacher` copies an `OPTForSequenceClassification` whole."""

    def __init__(self, config: BiSpikCLMConfig):
        super().__init__(config)
        self.model = BiSpikCLMModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.decoder.embed_tokens

    def set_input_embeddings(self, value):
        self.model.decoder.embed_tokens = value


__all__ = ["BiSpikCLMForCausalLM", "BiSpikCLMForSequenceClassification", "BiSpikCLMModel", "BiSpikCLMPreTrainedModel"]
