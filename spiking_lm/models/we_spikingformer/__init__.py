from .configuration_we_spikingformer import WESpikingformerConfig
from .modeling_we_spikingformer import (
    AUTO_MAP,
    WESpikingformerForMaskedLM,
    WESpikingformerForSequenceClassification,
    WESpikingformerModel,
    WESpikingformerPreTrainedModel,
)

__all__ = [
    "AUTO_MAP",
    "WESpikingformerConfig",
    "WESpikingformerForMaskedLM",
    "WESpikingformerForSequenceClassification",
    "WESpikingformerModel",
    "WESpikingformerPreTrainedModel",
]
