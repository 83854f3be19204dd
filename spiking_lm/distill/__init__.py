"""Spike-aware alignment distillation (SpAD): loss terms, `SpADConfig`, `SpADTrainer`."""

from .calibration import calibrate_output_norms
from .config import SpADConfig
from .losses import (
    attention_alignment_loss,
    embedding_alignment_loss,
    feature_alignment_loss,
    layer_map,
    masked_mse,
    rate_mse,
    soft_target_loss,
)
from .trainer import SpADTrainer, check_pair, load_teacher

__all__ = [
    "SpADConfig",
    "SpADTrainer",
    "attention_alignment_loss",
    "calibrate_output_norms",
    "check_pair",
    "embedding_alignment_loss",
    "feature_alignment_loss",
    "layer_map",
    "load_teacher",
    "masked_mse",
    "rate_mse",
    "soft_target_loss",
]
