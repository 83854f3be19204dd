"""`set_inference_backend("event")`: every architecture and neuron family gives the dense path's logits and
generates the same text with the cache."""

import pytest
import torch

import spiking_lm
from spiking_lm.nn import attention, bitpack, event, native
from spiking_lm.nn.recording import WeightReads, recording

from .conftest import CAUSAL_LM_CLASSES, MODEL_CLASSES, model_inputs, tiny_model

NEURON_FAMILIES = ["lif", "nilif", "asn", "tlif", "psn"]
IDS = [cls.__name__ for cls, _ in MODEL_CLASSES]


@pytest.fixture(autouse=True)
def gather_every_call(monkeypatch):
    """Compare the gather itself: tiny layers sit under the size floor, and random tiny models fire densely
    enough that the rule would pick the GEMM (whose result is the dense path's by construction)."""
    monkeypatch.setattr(event, "MIN_WEIGHT_BYTES", 0)
    monkeypatch.setattr(event, "EVENT_MAX_DENSITY", 1.0)


def relative_difference(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def products_every_call(monkeypatch):
    """The other side of the rule: no call gathers, so every Linear fed integer spikes takes the int8 product."""
    for name in ("EVENT_MAX_DENSITY", "EVENT_FEW_ROWS_DENSITY", "EVENT_MAX_ROWS_READ"):
        monkeypatch.setattr(event, name, 0.0)


@pytest.mark.parametrize(("model_class", "kind"), MODEL_CLASSES, ids=IDS)
@pytest.mark.parametrize("neuron_type", NEURON_FAMILIES)
@pytest.mark.parametrize("side", ["gather", "int8"])
def test_event_logits_equal_dense_logits(model_class, kind, neuron_type, side, monkeypatch):
    if side == "int8":
        products_every_call(monkeypatch)
    model = tiny_model(model_class, neuron_type=neuron_type)
    inputs = model_inputs(model_class)
    with torch.no_grad():
        dense = model(**inputs).logits
        with recording(WeightReads()) as reads:
            fast = model.set_inference_backend("event")(**inputs).logits
    if side == "gather":
        assert reads["gathered_calls"] > 0  # the gather really ran
    elif neuron_type == "tlif":  # learned ternary scales are no integer counts: the fp32 GEMM stays
        assert reads["int8_calls"] == 0
    else:  # nothing gathered (inputs without any spike "gather" nothing); SFSA's real-valued context stays fp32
        assert reads["gathered_bytes"] == 0
        assert reads["int8_calls"] > 0 or (neuron_type, kind) == ("psn", "masked_lm")  # that one never fires
    assert relative_difference(fast, dense) <= 1e-5
    if neuron_type in ("nilif", "asn"):  # binary spike inference: the virtual steps fold into counts first
        with torch.no_grad():
            binary = model.set_spike_mode("binary")(**inputs).logits
        assert relative_difference(binary, dense) <= 1e-5


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=[cls.__name__ for cls in CAUSAL_LM_CLASSES])
@pytest.mark.parametrize("neuron_type", ["lif", "nilif"])
@pytest.mark.parametrize("side", ["gather", "int8"])
def test_event_backend_generates_the_same_text_with_the_cache(model_class, neuron_type, side, monkeypatch):
    monkeypatch.setattr(bitpack, "PACKED_MIN_HEADS", 0)  # lif keys as bits (nilif's stay int8 counts)
    if side == "int8":
        products_every_call(monkeypatch)
    model = tiny_model(model_class, neuron_type=neuron_type)
    prompt = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0  # a left-padded row
    options = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0, "attention_mask": mask}
    dense = model.generate(prompt, **options)
    model.set_inference_backend("event")
    assert torch.equal(model.generate(prompt, **options), dense)
    assert torch.equal(model.generate(prompt, use_cache=False, **options), dense)


def test_training_ignores_the_event_backend_and_keeps_gradients():
    model_class = CAUSAL_LM_CLASSES[0]
    model = tiny_model(model_class, neuron_type="nilif").set_inference_backend("event").train()
    inputs = model_inputs(model_class)
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "q_proj.weight" in n)


