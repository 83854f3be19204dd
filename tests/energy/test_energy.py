"""Operation counts and energy (docs/design.md, "Energy"): exact hand counts, silent models, baselines, the report."""

import json
import math

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

import spiking_lm
from spiking_lm.energy import E_AC_PJ, E_MAC_PJ, energy_mj, estimate_energy
from spiking_lm.nn import SpikingNeuron
from spiking_lm.nn.recording import active_recorders

D, F, V, H = 8, 16, 11, 2  # hidden, intermediate, vocabulary, heads


def tiny(model_class, **overrides):
    config = model_class.config_class(vocab_size=V, hidden_size=D, num_hidden_layers=1, num_attention_heads=H,
                                      intermediate_size=F, max_position_embeddings=16, **overrides)  # fmt: skip
    torch.manual_seed(0)
    return model_class(config).eval()


def force_spikes(model, fill):
    """Make every neuron emit ``fill`` (1 = fire everywhere, 0 = silent), whatever its input."""
    for module in model.modules():
        if isinstance(module, SpikingNeuron):
            module.register_forward_hook(lambda module, inputs, output: torch.full_like(output, fill))


def test_energy_constants_reproduce_the_reference_figure():
    assert (E_MAC_PJ, E_AC_PJ) == (4.6, 0.9)
    assert energy_mj(0.3473e9, 6.5175e9) == pytest.approx(7.46333, rel=1e-9)
    assert energy_mj(1e9, 1e9, mac_pj=1.0, ac_pj=2.0) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="operation counts"):
        energy_mj(-1, 0)


def test_a_model_that_fires_everywhere_costs_exactly_the_hand_count():
    # BiSpikCLM, 1 layer, T=2, one sequence of L=3 tokens, every neuron forced to fire. Rows fed to each Linear:
    # T·L = 6. Spike-fed Linears cost (spikes = rows·in) × out ACs; QKᵀ costs one AC per (query, allowed key,
    # channel) pair of spikes: T·H·(1+2+3 causal pairs)·d; A·V the same; the SFSA context (counts) feeding
    # out_proj costs its counts × out. Only lm_head (fed the real-valued final norm, L rows) costs MACs.
    model = tiny(spiking_lm.BiSpikCLMForCausalLM, time_steps=2)
    force_spikes(model, 1.0)
    report = estimate_energy(model, torch.tensor([[1, 2, 3]]))
    rows, head_dim, causal_pairs = 2 * 3, D // H, 6
    qkv = 3 * rows * D * D
    qk = av = 2 * H * causal_pairs * head_dim
    out_proj = av * D
    mlp = rows * D * F + rows * F * D
    assert report.acs == qkv + qk + av + out_proj + mlp == 3648
    assert report.macs == 3 * D * V == 264
    # The dense same-shape ANN: every Linear once per token, QKᵀ and AV over all L² pairs per head.
    assert report.ann_macs == 3 * (4 * D * D + 2 * D * F + D * V) + 2 * H * 3 * 3 * head_dim == 1944
    assert report.snn_energy_mj == pytest.approx((264 * 4.6 + 3648 * 0.9) * 1e-9)
    layer = report.to_dict()["layers"][0]
    assert layer["name"] == "layer 0" and layer["firing_rate"] == 1.0
    # Neurons: block input, q, k, v (T·L·D each), attention (T·H·L·L), MLP input (T·L·D), MLP hidden (T·L·F).
    assert layer["spikes"] == layer["spike_slots"] == 5 * rows * D + 2 * H * 9 + rows * F


@pytest.mark.parametrize(
    "model_class",
    [spiking_lm.BiSpikCLMForCausalLM, spiking_lm.WDSpikingformerForCausalLM, spiking_lm.WESpikingformerForMaskedLM],
)
def test_a_silent_model_costs_only_its_real_valued_readout(model_class):
    model = tiny(model_class)
    force_spikes(model, 0.0)
    input_ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    report = estimate_energy(model, input_ids)
    readout = {  # the only layers fed real values: the heads after the final norm
        spiking_lm.BiSpikCLMForCausalLM: D * V,
        spiking_lm.WDSpikingformerForCausalLM: D * V,
        spiking_lm.WESpikingformerForMaskedLM: D * D + D * V,  # BERT's transform.dense, then the decoder
    }[model_class]
    assert report.acs == 0
    assert report.macs == input_ids.numel() * readout
    assert report.firing_rate == 0.0


def test_the_teacher_baseline_is_counted_in_macs_by_hand():
    config = OPTConfig(vocab_size=V, hidden_size=D, ffn_dim=F, num_hidden_layers=2, num_attention_heads=H,
                       max_position_embeddings=16, word_embed_proj_dim=D)  # fmt: skip
    teacher = OPTForCausalLM(config).eval()
    student = spiking_lm.BiSpikCLMForCausalLM.from_teacher(teacher, time_steps=2).eval()
    input_ids = torch.tensor([[1, 2, 3, 4, 5]])
    report = estimate_energy(student, input_ids, ann_baseline=teacher)
    per_token = 2 * (4 * D * D + 2 * D * F) + D * V
    assert report.ann_macs == 5 * per_token + 2 * 2 * 5 * 5 * D  # + QKᵀ and AV, 2·L²·D per layer
    assert report.ann_baseline == "OPTForCausalLM (MACs)"
    data = report.to_dict()
    assert data["ratio"] == pytest.approx(data["snn_energy_mj"] / data["ann_energy_mj"])


def test_counting_observes_without_changing_the_model():
    model = tiny(spiking_lm.WDSpikingformerForCausalLM, neuron_type="nilif")
    input_ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        before = model(input_ids).logits
    report = estimate_energy(model, input_ids)
    with torch.no_grad():
        after = model(input_ids).logits
    assert torch.equal(before, after)
    assert active_recorders() == ()
    assert all(not neuron.record_firing_rate for _, neuron in model.spiking_neurons())
    data = report.to_dict()
    json.dumps(data, allow_nan=False)
    for key in ("snn_energy_mj", "ann_energy_mj", "ratio", "macs", "acs", "per_token", "per_sequence", "layers"):
        assert key in data
    assert 0 < data["firing_rate"] < 1 and data["tokens"] == 6
    assert data["per_token"]["acs"] == pytest.approx(data["acs"] / 6)


def test_binary_spike_mode_counts_the_same_operations_as_integer_mode():
    model = tiny(spiking_lm.WDSpikingformerForCausalLM, neuron_type="nilif", spike_max=4)
    input_ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    integer = estimate_energy(model, input_ids).to_dict()
    binary = estimate_energy(model.set_spike_mode("binary"), input_ids).to_dict()
    assert binary["macs"] == integer["macs"] and binary["ann_macs"] == integer["ann_macs"]
    assert math.isclose(binary["acs"], integer["acs"], rel_tol=1e-6)
    assert math.isclose(binary["firing_rate"], integer["firing_rate"], rel_tol=1e-6)


def test_bad_input_is_rejected():
    model = tiny(spiking_lm.BiSpikCLMForCausalLM)
    with pytest.raises(ValueError, match="input_ids"):
        estimate_energy(model, torch.tensor([1, 2, 3]))
