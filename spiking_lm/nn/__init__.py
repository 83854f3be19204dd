"""Spiking building blocks: surrogate gradients, neurons, spike coding, and the layers the models share.

Public entry points: `build_neuron`, `NEURONS`, `build_surrogate`, `SURROGATES`, `SpikeCoding` (what a neuron
emits, ``neuron.coding``), `integer_to_binary`, `binary_to_integer`, the stateless `functional` twins of every
neuron, `SpikeExecution` (a model's inference backend and training GEMM dtype), `OperationRecorder` and
`recording` (listening to the spiking layers' operations), and `recompute_disabled` (training keeps every
activation instead of recomputing attention and unfused norm → neuron pairs in the backward pass).
docs/architecture.md maps the modules.
"""

from . import functional
from .dispatch import BACKENDS
from .execution import SpikeExecution
from .neurons import (
    COMMON_OPTIONS,
    NEURONS,
    ASNNeuron,
    IntegerLIFNeuron,
    LIFNeuron,
    MaskedParallelSpikingNeuron,
    NormalizedASNNeuron,
    NormalizedIntegerLIFNeuron,
    ParallelSpikingNeuron,
    SlidingParallelSpikingNeuron,
    SpikingNeuron,
    TernaryLIFNeuron,
    build_neuron,
    neuron_options,
)
from .recompute import recompute_disabled
from .recording import OperationRecorder, WeightReads, recording
from .spike_coding import SpikeCoding, binary_to_integer, integer_to_binary
from .surrogate import SURROGATES, ATan, Rectangle, Sigmoid, SurrogateFunction, build_surrogate

__all__ = [
    "BACKENDS",
    "COMMON_OPTIONS",
    "NEURONS",
    "SURROGATES",
    "ASNNeuron",
    "ATan",
    "IntegerLIFNeuron",
    "LIFNeuron",
    "MaskedParallelSpikingNeuron",
    "OperationRecorder",
    "NormalizedASNNeuron",
    "NormalizedIntegerLIFNeuron",
    "ParallelSpikingNeuron",
    "Rectangle",
    "Sigmoid",
    "SlidingParallelSpikingNeuron",
    "SpikeCoding",
    "SpikeExecution",
    "SpikingNeuron",
    "SurrogateFunction",
    "TernaryLIFNeuron",
    "WeightReads",
    "binary_to_integer",
    "build_neuron",
    "build_surrogate",
    "functional",
    "integer_to_binary",
    "neuron_options",
    "recompute_disabled",
    "recording",
]
