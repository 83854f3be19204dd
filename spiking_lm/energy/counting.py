"""Operation counting and the energy estimate (docs/design.md, "Energy").

E = E_MAC · #MAC + E_AC · #AC, counted from the spikes one forward pass produced (hooks and the recorder
protocol), never from an assumed rate, under two named conventions that every report carries:

- ``paper`` (the default; how this paper family counts, comparable with published ratios): a layer fed real values
  counts MACs; a layer fed spikes counts ACs = firing rate × (virtual) time steps × its dense op count, i.e. its
  spikes × ``out`` for a Linear; a spike × spike product (Q·Kᵀ, A·V with spike A) counts ACs = firing rate of its
  first operand × its dense op count over the pairs the attention allows;
- ``measured``: spike × spike products count only the pairs of binary spikes that actually meet.

In both, products with real-valued weights (sparsemax) count MACs, every norm on real values counts 2 MACs per
normalized element (LayerNorm/RMSNorm cannot be folded into a neighbouring Linear; the spiking model runs them
T times), and neuron updates are reported separately, outside the ratio. The ANN baseline counts the same
attention pairs as the spiking model (the causal half for causal models) and its own norms. A W8 model's int8
Linears (`spiking_lm.nn.weight_quantization`: fed spikes, or SFSA's context of counts) add int8 weights into int32
sums: their ACs are counted apart (``int8_acs``) at the 32-bit integer add's energy, `E_INT_AC_PJ`.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..nn.neurons import SpikingNeuron
from ..nn.recording import OperationRecorder, recording
from ..nn.weight_quantization import Int8Linear

E_MAC_PJ = 4.6
"""Energy of one 32-bit floating-point multiply-accumulate in 45 nm CMOS, picojoules (Horowitz, ISSCC 2014),
the constant this paper family uses."""
E_AC_PJ = 0.9
"""Energy of one 32-bit floating-point add in 45 nm CMOS, picojoules (same source)."""
E_INT_AC_PJ = 0.1
"""Energy of one 32-bit integer add in 45 nm CMOS, picojoules (same table): what an accumulate costs in a W8 model
(`quantize_weights`), whose spikes add int8 weights into exact int32 sums."""
CONVENTIONS = ("paper", "measured")
NORM_MACS_PER_ELEMENT = 2
"""A norm on real values costs 2 MACs per normalized element (a centring/scaling multiply-add and the affine one)."""

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks)\.(\d+)(?:\.|$)")


def energy_mj(macs: float, acs: float, mac_pj: float = E_MAC_PJ, ac_pj: float = E_AC_PJ) -> float:
    """Energy in millijoules of ``macs`` multiply-accumulates and ``acs`` accumulates.

    The constants default to `E_MAC_PJ` / `E_AC_PJ`; pass others for another process node. Example:
    ``energy_mj(0.3473e9, 6.5175e9)`` ≈ 7.46 mJ.
    """
    if macs < 0 or acs < 0:
        raise ValueError(f"operation counts must be >= 0, got macs={macs}, acs={acs}")
    return (macs * mac_pj + acs * ac_pj) * 1e-9  # 1 pJ = 1e-9 mJ


@dataclass
class LayerOperations:
    """What one layer (a block, or a top-level module such as ``lm_head``) did in the counted pass."""

    name: str
    macs: int = 0
    acs: int = 0  # measured convention
    paper_acs: int = 0
    ann_macs: int = 0
    spikes: int = 0
    spike_slots: int = 0
    int8_acs: int = 0  # accumulates of int8 weights (W8 Linears), the same in both conventions
    neuron_updates: int = 0
    norm_elements: int = 0

    @property
    def firing_rate(self) -> float:
        """Spikes per neuron per (virtual) time step; NaN for a layer without neurons."""
        return self.spikes / self.spike_slots if self.spike_slots else float("nan")

    @property
    def norm_macs(self) -> int:
        return NORM_MACS_PER_ELEMENT * self.norm_elements

    def convention_acs(self, convention: str) -> int:
        return self.paper_acs if convention == "paper" else self.acs

    def add_accumulates(self, accumulates: int, int8: bool) -> None:
        """Accumulates of a Linear's weights: int8 ones into int32 sums (a W8 model's), else fp32 ACs."""
        if int8:
            self.int8_acs += accumulates
        else:
            self.acs, self.paper_acs = self.acs + accumulates, self.paper_acs + accumulates


@dataclass
class EnergyReport:
    """Operation counts and energy of one forward pass, per sequence and per token (see `to_dict`)."""

    layers: list[LayerOperations]
    sequences: int
    tokens: int
    ann_macs: int
    ann_baseline: str
    mac_pj: float = E_MAC_PJ
    ac_pj: float = E_AC_PJ
    convention: str = "paper"
    int_ac_pj: float = E_INT_AC_PJ

    def __post_init__(self):
        check_convention(self.convention)

    @property
    def macs(self) -> int:
        """MACs of the spiking model: real-valued products and norms (the same in both conventions)."""
        return sum(layer.macs + layer.norm_macs for layer in self.layers)

    @property
    def acs(self) -> int:
        """ACs of the spiking model under `convention`."""
        return self.acs_for(self.convention)

    def acs_for(self, convention: str) -> int:
        return sum(layer.convention_acs(check_convention(convention)) for layer in self.layers)

    @property
    def int8_acs(self) -> int:
        """Accumulates of int8 weights into int32 sums (W8 models), at `int_ac_pj` each."""
        return sum(layer.int8_acs for layer in self.layers)

    def energy_for(self, convention: str) -> float:
        int8 = energy_mj(0, self.int8_acs, ac_pj=self.int_ac_pj)
        return energy_mj(self.macs, self.acs_for(convention), self.mac_pj, self.ac_pj) + int8

    @property
    def snn_energy_mj(self) -> float:
        return self.energy_for(self.convention)

    @property
    def ann_energy_mj(self) -> float:
        return energy_mj(self.ann_macs, 0, self.mac_pj, self.ac_pj)

    @property
    def firing_rate(self) -> float:
        """Spikes per neuron per (virtual) time step over the whole model."""
        slots = sum(layer.spike_slots for layer in self.layers)
        return sum(layer.spikes for layer in self.layers) / slots if slots else float("nan")

    def to_dict(self) -> dict:
        """A JSON-ready dict: totals, per-sequence and per-token figures, constants and per-layer counts."""

        def scaled(count):
            return {
                "macs": self.macs / count,
                "acs": self.acs / count,
                "ann_macs": self.ann_macs / count,
                "snn_energy_mj": self.snn_energy_mj / count,
                "ann_energy_mj": self.ann_energy_mj / count,
            }

        def ratio_of(energy):
            return _json_float(energy / self.ann_energy_mj if self.ann_energy_mj else float("nan"))

        ratio = ratio_of(self.snn_energy_mj)
        layers = []
        for layer in self.layers:
            entry = asdict(layer)
            entry["macs"] = layer.macs + layer.norm_macs
            entry["acs"] = layer.convention_acs(self.convention)
            entry["measured_acs"] = layer.acs
            entry["firing_rate"] = _json_float(layer.firing_rate)
            int8 = energy_mj(0, layer.int8_acs, ac_pj=self.int_ac_pj)
            entry["snn_energy_mj"] = energy_mj(entry["macs"], entry["acs"], self.mac_pj, self.ac_pj) + int8
            layers.append(entry)
        conventions = {
            name: {"acs": self.acs_for(name), "snn_energy_mj": self.energy_for(name),
                   "ratio": ratio_of(self.energy_for(name))}
            for name in CONVENTIONS
        }  # fmt: skip
        return {
            "convention": self.convention,
            "conventions": conventions,
            "snn_energy_mj": self.snn_energy_mj,
            "ann_energy_mj": self.ann_energy_mj,
            "ratio": ratio,
            "macs": self.macs,
            "acs": self.acs,
            "int8_acs": self.int8_acs,
            "ann_macs": self.ann_macs,
            "ann_baseline": self.ann_baseline,
            "firing_rate": _json_float(self.firing_rate),
            "neuron_updates": sum(layer.neuron_updates for layer in self.layers),
            "norm_elements": sum(layer.norm_elements for layer in self.layers),
            "sequences": self.sequences,
            "tokens": self.tokens,
            "per_sequence": scaled(self.sequences),
            "per_token": scaled(self.tokens),
            "constants": {"mac_pj": self.mac_pj, "ac_pj": self.ac_pj, "int_ac_pj": self.int_ac_pj},
            "layers": layers,
        }


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    return convention


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else value


def _unit_counts(values: torch.Tensor, neuron) -> torch.Tensor:
    """Per-element binary spike counts of a neuron's output in its own units (0/1, 0..D_max, |±1|)."""
    if neuron is None:
        return values.abs()
    coding = neuron.coding
    return ((values - coding.offset) / coding.scale).abs()


