"""`spiking_lm.nn.decode_step.decode_block`: a decoding step in few calls, bit for bit the generic block."""

import pytest
import torch

import spiking_lm
from spiking_lm.nn import blocks, decode_step, event, functional, native
from spiking_lm.nn.recording import OperationRecorder, recording

from ..models.conftest import model_inputs, tiny_model

OPTIONS = {"max_new_tokens": 6, "min_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "output_scores": True,
           "return_dict_in_generate": True}  # fmt: skip


def w8_model(neuron_type, time_steps, **overrides):
    model = tiny_model(spiking_lm.BiSpikCLMForCausalLM, neuron_type=neuron_type, time_steps=time_steps, **overrides)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # norms that spread the membranes over every count a neuron can emit
        for norm in model.modules():
            if isinstance(norm, torch.nn.LayerNorm):
                norm.weight.uniform_(0.5, 4.0, generator=generator)
    model.quantize_weights()
    model.set_inference_backend("event")
    return model


def generate_both_ways(model, monkeypatch, **inputs):
    """``(through decode_block, generic, how many blocks decode_block ran, how many attended in place)``."""
    ran, in_place = [], []
    block, attend = decode_step.decode_block, decode_step._attend_in_place
    monkeypatch.setattr(blocks, "decode_block", lambda *a: (lambda r: ran.append(r is not None) or r)(block(*a)))
    monkeypatch.setattr(decode_step, "_attend_in_place", lambda *a: (lambda r: in_place.append(r is not None) or r)(
        attend(*a)))  # fmt: skip
    with torch.no_grad():
        fast = model.generate(**inputs, **OPTIONS)
        monkeypatch.setattr(blocks, "decode_block", lambda *a: None)
        generic = model.generate(**inputs, **OPTIONS)
    return fast, generic, sum(ran), sum(in_place)


def assert_same(fast, generic):
    assert torch.equal(fast.sequences, generic.sequences)
    assert all(torch.equal(a, b) for a, b in zip(fast.scores, generic.scores, strict=True))


@pytest.mark.parametrize("neuron_type,time_steps", [("nilif", 1), ("ilif", 1), ("lif", 4), ("lif", 1)])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("int8_cache", [True, False])
def test_decode_block_is_the_generic_blocks_bits(neuron_type, time_steps, batch, int8_cache, monkeypatch):
    if int8_cache:  # the tiny model's K/V take the event backend's int8 format, attended in place
        monkeypatch.setattr(event, "MIN_WEIGHT_BYTES", 0)
    model = w8_model(neuron_type, time_steps)
    prompt = model_inputs(spiking_lm.BiSpikCLMForCausalLM, batch=batch, length=5)
    fast, generic, ran, in_place = generate_both_ways(model, monkeypatch, **prompt)
    assert ran == model.config.num_hidden_layers * (OPTIONS["max_new_tokens"] - 1)  # every decoding step
    assert in_place == (ran if int8_cache else 0)
    assert_same(fast, generic)


def test_padding_and_recording_take_the_generic_code(monkeypatch):
    monkeypatch.setattr(event, "MIN_WEIGHT_BYTES", 0)
    model = w8_model("nilif", 1)
    prompt = model_inputs(spiking_lm.BiSpikCLMForCausalLM, batch=2, length=5)
    prompt["attention_mask"][0, :2] = 0  # left padding: not every key is allowed, the module's attention runs
    fast, generic, ran, in_place = generate_both_ways(model, monkeypatch, **prompt)
    assert ran > 0 and in_place == 0
    assert_same(fast, generic)

    class Reads(OperationRecorder):
        observes_spikes = False

    with recording(Reads()):  # recorders see every operation: the generic code runs
        _, _, ran, _ = generate_both_ways(model, monkeypatch, **prompt)
    assert ran == 0


@pytest.mark.parametrize("neuron_type", ["asn", "psn"])
def test_unsupported_neurons_take_the_generic_code(neuron_type, monkeypatch):
    model = w8_model(neuron_type, 1 if neuron_type == "asn" else 2)
    prompt = model_inputs(spiking_lm.BiSpikCLMForCausalLM, batch=1, length=5)
    fast, generic, ran, _ = generate_both_ways(model, monkeypatch, **prompt)
    assert ran == 0
    assert_same(fast, generic)


