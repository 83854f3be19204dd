"""Binary spikes packed 64 to an int64 word, and Q Kᵀ by AND and popcount on the words.

The event backend caches the keys of binary neurons this way (8 bytes per position and head of 64, where int8
counts take 64 and fp32 256) and, while decoding, counts query/key overlaps as popcount(q AND k).
docs/event-backend.md gives the rule and its measurements.

This module imports only `torch` so that it can travel with a saved model's code.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["PACKED_MAX_QUERIES", "PACKED_MIN_HEADS", "and_popcount", "pack_bits", "packs_keys", "popcount",
           "unpack_bits"]  # fmt: skip

PACKED_MAX_QUERIES = 4
"""A head with at most this many query rows (decoding) multiplies Q Kᵀ by AND and popcount on the packed words
(`and_popcount`); more rows unpack them for a GEMM, which wins there."""
PACKED_MIN_HEADS = 192
"""Binary keys are packed only in caches of at least this many (time step, sequence, head) rows: AND/popcount
costs a fixed dozen passes, which smaller caches do not pay back."""


def packs_keys(heads: int) -> bool:
    """Whether a cache of binary keys with ``heads`` = T·B·H rows keeps them as bits ."""
    return heads >= PACKED_MIN_HEADS


_POPCOUNT_MASKS = (0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F)
_BIT_SHIFTS: dict = {}


def _shifts(device) -> torch.Tensor:
    if device not in _BIT_SHIFTS:
        _BIT_SHIFTS[device] = torch.arange(64, dtype=torch.int64, device=device)
    return _BIT_SHIFTS[device]


def pack_bits(spikes: torch.Tensor) -> torch.Tensor:
    """0/1 spikes ``(…, d)`` as int64 words ``(…, ⌈d/64⌉)``, bit i of word w = spike 64·w + i (zero-padded)."""
    width = spikes.shape[-1]
    words = -(-width // 64)
    bits = spikes.to(torch.int64)
    if words * 64 != width:
        bits = F.pad(bits, (0, words * 64 - width))
    # distinct powers of two: the sum is their OR (bit 63 wraps to the sign bit, as a word should hold it)
    return (bits.view(*spikes.shape[:-1], words, 64) << _shifts(spikes.device)).sum(-1)


def unpack_bits(words: torch.Tensor, width: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The spikes ``(…, width)`` that `pack_bits` packed, as 0/1 of ``dtype``."""
    bits = (words.unsqueeze(-1) >> _shifts(words.device)) & 1
    return bits.flatten(-2)[..., :width].to(dtype)


def popcount(words: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64 word (SWAR: bit pairs, nibbles, bytes, then the bytes summed by shifts; the masks
    keep the arithmetic shifts of negative words exact)."""
    pairs, nibbles, octets = _POPCOUNT_MASKS
    words = words - ((words >> 1) & pairs)
    words = (words & nibbles).add_((words >> 2) & nibbles)  # from here on every word is non-negative
    words = words.add_(words >> 4).bitwise_and_(octets)
    words = words.add_(words >> 8)
    words = words.add_(words >> 16)
    return words.add_(words >> 32).bitwise_and_(0x7F)


def and_popcount(query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Q Kᵀ of binary spikes given as `pack_bits` words, query ``(…, Lq, w)`` and keys ``(…, Lk, w)``: for each
    (query, key) pair the number of positions where both spiked, popcount(q AND k), as int64 ``(…, Lq, Lk)``.
    Exact; it reads 8 bytes per key and head where int8 counts take 64 (head size 64)."""
    counts = popcount(query.unsqueeze(-2) & keys.unsqueeze(-3))
    return counts.squeeze(-1) if counts.shape[-1] == 1 else counts.sum(-1)
