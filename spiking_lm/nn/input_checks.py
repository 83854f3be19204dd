"""Checks on what a model is given, each refusing with one line that names the cause.

This module imports only `torch` and `safetensors` so that it can travel with a saved model's code.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["check_prompt", "check_sequence", "readable_safetensors", "unreadable_weights"]


def readable_safetensors(path: Path) -> bool:
    """Whether ``path`` opens as a safetensors file (a truncated or empty one does not)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as stream:
            stream.keys()
        return True
    except (SafetensorError, OSError):
        return False


def check_sequence(length: int, past_length: int = 0, attention_mask=None, positions: int | None = None) -> None:
    """Refuse inputs a model cannot read, naming the cause: no tokens, more positions than its learned position
    table (``positions``; `None` for rotary models), an ``attention_mask`` of another length."""
    if length == 0:
        raise ValueError("the input holds no tokens (an empty prompt?): give at least one token")
    total = past_length + length
    if positions is not None and total > positions:
        cached = f" ({past_length} cached + {length} new)" if past_length else ""
        raise ValueError(f"{total} positions{cached} exceed max_position_embeddings={positions}: shorten the "
                         "input (when generating, the prompt plus max_new_tokens must fit)")  # fmt: skip
    if attention_mask is not None and attention_mask.shape[-1] != total:
        raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions but the input has {total}"
                         + (f" ({past_length} cached + {length} new)" if past_length else ""))  # fmt: skip


def check_prompt(model, prompt, generation_config, kwargs: dict) -> None:
    """Before `generate` starts: a prompt of at least one token, an ``attention_mask`` of its length, and room
    for ``max_new_tokens`` in a learned position table."""
    if not (isinstance(prompt, torch.Tensor) and prompt.dim() == 2 and not prompt.is_floating_point()):
        return
    check_sequence(prompt.shape[1], 0, kwargs.get("attention_mask"))
    new_tokens = kwargs.get("max_new_tokens")
    if new_tokens is None and generation_config is not None:
        new_tokens = generation_config.max_new_tokens
    learned = any(name.endswith("embed_positions") for name, _ in model.named_modules())
    positions = model.config.max_position_embeddings
    if learned and new_tokens is not None and prompt.shape[1] + new_tokens > positions:
        raise ValueError(f"a prompt of {prompt.shape[1]} tokens plus max_new_tokens={new_tokens} exceeds "
                         f"max_position_embeddings={positions}: shorten one of them")  # fmt: skip


def unreadable_weights(name_or_path, error) -> ValueError:
    """The error for a safetensors file that does not open, naming the file (the library's own message names none)."""
    folder = Path(str(name_or_path))
    bad = [path.name for path in sorted(folder.glob("*.safetensors")) if not readable_safetensors(path)]
    where = folder / bad[0] if bad else folder
    return ValueError(f"cannot read the weights in {where} ({' '.join(str(error).split())}): the file is "
                      "truncated or damaged; save or download the model again")  # fmt: skip
