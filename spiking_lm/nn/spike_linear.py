"""Linears fed by spikes: exact in every spike mode, compact when training, event-driven when asked.

`linear_on_spikes(linear, spikes, neuron, execution)` is ``linear`` applied to what ``neuron`` emitted, read through
its `SpikeCoding`: in binary spike mode the Linear sees only 0/1 virtual steps, summed per step and scaled, with
an adaptive-shift neuron's constant offset folded in as W·offset (exactly W·S + b). While training, the spikes are
kept for backward as uint8 counts and the GEMMs run in the model's training dtype (`SpikeLinearFunction`); on the
event backend, inference reads only the weight rows the spikes select (`spiking_lm.nn.event`).

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .dispatch import run_kernel
from .event import event_linears, worth_gathering
from .execution import execution_or_default
from .kernels import as_uint8, widened
from .recompute import encode_counts
from .recording import active_recorders
from .spike_coding import binary_to_integer, coding_of
from .weight_quantization import Int8Linear, int8_linears_on_spikes, int8_on_spikes

__all__ = [
    "SpikeLinearFunction",
    "exact_coding",
    "exact_output_dtype",
    "linear_on_spikes",
    "linears_on_spikes",
    "low_spike_dtype",
]


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
        # 0/1 spikes that arrive in the GEMM dtype (`low_spike_dtype`) are the operand as they are. Kept for
        # backward: as uint8 by one compiled pass where they feed several Linears (Q/K/V: 1 byte instead of 2,
        # no measurable cost), as they are for a single Linear (converting the MLP's inputs too, 1024 wide, cost
        # 6 % of a BiSpikCLM step; eager, bf16 → uint8 alone cost more than the neuron that made them).
        direct = low and x.dtype == matmul_dtype and coding in (None, (1.0, 0.0))
        counts = None if coding is None or direct else encode_counts(x, *coding)
        if direct and coding is not None and len(weights) > 1:
            (counts,) = run_kernel(as_uint8, "auto", x)
        ctx.coding, ctx.has_bias = coding, [bias is not None for bias in biases]
        ctx.matmul_dtype, ctx.input_dtype = (matmul_dtype if low else None), x.dtype
        kept = counts if counts is not None else (x.to(matmul_dtype) if low else x)
        ctx.save_for_backward(kept, *weights)
        if not low:
            return tuple(F.linear(x, weight, bias) for weight, bias in zip(weights, biases, strict=True))
        operand = kept.to(matmul_dtype)  # counts are exact bf16 operands
        outputs = []
        for weight, bias in zip(weights, biases, strict=True):
            if _folds_into_weights(coding):  # the scale (a power of two) rides on the weight, the bias joins the GEMM
                low_weight = (weight if coding is None or coding[0] == 1 else weight * coding[0]).to(matmul_dtype)
                low_bias = None if bias is None else bias.to(matmul_dtype)
                output = F.linear(operand, low_weight, low_bias)
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
            inputs = kept.reshape(-1, kept.shape[-1])
            if inputs.dtype == torch.uint8:
                (inputs,) = run_kernel(widened, "auto", inputs, dtype)
            else:
                inputs = inputs.to(dtype)
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


def _folds_into_weights(coding) -> bool:
    """Whether spikes scale·k (no offset, a power-of-two scale) multiply as k against the weight times the scale
    with the same bf16 values: scaling by a power of two is exact, so the GEMM can take the bias too."""
    return coding is None or (coding[1] == 0 and math.frexp(coding[0])[0] == 0.5)


def _apply_coding(counts_product: torch.Tensor, weight: torch.Tensor, scale: float, offset: float) -> torch.Tensor:
    """From k·Wᵀ to x·Wᵀ for x = scale·k + offset: scale, then add offset·(W·1)."""
    if scale != 1:
        counts_product = counts_product * scale
    if offset != 0:
        counts_product = counts_product + offset * weight.sum(1)
    return counts_product


def exact_coding(neuron) -> tuple[float, float] | None:
    """``(scale, offset)`` of the neuron's uint8 counts where decoding k·scale + offset reproduces its output bit
    for bit (what a recomputed region needs), else `None`: with an offset, only power-of-two scales are exact."""
    coding = coding_of(neuron)
    pair = coding.linear
    if pair is None or coding.in_binary_mode:
        return None
    scale, offset = pair
    return pair if offset == 0 or math.frexp(scale)[0] == 0.5 else None


def linear_on_spikes(linear: nn.Linear, spikes, neuron, execution=None, exact_outputs: bool = False) -> torch.Tensor:
    """``linear`` applied to the output of ``neuron``, always returning ``(T, ..., out)``.

    In binary mode the Linear sees only 0/1 virtual steps; their results are summed per step, scaled, and the
    constant offset of the adaptive-shift neurons is folded in as W·offset: exactly W·S + b. When training, the
    spikes are kept for backward as uint8 counts and the GEMMs run in ``execution``'s training dtype
    (`SpikeLinearFunction`); ``exact_outputs`` then returns the output in `exact_output_dtype` where there is one.
    """
    execution = execution_or_default(execution)
    for recorder in active_recorders():
        recorder.spike_fed_linear(linear, spikes, neuron)
    if isinstance(linear, Int8Linear):  # W8: exact int32 sums of counts x int8 weights, on either backend
        return int8_on_spikes(linear, spikes, neuron)
    if execution.uses_event_path(linear) and worth_gathering((linear,)):
        return event_linears((linear,), spikes, neuron, execution)[0]
    coding = coding_of(neuron)
    if not coding.in_binary_mode:
        options = _training_function_options([linear], neuron, execution)
        if options is None:
            return linear(spikes)
        (output,) = SpikeLinearFunction.apply(spikes, *options, exact_outputs, linear.weight, linear.bias)
        return output
    if not is_plain_linear(linear):
        return _wrapped_on_binary_spikes(linear, spikes, coding)
    output = binary_to_integer(F.linear(spikes, linear.weight), coding.max) * coding.scale
    if coding.has_offset:
        output = output + linear.weight.sum(1) * coding.offset
    return output if linear.bias is None else output + linear.bias


def is_plain_linear(module) -> bool:
    """Whether ``module`` computes exactly ``F.linear(x, module.weight, module.bias)``: an `nn.Linear` whose
    forward is not overridden. A wrapped Linear (a PEFT LoRA layer, a quantized or hooked module) is not, and
    every fast path that reads ``.weight`` directly (binary folding, the event backend, the training GEMM
    function) leaves it to its own forward. (A Linear under ZeRO-3 or with hooks stays plain: hooks that gather
    or observe parameters are not a different function.)"""
    overridden = type(module).forward is not nn.Linear.forward or "forward" in vars(module)
    return isinstance(module, nn.Linear) and not overridden


def _wrapped_on_binary_spikes(module, spikes, coding) -> torch.Tensor:
    """A wrapped (affine) Linear fed binary virtual steps: its own forward runs on the 0/1 steps, whose results
    are summed per step exactly as for a plain Linear; its constant part f(0) is taken out of each virtual step
    and added once, and the adaptive-shift offset enters as (f(1) - f(0))·offset."""
    probe = spikes.new_zeros(2, spikes.shape[-1])
    probe[1] = 1
    constant, ones = module(probe).unbind(0)
    output = binary_to_integer(module(spikes) - constant, coding.max) * coding.scale
    if coding.has_offset:
        output = output + (ones - constant) * coding.offset
    return output + constant


def exact_output_dtype(linears, neuron, execution=None) -> torch.dtype | None:
    """The low-precision dtype that holds the training outputs of these spike-fed Linears exactly, else `None`:
    bf16 when they multiply in bf16 with the bias inside the GEMM (`SpikeLinearFunction` rounds the product to
    bf16 once, then widens it), so that what keeps them for backward may keep them in bf16 at no loss."""
    options = _training_function_options(linears, neuron, execution) if linears else None
    if options is None or options[1] == torch.float32 or not _folds_into_weights(options[0]):
        return None
    return options[1]


def low_spike_dtype(linears, neuron, execution=None) -> torch.dtype | None:
    """The dtype in which ``neuron`` should emit the 0/1 spikes these Linears consume, if not its own: their
    bf16 training GEMM dtype (exact for 0/1; the neuron then writes half the bytes and nothing converts them
    before the GEMM); else `None`."""
    return _low_training_dtype(linears, neuron, execution, ((1.0, 0.0),))


def _low_training_dtype(linears, neuron, execution, codings) -> torch.dtype | None:
    """The low-precision GEMM dtype these Linears train in when ``neuron``'s spike coding is one of ``codings``."""
    options = _training_function_options(linears, neuron, execution) if linears else None
    if options is None or options[1] == torch.float32 or options[0] not in codings:
        return None
    return options[1]


