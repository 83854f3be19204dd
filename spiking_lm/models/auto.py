"""The one architecture table: every spiking architecture by ``model_type``, and its registration with the
`transformers` Auto classes. Recipes, model cards and the package's import all read it."""

from __future__ import annotations

from dataclasses import dataclass

import transformers

from . import bispikclm, wd_spikingformer, we_spikingformer

__all__ = ["ARCHITECTURES", "Architecture", "architecture", "register_auto_classes"]


@dataclass(frozen=True)
class Architecture:
    """One spiking architecture.

    Args:
        name (`str`): its display name (model cards).
        config_class: its `PreTrainedConfig` subclass.
        auto_map (`dict[str, str]`): Auto class name → model class name, for registration and remote code.
        student_class: the class a recipe's ``student`` section builds (the language-model head).
        module: the modeling package that defines the classes.
    """

    name: str
    config_class: type
    auto_map: dict
    student_class: type
    module: object

    def model_class(self, auto_name: str) -> type:
        return getattr(self.module, self.auto_map[auto_name])


ARCHITECTURES = {
    "bispikclm": Architecture(
        "BiSpikCLM", bispikclm.BiSpikCLMConfig, bispikclm.AUTO_MAP, bispikclm.BiSpikCLMForCausalLM, bispikclm
    ),
    "wd_spikingformer": Architecture(
        "WD-Spikingformer",
        wd_spikingformer.WDSpikingformerConfig,
        wd_spikingformer.AUTO_MAP,
        wd_spikingformer.WDSpikingformerForCausalLM,
        wd_spikingformer,
    ),
    "we_spikingformer": Architecture(
        "WE-Spikingformer",
        we_spikingformer.WESpikingformerConfig,
        we_spikingformer.AUTO_MAP,
        we_spikingformer.WESpikingformerForMaskedLM,
        we_spikingformer,
    ),
}


def architecture(model_type: str) -> Architecture:
    """The `Architecture` registered as ``model_type``; a `ValueError` lists the valid ones otherwise."""
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {model_type!r}: must be one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[model_type]


def register_auto_classes() -> None:
    """Register every architecture with `AutoConfig` and the Auto model classes it supports."""
    for model_type, entry in ARCHITECTURES.items():
        transformers.AutoConfig.register(model_type, entry.config_class, exist_ok=True)
        for auto_name in entry.auto_map:
            getattr(transformers, auto_name).register(entry.config_class, entry.model_class(auto_name), exist_ok=True)
