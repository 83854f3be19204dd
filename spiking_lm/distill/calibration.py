"""Calibrate a teacher-initialized student's sublayer output norms to the teacher's sublayer outputs.

A student block adds Norm(Linear(spikes)) to its residual stream. Fresh norms output unit scale, while the
teacher's attention and MLP outputs are often 10-100x smaller, so a student built by `from_teacher` starts
with a residual stream the copied weights no longer fit. Setting each output norm's gain and bias to the
per-channel std and mean of the matching teacher sublayer output (one calibration batch) restores the
teacher's scale before distillation starts. Which norms, and which teacher sublayer each matches, is a class
attribute of the student (``output_norms``).
"""

from __future__ import annotations

import torch
from torch import nn

from .losses import layer_map

__all__ = ["calibrate_output_norms"]


def _teacher_layers(teacher: nn.Module) -> nn.ModuleList:
    for module in teacher.modules():
        if isinstance(module, nn.ModuleList) and len(module) == teacher.config.num_hidden_layers:
            return module
    raise ValueError(f"cannot find the layers of {type(teacher).__name__}")


@torch.no_grad()
def calibrate_output_norms(student: nn.Module, teacher: nn.Module, input_ids: torch.Tensor) -> int:
    """Set the student's sublayer output norms from the teacher's outputs on ``input_ids``; returns how many.

    Raises:
        ValueError: the student's architecture has no output norms to calibrate, or a module path is missing.
    """
    pairs = student.output_norms
    if not pairs:
        raise ValueError(f"{type(student).__name__} has no output norms to calibrate (its output_norms is empty)")
    teacher_layers = _teacher_layers(teacher)
    student_layers = student.spiking_blocks()
    captured: dict[tuple[int, str], torch.Tensor] = {}
    handles = []
    for index, layer in enumerate(teacher_layers):
        for teacher_path, _ in pairs:

            def keep(module, inputs, output, key=(index, teacher_path)):
                captured[key] = (output[0] if isinstance(output, tuple) else output).flatten(0, -2)

            handles.append(layer.get_submodule(teacher_path).register_forward_hook(keep))
    try:
        teacher.eval()(input_ids=input_ids)
    finally:
        for handle in handles:
            handle.remove()
    mapping = layer_map(len(student_layers), len(teacher_layers))
    calibrated = 0
    for student_index, teacher_index in enumerate(mapping):
        for teacher_path, norm_path in pairs:
            outputs = captured[(teacher_index, teacher_path)]
            norm = student_layers[student_index].get_submodule(norm_path)
            if isinstance(norm, nn.LayerNorm):
                norm.weight.copy_(outputs.std(0))
                norm.bias.copy_(outputs.mean(0))
            else:  # RMSNorm: a gain only, so match the root mean square
                norm.weight.copy_(outputs.pow(2).mean(0).sqrt())
            calibrated += 1
    return calibrated
