"""The README's first command, at toy size: the whole pipeline end to end."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_quickstart_smoke_writes_a_loadable_hub_folder(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "spiking_lm.cli", "quickstart", "--smoke", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["teacher_perplexity"] > 1 and results["student_perplexity"] > 1
    # the student learned something: far below a uniform guess over the 512-token vocabulary
    assert results["student_perplexity"] < 512 / 2
    card = (tmp_path / "model" / "README.md").read_text()
    assert str(results["student_perplexity"]) in card and "trust_remote_code=True" in card
    # the paper's model by default, its energy and firing rates beside the perplexities
    assert (results["settings"]["neuron_type"], results["settings"]["train_matmul_dtype"]) == ("lif", "bfloat16")
    energy = results["energy"]
    assert energy["convention"] == "paper" and energy["ratio"] > 0 and 0 < energy["firing_rate"] < 1
    assert f"**{energy['ratio']}** (paper convention)" in card and "layer 0" in card
    assert "seeded temperature sampling" in card
    recorded = json.loads((tmp_path / "model" / "results.json").read_text())["evaluations"]["perplexity"]
    assert recorded["scores"]["perplexity"] == results["student_perplexity"]
    assert recorded["energy"]["convention"] == "paper"
    from spiking_lm.publishing.cards import render_card

    regenerated = render_card(tmp_path / "model")  # what `spiking-lm card` / `push` write: the scores survive
    assert f"| {results['student_perplexity']} |" in regenerated and "paper convention" in regenerated

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import spiking_lm  # noqa: F401 - registers the architectures with the Auto classes, as the card says

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    output = model.generate(**tokenizer("ROMEO.\n", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert output.shape[1] > 3


@pytest.mark.slow
def test_the_quickstart_teacher_feeds_the_quickstart_recipe(tmp_path):
    """README's tour: after the quickstart, `spiking-lm distill recipes/quickstart.yaml` distills from the teacher
    it saved (outputs/quickstart/teacher, relative to where the commands run)."""
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    command = [sys.executable, "-m", "spiking_lm.cli"]
    quickstart = subprocess.run([*command, "quickstart", "--smoke"], cwd=tmp_path, capture_output=True, text=True,
                                timeout=600)  # fmt: skip
    assert quickstart.returncode == 0, quickstart.stderr[-3000:]
    assert (tmp_path / "outputs/quickstart/teacher/config.json").is_file()
    overrides = ["--training.max_steps", "2", "--training.logging_steps", "1", "--data.block_size", "32"]
    distill = subprocess.run([*command, "distill", str(recipe), *overrides], cwd=tmp_path, capture_output=True,
                             text=True, timeout=600)  # fmt: skip
    assert distill.returncode == 0, distill.stderr[-3000:]
    assert (tmp_path / "outputs/quickstart-distill/final/model.safetensors").is_file()
