"""W8 spiking inference: spike-fed Linears whose weights are int8, driven by integer spike counts.

`Int8Linear` stores W = s ⊙ Q with Q ∈ [-127, 127] int8 and one fp32 scale s per output row (s = max|W_row| / 127).
Fed by a neuron whose values are u·k + offset with integer counts 0 ≤ k ≤ 127 (`SpikeCoding.unit`), it computes
y = (k Qᵀ) ⊙ (s·u) + offset·(s ⊙ Q·1) + b: the count × weight sums are exact int32 additions (`torch._int_mm`), and
the scale is applied once per output. Few rows with few spikes read only the int8 rows their spikes select; other
inputs take the dense int8 product. Binary virtual steps are summed into the same counts first, so integer and
binary spike mode give bit-identical outputs. Real values (an input no neuron made, ternary spikes with learned
scales) take `Int8Linear.forward`: x Qᵀ in the input's dtype, then ⊙ s: the same W, with float rounding.

`quantize_weights(model)` converts every Linear of the blocks that spikes feed (found by one probe forward) and
SFSA's output projections (fed integer counts: `SpikingSelfAttention.project_context`), and records their names in
the config (``weight_quantization``, ``quantized_modules``), so that `from_pretrained` rebuilds them before it
loads the int8 tensors. The LM head and the embeddings keep their fp32 weights. ``lm_head=True`` also stores the
head in int8 (its real-valued input is rounded to int8 per row at run time, as in an int8 ANN: not exact, its
perplexity cost is measured in docs/w8.md); when the head is tied to the token embeddings, the embeddings then
read their rows from the same int8 table (`Int8TiedEmbedding`).

This module imports only `torch` and same-folder modules so that it can travel with a saved model's code.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .execution import WatchedSettings
from .native import NATIVE_MAX_ROWS, ProductPlan, int8_matrix_rows, native_library, spike_products
from .recording import OperationRecorder, active_recorders, recording
from .spike_coding import binary_to_integer, coding_of

__all__ = ["WEIGHT_QUANTIZATIONS", "Int8Linear", "Int8TiedEmbedding", "apply_weight_quantization", "int8_on_spikes",
           "int8_linears_on_spikes", "int8_product", "product_plan", "quantize_weights",
           "selected_inputs"]  # fmt: skip

WEIGHT_QUANTIZATIONS = ("int8",)
GATHER_MAX_ROWS = 32
"""Up to this many input rows (decoding), a product reads only the int8 weight rows some row's spikes select..."""
GATHER_MAX_FRACTION = 0.6
"""...as long as they are at most this share of the rows (above it, the dense int8 product is as fast)."""


