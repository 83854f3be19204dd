"""Model cards from results.json: content, and a usage snippet that runs as written."""

import json
import re
import shutil
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM

from spiking_lm.cli import main
from spiking_lm.evaluation.results import record_training
from spiking_lm.publishing.cards import render_card


@pytest.fixture(scope="module")
def evaluated_folder(student_folder, teacher_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("carded") / "model"
    shutil.copytree(student_folder, folder)
    record_training(folder / "results.json", {"method": "SpAD distillation", "teacher": "facebook/opt-125m",
                                              "data": "HuggingFaceFW/fineweb-edu", "steps": 16})  # fmt: skip
    corpus = str(teacher_folder / "corpus.txt")
    assert main(["perplexity", str(folder), "--data", corpus, "--window", "32"]) == 0
    assert main(["energy", str(folder), "--data", corpus, "--sequences", "1", "--length", "16"]) == 0
    return folder


def test_card_holds_architecture_training_scores_energy_and_limitations(evaluated_folder):
    card = render_card(evaluated_folder, repo_id="someone/bispikclm-tiny")
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    assert "base_model: facebook/opt-125m" in card
    snippet = 'AutoModelForCausalLM.from_pretrained("someone/bispikclm-tiny", trust_remote_code=True)'
    for expected in ("**BiSpikCLM** (`bispikclm`)", "| time steps T | 2 |", "| neuron | `lif`",
                     "softmax-free spiking self-attention (SFSA)", "| teacher | facebook/opt-125m |",
                     "| data | HuggingFaceFW/fineweb-edu |", "| perplexity (", "E_MAC = 4.6 pJ and E_AC = 0.9 pJ",
                     "| this model (spiking) |", "SNN / ANN energy: **", "## Limitations",
                     snippet):  # fmt: skip
        assert expected in card, expected


def test_card_command_writes_a_readme_whose_snippet_runs_without_spiking_lm(evaluated_folder):
    assert main(["card", str(evaluated_folder)]) == 0
    card = (evaluated_folder / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    assert str(evaluated_folder.resolve()) in snippet
    blocked = "import sys; sys.modules['spiking_lm'] = None\n"  # the snippet must not need our package
    result = subprocess.run([sys.executable, "-c", blocked + snippet], capture_output=True, text=True, timeout=300,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()  # the decoded generation


def test_card_of_a_folder_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        render_card(tmp_path)


def test_nested_glue_scores_reach_the_card(student_folder, tmp_path):
    from spiking_lm.evaluation.results import record_evaluation

    folder = tmp_path / "model"
    shutil.copytree(student_folder, folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    scores = {"validation": {"accuracy": 0.8125, "f1": 0.75}, "validation_mismatched": {"accuracy": 0.5}}
    record_evaluation(folder / "results.json", model, str(folder), "glue/mnli", scores, None, {})
    card = render_card(folder)
    assert "No evaluation recorded yet" not in card
    for row in ("| glue/mnli | validation accuracy | 0.8125 |", "| glue/mnli | validation f1 | 0.75 |",
                "| glue/mnli | validation_mismatched accuracy | 0.5 |"):  # fmt: skip
        assert row in card, row


def test_results_files_carry_no_absolute_local_paths(student_folder, teacher_folder, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(student_folder, folder)
    corpus = teacher_folder / "corpus.txt"
    record_training(folder / "results.json", {"teacher": str(teacher_folder), "data": str(corpus)})
    assert main(["perplexity", str(folder.resolve()), "--data", str(corpus), "--window", "32"]) == 0
    text = (folder / "results.json").read_text()
    assert str(tmp_path) not in text and str(teacher_folder) not in text
    results = json.loads(text)
    assert results["training"] == {"teacher": teacher_folder.name, "data": "corpus.txt"}
    assert results["evaluations"]["perplexity"]["settings"]["data"] == "corpus.txt"
    assert results["model"]["name_or_path"] == "model"


def test_card_metadata_and_model_index_parse_with_huggingface_hub(evaluated_folder, tmp_path):
    from huggingface_hub import ModelCard

    from spiking_lm.evaluation.results import record_evaluation

    folder = tmp_path / "model"  # a copy: the shared folder keeps its own evaluations
    shutil.copytree(evaluated_folder, folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    record_evaluation(folder / "results.json", model, str(folder), "glue/sst2",
                      {"validation": {"accuracy": 0.75}}, None, {})  # fmt: skip
    record_evaluation(folder / "results.json", model, str(folder), "lm_eval",
                      {"piqa": {"acc": 0.5, "acc_norm": 0.625}}, None, {})  # fmt: skip
    card = ModelCard(render_card(folder, repo_id="someone/bispikclm-tiny"))
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "text-generation"
    assert data.base_model == "facebook/opt-125m" and data.language == ["en"] and data.license == "apache-2.0"
    assert set(data.datasets) == {"HuggingFaceFW/fineweb-edu", "nyu-mll/glue"}
    assert {"spiking-neural-network", "bispikclm", "neuron-lif"} <= set(data.tags)
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in data.eval_results}
    assert results[("nyu-mll/glue", "accuracy")] == 0.75
    assert results[("piqa", "acc")] == 0.5 and results[("piqa", "acc_norm")] == 0.625
    perplexity = json.loads((folder / "results.json").read_text())["evaluations"]["perplexity"]["scores"]
    assert results[("text", "perplexity")] == pytest.approx(perplexity["perplexity"])
    energy = json.loads((folder / "energy.json").read_text())
    assert results[("text", "energy_ratio")] == pytest.approx(energy["ratio"])
    assert "![Firing rate of each layer's spike-fed inputs](firing_rates.png)" in card.text
    assert (folder / "firing_rates.png").is_file()
