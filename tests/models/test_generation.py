"""Causal models: no look-ahead, and cached greedy decoding equal to full forwards."""

import pytest
import torch

from .conftest import CAUSAL_LM_CLASSES, INTEGER_NEURONS, tiny_model

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
