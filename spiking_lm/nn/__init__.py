"""Spiking building blocks: surrogate gradients, neurons, spike coding.

Public entry points: `build_neuron`, `NEURONS`, `build_surrogate`, `SURROGATES`, `integer_to_binary`,
`binary_to_integer`, the stateless `functional` twins of every neuron, and `recompute_disabled` (training keeps
every activation instead of recomputing attention and unfused norm → neuron pairs in the backward pass).
"""

from . import functional
from .dispatch import BACKENDS
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
from .spike_coding import binary_to_integer, integer_to_binary
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
    "NormalizedASNNeuron",
    "NormalizedIntegerLIFNeuron",
    "ParallelSpikingNeuron",
    "Rectangle",
    "Sigmoid",
    "SlidingParallelSpikingNeuron",
    "SpikingNeuron",
    "SurrogateFunction",
    "TernaryLIFNeuron",
    "binary_to_integer",
    "build_neuron",
    "build_surrogate",
    "functional",
    "integer_to_binary",
    "neuron_options",
    "recompute_disabled",
]
