"""Event-driven inference for Linear layers fed by spikes: work follows spikes.

A Linear fed spikes computes y = W s + b where most entries of s are zero. The event path reads only the weight
columns (rows of Wᵀ) whose input spiked and adds them, scaled by the spike value (an integer count times the
neuron's unit, or a binary 1), with `torch.nn.functional.embedding_bag(..., per_sample_weights=...)`: one
"bag" per input row, one gathered row of Wᵀ per spike. Bytes read per token scale with the firing rate
instead of with the layer size.

Rule (per call, from the spikes actually present): gather while the spikes select at most
``max(d(rows) · rows, EVENT_MAX_ROWS_READ) · in_features`` weight rows, else run a dense product, with the
per-row density limit d(rows) = max(`EVENT_MAX_DENSITY`, `EVENT_FEW_ROWS_DENSITY` − `EVENT_DENSITY_PER_ROW` · rows):
0.45 at 8 rows, 0.35 at 16, down to 0.2 from ~30 rows on. Measured on 2 CPU cores (768→3072, 3072→768 and
768→768 layers): with few rows the GEMM is memory bound and slow (8 rows: 0.7-1.0 ms for 768→3072, the same as
reading the matrix) while the gather costs 0.3-0.5 ms up to ~50 % density; from ~30 rows on the GEMM computes
efficiently and the gather only wins below ~20 % (512 rows at 20 %: 13.5 vs 19.5 ms). The second term covers
decoding one or two rows, where gathering up to 70 % of the matrix's rows still reads less (at 40 %: 86 vs
186 µs). Matrices under `EVENT_MIN_WEIGHT_BYTES` (2 MiB) always take the GEMM: they stay in cache, so reading
less of them saves nothing and the gather's bookkeeping costs more (a 256→1024 model decoded 15 % slower
gathering). The layers call the event path only for weights over that floor (`worth_gathering`); smaller ones,
and the K/V caches of attention layers whose projections are under it, run the dense code.

Linears fed the same spikes (Q, K and V) gather together (`event_linears`): the spikes are located once and each
reads one row of the concatenated [W_q; W_k; W_v]ᵀ, one contiguous read instead of three. A single input row is
gathered as one bag per thread (`embedding_bag` parallelizes over bags): 8.8 → 13 GB/s of scattered rows from
memory on 2 cores.

The dense side multiplies integer spikes in int8 (`int8_linear`): spike values are integer counts k times the
neuron's unit (0/1 for binary neurons, k ≤ 127 for the integer family, virtual steps folded first), exact in
int8, and the fp32 weight is held as three int8 pieces W = s ⊙ (A₀ + A₁/254 + A₂/254²) with a per-row scale s
(`int8_pieces`, kept beside the transposed copy). ``torch._int_mm`` sums k·A exactly in int32 (~830 GOP/s on
2 cores, ~4× fp32's rate, so three pieces still cost less than one fp32 GEMM) and the three sums combine in
fp32. Measured against the fp32 GEMM on 125M-sized matrices: 1.2-2.5× faster from 2 to 1024 rows, slower for a
single row (which then stays fp32); a 125M BiSpikCLM's prefill (8×128 tokens) 1726 → 1593 ms. Matrices under
the size floor, single rows, ternary spikes (learned per-step scales are no integer counts) and real-valued
inputs (SFSA's context) use the fp32 GEMM. With few rows (the LM head while decoding, the fp32 side of the rule)
that is `few_rows_linear`, which reads the weight with every core where `F.linear` uses one. No bf16 product is
used: torch on a CPU has no bf16 GEMM with an fp32 output, and rounding every product to bf16 (~2e-3 relative)
would break the exactness bound.

Exactness: the gather computes in fp32 with the fp32 weights; the int8 products are exact integer sums with
weights held to 6e-8 of their row's largest entry (fp32's own rounding of that entry); both differ from the dense
GEMM by summation order and that last bit (≤ ~1e-6 relative). Adaptive-shift neurons (``asn``/``nasn``) emit
``count · unit + offset``: the event path works on counts and adds the constant ``offset · W·1``, so silent
inputs cost nothing there either.

Attention (spike × spike) on the event backend, decided per layer call by the neurons and the query rows:

- K cached as bits: when both the K and the Q neuron emit 0/1 spikes (``lif``, parallel spiking neurons) and the
  cache is large enough (below), K is stored 64 positions of a head to an int64 word (`pack_bits`: 8 bytes per
  token and head at head size 64, where int8 counts take 64 and fp32 256). With at most `PACKED_MAX_QUERIES`
  query rows per head (decoding) Q Kᵀ is popcount(q AND k) on the words (`and_popcount`), exact; with more rows
  (a prompt fed after earlier tokens) the words are unpacked for a GEMM, which wins there (8 sequences × 128
  queries × 128 keys at T = 4: 9 ms vs 175 ms for AND/popcount). One decoding step's Q Kᵀ against widening int8
  counts for the fp32 GEMM: 350 vs 700 µs at 8 sequences and T = 4 of a 125M layer (384 heads, 192 keys).
  AND/popcount costs a fixed dozen passes, so small caches lose: 96 heads 159 vs 113 µs at 160 keys and 313 vs
  163 at 320; 128 heads 190 vs 114, even at 320; 192 heads 269 vs 191 at 160 keys but 459 vs 805 at 320 (the
  fp32 copy of the cache then leaves the CPU cache). The format is chosen once per cache, when its length is
  still unknown, so keys are packed from `PACKED_MIN_HEADS` = 192 (T·B·H) on: T = 4 with 4 sequences of 12
  heads, or 16 sequences at T = 1; smaller caches keep int8 counts.
- Other K and all V whose neurons emit integer multiples of a unit (integer family without an offset) are cached
  as int8 counts and widened once per call for the fp32 GEMMs; the units scale the small operands (the query
  and the context, not the cache). Integer products are exact in fp32, so the results equal the dense path's.
- A V stays a GEMM on counts: gathering the V rows that attention spikes select (index_select + index_add_)
  cost more than widening + GEMM at every nonzero density measured (8 sequences, T = 1, 1 % of the keys:
  274 vs 151 µs; 20 %: 797 vs 147 µs).
- Products with the cache run in its batch-major layout (`spiking_lm.nn.attention.spike_matmul`): 10× faster
  at T = 4 than letting ``torch.matmul`` copy the cache into time-major order first.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .spike_coding import binary_to_integer

EVENT_MAX_DENSITY = 0.2
EVENT_FEW_ROWS_DENSITY = 0.55
EVENT_DENSITY_PER_ROW = 0.012
EVENT_MAX_ROWS_READ = 0.7
EVENT_LOCATE_MAX_ROWS = 32  # up to this many rows the spikes are located at once (a gather is likely)
EVENT_MIN_WEIGHT_BYTES = 2**21
EVENT_MIN_BAG = 64  # a single row's gather is cut among threads only with this many spikes per piece
FEW_ROWS_MAX = 16  # `few_rows_linear` splits the weight up to this many rows (measured better through 16)
INFERENCE_BACKENDS = ("dense", "event")
WEIGHT_READS = {"gathered_bytes": 0, "dense_bytes": 0, "calls": 0, "gathered_calls": 0, "int8_calls": 0}
"""Running totals of weight bytes the event path read (gathered rows vs whole matrices) and of calls per kind,
for benchmarks and tests; reset them with `reset_weight_reads`."""


def reset_weight_reads() -> None:
    for key in WEIGHT_READS:
        WEIGHT_READS[key] = 0


def _derived(linears, kind: str, build):
    """``build(weight, bias)`` of the Linears' concatenated ``[W₁; W₂; …]`` and ``[b₁; b₂; …]`` (`None` if none has
    a bias; zeros stand in for a missing one), cached per ``kind`` as a plain attribute of the first Linear: never
    saved, freed by `clear_event_cache`, rebuilt whenever a weight or bias changes (in place or replaced)."""
    tensors = [lin.weight for lin in linears] + [lin.bias for lin in linears]
    versions = [None if tensor is None else tensor._version for tensor in tensors]
    caches = linears[0].__dict__.setdefault("_event_cache", {})
    cached = caches.get(kind)
    # The cache holds the tensors it was built from: identity plus version catches replacement and in-place
    # updates without hashing pointers on every call.
    if cached is None or cached[1] != versions or any(a is not b for a, b in zip(cached[0], tensors, strict=True)):
        weight = torch.cat([lin.weight.detach() for lin in linears])
        bias = None
        if any(lin.bias is not None for lin in linears):
            bias = torch.cat([lin.weight.new_zeros(lin.out_features) if lin.bias is None else lin.bias.detach()
                              for lin in linears])  # fmt: skip
        cached = (tensors, versions, build(weight, bias))
        caches[kind] = cached
    return cached[2]


def _transposed_weight(*linears: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``([W₁; W₂; …]ᵀ, [b₁; b₂; …])`` of Linears sharing an input: the weights ``(in, Σ out)`` contiguous so that
    each input's row is one read (`_derived` keeps them)."""
    return _derived(linears, "transposed", lambda weight, bias: (weight.t().contiguous(), bias))


