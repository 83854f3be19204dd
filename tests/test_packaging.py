"""What the package reads at run time ships in its wheel and is found by the installed package, run from outside
the repository (model-card templates, the shipped corpus, the GLUE metric module)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECK = """
import json, pathlib, sys
import spiking_lm
from spiking_lm.data import shakespeare_files
from spiking_lm.evaluation.glue import METRIC_MODULE
from spiking_lm.publishing.cards import TEMPLATES, render_card
from spiking_lm.quickstart import MODEL_CARD_TEMPLATE

root = pathlib.Path(sys.argv[1]).resolve()
assert pathlib.Path(spiking_lm.__file__).resolve().is_relative_to(root), spiking_lm.__file__
assert TEMPLATES.joinpath("spiking_lm.md.j2").is_file() and MODEL_CARD_TEMPLATE.is_file()
assert (METRIC_MODULE / "glue.py").is_file() and all(p.is_file() for p in shakespeare_files()[0])
folder = pathlib.Path(sys.argv[2])
model = spiking_lm.BiSpikCLMForCausalLM(spiking_lm.BiSpikCLMConfig(
    vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
model.save_pretrained(folder)
print(render_card(folder, repo_id="someone/tiny").splitlines()[0])
"""


@pytest.mark.slow
def test_the_wheel_ships_what_the_package_reads_at_run_time(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPO), "-w",
         str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("spiking_lm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("spiking_lm/model_cards/spiking_lm.md.j2", "spiking_lm/model_cards/quickstart.md.j2",
                     "spiking_lm/evaluation/metrics/glue/glue.py", "spiking_lm/nn/spike_linear.py"):  # fmt: skip
        assert expected in names, expected
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    environment = {**os.environ, "PYTHONPATH": str(installed)}
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(installed), str(tmp_path / "model")],
        cwd=outside, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[-1] == "---"  # the rendered card opens its metadata block
