"""Building blocks shared by every spiking architecture (SPEC §3).

Residual stream = membrane values ``(T, B, L, D)``. Every sublayer starts with a neuron (membrane shortcut):
x = x + Attn(SN(x)); x = x + MLP(SN(x)), MLP(s) = Norm(Linear₂(SN(Norm(Linear₁(s))))). Every Linear here is
fed spikes; `linear_on_spikes` makes that exact when the producing neuron runs in binary spike mode.

Module *names* are checkpoint keys and follow each teacher family, so the generic modules here take the
names of their projections as arguments rather than fixing them.

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from .attention import (
    MATMUL_DTYPES,
    allowed_keys,
    row_normalized,
    softmax_free_attention,
    spike_matmul,
    spike_scores,
    spikformer_attention,
    winner_take_all,
)
from .event import (
    PACKED_MAX_QUERIES,
    event_linear,
    event_linears,
    integer_counts,
    integer_unit,
    pack_bits,
    packs_keys,
    unpack_bits,
    uses_event_path,
    worth_gathering,
)
from .functional import integer_lif, lif
from .kernels import run_differentiable
from .neurons import IntegerLIFNeuron, LIFNeuron, NormalizedIntegerLIFNeuron, build_neuron
from .recompute import encode_counts, recompute_region
from .spike_coding import binary_to_integer

__all__ = [
    "SpikingSelfAttention",
    "allowed_keys",
    "build_norm",
    "expand_time",
    "linear_on_spikes",
    "mean_over_time",
    "neuron_from_config",
    "spike_values",
    "spiking_mlp",
]


OPERATION_RECORDERS: list = []
"""Operation counters listening to this forward pass (`spiking_lm.energy` adds one while it counts); empty
otherwise, so the checks below cost one list test."""


def in_binary_mode(neuron) -> bool:
    return neuron is not None and getattr(neuron, "spike_mode", "integer") == "binary"


def spike_values(spikes: torch.Tensor, neuron) -> torch.Tensor:
    """The neuron's output in its own units, ``(T, ...)``: a binary train is folded back into counts."""
    if not in_binary_mode(neuron):
        return spikes
    return binary_to_integer(spikes, neuron.spike_max) * neuron.spike_scale + neuron.spike_offset


