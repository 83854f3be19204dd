from .configuration_bispikclm import BiSpikCLMConfig
from .modeling_bispikclm import (
    AUTO_MAP,
    BiSpikCLMForCausalLM,
    BiSpikCLMForSequenceClassification,
    BiSpikCLMModel,
    BiSpikCLMPreTrainedModel,
)

__all__ = [
    "AUTO_MAP",
    "BiSpikCLMConfig",
    "BiSpikCLMForCausalLM",
    "BiSpikCLMForSequenceClassification",
    "BiSpikCLMModel",
    "BiSpikCLMPreTrainedModel",
]
