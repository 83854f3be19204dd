"""SpAD loss terms as pure functions (docs/design.md, "SpAD").

Student quantities are already time-averaged (the models return mean-over-T hidden states and maps).
``mask`` is the usual ``(B, L)`` attention mask (1 = token, 0 = padding); padded positions never contribute.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = [
    "attention_alignment_loss",
    "embedding_alignment_loss",
    "feature_alignment_loss",
    "layer_map",
    "masked_mse",
    "rate_mse",
    "soft_target_loss",
]


def masked_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error over the positions where ``mask`` is 1; tensors are ``(B, L, ...)``."""
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} shapes differ")
    squared = (student - teacher.to(student.dtype)) ** 2
    if mask is None:
        return squared.mean()
    weights = mask.to(squared.dtype).view(*mask.shape, *([1] * (squared.dim() - mask.dim())))
    per_position = squared[0, 0].numel() if squared.dim() > 2 else 1
    return (squared * weights).sum() / (weights.sum() * per_position).clamp_min(1)


def embedding_alignment_loss(student_embeddings, teacher_embeddings, mask=None) -> torch.Tensor:
    """EA: MSE between the embedding outputs (the student's averaged over T)."""
    return masked_mse(student_embeddings, teacher_embeddings, mask)


def feature_alignment_loss(student_hidden, teacher_hidden, mask=None, projection=None) -> torch.Tensor:
    """SFA (feature part): MSE(P(student hidden), teacher hidden); P is identity unless widths differ."""
    if projection is not None:
        student_hidden = projection(student_hidden)
    return masked_mse(student_hidden, teacher_hidden, mask)


def attention_alignment_loss(student_maps, teacher_maps, mask=None) -> torch.Tensor:
    """SAA: MSE between attention maps ``(B, H, Lq, Lk)``; heads map 1:1, or both sides are averaged over heads.

    Padded queries and padded keys are excluded.
    """
    if student_maps.shape[1] != teacher_maps.shape[1]:
        student_maps, teacher_maps = student_maps.mean(1, keepdim=True), teacher_maps.mean(1, keepdim=True)
    squared = (student_maps - teacher_maps.to(student_maps.dtype)) ** 2
    if mask is None:
        return squared.mean()
    pairs = (mask.unsqueeze(2) * mask.unsqueeze(1)).to(squared.dtype).unsqueeze(1)  # (B, 1, Lq, Lk)
    return (squared * pairs).sum() / (pairs.sum() * squared.shape[1]).clamp_min(1)


def soft_target_loss(student_logits, teacher_logits, temperature: float = 2.0, mask=None) -> torch.Tensor:
    """STA: τ²·KL(softmax(z_T/τ) ‖ softmax(z_S/τ)), averaged over unmasked positions."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_probs = F.log_softmax(teacher_logits.to(student_logits.dtype) / temperature, dim=-1)
    per_position = (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum(-1)
    if mask is None:
        return temperature**2 * per_position.mean()
    weights = mask.to(per_position.dtype)
    return temperature**2 * (per_position * weights).sum() / weights.sum().clamp_min(1)


def rate_mse(student_rate, target_rate, mask=None) -> torch.Tensor:
    """RateMSE: MSE between the student's firing rates ``(B, L, D)`` and the target rates, those of the student's
    own neuron driven by the teacher's features (`SpikingModelMixin.block_input_firing_rate`; no gradient)."""
    return masked_mse(student_rate, target_rate.detach(), mask)


def layer_map(student_layers: int, teacher_layers: int, explicit: list[int] | None = None) -> list[int]:
    """m(l) = round(l·(L_T − 1)/(L_S − 1)), or ``explicit``; validated against the teacher's depth."""
    if explicit is not None:
        if len(explicit) != student_layers:
            raise ValueError(f"layer_map has {len(explicit)} entries for a student with {student_layers} layers")
        bad = [index for index in explicit if not 0 <= index < teacher_layers]
        if bad:
            raise ValueError(f"layer_map entries {bad} are out of range for a teacher with {teacher_layers} layers")
        return list(explicit)
    if student_layers == 1:
        return [teacher_layers - 1]
    return [round(layer * (teacher_layers - 1) / (student_layers - 1)) for layer in range(student_layers)]