@pytest.mark.parametrize("fire,steps", [("integer", 1), ("lif", 4), (None, 1)])
def test_spike_products_are_the_compositions_bits(fire, steps):
    """One native call (the neuron fires, its spikes are counted, the int8 sums scaled) against the neuron's own
    kernel and the exact sums of its counts followed by the same fp32 operations."""
    generator = torch.Generator().manual_seed(steps)
    layers = [spiking_lm.nn.weight_quantization.Int8Linear.from_linear(torch.nn.Linear(200, width))
              for width in (48, 31)]  # fmt: skip
    membrane = torch.randn(steps * 2, 200, generator=generator) * 2
    choices = {"integer": (0.25, (0.0, 4.0, 0.25)), "lif": (1.0, (0.5, 0.75, 0.0)), None: (1.0, (0.0,) * 3)}
    unit, parameters = choices[fire]
    if fire is None:
        membrane = (membrane > 1).float()
    plan = native.ProductPlan([layer.quantized_t() for layer in layers], [layer.count_scale(unit) for layer in layers],
                              [None, layers[1].offset_shift(0.5)], [layer.bias for layer in layers])  # fmt: skip
    outputs, selected = native.spike_products(membrane, plan, 0.0, unit, fire, parameters, steps)
    if fire == "integer":
        spikes = functional._native_integer_fire(membrane.unsqueeze(0), *parameters[:1], 4, parameters[2])[0]
    elif fire == "lif":
        spikes = native.lif_steps(membrane.view(steps, 2, 200), *parameters[:2]).view(-1, 200)
    else:
        spikes = membrane
    assert selected == int((spikes != 0).any(0).sum()) > 0
    counts = torch.round(spikes / unit).double()
    shifts = [None, layers[1].offset_shift(0.5)]
    for output, layer, shift in zip(outputs, layers, shifts, strict=True):
        sums = (counts @ layer.quantized_t().double()).float()  # exact: integers below 2^24
        expected = sums * layer.count_scale(unit)  # then the kernel's fp32 operations, in its order
        expected = expected if shift is None else expected + shift
        assert torch.equal(output, expected + layer.bias)
    membrane[1, 3] = float("nan")  # a LIF does not fire on NaN; the other spike values are refused
    assert (native.spike_products(membrane, plan, 0.0, unit, fire, parameters, steps) is None) == (fire != "lif")


@pytest.mark.parametrize("rows,low,high", [(1, 0, 4), (2, 0, 1), (5, 0, 4), (8, 0, 127), (8, -2, 2)])
def test_spike_products_of_several_rows_and_wide_matrices_are_exact(rows, low, high):
    """2-8 rows of non-negative counts take the VNNI kernel (four inputs per instruction, columns in chunks of 512
    shared by the threads, a tail of columns and of inputs); one row or signed counts take the int16 one: the exact
    integer sums either way, then the same fp32 operations, bit for bit."""
    generator = torch.Generator().manual_seed(rows)
    layers = [spiking_lm.nn.weight_quantization.Int8Linear.from_linear(torch.nn.Linear(301, width))
              for width in (1100, 64, 517)]  # fmt: skip
    counts = torch.randint(low, high + 1, (rows, 301), generator=generator)
    counts[:, ::3] = 0  # inputs no row selects
    if rows > 2:
        counts[1] = 0  # a row without a spike
    plan = native.ProductPlan([layer.quantized_t() for layer in layers], [layer.weight_scale for layer in layers],
                              [None, None, layers[2].offset_shift(0.5)], [layer.bias for layer in layers])  # fmt: skip
    outputs, selected = native.spike_products(counts.float(), plan, 0.0, 1.0)
    assert selected == int((counts != 0).any(0).sum())
    for output, layer, shift in zip(outputs, layers, (None, None, layers[2].offset_shift(0.5)), strict=True):
        expected = (counts.double() @ layer.quantized_t().double()).float() * layer.weight_scale  # exact sums
        expected = expected if shift is None else expected + shift
        assert torch.equal(output, expected + layer.bias)


def test_a_product_plan_follows_its_weights():
    """Decoding keeps the products' plan between tokens: a weight, scale or bias changed in place or replaced
    makes a new one, so the products always use the module's current tensors."""
    layer = spiking_lm.nn.weight_quantization.Int8Linear.from_linear(torch.nn.Linear(16, 8))
    plan = spiking_lm.nn.weight_quantization.product_plan([layer], 1.0, None)
    assert spiking_lm.nn.weight_quantization.product_plan([layer], 1.0, None) is plan
    spikes = torch.ones(1, 16)
    before = native.spike_products(spikes, plan, 0.0, 1.0)[0][0]
    for change in (lambda: layer.weight_scale.mul_(2), lambda: layer.bias.add_(1),
                   lambda: setattr(layer, "qweight", layer.qweight.clone())):  # fmt: skip
        with torch.no_grad():
            change()
        fresh = spiking_lm.nn.weight_quantization.product_plan([layer], 1.0, None)
        assert fresh is not plan
        plan = fresh
    after = native.spike_products(spikes, plan, 0.0, 1.0)[0][0]
    expected = spikes @ layer.dequantized_weight().t() + layer.bias
    assert not torch.equal(before, after) and torch.allclose(after, expected, atol=1e-5)
    assert spiking_lm.nn.weight_quantization.product_plan([layer], 0.5, None) is not plan  # another unit