class SpikeLinearFunction(torch.autograd.Function):
    """y_i = x W_iᵀ + b_i for one or more Linears fed the same spikes x, for training, keeping x for the weight
    gradients as compactly as it allows.

    ``apply(x, coding, matmul_dtype, exact_outputs, weight_1, bias_1, weight_2, bias_2, ...)`` returns one output
    per Linear: in x's dtype, or, with ``exact_outputs`` (only where `exact_output_dtype` allows it), as the bf16
    GEMM produced them, for a consumer that keeps them in bf16 and widens them itself (a recomputed region).

    ``coding = (scale, offset)`` says x holds spikes scale·k + offset with integer counts k ∈ [0, 255]: x is then
    kept once as uint8 counts (1 byte instead of 4; spike inputs are the largest activations a spiking model
    stores), and scale and offset are applied to the small weight-gradient matrices. Without a coding x is kept as
    is.

    ``matmul_dtype = torch.bfloat16`` runs the GEMMs (forward, input and weight gradients) on bf16 operands with
    fp32 results, 2-2.4x faster than fp32 on the 2-core AVX512-BF16 CPU measured. Spike counts are exact in bf16;
    the weights and gradients are rounded to bf16 (8-bit mantissa) as in any bf16 mixed-precision training; the
    fp32 weights stay the master copy.

    With several Linears, the input is converted once, and the backward pass multiplies the output gradients side
    by side: one GEMM for the input gradient (no sum of per-Linear gradients) and one for all weight gradients.
    """

    @staticmethod
    def forward(ctx, x, coding, matmul_dtype, exact_outputs, *parameters):
        weights, biases = parameters[0::2], parameters[1::2]
        low = matmul_dtype != torch.float32  # float32 means: the input's own dtype
        # 0/1 spikes that arrive in the GEMM dtype (`low_spike_dtype`) are the operand and what is kept, as they
        # are: 2 bytes instead of 1, but no conversion either way (bf16 → uint8 alone cost more than the
        # neuron that made them).
        direct = low and x.dtype == matmul_dtype and coding in (None, (1.0, 0.0))
        counts = None if coding is None or direct else encode_counts(x, *coding)
        ctx.coding, ctx.has_bias = coding, [bias is not None for bias in biases]
        ctx.matmul_dtype, ctx.input_dtype = (matmul_dtype if low else None), x.dtype
        kept = counts if counts is not None else (x.to(matmul_dtype) if low else x)
        ctx.save_for_backward(kept, *weights)
        if not low:
            return tuple(F.linear(x, weight, bias) for weight, bias in zip(weights, biases, strict=True))
        operand = kept.to(matmul_dtype)  # counts are exact bf16 operands
        outputs = []
        for weight, bias in zip(weights, biases, strict=True):
            if coding is None or coding == (1.0, 0.0):  # the bias joins the GEMM
                low_bias = None if bias is None else bias.to(matmul_dtype)
                output = F.linear(operand, weight.to(matmul_dtype), low_bias)
                outputs.append(output if exact_outputs else output.to(weight.dtype))
                continue
            output = _apply_coding(F.linear(operand, weight.to(matmul_dtype)).to(weight.dtype), weight, *coding)
            outputs.append(output if bias is None else output + bias)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grad_outputs):
        kept, *weights = ctx.saved_tensors
        reference = grad_outputs[0]  # gradients are materialized: an unused output's is zeros
        dtype = ctx.matmul_dtype or reference.dtype
        flat_grads = [grad.reshape(-1, grad.shape[-1]) for grad in grad_outputs]
        # The output gradients side by side, converted to the GEMM dtype in the same pass.
        widths = [grad.shape[-1] for grad in flat_grads]
        joined = flat_grads[0].to(dtype)
        if len(flat_grads) > 1:
            joined = torch.empty(flat_grads[0].shape[0], sum(widths), dtype=dtype, device=reference.device)
            for part, grad in zip(joined.split(widths, dim=1), flat_grads, strict=True):
                part.copy_(grad)
        needs = ctx.needs_input_grad
        grad_input = None
        if needs[0]:  # in the dtype of the input (bf16 spikes take the bf16 product as it is)
            weight = weights[0] if len(weights) == 1 else torch.cat(weights)
            grad_input = (joined @ weight.to(dtype)).to(ctx.input_dtype).view(*reference.shape[:-1], -1)
        grad_parameters = []
        weight_grads = [None] * len(weights)
        if any(needs[4::2]):
            inputs = kept.reshape(-1, kept.shape[-1]).to(dtype)
            weight_grads = (joined.T @ inputs).to(weights[0].dtype).split(widths)
        scale, offset = ctx.coding or (1.0, 0.0)
        for index, (grad, flat_grad) in enumerate(zip(weight_grads, flat_grads, strict=True)):
            # Output gradients that arrive in bf16 (`exact_outputs`) are summed in bf16 (fp32 accumulation, the
            # sum rounded like the weight gradients' GEMM outputs): widening them first cost 10x the sum.
            wants_bias = ctx.has_bias[index] and needs[5 + 2 * index]
            sums = flat_grad.sum(0).to(weights[index].dtype) if wants_bias or offset != 0 else None
            if grad is not None and needs[4 + 2 * index]:
                if scale != 1:
                    grad = grad * scale
                if offset != 0:
                    grad = grad + offset * sums.unsqueeze(1)
            else:
                grad = None
            bias_grad = sums if wants_bias else None
            grad_parameters += [grad, bias_grad]
        return grad_input, None, None, None, *grad_parameters


