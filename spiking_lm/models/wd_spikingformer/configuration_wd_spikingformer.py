"""WD-Spikingformer configuration: a spiking decoder with causal winner-take-all attention."""

from __future__ import annotations

from spiking_lm.nn.configuration_utils import SpikingConfig, check_choice

POSITION_EMBEDDING_TYPES = ("learned", "none")
LLAMA_FAMILY = ("llama", "qwen2", "qwen3", "mistral")


class WDSpikingformerConfig(SpikingConfig):
    r"""Configuration of a [`WDSpikingformerForCausalLM`]: Llama/Qwen2 names, `nilif` 1×4 neurons, CWSSA attention.

    Takes every argument of `SpikingConfig`; the defaults here differ as listed.

    Args:
        vocab_size (`int`, *optional*, defaults to 32000): vocabulary size.
        hidden_size (`int`, *optional*, defaults to 1024): width of the residual stream.
        num_hidden_layers (`int`, *optional*, defaults to 24): number of blocks.
        num_attention_heads (`int`, *optional*, defaults to 16): attention heads.
        intermediate_size (`int`, *optional*, defaults to 2816): MLP width.
        max_position_embeddings (`int`, *optional*, defaults to 2048): longest sequence.
        time_steps (`int`, *optional*, defaults to 1): T; one integer step of up to `spike_max` spikes ("1×4").
        neuron_type (`str`, *optional*, defaults to `"nilif"`): normalized integer LIF.
        attention_type (`str`, *optional*, defaults to `"cwssa"`): `cwssa`, `sfsa` or `ssa` (always causal).
        attention_bias (`bool`, *optional*, defaults to `False`): biases on q/k/v/o (Qwen2 has them).
        position_embedding_type (`str`, *optional*, defaults to `"learned"`): `learned` absolute positions
            (``model.embed_positions``; rotary embeddings would destroy spikes), or `none`.
        use_cache (`bool`, *optional*, defaults to `True`): cache the spike keys and values when generating.
        tie_word_embeddings (`bool`, *optional*, defaults to `False`): the LM head shares the token embeddings.
    """

    model_type = "wd_spikingformer"
    allowed_attention_types = ("cwssa", "sfsa", "ssa")

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 1024,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        intermediate_size: int = 2816,
        max_position_embeddings: int = 2048,
        time_steps: int = 1,
        neuron_type: str = "nilif",
        attention_type: str = "cwssa",
        attention_bias: bool = False,
        position_embedding_type: str = "learned",
        use_cache: bool = True,
        tie_word_embeddings: bool = False,
        pad_token_id: int | None = None,
        bos_token_id: int | None = 1,
        eos_token_id: int | None = 2,
        **kwargs,
    ):
        self.attention_bias = bool(attention_bias)
        self.position_embedding_type = check_choice(
            "position_embedding_type", position_embedding_type, POSITION_EMBEDDING_TYPES
        )
        super().__init__(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
            max_position_embeddings=max_position_embeddings,
            time_steps=time_steps,
            neuron_type=neuron_type,
            attention_type=attention_type,
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )
        self.use_cache = bool(use_cache)

    @classmethod
    def from_teacher_config(cls, teacher_config, **overrides) -> WDSpikingformerConfig:
        """The student config for a Llama/Qwen2-style teacher (same shape, RMSNorm), with ``overrides`` applied."""
        shape = cls.shape_from_teacher(
            teacher_config,
            {
                "vocab_size": "vocab_size",
                "hidden_size": "hidden_size",
                "num_hidden_layers": "num_hidden_layers",
                "num_attention_heads": "num_attention_heads",
                "intermediate_size": "intermediate_size",
                "max_position_embeddings": "max_position_embeddings",
            },
        )
        model_type = getattr(teacher_config, "model_type", "")
        shape["attention_bias"] = getattr(teacher_config, "attention_bias", model_type == "qwen2")
        shape["tie_word_embeddings"] = getattr(teacher_config, "tie_word_embeddings", False)
        if model_type in LLAMA_FAMILY:
            shape["norm_type"] = "rmsnorm"
            shape["layer_norm_eps"] = getattr(teacher_config, "rms_norm_eps", 1e-6)
        return cls(**{**shape, **overrides})


__all__ = ["WDSpikingformerConfig"]
