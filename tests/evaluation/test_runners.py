"""`spiking-lm energy` / `perplexity` on a saved student: printed table, files, and the one results file."""

import json

import pytest

from spiking_lm.cli import main


def without_timestamps(results: dict) -> dict:
    for entry in results["evaluations"].values():
        entry.pop("timestamp")
    return results


def test_energy_command_writes_json_plot_and_results(student_folder, teacher_folder, tmp_path, capsys):
    corpus = teacher_folder / "corpus.txt"
    args = ["energy", str(student_folder), "--data", str(corpus), "--sequences", "2", "--length", "16"]
    args += ["--baseline", str(teacher_folder), "--output-dir", str(tmp_path / "energy")]
    args += ["--results", str(tmp_path / "results.json")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "layer 0" in printed and "lm_head" in printed and "SNN / ANN energy" in printed
    report = json.loads((tmp_path / "energy" / "energy.json").read_text())
    assert report["tokens"] == 32 and report["ann_baseline"] == "OPTForCausalLM (MACs)"
    assert (tmp_path / "energy" / "firing_rates.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["evaluations"]["energy"]["energy"] == report
    assert results["model"]["config"]["model_type"] == "bispikclm"
    assert {"torch", "transformers", "spiking_lm"} <= set(results["versions"])


def test_perplexity_command_records_scores_and_energy_reproducibly(student_folder, teacher_folder, tmp_path):
    results_file = tmp_path / "results.json"
    args = ["perplexity", str(student_folder), "--data", str(teacher_folder / "corpus.txt"), "--window", "32"]
    args += ["--stride", "16", "--results", str(results_file)]
    assert main(args) == 0
    first = json.loads(results_file.read_text())
    entry = first["evaluations"]["perplexity"]
    assert entry["scores"]["perplexity"] > 1 and entry["settings"]["window"] == 32
    assert entry["energy"]["tokens"] == 32 and entry["energy"]["snn_energy_mj"] > 0
    assert main(args) == 0
    assert without_timestamps(json.loads(results_file.read_text())) == without_timestamps(first)


def test_missing_model_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["perplexity", str(tmp_path / "no-such-model")]) == 2
    assert "spiking-lm: error: model folder" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--debug", "perplexity", str(tmp_path / "no-such-model")])
