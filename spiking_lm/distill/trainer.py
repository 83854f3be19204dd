"""`SpADTrainer`: a `transformers.Trainer` that distills an HF ANN teacher into a spiking student."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, Trainer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import logging

from ..distributed import prepare_teacher
from ..nn.neurons import SpikingNeuron
from .config import SpADConfig
from .losses import (
    attention_alignment_loss,
    embedding_alignment_loss,
    feature_alignment_loss,
    layer_map,
    rate_mse,
    soft_target_loss,
)

logger = logging.get_logger(__name__)
TEACHER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
COMPLETE_MARKER = "CHECKPOINT_COMPLETE"


def last_complete_checkpoint(output_dir) -> str | None:
    """The newest ``checkpoint-N`` in ``output_dir`` whose writing finished (it holds `COMPLETE_MARKER`)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("checkpoint-*") if (p / COMPLETE_MARKER).exists() and p.name[11:].isdigit()]
    return str(max(complete, key=lambda p: int(p.name[11:]))) if complete else None


class CompleteCheckpointMixin:
    """Marks a checkpoint complete only after the Trainer wrote all of it, so that a crash mid-save leaves the
    previous checkpoint as the one to resume from (the Trainer writes ``checkpoint-N`` in place)."""

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            (folder / COMPLETE_MARKER).write_text(f"{self.state.global_step}\n")


def load_teacher(name_or_path: str, masked: bool, need_attentions: bool):
    """Load an HF teacher, a masked LM for encoder students, else a causal LM; with eager attention if SAA needs
    its maps."""
    auto = AutoModelForMaskedLM if masked else AutoModelForCausalLM
    options = {"attn_implementation": "eager"} if need_attentions else {}
    return auto.from_pretrained(name_or_path, **options)


def spiking_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of blocks."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) and isinstance(module[0], GradientCheckpointingLayer):
            return module
    raise ValueError(f"{type(model).__name__} has no list of layers")


def check_pair(student, teacher, args: SpADConfig) -> None:
    """Reject teacher/student pairs that cannot be distilled, before any training step."""
    student_vocab, teacher_vocab = student.config.vocab_size, teacher.config.vocab_size
    if student_vocab != teacher_vocab:
        raise ValueError(
            f"teacher vocabulary ({teacher_vocab}) differs from the student's ({student_vocab}); "
            "SpAD needs a shared tokenizer"
        )
    if args.saa_weight > 0:
        implementation = getattr(teacher.config, "_attn_implementation", "eager")
        if implementation not in (None, "eager"):
            raise ValueError(
                f"saa_weight > 0 needs the teacher's attention maps, but it runs '{implementation}' attention; "
                "load it with attn_implementation='eager' (or set saa_weight=0)"
            )
    layer_map(student.config.num_hidden_layers, teacher.config.num_hidden_layers, args.layer_map)