def test_unknown_backend_is_rejected():
    model = tiny_model(CAUSAL_LM_CLASSES[0])
    with pytest.raises(ValueError, match="inference backend must be one of"):
        model.set_inference_backend("sparse")


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=[cls.__name__ for cls in CAUSAL_LM_CLASSES])
@pytest.mark.parametrize(
    "neuron_type,key_dtype,value_dtype",
    [("lif", torch.int64, torch.int8), ("nilif", torch.int8, torch.int8), ("asn", torch.float32, torch.float32)],
)
def test_event_backend_caches_spike_keys_packed_and_values_as_int8(
    model_class, neuron_type, key_dtype, value_dtype, monkeypatch
):
    monkeypatch.setattr(bitpack, "PACKED_MIN_HEADS", 0)  # tiny caches would keep int8 keys (module rule)
    model = tiny_model(model_class, neuron_type=neuron_type)
    inputs = model_inputs(model_class)
    with torch.no_grad():
        dense = model(**inputs, use_cache=True).cache
        event_cache = model.set_inference_backend("event")(**inputs, use_cache=True).cache
    k_neuron = next(module.k_neuron for module in model.modules() if hasattr(module, "k_neuron"))
    unit = k_neuron.coding.scale

    def widened(stored, width):
        if stored.dtype == torch.int64:  # binary keys: bits packed into int64 words
            return bitpack.unpack_bits(stored, width)
        return stored.float() * unit if stored.dtype == torch.int8 else stored  # asn spikes carry an offset: fp32

    for plain, compact in zip(dense.layers, event_cache.layers, strict=True):
        assert plain.keys.dtype == torch.float32  # the dense backend keeps its fp32 cache
        assert (compact.keys.dtype, compact.values.dtype) == (key_dtype, value_dtype)
        if key_dtype == torch.int64:
            assert compact.keys.shape[-1] == -(-plain.keys.shape[-1] // 64)
        for full, stored in ((plain.keys, compact.keys), (plain.values, compact.values)):
            assert torch.equal(full, widened(stored, full.shape[-1]))


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=[cls.__name__ for cls in CAUSAL_LM_CLASSES])
@pytest.mark.parametrize("built", [True, False])
def test_packed_keys_give_the_dense_logits_for_prompts_fed_in_chunks(model_class, built, monkeypatch):
    """Binary keys cached as bits: chunks of at most `PACKED_MAX_QUERIES` rows multiply them by AND/popcount (in
    torch, or for SFSA in the native decoding kernel where the library is built), longer chunks unpack them; both
    give the logits of one dense forward over the whole sequence."""
    popcounts = []
    if not built:
        monkeypatch.setattr(native, "_state", {"library": None, "tried": True})
    monkeypatch.setattr(bitpack, "PACKED_MIN_HEADS", 0)
    counted = bitpack.and_popcount
    monkeypatch.setattr(attention, "and_popcount", lambda q, k: popcounts.append(q.shape) or counted(q, k))
    model = tiny_model(model_class, neuron_type="lif")
    input_ids = model_inputs(model_class, length=12)["input_ids"]
    with torch.no_grad():
        dense = model(input_ids=input_ids).logits
        model.set_inference_backend("event")
        cache, pieces, start = None, [], 0
        for end in (5, 11, 12):  # a prefill, a 6-token chunk (unpacked) and a decoding step (packed)
            output = model(input_ids=input_ids[:, start:end], cache=cache, use_cache=True)
            cache, start = output.cache, end
            pieces.append(output.logits)
    in_torch = not (built and model.config.attention_type == "sfsa")
    assert [shape[-2] for shape in popcounts] == [1] * model.config.num_hidden_layers * in_torch
    assert relative_difference(torch.cat(pieces, dim=1), dense) <= 1e-5


