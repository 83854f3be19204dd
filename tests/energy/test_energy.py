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


def force_spikes(model, fill, only=None):
    """Make every neuron (or those whose name ends with ``only``) emit ``fill`` (1 = fire everywhere, 0 = silent)."""
    for name, module in model.named_modules():
        if isinstance(module, SpikingNeuron) and (only is None or name.endswith(only)):
            module.register_forward_hook(lambda module, inputs, output: torch.full_like(output, fill))


def norm_elements(steps, positions, width=D, inner=F, once=1):
    """Elements the norms of one block normalize: seven of the model width (block input, Q, K, V, attention
    output, MLP input, MLP output) and one of the MLP's inner width, each over T steps; plus ``once`` norms of
    the readout (the final norm, and for WE its embedding and MLM-head LayerNorms), run once per position."""
    return steps * positions * (7 * width + inner) + once * positions * width


def test_energy_constants_reproduce_the_reference_figure():
    assert (E_MAC_PJ, E_AC_PJ) == (4.6, 0.9)
    assert energy_mj(0.3473e9, 6.5175e9) == pytest.approx(7.46333, rel=1e-9)
    assert energy_mj(1e9, 1e9, mac_pj=1.0, ac_pj=2.0) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="operation counts"):
        energy_mj(-1, 0)


# Spikingformer-8-512 on ImageNet (T = 4, 14 x 14 = 196 tokens, width 512, MLP 2048): the accumulate counts its
# published energy log prints for the Linears (1x1 convolutions) of its eight blocks, one row per block. Q, K and
# V read the same spikes and print the same count. (zhouchenlin2096/Spikingformer,
# energy_consumption_calculation/test_spikingformer-8-512_eg.log, "Info of Conv/Linear layers".)
SPIKINGFORMER_8_512_BLOCK_ACS = [
    # q/k/v (each),  proj_conv,      fc1_conv,       fc2_conv
    (3.62941169e07, 6.13242808e07, 2.20482576e08, 2.70491441e07),
    (6.94564082e07, 6.37503862e07, 2.71977241e08, 2.43828727e07),
    (7.03339749e07, 6.46986613e07, 2.86069781e08, 2.10542404e07),
    (7.07533763e07, 5.99013096e07, 2.85499925e08, 1.58668667e07),
    (7.05497085e07, 4.32200951e07, 2.96846249e08, 1.16866970e07),
    (7.38409652e07, 3.41198850e07, 2.96114600e08, 7.83468481e06),
    (7.03473378e07, 2.19994710e07, 2.65800898e08, 4.67945935e06),
    (6.52882326e07, 1.95155069e07, 2.46475020e08, 1.13243712e07),
]


def test_the_counter_reproduces_the_block_counts_spikingformer_prints():
    # The paper convention for a Linear fed spikes: (spikes) x (outputs) ACs, i.e. firing rate x T x dense ops.
    # Each printed count is an average over ImageNet's validation set (a fractional number of spikes per image);
    # fed the nearest whole number of spikes, the counter must land within half a spike's worth of it. The log's
    # counter also scales each bias add by the input's firing rate (dense ops T.N.(in + 1).out where a Linear
    # has a bias); this library adds a bias once per output whatever fires, so there the print is (in + 1) / in
    # of the spikes' ACs, and that factor is taken out before comparing.
    from spiking_lm.energy import OperationCounter
    from spiking_lm.nn import LIFNeuron
    from spiking_lm.nn.spike_linear import linear_on_spikes

    steps, tokens, width, inner = 4, 196, 512, 2048
    # (in, out, bias, how many such Linears per block): Q/K/V, proj_conv, fc1_conv, fc2_conv
    shapes = [(width, width, False, 3), (width, width, True, 1), (width, inner, True, 1), (inner, width, True, 1)]
    generator = torch.Generator().manual_seed(0)
    ours_total = printed_total = 0.0
    for block, printed_counts in enumerate(SPIKINGFORMER_8_512_BLOCK_ACS):
        for (in_features, out_features, bias, copies), printed in zip(shapes, printed_counts, strict=True):
            printed_spike_acs = printed * in_features / (in_features + bias)
            spikes_fired = round(printed_spike_acs / out_features)
            slots = steps * tokens * in_features
            spikes = torch.zeros(slots)
            spikes[torch.randperm(slots, generator=generator)[:spikes_fired]] = 1
            linear = torch.nn.Linear(in_features, out_features, bias=bias)
            model = torch.nn.ModuleDict({f"block{block}": linear})
            with torch.no_grad(), OperationCounter(model) as counter:
                linear_on_spikes(linear, spikes.view(steps, 1, tokens, in_features), LIFNeuron())
            (layer,) = counter.layers.values()
            ours = layer.convention_acs("paper")
            assert ours == spikes_fired * out_features
            assert abs(ours - printed_spike_acs) <= out_features / 2, (block, in_features, out_features)
            ours_total += copies * ours
            printed_total += copies * printed_spike_acs
    # All 48 Linears together: 4.24 G ACs of the log's 6.52 G total (the rest: its convolutional stem, which this
    # library does not build, and its attention products, which that log counts as Q·(KᵀV)).
    assert ours_total == pytest.approx(printed_total, rel=1e-6)
    assert ours_total == pytest.approx(4.237e9, rel=1e-3)


