import json
import sys
from pathlib import Path

import pytest
import yaml

from spiking_lm.distill import SpADConfig
from spiking_lm.recipes import DataSettings, load_recipe, read_yaml

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TRAINING_RECIPES = sorted(p for p in RECIPES.rglob("*.yaml") if "accelerate" not in p.parts)
ACCELERATE_CONFIGS = sorted((RECIPES / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", TRAINING_RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_into_its_configs(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# ") and str(path.relative_to(RECIPES.parent)) in first_line
    assert "spiking-lm distill" in first_line or "spiking_lm.cli distill" in first_line
    recipe = load_recipe(path)
    assert isinstance(recipe.data, DataSettings)
    config = recipe.student_class.config_class(**recipe.student_overrides())  # validates every student field
    assert config.model_type == recipe.student["architecture"]
    # Every training key is a SpADConfig field; bf16 is left out because this CPU cannot build it.
    training = {k: v for k, v in recipe.training.items() if k != "bf16"}
    args = SpADConfig(**training, use_cpu=True)
    assert args.output_dir == recipe.training["output_dir"]


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_open_with_their_launch_command(path):
    text = path.read_text()
    assert text.startswith("# ") and "accelerate launch --config_file " + str(path.relative_to(RECIPES.parent)) in text
    config = yaml.safe_load(text)
    assert config["distributed_type"] in ("NO", "MULTI_GPU", "DEEPSPEED")
    if config["distributed_type"] == "DEEPSPEED":
        json_path = RECIPES.parent / config["deepspeed_config"]["deepspeed_config_file"]
        assert json.loads(json_path.read_text())["zero_optimization"]["stage"] in (2, 3)


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_unknown_keys_are_named(tmp_path):
    base = "student: {architecture: bispikclm}\n"
    with pytest.raises(ValueError, match=r"section 'student': unknown key\(s\) \['colour'\]"):
        load_recipe(write(tmp_path, "student: {architecture: bispikclm, colour: red}\n"))
    with pytest.raises(ValueError, match=r"section 'training': unknown key\(s\) \['learning_rat'\]"):
        load_recipe(write(tmp_path, base + "training: {learning_rat: 0.1}\n"))
    with pytest.raises(ValueError, match=r"section 'data': unknown key\(s\) \['sorce'\]"):
        load_recipe(write(tmp_path, base + "data: {sorce: x}\n"))
    with pytest.raises(ValueError, match=r"section '<top level>': unknown key\(s\) \['model'\]"):
        load_recipe(write(tmp_path, base + "model: x\n"))
    with pytest.raises(ValueError, match="student.architecture='gpt2' is invalid"):
        load_recipe(write(tmp_path, "student: {architecture: gpt2}\n"))
    with pytest.raises(FileNotFoundError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_command_line_overrides(tmp_path):
    path = write(tmp_path, "student: {architecture: bispikclm, time_steps: 4}\ntraining: {max_steps: 10}\n")
    recipe = load_recipe(path, ["--student.time_steps", "2", "--training.max_steps", "3", "--data.block_size", "64"])
    assert recipe.student["time_steps"] == 2 and recipe.training["max_steps"] == 3 and recipe.data.block_size == 64
    with pytest.raises(ValueError, match="must look like --section.key"):
        load_recipe(path, ["--max_steps", "3"])
    with pytest.raises(ValueError, match="unknown key"):
        load_recipe(path, ["--training.max_stepz", "3"])


def test_values_are_read_the_way_the_author_means_them(tmp_path):
    path = write(tmp_path, "student: {architecture: bispikclm}\n"
                 "training: {save_strategy: no, learning_rate: 1e-3, weight_decay: 5E-2, bf16: false, "
                 "report_to: none, output_dir: out}\n")  # fmt: skip
    training = load_recipe(path).training
    assert training["save_strategy"] == "no"  # not False
    assert read_yaml("a: off\nb: yes\nc: on\nd: True") == {"a": "off", "b": "yes", "c": "on", "d": True}
    assert training["learning_rate"] == 0.001 and training["weight_decay"] == 0.05  # floats, not strings
    assert training["bf16"] is False
    recipe = load_recipe(path, ["--training.learning_rate", "3e-4", "--training.save_strategy", "no"])
    assert recipe.training["learning_rate"] == 0.0003 and recipe.training["save_strategy"] == "no"
    args = recipe.training_config()
    assert args.save_strategy == "no" and args.learning_rate == 0.0003


@pytest.mark.parametrize(("value", "error"), [("0", "block_size=0"), ("-5", "block_size=-5"),
                                              ("12.5", "block_size=12.5"), ("abc", "block_size='abc'"),
                                              ("true", "block_size=True")])  # fmt: skip
def test_block_size_must_be_a_positive_integer(tmp_path, value, error):
    path = write(tmp_path, f"student: {{architecture: bispikclm}}\ndata: {{block_size: {value}}}\n")
    with pytest.raises(ValueError, match=f"data.{error} is invalid: must be an integer >= 1"):
        load_recipe(path)


def test_package_teachers_come_only_from_installed_distributions(tmp_path, monkeypatch):
    from spiking_lm.recipes import resolve_teacher

    (tmp_path / "stray_teacher.py").write_text("raise SystemExit('a stray module ran')\n")
    (tmp_path / "yaml.py").write_text("raise SystemExit('a module shadowing an installed one ran')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "yaml")  # imported afresh: from site-packages, never ./yaml.py
    with pytest.raises(ValueError, match="'stray_teacher' is not a module of an installed distribution"):
        resolve_teacher("package:stray_teacher")
    with pytest.raises(ValueError, match="has no get_model_path"):  # the installed one, not ./yaml.py
        resolve_teacher("package:yaml")
    assert resolve_teacher("facebook/opt-125m") == "facebook/opt-125m"
