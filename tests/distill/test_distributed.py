"""The real distributed engine: `accelerate launch` with two processes over gloo on this CPU machine, as DDP and
as DeepSpeed ZeRO-2 / ZeRO-3 (the launch configs shipped in recipes/accelerate/)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[2]
LAUNCHES = {
    "ddp": ("cpu_ddp.yaml", None),
    "zero2": ("deepspeed_zero2.yaml", 2),
    "zero3": ("deepspeed_zero3.yaml", 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_two_process_distillation_lowers_the_loss_and_saves_a_loadable_student(tmp_path, teacher_folder, launch):
    config_name, zero_stage = LAUNCHES[launch]
    if zero_stage is not None:
        pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed")
    teacher = teacher_folder
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"teacher: {teacher}\nstudent: {{architecture: bispikclm, time_steps: 2}}\n"
        f"data: {{source: {teacher / 'corpus.txt'}, block_size: 32}}\n"
        f"training: {{output_dir: {tmp_path / 'run'}, per_device_train_batch_size: 4, max_steps: 16, "
        "learning_rate: 3.0e-3, logging_steps: 2, save_steps: 16, report_to: none, disable_tqdm: true}\n"
    )  # no use_cpu: the documented launch command alone must give one distributed run
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    command += [str(REPO / "recipes/accelerate" / config_name), "--num_processes", "2"]
    command += ["-m", "spiking_lm.cli", "distill", str(recipe)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # run from outside the repository: the launch config names recipes/accelerate/*.json relatively
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    engine = "DDP" if zero_stage is None else f"DeepSpeed ZeRO-{zero_stage}"
    assert f"(trained with {engine}, 2 processes over gloo)" in result.stdout
    state = json.loads((tmp_path / "run" / "checkpoint-16" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) >= 4 and losses[-1] < losses[0]
    assert result.stdout.count("saved the student") == 1
    final = tmp_path / "run" / "final"
    assert not (final / "training_args.bin").exists()
    student, info = AutoModelForCausalLM.from_pretrained(final, output_loading_info=True)
    assert student.config.model_type == "bispikclm"
    assert not info["missing_keys"] and not info["mismatched_keys"]  # ZeRO-3 saved full, gathered weights
    teacher_model = AutoModelForCausalLM.from_pretrained(teacher)
    embeddings = student.get_input_embeddings().weight
    assert embeddings.shape == teacher_model.get_input_embeddings().weight.shape
    assert not torch.equal(embeddings, teacher_model.get_input_embeddings().weight)  # trained, not the copy


def test_a_launch_that_does_not_end_up_distributed_is_refused(monkeypatch):
    from transformers import TrainingArguments

    from spiking_lm.distributed import check_launched_world, configure_backend

    args = TrainingArguments(output_dir="x", use_cpu=True, report_to="none")  # one process, no process group
    monkeypatch.setenv("WORLD_SIZE", "2")  # what a launcher of two processes exports
    assert configure_backend({"output_dir": "x"})["use_cpu"] is True  # a CPU launch joins its processes
    assert configure_backend({"output_dir": "x", "use_cpu": False}) == {"output_dir": "x", "use_cpu": False}
    with pytest.raises(RuntimeError, match="launched as 2 processes, but training would run as 1"):
        check_launched_world(args)
    monkeypatch.setenv("WORLD_SIZE", "1")
    check_launched_world(args)
