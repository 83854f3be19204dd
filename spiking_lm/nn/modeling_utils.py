"""What every spiking `PreTrainedModel` adds to the Hugging Face contract.

- `SpikingModelMixin.set_spike_mode("binary" | "integer")`: the exact integer-training → spike-inference switch.
- One `SpikeExecution` per model (inference backend, training GEMM dtype), passed down to every layer.
- Firing-rate recording for the energy report; per-layer block-input firing rates in the outputs
  (``output_firing_rates=True``) for distillation.
- `from_teacher(teacher)`: a student shaped like an ANN teacher, with every matching weight copied.
- `save_pretrained` writes the config's ``auto_map`` for every Auto class the model supports and copies the
  model code with the `spiking_lm.nn` modules it needs beside it, so the folder loads with
  ``trust_remote_code=True`` where `spiking_lm` is not installed.

This module imports only `torch`, `transformers` and same-folder modules so that it can travel too.
"""

from __future__ import annotations

import os
import re
import sys

import torch
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils import logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .blocks import expand_time, firing_rate, mean_over_time, positions_from_mask, run_layers, with_final_norm
from .execution import SpikeExecution
from .heads import causal_lm_loss
from .input_checks import check_prompt, check_sequence, unreadable_weights
from .neurons import SpikingNeuron
from .outputs import SpikingCausalLMOutput, SpikingModelOutput, head_output
from .teacher_weights import copy_matching_weights
from .weight_quantization import apply_weight_quantization, quantize_weights

logger = logging.get_logger(__name__)

# transformers renamed the cache argument and output field from `past_key_values` to `cache` during 5.x;
# both are accepted as arguments and the output uses the installed version's field name.
CACHE_FIELD = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"

__all__ = [
    "REMOTE_CODE_MODULES",
    "SpikingCausalLMMixin",
    "SpikingDecoderMixin",
    "SpikingModelMixin",
    "copy_matching_weights",
    "export_remote_code",
]

# The spiking_lm.nn modules a saved model's code needs, copied flat beside the modeling file.
REMOTE_CODE_MODULES = (
    "surrogate",
    "dispatch",
    "kernels",
    "spike_coding",
    "recording",
    "execution",
    "recompute",
    "functional",
    "neuron_base",
    "parallel_neurons",
    "neurons",
    "bitpack",
    "cpu_linear",
    "native_source",
    "native",
    "event",
    "spike_linear",
    "norms",
    "attention",
    "decoding",
    "decode_step",
    "self_attention",
    "blocks",
    "configuration_utils",
    "outputs",
    "heads",
    "input_checks",
    "teacher_weights",
    "weight_quantization",
    "modeling_utils",
)
_PACKAGE_IMPORT = re.compile(r"^from spiking_lm\.nn\.(\w+) import", flags=re.MULTILINE)


def _module_file(module_name: str) -> str:
    return sys.modules[module_name].__file__


def export_remote_code(save_directory: str, model_module: str, config_module: str) -> list[str]:
    """Copy the modeling and configuration files and the `REMOTE_CODE_MODULES` into ``save_directory``.

    Imports of ``spiking_lm.nn.<module>`` become same-folder imports (``from .<module> import``), the only
    kind `trust_remote_code` can follow. Returns the written file names.
    """
    nn_folder = os.path.dirname(_module_file(__name__))
    sources = [_module_file(model_module), _module_file(config_module)]
    sources += [os.path.join(nn_folder, f"{name}.py") for name in REMOTE_CODE_MODULES]
    written = []
    for source in sources:
        with open(source, encoding="utf-8") as handle:
            text = _PACKAGE_IMPORT.sub(r"from .\1 import", handle.read())
        target = os.path.join(save_directory, os.path.basename(source))
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(text)
        written.append(os.path.basename(source))
    return written