def test_a_model_that_fires_everywhere_costs_exactly_the_hand_count():
    # BiSpikCLM, 1 layer, T=2, one sequence of L=3 tokens, every neuron forced to fire. Rows fed to each Linear:
    # T·L = 6. Spike-fed Linears cost (spikes = rows·in) × out ACs; QKᵀ costs one AC per (query, allowed key,
    # channel) pair of spikes: T·H·(1+2+3 causal pairs)·d; A·V the same; the SFSA context (counts) feeding
    # out_proj costs its counts × out. Every spike meets, so both conventions count the same ACs. MACs: lm_head
    # (fed the real-valued final norm, L rows) and the norms, 2 per normalized element (T steps, once for the
    # final norm).
    model = tiny(spiking_lm.BiSpikCLMForCausalLM, time_steps=2)
    force_spikes(model, 1.0)
    report = estimate_energy(model, torch.tensor([[1, 2, 3]]))
    rows, head_dim, causal_pairs = 2 * 3, D // H, 6
    qkv = 3 * rows * D * D
    qk = av = 2 * H * causal_pairs * head_dim
    out_proj = av * D
    mlp = rows * D * F + rows * F * D
    assert report.convention == "paper"
    assert report.acs_for("paper") == report.acs_for("measured") == qkv + qk + av + out_proj + mlp == 3648
    assert report.macs == 3 * D * V + 2 * norm_elements(2, 3) == 264 + 912
    # The dense same-shape ANN: every Linear once per token, QKᵀ and AV over the same 6 causal pairs per head,
    # two norms per block and a final one.
    assert report.ann_macs == 3 * (4 * D * D + 2 * D * F + D * V) + 2 * H * 6 * head_dim + 2 * 3 * 3 * D == 2040
    assert report.snn_energy_mj == pytest.approx((1176 * 4.6 + 3648 * 0.9) * 1e-9)
    layer = report.to_dict()["layers"][0]
    assert layer["name"] == "layer 0" and layer["firing_rate"] == 1.0
    # Neurons: block input, q, k, v (T·L·D each), attention (T·H·L·L), MLP input (T·L·D), MLP hidden (T·L·F).
    assert layer["spikes"] == layer["spike_slots"] == 5 * rows * D + 2 * H * 9 + rows * F


def test_a_w8_model_counts_its_spike_fed_linears_as_integer_adds():
    # The model of the hand count above after quantize_weights("int8"): the Q/K/V and MLP Linears add int8 weights
    # and SFSA's out_proj (fed the integer counts A_s V) add int8 weights into int32 sums (E_INT_AC_PJ = 0.1 pJ,
    # the 45 nm 32-bit integer add); the attention products stay fp32 accumulates, the head and norms MACs.
    from spiking_lm.energy import E_INT_AC_PJ

    model = tiny(spiking_lm.BiSpikCLMForCausalLM, time_steps=2).quantize_weights()
    force_spikes(model, 1.0)
    report = estimate_energy(model, torch.tensor([[1, 2, 3]]))
    rows, head_dim, causal_pairs = 2 * 3, D // H, 6
    qkv, mlp = 3 * rows * D * D, rows * D * F + rows * F * D
    qk = av = 2 * H * causal_pairs * head_dim
    assert E_INT_AC_PJ == 0.1
    assert report.int8_acs == qkv + av * D + mlp == 3456
    assert report.acs_for("paper") == report.acs_for("measured") == qk + av == 192
    assert report.snn_energy_mj == pytest.approx((1176 * 4.6 + 192 * 0.9 + 3456 * 0.1) * 1e-9)
    figures = report.to_dict()
    assert figures["int8_acs"] == 3456 and figures["constants"]["int_ac_pj"] == 0.1
    assert figures["conventions"]["paper"]["snn_energy_mj"] == pytest.approx(report.snn_energy_mj)


