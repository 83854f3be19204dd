"""The real distributed engine: `accelerate launch` with two processes over gloo on this CPU machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_ddp_distillation_lowers_the_loss_and_saves_a_loadable_student(tmp_path, teacher_folder):
    teacher = teacher_folder
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"teacher: {teacher}\nstudent: {{architecture: bispikclm, time_steps: 2}}\n"
        f"data: {{source: {teacher / 'corpus.txt'}, block_size: 32}}\n"
        f"training: {{output_dir: {tmp_path / 'run'}, per_device_train_batch_size: 4, max_steps: 16, "
        "learning_rate: 3.0e-3, logging_steps: 2, save_steps: 16, report_to: none, use_cpu: true, "
        "disable_tqdm: true}\n"
    )
    config_file = str(REPO / "recipes/accelerate/cpu_ddp.yaml")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file]
    launch += ["-m", "spiking_lm.cli", "distill", str(recipe)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[rank1]" in result.stderr  # two processes really ran
    state = json.loads((tmp_path / "run" / "checkpoint-16" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) >= 4 and losses[-1] < losses[0]
    assert result.stdout.count("saved the student") == 1
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert student.config.model_type == "bispikclm"
