"""The trainers' shared base: `TrainingArguments(bf16=True)` is the one switch for bf16 spike GEMMs; checkpoints are
published whole, rotation never removes the last complete one, Ctrl-C saves and stops."""

import math
import os
import signal

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

import spiking_lm
from spiking_lm import training
from spiking_lm.data import BlockDataset
from spiking_lm.training import (
    COMPLETE_MARKER,
    STAGING,
    SpikingTrainer,
    last_complete_checkpoint,
    publish_folder,
)


def tiny_student(**overrides):
    config = spiking_lm.BiSpikCLMConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=32, time_steps=2,
                                        **overrides)  # fmt: skip
    torch.manual_seed(0)
    return spiking_lm.BiSpikCLMForCausalLM(config)


def arguments(tmp_path, **options):
    options = {"max_steps": 3, "save_strategy": "no", "report_to": "none", **options}
    return TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, logging_steps=1,
                             disable_tqdm=True, **options)  # fmt: skip


def data():
    blocks = torch.randint(3, 64, (12, 16), generator=torch.Generator().manual_seed(0))
    return BlockDataset(blocks)


def test_bf16_training_arguments_turn_on_the_bf16_spike_gemms(tmp_path):
    student = tiny_student()
    assert student.execution.train_matmul_dtype == "float32"
    trainer = SpikingTrainer(model=student, args=arguments(tmp_path, bf16=True), train_dataset=data())
    assert student.execution.train_matmul_dtype == "bfloat16" == student.config.train_matmul_dtype
    head_dtypes = []  # the forward also runs under bf16 autocast: what scripts/bench_models.py measures
    student.lm_head.register_forward_hook(lambda module, inputs, output: head_dtypes.append(output.dtype))
    trainer.train()
    assert head_dtypes == [torch.bfloat16] * 3
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)


def test_fp32_training_arguments_leave_the_models_own_setting(tmp_path):
    for dtype in ("float32", "bfloat16"):
        student = tiny_student(train_matmul_dtype=dtype)
        SpikingTrainer(model=student, args=arguments(tmp_path), train_dataset=data())
        assert student.execution.train_matmul_dtype == dtype


class Interrupt(TrainerCallback):
    """Sends this process SIGINT at the end of step ``at``: what Ctrl-C in a terminal does."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_saves_a_checkpoint_and_stops(tmp_path):
    # a terminal's Ctrl-C: a process started in the background by a shell begins with SIGINT ignored, which
    # training rightly leaves alone, so the test sets the interactive default first
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_saves_a_checkpoint_and_stops(tmp_path)
    finally:
        signal.signal(signal.SIGINT, outer)


def test_an_ignored_sigint_stays_ignored(tmp_path):
    outer = signal.signal(signal.SIGINT, signal.SIG_IGN)  # e.g. started with nohup or in the background
    try:
        trainer = SpikingTrainer(model=tiny_student(), args=arguments(tmp_path, max_steps=4), train_dataset=data(),
                                 callbacks=[Interrupt(at=2)])  # fmt: skip
        trainer.train()
        assert not trainer.interrupted and trainer.state.global_step == 4
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, outer)


def _ctrl_c_saves_a_checkpoint_and_stops(tmp_path):
    before = signal.getsignal(signal.SIGINT)
    trainer = SpikingTrainer(model=tiny_student(), args=arguments(tmp_path, max_steps=6), train_dataset=data(),
                             callbacks=[Interrupt(at=2)])  # fmt: skip
    trainer.train()
    assert trainer.interrupted and trainer.state.global_step == 2
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert signal.getsignal(signal.SIGINT) is before  # restored after training


def test_checkpoints_are_published_whole_and_rotation_keeps_the_last_complete_one(tmp_path, monkeypatch):
    args = arguments(tmp_path, max_steps=3, save_strategy="steps", save_steps=1, save_total_limit=1)
    trainer = SpikingTrainer(model=tiny_student(), args=args, train_dataset=data())
    trainer.train()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-3"]
    assert (tmp_path / "checkpoint-3" / COMPLETE_MARKER).exists()
    assert not (tmp_path / STAGING).exists()  # nothing left half-published

    # a run killed after writing checkpoint-5 but before publishing it: checkpoint-4 (the last complete one)
    # must survive its rotation (the Trainer used to rotate before the completion marker was written)
    calls = []

    def killed_on_second_publish(staged, target):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        publish_folder(staged, target)

    monkeypatch.setattr(training, "publish_folder", killed_on_second_publish)
    args = arguments(tmp_path, max_steps=6, save_strategy="steps", save_steps=1, save_total_limit=1)
    trainer = SpikingTrainer(model=tiny_student(), args=args, train_dataset=data())
    with pytest.raises(KeyboardInterrupt):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert not (tmp_path / "checkpoint-5").exists()
    spiking_lm.BiSpikCLMForCausalLM.from_pretrained(tmp_path / "checkpoint-4")  # whole and loadable


def test_publishing_replaces_a_folder_by_renames(tmp_path):
    target, staged = tmp_path / "final", tmp_path / "incoming"
    target.mkdir()
    (target / "results.json").write_text("old")
    staged.mkdir()
    (staged / "model.safetensors").write_text("new")
    publish_folder(staged, target)
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]  # no old results beside new weights
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]


def test_report_to_tensorboard_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    args = arguments(tmp_path, report_to="tensorboard")  # logs under output_dir/runs/
    trainer = SpikingTrainer(model=tiny_student(), args=args, train_dataset=data())
    trainer.train()
    events = list((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert events and sum(path.stat().st_size for path in events) > 0
