"""spiking_lm: spiking language models as Hugging Face models.

Importing the package registers every architecture with the `transformers` Auto classes, so
``AutoModelForCausalLM.from_pretrained(folder)`` finds them without ``trust_remote_code``.
"""

import transformers

from .models.bispikclm import AUTO_MAP as _BISPIKCLM_AUTO_MAP
from .models.bispikclm import (
    BiSpikCLMConfig,
    BiSpikCLMForCausalLM,
    BiSpikCLMModel,
)
from .models.wd_spikingformer import AUTO_MAP as _WD_AUTO_MAP
from .models.wd_spikingformer import (
    WDSpikingformerConfig,
    WDSpikingformerForCausalLM,
    WDSpikingformerForSequenceClassification,
    WDSpikingformerModel,
)
from .models.we_spikingformer import AUTO_MAP as _WE_AUTO_MAP
from .models.we_spikingformer import (
    WESpikingformerConfig,
    WESpikingformerForMaskedLM,
    WESpikingformerForSequenceClassification,
    WESpikingformerModel,
)

__version__ = "0.1.0"

ARCHITECTURES = {
    BiSpikCLMConfig: _BISPIKCLM_AUTO_MAP,
    WDSpikingformerConfig: _WD_AUTO_MAP,
    WESpikingformerConfig: _WE_AUTO_MAP,
}


def _register_auto_classes() -> None:
    for config_class, auto_map in ARCHITECTURES.items():
        transformers.AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
        for auto_name, class_name in auto_map.items():
            model_class = globals()[class_name]
            getattr(transformers, auto_name).register(config_class, model_class, exist_ok=True)


_register_auto_classes()

__all__ = [
    "ARCHITECTURES",
    "BiSpikCLMConfig",
    "BiSpikCLMForCausalLM",
    "BiSpikCLMModel",
    "WDSpikingformerConfig",
    "WDSpikingformerForCausalLM",
    "WDSpikingformerForSequenceClassification",
    "WDSpikingformerModel",
    "WESpikingformerConfig",
    "WESpikingformerForMaskedLM",
    "WESpikingformerForSequenceClassification",
    "WESpikingformerModel",
]
