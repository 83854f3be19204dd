"""What a model owns and reports: one `SpikeExecution` passed down to its layers (no settings stamped onto
modules or caches), and per-layer block-input firing rates in its outputs."""

import copy

import pytest
import torch
from torch import nn

from spiking_lm.nn.execution import SpikeExecution
from spiking_lm.nn.neuron_base import SpikingNeuron

from .conftest import CAUSAL_LM_CLASSES, MODEL_CLASSES, model_inputs, tiny_model

IDS = [cls.__name__ for cls, _ in MODEL_CLASSES]


@pytest.mark.parametrize(("model_class", "kind"), MODEL_CLASSES, ids=IDS)
def test_one_execution_object_is_shared_by_every_nested_model(model_class, kind):
    model = tiny_model(model_class)
    owners = [module for module in model.modules() if hasattr(module, "execution")]
    assert isinstance(model.execution, SpikeExecution) and len(owners) >= 2  # the head and its base model
    assert all(owner.execution is model.execution for owner in owners)
    model.set_inference_backend("event").set_train_matmul_dtype("bfloat16")
    assert (model.execution.inference_backend, model.execution.train_matmul_dtype) == ("event", "bfloat16")
    assert model.config.train_matmul_dtype == "bfloat16"
    for module in model.modules():  # nothing is stamped onto the Linears
        assert not {"inference_backend", "train_matmul_dtype", "_event_cache"} & set(vars(module)), module


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=[cls.__name__ for cls in CAUSAL_LM_CLASSES])
def test_a_copied_model_gets_its_own_execution_with_the_same_settings(model_class):
    model = tiny_model(model_class).set_inference_backend("event")
    with torch.no_grad():
        model(**model_inputs(model_class))  # fills the event backend's weight copies
    copied = copy.deepcopy(model)
    assert copied.execution is not model.execution
    assert copied.execution.inference_backend == "event" and copied.execution.derived_bytes() == 0
    assert all(m.execution is copied.execution for m in copied.modules() if hasattr(m, "execution"))
    with torch.no_grad():
        cache = model(**model_inputs(model_class), use_cache=True).cache
    assert not any(key.startswith("_spiking_lm") for key in vars(cache))  # the format is read from the tensors


def test_bad_execution_settings_are_named():
    with pytest.raises(ValueError, match=r"inference backend must be one of \('dense', 'event'\), got 'sparse'"):
        SpikeExecution("sparse")
    with pytest.raises(ValueError, match="train_matmul_dtype must be one of"):
        SpikeExecution(train_matmul_dtype="float16")


def block_input_neurons(model):
    """The neuron each block starts with (the first neuron among its direct children)."""
    return [next(m for m in block.children() if isinstance(m, SpikingNeuron)) for block in model.spiking_blocks()]


@pytest.mark.parametrize(("model_class", "kind"), MODEL_CLASSES, ids=IDS)
@pytest.mark.parametrize("neuron_type", ["lif", "nilif", "asn"])
def test_outputs_carry_each_block_input_firing_rate_with_gradient(model_class, kind, neuron_type):
    model = tiny_model(model_class, neuron_type=neuron_type).train()
    inputs = model_inputs(model_class)
    outputs = model(**inputs, output_firing_rates=True)
    rates = outputs.firing_rates
    assert len(rates) == model.config.num_hidden_layers
    for rate in rates:
        assert rate.shape == (*inputs["input_ids"].shape, model.config.hidden_size)
        assert rate.min() >= 0 and rate.max() <= 1
    assert model(**inputs).firing_rates is None  # only when asked
    gradient = torch.autograd.grad(sum(rate.sum() for rate in rates), model.spiking_blocks()[0].parameters(),
                                   allow_unused=True)  # fmt: skip
    assert any(g is not None and g.abs().sum() > 0 for g in gradient)  # the spikes' surrogate gradient flows
    # the same figures the neurons count when they record (which turns the fused kernels off), in the same
    # grad mode (training and inference kernels may round a membrane at the threshold differently)
    neurons = block_input_neurons(model)
    assert len(neurons) == len(rates)
    model.record_firing_rates(True)
    model(**inputs)
    for neuron, rate in zip(neurons, rates, strict=True):
        assert neuron.firing_rate == pytest.approx(float(rate.detach().mean()), rel=1e-5, abs=1e-7)


@pytest.mark.parametrize(("model_class", "kind"), MODEL_CLASSES, ids=IDS)
def test_binary_spike_mode_reports_the_integer_modes_firing_rates(model_class, kind):
    model = tiny_model(model_class, neuron_type="nasn")
    inputs = model_inputs(model_class)
    with torch.no_grad():
        integer = model(**inputs, output_firing_rates=True).firing_rates
        binary = model.set_spike_mode("binary")(**inputs, output_firing_rates=True).firing_rates
    for a, b in zip(integer, binary, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_the_layers_have_no_linear_subclass_or_attribute_for_the_backend():
    model = tiny_model(CAUSAL_LM_CLASSES[0])
    spike_fed = [m for name, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in name]
    assert spike_fed and all(type(m) is nn.Linear for m in spike_fed)