@pytest.mark.parametrize("first", ["dense", "event"])
def test_a_cache_filled_on_one_backend_cannot_be_continued_on_the_other(first, monkeypatch):
    monkeypatch.setattr(bitpack, "PACKED_MIN_HEADS", 0)
    model_class = CAUSAL_LM_CLASSES[0]
    model = tiny_model(model_class, neuron_type="lif").set_inference_backend(first)
    input_ids = model_inputs(model_class)["input_ids"]
    with torch.no_grad():
        cache = model(input_ids=input_ids[:, :4], use_cache=True).cache
        model(input_ids=input_ids[:, 4:5], cache=cache, use_cache=True)  # the same backend goes on
        model.set_inference_backend("event" if first == "dense" else "dense")
        with pytest.raises(ValueError, match="filled on the other inference backend"):
            model(input_ids=input_ids[:, 5:], cache=cache, use_cache=True)


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=[cls.__name__ for cls in CAUSAL_LM_CLASSES])
@pytest.mark.parametrize("built", [True, False])
def test_binary_keys_are_packed_only_in_caches_of_enough_heads(model_class, built, monkeypatch):
    """The torch AND/popcount pays only in large caches; SFSA's native decoding kernel reads bits at any size."""
    if not built:
        monkeypatch.setattr(native, "_state", {"library": None, "tried": True})
    model = tiny_model(model_class, neuron_type="lif").set_inference_backend("event")
    config = model.config
    inputs = model_inputs(model_class, batch=2)
    heads = config.time_steps * 2 * config.num_attention_heads
    small = torch.int64 if built and config.attention_type == "sfsa" else torch.int8
    for limit, key_dtype in ((heads + 1, small), (heads, torch.int64)):
        monkeypatch.setattr(bitpack, "PACKED_MIN_HEADS", limit)
        with torch.no_grad():
            cache = model(**inputs, use_cache=True).cache
        assert {layer.keys.dtype for layer in cache.layers} == {key_dtype}


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=[cls.__name__ for cls in CAUSAL_LM_CLASSES])
def test_under_the_size_floor_the_event_backend_runs_the_dense_code(model_class, monkeypatch):
    """Matrices that stay in the CPU cache always take the GEMM: the event backend then adds only bookkeeping, so
    it leaves such layers (and their K/V cache) to the dense code, bit for bit."""
    monkeypatch.setattr(event, "MIN_WEIGHT_BYTES", 2**21)  # the library's floor; the tiny model is under it
    model = tiny_model(model_class, neuron_type="nilif")
    inputs = model_inputs(model_class)
    with torch.no_grad():
        dense = model(**inputs, use_cache=True)
        with recording(WeightReads()) as reads:
            small = model.set_inference_backend("event")(**inputs, use_cache=True)
        assert reads["calls"] == 0
        assert torch.equal(small.logits, dense.logits)
        assert {layer.keys.dtype for layer in small.cache.layers} == {torch.float32}
        monkeypatch.setattr(event, "MIN_WEIGHT_BYTES", 0)
        with recording(WeightReads()) as reads:
            large = model(**inputs, use_cache=True)
    assert reads["calls"] > 0
    assert {layer.keys.dtype for layer in large.cache.layers} == {torch.int8}


def test_recording_firing_rates_midway_continues_a_cache_of_binary_keys():
    """The K/V format does not depend on whether the attention neuron records (which turns the native SFSA off):
    a cache filled without recording continues with recording on, with the logits of the unrecorded run."""
    model = tiny_model(spiking_lm.BiSpikCLMForCausalLM, neuron_type="lif").set_inference_backend("event")
    input_ids = model_inputs(spiking_lm.BiSpikCLMForCausalLM, length=6)["input_ids"]
    with torch.no_grad():
        plain = model(input_ids=input_ids[:, 5:], cache=model(input_ids=input_ids[:, :5], use_cache=True).cache)
        cache = model(input_ids=input_ids[:, :5], use_cache=True).cache
        model.record_firing_rates(True)
        recorded = model(input_ids=input_ids[:, 5:], cache=cache)
    assert torch.equal(recorded.logits, plain.logits)
