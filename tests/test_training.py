"""The trainers' shared base: `TrainingArguments(bf16=True)` is the one switch for bf16 spike GEMMs."""

import math

import torch
from transformers import TrainingArguments

import spiking_lm
from spiking_lm.data import BlockDataset
from spiking_lm.training import SpikingTrainer


def tiny_student(**overrides):
    config = spiking_lm.BiSpikCLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=32, time_steps=2,
                                        **overrides)  # fmt: skip
    torch.manual_seed(0)
    return spiking_lm.BiSpikCLMForCausalLM(config)


def arguments(tmp_path, **options):
    return TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3, report_to="none",
                             use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True,
                             **options)  # fmt: skip


def data():
    blocks = torch.randint(3, 64, (12, 16), generator=torch.Generator().manual_seed(0))
    return BlockDataset(blocks)


def test_bf16_training_arguments_turn_on_the_bf16_spike_gemms(tmp_path):
    student = tiny_student()
    assert student.execution.train_matmul_dtype == "float32"
    trainer = SpikingTrainer(model=student, args=arguments(tmp_path, bf16=True), train_dataset=data())
    assert student.execution.train_matmul_dtype == "bfloat16" == student.config.train_matmul_dtype
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)


def test_fp32_training_arguments_leave_the_models_own_setting(tmp_path):
    for dtype in ("float32", "bfloat16"):
        student = tiny_student(train_matmul_dtype=dtype)
        SpikingTrainer(model=student, args=arguments(tmp_path), train_dataset=data())
        assert student.execution.train_matmul_dtype == dtype
