"""Causal models: no look-ahead, and cached greedy decoding equal to full forwards."""

import pytest
import torch
from transformers import DynamicCache

from spiking_lm.nn import event
from spiking_lm.nn.self_attention import _append

from .conftest import CAUSAL_LM_CLASSES, INTEGER_NEURONS, model_inputs, tiny_model

IDS = [cls.__name__ for cls in CAUSAL_LM_CLASSES]
ATTENTION_TYPES = ["cwssa", "sfsa", "ssa"]


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=IDS)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_future_tokens_never_change_earlier_logits(model_class, attention_type):
    model = tiny_model(model_class, attention_type=attention_type)
    input_ids = torch.randint(3, 99, (2, 10), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = model(input_ids).logits
        for cut in (1, 4, 9):
            perturbed = input_ids.clone()
            perturbed[:, cut:] = torch.randint(3, 99, perturbed[:, cut:].shape)
            assert torch.equal(model(perturbed).logits[:, :cut], reference[:, :cut])


def greedy_by_full_forward(model, input_ids, new_tokens):
    sequence = input_ids
    for _ in range(new_tokens):
        with torch.no_grad():
            next_token = model(sequence, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat([sequence, next_token], dim=1)
    return sequence


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=IDS)
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_cached_greedy_generation_equals_full_forward(model_class, attention_type):
    model = tiny_model(model_class, attention_type=attention_type)
    prompt = torch.randint(3, 99, (2, 6), generator=torch.Generator().manual_seed(4))
    options = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    cached = model.generate(prompt, **options)
    uncached = model.generate(prompt, use_cache=False, **options)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, greedy_by_full_forward(model, prompt, 8))


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=IDS)
def test_incremental_logits_with_cache_equal_full_forward(model_class):
    model = tiny_model(model_class)
    input_ids = torch.randint(3, 99, (1, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(input_ids, use_cache=False).logits
        out = model(input_ids[:, :5], use_cache=True)
        cache = out.cache
        steps = [out.logits]
        for position in range(5, 9):
            out = model(input_ids[:, position : position + 1], cache=cache, use_cache=True)
            steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=IDS)
def test_cache_holds_spikes(model_class):
    model = tiny_model(model_class)  # lif (BiSpikCLM) or nilif (WD): spike values only
    with torch.no_grad():
        cache = model(torch.randint(3, 99, (1, 5)), use_cache=True).cache
    keys = cache.layers[0].keys
    allowed = {0.0, 1.0} if model.config.neuron_type == "lif" else {0.0, 0.25, 0.5, 0.75, 1.0}
    assert set(keys.unique().tolist()) <= allowed


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=IDS)
def test_left_padded_batch_generates_like_each_prompt_alone(model_class):
    model = tiny_model(model_class)
    short = torch.randint(3, 99, (1, 4), generator=torch.Generator().manual_seed(6))
    long = torch.randint(3, 99, (1, 7), generator=torch.Generator().manual_seed(7))
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1), long])
    mask = (torch.arange(7) >= torch.tensor([[3], [0]])).long()
    options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    together = model.generate(batch, attention_mask=mask, **options)
    assert torch.equal(together, model.generate(batch, attention_mask=mask, use_cache=False, **options))
    assert torch.equal(together[0, 3:], model.generate(short, **options)[0])
    assert torch.equal(together[1], model.generate(long, **options)[0])


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=IDS)
@pytest.mark.parametrize("neuron_type", INTEGER_NEURONS[:2])
def test_binary_spike_mode_generates_the_same_text(model_class, neuron_type):
    model = tiny_model(model_class, neuron_type=neuron_type)
    prompt = torch.randint(3, 99, (2, 5), generator=torch.Generator().manual_seed(8))
    options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    integer = model.generate(prompt, **options)
    assert torch.equal(model.set_spike_mode("binary").generate(prompt, **options), integer)


def test_the_cache_grows_in_place_and_stays_what_concatenation_makes():
    """Appending a decoded token writes into spare room at the end of each layer's K/V (one copy of the cache per
    growth, not per token); beams reordered or a cropped cache continue correctly."""
    cache, reference = DynamicCache(), []
    generator = torch.Generator().manual_seed(0)
    pointers = set()
    for step in range(40):
        keys, values = (torch.randint(-9, 9, (3, 2, 1 if step else 5, 4), dtype=torch.int8, generator=generator)
                        for _ in range(2))  # fmt: skip
        reference.append((keys, values))
        stored_keys, stored_values = _append(cache, 0, keys, values)
        pointers.add(stored_keys.data_ptr())
        assert torch.equal(stored_keys, torch.cat([k for k, _ in reference], dim=-2))
        assert torch.equal(stored_values, torch.cat([v for _, v in reference], dim=-2))
        assert cache.get_seq_length(0) == stored_keys.shape[-2]
        if step == 20:  # beam search reorders the batch: new tensors, new buffers
            order = torch.tensor([2, 0, 1])
            cache.reorder_cache(order)
            reference = [(k[order], v[order]) for k, v in reference]
        if step == 30:  # assisted decoding crops: the next token overwrites what was cut
            cache.crop(-3)
            reference = reference[:-3]
    assert len(pointers) <= 4  # grown a few times (44 positions in all), not at every token


@pytest.mark.parametrize("model_class", CAUSAL_LM_CLASSES, ids=IDS)
def test_beam_search_with_the_event_cache_equals_the_dense_one(model_class, monkeypatch):
    monkeypatch.setattr(event, "MIN_WEIGHT_BYTES", 0)  # the tiny model's K/V take the event backend's int8 format
    model = tiny_model(model_class, neuron_type="nilif")
    prompt = model_inputs(model_class, batch=2, length=5)["input_ids"]
    options = {"max_new_tokens": 6, "num_beams": 3, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        dense = model.generate(prompt, **options)
        fast = model.set_inference_backend("event").generate(prompt, **options)
    assert torch.equal(dense, fast)
