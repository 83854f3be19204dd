"""The common battery every spiking model class must pass."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

import spiking_lm

from .conftest import (
    CAUSAL_LM_CLASSES,
    INTEGER_NEURONS,
    MODEL_CLASSES,
    labels_for,
    model_inputs,
    tiny_config,
    tiny_model,
)

AUTO_FOR_KIND = {
    "causal_lm": AutoModelForCausalLM,
    "masked_lm": AutoModelForMaskedLM,
    "classification": AutoModelForSequenceClassification,
}
IDS = [cls.__name__ for cls, _ in MODEL_CLASSES]


def expected_logits_shape(kind, inputs, config):
    batch, length = inputs["input_ids"].shape
    return (batch, config.num_labels) if kind == "classification" else (batch, length, config.vocab_size)


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES, ids=IDS)
def test_output_shapes_hidden_states_and_attention_maps(model_class, kind):
    model = tiny_model(model_class)
    inputs = model_inputs(model_class)
    out = model(**inputs, output_hidden_states=True, output_attentions=True)
    assert out.logits.shape == expected_logits_shape(kind, inputs, model.config)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (2, 7, 32) for h in out.hidden_states)
    assert len(out.attentions) == model.config.num_hidden_layers
    for attention in out.attentions:
        assert attention.shape == (2, 4, 7, 7)
        row_sums = attention.sum(-1)
        assert torch.all(((row_sums - 1).abs() < 1e-5) | (row_sums == 0))  # time-averaged, row-normalized maps


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES, ids=IDS)
def test_save_load_round_trip_with_safetensors_and_auto_classes(model_class, kind, tmp_path):
    model = tiny_model(model_class)
    inputs = model_inputs(model_class)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert not list(tmp_path.glob("*.bin"))
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    expected_autos = {"AutoConfig", "AutoModel", AUTO_FOR_KIND[kind].__name__}
    assert expected_autos <= set(auto_map)
    loaded = AUTO_FOR_KIND[kind].from_pretrained(tmp_path).eval()
    assert type(loaded) is model_class
    assert type(AutoConfig.from_pretrained(tmp_path)) is model_class.config_class
    assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)
    assert type(AutoModel.from_config(model.config)).__name__.endswith("Model")


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES, ids=IDS)
def test_gradients_reach_every_trainable_parameter(model_class, kind):
    model = tiny_model(model_class).train()
    inputs = model_inputs(model_class)
    model(**inputs, labels=labels_for(kind, inputs)).loss.backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    zero = [name for name, p in model.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient: {missing}"
    assert not zero, f"all-zero gradient: {zero}"


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES, ids=IDS)
def test_gradient_checkpointing_gives_the_same_gradients(model_class, kind):
    inputs = model_inputs(model_class)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(model_class).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert model.is_activation_checkpointing
        model(**inputs, labels=labels_for(kind, inputs)).loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES, ids=IDS)
def test_eval_mode_is_deterministic(model_class, kind):
    model = tiny_model(model_class)
    inputs = model_inputs(model_class)
    assert torch.equal(model(**inputs).logits, model(**inputs).logits)


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES, ids=IDS)
@pytest.mark.parametrize("neuron_type", INTEGER_NEURONS)
def test_binary_spike_inference_matches_integer_mode(model_class, kind, neuron_type):
    model = tiny_model(model_class, neuron_type=neuron_type, time_steps=2)
    if neuron_type in ("asn", "nasn"):
        for name, parameter in model.named_parameters():
            if name.endswith("alpha"):
                parameter.data.fill_(-0.6)  # a non-zero shift exercises the folded offset
    inputs = model_inputs(model_class)
    with torch.no_grad():
        integer = model(**inputs).logits
        binary = model.set_spike_mode("binary")(**inputs).logits
        back = model.set_spike_mode("integer")(**inputs).logits
    assert ((binary - integer).norm() / integer.norm()).item() <= 1e-4
    assert torch.equal(back, integer)


@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES, ids=IDS)
def test_any_neuron_runs_in_any_model(model_class, kind):
    for neuron_type in ("lif", "tlif", "psn", "masked_psn", "sliding_psn"):
        model = tiny_model(model_class, neuron_type=neuron_type, time_steps=2)
        inputs = model_inputs(model_class)
        assert torch.isfinite(model(**inputs).logits).all(), neuron_type


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("hidden_size", 30, "hidden_size=30 is invalid: must be a multiple of num_attention_heads=4"),
        ("time_steps", 0, "time_steps=0 is invalid: must be an integer >= 1"),
        ("neuron_type", "izhikevich", "neuron_type='izhikevich' is invalid: must be one of lif, ilif"),
        ("v_threshold", -1.0, "v_threshold=-1.0 is invalid"),
        ("beta", 2.0, "beta=2.0 is invalid"),
        ("surrogate", "tanh", "surrogate='tanh' is invalid"),
        ("wta_mode", "soft", "wta_mode='soft' is invalid: must be one of hard, topk, sparsemax"),
        ("norm_type", "batchnorm", "norm_type='batchnorm' is invalid"),
        ("spike_max", 0, "spike_max=0 is invalid"),
    ],
)
@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES[::2], ids=IDS[::2])
def test_config_validation_names_the_field(model_class, kind, field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_config(model_class, **{field: value})


def test_attention_type_is_checked_per_architecture():
    import spiking_lm

    with pytest.raises(ValueError, match="attention_type='wssa' is invalid: must be one of sfsa, cwssa, ssa"):
        spiking_lm.BiSpikCLMConfig(attention_type="wssa")
    with pytest.raises(ValueError, match="attention_type='cwssa' is invalid"):
        spiking_lm.WESpikingformerConfig(attention_type="cwssa")


REMOTE_LOAD = """
import sys
sys.modules["spiking_lm"] = None  # the package must not be importable
import torch
from safetensors.torch import load_file
from transformers import {auto}
expected = load_file(sys.argv[2])
model = {auto}.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
logits = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).logits
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert torch.equal(logits, expected["logits"]), (logits - expected["logits"]).abs().max()
print("remote-ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("model_class,kind", MODEL_CLASSES, ids=IDS)
def test_remote_code_loads_without_the_package(model_class, kind, tmp_path):
    model = tiny_model(model_class)
    inputs = model_inputs(model_class)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    expected = tmp_path / "expected.safetensors"
    with torch.no_grad():
        save_file({**inputs, "logits": model(**inputs).logits.contiguous()}, str(expected))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    script = REMOTE_LOAD.format(auto=AUTO_FOR_KIND[kind].__name__)
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(expected)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote-ok" in result.stdout


DECODER_CLASSIFIERS = [
    spiking_lm.BiSpikCLMForSequenceClassification,
    spiking_lm.WDSpikingformerForSequenceClassification,
]


@pytest.mark.parametrize("model_class", DECODER_CLASSIFIERS, ids=lambda cls: cls.__name__)
def test_decoder_classifiers_pick_the_last_token_as_transformers_does(model_class):
    model = tiny_model(model_class)
    ids = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(0))
    ids[1, 4:] = 0  # right padding (pad_token_id=0)
    with torch.no_grad():
        full = model(input_ids=ids).logits
        alone = model(input_ids=ids[1:, :4]).logits
        embedded = model(inputs_embeds=model.get_input_embeddings()(ids)).logits
    torch.testing.assert_close(full[1], alone[0], rtol=1e-5, atol=1e-5)  # padding is skipped
    # batched inputs_embeds: the last position of every row (padding cannot be seen there), as transformers does
    assert embedded.shape == full.shape
    torch.testing.assert_close(embedded[0], full[0], rtol=1e-5, atol=1e-5)
    without_pad = tiny_model(model_class, pad_token_id=None)
    with pytest.raises(ValueError, match="need config.pad_token_id"):
        without_pad(input_ids=ids)


