"""`SpADTrainer`: a `transformers.Trainer` that distills an HF ANN teacher into a spiking student."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, Trainer
from transformers.utils import logging

from ..distributed import prepare_teacher
from ..training import SpikingTrainerMixin
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
    widths = (student.config.hidden_size, teacher.config.hidden_size)
    if args.sfa_weight > 0 and args.rate_gamma > 0 and widths[0] != widths[1]:
        raise ValueError(
            f"rate_gamma > 0 drives the student's neurons with the teacher's features, but the student is "
            f"{widths[0]} wide and the teacher {widths[1]}; set rate_gamma=0 or use a student of the teacher's width"
        )


class SpADTrainer(SpikingTrainerMixin, Trainer):
    """Spike-aware alignment distillation: L = w_EA·EA + w_SAA·SAA + w_SFA·SFA + w_STA·STA + w_HTA·HTA.

    Args:
        model: the spiking student.
        args (`SpADConfig`): training arguments and loss weights.
        teacher (*optional*): the frozen HF ANN teacher; loaded from ``args.teacher_name_or_path`` if omitted.
        **kwargs: everything `Trainer` takes (datasets, collator, tokenizer, callbacks, ...).

    SFA adds γ·RateMSE (``rate_gamma``): the student's block-input firing rates (from its outputs) against
    those its own input neurons have when driven by the teacher's matching hidden states. Each loss term is logged
    separately (``spad/ea``, ``spad/saa``, ``spad/sfa``, ``spad/rate``, ``spad/sta``, ``spad/hta``; ``spad/rate``
    enters the loss with weight w_SFA·γ).
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
            terms["sfa"] = self._feature_loss(outputs.hidden_states, teacher.hidden_states, mask)
        if need_rates:
            terms["rate"] = self._rate_loss(model, outputs.firing_rates, teacher.hidden_states, mask)
        if need_maps:
            pairs = [(outputs.attentions[s], teacher.attentions[t]) for s, t in enumerate(self.layer_map)]
            terms["saa"] = torch.stack([attention_alignment_loss(a, b, mask) for a, b in pairs]).mean()
        loss = sum(self._term_weight(name) * value for name, value in terms.items())
        self._accumulate(terms)
        return (loss, outputs) if return_outputs else loss

    def _term_weight(self, name: str) -> float:
        """A term's weight in the loss: its own ``<name>_weight``, or w_SFA·γ for RateMSE (it rides on SFA)."""
        return self.args.sfa_weight * self.args.rate_gamma if name == "rate" else getattr(self.args, f"{name}_weight")

    def _feature_loss(self, student_hidden, teacher_hidden, mask):
        """SFA's feature part over the mapped layers. Both models' last hidden state is taken after their final
        norm (`transformers`' convention, which the spiking models follow), so the last pair is like with like."""
        losses = []
        for student_layer, teacher_layer in enumerate(self.layer_map):
            target = teacher_hidden[teacher_layer + 1]
            losses.append(feature_alignment_loss(student_hidden[student_layer + 1], target, mask, self.projection))
        return torch.stack(losses).mean()

    def _rate_loss(self, model, student_rates, teacher_hidden, mask):
        """RateMSE over the mapped layers: block l's input-neuron rates against those the same neuron (and the
        norm before it) has on the teacher's input to layer m(l)."""
        student = self.accelerator.unwrap_model(model)
        losses = []
        for student_layer, teacher_layer in enumerate(self.layer_map):
            target = student.block_input_firing_rate(student_layer, teacher_hidden[teacher_layer])
            losses.append(rate_mse(student_rates[student_layer], target, mask))
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