class OperationCounter(OperationRecorder):
    """Context manager that counts the operations of the forward passes run inside it.

    Every `nn.Linear` (and `transformers`' GPT-2 ``Conv1D``) fed real values counts MACs; the spiking layers
    report spike-fed Linears and spiking attention through the recorder protocol (`spiking_lm.nn.recording`); neuron
    and norm hooks add firing rates and the separately reported norm/neuron work. While counting, norm + neuron
    fusion is off so that each neuron's own output is observed.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.names = {module: name for name, module in model.named_modules()}
        self.layers: dict[str, LayerOperations] = {}
        self._spike_fed: set[int] = set()
        self._pending_counts: torch.Tensor | None = None
        self._pending_rescale = False
        self._handles = []
        self.attention_pairs = 0  # (query, key) pairs one attention layer allows, summed over the batch

    def layer(self, module: nn.Module) -> LayerOperations:
        name = self.names.get(module, type(module).__name__)
        match = _LAYER_INDEX.search(name)
        key = f"layer {int(match.group(1))}" if match else name
        return self.layers.setdefault(key, LayerOperations(key))

    def __enter__(self):
        from transformers.pytorch_utils import Conv1D

        for module in self.model.modules():
            if isinstance(module, (nn.Linear, Conv1D, Int8Linear)):
                self._handles.append(module.register_forward_pre_hook(self._dense_linear))
            elif isinstance(module, SpikingNeuron):
                self._handles.append(module.register_forward_hook(self._neuron))
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                self._handles.append(module.register_forward_pre_hook(self._norm))
        self._recording = recording(self)
        self._recording.__enter__()
        return self

    def __exit__(self, *exc):
        self._recording.__exit__(None, None, None)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        return False

    # ---- hooks -------------------------------------------------------------------------------------------
    def _dense_linear(self, module, inputs):
        if id(module) in self._spike_fed:  # counted by `spike_fed_linear`
            self._spike_fed.discard(id(module))
            return
        plain = isinstance(module, (nn.Linear, Int8Linear))  # else Conv1D, whose weight is (in, out)
        in_features, out_features = (module.in_features, module.out_features) if plain else module.weight.shape
        rows = inputs[0].numel() // in_features
        layer = self.layer(module)
        layer.macs += rows * in_features * out_features
        layer.ann_macs += rows * in_features * out_features

    def _neuron(self, module, inputs, output):
        layer = self.layer(module)
        layer.spikes += int(module.count_spikes(output).round().item())
        layer.spike_slots += output.numel() * module.virtual_steps_per_output
        layer.neuron_updates += inputs[0].numel()

    def _norm(self, module, inputs):
        self.layer(module).norm_elements += inputs[0].numel()

    # ---- reported by the spiking layers ------------------------------------------------------------------
    def spike_fed_linear(self, linear: nn.Linear, spikes: torch.Tensor, neuron) -> None:
        self._spike_fed.add(id(linear))
        in_features, out_features = linear.in_features, linear.out_features
        rows = spikes.numel() // in_features
        layer = self.layer(linear)
        layer.ann_macs += rows // spikes.shape[0] * in_features * out_features  # once per token, as an ANN
        if neuron is not None:  # spikes x out: the paper's rate x (virtual) steps x dense ops, and what is measured
            accumulates = int(neuron.count_spikes(spikes).round().item()) * out_features
            layer.add_accumulates(accumulates, isinstance(linear, Int8Linear) and neuron.coding.unit is not None)
        elif self._pending_counts is not None and self._pending_counts.numel() == spikes.numel():
            # A softmax-free attention context: integer counts (spikes of A_s meeting spikes of V) times a
            # constant that folds into the weights; a per-query rescale costs one multiply per output.
            accumulates = int(self._pending_counts.sum().round().item()) * out_features
            layer.add_accumulates(accumulates, isinstance(linear, Int8Linear))  # W8: an int8 output projection
            if self._pending_rescale:
                layer.macs += rows * out_features
        else:
            layer.macs += rows * in_features * out_features
        self._pending_counts = None

    def spiking_attention(self, attention, query, key, value, weights, allowed) -> None:
        layer = self.layer(attention)
        q = _unit_counts(query, attention.q_neuron)
        k = _unit_counts(key, attention.k_neuron)
        v = _unit_counts(value, attention.v_neuron)
        head_dim, heads = q.shape[-1], q.shape[2]
        pairs = allowed.to(q.dtype)  # (B, 1, Lq, Lk)
        keys_per_query = pairs.sum(-1, keepdim=True)  # (B, 1, Lq, 1)
        # Q·Kᵀ: measured = spikes that meet; paper = Q's spikes x every allowed key's (virtual) steps
        layer.acs += int((torch.matmul(q, k.transpose(-1, -2)) * pairs).sum().round().item())
        query_spikes = q.sum(-1, keepdim=True)  # (T, B, H, Lq, 1)
        layer.paper_acs += int((query_spikes * keys_per_query).sum().round().item()) * attention.k_neuron.coding.max
        weights = weights.to(q.dtype) * pairs
        if torch.equal(weights, weights.round()):  # A holds spikes or integer counts: A·V adds rows of V
            context_counts = torch.matmul(weights.abs(), v)
            layer.acs += int(context_counts.sum().round().item())
            layer.paper_acs += int(weights.abs().sum().round().item()) * head_dim * attention.v_neuron.coding.max
        else:  # real-valued weights (sparsemax): a multiply per (nonzero weight, channel)
            context_counts = None
            layer.macs += int((weights != 0).sum().item()) * head_dim
        allowed_pairs = int(allowed.sum().item())
        self.attention_pairs = allowed_pairs
        layer.ann_macs += 2 * heads * allowed_pairs * head_dim  # QKᵀ and AV over the same pairs, once
        if attention.kind == "sfsa" and context_counts is not None:
            self._pending_counts = context_counts
            self._pending_rescale = attention.config.sfsa_output_scale != "sqrt_d"


def count_operations(model: nn.Module, input_ids: torch.Tensor, attention_mask=None, **kwargs) -> OperationCounter:
    """Run ``model`` once on ``input_ids`` (no gradient, eval mode kept as is) and return the filled counter."""
    with torch.no_grad(), OperationCounter(model) as counter:
        model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    return counter


def _ann_attention_macs(config, pairs: int) -> int:
    """QKᵀ and attention × V of a dense transformer over ``pairs`` allowed (query, key) pairs: 2·pairs·hidden per
    layer (not hooked: they are matmuls)."""
    return 2 * pairs * config.hidden_size * config.num_hidden_layers


def _standard_norm_macs(config, positions: int) -> int:
    """The norms of a same-shape pre-norm transformer: two per block and a final one, once per position."""
    return NORM_MACS_PER_ELEMENT * (2 * config.num_hidden_layers + 1) * positions * config.hidden_size


def estimate_energy(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    ann_baseline: nn.Module | None = None,
    mac_pj: float = E_MAC_PJ,
    ac_pj: float = E_AC_PJ,
    convention: str = "paper",
) -> EnergyReport:
    """Energy of one forward pass of a spiking ``model`` on ``input_ids``, against an ANN baseline.

    Args:
        model: a spiking_lm model (any architecture, neuron and spike mode).
        input_ids (`torch.LongTensor` of shape `(batch, length)`): the tokens to count on.
        attention_mask (*optional*): padding mask; tokens are counted from it.
        ann_baseline (*optional*): an HF ANN (e.g. the teacher) run on the same tokens and counted in MACs
            (its Linear layers and norms by hooks, its attention matmuls as 2·pairs·hidden per layer over the
            pairs the spiking model allows). Without it, the baseline is the same shape as ``model`` run densely
            once per token (every Linear and attention product a MAC, two norms per block and a final one).
        mac_pj / ac_pj: energy per MAC / AC in picojoules (defaults `E_MAC_PJ`, `E_AC_PJ`). The accumulates of a
            W8 model's int8 weights (``int8_acs``) cost `E_INT_AC_PJ` each, a 32-bit integer add.
        convention (`str`, *optional*, defaults to `"paper"`): the counting convention of the headline figures,
            ``"paper"`` or ``"measured"`` (module docstring); the report carries both.

    Returns:
        `EnergyReport`; ``report.to_dict()`` holds ``convention``, ``snn_energy_mj``, ``ann_energy_mj``,
        ``ratio``, MACs, ACs, both conventions' figures (``conventions``), per-sequence and per-token figures and
        per-layer firing rates and counts.
    """
    check_convention(convention)
    if input_ids.dim() != 2 or input_ids.numel() == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, length) tensor, got shape {tuple(input_ids.shape)}")
    if not hasattr(model, "spiking_neurons"):
        raise ValueError(f"estimate_energy needs a spiking_lm model, got {type(model).__name__} (no spiking neurons)")
    counter = count_operations(model, input_ids, attention_mask)
    tokens = int(attention_mask.sum()) if attention_mask is not None else input_ids.numel()
    layers = list(counter.layers.values())
    if ann_baseline is None:
        ann_macs = sum(layer.ann_macs for layer in layers)
        ann_macs += _standard_norm_macs(model.config, input_ids.numel())
        description = f"same shape as {type(model).__name__}, dense (MACs)"
    else:
        baseline = count_operations(ann_baseline, input_ids, attention_mask)
        ann_macs = sum(layer.macs + layer.norm_macs for layer in baseline.layers.values())
        ann_macs += _ann_attention_macs(ann_baseline.config, counter.attention_pairs)
        description = f"{type(ann_baseline).__name__} (MACs)"
    return EnergyReport(layers, input_ids.shape[0], tokens, ann_macs, description, mac_pj, ac_pj, convention)