@pytest.mark.parametrize(("model_class", "kind"), MODEL_CLASSES, ids=[cls.__name__ for cls, _ in MODEL_CLASSES])
def test_forward_signatures_name_their_inputs(model_class, kind):
    import inspect

    parameters = inspect.signature(model_class.forward).parameters
    expected = {"input_ids", "attention_mask", "inputs_embeds", "output_attentions", "output_hidden_states"}
    expected |= {"labels"} if kind != "base" else set()
    expected |= {"cache", "use_cache", "position_ids"} if kind == "causal_lm" else set()
    assert expected <= set(parameters), expected - set(parameters)
    assert "past_key_values" not in parameters  # transformers 5 calls it `cache`


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=lambda cls: cls.__name__)
def test_past_key_values_still_works_with_transformers_deprecation_warning(model_class):
    model = tiny_model(model_class)
    ids = torch.randint(3, 99, (1, 5), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        first = model(ids[:, :4], use_cache=True)
        expected = model(ids[:, 4:], cache=first.cache if hasattr(first, "cache") else first.past_key_values).logits
        first = model(ids[:, :4], use_cache=True)
        cache = first.cache if hasattr(first, "cache") else first.past_key_values
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
            logits = model(ids[:, 4:], past_key_values=cache).logits
    torch.testing.assert_close(logits, expected)