def _apply_coding(counts_product: torch.Tensor, weight: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    """From k·Wᵀ to x·Wᵀ for x = scale·k + offset: scale, then add offset·(W·1)."""
    if scale != 1:
        counts_product = counts_product * scale
    if offset != 0:
        counts_product = counts_product + offset * weight.sum(1)
    return counts_product


def spike_coding(neuron):
    """``(scale, offset)`` with spikes = scale·k + offset, k integer in [0, 255]; `None` if not so coded."""
    if neuron is None or getattr(neuron, "spike_max", 1) > 255:
        return None
    if hasattr(neuron, "spike_scale"):
        offset = neuron.spike_offset
        if torch.is_tensor(offset):
            offset = float(offset)
        return float(neuron.spike_scale), float(offset)
    return (1.0, 0.0) if getattr(neuron, "binary_output", False) else None


def exact_coding(neuron):
    """`spike_coding`, where decoding k·scale + offset reproduces the neuron's output bit for bit (what a
    recomputed region needs), else `None`: with an offset, only power-of-two scales are exact."""
    coding = spike_coding(neuron)
    if coding is None or in_binary_mode(neuron):
        return None
    scale, offset = coding
    return coding if offset == 0 or math.frexp(scale)[0] == 0.5 else None


def train_matmul_dtype(linear: nn.Linear) -> torch.dtype:
    """The GEMM dtype a spike-fed Linear trains with (set by the model from ``config.train_matmul_dtype``)."""
    return MATMUL_DTYPES[getattr(linear, "train_matmul_dtype", "float32")]


def linear_on_spikes(linear: nn.Linear, spikes: torch.Tensor, neuron, exact_outputs: bool = False) -> torch.Tensor:
    """``linear`` applied to the output of ``neuron``, always returning ``(T, ..., out)``.

    In binary mode the Linear sees only 0/1 virtual steps; their results are summed per step, scaled, and the
    constant offset of the adaptive-shift neurons is folded in as W·offset: exactly W·S + b. When training, the
    spikes are kept for backward as uint8 counts and the GEMMs run in the Linear's training dtype
    (`SpikeLinearFunction`); ``exact_outputs`` then returns the output in `exact_output_dtype` where there is one.
    """
    for recorder in OPERATION_RECORDERS:
        recorder.spike_fed_linear(linear, spikes, neuron)
    if uses_event_path(linear) and worth_gathering((linear,)):
        return event_linear(linear, spikes, neuron)
    if not in_binary_mode(neuron):
        options = _training_function_options([linear], neuron)
        if options is None:
            return linear(spikes)
        (output,) = SpikeLinearFunction.apply(spikes, *options, exact_outputs, linear.weight, linear.bias)
        return output
    output = binary_to_integer(F.linear(spikes, linear.weight), neuron.spike_max) * neuron.spike_scale
    offset = neuron.spike_offset
    if torch.is_tensor(offset) or offset != 0:
        output = output + linear.weight.sum(1) * offset
    return output if linear.bias is None else output + linear.bias


def exact_output_dtype(linears, neuron) -> torch.dtype | None:
    """The low-precision dtype that holds the training outputs of these spike-fed Linears exactly, else `None`:
    bf16 when they multiply in bf16 with the bias inside the GEMM (`SpikeLinearFunction` rounds the product to
    bf16 once, then widens it), so that what keeps them for backward may keep them in bf16 at no loss."""
    return _low_training_dtype(linears, neuron, (None, (1.0, 0.0)))


def low_spike_dtype(linears, neuron) -> torch.dtype | None:
    """The dtype in which ``neuron`` should emit the 0/1 spikes these Linears consume, if not its own: their
    bf16 training GEMM dtype (exact for 0/1; the neuron then writes half the bytes and nothing converts them
    before the GEMM); else `None`."""
    return _low_training_dtype(linears, neuron, ((1.0, 0.0),))


def _low_training_dtype(linears, neuron, codings) -> torch.dtype | None:
    """The low-precision GEMM dtype these Linears train in when ``neuron``'s spike coding is one of ``codings``."""
    options = _training_function_options(linears, neuron) if linears else None
    if options is None or options[1] == torch.float32 or options[0] not in codings:
        return None
    return options[1]


def linears_on_spikes(linears, spikes: torch.Tensor, neuron, exact_outputs: bool = False) -> list[torch.Tensor]:
    """`linear_on_spikes` for several Linears fed the same spikes. On the event path they gather together
    (`event_linears`: the spikes are located once, each reads a row of the concatenated weights); when training
    they share one `SpikeLinearFunction` (the spikes are converted and kept once)."""
    grouped = _training_function_options(linears, neuron) if len(linears) > 1 else None
    event = len(linears) > 1 and all(uses_event_path(linear) for linear in linears) and worth_gathering(linears)
    if not (event or grouped):
        return [linear_on_spikes(linear, spikes, neuron, exact_outputs) for linear in linears]
    for recorder in OPERATION_RECORDERS:
        for linear in linears:
            recorder.spike_fed_linear(linear, spikes, neuron)
    if event:
        return event_linears(linears, spikes, neuron)
    parameters = [tensor for linear in linears for tensor in (linear.weight, linear.bias)]
    return list(SpikeLinearFunction.apply(spikes, *grouped, exact_outputs, *parameters))


def _training_function_options(linears, neuron):
    """``(coding, dtype)`` if these Linears, fed by ``neuron``, train through one `SpikeLinearFunction`, else
    `None` (inference, binary mode, the event path, or a plain fp32 Linear on uncoded inputs)."""
    if in_binary_mode(neuron) or not torch.is_grad_enabled():
        return None
    if any(uses_event_path(linear) or not linear.weight.requires_grad for linear in linears):
        return None
    coding, dtypes = spike_coding(neuron), {train_matmul_dtype(linear) for linear in linears}
    if len(dtypes) > 1 or (coding is None and dtypes == {torch.float32}):
        return None
    return coding, dtypes.pop()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), weight, eps)


class RMSNorm(nn.RMSNorm):
    """`nn.RMSNorm` (same parameters) whose forward and backward are compiled for large inputs: eager RMSNorm
    decomposes into several passes and measured ~3x slower than the compiled one on 2 CPU cores."""

    def __init__(self, normalized_shape: int, eps: float, backend: str = "auto"):
        super().__init__(normalized_shape, eps=eps)
        self.backend = backend

    def forward(self, x):
        return run_differentiable(rms_norm, self.backend, x, self.weight, self.eps)


