"""The defaults docs/design.md documents as decisions, pinned: changing one must be a deliberate change here."""

import spiking_lm


def test_the_documented_default_decisions_hold():
    common = spiking_lm.WDSpikingformerConfig()
    assert (common.norm_type, common.pre_neuron_norm, common.wta_mode, common.wta_temperature) == (
        "layernorm", True, "hard", 1.0,
    )  # fmt: skip
    assert common.position_embedding_type == "learned"  # rotary embeddings would destroy spikes
    assert (common.neuron_type, common.time_steps, common.spike_max) == ("nilif", 1, 4)
    bispik = spiking_lm.BiSpikCLMConfig()
    assert (bispik.neuron_type, bispik.time_steps, bispik.attention_type) == ("lif", 4, "sfsa")
    assert (bispik.attn_threshold, bispik.attn_score_scale, bispik.sfsa_output_scale) == (0.25, "sqrt_d", "sqrt_d")
    assert (bispik.beta, bispik.v_threshold, bispik.surrogate) == (0.5, 1.0, "atan")
    assert bispik.train_matmul_dtype == "float32"
    encoder = spiking_lm.WESpikingformerConfig()
    assert (encoder.attention_type, encoder.neuron_type) == ("wssa", "nilif")
