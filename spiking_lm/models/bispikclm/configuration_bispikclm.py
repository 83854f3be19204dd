"""BiSpikCLM configuration: a binary spiking causal LM on the OPT layout."""

from __future__ import annotations

from spiking_lm.nn.configuration_utils import SpikingConfig


class BiSpikCLMConfig(SpikingConfig):
    r"""Configuration of a [`BiSpikCLMForCausalLM`]: OPT's shape, LIF neurons over T steps, softmax-free attention.

    Takes every argument of `SpikingConfig` (neurons, attention, norms); the defaults here differ as listed.

    Args:
        vocab_size (`int`, *optional*, defaults to 50272): vocabulary size (OPT's).
        hidden_size (`int`, *optional*, defaults to 768): width of the residual stream.
        num_hidden_layers (`int`, *optional*, defaults to 12): number of blocks.
        num_attention_heads (`int`, *optional*, defaults to 12): attention heads.
        intermediate_size (`int`, *optional*, defaults to 3072): MLP width (OPT's ``ffn_dim``).
        max_position_embeddings (`int`, *optional*, defaults to 2048): longest sequence.
        time_steps (`int`, *optional*, defaults to 4): T (2 is the cheaper option of the paper).
        neuron_type (`str`, *optional*, defaults to `"lif"`): binary spikes.
        attention_type (`str`, *optional*, defaults to `"sfsa"`): `sfsa`, `cwssa` or `ssa` (always causal).
        enable_bias (`bool`, *optional*, defaults to `True`): biases in the Linear layers, as in OPT.
        use_cache (`bool`, *optional*, defaults to `True`): cache the spike keys and values when generating.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`): the LM head shares the token embeddings.

    Example:

    ```python
    >>> from spiking_lm import BiSpikCLMConfig, BiSpikCLMForCausalLM
    >>> model = BiSpikCLMForCausalLM(BiSpikCLMConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4))
    ```
    """

    model_type = "bispikclm"
    allowed_attention_types = ("sfsa", "cwssa", "ssa")

    def __init__(
        self,
        vocab_size: int = 50272,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        max_position_embeddings: int = 2048,
        time_steps: int = 4,
        neuron_type: str = "lif",
        attention_type: str = "sfsa",
        enable_bias: bool = True,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        pad_token_id: int | None = 1,
        bos_token_id: int | None = 2,
        eos_token_id: int | None = 2,
        **kwargs,
    ):
        self.enable_bias = bool(enable_bias)
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
    def from_teacher_config(cls, teacher_config, **overrides) -> BiSpikCLMConfig:
        """The student config for an `OPTConfig` teacher (same shape), with ``overrides`` applied."""
        shape = cls.shape_from_teacher(
            teacher_config,
            {
                "vocab_size": "vocab_size",
                "hidden_size": "hidden_size",
                "num_hidden_layers": "num_hidden_layers",
                "num_attention_heads": "num_attention_heads",
                "intermediate_size": "ffn_dim",
                "max_position_embeddings": "max_position_embeddings",
            },
        )
        projection = getattr(teacher_config, "word_embed_proj_dim", shape["hidden_size"])
        if projection != shape["hidden_size"]:
            raise ValueError(
                f"teacher word_embed_proj_dim={projection} differs from hidden_size={shape['hidden_size']}; "
                "BiSpikCLM has no embedding projection"
            )
        shape["enable_bias"] = getattr(teacher_config, "enable_bias", True)
        shape["tie_word_embeddings"] = getattr(teacher_config, "tie_word_embeddings", True)
        return cls(**{**shape, **overrides})


__all__ = ["BiSpikCLMConfig"]
