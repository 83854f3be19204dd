"""`copy_matching_weights`: a student initialized from an ANN teacher, tensor by tensor (`from_teacher`).

This module imports only `torch` so that it can travel with a saved model's code.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["copy_matching_weights"]


def _candidate_keys(key: str, student_prefix: str, teacher_prefix: str) -> list[str]:
    candidates = [key]
    if student_prefix and key.startswith(student_prefix + "."):
        inner = key[len(student_prefix) + 1 :]
        candidates += [inner, f"{teacher_prefix}.{inner}" if teacher_prefix else inner]
    return candidates


@torch.no_grad()
def copy_matching_weights(student: nn.Module, teacher: nn.Module) -> dict[str, list[str]]:
    """Copy every teacher tensor whose key (modulo the base-model prefix) and shape match a student tensor.

    Returns ``{"copied": [...], "shape_mismatch": [...], "not_in_teacher": [...]}`` of student keys.
    """
    teacher_state = teacher.state_dict()
    student_prefix = getattr(student, "base_model_prefix", "")
    teacher_prefix = getattr(teacher, "base_model_prefix", "")
    report = {"copied": [], "shape_mismatch": [], "not_in_teacher": []}
    for key, tensor in student.state_dict().items():
        match = next((k for k in _candidate_keys(key, student_prefix, teacher_prefix) if k in teacher_state), None)
        if match is None:
            report["not_in_teacher"].append(key)
        elif teacher_state[match].shape != tensor.shape:
            report["shape_mismatch"].append(key)
        else:
            tensor.copy_(teacher_state[match].to(tensor.dtype))
            report["copied"].append(key)
    return report
