"""Spiking self-attention products: WSSA / CWSSA (winner-take-all), SFSA (softmax-free), SSA (baseline).

Q, K and V are spike values ``(T, B, H, L, d)``. A = Q Kᵀ are overlap counts. What differs is how A selects
values:

- ``wssa`` / ``cwssa``: M = WTA(A) over the keys allowed to each query (padding and, for ``cwssa``, future keys
  are removed before the competition); O = M V. ``hard`` keeps the arg-max (first index wins ties), ``topk``
  keeps the k largest, ``sparsemax`` gives sparse weights. Backward of ``hard``/``topk`` is straight-through
  softmax(A/τ).
- ``sfsa``: A_s = SN_attn(A ⊙ mask) binary, O = A_s V (integer counts), scaled by c. No softmax, no exp.
- ``ssa``: O = (Q Kᵀ ⊙ mask) V · 0.125, re-spiked by the caller.

Training SFSA in bf16 on 0/1 Q, K, V, `SpikingAttentionProducts` computes A_s V with a hand-written backward that
keeps Q, K, V and the overlap counts as uint8 (exact) and recomputes A_s in the backward neuron kernel.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import math
from functools import partial

import torch

from .bitpack import and_popcount, pack_bits
from .dispatch import as_graph_inputs, run_kernel
from .kernels import as_uint8, lif_backward_steps, lif_scan, masked_lif_forward, widened

__all__ = [
    "ATTENTION_TYPES",
    "SFSA_SCALES",
    "SpikingAttentionProducts",
    "WTA_MODES",
    "allowed_keys",
    "softmax_free_attention",
    "spike_matmul",
    "spike_scores",
    "sparsemax",
    "spikformer_attention",
    "uses_compact_products",
    "winner_take_all",
]

ATTENTION_TYPES = ("wssa", "cwssa", "sfsa", "ssa")
WTA_MODES = ("hard", "topk", "sparsemax")
SFSA_SCALES = ("sqrt_d", "causal_count")


def allowed_keys(
    attention_mask: torch.Tensor | None,
    query_length: int,
    key_length: int,
    causal: bool,
    device: torch.device,
    batch_size: int = 1,
) -> torch.Tensor:
    """Boolean ``(B, 1, Lq, Lk)``: may query i (the last ``query_length`` positions) look at key j?

    ``attention_mask`` is the usual ``(B, Lk)`` padding mask (1 = token, 0 = padding) covering the cached keys
    and the new ones.
    """
    allowed = torch.ones(query_length, key_length, dtype=torch.bool, device=device)
    if causal:
        past = key_length - query_length
        positions = torch.arange(query_length, device=device).unsqueeze(1) + past
        allowed = torch.arange(key_length, device=device).unsqueeze(0) <= positions
    allowed = allowed.view(1, 1, query_length, key_length)
    if attention_mask is not None:
        if attention_mask.shape[-1] != key_length:
            raise ValueError(
                f"attention_mask covers {attention_mask.shape[-1]} positions, but there are {key_length} keys"
            )
        allowed = allowed & attention_mask.bool().view(attention_mask.shape[0], 1, 1, key_length)
    return allowed.expand(max(batch_size, allowed.shape[0]), 1, query_length, key_length)


def sparsemax(scores: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean projection of ``scores`` onto the simplex (Martins & Astudillo, 2016); differentiable."""
    ordered, _ = torch.sort(scores, dim=dim, descending=True)
    cumulative = ordered.cumsum(dim) - 1
    ranks = torch.arange(1, scores.shape[dim] + 1, device=scores.device, dtype=scores.dtype)
    ranks = ranks.view([-1 if i == (dim % scores.dim()) else 1 for i in range(scores.dim())])
    support = (ranks * ordered > cumulative).sum(dim, keepdim=True)
    threshold = cumulative.gather(dim, support - 1) / support.to(scores.dtype)
    return torch.clamp(scores - threshold, min=0)