@pytest.mark.parametrize(
    "model_class",
    [spiking_lm.BiSpikCLMForCausalLM, spiking_lm.WDSpikingformerForCausalLM, spiking_lm.WESpikingformerForMaskedLM],
)
def test_a_silent_model_costs_only_its_real_valued_readout_and_norms(model_class):
    model = tiny(model_class)
    force_spikes(model, 0.0)
    input_ids = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    report = estimate_energy(model, input_ids)
    readout = {  # the only layers fed real values: the heads after the final norm
        spiking_lm.BiSpikCLMForCausalLM: D * V,
        spiking_lm.WDSpikingformerForCausalLM: D * V,
        spiking_lm.WESpikingformerForMaskedLM: D * D + D * V,  # BERT's transform.dense, then the decoder
    }[model_class]
    once = 3 if model_class is spiking_lm.WESpikingformerForMaskedLM else 1
    norms = norm_elements(model.config.time_steps, input_ids.numel(), once=once)
    assert report.acs_for("measured") == 0
    # `paper` still counts A·V of winner-take-all attention: every query selects one key (a 0/1 first operand at
    # rate 1/L), whose row of V it adds: d values of D_v virtual steps each. SFSA's attention neuron is silent.
    config = model.config
    selected = config.time_steps * input_ids.numel() * H * (D // H) * config.spike_max
    assert report.acs_for("paper") == (0 if config.attention_type == "sfsa" else selected)
    assert report.macs == input_ids.numel() * readout + 2 * norms
    assert report.firing_rate == 0.0


def test_the_two_conventions_differ_by_the_spikes_that_do_not_meet():
    # Every neuron fires except K's: no query spike meets a key spike, so `measured` counts no Q·Kᵀ work while
    # `paper` counts Q's firing rate (1) times Q·Kᵀ's dense operations over the 6 causal pairs: T·H·6·d.
    model = tiny(spiking_lm.BiSpikCLMForCausalLM, time_steps=2)
    force_spikes(model, 1.0)
    force_spikes(model, 0.0, only="k_neuron")
    report = estimate_energy(model, torch.tensor([[1, 2, 3]]), convention="measured")
    assert report.acs_for("paper") - report.acs_for("measured") == 2 * H * 6 * (D // H) == 96
    data = report.to_dict()
    assert data["convention"] == "measured" and data["acs"] == report.acs_for("measured")
    assert data["conventions"]["paper"]["snn_energy_mj"] > data["conventions"]["measured"]["snn_energy_mj"]
    with pytest.raises(ValueError, match=r"convention must be one of \('paper', 'measured'\), got 'ideal'"):
        estimate_energy(model, torch.tensor([[1, 2, 3]]), convention="ideal")


def test_the_teacher_baseline_is_counted_in_macs_by_hand():
    config = OPTConfig(vocab_size=V, hidden_size=D, ffn_dim=F, num_hidden_layers=2, num_attention_heads=H,
                       max_position_embeddings=16, word_embed_proj_dim=D)  # fmt: skip
    teacher = OPTForCausalLM(config).eval()
    student = spiking_lm.BiSpikCLMForCausalLM.from_teacher(teacher, time_steps=2).eval()
    input_ids = torch.tensor([[1, 2, 3, 4, 5]])
    report = estimate_energy(student, input_ids, ann_baseline=teacher)
    per_token = 2 * (4 * D * D + 2 * D * F) + D * V
    teacher_norms = 2 * (2 * 2 + 1) * 5 * D  # two LayerNorms per OPT layer and the final one, 2 MACs an element
    # + QKᵀ and AV over the student's 15 causal pairs, 2·pairs·D per layer
    assert report.ann_macs == 5 * per_token + teacher_norms + 2 * 2 * 15 * D
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
