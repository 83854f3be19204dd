"""Event-driven inference for Linear layers fed by spikes: work follows spikes.

A Linear fed spikes computes y = W s + b where most entries of s are zero. The event path reads only the weight
columns (rows of Wᵀ) whose input spiked and adds them, scaled by the spike value (an integer count times the
neuron's unit), with `torch.nn.functional.embedding_bag(..., per_sample_weights=...)`: one bag per input row,
one gathered row of Wᵀ per spike. Bytes read per token scale with the firing rate instead of the layer size.

Rule, per call, from the spikes present: gather while the spikes select at most
``max(d(rows) · rows, EVENT_MAX_ROWS_READ) · in_features`` weight rows, with the per-row density limit
d(rows) = max(`EVENT_MAX_DENSITY`, `EVENT_FEW_ROWS_DENSITY` − `EVENT_DENSITY_PER_ROW` · rows); else a dense
product: exact int8 products on integer spike counts (`int8_linear`: the fp32 weight held as three int8 pieces,
summed exactly in int32), or the fp32 GEMM for single rows, ternary spikes and real values. Matrices under
`MIN_WEIGHT_BYTES` always take the dense code. docs/event-backend.md gives the measurements behind each constant.

Exactness: the gather computes in fp32 with the fp32 weights; the int8 products are exact integer sums with
weights held to 6e-8 of their row's largest entry (fp32's own rounding of that entry); both differ from the dense
GEMM by summation order and that last bit (≤ ~1e-6 relative). Adaptive-shift neurons emit ``count · unit + offset``:
the event path works on counts and adds the constant ``offset · W·1``.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .cpu_linear import MIN_WEIGHT_BYTES, few_rows_linear
from .recording import active_recorders
from .spike_coding import binary_to_integer, coding_of

__all__ = ["event_linears", "gather_limit", "gather_rows", "int8_linear", "int8_pieces", "integer_counts",
           "worth_gathering"]  # fmt: skip

EVENT_MAX_DENSITY = 0.2
EVENT_FEW_ROWS_DENSITY = 0.55
EVENT_DENSITY_PER_ROW = 0.012
EVENT_MAX_ROWS_READ = 0.7
EVENT_LOCATE_MAX_ROWS = 32  # up to this many rows the spikes are located at once (a gather is likely)
EVENT_MIN_BAG = 64  # a single row's gather is cut among threads only with this many spikes per piece


def _transposed(weight, bias):
    """``([W₁; W₂; …]ᵀ, [b₁; b₂; …])``: the weights ``(in, Σ out)`` contiguous, so each input's row is one read."""
    return weight.t().contiguous(), bias


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


def integer_counts(values: torch.Tensor, unit: float) -> torch.Tensor:
    """Spike values u·k (``unit`` u from `SpikeCoding.unit`) as their int8 counts k."""
    return (values if unit == 1 else torch.round(values / unit)).to(torch.int8)


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


def gather_limit(rows: int, in_features: int) -> float:
    """The most weight rows a gather may read for ``rows`` input rows before the GEMM is faster (module rule)."""
    density = max(EVENT_MAX_DENSITY, EVENT_FEW_ROWS_DENSITY - EVENT_DENSITY_PER_ROW * rows)
    return max(density * rows, EVENT_MAX_ROWS_READ) * in_features


def event_linears(linears, spikes: torch.Tensor, neuron, execution) -> list[torch.Tensor]:
    """The Linears (fed the same spikes: Q, K and V, or one) applied to the output of ``neuron`` (any spike mode),
    as `spiking_lm.nn.spike_linear.linear_on_spikes` defines it, computed from the spikes that are present: the
    spikes are located once and every spike reads one row of the concatenated [W₁; W₂; …]ᵀ (one contiguous read
    instead of several). ``execution`` (`SpikeExecution`) keeps the weight copies. Returns ``(T, ..., out)`` each."""
    coding = coding_of(neuron)
    offset = coding.offset if coding.has_offset else 0.0
    if coding.in_binary_mode:
        values = binary_to_integer(spikes, coding.max) * coding.scale  # fold the virtual steps
    else:
        values = spikes - offset if coding.has_offset else spikes  # gather by counts; the constant goes in below
    in_features = linears[0].in_features
    flat = values.reshape(-1, in_features)
    out_features = sum(lin.out_features for lin in linears)
    row_bytes = out_features * linears[0].weight.element_size()
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
    unit = coding.unit
    if selected <= gather_limit(flat.shape[0], in_features):
        weight_t, bias = execution.derived(linears, "transposed", _transposed)
        output = gather_rows(flat, weight_t, nonzero)
        kind, nbytes = "gathered", selected * row_bytes
    elif unit is not None and flat.shape[0] > 1 and large and flat.device.type == "cpu":  # exact int8 products
        pieces, scale, bias = execution.derived(linears, "int8", _int8_weights)
        output = int8_linear(integer_counts(flat, unit), pieces, scale if unit == 1 else scale * unit)
        kind, nbytes = "int8", pieces.numel()
    else:
        outputs = [few_rows_linear(flat, lin.weight) for lin in linears]
        output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
        bias = execution.derived(linears, "bias", lambda _, bias: bias)
        kind, nbytes = "dense", in_features * row_bytes
    for recorder in active_recorders():
        recorder.weight_read(kind, len(linears), nbytes)
    if bias is not None:
        output += bias
    if torch.is_tensor(offset) or offset != 0:  # the silent inputs' constant: offset · W·1
        output += execution.derived(linears, "row_sums", lambda weight, _: weight.sum(1)) * offset
    output = output.view(*values.shape[:-1], out_features)
    if len(linears) == 1:
        return [output]
    return list(output.split([lin.out_features for lin in linears], dim=-1))


def worth_gathering(linears) -> bool:
    """Whether Linears sharing an input hold enough weight bytes for the event path to pay: under
    `MIN_WEIGHT_BYTES` together they always take the GEMM (module rule), which the dense path runs without
    the event path's bookkeeping. Attention uses the same test for its compact K/V caches."""
    return sum(_fp32_bytes(lin) for lin in linears) >= MIN_WEIGHT_BYTES


def _fp32_bytes(linear) -> int:
    """The bytes of ``linear``'s weight, counted as fp32 for a W8 Linear (the rule is about the model's size)."""
    if getattr(linear, "int8_weights", False):
        return linear.in_features * linear.out_features * 4
    return linear.weight.numel() * linear.weight.element_size()
