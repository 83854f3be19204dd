"""WD-Spikingformer: spiking decoder with causal winner-take-all spiking attention (CWSSA).

Parameter names follow Llama/Qwen2 (``model.embed_tokens``, ``layers.N.self_attn.{q,k,v,o}_proj``,
``input_layernorm``, ``post_attention_layernorm``, ``mlp.{up,down}_proj``, ``model.norm``, ``lm_head``), so such a
teacher's weights load by name (`from_teacher`). Llama's gate_proj has no counterpart: the spiking MLP is
MLP(s) = Norm(down(SN(Norm(up(s))))).
"""

from __future__ import annotations

from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from spiking_lm.nn.blocks import membrane_shortcut_layer, spiking_mlp
from spiking_lm.nn.cpu_linear import FewRowsLinear
from spiking_lm.nn.heads import LastTokenClassifierMixin
from spiking_lm.nn.modeling_utils import SpikingCausalLMMixin, SpikingDecoderMixin, SpikingModelMixin
from spiking_lm.nn.neurons import neuron_from_config
from spiking_lm.nn.norms import build_norm
from spiking_lm.nn.self_attention import SpikingSelfAttention

from .configuration_wd_spikingformer import WDSpikingformerConfig

AUTO_MAP = {
    "AutoModel": "WDSpikingformerModel",
    "AutoModelForCausalLM": "WDSpikingformerForCausalLM",
    "AutoModelForSequenceClassification": "WDSpikingformerForSequenceClassification",
}


class WDSpikingformerMLP(nn.Module):
    def __init__(self, config: WDSpikingformerConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_norm = build_norm(config, config.intermediate_size)
        self.act_neuron = neuron_from_config(config)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.down_norm = build_norm(config)

    def forward(self, spikes, source_neuron, execution=None):
        modules = (self.up_proj, self.up_norm, self.act_neuron, self.down_proj, self.down_norm)
        return spiking_mlp(spikes, source_neuron, *modules, execution)


class WDSpikingformerDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: WDSpikingformerConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = build_norm(config, enabled=config.pre_neuron_norm)
        self.attn_input_neuron = neuron_from_config(config)
        self.self_attn = SpikingSelfAttention(
            config, layer_idx, ("q_proj", "k_proj", "v_proj", "o_proj"), bias=config.attention_bias, causal=True
        )
        self.post_attention_layernorm = build_norm(config, enabled=config.pre_neuron_norm)
        self.mlp_input_neuron = neuron_from_config(config)
        self.mlp = WDSpikingformerMLP(config)

    def input_norm_and_neuron(self):
        """The norm and neuron the block's input passes first (what SpAD's RateMSE drives with the teacher)."""
        return self.input_layernorm, self.attn_input_neuron

    def forward(self, hidden, attention_mask=None, cache=None, execution=None, output_firing_rate=False):
        # hidden: (T, B, L, D) membrane
        return membrane_shortcut_layer(
            hidden,
            attention_mask,
            cache,
            self.input_layernorm,
            self.attn_input_neuron,
            self.self_attn,
            self.post_attention_layernorm,
            self.mlp_input_neuron,
            self.mlp,
            attention_linears=(self.self_attn.q_proj, self.self_attn.k_proj, self.self_attn.v_proj),
            mlp_linears=(self.mlp.up_proj,),
            execution=execution,
            output_firing_rate=output_firing_rate,
        )


class WDSpikingformerPreTrainedModel(SpikingModelMixin, PreTrainedModel):
    config_class = WDSpikingformerConfig
    config: WDSpikingformerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["WDSpikingformerDecoderLayer"]
    blocks_path = "layers"
    output_norms = (("self_attn", "self_attn.o_norm"), ("mlp", "mlp.down_norm"))
    teacher_head = "causal-lm"


class WDSpikingformerModel(SpikingDecoderMixin, WDSpikingformerPreTrainedModel):
    """The bare decoder, returning the time-averaged, normalized last hidden state."""

    def __init__(self, config: WDSpikingformerConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.embed_positions = None
        if config.position_embedding_type == "learned":
            self.embed_positions = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(WDSpikingformerDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = build_norm(config)
        self.post_init()


class WDSpikingformerForCausalLM(SpikingCausalLMMixin, WDSpikingformerPreTrainedModel, GenerationMixin):
    """WD-Spikingformer with a language-model head."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: WDSpikingformerConfig):
        super().__init__(config)
        self.model = WDSpikingformerModel(config)
        self.lm_head = FewRowsLinear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()


class WDSpikingformerForSequenceClassification(LastTokenClassifierMixin, WDSpikingformerPreTrainedModel):
    """Classification from the last non-padding token (`LastTokenClassifierMixin`)."""

    def __init__(self, config: WDSpikingformerConfig):
        super().__init__(config)
        self.model = WDSpikingformerModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value


__all__ = [
    "WDSpikingformerForCausalLM",
    "WDSpikingformerForSequenceClassification",
    "WDSpikingformerModel",
    "WDSpikingformerPreTrainedModel",
]