INT8_BASE = 254
"""Each int8 piece of a weight refines the rounding residual ([-1/2, 1/2]) of the one before by this factor, so
that every piece stays in [-127, 127]."""


def int8_pieces(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fp32 weight ``(out, in)`` as three int8 pieces and a per-row scale: ``(P, s)`` with P ``(in, 3·out)`` =
    [A₀ | A₁ | A₂]ᵀ and W = s ⊙ (A₀ + A₁/254 + A₂/254²) up to s/2/254² = max|W_row| · 6.1e-8 per entry, the size
    of fp32's own rounding of the row's largest weight (2⁻²⁴ = 6.0e-8)."""
    rows = weight.detach().double()
    scale = (rows.abs().amax(1) / 127).float().double()  # the fp32 scale, so that the pieces are exact for it
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    residual = rows / scale[:, None]
    pieces = []
    for _ in range(3):
        piece = residual.round()
        pieces.append(piece)
        residual = (residual - piece) * INT8_BASE
    return torch.cat(pieces).t().contiguous().to(torch.int8), scale.float()


def int8_linear(counts: torch.Tensor, pieces: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``counts @ Wᵀ`` for int8 ``counts`` ``(R, in)`` and W given by `int8_pieces`: three exact int8 products
    accumulated in int32 (``torch._int_mm``), combined in fp32."""
    products = torch._int_mm(counts, pieces)  # (R, 3·out) int32, exact
    out_features = pieces.shape[1] // 3
    first, second, third = products.split(out_features, dim=1)
    output = first.float()
    output.add_(second.float(), alpha=1 / INT8_BASE).add_(third.float(), alpha=1 / INT8_BASE**2)
    return output.mul_(scale)


def integer_unit(neuron) -> float | None:
    """u such that the neuron's spike values, less their constant offset, are u·k with integer counts
    0 ≤ k ≤ 127 (int8), else `None` (ternary spikes with learned scales, counts over 127)."""
    if neuron is None:
        return None
    unit = getattr(neuron, "spike_scale", None)
    if unit is not None:
        return float(unit) if neuron.spike_max <= 127 else None
    return 1.0 if getattr(neuron, "binary_output", False) else None


def integer_counts(values: torch.Tensor, unit: float) -> torch.Tensor:
    """Spike values u·k (``unit`` u from `integer_unit`) as their int8 counts k."""
    return (values if unit == 1 else torch.round(values / unit)).to(torch.int8)


PACKED_MAX_QUERIES = 4
"""Binary spike keys are cached packed 64 to an int64 word (`pack_bits`); a head with at most this many query
rows (decoding) multiplies Q Kᵀ by AND and popcount on the words (`and_popcount`), more rows unpack them for a
GEMM (module rule)."""
PACKED_MIN_HEADS = 192
"""Binary keys are packed only in caches of at least this many (time step, sequence, head) rows (module rule)."""


def packs_keys(heads: int) -> bool:
    """Whether a cache of binary keys with ``heads`` = T·B·H rows keeps them as bits (module rule)."""
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


def clear_event_cache(linear: nn.Linear) -> None:
    """Free the weight copies the event path keeps (they are never saved)."""
    linear.__dict__.pop("_event_cache", None)


def gather_rows(values: torch.Tensor, weight_t: torch.Tensor, nonzero=None) -> torch.Tensor:
    """``values @ weight_t`` for a sparse ``values`` ``(R, in)``, reading only the rows of ``weight_t``
    ``(in, out)`` that a nonzero selects (``nonzero``: ``values.nonzero(as_tuple=True)`` if already known; for
    one row, the nonzero columns alone will do).

    `embedding_bag` shares its bags (one per input row) among threads; a single row is cut into one bag per
    thread, summed after, so that decoding one sequence reads the weights with every core."""
    if values.shape[0] > 1:
        rows, columns = values.nonzero(as_tuple=True) if nonzero is None else nonzero
        per_row = torch.bincount(rows, minlength=values.shape[0])
        offsets = torch.cumsum(per_row, 0) - per_row
        return F.embedding_bag(columns, weight_t, offsets, mode="sum", per_sample_weights=values[rows, columns])
    if nonzero is None:
        columns = values.view(-1).nonzero().view(-1)
    else:
        columns = nonzero if torch.is_tensor(nonzero) else nonzero[-1]
    weights = values.view(-1).index_select(0, columns)
    pieces = min(torch.get_num_threads(), columns.numel() // EVENT_MIN_BAG)
    if pieces < 2 or weight_t.device.type != "cpu":
        offsets = torch.zeros(1, dtype=torch.long, device=values.device)
        return F.embedding_bag(columns, weight_t, offsets, mode="sum", per_sample_weights=weights)
    offsets = torch.arange(0, pieces * (columns.numel() // pieces), columns.numel() // pieces, device=values.device)
    return F.embedding_bag(columns, weight_t, offsets, mode="sum", per_sample_weights=weights).sum(0, keepdim=True)


def _int8_weights(weight, bias):
    """What the int8 product needs of concatenated weights: pieces, scales and the bias."""
    return (*int8_pieces(weight), bias)


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for inference on a CPU, faster when ``x`` has few rows and ``weight`` is
    large: the product is then memory bound, and `F.linear` reads the matrix with one core (measured on 2 cores:
    a 50272×768 LM head 16 ms for one row, 28 ms for eight). Cutting the weight's rows into one block per thread
    and multiplying the blocks as a batch (`torch.bmm`, no copy) reads it with every core (5 ms and 18.6 ms).
    The same sums as `F.linear` in another order (≤ ~1e-6 relative); other cases go to `F.linear` itself."""
    rows = x.numel() // max(x.shape[-1], 1)
    pieces = torch.get_num_threads()
    out_features, in_features = weight.shape
    if (
        pieces < 2
        or rows > FEW_ROWS_MAX
        or x.device.type != "cpu"
        or weight.dtype != x.dtype
        or weight.numel() * weight.element_size() < EVENT_MIN_WEIGHT_BYTES
        or (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
    ):
        return F.linear(x, weight, bias)
    block = out_features // pieces
    main = block * pieces
    flat = x.reshape(rows, in_features)
    blocks = torch.bmm(weight[:main].view(pieces, block, in_features), flat.t().expand(pieces, in_features, rows))
    output = blocks.permute(2, 0, 1).reshape(rows, main)
    if main < out_features:
        output = torch.cat([output, F.linear(flat, weight[main:])], dim=-1)
    if bias is not None:
        output = output + bias
    return output.view(*x.shape[:-1], out_features)


class FewRowsLinear(nn.Linear):
    """`nn.Linear` (same parameters and state-dict keys) computed by `few_rows_linear`: the LM head of the causal
    models, read with every core when decoding."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return few_rows_linear(x, self.weight, self.bias)


def gather_limit(rows: int, in_features: int) -> float:
    """The most weight rows a gather may read for ``rows`` input rows before the GEMM is faster (module rule)."""
    density = max(EVENT_MAX_DENSITY, EVENT_FEW_ROWS_DENSITY - EVENT_DENSITY_PER_ROW * rows)
    return max(density * rows, EVENT_MAX_ROWS_READ) * in_features


def event_linear(linear: nn.Linear, spikes: torch.Tensor, neuron) -> torch.Tensor:
    """``linear`` applied to the output of ``neuron`` (any spike mode), as `linear_on_spikes` defines it,
    computed from the spikes that are present. Returns ``(T, ..., out)``."""
    return event_linears((linear,), spikes, neuron)[0]


def event_linears(linears, spikes: torch.Tensor, neuron) -> list[torch.Tensor]:
    """`event_linear` for several Linears fed the same spikes (Q, K and V): the spikes are located once and
    every spike reads one row of the concatenated [W₁; W₂; …]ᵀ (one longer contiguous read instead of several)."""
    offset = 0.0
    if neuron is not None and getattr(neuron, "spike_mode", "integer") == "binary":
        values = binary_to_integer(spikes, neuron.spike_max) * neuron.spike_scale  # fold the virtual steps
        offset = neuron.spike_offset
    else:
        values = spikes
        silent = getattr(neuron, "spike_offset", 0.0) if neuron is not None else 0.0
        if torch.is_tensor(silent) or silent != 0:
            values, offset = spikes - silent, silent  # gather by counts; the constant goes in below
    in_features = linears[0].in_features
    flat = values.reshape(-1, in_features)
    out_features = sum(lin.out_features for lin in linears)
    row_bytes = out_features * linears[0].weight.element_size()
    WEIGHT_READS["calls"] += len(linears)
    nonzero = None
    large = worth_gathering(linears)
    if large:
        if flat.shape[0] == 1:  # decoding one sequence: the columns that spiked
            nonzero = flat.view(-1).nonzero().view(-1)
            selected = nonzero.numel()
        elif flat.shape[0] <= EVENT_LOCATE_MAX_ROWS:  # decoding: the positions are likely needed, find them once
            nonzero = flat.nonzero(as_tuple=True)
            selected = nonzero[0].numel()
        else:  # counting is cheaper than locating when the answer may be "use the GEMM"
            selected = torch.count_nonzero(flat).item()
    else:
        selected = flat.numel()
    unit = integer_unit(neuron)
    if selected <= gather_limit(flat.shape[0], in_features):
        weight_t, bias = _transposed_weight(*linears)
        output = gather_rows(flat, weight_t, nonzero)
        WEIGHT_READS["gathered_calls"] += len(linears)
        WEIGHT_READS["gathered_bytes"] += selected * row_bytes
    elif unit is not None and flat.shape[0] > 1 and large and flat.device.type == "cpu":  # exact int8 products
        pieces, scale, bias = _derived(linears, "int8", _int8_weights)
        output = int8_linear(integer_counts(flat, unit), pieces, scale if unit == 1 else scale * unit)
        WEIGHT_READS["dense_bytes"] += pieces.numel()
        WEIGHT_READS["int8_calls"] += len(linears)
    else:
        WEIGHT_READS["dense_bytes"] += in_features * row_bytes
        outputs = [few_rows_linear(flat, lin.weight) for lin in linears]
        output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        bias = _derived(linears, "bias", lambda _, bias: bias)
    if bias is not None:
        output += bias
    if torch.is_tensor(offset) or offset != 0:  # the silent inputs' constant: offset · W·1
        output += _derived(linears, "row_sums", lambda weight, _: weight.sum(1)) * offset
    output = output.view(*values.shape[:-1], out_features)
    if len(linears) == 1:
        return [output]
    return list(output.split([lin.out_features for lin in linears], dim=-1))


def worth_gathering(linears) -> bool:
    """Whether Linears sharing an input hold enough weight bytes for the event path to pay: under
    `EVENT_MIN_WEIGHT_BYTES` together they always take the GEMM (module rule), which the dense path runs without
    the event path's bookkeeping. Attention uses the same test for its compact K/V caches: on the 8M shape (all
    matrices under the floor) the event backend decoded one sequence 6-9 % slower than the dense one with them."""
    return sum(lin.weight.numel() * lin.weight.element_size() for lin in linears) >= EVENT_MIN_WEIGHT_BYTES


def uses_event_path(linear: nn.Linear) -> bool:
    """Whether this call of ``linear`` should take the event path: asked for, in eval mode, without autograd."""
    return (
        getattr(linear, "inference_backend", "dense") == "event"
        and not linear.training
        and not torch.is_grad_enabled()
    )