class Int8Linear(WatchedSettings, nn.Module):
    """A Linear with int8 weights and a per-output-row fp32 scale (module docstring).

    State: ``qweight`` int8 ``(in_features, out_features)``, stored transposed so that each input's row of Qᵀ is
    one contiguous read for a spike (``(out_features, in_features)`` with ``dynamic_inputs``: `quantized_t`);
    ``weight_scale`` fp32 ``(out_features,)``; ``bias`` (fp32 or `None`).
    """

    int8_weights = True  # what the execution object and the event backend's size rule look for

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dynamic_inputs: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.dynamic_inputs = dynamic_inputs  # real inputs rounded to int8 per row (an LM head), module docstring
        shape = (out_features, in_features) if dynamic_inputs else (in_features, out_features)
        self.register_buffer("qweight", torch.zeros(shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features), requires_grad=False) if bias else None
        self._derived = {}  # tensors derived from the buffers (`_kept`): Q·1 for offsets, s·u per unit

    @classmethod
    def from_linear(cls, linear: nn.Linear, dynamic_inputs: bool = False) -> Int8Linear:
        """Round ``linear``'s weight to int8 per output row: W ≈ s ⊙ Q, |W − s ⊙ Q| ≤ s/2 = max|W_row| / 254."""
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(1) / 127
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        module = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                     dynamic_inputs=dynamic_inputs)  # fmt: skip
        module.to(linear.weight.device)
        module.quantized_t().copy_(torch.round(weight / scale[:, None]).clamp_(-127, 127).t())
        module.weight_scale.copy_(scale)
        if linear.bias is not None:
            module.bias.data.copy_(linear.bias.detach())
        return module

    def dequantized_weight(self) -> torch.Tensor:
        """s ⊙ Q as an fp32 ``(out, in)`` matrix: the weight this layer computes with."""
        return self.quantized_t().t().float() * self.weight_scale[:, None]

    def quantized_t(self) -> torch.Tensor:
        """Qᵀ ``(in, out)``: ``qweight`` itself, or a view of it for a layer with ``dynamic_inputs`` (an LM head),
        which stores Q ``(out, in)``: its dense int8 product was 1.8x faster so (one row against 50272 × 768), and
        a tied embedding reads a token's row in one piece."""
        return self.qweight.t() if self.dynamic_inputs else self.qweight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Real-valued ``x``: x Qᵀ in x's dtype (int8 values are exact in it), then ⊙ s and + b. With
        ``dynamic_inputs``, x is first rounded to int8 per row (scale max|x_row| / 127) and the product is an int32
        sum (an int8 ANN's dynamic quantization); a gradient then passes straight through the rounding."""
        needs_grad = torch.is_grad_enabled() and x.requires_grad
        if not self.dynamic_inputs or needs_grad:  # contiguous x: the GEMM's rounding does not depend on its strides
            output = F.linear(x.contiguous(), self.quantized_t().t().to(x.dtype)) * self.weight_scale.to(x.dtype)
        if self.dynamic_inputs:
            rounded = self._rounded_input_product(x.detach()).to(x.dtype)
            output = rounded + (output - output.detach()) if needs_grad else rounded
        return output if self.bias is None else output + self.bias.to(x.dtype)

    def _rounded_input_product(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).float()
        row_scale = flat.abs().amax(1, keepdim=True) / 127
        # an all-zero row divides by 1; a non-finite row keeps its NaN/inf scale, which makes its outputs non-finite
        row_scale = torch.where(row_scale == 0, torch.ones_like(row_scale), row_scale)
        counts = torch.nan_to_num(torch.round(flat / row_scale)).to(torch.int8)
        output = int8_matrix_rows(counts, self.qweight, row_scale, self.weight_scale)  # few rows: the same, faster
        if output is None:
            output = torch._int_mm(counts, self.quantized_t()).float().mul_(row_scale).mul_(self.weight_scale)
        return output.view(*x.shape[:-1], self.out_features)

    def stored_tensors(self) -> tuple:
        """``(qweight, weight_scale)`` and the bias if any, read from the module's tables directly (decoding asks
        for them at every token)."""
        bias = self._parameters.get("bias")
        buffers = self._buffers
        stored = (buffers["qweight"], buffers["weight_scale"])
        return stored if bias is None else (*stored, bias)

    def row_sums(self) -> torch.Tensor:
        """Σ_in Q as int32 ``(out,)`` (exact), kept until ``qweight`` changes (in place or replaced)."""
        return self._kept("row_sums", self.qweight, None, lambda: self.quantized_t().sum(0, dtype=torch.int32))

    def offset_shift(self, offset) -> torch.Tensor:
        """offset · (s ⊙ Q·1) ``(out,)``: what inputs sitting at a neuron's offset add to every output."""
        return self.weight_scale * self.row_sums().float() * offset

    def count_scale(self, unit: float) -> torch.Tensor:
        """s · u ``(out,)``: what one count of ``unit`` adds per int8 step, kept until ``weight_scale`` or the unit
        changes (decoding asks for it once per layer and token)."""
        scale = self.weight_scale
        return self._kept("count_scale", scale, unit, lambda: scale * unit if unit != 1 else scale)

    def _kept(self, name: str, source: torch.Tensor, key, build):
        """``build()``, kept until ``source`` is replaced or changed in place (its version) or ``key`` changes."""
        kept = self._derived.get(name)
        if kept is None or kept[0] is not source or kept[1] != source._version or kept[2] != key:
            kept = self._derived[name] = (source, source._version, key, build())
        return kept[3]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, int8"


class Int8TiedEmbedding(nn.Module):
    """Token embeddings read from an int8 LM head's table (row v of Q, times its scale): a tied
    model keeps one int8 copy. Holds no tensors of its own; the head is referenced, not registered, so the table
    is saved once, under the head's name."""

    def __init__(self, head: Int8Linear, padding_idx: int | None = None):
        super().__init__()
        self._head = (head,)  # a tuple: not a submodule
        self.num_embeddings, self.embedding_dim, self.padding_idx = head.out_features, head.in_features, padding_idx

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        head = self._head[0]
        flat = input_ids.reshape(-1)
        table = head.quantized_t().t()  # (vocabulary, width)
        rows = table.index_select(0, flat).float() * head.weight_scale.index_select(0, flat)[:, None]
        return rows.view(*input_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8, read from the LM head's table"


def selected_inputs(counts: torch.Tensor) -> torch.Tensor | None:
    """The inputs (columns of int8 ``counts`` ``(R, in)``) that some row's spikes select, when a product should read
    only their weight rows: at most `GATHER_MAX_ROWS` rows selecting at most `GATHER_MAX_FRACTION` of the inputs
    (decoding); else `None`, for the dense int8 product."""
    rows, in_features = counts.shape
    if rows > GATHER_MAX_ROWS or counts.device.type != "cpu":
        return None
    columns = (counts.view(-1) if rows == 1 else counts.any(0)).nonzero().view(-1)
    return columns if columns.numel() <= GATHER_MAX_FRACTION * in_features else None


def int8_product(counts: torch.Tensor, qweight: torch.Tensor, columns=None, selected=None) -> torch.Tensor:
    """``counts @ qweight`` exactly, as int32, for int8 ``counts`` ``(R, in)`` and ``qweight`` ``(in, out)``: reading
    only the rows ``columns`` of ``qweight`` if given (`selected_inputs`; ``selected``: those columns of ``counts``,
    if already taken), a quarter of the bytes of fp32 rows; else the whole int8 matrix."""
    if columns is None:
        return torch._int_mm(counts, qweight)
    if columns.numel() == 0:
        return counts.new_zeros(counts.shape[0], qweight.shape[1], dtype=torch.int32)
    selected = counts.index_select(1, columns) if selected is None else selected
    return torch._int_mm(selected, qweight.index_select(0, columns))


def _integer_counts(spikes: torch.Tensor, coding, layers) -> torch.Tensor | None:
    """The spike counts k of ``spikes`` (values u·k + offset, binary virtual steps summed) in the spikes' dtype, or
    `None` for the real-valued path: where the values are not such counts, where a gradient must flow (to the spikes
    or a bias), or where an integer neuron fed NaN/inf emitted non-finite values (no int8 count holds them; the
    real-valued product makes exactly those rows non-finite, as the fp32 model does)."""
    unit = coding.unit
    if unit is None or _gradient_flows(spikes, layers):
        return None
    if coding.in_binary_mode:  # the virtual steps summed: the same counts as integer mode
        return binary_to_integer(spikes, coding.max)
    above = spikes - coding.offset if coding.has_offset else spikes
    if not coding.binary and not math.isfinite(above.sum().item()):  # 0/1 spikes are always finite
        return None
    return above if unit == 1 else torch.round(above / unit)


def _gradient_flows(spikes: torch.Tensor, layers) -> bool:
    """Whether autograd must reach the spikes or a bias (the integer paths compute without gradients)."""
    trainable = [spikes] + [layer.bias for layer in layers if layer.bias is not None]
    return torch.is_grad_enabled() and any(t.requires_grad for t in trainable)


def int8_linears_on_spikes(layers, spikes: torch.Tensor, neuron) -> list[torch.Tensor]:
    """The `Int8Linear` ``layers`` applied to what ``neuron`` emitted (any spike mode), each ``(T, ..., out)``:
    exact int32 count sums when the neuron's values are integer counts of one unit up to 127 and no gradient is
    needed (the counts and the inputs they select found once for all the layers), else the real-valued
    `Int8Linear.forward` on the values."""
    coding = coding_of(neuron)
    outputs = _native_products(layers, spikes, coding)
    if outputs is not None:
        return outputs
    counts = _integer_counts(spikes, coding, layers)
    if counts is None:
        values = coding.values(spikes)
        return [layer(values) for layer in layers]
    flat = counts.reshape(-1, layers[0].in_features).to(torch.int8)
    columns = selected_inputs(flat)
    selected = None if columns is None or columns.numel() == 0 else flat.index_select(1, columns)
    rows_read = flat.shape[1] if columns is None else columns.numel()
    outputs = []
    for layer in layers:
        sums = int8_product(flat, layer.quantized_t(), columns, selected)
        for recorder in active_recorders():
            recorder.weight_read("int8" if columns is None else "gathered", 1, rows_read * layer.out_features)
        output = torch.mul(sums, layer.count_scale(coding.unit))  # int32 · fp32 → fp32 in one pass
        if coding.has_offset:  # the silent inputs' constant: offset · (s ⊙ Q·1)
            output += layer.offset_shift(coding.offset)
        if layer.bias is not None:
            output += layer.bias
        outputs.append(output.view(*counts.shape[:-1], layer.out_features))
    return outputs


def _native_products(layers, spikes: torch.Tensor, coding) -> list[torch.Tensor] | None:
    """`int8_linears_on_spikes` through the native kernels (`spiking_lm.nn.native`) for at most `NATIVE_MAX_ROWS`
    rows of fp32 counts on the CPU without autograd: the same fp32 results, bit for bit; `None` where they do not
    apply (the torch path then runs, and takes the real-valued path for values that are not counts)."""
    unit = coding.unit
    if unit is None or spikes.device.type != "cpu" or spikes.dtype != torch.float32 or _gradient_flows(spikes, layers):
        return None
    in_features = layers[0].in_features
    rows = spikes.numel() // in_features // (coding.max if coding.in_binary_mode else 1)
    if rows > NATIVE_MAX_ROWS or native_library() is None:
        return None
    offset = float(coding.offset) if coding.has_offset else None
    plan = product_plan(layers, unit, offset)
    if plan is None:
        return None
    if coding.in_binary_mode:  # the virtual steps summed: the same counts as integer mode
        values, offset, count_unit = binary_to_integer(spikes, coding.max), 0.0, 1.0
    else:
        values, offset, count_unit = spikes, offset or 0.0, unit
    found = spike_products(values.reshape(rows, in_features).contiguous(), plan, offset, count_unit)
    if found is None:  # not finite, or not int8 counts: the torch path decides
        return None
    outputs, selected = found
    for recorder in active_recorders():
        for layer in layers:
            recorder.weight_read("gathered", 1, selected * layer.out_features)
    return [output.view(*values.shape[:-1], output.shape[-1]) for output in outputs]


def product_plan(layers, unit: float, offset: float | None) -> ProductPlan | None:
    """The `ProductPlan` of ``layers`` for spike counts of ``unit`` above ``offset`` (scales s·u, shifts
    offset · (s ⊙ Q·1) unless ``offset`` is `None`, biases), kept on the first layer until one of their tensors
    is replaced or changed in place; `None` where the kernel cannot read them (fp32 scales and biases, contiguous
    weights)."""
    tensors = [t for layer in layers for t in layer.stored_tensors()]
    kept = layers[0]._derived.get("plan")
    if kept is not None and kept[0] == (unit, offset, len(tensors)) and all(map(_unchanged, kept[1], tensors)):
        return kept[2]
    plan = None
    if all(layer.weight_scale.dtype == torch.float32 and (layer.bias is None or layer.bias.dtype == torch.float32)
           and layer.quantized_t().is_contiguous() for layer in layers):  # fmt: skip
        shifts = [None if offset is None else layer.offset_shift(offset) for layer in layers]
        scales = [layer.count_scale(unit) for layer in layers]
        plan = ProductPlan([layer.quantized_t() for layer in layers], scales, shifts, [layer.bias for layer in layers])
    layers[0]._derived["plan"] = ((unit, offset, len(tensors)), [(t, t._version) for t in tensors], plan)
    return plan


def _unchanged(kept: tuple, tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is the kept ``(tensor, version)``'s tensor, unchanged since."""
    return kept[0] is tensor and kept[1] == tensor._version


def int8_on_spikes(layer: Int8Linear, spikes: torch.Tensor, neuron) -> torch.Tensor:
    """`int8_linears_on_spikes` for one layer."""
    return int8_linears_on_spikes([layer], spikes, neuron)[0]


class _SpikeFedLinears(OperationRecorder):
    """Collects the Linears that a neuron's spikes feed during one forward pass."""

    observes_spikes = False

    def __init__(self):
        self.linears = []

    def spike_fed_linear(self, linear, spikes, neuron) -> None:
        if neuron is not None and isinstance(linear, (nn.Linear, Int8Linear)) and linear not in self.linears:
            self.linears.append(linear)


def quantize_weights(model, scheme: str = "int8", lm_head: bool = False):
    """Store every Linear of ``model``'s blocks that spikes feed, and SFSA's output projections (`_context_fed`), as
    an `Int8Linear` (module docstring); records ``weight_quantization`` and ``quantized_modules`` (names relative to
    the blocks) in the config. ``lm_head``:
    the LM head too, with int8-rounded inputs (``quantized_lm_head``: ``"int8"``, or ``"int8-shared"`` when the
    token embeddings were tied to it and now read the same int8 table). Returns the model."""
    if scheme not in WEIGHT_QUANTIZATIONS:
        raise ValueError(f"weight quantization must be one of {WEIGHT_QUANTIZATIONS}, got {scheme!r}")
    if getattr(model.config, "weight_quantization", None) is not None:
        raise ValueError(f"the weights are already quantized ({model.config.weight_quantization}); load the fp32 "
                         "model again to quantize it differently")  # fmt: skip
    blocks = model.spiking_blocks()
    probe = _SpikeFedLinears()
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), recording(probe):
            model(input_ids=torch.full((1, 2), 1, dtype=torch.long, device=model.device))
    finally:
        model.train(training)
    names = {module: name for name, module in blocks.named_modules()}
    quantized = [names[linear] for linear in probe.linears + _context_fed(blocks) if linear in names]
    if not quantized:
        raise ValueError(f"{type(model).__name__} has no Linear fed by spikes in its blocks: nothing to quantize")
    for name in quantized:
        parent, _, child = name.rpartition(".")
        owner = blocks.get_submodule(parent) if parent else blocks
        setattr(owner, child, Int8Linear.from_linear(getattr(owner, child)).train(owner.training))
    if lm_head:
        _quantize_head(model)
    model.config.weight_quantization = scheme
    model.config.quantized_modules = sorted(quantized)
    return model


def _context_fed(blocks: nn.Module) -> list[nn.Linear]:
    """The output projections of softmax-free attention (SFSA), fed integer counts of spikes A_s meeting spikes of
    V (times a constant): an int8 weight multiplies them exactly too (`int8_on_context`)."""
    attentions = (m for m in blocks.modules() if getattr(m, "kind", None) == "sfsa" and hasattr(m, "context_unit"))
    return [linear for m in attentions if isinstance(linear := m.output_projection(), nn.Linear)]


def _quantize_head(model) -> None:
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no Linear LM head to quantize (lm_head=True)")
    tied = isinstance(embeddings, nn.Embedding) and embeddings.weight is head.weight
    quantized = Int8Linear.from_linear(head, dynamic_inputs=True).train(head.training)
    model.set_output_embeddings(quantized)
    if tied:  # one int8 table for both; transformers must not tie the fp32 weights again on load
        model.set_input_embeddings(Int8TiedEmbedding(quantized, embeddings.padding_idx).train(embeddings.training))
        model.config.tie_word_embeddings = False
    model.config.quantized_lm_head = "int8-shared" if tied else "int8"


def apply_weight_quantization(model) -> None:
    """Replace the Linears the config names (``quantized_modules``) with empty `Int8Linear` modules of the same
    shape, for `from_pretrained` to fill; a no-op for an unquantized model or ones already replaced."""
    config = model.config
    if getattr(config, "weight_quantization", None) is None:
        return
    try:
        blocks = model.spiking_blocks()
    except AttributeError:  # a part nested in the model (BiSpikCLM's decoder): the model's own post_init applies it
        return
    for name in config.quantized_modules:
        parent, _, child = name.rpartition(".")
        owner = blocks.get_submodule(parent) if parent else blocks
        _replace_empty(owner, child)
    head_scheme = getattr(config, "quantized_lm_head", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head_scheme is not None and head is not None:
        if not isinstance(head, Int8Linear):
            empty = Int8Linear(head.in_features, head.out_features, head.bias is not None, dynamic_inputs=True)
            model.set_output_embeddings(empty.to(head.weight.device).train(head.training))
            head = empty
        if head_scheme == "int8-shared" and not isinstance(model.get_input_embeddings(), Int8TiedEmbedding):
            model.set_input_embeddings(Int8TiedEmbedding(head, model.get_input_embeddings().padding_idx))


def _replace_empty(owner: nn.Module, child: str) -> None:
    linear = getattr(owner, child)
    if not isinstance(linear, Int8Linear):
        replacement = Int8Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        setattr(owner, child, replacement.to(linear.weight.device).train(linear.training))