def winner_take_all(
    scores: torch.Tensor, allowed: torch.Tensor, mode: str = "hard", k: int = 1, temperature: float = 1.0
) -> torch.Tensor:
    """Selection weights over the last axis of ``scores`` among ``allowed`` keys.

    Rows without any allowed key get all-zero weights. For ``hard``/``topk`` the forward values are 0/1 and,
    when ``scores`` requires grad, the backward is that of softmax(scores/τ) over the allowed keys.
    """
    any_allowed = allowed.any(-1, keepdim=True)
    if mode == "sparsemax":
        floor = torch.finfo(scores.dtype).min / 4
        return sparsemax(scores.masked_fill(~allowed, floor) / temperature) * any_allowed
    masked = scores.masked_fill(~allowed, float("-inf"))
    if mode == "hard":
        winners = masked.argmax(-1, keepdim=True)  # first index wins ties
        hard = torch.zeros_like(scores).scatter_(-1, winners, 1.0)
    elif mode == "topk":
        order = torch.sort(masked, dim=-1, descending=True, stable=True).indices[..., :k]
        hard = torch.zeros_like(scores).scatter_(-1, order, 1.0) * allowed
    else:
        raise ValueError(f"wta mode must be one of {WTA_MODES}, got {mode!r}")
    hard = hard * any_allowed
    if not scores.requires_grad:
        return hard
    soft = torch.softmax(masked / temperature, dim=-1).nan_to_num(0.0)
    return hard + (soft - soft.detach())  # exactly `hard` forward: (hard + soft) - soft would round


def spike_matmul(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``a @ b``; while training with ``dtype=torch.bfloat16``, on bf16 operands with an fp32 result (spike
    operands are exact, the gradients flowing back are rounded). Inference always multiplies in fp32.

    Operands are time-major ``(T, B, …)``. A ``b`` stored batch-major (the K/V cache keeps ``(B, T·H, L, d)``)
    is multiplied in that order, ``(aᵀ bᵀ)ᵀ`` over the first two axes: its batch axes then merge into one
    strided batch, where ``torch.matmul`` would first copy the whole cache (~10x slower at T = 4)."""
    if not _trains_low(dtype, a, b):
        if a.dim() == b.dim() > 3 and b.shape[0] > 1 and b.stride(1) > b.stride(0):
            return torch.matmul(a.transpose(0, 1), b.transpose(0, 1)).transpose(0, 1)
        return torch.matmul(a, b)
    return torch.matmul(a.to(dtype), b.to(dtype)).float()


def spike_scores(query: torch.Tensor, key: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Q Kᵀ, the overlap counts ``(…, Lq, Lk)``. ``key`` may be binary spikes packed into int64 words (the event
    backend's K cache, `spiking_lm.nn.bitpack.pack_bits`); the caller then guarantees 0/1 queries, and the counts
    come from AND and popcount on the words."""
    if key.dtype == torch.int64:
        return and_popcount(pack_bits(query), key).to(query.dtype)
    return spike_matmul(query, key.transpose(-1, -2), dtype)


def softmax_free_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor,
    attn_neuron,
    score_scale: float,
    output_scale: str = "sqrt_d",
    matmul_dtype: torch.dtype = torch.float32,
    zero_one: bool = False,
    all_allowed: bool = False,
    products=None,
):
    """SFSA: ``(O·c, A_s)`` with A_s = SN_attn(score_scale · (Q Kᵀ ⊙ mask)) and O = A_s V.

    Shapes: Q ``(T, B, H, Lq, d)``, K/V ``(T, B, H, Lk, d)``, ``allowed`` ``(B, 1, Lq, Lk)``. ``output_scale``
    picks c: ``"sqrt_d"`` → 1/√d, ``"causal_count"`` → 1/(number of allowed keys of each query).
    ``matmul_dtype``: see `spike_matmul`. ``zero_one``: the caller's promise that Q, K and V are 0/1 spikes
    (training in bf16 then keeps them and the overlap counts as uint8, `uses_compact_products`). ``all_allowed``:
    the caller knows that ``allowed`` allows every pair (decoding without padding), so no mask is applied.
    ``products``: ``(scores_of, context_of)`` computing Q Kᵀ from ``(query, key)`` and A V from ``(spikes, value)``
    in place of the fp32 products (the native kernels on an int8 cache, `SpikingSelfAttention`).
    """
    if _trains_low(matmul_dtype, query, key, value) and hasattr(attn_neuron, "fire_masked"):
        return _low_precision_sfsa(
            query, key, value, allowed, attn_neuron, score_scale, output_scale, matmul_dtype, zero_one
        )
    scores_of, context_of = products or (partial(spike_scores, dtype=matmul_dtype),
                                         partial(spike_matmul, dtype=matmul_dtype))  # fmt: skip
    scores = scores_of(query, key)  # (T, B, H, Lq, Lk) overlaps
    if not all_allowed:
        scores = scores.masked_fill(~allowed, 0)
    attention_spikes = attn_neuron(scores * score_scale)  # binary; masked pairs get 0 input and never fire
    output = context_of(attention_spikes, value)
    if output_scale == "sqrt_d":
        output = output / math.sqrt(query.shape[-1])
    else:
        output = output / allowed.sum(-1, keepdim=True).clamp_min(1)
    return output, attention_spikes


