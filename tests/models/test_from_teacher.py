"""Students built from tiny random HF teachers copy every weight whose key and shape match."""

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    OPTForSequenceClassification,
    Qwen2Config,
    Qwen2ForCausalLM,
)

import spiking_lm

SHAPE = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}


def teachers():
    yield "bert", BertForMaskedLM(BertConfig(**SHAPE, intermediate_size=37)), spiking_lm.WESpikingformerForMaskedLM
    llama = LlamaConfig(**SHAPE, intermediate_size=37, num_key_value_heads=4)
    yield "llama", LlamaForCausalLM(llama), spiking_lm.WDSpikingformerForCausalLM
    qwen = Qwen2Config(**SHAPE, intermediate_size=37, num_key_value_heads=4)
    yield "qwen2", Qwen2ForCausalLM(qwen), spiking_lm.WDSpikingformerForCausalLM
    opt = OPTConfig(**SHAPE, ffn_dim=37, word_embed_proj_dim=32, max_position_embeddings=64)
    yield "opt", OPTForCausalLM(opt), spiking_lm.BiSpikCLMForCausalLM
    opt_classifier = OPTConfig(**SHAPE, ffn_dim=37, word_embed_proj_dim=32, max_position_embeddings=64, num_labels=3)
    yield "opt-classifier", OPTForSequenceClassification(opt_classifier), spiking_lm.BiSpikCLMForSequenceClassification


# Every teacher tensor of these kinds has a student counterpart of the same name and shape.
MUST_COPY = {
    "bert": ["bert.embeddings.word_embeddings.weight", "bert.encoder.layer.1.attention.self.query.weight",
             "bert.encoder.layer.0.output.dense.weight", "cls.predictions.transform.dense.weight"],
    "llama": ["model.embed_tokens.weight", "model.layers.1.self_attn.o_proj.weight",
              "model.layers.0.mlp.up_proj.weight", "model.layers.0.input_layernorm.weight", "model.norm.weight",
              "lm_head.weight"],
    "qwen2": ["model.layers.0.self_attn.q_proj.bias", "model.layers.1.mlp.down_proj.weight"],
    "opt": ["model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight",
            "model.decoder.layers.0.self_attn.out_proj.weight", "model.decoder.layers.1.fc1.bias",
            "model.decoder.final_layer_norm.weight"],
    "opt-classifier": ["model.decoder.embed_tokens.weight", "model.decoder.layers.1.fc2.weight", "score.weight"],
}  # fmt: skip


@pytest.mark.parametrize(
    "family,teacher,student_class", list(teachers()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_student_copies_matching_weights(family, teacher, student_class):
    student, report = student_class.from_teacher(teacher, return_report=True, time_steps=2)
    assert student.config.hidden_size == 32 and student.config.num_hidden_layers == 2
    assert student.config.time_steps == 2  # overrides win
    assert student.config.vocab_size == teacher.config.vocab_size
    teacher_state = teacher.state_dict()
    student_state = student.state_dict()
    for key in MUST_COPY[family]:
        assert key in report["copied"], key
        assert torch.equal(student_state[key], teacher_state[key]), key
    for key in report["copied"]:
        assert torch.equal(student_state[key], teacher_state[key])
    # spiking-only parameters are reported, never silently invented from the teacher
    assert any("norm" in key for key in report["not_in_teacher"])
    assert set(report["copied"]).isdisjoint(report["not_in_teacher"])


def test_llama_teacher_gives_an_rmsnorm_student_and_gqa_mismatch_is_reported():
    gqa = LlamaForCausalLM(LlamaConfig(**SHAPE, intermediate_size=37, num_key_value_heads=2))
    student, report = spiking_lm.WDSpikingformerForCausalLM.from_teacher(gqa, return_report=True)
    assert student.config.norm_type == "rmsnorm"
    assert "model.layers.0.self_attn.k_proj.weight" in report["shape_mismatch"]
    assert "model.layers.0.self_attn.q_proj.weight" in report["copied"]


def test_teacher_without_required_field_is_a_clear_error():
    with pytest.raises(ValueError, match="has no 'ffn_dim', needed for the student's intermediate_size"):
        spiking_lm.BiSpikCLMForCausalLM.from_teacher(LlamaForCausalLM(LlamaConfig(**SHAPE, intermediate_size=37)))


def test_a_teacher_of_another_family_is_refused_instead_of_copying_nothing():
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(**SHAPE, intermediate_size=37))
    with pytest.raises(ValueError, match=r"none of the \d+ tensors of WDSpikingformerForCausalLM matches a tensor of "
                                         "BertForMaskedLM"):  # fmt: skip
        spiking_lm.WDSpikingformerForCausalLM.from_teacher(bert)


def test_opt_with_embedding_projection_is_rejected():
    opt = OPTForCausalLM(OPTConfig(**SHAPE, ffn_dim=37, word_embed_proj_dim=16))
    with pytest.raises(ValueError, match="word_embed_proj_dim=16 differs from hidden_size=32"):
        spiking_lm.BiSpikCLMForCausalLM.from_teacher(opt)
