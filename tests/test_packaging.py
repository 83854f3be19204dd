"""What the package reads at run time ships in its wheel and is found by the installed package, run from outside
the repository (model-card templates, the shipped corpus and recipes, the GLUE metric module); a wheel install
runs the README's commands."""

import os
import re
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


@pytest.mark.slow
def test_a_wheel_install_runs_the_readme_commands_from_outside_the_repository(tmp_path):
    """The wheel (not an editable install) in a fresh virtual environment — its dependencies shared from this
    one, spiking_lm only from the wheel — runs the quickstart, a shipped recipe by name, card and energy, the
    README's Python blocks, and the card's snippet without spiking_lm."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(REPO), "-w",
                            str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("spiking_lm-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    dependencies = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "dependencies.pth").write_text("\n".join(dependencies) + "\n")  # paths only: no editable finder
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps", "-q"]
    installed = subprocess.run([*pip, str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    work = tmp_path / "elsewhere"
    work.mkdir()
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    environment.pop("PYTHONPATH", None)

    def spiking_lm(*argv):
        result = subprocess.run([str(venv / "bin" / "spiking-lm"), *argv], cwd=work, env=environment,
                                capture_output=True, text=True, timeout=900)  # fmt: skip
        assert result.returncode == 0, f"{argv}: {result.stderr[-3000:]}"
        return result.stdout

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import spiking_lm; print(spiking_lm.__file__)"],
                           cwd=work, env=environment, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    spiking_lm("quickstart", "--smoke", "--output-dir", "outputs/quickstart")
    model = work / "outputs" / "quickstart" / "model"
    assert (model / "README.md").read_text().startswith("---\n")
    listed = spiking_lm("recipes")
    assert str(site) in listed  # the shipped recipes, inside the installed package
    spiking_lm("distill", "quickstart", "--training.max_steps", "2", "--data.block_size", "64")
    final = work / "outputs" / "quickstart-distill" / "final"
    assert (final / "model.safetensors").is_file()
    spiking_lm("energy", str(final), "--sequences", "1", "--length", "32")
    assert (final / "energy.json").is_file() and (final / "firing_rates.png").is_file()
    assert "wrote" in spiking_lm("card", str(final))
    card = (final / "README.md").read_text()
    assert "SNN / ANN energy" in card

    def python(code, blocked=False):
        code = ("import sys; sys.modules['spiking_lm'] = None\n" if blocked else "") + code
        result = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=work, env=environment,
                                capture_output=True, text=True, timeout=900)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    readme = (REPO / "README.md").read_text()
    assert "SNN" in python("\n".join(re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)))
    assert python(re.search(r"```python\n(.*?)```", card, re.S).group(1), blocked=True).strip()