def linears_on_spikes(linears, spikes, neuron, execution=None, exact_outputs: bool = False) -> list[torch.Tensor]:
    """`linear_on_spikes` for several Linears fed the same spikes. On the event path they gather together
    (`event_linears`: the spikes are located once, each reads a row of the concatenated weights); when training
    they share one `SpikeLinearFunction` (the spikes are converted and kept once)."""
    execution = execution_or_default(execution)
    if all(isinstance(linear, Int8Linear) for linear in linears):  # W8: the counts found once for all
        for recorder in active_recorders():
            for linear in linears:
                recorder.spike_fed_linear(linear, spikes, neuron)
        return int8_linears_on_spikes(linears, spikes, neuron)
    if any(isinstance(linear, Int8Linear) for linear in linears):
        return [linear_on_spikes(linear, spikes, neuron, execution, exact_outputs) for linear in linears]
    grouped = _training_function_options(linears, neuron, execution) if len(linears) > 1 else None
    event = len(linears) > 1 and all(execution.uses_event_path(linear) for linear in linears)
    event = event and worth_gathering(linears)
    if not (event or grouped):
        return [linear_on_spikes(linear, spikes, neuron, execution, exact_outputs) for linear in linears]
    for recorder in active_recorders():
        for linear in linears:
            recorder.spike_fed_linear(linear, spikes, neuron)
    if event:
        return event_linears(linears, spikes, neuron, execution)
    parameters = [tensor for linear in linears for tensor in (linear.weight, linear.bias)]
    return list(SpikeLinearFunction.apply(spikes, *grouped, exact_outputs, *parameters))


def _training_function_options(linears, neuron, execution):
    """``(coding, dtype)`` if these Linears, fed by ``neuron``, train through one `SpikeLinearFunction`, else
    `None` (inference, binary mode, the event path, or a plain fp32 Linear on uncoded inputs)."""
    coding = coding_of(neuron)
    if coding.in_binary_mode or not torch.is_grad_enabled():
        return None
    execution = execution_or_default(execution)
    if any(execution.uses_event_path(linear) or not is_plain_linear(linear) or not linear.weight.requires_grad
           for linear in linears):  # fmt: skip
        return None
    pair, dtype = coding.linear, execution.matmul_dtype
    if pair is None and dtype == torch.float32:
        return None
    return pair, dtype
