from .configuration_wd_spikingformer import WDSpikingformerConfig
from .modeling_wd_spikingformer import (
    AUTO_MAP,
    WDSpikingformerForCausalLM,
    WDSpikingformerForSequenceClassification,
    WDSpikingformerModel,
    WDSpikingformerPreTrainedModel,
)

__all__ = [
    "AUTO_MAP",
    "WDSpikingformerConfig",
    "WDSpikingformerForCausalLM",
    "WDSpikingformerForSequenceClassification",
    "WDSpikingformerModel",
    "WDSpikingformerPreTrainedModel",
]