def _trains_low(dtype: torch.dtype, *operands) -> bool:
    """Training products in a low-precision ``dtype``: gradients on and some operand needs one."""
    return dtype != torch.float32 and torch.is_grad_enabled() and any(x.requires_grad for x in operands)


def uses_compact_products(attn_neuron, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether SFSA training in ``dtype`` on 0/1 Q, K, V of heads of ``head_dim`` runs through the neuron's
    `fire_masked_products` (`SpikingAttentionProducts`: uint8 operands and counts kept, nothing recomputed):
    a low-precision dtype, overlap counts that fit a uint8, and nothing recorded from the attention neuron."""
    return (
        dtype != torch.float32
        and head_dim <= 255
        and hasattr(attn_neuron, "fire_masked_products")
        and not attn_neuron.record_firing_rate
    )


def _low_precision_sfsa(query, key, value, allowed, attn_neuron, score_scale, output_scale, dtype, zero_one=False):
    """`softmax_free_attention` while training in ``dtype`` (bf16), with the values of the fp32 path: the overlap
    counts stay bf16 into the attention neuron, which widens, masks, scales and fires in one kernel
    (`fire_masked`) and emits bf16 spikes for A·V; the context stays bf16 where the output scale is a power of
    two (1/√d for d = 4ⁿ), so that nothing is converted between the two products and the output projection.
    0/1 operands already in ``dtype`` go through `fire_masked_products`, which keeps them compact."""
    operands = (query, key, value)
    compact = zero_one and all(x.dtype == dtype for x in operands)
    if compact and uses_compact_products(attn_neuron, query.shape[-1], dtype):
        output, attention_spikes = attn_neuron.fire_masked_products(*operands, allowed, score_scale, dtype)
    else:
        scores = torch.matmul(query.to(dtype), key.transpose(-1, -2).to(dtype))
        attention_spikes = attn_neuron.fire_masked(scores, allowed, score_scale, dtype)
        output = torch.matmul(attention_spikes, value.to(dtype))
    if output_scale != "sqrt_d":
        return output.float() / allowed.sum(-1, keepdim=True).clamp_min(1), attention_spikes
    root = math.sqrt(query.shape[-1])
    return (output / root if math.frexp(root)[0] == 0.5 else output.float() / root), attention_spikes


# Training SFSA in bf16 on 0/1 Q, K, V: the products keep uint8 copies (`SpikingAttentionProducts`).


def masked_lif_forward_codes(scores, allowed, scale, beta, v_threshold, v_reset, dtype):
    """`masked_lif_forward` and, from the same pass, ``scores`` as uint8: exact for SFSA's overlap counts of 0/1
    spikes (integers in [0, d], d ≤ 255), what `SpikingAttentionProducts` keeps for backward."""
    return masked_lif_forward(scores, allowed, scale, beta, v_threshold, v_reset, dtype), scores.to(torch.uint8)


def masked_lif_backward_and_spikes(
    grad_spikes, codes, allowed, scale, beta, v_threshold, v_reset, detach_reset, surrogate, alpha, dtype
):
    """dL/dscores for `masked_lif_forward` from uint8 ``codes`` of the scores, in ``dtype``, and the spikes
    (``dtype``) recomputed in the same pass."""
    x = codes.to(scale.dtype) * allowed * scale
    spikes, _ = lif_scan(x, beta, v_threshold, v_reset)
    options = (beta, v_threshold, v_reset, detach_reset, surrogate, alpha)
    steps = lif_backward_steps(grad_spikes.to(x.dtype), x, *options)
    grads = torch.stack([(grad * scale * allowed).to(dtype) for grad in steps])
    return grads, torch.stack([spike.to(dtype) for spike in spikes])


class SpikingAttentionProducts(torch.autograd.Function):
    """SFSA's products for 0/1 Q, K, V while training in a low-precision ``dtype`` (bf16): ``(A V, A)`` with
    A = `masked_lif_forward` of the overlap counts Q Kᵀ; ``apply(query, key, value, allowed, scale, beta,
    v_threshold, v_reset, detach_reset, surrogate, alpha, dtype, backend)``.

    The values and gradients of the composition (two `torch.matmul` and `MaskedMultiStepLIF`), with what it
    keeps for backward cut to a quarter: Q, K, V and the counts as uint8 (exact: 0/1 and integers in [0, d]),
    the attention spikes recomputed from the counts in the backward neuron kernel. Nothing else reruns, so
    the attention needs no recomputed region (`recompute_region`)."""

    @staticmethod
    def forward(
        ctx, query, key, value, allowed, scale, beta, v_threshold, v_reset, detach_reset, surrogate, alpha, dtype,
        backend,
    ):  # fmt: skip
        ctx.set_materialize_grads(False)  # attention maps nobody asked a gradient of cost nothing
        like = query.new_empty((), dtype=torch.float32)
        numbers = as_graph_inputs((scale, beta, v_threshold, *(() if v_reset is None else (v_reset,)), alpha), like)
        scale, beta, v_threshold, *rest, alpha = numbers
        v_reset = rest[0] if rest else None
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
        scores = torch.matmul(query, key.transpose(-1, -2))
        spikes, codes = run_kernel(
            masked_lif_forward_codes, backend, scores, allowed, scale, beta, v_threshold, v_reset, dtype
        )
        output = torch.matmul(spikes, value)
        ctx.save_for_backward(*run_kernel(as_uint8, backend, query, key, value), codes, allowed)
        ctx.options = (scale, beta, v_threshold, v_reset, detach_reset, surrogate, alpha)
        ctx.dtype, ctx.backend = dtype, backend
        return output, spikes

    @staticmethod
    def backward(ctx, grad_output, grad_spikes):
        query, key, value, codes, allowed = ctx.saved_tensors
        dtype = ctx.dtype
        query, key, value = run_kernel(widened, ctx.backend, query, key, value, dtype)
        if grad_output is not None:  # a view of the (T, B, L, D) context's gradient: copied once, not per product
            grad_output = grad_output.to(dtype).contiguous()
        grad_attention = None if grad_output is None else torch.matmul(grad_output, value.transpose(-1, -2))
        if grad_spikes is not None:
            grad_spikes = grad_spikes.to(dtype)
            grad_attention = grad_spikes if grad_attention is None else grad_attention + grad_spikes
        grad_scores, spikes = run_kernel(
            masked_lif_backward_and_spikes, ctx.backend, grad_attention, codes, allowed, *ctx.options, dtype
        )
        grad_value = None if grad_output is None else torch.matmul(spikes.transpose(-1, -2), grad_output)
        grad_query = torch.matmul(grad_scores, key)
        grad_key = torch.matmul(grad_scores.transpose(-1, -2), query)
        return grad_query, grad_key, grad_value, *([None] * 10)


def spikformer_attention(query, key, value, allowed, scale: float = 0.125, matmul_dtype=torch.float32):
    """SSA baseline: (Q Kᵀ ⊙ mask) V · scale, and the attention counts for inspection."""
    scores = spike_scores(query, key, matmul_dtype).masked_fill(~allowed, 0)
    return spike_matmul(scores, value, matmul_dtype) * scale, scores


def row_normalized(weights: torch.Tensor) -> torch.Tensor:
    """Mean over T of a ``(T, B, H, Lq, Lk)`` map, each row scaled to sum to 1 (all-zero rows stay zero).

    An all-zero row (a query whose attention neuron never fired) is divided by 1, not by a tiny epsilon: the
    forward value is the same, and its surrogate gradient is not multiplied by 1/epsilon (which once blew
    SAA gradients up to ~1e9).
    """
    if weights.dtype in (torch.bfloat16, torch.float16):  # bf16 spikes of bf16 training: sums need fp32
        weights = weights.float()
    averaged = weights.mean(0)
    totals = averaged.sum(-1, keepdim=True)
    return averaged / torch.where(totals > 0, totals, torch.ones_like(totals))
