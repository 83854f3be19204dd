"""Perplexity of a causal LM on a text corpus with a sliding window."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F
from tqdm.auto import tqdm


def corpus_token_ids(texts: list[str], tokenizer, separator: str = "\n\n") -> torch.Tensor:
    """The whole corpus as one token sequence (documents joined by ``separator``), shape ``(N,)``."""
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError("perplexity needs text, but the corpus is empty")
    ids = tokenizer(separator.join(texts), add_special_tokens=False, return_attention_mask=False)["input_ids"]
    if len(ids) < 2:
        raise ValueError(f"perplexity needs at least 2 tokens, the corpus has {len(ids)}")
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def sliding_window_perplexity(model, token_ids: torch.Tensor, window: int | None = None, stride: int | None = None,
                              progress: bool = True) -> dict:  # fmt: skip
    """Perplexity of ``model`` on ``token_ids`` ``(N,)``, each token scored once with up to ``window`` tokens of
    context (including itself).

    Windows start every ``stride`` tokens; in each, only the tokens the previous window did not score are
    scored, so with ``stride == window`` the windows are disjoint blocks and with a smaller stride every scored
    token after the first window sees at least ``window - stride`` tokens of context. The first token of the
    corpus is never scored (nothing predicts it), nor, when ``stride == window``, the first token of each block.

    Args:
        window: tokens per forward pass; defaults to ``model.config.max_position_embeddings``.
        stride: defaults to ``window // 2``; must be in ``[1, window]``.

    Returns:
        ``{"perplexity", "nll" (mean negative log-likelihood, nats/token), "tokens" (scored), "window",
        "stride", "first_window" (the input ids of the first pass, for the energy probe)}``.
    """
    if token_ids.dim() != 1 or token_ids.numel() < 2:
        raise ValueError(f"token_ids must be a 1-d tensor of at least 2 tokens, got shape {tuple(token_ids.shape)}")
    # `None` means the default; 0 is a value like any other (and refused below), never a silent default
    window = model.config.max_position_embeddings if window is None else window
    stride = max(1, window // 2) if stride is None else stride
    if window < 2:
        raise ValueError(f"window must be >= 2, got {window}")
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and window > limit:
        raise ValueError(f"window {window} exceeds the model's max_position_embeddings ({limit})")
    device = next(model.parameters()).device
    total, nll, scored, scored_until = token_ids.numel(), 0.0, 0, 1  # token 0 has no prediction
    starts = list(range(0, max(total - 1, 1), stride))
    first_window = None
    for begin in tqdm(starts, desc="perplexity", disable=not progress):
        end = min(begin + window, total)
        inputs = token_ids[begin:end].unsqueeze(0).to(device)
        first_window = inputs if first_window is None else first_window
        logits = model(input_ids=inputs).logits[0, :-1].float()
        targets = inputs[0, 1:]
        fresh = min(end - scored_until, targets.numel())  # tokens not scored yet that this window predicts
        if fresh > 0:
            nll += F.cross_entropy(logits[-fresh:], targets[-fresh:], reduction="sum").item()
            scored += fresh
            scored_until = end
        if end == total:
            break
    return {
        "perplexity": math.exp(nll / scored),
        "nll": nll / scored,
        "tokens": scored,
        "window": window,
        "stride": stride,
        "first_window": first_window,
    }
