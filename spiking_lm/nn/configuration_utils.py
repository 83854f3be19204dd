"""The configuration fields every spiking architecture shares, validated in one place.

This module imports only `transformers` and same-folder modules so that it can travel with a saved model.
"""

from __future__ import annotations

import math

from transformers import PreTrainedConfig

from .attention import ATTENTION_TYPES, SFSA_SCALES, WTA_MODES
from .dispatch import BACKENDS
from .execution import MATMUL_DTYPES
from .neurons import NEURONS
from .surrogate import SURROGATES
from .weight_quantization import WEIGHT_QUANTIZATIONS

__all__ = ["SpikingConfig", "check_choice", "check_positive_int"]

NORM_TYPES = ("layernorm", "rmsnorm")
SCORE_SCALES = ("sqrt_d", "none")


def check_positive_int(field: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{field}={value!r} is invalid: must be an integer >= 1")
    return value


def check_number(field: str, value, low: float, high: float = math.inf, low_inclusive: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= low if low_inclusive else value > low) and value <= high
    if not ok:
        bracket = "[" if low_inclusive else "("
        raise ValueError(f"{field}={value!r} is invalid: must be a number in {bracket}{low}, {high}]")
    return value


def check_choice(field: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{field}={value!r} is invalid: must be one of {', '.join(map(str, choices))}")
    return value


class SpikingConfig(PreTrainedConfig):
    r"""Base class of the spiking model configs: the transformer shape plus the neuron and attention options.

    Args:
        vocab_size (`int`): vocabulary size.
        hidden_size (`int`): width D of the residual stream.
        num_hidden_layers (`int`): number of blocks.
        num_attention_heads (`int`): heads H; must divide `hidden_size`.
        intermediate_size (`int`): width of the MLP.
        max_position_embeddings (`int`): longest sequence.
        time_steps (`int`): T, steps per token (1 for the "1×D" integer neurons).
        neuron_type (`str`): any name of `spiking_lm.nn.NEURONS`.
        spike_max (`int`, *optional*, defaults to 4): D_max of the integer neurons.
        v_threshold (`float`, *optional*, defaults to 1.0): threshold of the binary neurons.
        beta (`float`, *optional*, defaults to 0.5): membrane decay.
        surrogate (`str`, *optional*, defaults to `"atan"`): surrogate gradient of the binary neurons.
        detach_reset (`bool`, *optional*, defaults to `False`): no gradient through resets.
        neuron_backend (`str`, *optional*, defaults to `"auto"`): kernel backend (`auto`, `torch`, `inductor`).
        attention_type (`str`): `wssa`, `cwssa`, `sfsa` or `ssa`.
        wta_mode (`str`, *optional*, defaults to `"hard"`): winner-take-all rule, `hard`, `topk` or `sparsemax`.
        wta_k (`int`, *optional*, defaults to 1): winners per query for `topk`.
        wta_temperature (`float`, *optional*, defaults to 1.0): τ of the straight-through softmax.
        attn_threshold (`float`, *optional*, defaults to 0.25): threshold of SFSA's attention neuron. With scores
            divided by √d, a query-key pair fires once its spike overlap exceeds √d/4. At initialization Q and K
            fire at ~0.2, so the expected overlap d·0.04 stays far below √d: a threshold of 1 left SFSA silent
            (no gradient to V) in tiny models, while 0.25 lets a useful share of pairs fire.
        attn_score_scale (`str`, *optional*, defaults to `"sqrt_d"`): SFSA scores are divided by √d before the
            attention neuron (`"none"` feeds the raw overlap counts).
        sfsa_output_scale (`str`, *optional*, defaults to `"sqrt_d"`): c in O·c, `sqrt_d` (1/√d) or
            `causal_count` (1/number of visible keys).
        norm_type (`str`, *optional*, defaults to `"layernorm"`): `layernorm` or `rmsnorm`.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5): norm epsilon.
        pre_neuron_norm (`bool`, *optional*, defaults to `True`): a norm on the residual right before each
            sublayer's first neuron.
        initializer_range (`float`, *optional*, defaults to 0.02): std of the normal weight init.
        train_matmul_dtype (`str`, *optional*, defaults to `"float32"`): operand dtype of the GEMMs of every
            spike-fed Linear while training (forward and both gradients), `float32` or `bfloat16`. With
            `bfloat16` the spike operand is exact and the weights and gradients are rounded (mixed precision;
            fp32 master weights), ~3x faster GEMMs on CPUs with AVX512-BF16. Inference always runs in fp32.
        weight_quantization (`str`, *optional*): `"int8"` for a W8 model (`quantize_weights`): the Linears named
            in `quantized_modules` hold int8 weights with per-row scales. Set by `quantize_weights`, not by hand.
        quantized_modules (`list[str]`, *optional*): those Linears' names relative to the model's blocks.
        quantized_lm_head (`str`, *optional*): `"int8"` when the LM head is int8 too (`quantize_weights(...,
            lm_head=True)`), `"int8-shared"` when the token embeddings read the same int8 table.
    """

    allowed_attention_types: tuple[str, ...] = ATTENTION_TYPES

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        max_position_embeddings: int = 2048,
        time_steps: int = 1,
        neuron_type: str = "nilif",
        spike_max: int = 4,
        v_threshold: float = 1.0,
        beta: float = 0.5,
        surrogate: str = "atan",
        detach_reset: bool = False,
        neuron_backend: str = "auto",
        attention_type: str = "wssa",
        wta_mode: str = "hard",
        wta_k: int = 1,
        wta_temperature: float = 1.0,
        attn_threshold: float = 0.25,
        attn_score_scale: str = "sqrt_d",
        sfsa_output_scale: str = "sqrt_d",
        norm_type: str = "layernorm",
        layer_norm_eps: float = 1e-5,
        pre_neuron_norm: bool = True,
        initializer_range: float = 0.02,
        train_matmul_dtype: str = "float32",
        weight_quantization: str | None = None,
        quantized_modules: list[str] | None = None,
        quantized_lm_head: str | None = None,
        **kwargs,
    ):
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
            check_positive_int(field, locals()[field])
        for field in ("intermediate_size", "max_position_embeddings", "time_steps", "spike_max", "wta_k"):
            check_positive_int(field, locals()[field])
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size={hidden_size} is invalid: "
                f"must be a multiple of num_attention_heads={num_attention_heads}"
            )
        check_choice("neuron_type", neuron_type, tuple(NEURONS))
        check_choice("surrogate", surrogate, tuple(SURROGATES))
        check_choice("neuron_backend", neuron_backend, BACKENDS)
        check_choice("attention_type", attention_type, self.allowed_attention_types)
        check_choice("wta_mode", wta_mode, WTA_MODES)
        check_choice("attn_score_scale", attn_score_scale, SCORE_SCALES)
        check_choice("sfsa_output_scale", sfsa_output_scale, SFSA_SCALES)
        check_choice("norm_type", norm_type, NORM_TYPES)
        check_choice("train_matmul_dtype", train_matmul_dtype, tuple(MATMUL_DTYPES))
        if weight_quantization is not None:
            check_choice("weight_quantization", weight_quantization, WEIGHT_QUANTIZATIONS)
            if not quantized_modules:
                raise ValueError("weight_quantization is set but quantized_modules names no Linear")
        if quantized_lm_head is not None:
            check_choice("quantized_lm_head", quantized_lm_head, ("int8", "int8-shared"))
        check_number("v_threshold", v_threshold, 0.0, low_inclusive=False)
        check_number("attn_threshold", attn_threshold, 0.0, low_inclusive=False)
        check_number("wta_temperature", wta_temperature, 0.0, low_inclusive=False)
        check_number("layer_norm_eps", layer_norm_eps, 0.0, low_inclusive=False)
        check_number("beta", beta, 0.0, 1.0)
        check_number("initializer_range", initializer_range, 0.0)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.max_position_embeddings = max_position_embeddings
        self.time_steps = time_steps
        self.neuron_type = neuron_type
        self.spike_max = spike_max
        self.v_threshold = float(v_threshold)
        self.beta = float(beta)
        self.surrogate = surrogate
        self.detach_reset = bool(detach_reset)
        self.neuron_backend = neuron_backend
        self.attention_type = attention_type
        self.wta_mode = wta_mode
        self.wta_k = wta_k
        self.wta_temperature = float(wta_temperature)
        self.attn_threshold = float(attn_threshold)
        self.attn_score_scale = attn_score_scale
        self.sfsa_output_scale = sfsa_output_scale
        self.norm_type = norm_type
        self.layer_norm_eps = float(layer_norm_eps)
        self.pre_neuron_norm = bool(pre_neuron_norm)
        self.initializer_range = float(initializer_range)
        self.train_matmul_dtype = train_matmul_dtype
        self.weight_quantization = weight_quantization
        self.quantized_modules = list(quantized_modules) if quantized_modules else None
        self.quantized_lm_head = quantized_lm_head
        super().__init__(**kwargs)

    @classmethod
    def shape_from_teacher(cls, teacher_config, field_map: dict[str, str]) -> dict:
        """Read the student's shape fields from a teacher config: ``field_map`` maps student → teacher name."""
        shape = {}
        for student_field, teacher_field in field_map.items():
            if not hasattr(teacher_config, teacher_field):
                raise ValueError(
                    f"teacher config ({type(teacher_config).__name__}) has no '{teacher_field}', "
                    f"needed for the student's {student_field}"
                )
            shape[student_field] = getattr(teacher_config, teacher_field)
        for token in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if getattr(teacher_config, token, None) is not None:
                shape[token] = getattr(teacher_config, token)
        return shape
