"""Sliding-window perplexity against direct per-token references."""

import math

import pytest
import torch
from torch.nn import functional as F

import spiking_lm
from spiking_lm.evaluation.perplexity import corpus_token_ids, sliding_window_perplexity


@pytest.fixture(scope="module")
def model():
    config = spiking_lm.WDSpikingformerConfig(vocab_size=23, hidden_size=16, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=32,
                                              max_position_embeddings=16)  # fmt: skip
    torch.manual_seed(0)
    return spiking_lm.WDSpikingformerForCausalLM(config).eval()


def token_nll(model, context: torch.Tensor, target: int) -> float:
    with torch.no_grad():
        logits = model(input_ids=context.unsqueeze(0)).logits[0, -1]
    return F.cross_entropy(logits.unsqueeze(0), torch.tensor([target])).item()


def test_a_window_covering_the_text_equals_one_full_forward(model):
    ids = torch.randint(0, 23, (12,), generator=torch.Generator().manual_seed(1))
    result = sliding_window_perplexity(model, ids, window=16, stride=8, progress=False)
    with torch.no_grad():
        logits = model(input_ids=ids.unsqueeze(0)).logits[0, :-1]
    expected = F.cross_entropy(logits, ids[1:]).item()
    assert result["tokens"] == 11
    assert result["nll"] == pytest.approx(expected, rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-6)


def test_stride_one_scores_every_token_with_the_window_before_it(model):
    ids = torch.randint(0, 23, (20,), generator=torch.Generator().manual_seed(2))
    window = 6
    result = sliding_window_perplexity(model, ids, window=window, stride=1, progress=False)
    reference = [token_nll(model, ids[max(0, p - window + 1) : p], ids[p].item()) for p in range(1, 20)]
    assert result["tokens"] == 19
    assert result["nll"] == pytest.approx(sum(reference) / 19, rel=1e-5)


def test_disjoint_windows_score_each_block_on_its_own(model):
    ids = torch.randint(0, 23, (15,), generator=torch.Generator().manual_seed(3))
    result = sliding_window_perplexity(model, ids, window=5, stride=5, progress=False)
    reference = []
    for begin in range(0, 15, 5):
        reference += [token_nll(model, ids[begin:p], ids[p].item()) for p in range(begin + 1, begin + 5)]
    assert result["tokens"] == len(reference) == 12
    assert result["nll"] == pytest.approx(sum(reference) / 12, rel=1e-5)


def test_bad_settings_and_empty_text_are_rejected(model):
    ids = torch.arange(10) % 23
    with pytest.raises(ValueError, match="stride"):
        sliding_window_perplexity(model, ids, window=4, stride=5)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        sliding_window_perplexity(model, ids, window=32)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        sliding_window_perplexity(model, ids[:1], window=4)
    with pytest.raises(ValueError, match="empty"):
        corpus_token_ids(["", "  "], tokenizer=None)
    # 0 is a value, refused as such: it used to fall back to the defaults silently (and be recorded as them)
    with pytest.raises(ValueError, match="window must be >= 2, got 0"):
        sliding_window_perplexity(model, ids, window=0)
    with pytest.raises(ValueError, match=r"stride must be in \[1, window=4\], got 0"):
        sliding_window_perplexity(model, ids, window=4, stride=0)