class SpADTrainer(CompleteCheckpointMixin, Trainer):
    """Spike-aware alignment distillation: L = w_EA·EA + w_SAA·SAA + w_SFA·SFA + w_STA·STA + w_HTA·HTA.

    Args:
        model: the spiking student.
        args (`SpADConfig`): training arguments and loss weights.
        teacher (*optional*): the frozen HF ANN teacher; loaded from ``args.teacher_name_or_path`` if omitted.
        **kwargs: everything `Trainer` takes (datasets, collator, tokenizer, callbacks, ...).

    Each loss term is logged separately (``spad/ea``, ``spad/sta``, ...).
    """

    def __init__(self, model=None, args: SpADConfig = None, teacher=None, **kwargs):
        if not isinstance(args, SpADConfig):
            raise TypeError(f"SpADTrainer needs SpADConfig arguments, got {type(args).__name__}")
        if teacher is None:
            if args.teacher_name_or_path is None:
                raise ValueError("no teacher: pass teacher= or set teacher_name_or_path")
            masked = model.config.model_type == "we_spikingformer"
            teacher = load_teacher(args.teacher_name_or_path, masked, args.saa_weight > 0)
        check_pair(model, teacher, args)
        super().__init__(model=model, args=args, **kwargs)
        self.teacher = prepare_teacher(teacher, self.accelerator, self.args.device)
        self.layer_map = layer_map(model.config.num_hidden_layers, teacher.config.num_hidden_layers, args.layer_map)
        self.projection = None
        if model.config.hidden_size != teacher.config.hidden_size:
            if self.is_deepspeed_enabled:
                raise ValueError(
                    f"student width {model.config.hidden_size} differs from the teacher's "
                    f"{teacher.config.hidden_size}: the SFA projection is not supported under DeepSpeed; "
                    "use DDP or a student of the teacher's width"
                )
            self.projection = nn.Sequential(
                nn.Linear(model.config.hidden_size, teacher.config.hidden_size),
                nn.LayerNorm(teacher.config.hidden_size),
            ).to(self.args.device)
        self._input_rates: dict[int, torch.Tensor] = {}
        if args.sfa_weight > 0 and args.rate_gamma > 0:
            self._hook_input_neurons(model)
        self._term_sums = defaultdict(float)
        self._term_steps = 0

    def _hook_input_neurons(self, model) -> None:
        """Record, per layer, the firing rate of the neuron that feeds the block (for RateMSE)."""
        for index, layer in enumerate(spiking_layers(model)):
            neuron = next(child for child in layer.children() if isinstance(child, SpikingNeuron))
            units = getattr(neuron, "spike_max", 1) * getattr(neuron, "spike_scale", 1.0)

            def record(module, inputs, output, index=index, units=units):
                if module.training and output.shape[0] == module_time_steps(model):
                    self._input_rates[index] = output.mean(0) / units

            neuron.register_forward_hook(record)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.projection is not None:
            optimizer.add_param_group({"params": list(self.projection.parameters()), "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        mask = inputs.get("attention_mask")
        need_maps = args.saa_weight > 0
        outputs = model(**inputs, output_hidden_states=True, output_attentions=need_maps)
        with torch.no_grad():
            teacher_inputs = {key: inputs[key] for key in TEACHER_INPUTS if key in inputs}
            teacher = self.teacher(**teacher_inputs, output_hidden_states=True, output_attentions=need_maps)
        if args.sta_weight > 0 and getattr(teacher, "logits", None) is None:
            raise ValueError("sta_weight > 0 needs teacher logits; this teacher has no LM head (set sta_weight=0)")
        terms = {}
        if args.hta_weight > 0:
            if outputs.loss is None:
                raise ValueError("hta_weight > 0 needs labels in the batch (the task loss)")
            terms["hta"] = outputs.loss
        if args.sta_weight > 0:
            terms["sta"] = soft_target_loss(outputs.logits, teacher.logits, args.temperature, mask)
        if args.ea_weight > 0:
            embeddings = outputs.hidden_states[0]
            if self.projection is not None:  # the same learned P as for features when widths differ
                embeddings = self.projection(embeddings)
            terms["ea"] = embedding_alignment_loss(embeddings, teacher.hidden_states[0], mask)
        if args.sfa_weight > 0:
            terms["sfa"] = self._feature_loss(outputs.hidden_states, teacher.hidden_states, mask)
        if need_maps:
            pairs = [(outputs.attentions[s], teacher.attentions[t]) for s, t in enumerate(self.layer_map)]
            terms["saa"] = torch.stack([attention_alignment_loss(a, b, mask) for a, b in pairs]).mean()
        loss = sum(getattr(args, f"{name}_weight") * value for name, value in terms.items())
        self._accumulate(terms)
        return (loss, outputs) if return_outputs else loss

    def _feature_loss(self, student_hidden, teacher_hidden, mask):
        losses = []
        for student_layer, teacher_layer in enumerate(self.layer_map):
            target = teacher_hidden[teacher_layer + 1]
            losses.append(feature_alignment_loss(student_hidden[student_layer + 1], target, mask, self.projection))
            rate = self._input_rates.get(student_layer)
            if rate is not None and self.args.rate_gamma > 0:
                # The student's block input passes a norm before its first neuron; drive the reference LIF alike.
                drive = nn.functional.layer_norm(
                    teacher_hidden[teacher_layer], teacher_hidden[teacher_layer].shape[-1:]
                )
                if drive.shape == rate.shape:
                    steps = module_time_steps(self.model)
                    losses[-1] = losses[-1] + self.args.rate_gamma * rate_mse(rate, drive, steps, mask)
        self._input_rates.clear()
        return torch.stack(losses).mean()

    def _accumulate(self, terms) -> None:
        if self.model.training:
            for name, value in terms.items():
                self._term_sums[name] += float(value.detach())
            self._term_steps += 1

    def log(self, logs, *args, **kwargs):
        if self._term_steps and "loss" in logs:
            for name, total in self._term_sums.items():
                logs[f"spad/{name}"] = round(total / self._term_steps, 6)
            self._term_sums.clear()
            self._term_steps = 0
        super().log(logs, *args, **kwargs)


def module_time_steps(model) -> int:
    config = getattr(model, "config", None)
    return getattr(config, "time_steps", 1)
