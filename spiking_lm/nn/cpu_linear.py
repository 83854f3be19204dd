"""`few_rows_linear`: a CPU Linear for few input rows that reads the weight with every core.

On a CPU, `F.linear` with few rows is memory bound and reads the matrix with one core. Cutting the weight's rows
into one block per thread and multiplying the blocks as a batch (`torch.bmm` on a view, no copy) reads it with
every core: the same sums in another order. The causal LMs' heads use it (`FewRowsLinear`), and so does the
event backend's fp32 side.

This module imports only `torch` so that it can travel with a saved model's code.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FEW_ROWS_MAX", "MIN_WEIGHT_BYTES", "FewRowsLinear", "few_rows_linear"]

FEW_ROWS_MAX = 16  # `few_rows_linear` splits the weight up to this many rows
MIN_WEIGHT_BYTES = 2**21
"""Matrices under 2 MiB stay in the CPU's cache: reading them differently saves nothing (the event backend leaves
them to the dense code too)."""


def few_rows_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for inference on a CPU, read with every core when ``x`` has at most
    `FEW_ROWS_MAX` rows and ``weight`` is large (module docstring). The same sums as `F.linear` in another order
    (≤ ~1e-6 relative); other cases go to `F.linear` itself."""
    rows = x.numel() // max(x.shape[-1], 1)
    pieces = torch.get_num_threads()
    out_features, in_features = weight.shape
    if (
        pieces < 2
        or torch.compiler.is_compiling()  # traced: one graph for every row count, no branch on it
        or rows > FEW_ROWS_MAX
        or x.device.type != "cpu"
        or weight.dtype != x.dtype
        or weight.numel() * weight.element_size() < MIN_WEIGHT_BYTES
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
