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

    from transformers import AutoModelForCausalLM, AutoTokenizer

    import spiking_lm  # noqa: F401 - registers the architectures with the Auto classes, as the card says

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "model")
    output = model.generate(**tokenizer("ROMEO.\n", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert output.shape[1] > 3