# Widest norm → neuron pair compiled as one function. Measured on 2 CPU cores: 6x at width 256. At 1024 it was 2-3 %
# faster for WD and BiSpikCLM run alone, but in bench_models' one process WE then ran 0.87x instead of 0.99x BERT.
FUSED_NORM_MAX_WIDTH = 512


def _static_time_and_width(x: torch.Tensor) -> torch.Tensor:
    """``x`` with its time and feature dims marked static for `torch.compile`: a compiled norm kernel then
    specializes on T and the width (a few values per model) while batch and length may still turn dynamic.
    Without it, the second width one kernel meets (256 and 1024 in one model) made every later variant dynamic
    in the width, measured 25 % slower at 1024."""
    if not torch.compiler.is_compiling():  # inside a compiled model the whole graph's shapes rule
        torch._dynamo.mark_static(x, [0, x.dim() - 1])
    return x


def _normalize(x, weight, bias, eps, is_rms, compute_dtype=None):
    if compute_dtype is not None:  # a bf16 GEMM output widens here, fused into the norm
        x = x.to(compute_dtype)
    width = (x.shape[-1],)
    return F.rms_norm(x, width, weight, eps) if is_rms else F.layer_norm(x, width, weight, bias, eps)


def _normalize_and_fire(x, weight, bias, eps, is_rms, fire, options, dtype=None, compute_dtype=None, heads=None):
    membrane = _normalize(x, weight, bias, eps, is_rms, compute_dtype)
    if heads is not None:  # the neuron is elementwise: firing on the heads' layout writes the spikes in it
        membrane = split_heads(membrane, heads)
    if dtype is not None and fire is lif:  # cast per step inside the kernel: the spikes are written once
        return fire(membrane, **options, dtype=dtype)
    spikes = fire(membrane, **options)
    return spikes if dtype is None else spikes.to(dtype)


