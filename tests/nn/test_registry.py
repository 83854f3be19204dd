import pytest
import torch

from spiking_lm.nn import COMMON_OPTIONS, NEURONS, SpikingNeuron, build_neuron

ALL = list(NEURONS)


def test_registry_holds_every_neuron_of_the_spec():
    assert set(NEURONS) == {"lif", "ilif", "nilif", "asn", "nasn", "tlif", "psn", "masked_psn", "sliding_psn"}
    for name in ALL:
        assert isinstance(build_neuron(name), SpikingNeuron)


@pytest.mark.parametrize("name", ALL)
def test_output_shape_and_no_state_between_calls(name):
    neuron = build_neuron(name, strict=False, time_steps=4)
    x = torch.randn(4, 2, 3, 8) * 2
    first = neuron(x)
    assert first.shape == x.shape
    assert torch.equal(neuron(x), first)


def test_unknown_neuron_lists_valid_names():
    with pytest.raises(ValueError, match="unknown neuron 'izhikevich'; valid names: lif, ilif, nilif"):
        build_neuron("izhikevich")


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("lif", {"v_threshold": -1.0}, "v_threshold must be a number in \\(0.0"),
        ("lif", {"beta": 1.5}, "beta must be a number in \\[0.0, 1.0\\]"),
        ("lif", {"surrogate": "tanh"}, "unknown surrogate 'tanh'"),
        ("lif", {"backend": "cuda"}, "unknown backend 'cuda'"),
        ("ilif", {"spike_max": 0}, "spike_max must be an integer >= 1, got 0"),
        ("nasn", {"spike_max": 2.5}, "spike_max must be an integer >= 1, got 2.5"),
        ("psn", {"time_steps": 0}, "time_steps must be an integer >= 1"),
        ("ilif", {"v_threshold": 1.0}, "neuron 'ilif' got unknown option\\(s\\) \\['v_threshold'\\]"),
    ],
)
def test_bad_arguments_are_named(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_neuron(name, **kwargs)


def test_non_strict_build_drops_only_common_options():
    common = {"beta": 0.25, "v_threshold": 0.5, "surrogate": "sigmoid", "spike_max": 2, "time_steps": 4}
    assert set(common) <= COMMON_OPTIONS
    lif = build_neuron("lif", strict=False, **common)
    assert (lif.beta, lif.v_threshold, lif.surrogate.name) == (0.25, 0.5, "sigmoid")
    assert build_neuron("nilif", strict=False, **common).spike_max == 2
    with pytest.raises(ValueError, match="unknown option\\(s\\) \\['colour'\\]"):
        build_neuron("lif", strict=False, colour="red")


def test_neurons_require_time_major_input():
    with pytest.raises(ValueError, match="time-major input"):
        build_neuron("lif")(torch.zeros(5))
