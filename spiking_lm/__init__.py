"""spiking_lm: spiking language models as Hugging Face models.

Importing the package registers every architecture with the `transformers` Auto classes, so
``AutoModelForCausalLM.from_pretrained(folder)`` finds them without ``trust_remote_code``.
"""

from .models.auto import ARCHITECTURES, register_auto_classes
from .models.bispikclm import BiSpikCLMConfig, BiSpikCLMForCausalLM, BiSpikCLMForSequenceClassification, BiSpikCLMModel
from .models.wd_spikingformer import (
    WDSpikingformerConfig,
    WDSpikingformerForCausalLM,
    WDSpikingformerForSequenceClassification,
    WDSpikingformerModel,
)
from .models.we_spikingformer import (
    WESpikingformerConfig,
    WESpikingformerForMaskedLM,
    WESpikingformerForSequenceClassification,
    WESpikingformerModel,
)

__version__ = "0.1.0"

register_auto_classes()

__all__ = [
    "ARCHITECTURES",
    "BiSpikCLMConfig",
    "BiSpikCLMForCausalLM",
    "BiSpikCLMForSequenceClassification",
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
