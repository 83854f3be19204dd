"""WE-Spikingformer configuration: a spiking encoder with winner-take-all attention."""

from __future__ import annotations

from spiking_lm.nn.configuration_utils import SpikingConfig, check_positive_int


class WESpikingformerConfig(SpikingConfig):
    r"""Configuration of a [`WESpikingformerForMaskedLM`]: BERT names, `nilif` 1×4 neurons, WSSA attention.

    Takes every argument of `SpikingConfig`; the defaults here differ as listed.

    Args:
        vocab_size (`int`, *optional*, defaults to 30522): vocabulary size (BERT's).
        hidden_size (`int`, *optional*, defaults to 768): width of the residual stream.
        num_hidden_layers (`int`, *optional*, defaults to 12): number of blocks.
        num_attention_heads (`int`, *optional*, defaults to 12): attention heads.
        intermediate_size (`int`, *optional*, defaults to 3072): MLP width.
        max_position_embeddings (`int`, *optional*, defaults to 512): longest sequence.
        type_vocab_size (`int`, *optional*, defaults to 2): segment (token type) vocabulary.
        time_steps (`int`, *optional*, defaults to 1): T; one integer step of up to `spike_max` spikes ("1×4").
        neuron_type (`str`, *optional*, defaults to `"nilif"`): normalized integer LIF.
        attention_type (`str`, *optional*, defaults to `"wssa"`): `wssa`, `sfsa` or `ssa` (bidirectional).
        layer_norm_eps (`float`, *optional*, defaults to 1e-12): BERT's epsilon.
        tie_word_embeddings (`bool`, *optional*, defaults to `True`): the MLM decoder shares the word embeddings.
    """

    model_type = "we_spikingformer"
    allowed_attention_types = ("wssa", "sfsa", "ssa")

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        time_steps: int = 1,
        neuron_type: str = "nilif",
        attention_type: str = "wssa",
        layer_norm_eps: float = 1e-12,
        tie_word_embeddings: bool = True,
        pad_token_id: int | None = 0,
        **kwargs,
    ):
        self.type_vocab_size = check_positive_int("type_vocab_size", type_vocab_size)
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
            layer_norm_eps=layer_norm_eps,
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            **kwargs,
        )

    @classmethod
    def from_teacher_config(cls, teacher_config, **overrides) -> WESpikingformerConfig:
        """The student config for a BERT-style teacher (BERT, MiniLM, ...), with ``overrides`` applied."""
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
        shape["type_vocab_size"] = getattr(teacher_config, "type_vocab_size", 2)
        shape["layer_norm_eps"] = getattr(teacher_config, "layer_norm_eps", 1e-12)
        for label_field in ("num_labels", "id2label", "label2id", "problem_type"):
            if label_field == "num_labels" or getattr(teacher_config, label_field, None) is not None:
                shape[label_field] = getattr(teacher_config, label_field)
        return cls(**{**shape, **overrides})


__all__ = ["WESpikingformerConfig"]