def split_heads(values: torch.Tensor, heads: int) -> torch.Tensor:
    """``(T, B, L, D)`` → ``(T, B, H, L, D/H)`` (a view)."""
    steps, batch, length, width = values.shape
    return values.view(steps, batch, length, heads, width // heads).transpose(2, 3)


def _fusable_neuron(neuron):
    """The neuron's functional form if it has no parameters and nothing to record, else `None`."""
    if neuron.record_firing_rate or getattr(neuron, "spike_mode", "integer") != "integer":
        return None
    if type(neuron) is LIFNeuron:
        options = {"beta": neuron.beta, "v_threshold": neuron.v_threshold, "v_reset": neuron.v_reset,
                   "surrogate": neuron.surrogate, "detach_reset": neuron.detach_reset, "backend": "torch"}  # fmt: skip
        return lif, options
    if type(neuron) in (IntegerLIFNeuron, NormalizedIntegerLIFNeuron):
        options = {"lower": 0.0, "spike_max": neuron.spike_max, "scale": neuron.spike_scale, "beta": neuron.beta,
                   "detach_reset": neuron.detach_reset, "backend": "torch"}  # fmt: skip
        return integer_lif, options
    return None


def normalize_and_fire(
    norm: nn.Module,
    neuron,
    x: torch.Tensor,
    exact_dtype: torch.dtype | None = None,
    spike_dtype: torch.dtype | None = None,
    compute_dtype: torch.dtype | None = None,
    heads: int | None = None,
):
    """``neuron(norm(x))``, the spikes in ``spike_dtype`` if given (see `low_spike_dtype`); for LayerNorm/RMSNorm
    feeding a parameter-free neuron, one compiled region (forward and backward fused, the norm output recomputed
    rather than stored) when no wider than `FUSED_NORM_MAX_WIDTH`; below the compile threshold the same
    composition runs eagerly. Otherwise, when training with T > 1, a recomputed region that keeps only x (in
    ``exact_dtype`` if x is exact in it). ``compute_dtype``: the dtype the norm computes in, if x arrives in a
    narrower one (a bf16 GEMM output, `SpikeLinearFunction`'s ``exact_outputs``): x is widened inside the region
    or the compiled function, never stored wide. ``heads``: return the spikes split into attention heads,
    ``(T, B, H, L, D/H)``; the compiled function writes them contiguous in that layout (the attention products
    would otherwise copy them into it, forward and backward)."""

    is_rms = isinstance(norm, nn.RMSNorm)
    is_norm = is_rms or isinstance(norm, nn.LayerNorm)
    bias = None if is_rms else getattr(norm, "bias", None)

    def normalized(membrane):
        if compute_dtype is None:
            return norm(membrane)
        if not is_norm:
            return norm(membrane.to(compute_dtype))
        # Widening and norm compiled together: eager, the bf16 → fp32 conversion alone cost more than the norm.
        arguments = (_static_time_and_width(membrane), norm.weight, bias, norm.eps, is_rms, compute_dtype)
        return run_differentiable(_normalize, neuron.backend, *arguments)

    def split(spikes):
        return spikes if heads is None else split_heads(spikes, heads)

    fusable = is_norm and neuron.backend != "torch"
    fusable = fusable and x.shape[-1] <= FUSED_NORM_MAX_WIDTH
    form = _fusable_neuron(neuron) if fusable and not OPERATION_RECORDERS else None
    if form is None and x.shape[0] > 1:  # training keeps only x: the norm output and neuron input recompute

        def parameters():
            return [p for module in (norm, neuron) for p in module.parameters() if p.requires_grad]

        def run(membrane):
            return neuron(normalized(membrane), spike_dtype)

        return split(recompute_region(run, (x,), (exact_dtype,), parameters))
    if form is None:  # T = 1: the neuron keeps a 1-byte mask at most, recomputing would only cost time
        return split(neuron(normalized(x), spike_dtype))
    fused = (_static_time_and_width(x), norm.weight, bias, norm.eps, is_rms, *form, spike_dtype, compute_dtype, heads)
    return run_differentiable(_normalize_and_fire, neuron.backend, *fused)


def build_norm(config, size: int | None = None, enabled: bool = True) -> nn.Module:
    """``config.norm_type`` (``layernorm``/``rmsnorm``) over ``size`` (default hidden size); Identity if disabled."""
    if not enabled:
        return nn.Identity()
    size = size or config.hidden_size
    if config.norm_type == "rmsnorm":
        return RMSNorm(size, eps=config.layer_norm_eps, backend=config.neuron_backend)
    return nn.LayerNorm(size, eps=config.layer_norm_eps)


def neuron_from_config(config, **overrides) -> nn.Module:
    """A fresh neuron of ``config.neuron_type`` with the config's shared options (overridable)."""
    options = {
        "beta": config.beta,
        "v_threshold": config.v_threshold,
        "surrogate": config.surrogate,
        "detach_reset": config.detach_reset,
        "spike_max": config.spike_max,
        "time_steps": config.time_steps,
        "backend": config.neuron_backend,
    }
    neuron_type = overrides.pop("neuron_type", config.neuron_type)
    options.update(overrides)
    return build_neuron(neuron_type, strict=False, **options)


def expand_time(embeddings: torch.Tensor, time_steps: int) -> torch.Tensor:
    """``(B, L, D)`` → ``(T, B, L, D)``, the same real-valued input at every step (a view, no copy)."""
    return embeddings.unsqueeze(0).expand(time_steps, *embeddings.shape)


def mean_over_time(membrane: torch.Tensor) -> torch.Tensor:
    """Readout: ``(T, B, L, D)`` → ``(B, L, D)``."""
    return membrane.mean(0)


def spiking_mlp(spikes, source_neuron, fc1, norm1, neuron, fc2, norm2) -> torch.Tensor:
    """MLP(s) = Norm₂(Linear₂(SN(Norm₁(Linear₁(s))))), a membrane value for the residual stream."""
    exact, spike_dtype = exact_output_dtype([fc1], source_neuron), low_spike_dtype([fc2], neuron)
    # fc1's bf16 output goes on as the GEMM made it (`exact_outputs`) and widens inside the norm's compiled
    # function or recomputed region, which then keeps it as it is.
    low = exact is not None
    fc1_output = linear_on_spikes(fc1, spikes, source_neuron, exact_outputs=low)
    hidden = normalize_and_fire(norm1, neuron, fc1_output, exact, spike_dtype, fc1.weight.dtype if low else None)
    return norm2(linear_on_spikes(fc2, hidden, neuron))


_ALLOWED_MEMO: list = [None, None, None]  # (arguments, the mask object, the result) of the last call


def shared_allowed_keys(attention_mask, query_length, key_length, causal, device, batch_size) -> torch.Tensor:
    """`allowed_keys`, built once per forward pass: every layer asks with the same mask object and lengths (the
    mask is remembered by identity and version, so a new or modified mask always rebuilds)."""
    version = None if attention_mask is None else attention_mask._version
    arguments = (query_length, key_length, causal, device, batch_size, version)
    if _ALLOWED_MEMO[0] == arguments and _ALLOWED_MEMO[1] is attention_mask:
        return _ALLOWED_MEMO[2]
    allowed = allowed_keys(attention_mask, query_length, key_length, causal, device, batch_size)
    _ALLOWED_MEMO[:] = [arguments, attention_mask, allowed]
    return allowed


def _cache_unit(neuron) -> float | None:
    """u such that the neuron's spike values are u·k with integer |k| ≤ 127 and no offset (cacheable as int8)."""
    offset = getattr(neuron, "spike_offset", 0.0)
    if torch.is_tensor(offset) or offset != 0:
        return None
    return integer_unit(neuron)


def _append(cache, layer_idx: int, keys: torch.Tensor, values: torch.Tensor):
    """``cache.update(keys, values, layer_idx)``, refusing to mix storage formats: each inference backend stores
    its own dtypes (bits, int8 counts, fp32), and torch.cat would promote a mix silently or fail on the widths."""
    stored = cache.__dict__.setdefault("_spiking_lm_kv_dtypes", {})
    kinds = (keys.dtype, values.dtype)
    if cache.get_seq_length(layer_idx) > 0 and stored.get(layer_idx, kinds) != kinds:
        raise ValueError(
            f"this cache was filled on the other inference backend (K/V stored as {stored[layer_idx]}, this one "
            f"stores {kinds}) and cannot be continued on this one; start generation again after "
            "set_inference_backend()"
        )
    stored[layer_idx] = kinds
    return cache.update(keys, values, layer_idx)


class SpikingSelfAttention(nn.Module):
    """Spiking self-attention of ``config.attention_type`` with teacher-family parameter names.

    Args:
        config: a spiking model config (hidden size, heads, neuron and attention options).
        layer_idx (`int`): index of the layer, for the cache.
        projection_names (`tuple[str, str, str, str | None]`): names of the q, k, v and output Linear layers;
            `None` for the output means the caller owns the output projection (BERT's ``attention.output``).
        output_norm_name (`str`, *optional*): name of the norm after the output projection.
        bias (`bool`): whether the projections have biases.
        causal (`bool`): whether queries may only see earlier keys.

    Forward returns ``(output, producer, weights)``: with an output projection, ``output`` is the membrane
    for the residual stream and ``producer`` is `None`; without, ``output`` is what the output projection must
    consume and ``producer`` the neuron that produced it (for binary-mode folding). ``weights`` are the raw
    attention weights ``(T, B, H, Lq, Lk)``; `run_layers` turns them into maps only when they are asked for.

    While training with T > 1, only the input spikes (as uint8 counts), or with bf16 GEMMs the exact bf16 Q/K/V
    Linear outputs, are kept for backward: the rest of the attention and the re-spiked context are recomputed in
    the backward pass (`spiking_lm.nn.recompute`).
    """

    def __init__(self, config, layer_idx, projection_names, output_norm_name="o_norm", bias=False, causal=False):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.kind = config.attention_type
        self.causal = causal
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.names = projection_names
        for name in projection_names[:3]:
            self.add_module(name, nn.Linear(config.hidden_size, config.hidden_size, bias=bias))
        self.q_norm, self.k_norm, self.v_norm = (build_norm(config) for _ in range(3))
        self.q_neuron, self.k_neuron, self.v_neuron = (neuron_from_config(config) for _ in range(3))
        if self.kind == "sfsa":
            self.attn_neuron = build_neuron(
                "lif", beta=config.beta, v_threshold=config.attn_threshold, surrogate=config.surrogate
            )
        elif self.kind == "ssa":
            self.output_neuron = build_neuron("lif", beta=config.beta, v_threshold=0.5, surrogate=config.surrogate)
        else:
            self.output_neuron = neuron_from_config(config)
        self.output_norm_name = None
        if projection_names[3] is not None:
            self.add_module(projection_names[3], nn.Linear(config.hidden_size, config.hidden_size, bias=bias))
            self.output_norm_name = output_norm_name
            self.add_module(output_norm_name, build_norm(config))

    def _projections(self) -> list[nn.Linear]:
        return [getattr(self, name) for name in self.names[:3]]

    def _project(self, membranes) -> list[torch.Tensor]:
        """Q, K and V spike values ``(T, B, H, L, d)`` from the outputs of their Linears: norm → neuron. While
        training in bf16 they come out in bf16, the dtype the attention products convert them to."""
        norms, neurons = (self.q_norm, self.k_norm, self.v_norm), (self.q_neuron, self.k_neuron, self.v_neuron)
        dtype = MATMUL_DTYPES[self.config.train_matmul_dtype]
        # The spikes need gradients if the membranes or the norms do (a recomputed region's first run gets
        # detached inputs); only then do the products run in bf16.
        grads = any(m.requires_grad for m in membranes) or any(p.requires_grad for n in norms for p in n.parameters())
        low = dtype != torch.float32 and torch.is_grad_enabled() and grads
        spike_dtype = dtype if low and not OPERATION_RECORDERS else None
        width = self._projections()[0].weight.dtype  # bf16 Linear outputs (`exact_outputs`) widen in the norm
        compute_dtype = width if membranes[0].dtype != width else None
        options = (None, spike_dtype, compute_dtype, self.num_heads)
        return [
            spike_values(normalize_and_fire(norm, neuron, membrane, *options), neuron)
            for membrane, norm, neuron in zip(membranes, norms, neurons, strict=True)
        ]

    def _cached(self, key, value, cache, query_rows: int):
        """Append this step's spike K/V to the cache, stored as ``(B, T·H, L, ·)``, and return all of them with
        their units: ``(keys, values, key_unit, value_unit)``, the spike values being unit × what is returned.

        On the event backend, for projections large enough to take it (`worth_gathering`; below, the event
        backend runs the dense code), exact in every case (`spiking_lm.nn.event` states the rule):

        - K of a binary neuron read by binary queries is stored as `pack_bits` words, 8 bytes per position and head
          of 64 (int8 counts take 64), in caches of at least `PACKED_MIN_HEADS` T·B·H rows. With at most
          `PACKED_MAX_QUERIES` query rows the words come back as they are, for Q Kᵀ by AND and popcount
          (`spike_scores`); more rows unpack them for a GEMM.
        - Other K and V whose neurons emit integer multiples of a unit (binary spikes, the integer family without
          an offset) are stored as int8 counts, a quarter of fp32's bytes to keep and append, and come back as
          fp32 counts (one widening pass, no scaling: the attention applies the units to its small operands).

        Without earlier tokens in the cache the fresh K/V are returned as they are (unit 1)."""
        steps, batch, _, length, _ = key.shape
        projections = self._projections()
        event = uses_event_path(projections[0]) and worth_gathering(projections) and not OPERATION_RECORDERS
        units = [_cache_unit(neuron) if event else None for neuron in (self.k_neuron, self.v_neuron)]
        binary = (getattr(n, "binary_output", False) and _cache_unit(n) == 1 for n in (self.q_neuron, self.k_neuron))
        packed = event and all(binary) and packs_keys(steps * batch * self.num_heads)

        def fold(x, unit, pack=False):
            x = x.permute(1, 0, 2, 3, 4).reshape(batch, steps * self.num_heads, -1, self.head_dim)
            if pack:
                return pack_bits(x)
            return x if unit is None else integer_counts(x, unit)

        def unfold(x):
            if x.dtype == torch.int64 and query_rows > PACKED_MAX_QUERIES:
                x = unpack_bits(x, self.head_dim, key.dtype)
            elif x.dtype != torch.int64:
                x = x.to(key.dtype)
            return x.view(batch, steps, self.num_heads, -1, x.shape[-1]).permute(1, 0, 2, 3, 4)

        keys, values = _append(cache, self.layer_idx, fold(key, units[0], packed), fold(value, units[1]))
        if keys.shape[-2] == length:  # nothing cached before: no need to read back what was just stored
            return key, value, 1.0, 1.0
        return unfold(keys), unfold(values), units[0] or 1.0, units[1] or 1.0

    def forward(self, spikes, source_neuron, attention_mask=None, cache=None):
        producer = None if self.kind == "sfsa" else self.output_neuron

        def attend(*membranes):
            return self._context(membranes, producer, attention_mask, cache)

        def attend_spikes(spikes):
            return attend(*linears_on_spikes(self._projections(), spikes, source_neuron))

        training = cache is None and spikes.shape[0] > 1
        exact = exact_output_dtype(self._projections(), source_neuron) if training else None
        if exact is not None:  # training keeps the Q/K/V Linear
            # outputs in the dtype of their GEMM (bf16: 2 bytes per value, lossless), so that the norms, neurons
            # and the attention recompute in backward without the three GEMMs.
            membranes = linears_on_spikes(self._projections(), spikes, source_neuron, exact_outputs=True)
            parameters = partial(self._attention_parameters, self.names[:3])
            context, weights = recompute_region(attend, tuple(membranes), (exact,) * 3, parameters)
        elif training:  # training keeps only the input spikes (uint8): Q, K, V
            # and the attention are recomputed in backward. At T = 1 the plain graph keeps little: left as is.
            coding = (exact_coding(source_neuron),)
            context, weights = recompute_region(attend_spikes, (spikes,), coding, self._attention_parameters)
        else:
            context, weights = attend_spikes(spikes)
        if self.output_norm_name is None:
            return context, producer, weights
        output = linear_on_spikes(getattr(self, self.names[3]), context, producer)
        return getattr(self, self.output_norm_name)(output), None, weights

    def _attention_parameters(self, left_out: tuple = ()) -> list:
        """Trainable parameters used from the input spikes up to the context (not the output projection, nor the
        modules named in ``left_out``)."""
        outside = (self.names[3], self.output_norm_name, *left_out)
        children = (module for name, module in self.named_children() if name not in outside)
        return [p for module in children for p in module.parameters() if p.requires_grad]

    def _context(self, membranes, producer, attention_mask, cache):
        """``(context (T, B, L, D), attention weights (T, B, H, Lq, Lk))`` from the Q/K/V Linear outputs:
        Q/K/V spikes, attention, re-spiking."""
        query, key, value = self._project(membranes)
        key_unit = value_unit = 1.0
        if cache is not None:
            key, value, key_unit, value_unit = self._cached(key, value, cache, query.shape[-2])
        steps, batch, _, query_length, _ = query.shape
        allowed = shared_allowed_keys(attention_mask, query_length, key.shape[-2], self.causal, query.device, batch)
        # Q (u_k K)ᵀ = (u_k Q) Kᵀ and A (u_v V) = u_v (A V): the units scale the query and the context (Lq rows),
        # not the cache (Lk rows); with power-of-two units (binary, ilif, nilif with D = 2ⁿ) bit for bit the same.
        context, weights = self._attend(query if key_unit == 1 else query * key_unit, key, value, allowed)
        if value_unit != 1:
            context = context * value_unit
        for recorder in OPERATION_RECORDERS:
            recorder.spiking_attention(self, query, key, value, weights, allowed)
        context = context.transpose(2, 3).reshape(steps, batch, query_length, -1)  # (T, B, L, D)
        if producer is not None:
            # Counted in the units the neuron fires in: re-spiking a selected row of V is then the identity.
            context = producer(context / getattr(self.v_neuron, "spike_scale", 1.0))
        return context, weights

    def _attend(self, query, key, value, allowed):
        """``(context (T, B, H, L, d), attention weights)``; training multiplies in the config's
        ``train_matmul_dtype`` (`spike_matmul`)."""
        config = self.config
        dtype = MATMUL_DTYPES[config.train_matmul_dtype]
        if self.kind == "sfsa":
            scale = 1 / math.sqrt(self.head_dim) if config.attn_score_scale == "sqrt_d" else 1.0
            return softmax_free_attention(
                query, key, value, allowed, self.attn_neuron, scale, config.sfsa_output_scale, dtype
            )
        if self.kind == "ssa":
            return spikformer_attention(query, key, value, allowed, matmul_dtype=dtype)
        scores = spike_scores(query, key, dtype)
        weights = winner_take_all(scores, allowed, config.wta_mode, config.wta_k, config.wta_temperature)
        return spike_matmul(weights, value, dtype), weights


def membrane_shortcut_layer(
    hidden,
    attention_mask,
    cache,
    attn_norm,
    attn_neuron,
    attention,
    mlp_norm,
    mlp_neuron,
    mlp,
    attention_linears=(),
    mlp_linears=(),
):
    """One block: x = x + Attn(SN(Norm(x))); x = x + MLP(SN(Norm(x))). Returns ``(x, attention weights)``.

    ``attention(spikes, neuron, attention_mask, cache)`` returns ``(membrane, _, map)``;
    ``mlp(spikes, neuron)`` returns a membrane. ``attention_linears`` and ``mlp_linears`` are the Linears their
    input spikes feed: training in bf16, the neurons emit bf16 spikes for them (`low_spike_dtype`).
    """
    spike_dtype = low_spike_dtype(attention_linears, attn_neuron)
    spikes = normalize_and_fire(attn_norm, attn_neuron, hidden, spike_dtype=spike_dtype)
    attention_output, _, attention_map = attention(spikes, attn_neuron, attention_mask, cache)
    hidden = hidden + attention_output
    spikes = normalize_and_fire(mlp_norm, mlp_neuron, hidden, spike_dtype=low_spike_dtype(mlp_linears, mlp_neuron))
    return hidden + mlp(spikes, mlp_neuron), attention_map


def run_layers(layers, hidden, attention_mask, cache, output_hidden_states: bool, output_attentions: bool):
    """Run the blocks; collect time-averaged hidden states (embeddings first) and attention maps if asked."""
    all_hidden = (mean_over_time(hidden),) if output_hidden_states else None
    all_attentions = () if output_attentions else None
    for layer in layers:
        hidden, attention_map = layer(hidden, attention_mask=attention_mask, cache=cache)
        if output_hidden_states:
            all_hidden += (mean_over_time(hidden),)
        if output_attentions:
            all_attentions += (row_normalized(attention_map),)
    return hidden, all_hidden, all_attentions


def positions_from_mask(attention_mask, query_length: int, past_length: int, device) -> torch.Tensor:
    """Position ids ``(B, L)`` of the last ``query_length`` tokens; left padding does not shift real tokens."""
    if attention_mask is None:
        return torch.arange(past_length, past_length + query_length, device=device).unsqueeze(0)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    return positions[:, -query_length:]