@pytest.mark.parametrize("fast", [True, False])
def test_a_non_finite_key_in_the_int8_cache_is_refused_not_read_back(fast, monkeypatch):
    """An int8 count cannot hold NaN: the event backend's forward still gives the fp32 model's logits (the prompt
    attends to its fresh K/V), but continuing from that cache raises instead of reading a finite count back."""
    monkeypatch.setattr(event, "MIN_WEIGHT_BYTES", 0)
    if not fast:
        monkeypatch.setattr(blocks, "decode_block", lambda *a: None)
    model = w8_model("nilif", 1)
    ids = torch.randint(3, 99, (1, 5), generator=torch.Generator().manual_seed(0))
    embeddings = model.get_input_embeddings()(ids).detach().clone()
    embeddings[0, 2] = float("nan")
    with torch.no_grad():
        model.set_inference_backend("dense")
        dense = model(inputs_embeds=embeddings).logits
        model.set_inference_backend("event")
        output = model(inputs_embeds=embeddings, use_cache=True)
        assert torch.equal(torch.isfinite(output.logits), torch.isfinite(dense))
        step = model.get_input_embeddings()(torch.tensor([[7]]))
        with pytest.raises(ValueError, match="NaN or inf.*dense backend"):
            model(inputs_embeds=step, cache=output.past_key_values, use_cache=True)
    clean = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)  # a new cache is fine
    assert clean.shape == (1, 8)


def test_spike_products_refuse_what_they_cannot_fire():
    layer = spiking_lm.nn.weight_quantization.Int8Linear.from_linear(torch.nn.Linear(8, 4))
    plan = native.ProductPlan([layer.quantized_t()], [layer.weight_scale], [None], [None])
    with pytest.raises(ValueError, match="fire must be one of"):
        native.spike_products(torch.ones(3, 8), plan, 0.0, 1.0, "lif", (0.5, 1.0, 0.0), steps=2)
    with pytest.raises(ValueError, match="fire must be one of"):
        native.spike_products(torch.ones(2, 8), plan, 0.0, 1.0, "psn")
    with pytest.raises(ValueError, match="do not match weights of 8 inputs"):
        native.spike_products(torch.ones(2, 7), plan, 0.0, 1.0)


def test_the_kept_plan_follows_the_modules(monkeypatch):
    """A block's plan is made at the first decoding step and kept for the steps after; a setting, a tensor or a
    config field it depends on that changes — assigned, changed in place, replaced — makes it again, so that the
    change acts as it does in the generic block (or hands the block to it)."""
    monkeypatch.setattr(event, "MIN_WEIGHT_BYTES", 0)
    model = w8_model("lif", 2)
    layers = model.config.num_hidden_layers
    prompt = model_inputs(spiking_lm.BiSpikCLMForCausalLM, batch=1, length=5)
    plans, make = [], decode_step._plan
    monkeypatch.setattr(decode_step, "_plan", lambda *a: (lambda plan: plans.append(plan) or plan)(make(*a)))
    fast, generic, ran, in_place = generate_both_ways(model, monkeypatch, **prompt)
    assert ran == in_place == layers * (OPTIONS["max_new_tokens"] - 1) and len(plans) == layers  # kept
    assert_same(fast, generic)
    block = model.model.decoder.layers[0]
    attention = block.self_attn
    changes = {
        "a neuron constant": lambda: setattr(attention.q_neuron, "v_threshold", 0.6),
        "an int8 scale changed in place": lambda: block.fc1.weight_scale[::2].mul_(3),  # (a norm follows)
        "an int8 table replaced": lambda: setattr(block.fc2, "qweight", -block.fc2.qweight),
        "an int8 table registered anew": lambda: block.fc1.register_buffer("qweight", block.fc1.qweight.flip(1)),
        "a config field": lambda: setattr(model.config, "attn_score_scale", "none"),
    }
    for name, change in changes.items():
        before = generic
        plans.clear()
        with torch.no_grad():
            change()
        fast, generic, ran, in_place = generate_both_ways(model, monkeypatch, **prompt)
        assert plans and ran == in_place == layers * (OPTIONS["max_new_tokens"] - 1), name
        assert not all(torch.equal(a, b) for a, b in zip(generic.scores, before.scores, strict=True)), name
        assert_same(fast, generic)
    attention.attn_neuron.record_firing_rate = True  # block 0's attention records: its own code runs
    fast, generic, ran, in_place = generate_both_ways(model, monkeypatch, **prompt)
    assert ran == layers * (OPTIONS["max_new_tokens"] - 1) and in_place == ran - (OPTIONS["max_new_tokens"] - 1)
    assert attention.attn_neuron.recorded_elements > 0
    assert_same(fast, generic)
