"""`SpADConfig`: the training arguments of spike-aware alignment distillation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

LOSS_TERMS = ("ea", "saa", "sfa", "sta", "hta")


@dataclass
class SpADConfig(TrainingArguments):
    """`TrainingArguments` plus the SpAD loss weights. Every field maps one-to-one to a recipe key."""

    teacher_name_or_path: str | None = field(
        default=None, metadata={"help": "HF ANN teacher (hub name or local folder); the trainer may also get one."}
    )
    ea_weight: float = field(default=0.2, metadata={"help": "weight of embedding alignment (EA)"})
    saa_weight: float = field(default=0.1, metadata={"help": "weight of attention-map alignment (SAA)"})
    sfa_weight: float = field(default=0.1, metadata={"help": "weight of hidden-feature alignment (SFA)"})
    sta_weight: float = field(default=0.3, metadata={"help": "weight of soft-target alignment (STA, KL)"})
    hta_weight: float = field(default=0.3, metadata={"help": "weight of the hard-target task loss (HTA)"})
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature of STA (the loss is scaled by τ²)"})
    rate_gamma: float = field(default=0.5, metadata={"help": "γ, weight of RateMSE inside SFA"})
    layer_map: list[int] | None = field(
        default=None, metadata={"help": "teacher layer for each student layer; default round(l·(L_T−1)/(L_S−1))"}
    )

    def __post_init__(self):
        # nan would silently switch a term off (nan > 0 is False) and inf train to NaN weights: both refused
        for name in [f"{term}_weight" for term in LOSS_TERMS] + ["rate_gamma"]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}={value!r} is invalid: must be a finite number >= 0")
        if sum(getattr(self, f"{term}_weight") for term in LOSS_TERMS) <= 0:
            raise ValueError("at least one of ea/saa/sfa/sta/hta_weight must be > 0")
        temperature = self.temperature
        number = isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
        if not (number and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature={temperature!r} is invalid: must be a finite number > 0")
        super().__post_init__()
