"""`SpADTrainer`: a `transformers.Trainer` that distills an HF ANN teacher into a spiking student."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, Trainer
from transformers.utils import logging

from ..distributed import prepare_teacher
from ..training import CompleteCheckpointMixin
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
TEACHER_CLASSES = {"causal-lm": AutoModelForCausalLM, "masked-lm": AutoModelForMaskedLM}


def load_teacher(name_or_path: str, head: str, need_attentions: bool):
    """Load an HF teacher with the head a student asks for (its class's ``teacher_head``: ``"causal-lm"`` or
    ``"masked-lm"``); with eager attention if SAA needs its maps."""
    options = {"attn_implementation": "eager"} if need_attentions else {}
    return TEACHER_CLASSES[head].from_pretrained(name_or_path, **options)


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
            teacher = load_teacher(args.teacher_name_or_path, model.teacher_head, args.saa_weight > 0)
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
        self._term_sums = defaultdict(float)
        self._term_steps = 0

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.projection is not None:
            optimizer.add_param_group({"params": list(self.projection.parameters()), "weight_decay": 0.0})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        mask = inputs.get("attention_mask")
        need_maps = args.saa_weight > 0
        need_rates = args.sfa_weight > 0 and args.rate_gamma > 0
        flags = {"output_hidden_states": True, "output_attentions": need_maps}
        outputs = model(**inputs, **flags, **({"output_firing_rates": True} if need_rates else {}))
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
            rates = outputs.firing_rates if need_rates else None
            terms["sfa"] = self._feature_loss(outputs.hidden_states, teacher.hidden_states, rates, mask)
        if need_maps:
            pairs = [(outputs.attentions[s], teacher.attentions[t]) for s, t in enumerate(self.layer_map)]
            terms["saa"] = torch.stack([attention_alignment_loss(a, b, mask) for a, b in pairs]).mean()
        loss = sum(getattr(args, f"{name}_weight") * value for name, value in terms.items())
        self._accumulate(terms)
        return (loss, outputs) if return_outputs else loss

    def _feature_loss(self, student_hidden, teacher_hidden, student_rates, mask):
        losses = []
        for student_layer, teacher_layer in enumerate(self.layer_map):
            target = teacher_hidden[teacher_layer + 1]
            losses.append(feature_alignment_loss(student_hidden[student_layer + 1], target, mask, self.projection))
            if student_rates is not None:
                rate = student_rates[student_layer]
                # The student's block input passes a norm before its first neuron; drive the reference LIF alike.
                drive = nn.functional.layer_norm(
                    teacher_hidden[teacher_layer], teacher_hidden[teacher_layer].shape[-1:]
                )
                if drive.shape == rate.shape:
                    steps = module_time_steps(self.model)
                    losses[-1] = losses[-1] + self.args.rate_gamma * rate_mse(rate, drive, steps, mask)
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