class SpikingModelMixin:
    """Spike-mode switch, firing rates, teacher initialization and portable saving for spiking models."""

    blocks_path = "layers"
    """Where the blocks live, relative to the base model (`PreTrainedModel.base_model`)."""
    output_norms: tuple = ()
    """``(teacher sublayer, student output norm)`` paths, relative to a block, that teacher calibration sets."""
    teacher_head = "causal-lm"
    """The head an ANN teacher of this architecture has (``"causal-lm"`` or ``"masked-lm"``)."""

    def spiking_blocks(self) -> nn.ModuleList:
        """The model's blocks, in order."""
        return self.base_model.get_submodule(self.blocks_path)

    @torch.no_grad()
    def block_input_firing_rate(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """The firing rate ``(B, L, D)`` that block ``layer``'s input neuron has when the real-valued ``hidden``
        ``(B, L, D)`` is its input at every time step: the block's own input norm and neuron (same type, T, D,
        threshold), no gradient. SpAD's RateMSE aims the student's `firing_rates` at this, driven by the teacher's
        matching hidden state, so a student whose features equal the teacher's scores 0 for every neuron family.
        """
        norm, neuron = self.spiking_blocks()[layer].input_norm_and_neuron()
        recording, neuron.record_firing_rate = neuron.record_firing_rate, False  # not part of the model's run
        try:
            drive = expand_time(hidden.to(self.dtype), self.config.time_steps)  # (T, B, L, D)
            spikes = neuron(norm(drive))
        finally:
            neuron.record_firing_rate = recording
        return firing_rate(spikes, neuron)

    def spiking_neurons(self) -> list[tuple[str, SpikingNeuron]]:
        """Every neuron of the model with its module name."""
        return [(name, module) for name, module in self.named_modules() if isinstance(module, SpikingNeuron)]

    def set_spike_mode(self, mode: str):
        """Switch every integer neuron to ``"binary"`` spike inference or back to ``"integer"``; returns self.

        Binary mode is exact: logits equal integer mode up to float rounding. A no-op for binary neurons.
        """
        if mode not in ("integer", "binary"):
            raise ValueError(f"spike mode must be 'integer' or 'binary', got {mode!r}")
        for _, neuron in self.spiking_neurons():
            if hasattr(neuron, "set_spike_mode"):
                neuron.set_spike_mode(mode)
        return self

    def set_inference_backend(self, backend: str):
        """``"event"``: in eval mode without autograd, every Linear fed spikes reads only the weight columns its
        spikes select, or multiplies integer spikes in int8 where a dense product is faster (`spiking_lm.nn.event`;
        it keeps a transposed and an int8 copy of each such weight, 7 bytes per weight); ``"dense"`` (default):
        plain GEMMs, and the copies are freed. Returns self.

        Both give the same logits up to fp32 summation order; training always uses the dense path.
        """
        self.execution.inference_backend = backend
        return self

    def post_init(self):
        super().post_init()
        # One SpikeExecution per model: the outermost model's post_init runs last and shares its object with
        # every spiking model nested in it (a causal LM's base model and decoder), which pass it to their layers.
        apply_weight_quantization(self)  # a W8 model's int8 Linears exist before from_pretrained fills them
        execution = SpikeExecution(train_matmul_dtype=self.config.train_matmul_dtype)
        for module in self.modules():
            if isinstance(module, SpikingModelMixin):
                module.execution = execution

    def quantize_weights(self, scheme: str = "int8", lm_head: bool = False):
        """W8 inference: every Linear that spikes feed (and SFSA's output projection, fed integer counts) stores int8
        weights with a per-row scale and sums counts x weights exactly (`spiking_lm.nn.weight_quantization`); saved
        and loaded as such. ``lm_head``:
        the LM head too, with its real input rounded to int8 per row (not exact). Returns self."""
        return quantize_weights(self, scheme, lm_head)

    def set_train_matmul_dtype(self, dtype: str):
        """GEMM operand dtype of the spike-fed Linears while training, ``"float32"`` or ``"bfloat16"`` (see
        ``train_matmul_dtype`` in the config, which this updates); returns self."""
        self.execution.train_matmul_dtype = dtype
        self.config.train_matmul_dtype = dtype
        return self

    def record_firing_rates(self, enabled: bool = True):
        """Start (or stop) recording firing rates in every neuron, from zero; returns self."""
        for _, neuron in self.spiking_neurons():
            neuron.record_firing_rate = enabled
            neuron.reset_firing_stats()
        return self

    def firing_rates(self) -> dict[str, float]:
        """Recorded firing rate of every neuron that saw input since `record_firing_rates`."""
        return {name: neuron.firing_rate for name, neuron in self.spiking_neurons() if neuron.recorded_elements}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """transformers' `from_pretrained`; an unreadable (truncated, empty) safetensors file is named."""
        from safetensors import SafetensorError

        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:
            raise unreadable_weights(pretrained_model_name_or_path, error) from None

    @classmethod
    def from_teacher(cls, teacher: nn.Module, return_report: bool = False, **overrides):
        """Build a student shaped like ``teacher`` (an HF ANN) and copy every weight whose key and shape match.

        Args:
            teacher: a `transformers` model of the family this architecture mirrors (or any with the same keys).
            return_report (`bool`, *optional*, defaults to `False`): also return what was and was not copied.
            **overrides: config fields to set on the student (``time_steps``, ``neuron_type``, ...).

        Raises:
            ValueError: no tensor of the teacher matches the student by name and shape (a teacher of another
                family: its weights would be silently left out).
        """
        # a classifier teacher's labels (and so its head's shape) carry over unless overridden
        labels = {key: getattr(teacher.config, key, None) for key in ("id2label", "label2id", "problem_type")}
        labels = {key: value for key, value in labels.items() if value is not None}
        config = cls.config_class.from_teacher_config(teacher.config, **{**labels, **overrides})
        student = cls(config)
        report = copy_matching_weights(student, teacher)
        if not report["copied"]:
            total = len(report["not_in_teacher"]) + len(report["shape_mismatch"])
            raise ValueError(
                f"from_teacher: none of the {total} tensors of {cls.__name__} matches a tensor of "
                f"{type(teacher).__name__} by name and shape; is the teacher of the family {cls.__name__} mirrors?"
            )
        logger.info(
            "from_teacher: copied %d tensors; %d not in the teacher (%s); %d with other shapes (%s)",
            len(report["copied"]),
            len(report["not_in_teacher"]),
            ", ".join(report["not_in_teacher"][:8]),
            len(report["shape_mismatch"]),
            ", ".join(report["shape_mismatch"][:8]),
        )
        return (student, report) if return_report else student

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained` plus a complete ``auto_map`` and the code to load it remotely."""
        model_module = type(self).__module__
        config_module = type(self.config).__module__
        auto_map = {"AutoConfig": f"{config_module.rsplit('.', 1)[-1]}.{type(self.config).__name__}"}
        for auto_class, class_name in sys.modules[model_module].AUTO_MAP.items():
            auto_map[auto_class] = f"{model_module.rsplit('.', 1)[-1]}.{class_name}"
        self.config.auto_map = auto_map
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            export_remote_code(str(save_directory), model_module, config_module)


class SpikingDecoderMixin:
    """`forward` of a causal spiking decoder stack: token (+ learned position) embeddings → T steps → blocks →
    readout over T → final norm. Subclasses define ``embed_tokens``, ``embed_positions`` (or `None`),
    ``position_offset``, ``layers`` and name their final norm in ``final_norm_name``."""

    position_offset = 0
    final_norm_name = "norm"

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers 5's name for the K/V cache
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        output_firing_rates=False,
        **kwargs,
    ):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        past_length = cache.get_seq_length() if cache is not None else 0
        learned = self.config.max_position_embeddings if self.embed_positions is not None else None
        check_sequence(inputs_embeds.shape[1], past_length, attention_mask, learned)
        if past_length == 0:
            self.execution.new_sequence()
        if position_ids is None:
            position_ids = positions_from_mask(
                attention_mask, inputs_embeds.shape[1], past_length, inputs_embeds.device
            )
        if self.embed_positions is not None:
            inputs_embeds = inputs_embeds + self.embed_positions(position_ids + self.position_offset)
        hidden = expand_time(inputs_embeds, self.config.time_steps)  # (T, B, L, D)
        flags = (output_hidden_states, output_attentions, self.execution, output_firing_rates)
        layers = run_layers(self.layers, hidden, attention_mask, cache, *flags)
        last_hidden = getattr(self, self.final_norm_name)(mean_over_time(layers.hidden))
        return SpikingModelOutput(
            last_hidden_state=last_hidden,
            hidden_states=with_final_norm(layers.hidden_states, last_hidden),
            attentions=layers.attentions,
            firing_rates=layers.firing_rates,
            **{CACHE_FIELD: cache if use_cache else None},
        )


class SpikingCausalLMMixin:
    """`forward` of a causal LM head over ``self.model``: logits from ``self.lm_head``, next-token loss."""

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, new_embeddings):
        self.lm_head = new_embeddings

    def generate(self, inputs=None, generation_config=None, **kwargs):
        """transformers' `generate`, after `check_prompt` (one token at least, a mask of its length, room for
        ``max_new_tokens`` in a learned position table)."""
        check_prompt(self, inputs if inputs is not None else kwargs.get("input_ids"), generation_config, kwargs)
        return super().generate(inputs, generation_config, **kwargs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers 5's name for the K/V cache
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        position_ids=None,
        cache=None,
        inputs_embeds=None,
        labels=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        output_firing_rates=False,
        logits_to_keep=0,
        **kwargs,
    ):
        outputs = self.model(
            return_dict=True,
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            output_firing_rates=output_firing_rates,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden[:, keep, :])
        loss = None
        if labels is not None:
            loss = causal_lm_loss(logits, labels, self.config.vocab_size, **kwargs)
        return head_output(
            SpikingCausalLMOutput, outputs, loss, logits, **{CACHE_FIELD: getattr(outputs, CACHE_FIELD)}
        )
